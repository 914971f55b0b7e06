"""`tio correlate` on files: the command-line contract of a pair map."""

import subprocess
import sys

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform_bounds

from tio.correlate_files import correlate_files
from tio.errors import CorrelationError, InputError, NoOverlapError

S2 = "sentinel2_l1c_pair_T33UUU"
REF = "ref_S2A_20160608T153121_T33UUU_sub.jp2"
SEC = "tgt_S2A_20160529T153631_T33UUU_sub.jp2"


def _tio(*args):
    return subprocess.run(
        [sys.executable, "-m", "tio", *map(str, args)], capture_output=True, text=True
    )


def _landsat_pair(
    tmp_path, shared_data, d_col, d_row, name_a="a_20150804.tif", name_b="b_20150820.tif"
):
    """A real Landsat-8 crop and the same crop moved by whole pixels (content moves +col, +row)."""
    with rasterio.open(shared_data / "landsat8_pan_p020r039" / "l8_B8.tif") as src:
        big = src.read(1, window=rasterio.windows.Window(300, 300, 300, 300))
        t = src.window_transform(rasterio.windows.Window(320, 320, 256, 256))
        profile = src.profile | {"driver": "GTiff", "width": 256, "height": 256, "transform": t}
    a = big[20:276, 20:276]
    b = big[
        20 - d_row : 276 - d_row, 20 - d_col : 276 - d_col
    ]  # content displaced by (d_row, d_col)
    paths = []
    for name, data in ((name_a, a), (name_b, b)):
        with rasterio.open(tmp_path / name, "w", **profile) as dst:
            dst.write(data, 1)
        paths.append(tmp_path / name)
    return paths


@pytest.mark.parametrize(
    "d_col,d_row,ew,ns", [(2, 0, 30, 0), (-3, 0, -45, 0), (0, -2, 0, 30), (0, 3, 0, -45)]
)
def test_signs_east_positive_north_positive(tmp_path, shared_data, d_col, d_row, ew, ns):
    a, b = _landsat_pair(tmp_path, shared_data, d_col, d_row)
    res = correlate_files(a, b, tmp_path / "pair.tif")
    with rasterio.open(res.path) as src:
        data = src.read()
        assert src.tags()["TIO_UNITS"] == "m"
        assert src.tags()["TIO_DATE1"] == "2015-08-04" and src.tags()["TIO_DATE2"] == "2015-08-20"
        assert "positive east" in src.descriptions[0] and "positive north" in src.descriptions[1]
    assert np.nanmedian(data[0]) == pytest.approx(ew, abs=0.3)
    assert np.nanmedian(data[1]) == pytest.approx(ns, abs=0.3)
    assert np.nanmedian(data[2]) > 0.8


def test_real_sentinel2_pair_on_an_area(tmp_path, shared_data):
    aoi = transform_bounds("EPSG:32633", "EPSG:4326", 338000, 5843000, 343000, 5848000)
    out = tmp_path / "s2.tif"
    proc = _tio(
        "correlate",
        shared_data / S2 / REF,
        shared_data / S2 / SEC,
        "-o",
        out,
        "--aoi",
        ",".join(map(str, aoi)),
    )
    assert proc.returncode == 0, proc.stderr
    with rasterio.open(out) as src:
        ew, ns, score = src.read()
        t = src.transform
        assert src.tags()["TIO_DATE1"] == "2016-06-08"
        assert src.crs.to_epsg() == 32633
    assert (t.a, t.e) == (80, -80)
    # centre of output pixel (0, 0) is the centre of the first 32-px window of the reference grid
    assert (t.c + 40 - 16 * 10 - 335440) % 10 == 0 or (t.c + 40 - 16 * 10) % 10 == 0
    good = score > 0.7
    assert good.mean() > 0.5
    # real misregistration measured by AROSICS: about 7 m EW and 17-19 m NS (sign from this pair)
    assert 5 < np.median(ew[good]) < 8
    assert 16 < np.median(ns[good]) < 20.5


