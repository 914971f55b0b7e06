"""Tests of the per-pixel cloud masks (:mod:`tio.cloudmask`) on a real Sentinel-2 product.

The L2A product of tile 29UNU (Ireland, 2022-10-05, about 60 % cloud) holds SCL at
20 and 60 m, MSK_CLASSI and B09. The old GML cloud mask is tested on a synthetic
``MSK_CLOUDS_B00.gml`` (same structure as ESA's) added to a copy of the real L1C
T31TDH product skeleton.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import transform

from tio.cloudmask import SCL_CLOUDY, b09_cloudy, cloud_mask
from tio.errors import InputError
from tio.safe import read_safe
from tio.stack import Grid

L2A = "S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454.SAFE"
L1C = "S2A_MSIL1C_20180101T105441_N0206_R051_T31TDH_20180101T124911.SAFE"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def l2a(shared_data: Path):
    return read_safe(shared_data / "sentinel2_safe" / L2A)


@pytest.fixture(scope="module")
def tile60(l2a):
    """(crs wkt, transform, SCL at 60 m, B09 DN) of the whole tile."""
    with rasterio.open(l2a.bands["SCL_60m"]) as src:
        scl = src.read(1)
        wkt, tr = src.crs.to_wkt(), src.transform
    with rasterio.open(l2a.bands["B09_60m"]) as src:
        assert src.transform == tr
        b09 = src.read(1)
    return wkt, tr, scl, b09


@pytest.fixture(scope="module")
def whole(l2a, tile60):
    wkt, tr, scl, _ = tile60
    mask, source = cloud_mask(l2a, Grid(wkt, tr, scl.shape))
    assert source == "SCL"
    return mask


def _sub60(tile60, row: int, col: int, size: int) -> Grid:
    wkt, tr, _, _ = tile60
    return Grid(wkt, tr * Affine.translation(col, row), (size, size))


# --------------------------------------------------------------------------- SCL


def test_scl_whole_tile_matches_cloud_cover(l2a, tile60, whole):
    _, _, scl, b09 = tile60
    assert whole.shape == scl.shape and whole.dtype == bool
    data = b09 > 0  # the tile's data footprint, from another file than SCL
    assert whole[~data].all()  # no data is unusable
    frac = 100 * float(whole[data].mean())
    tl = next(Path(l2a.path, "GRANULE").glob("*/MTD_TL.xml"))
    shadow = float(next(e.text for e in ET.parse(tl).iter() if e.tag == "CLOUD_SHADOW_PERCENTAGE"))
    print(
        f"SCL mask {frac:.1f} % of the data area ({100 * whole.mean():.1f} % of the tile with "
        f"no data); Cloud_Coverage_Assessment {l2a.cloud_cover:.1f} %, + cloud shadow "
        f"{shadow:.1f} % = {l2a.cloud_cover + shadow:.1f} %"
    )
    assert abs(frac - l2a.cloud_cover) < 15
    # the mask is exactly clouds (8, 9, 10) + shadows (3) of the metadata's percentages
    assert abs(frac - (l2a.cloud_cover + shadow)) < 1.0
    assert np.array_equal(whole, np.isin(scl, (0, 1, *SCL_CLOUDY)))


def test_scl_subgrid_same_lattice_is_window_of_whole(l2a, tile60, whole):
    grid = _sub60(tile60, 200, 600, 334)  # 20 km box at 60 m on the tile's lattice
    mask, source = cloud_mask(l2a, grid)
    assert source == "SCL" and mask.shape == (334, 334)
    assert np.array_equal(mask, whole[200:534, 600:934])
    assert 0.3 < mask.mean() < 0.8  # a box with clouds and clear land
    # the CRS may be spelled differently: still a plain window of the 60 m SCL
    named = Grid("EPSG:32629", grid.transform, grid.shape)
    assert np.array_equal(cloud_mask(l2a, named)[0], mask)

    # a box across the west edge of the tile: outside is unusable
    edge = _sub60(tile60, 700, -100, 200)
    mask, _ = cloud_mask(l2a, edge)
    assert mask[:, :100].all()
    assert np.array_equal(mask[:, 100:], whole[700:900, :100])
    assert not whole[700:900, :100].all()


def test_scl_other_lattice_is_nearest_neighbour(l2a, tile60, whole):
    wkt = tile60[0]

    def reference(grid: Grid) -> np.ndarray:
        """Nearest neighbour by hand: the SCL 20 m pixel under each grid pixel centre."""
        rows, cols = np.mgrid[0 : grid.shape[0], 0 : grid.shape[1]]
        xs, ys = grid.transform * (cols.ravel() + 0.5, rows.ravel() + 0.5)
        if grid.crs != wkt:
            xs, ys = transform(grid.crs, wkt, xs, ys)
        with rasterio.open(l2a.bands["SCL_20m"]) as src:
            c, r = ~src.transform * (np.asarray(xs), np.asarray(ys))
            r, c = np.floor(r).astype(int), np.floor(c).astype(int)
            r0, c0 = r.min(), c.min()
            scl20 = src.read(1, window=((r0, r.max() + 1), (c0, c.max() + 1)))
        return np.isin(scl20[r - r0, c - c0], (0, 1, *SCL_CLOUDY)).reshape(grid.shape)

    # 100 m in the tile's CRS, aligned on multiples of 100 m (not the tile's lattice)
    g100 = Grid(wkt, Affine(100, 0, 536000, 0, -100, 5888000), (200, 200))
    m100, source = cloud_mask(l2a, g100)
    assert source == "SCL"
    agree = float((m100 == reference(g100)).mean())
    # and the 60 m mask over the same area agrees in fraction
    frac60 = whole[200:534, 600:934].mean()
    print(f"100 m grid: {100 * agree:.2f} % equal to nearest neighbour of SCL 20 m")
    assert agree > 0.999
    assert abs(m100.mean() - frac60) < 0.05

    # 100 m in the next UTM zone (EPSG:32630), through the warped VRT
    g30 = Grid("EPSG:32630", Affine(100, 0, 140000, 0, -100, 5850000), (150, 150))
    m30, source = cloud_mask(l2a, g30)
    agree30 = float((m30 == reference(g30)).mean())
    print(f"EPSG:32630 grid: {100 * agree30:.2f} % equal to nearest neighbour of SCL 20 m")
    assert source == "SCL" and agree30 > 0.99 and 0.05 < m30.mean() < 0.95


def test_snow_flag_adds_only_scl_class_11(l2a, tile60, whole):
    wkt, tr, scl, _ = tile60
    with_snow, _ = cloud_mask(l2a, Grid(wkt, tr, scl.shape), snow=True)
    added = with_snow & ~whole
    assert not (whole & ~with_snow).any()
    assert np.array_equal(added, scl == 11)
    assert added.sum() > 0  # the tile has a few snow/ice pixels


def test_grid_without_crs_is_an_input_error(l2a):
    with pytest.raises(InputError, match="no CRS"):
        cloud_mask(l2a, Grid(None, Affine.identity(), (10, 10)))


# --------------------------------------------------------------------------- MSK_CLASSI


def test_classi_fraction_agreement_and_band_order(l2a, tile60):
    wkt, tr, scl, b09 = tile60
    no_scl = dataclasses.replace(
        l2a, bands={k: v for k, v in l2a.bands.items() if not k.startswith("SCL")}
    )
    mask, source = cloud_mask(no_scl, Grid(wkt, tr, scl.shape))
    assert source == "MSK_CLASSI"
    data = b09 > 0
    frac = 100 * float(mask[data].mean())
    scl_clouds = np.isin(scl, (8, 9, 10))
    agree = 100 * float((mask == scl_clouds)[data].mean())
    print(
        f"MSK_CLASSI {frac:.1f} % of the data area; SCL 8-10 "
        f"{100 * scl_clouds[data].mean():.1f} %; cloud cover {l2a.cloud_cover:.1f} %; "
        f"pixel agreement with SCL 8-10 {agree:.1f} %"
    )
    assert 30 < frac < 90 and abs(frac - l2a.cloud_cover) < 15
    assert agree > 85

    # band order: 1 opaque clouds (SCL 8, 9), 2 cirrus (SCL 8-10), 3 snow/ice
    with rasterio.open(l2a.masks["CLASSI"]) as src:
        assert src.count == 3
        classi = src.read()
    opaque, cirrus, snow = (classi[i] > 0 for i in range(3))
    assert np.isin(scl[opaque], (8, 9)).mean() > 0.85
    assert np.isin(scl[cirrus], (8, 9, 10)).mean() > 0.85
    assert opaque.mean() > cirrus.mean() > snow.mean()
    assert np.array_equal(mask, opaque | cirrus)

    grid = _sub60(tile60, 200, 600, 334)
    sub, _ = cloud_mask(no_scl, grid)
    assert np.array_equal(sub, mask[200:534, 600:934])
    sub_snow, _ = cloud_mask(no_scl, grid, snow=True)
    assert np.array_equal(sub_snow, sub | snow[200:534, 600:934])


# --------------------------------------------------------------------------- B09 rule


def test_b09_rule_removes_the_offset(l2a, tile60):
    _, _, _, b09 = tile60
    assert l2a.offsets["B09"] == -1000
    grid = _sub60(tile60, 200, 600, 334)
    cloudy, mean = b09_cloudy(l2a, grid)
    dn = b09[200:534, 600:934]
    expected = dn[dn > 0].astype(float).mean() - 1000
    print(f"B09 mean over the 20 km box: {mean:.1f} (raw DN {expected + 1000:.1f})")
    assert isinstance(cloudy, bool)
    assert mean == pytest.approx(expected, rel=1e-9)
    assert cloudy is (mean > 1200)
    assert b09_cloudy(l2a, grid, threshold=mean + 1) == (False, pytest.approx(mean))
    assert b09_cloudy(l2a, grid, threshold=mean - 1)[0] is True

    # a grid in another CRS (100 m, next UTM zone) is placed on B09 too
    _, mean30 = b09_cloudy(
        l2a, Grid("EPSG:32630", Affine(100, 0, 140000, 0, -100, 5850000), (150, 150))
    )
    assert np.isfinite(mean30)

    # outside the tile: no data, unusable
    far = Grid(tile60[0], Affine(60, 0, 800000, 0, -60, 5900000), (10, 10))
    cloudy, mean = b09_cloudy(l2a, far)
    assert cloudy is True and np.isnan(mean)


def test_b09_absent_is_an_input_error(shared_data):
    l1c = read_safe(shared_data / "sentinel2_safe" / L1C)
    grid = Grid("EPSG:32631", Affine(60, 0, 399960, 0, -60, 4800000), (10, 10))
    with pytest.raises(InputError, match="B09"):
        b09_cloudy(l1c, grid)


# --------------------------------------------------------------------------- GML, none

_GML = """<?xml version="1.0" encoding="UTF-8"?>
<eop:Mask xmlns:eop="http://www.opengis.net/eop/2.0" xmlns:gml="http://www.opengis.net/gml/3.2"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  gml:id="S2A_OPER_MSK_CLOUDS_SGS__20180101T124911_A013204_T31TDH_B00_MSIL1C">
  <gml:name>MSK_CLOUDS pixels mask from data-strip S2A_OPER_MSK_CLOUDS_TEST</gml:name>
  <gml:boundedBy>{bounded}</gml:boundedBy>
  <eop:maskMembers>{features}</eop:maskMembers>