def test_secondary_on_another_grid_is_resampled_and_said(tmp_path, shared_data):
    a, b = _landsat_pair(tmp_path, shared_data, 0, 0)
    with rasterio.open(b) as src:
        data = src.read(1)
        profile = src.profile
    # the same image on a grid shifted by exactly one pixel: a different lattice origin
    t = profile["transform"]
    moved = profile | {"transform": rasterio.Affine(t.a, 0, t.c + 7.5, 0, t.e, t.f - 7.5)}
    c = tmp_path / "c_20150820.tif"
    with rasterio.open(c, "w", **moved) as dst:
        dst.write(data, 1)
    proc = _tio("correlate", a, c, "-o", tmp_path / "p.tif")
    assert proc.returncode == 0, proc.stderr
    assert "resampled" in proc.stderr
    with rasterio.open(tmp_path / "p.tif") as src:
        assert src.tags()["TIO_RESAMPLING"] == "cubic"
        ew, ns, _ = src.read()
    # the secondary grid is half a pixel east and south: its content sits 7.5 m east, 7.5 m south
    assert np.nanmedian(ew) == pytest.approx(7.5, abs=0.5)
    assert np.nanmedian(ns) == pytest.approx(-7.5, abs=0.5)


def test_no_overlap_gives_both_extents(tmp_path, shared_data):
    proc = _tio(
        "correlate",
        shared_data / "landsat8_pan_p020r039" / "l8_B8.tif",
        shared_data / "landsat7_khumbu" / "LE71400412000304SGS00_B4_crop.TIF",
        "-o",
        tmp_path / "x.tif",
    )
    assert proc.returncode == 1
    assert "does not overlap" in proc.stderr
    assert "reference extent" in proc.stderr and "secondary extent" in proc.stderr
    assert not (tmp_path / "x.tif").exists()
    with pytest.raises(NoOverlapError):
        correlate_files(
            shared_data / S2 / REF,
            shared_data / "landsat8_pan_p020r039" / "l8_B8.tif",
            tmp_path / "y.tif",
        )


def test_all_nodata_secondary_and_tiny_images(tmp_path, shared_data):
    a, b = _landsat_pair(tmp_path, shared_data, 0, 0)
    with rasterio.open(b) as src:
        profile = src.profile
    empty = tmp_path / "empty_20150901.tif"
    with rasterio.open(empty, "w", **profile) as dst:
        dst.write(np.zeros((256, 256), "uint16"), 1)  # 0 = nodata for 16-bit imagery
    with pytest.raises(InputError, match="no valid pixel"):
        correlate_files(a, empty, tmp_path / "e.tif")
    with pytest.raises(CorrelationError):
        correlate_files(a, b, tmp_path / "w.tif", window=512)
    assert not (tmp_path / "e.tif").exists() and not (tmp_path / "w.tif").exists()


def test_images_without_georeferencing_give_pixels(tmp_path, shared_data):
    folder = shared_data / "perito_moreno_glacier"
    out = tmp_path / "pm.tif"
    proc = _tio(
        "correlate", folder / "20200207.jpg", folder / "20200210.jpg", "-o", out, "--step", "32"
    )
    assert proc.returncode == 0, proc.stderr
    with rasterio.open(out) as src:
        assert src.tags()["TIO_UNITS"] == "pixel"
        assert src.tags()["TIO_DATE1"] == "2020-02-07"
        assert "(pixel, positive east)" in src.descriptions[0]
        ew, ns, score = src.read()
    assert np.isfinite(ew).mean() > 0.4  # outside the image footprint (black) is not matched


def test_deform_option_of_the_command(tmp_path, shared_data):
    """`--deform 0` switches the window deformation off (a uniform shift: same map);
    out-of-range values are refused."""
    a, b = _landsat_pair(tmp_path, shared_data, 2, -1)
    maps = []
    for deform in ("0", "1"):
        out = tmp_path / f"pair{deform}.tif"
        proc = _tio("correlate", a, b, "-o", out, "--step", "16", "--deform", deform)
        assert proc.returncode == 0, proc.stderr
        with rasterio.open(out) as src:
            maps.append(src.read())
    np.testing.assert_array_equal(maps[0], maps[1])
    assert np.nanmedian(maps[0][0]) == pytest.approx(30, abs=0.3)
    proc = _tio("correlate", a, b, "-o", tmp_path / "bad.tif", "--deform", "9")
    assert proc.returncode != 0 and "deform" in (proc.stderr + proc.stdout)