</eop:Mask>
"""
_ENVELOPE = (
    '<gml:Envelope srsName="urn:ogc:def:crs:EPSG:8.7:32631">'
    "<gml:lowerCorner>399960 4690200</gml:lowerCorner>"
    "<gml:upperCorner>509760 4800000</gml:upperCorner></gml:Envelope>"
)


def _ring(tag: str, cols: tuple[int, int], rows: tuple[int, int]) -> str:
    """A pixel-outline ring of the 60 m tile lattice (col/row ranges, end exclusive)."""
    x0, x1 = 399960 + 60 * cols[0], 399960 + 60 * cols[1]
    y0, y1 = 4800000 - 60 * rows[0], 4800000 - 60 * rows[1]
    pts = f"{x0} {y0} {x1} {y0} {x1} {y1} {x0} {y1} {x0} {y0}"
    return (
        f'<gml:{tag}><gml:LinearRing><gml:posList srsDimension="2">{pts}'
        f"</gml:posList></gml:LinearRing></gml:{tag}>"
    )


def _feature(kind: str, n: int, rings: str) -> str:
    return (
        f'<eop:MaskFeature gml:id="{kind}.{n}">'
        f'<eop:maskType codeSpace="urn:gs2:S2PDGS:maskType">{kind}</eop:maskType>'
        f'<eop:extentOf><gml:Polygon gml:id="{kind}.{n}_Polygon">{rings}</gml:Polygon>'
        "</eop:extentOf></eop:MaskFeature>"
    )


def _l1c_with_gml(shared_data: Path, tmp_path: Path, gml: str | None) -> Path:
    """A copy of the real L1C skeleton (B01 linked) with QI_DATA/MSK_CLOUDS_B00.gml."""
    src = shared_data / "sentinel2_safe" / L1C
    dst = tmp_path / L1C
    granule = next((src / "GRANULE").iterdir())
    (dst / "GRANULE" / granule.name / "IMG_DATA").mkdir(parents=True)
    (dst / "GRANULE" / granule.name / "QI_DATA").mkdir()
    shutil.copyfile(src / "MTD_MSIL1C.xml", dst / "MTD_MSIL1C.xml")
    shutil.copyfile(granule / "MTD_TL.xml", dst / "GRANULE" / granule.name / "MTD_TL.xml")
    for band in (granule / "IMG_DATA").iterdir():
        os.symlink(band, dst / "GRANULE" / granule.name / "IMG_DATA" / band.name)
    if gml is not None:
        (dst / "GRANULE" / granule.name / "QI_DATA" / "MSK_CLOUDS_B00.gml").write_text(gml)
    return dst


def test_gml_polygons_are_rasterized_in_place(shared_data, tmp_path):
    opaque = _ring("exterior", (12, 20), (5, 11)) + _ring("interior", (15, 16), (7, 8))
    cirrus = _ring("exterior", (25, 28), (30, 35))
    gml = _GML.format(
        bounded=_ENVELOPE, features=_feature("OPAQUE", 0, opaque) + _feature("CIRRUS", 0, cirrus)
    )
    product = read_safe(_l1c_with_gml(shared_data, tmp_path, gml))
    assert product.level == "L1C" and "CLOUDS" in product.masks

    # 60 m on the tile lattice, starting 10 px west of the tile (outside = unusable)
    grid = Grid("EPSG:32631", Affine(60, 0, 399960 - 600, 0, -60, 4800000), (40, 50))
    mask, source = cloud_mask(product, grid)
    expected = np.zeros((40, 50), dtype=bool)
    expected[:, :10] = True
    expected[5:11, 22:30] = True  # opaque, columns shifted by the 10 outside
    expected[7, 25] = False  # its hole
    expected[30:35, 35:38] = True  # cirrus
    assert source == "MSK_CLOUDS (GML)"
    assert np.array_equal(mask, expected)

    # 20 m on the same lattice: each 60 m pixel becomes 3 x 3
    fine = Grid("EPSG:32631", Affine(20, 0, 399960, 0, -20, 4800000), (120, 120))
    mask20, _ = cloud_mask(product, fine)
    assert np.array_equal(mask20, np.kron(expected[:, 10:], np.ones((3, 3), bool))[:120, :120])

    # snow does not exist in this format
    assert np.array_equal(cloud_mask(product, grid, snow=True)[0], mask)

    # zipped product: read through /vsizip
    archive = tmp_path / "product.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in (tmp_path / L1C).rglob("*"):
            if path.is_file():
                zf.write(path, path.relative_to(tmp_path).as_posix())
    zipped, source = cloud_mask(read_safe(archive), grid)
    assert source == "MSK_CLOUDS (GML)" and np.array_equal(zipped, expected)


def test_empty_gml_means_no_cloud(shared_data, tmp_path):
    empty = _GML.format(bounded="<gml:Null>Empty</gml:Null>", features="")
    product = read_safe(_l1c_with_gml(shared_data, tmp_path, empty))
    grid = Grid("EPSG:32631", Affine(60, 0, 399960 + 6000, 0, -60, 4800000 - 6000), (30, 30))
    mask, source = cloud_mask(product, grid)
    assert source == "MSK_CLOUDS (GML)" and mask.shape == (30, 30) and not mask.any()


def test_malformed_gml_names_the_file(shared_data, tmp_path):
    product = read_safe(_l1c_with_gml(shared_data, tmp_path, "<eop:Mask><broken"))
    grid = Grid("EPSG:32631", Affine(60, 0, 399960, 0, -60, 4800000), (5, 5))
    with pytest.raises(InputError, match="MSK_CLOUDS_B00.gml"):
        cloud_mask(product, grid)


def test_product_without_mask_gives_none(shared_data):
    l1c = read_safe(shared_data / "sentinel2_safe" / L1C)
    assert not l1c.masks and "SCL" not in l1c.bands
    grid = Grid("EPSG:32631", Affine(60, 0, 399960, 0, -60, 4800000), (20, 20))
    assert cloud_mask(l1c, grid) is None
