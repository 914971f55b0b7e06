"""Tests of the Sentinel-2 SAFE reader (:mod:`tio.safe`) on real product metadata."""

from __future__ import annotations

import json
import shutil
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tio.errors import InputError
from tio.safe import SPECTRAL_BANDS, band_path, read_safe, reflectance

L2A = "S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454.SAFE"
L1C = "S2A_MSIL1C_20180101T105441_N0206_R051_T31TDH_20180101T124911.SAFE"

# every product of sentinel2_safe/metadata_only (checked against the folder below)
METADATA_ONLY = [
    "S2A_MSIL1C_20200717T221941_R029_T01LAC_20200717T234135.SAFE",
    "S2A_MSIL1C_20210908T042701_N0301_R133_T46RER_20210908T070248.SAFE",
    "S2A_MSIL2A_20150826T185436_N0212_R070_T11SLT_20210412T023147",
    "S2A_MSIL2A_20180721T053721_N0212_R062_T43MDV_20201011T181419.SAFE",
    "S2A_MSIL2A_20190212T192651_N0212_R013_T07HFE_20201007T160857.SAFE",
    "S2A_MSIL2A_20230625T234621_N0509_R073_T01WCP_20230626T022157.SAFE",
    "S2A_MSIL2A_20230625T234621_N0509_R073_T01WCP_20230626T022158.SAFE",
    "S2A_MSIL2A_20230625T234621_N0509_R073_T01WCS_20230626T022157.SAFE",
    "S2A_MSIL2A_20230821T221941_N0509_R029_T01KAB_20230822T021825.SAFE",
    "S2B_MSIL2A_20191228T210519_N0212_R071_T01CCV_20201003T104658.SAFE",
    "S2B_MSIL2A_20220413T150759_N0400_R025_T33XWJ_20220414T082126.SAFE",
    "esa_S2B_MSIL2A_20210122T133229_N0214_R081_T22HBD_20210122T155500.SAFE",
]


@pytest.fixture(scope="module")
def s2(shared_data: Path) -> Path:
    return shared_data / "sentinel2_safe"


@pytest.fixture(scope="module")
def l2a(s2):
    return read_safe(s2 / L2A)


@pytest.fixture(scope="module")
def l1c(s2):
    return read_safe(s2 / L1C)


# --------------------------------------------------------------------------- metadata


def test_metadata_only_list_is_complete(s2):
    assert sorted(p.name for p in (s2 / "metadata_only").iterdir()) == sorted(METADATA_ONLY)


@pytest.mark.parametrize("folder", METADATA_ONLY)
def test_metadata_of_every_product(s2, folder):
    p = read_safe(s2 / "metadata_only" / folder)
    # consistent with the (true) product name, whatever the folder is called
    parts = p.name.split("_")
    assert p.name.startswith(("S2A_MSIL", "S2B_MSIL"))
    assert p.level == parts[1][-3:]
    assert p.spacecraft == "Sentinel-2" + parts[0][-1]
    assert p.sensing_time.strftime("%Y%m%dT%H%M%S") == parts[2]
    assert p.sensing_time.tzinfo is not None and p.sensing_time.utcoffset().total_seconds() == 0
    assert parts[3] == "N" + p.processing_baseline.replace(".", "")
    assert parts[4] == f"R{p.relative_orbit:03d}"
    assert parts[5] == "T" + p.tile
    assert p.quantification == 10000
    assert set(p.offsets) == set(SPECTRAL_BANDS)
    expected_offset = -1000.0 if float(p.processing_baseline) >= 4 else 0.0
    assert set(p.offsets.values()) == {expected_offset}
    zone, south = int(p.tile[:2]), p.tile[2] < "N"
    assert p.crs == f"EPSG:{(32700 if south else 32600) + zone}"
    assert len(p.granules) == 1 and p.tile in p.granules[0]
    assert p.bands == {} and p.masks == {}  # no imagery in these copies...
    assert "B04_10m" in p.absent  # ...but the metadata lists the band files

    expected_file = s2 / "metadata_only" / folder / "expected_output.json"
    if not expected_file.exists():
        return
    props = json.loads(expected_file.read_text())["properties"]
    assert p.sensing_time == datetime.fromisoformat(props["datetime"])
    tile = props.get("s2:mgrs_tile") or (
        f"{props['mgrs:utm_zone']:02d}{props['mgrs:latitude_band']}{props['mgrs:grid_square']}"
    )
    assert p.tile == tile
    assert p.relative_orbit == props["sat:relative_orbit"]
    assert p.cloud_cover == pytest.approx(props["eo:cloud_cover"], abs=1e-6)
    assert p.processing_baseline == props["s2:processing_baseline"]
    assert p.spacecraft.lower() == props["platform"]
    assert p.level == "L" + props["s2:product_type"][-2:]
    assert p.name + ".SAFE" == props["s2:product_uri"]
    assert p.crs == props.get("proj:code") or p.crs == f"EPSG:{props.get('proj:epsg')}"


# --------------------------------------------------------------------------- L2A


def test_l2a_metadata(l2a, s2):
    assert l2a.path == s2 / L2A
    assert l2a.name == L2A.removesuffix(".SAFE")
    assert (l2a.level, l2a.spacecraft, l2a.tile) == ("L2A", "Sentinel-2A", "29UNU")
    assert l2a.sensing_time == datetime(2022, 10, 5, 11, 54, 11, 24000, tzinfo=UTC)
    assert (l2a.relative_orbit, l2a.processing_baseline) == (23, "04.00")
    assert l2a.cloud_cover == pytest.approx(59.769726)
    assert l2a.quantification == 10000
    assert l2a.offsets == dict.fromkeys(SPECTRAL_BANDS, -1000.0)
    assert l2a.crs == "EPSG:32629"
    assert l2a.granules == ("L2A_T29UNU_A038058_20221005T115407",)


def test_l2a_bands_and_masks(l2a):
    assert l2a.bands["B04"] == l2a.bands["B04_60m"] == band_path(l2a, "B04", 60)
    assert band_path(l2a, "b4") == band_path(l2a, "B04_60m") == l2a.bands["B04"]
    assert l2a.bands["SCL"] == l2a.bands["SCL_20m"]  # finest SCL present
    assert "B08" not in l2a.bands  # only at 10 m, which is absent
    for key in ("CLASSI", "DETFOO_B04", "QUALIT_B04", "CLDPRB_20m", "SNWPRB_60m"):
        assert Path(l2a.masks[key]).is_file(), key
    for path in list(l2a.bands.values()) + list(l2a.masks.values()):
        assert Path(path).is_file()


def test_l2a_scl_and_b04_readable(l2a):
    with rasterio.open(band_path(l2a, "SCL", 60)) as ds:
        assert ds.shape == (1830, 1830) and ds.dtypes[0] == "uint8"
        scl = ds.read(1, window=((0, 915), (0, 915)))
    assert scl.max() <= 11 and len(np.unique(scl)) > 3
    with rasterio.open(band_path(l2a, "B04", 60)) as ds:
        assert ds.shape == (1830, 1830) and ds.crs.to_string() == l2a.crs
        dn = ds.read(1, window=((600, 900), (600, 900)))
    assert dn.dtype == np.uint16 and dn.max() > 1000


def test_l2a_missing_resolution_is_explained(l2a):
    with pytest.raises(InputError) as err:
        band_path(l2a, "B04", 10)
    msg = str(err.value)
    assert l2a.name in msg and "B04 at 10 m" in msg
    assert "present only at 60 m" in msg  # the resolutions available
    assert "B04_10m.jp2" in msg and "absent" in msg  # listed in the metadata, not on disk
    with pytest.raises(InputError, match="B08.*absent"):
        band_path(l2a, "B08")
    with pytest.raises(InputError, match="unknown Sentinel-2 band 'B13'"):
        band_path(l2a, "B13")


def test_reflectance_applies_offset(l2a):
    dn = np.array([[0, 1000, 1500], [11000, 65535, 1]], dtype=np.uint16)
    r = reflectance(dn, l2a, "B04")
    assert r.dtype == np.float32 and r.shape == dn.shape
    assert np.isnan(r[0, 0])
    np.testing.assert_allclose(r[0, 1:], [0.0, 0.05])
    np.testing.assert_allclose(r[1], [1.0, 6.4535, -0.0999], rtol=1e-6)
    with pytest.raises(InputError, match="SCL is not a spectral band"):
        reflectance(dn, l2a, "SCL")


def test_reflectance_of_real_band(l2a, l1c):
    with rasterio.open(band_path(l2a, "B04")) as ds:
        dn = ds.read(1, out_shape=(366, 366))
    r = reflectance(dn, l2a, "B04_60m")
    valid = dn > 0
    assert np.isnan(r[~valid]).all() and valid.any() and (~valid).any()
    np.testing.assert_allclose(r[valid], (dn[valid] - 1000.0) / 10000.0, rtol=1e-6)
    np.testing.assert_allclose(reflectance(np.array([1234]), l1c, "B01"), [0.1234], rtol=1e-6)


# --------------------------------------------------------------------------- L1C


def test_l1c_skeleton(l1c):
    assert (l1c.level, l1c.tile, l1c.relative_orbit) == ("L1C", "31TDH", 51)
    assert l1c.processing_baseline == "02.06" and l1c.crs == "EPSG:32631"
    assert l1c.offsets == dict.fromkeys(SPECTRAL_BANDS, 0.0) and l1c.quantification == 10000
    assert l1c.cloud_cover == pytest.approx(11.9204)
    assert set(l1c.bands) == {"B01", "B01_60m"} and l1c.masks == {}
    with rasterio.open(band_path(l1c, "B01")) as ds:
        assert (ds.width, ds.height) == (1830, 1830)
        assert ds.read(1, window=((0, 10), (0, 10))).shape == (10, 10)


def test_l1c_missing_band_is_explained(l1c):
    with pytest.raises(InputError) as err:
        band_path(l1c, "B04")
    msg = str(err.value)
    assert l1c.name in msg and "band B04 is not available" in msg
    assert "T31TDH_20180101T105441_B04.jp2" in msg and "absent" in msg
    assert "B01 (60 m)" in msg  # what is there
    with pytest.raises(InputError, match="SCL is an L2A layer"):
        band_path(l1c, "SCL")


def test_metadata_file_as_input(s2, l1c):
    p = read_safe(s2 / L1C / "MTD_MSIL1C.xml")
    assert p == l1c


# --------------------------------------------------------------------------- zip


def _zip(src: Path, dest: Path, compression=zipfile.ZIP_STORED) -> Path:
    """Zip the SAFE folder ``src`` as downloaded (``NAME.SAFE/...`` inside ``NAME.zip``)."""
    with zipfile.ZipFile(dest, "w", compression) as zf:
        for f in sorted(src.rglob("*")):
            zf.write(f, f"{src.name}/{f.relative_to(src).as_posix()}")
    return dest


def _same_product(zipped, folder, zip_path):
    for name in (
        "name level spacecraft sensing_time tile relative_orbit processing_baseline "
        "cloud_cover quantification offsets crs granules absent"
    ).split():
        assert getattr(zipped, name) == getattr(folder, name), name
    assert zipped.path == zip_path
    for table in ("bands", "masks"):
        z, f = getattr(zipped, table), getattr(folder, table)
        assert z.keys() == f.keys()
        for key in z:
            assert z[key].startswith(f"/vsizip/{zip_path}/{folder.path.name}/")
            assert z[key].endswith(f[key].removeprefix(str(folder.path)))


def test_zip_made_with_make_archive(s2, l1c, tmp_path):
    base = tmp_path / L1C.removesuffix(".SAFE")
    zip_path = Path(shutil.make_archive(str(base), "zip", root_dir=s2, base_dir=L1C))
    p = read_safe(zip_path)
    _same_product(p, l1c, zip_path)
    with rasterio.open(band_path(p, "B01")) as ds:
        assert ds.shape == (1830, 1830)


def test_zip_l2a(s2, l2a, tmp_path):
    zip_path = _zip(s2 / L2A, tmp_path / "product.zip")
    p = read_safe(zip_path)
    _same_product(p, l2a, zip_path)
    with rasterio.open(band_path(p, "SCL", 60)) as ds:
        assert ds.shape == (1830, 1830)
    with rasterio.open(p.masks["CLASSI"]) as ds:
        assert ds.count >= 1
    with pytest.raises(InputError, match="present only at 60 m"):
        band_path(p, "B04", 10)


def test_truncated_zip(s2, tmp_path):
    good = _zip(s2 / L1C, tmp_path / "good.zip")
    data = good.read_bytes()
    bad = tmp_path / "truncated.zip"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"truncated\.zip.*(corrupt|truncated)"):
        read_safe(bad)


def test_zip_with_corrupt_metadata_member(s2, tmp_path):
    zip_path = _zip(s2 / L1C, tmp_path / "corrupt.zip", zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(zip_path) as zf:
        info = zf.getinfo(f"{L1C}/MTD_MSIL1C.xml")
    data = bytearray(zip_path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + 50, start + 60):
        data[i] ^= 0xFF
    zip_path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"MTD_MSIL1C\.xml.*corrupt"):
        read_safe(zip_path)


def test_zip_without_product(tmp_path):
    zip_path = tmp_path / "photos.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("holiday/readme.txt", "nothing here")
    with pytest.raises(InputError, match="not a Sentinel-2 SAFE product"):
        read_safe(zip_path)


# --------------------------------------------------------------------------- invalid input


def test_random_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    with pytest.raises(InputError, match=f"{tmp_path}.*not a Sentinel-2 SAFE product"):
        read_safe(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        read_safe(tmp_path / "nope.SAFE")


def test_plain_file(tmp_path):
    f = tmp_path / "image.tif"
    f.write_bytes(b"II*\x00")
    with pytest.raises(InputError, match="not a Sentinel-2 SAFE product"):
        read_safe(f)


def _copy_metadata(s2: Path, tmp_path: Path) -> Path:
    dest = tmp_path / L1C
    shutil.copytree(s2 / L1C, dest, ignore=shutil.ignore_patterns("*.jp2"))
    return dest


def test_incomplete_safe_without_metadata(s2, tmp_path):
    safe = _copy_metadata(s2, tmp_path)
    (safe / "MTD_MSIL1C.xml").unlink()
    with pytest.raises(InputError, match="product metadata file is missing"):
        read_safe(safe)


def test_malformed_metadata(s2, tmp_path):
    safe = _copy_metadata(s2, tmp_path)
    mtd = safe / "MTD_MSIL1C.xml"
    mtd.write_bytes(mtd.read_bytes()[:5000])
    with pytest.raises(InputError, match=r"MTD_MSIL1C\.xml is not valid XML"):
        read_safe(safe)


def test_wrong_metadata_root(s2, tmp_path):
    safe = _copy_metadata(s2, tmp_path)
    (safe / "MTD_MSIL1C.xml").write_text("<Something><PRODUCT_URI>x</PRODUCT_URI></Something>")
    with pytest.raises(InputError, match="not Sentinel-2 L1C or L2A product metadata.*'Something'"):
        read_safe(safe)


def test_l1c_offsets_from_baseline_04(s2, tmp_path):
    safe = _copy_metadata(s2, tmp_path)
    mtd = safe / "MTD_MSIL1C.xml"
    text = mtd.read_text().replace("<PROCESSING_BASELINE>02.06<", "<PROCESSING_BASELINE>04.00<")
    offsets = "".join(
        f'<RADIO_ADD_OFFSET band_id="{i}">{-1000 - i}</RADIO_ADD_OFFSET>' for i in range(13)
    )
    mtd.write_text(
        text.replace(
            "</QUANTIFICATION_VALUE>",
            f"</QUANTIFICATION_VALUE><Radiometric_Offset_List>{offsets}</Radiometric_Offset_List>",
        )
    )
    p = read_safe(safe)
    assert p.processing_baseline == "04.00"
    assert p.offsets == {b: -1000.0 - i for i, b in enumerate(SPECTRAL_BANDS)}
    assert p.offsets["B8A"] == -1008 and p.offsets["B09"] == -1009  # bandId 8 is B8A
    np.testing.assert_allclose(reflectance(np.array([2000]), p, "B01"), [0.1])

    mtd.write_text(text)  # baseline 04.00 but no offsets given: assume the standard -1000
    with pytest.warns(UserWarning, match="no RADIO_ADD_OFFSET; assuming -1000"):
        assert read_safe(safe).offsets == dict.fromkeys(SPECTRAL_BANDS, -1000.0)


def test_malformed_tile_metadata(s2, tmp_path):
    safe = _copy_metadata(s2, tmp_path)
    (tl,) = safe.glob("GRANULE/*/MTD_TL.xml")
    tl.write_text("<n1:Level-1C_Tile_ID")
    with pytest.raises(InputError, match=r"MTD_TL\.xml is not valid XML"):
        read_safe(safe)


# --------------------------------------------------------------------------- old naming

OLD = "S2A_OPER_PRD_MSIL1C_PDMC_20160103T172824_R051_V20160101T105435_20160101T105435"
OLD_GRANULES = {
    tile: f"S2A_OPER_MSI_L1C_TL_SGS__20160101T164314_A002741_T{tile}_N02.01"
    for tile in ("31TDH", "31TDG")
}


def _old_product(tmp_path: Path, s2: Path, listing: str) -> Path:
    """A 2016-style multi-granule product: long names, one metadata file per granule.

    The XML follows the PSD-12/13 layout (``Granules``/``IMAGE_ID`` or
    ``Granule``/``IMAGE_FILE``); the one band file is the real B01 of the L1C test product.
    """
    safe = tmp_path / f"{OLD}.SAFE"
    entries = []
    for tile, gid in OLD_GRANULES.items():
        stem = gid.removesuffix("_N02.01")
        ids = [f"{stem}_{b}" for b in SPECTRAL_BANDS]
        if listing == "IMAGE_ID":
            items = "".join(f"<IMAGE_ID>{i}</IMAGE_ID>" for i in ids)
            entries.append(
                f'<Granule_List><Granules granuleIdentifier="{gid}" imageFormat="JPEG2000">'
                f"{items}</Granules></Granule_List>"
            )
        else:
            items = "".join(f"<IMAGE_FILE>GRANULE/{gid}/IMG_DATA/{i}</IMAGE_FILE>" for i in ids)
            entries.append(
                f'<Granule_List><Granule granuleIdentifier="{gid}" imageFormat="JPEG2000">'
                f"{items}</Granule></Granule_List>"
            )
        gdir = safe / "GRANULE" / gid
        (gdir / "QI_DATA").mkdir(parents=True)
        (gdir / "IMG_DATA").mkdir()
        mtd_tl = stem.replace("_MSI_L1C_TL_", "_MTD_L1C_TL_") + ".xml"
        (gdir / mtd_tl).write_text(
            '<n1:Level-1C_Tile_ID xmlns:n1="https://psd-12.sentinel2.eo.esa.int/PSD/'
            'S2_PDI_Level-1C_Tile_Metadata.xsd"><n1:General_Info>'
            f'<TILE_ID metadataLevel="Brief">{gid}</TILE_ID>'
            "<SENSING_TIME>2016-01-01T10:54:35.123Z</SENSING_TIME></n1:General_Info>"
            "<n1:Geometric_Info><Tile_Geocoding><HORIZONTAL_CS_CODE>EPSG:32631"
            "</HORIZONTAL_CS_CODE></Tile_Geocoding></n1:Geometric_Info></n1:Level-1C_Tile_ID>"
        )
        qi = stem.replace("_MSI_L1C_TL_", "_MSK_{}_")
        for kind, band in (("CLOUDS", "B00"), ("DETFOO", "B01"), ("NODATA", "B04")):
            (gdir / "QI_DATA" / (qi.format(kind) + f"_{band}_MSIL1C.gml")).write_text("<gml/>")
        if tile == "31TDH":
            shutil.copy(
                next((s2 / L1C).glob("GRANULE/*/IMG_DATA/*_B01.jp2")),
                gdir / "IMG_DATA" / f"{stem}_B01.jp2",
            )
    mtd_name = OLD.replace("_PRD_MSIL1C_", "_MTD_SAFL1C_") + ".xml"
    (safe / mtd_name).write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<n1:Level-1C_User_Product xmlns:n1="https://psd-12.sentinel2.eo.esa.int/PSD/'
        'User_Product_Level-1C.xsd"><n1:General_Info><Product_Info>'
        "<PRODUCT_START_TIME>2016-01-01T10:54:35.456Z</PRODUCT_START_TIME>"
        "<PRODUCT_URI/><PROCESSING_LEVEL>Level-1C</PROCESSING_LEVEL>"
        "<PRODUCT_TYPE>S2MSI1C</PRODUCT_TYPE><PROCESSING_BASELINE>02.01</PROCESSING_BASELINE>"
        '<Datatake datatakeIdentifier="GS2A_20160101T105435_002741_N02.01">'
        "<SPACECRAFT_NAME>Sentinel-2A</SPACECRAFT_NAME>"
        "<DATATAKE_SENSING_START>2016-01-01T10:54:35.456Z</DATATAKE_SENSING_START>"
        "<SENSING_ORBIT_NUMBER>51</SENSING_ORBIT_NUMBER></Datatake>"
        f"<Product_Organisation>{''.join(entries)}</Product_Organisation></Product_Info>"
        '<Product_Image_Characteristics><QUANTIFICATION_VALUE unit="none">10000'
        "</QUANTIFICATION_VALUE></Product_Image_Characteristics></n1:General_Info>"
        "<n1:Quality_Indicators_Info><Cloud_Coverage_Assessment>12.5"
        "</Cloud_Coverage_Assessment></n1:Quality_Indicators_Info></n1:Level-1C_User_Product>"
    )
    return safe


@pytest.mark.parametrize("listing", ["IMAGE_ID", "IMAGE_FILE"])
def test_old_multi_granule_product(s2, tmp_path, listing):
    safe = _old_product(tmp_path, s2, listing)
    with pytest.raises(InputError, match="2 granules.*31TDH.*31TDG|2 granules.*31TDG.*31TDH"):
        read_safe(safe)
    p = read_safe(safe, granule="T31TDH")
    assert p.name == OLD and p.level == "L1C" and p.spacecraft == "Sentinel-2A"
    assert set(p.granules) == set(OLD_GRANULES.values())
    assert (p.tile, p.crs, p.relative_orbit, p.processing_baseline) == (
        "31TDH",
        "EPSG:32631",
        51,
        "02.01",
    )
    assert p.sensing_time == datetime(2016, 1, 1, 10, 54, 35, 456000, tzinfo=UTC)
    assert p.cloud_cover == 12.5 and p.offsets["B04"] == 0.0
    assert set(p.bands) == {"B01", "B01_60m"}
    with rasterio.open(band_path(p, "B01")) as ds:
        assert ds.shape == (1830, 1830)
    assert set(p.masks) == {"CLOUDS", "DETFOO_B01", "NODATA_B04"}
    with pytest.raises(InputError, match=r"_T31TDH_B04\.jp2 but the file is absent"):
        band_path(p, "B04")

    other = read_safe(safe, granule=OLD_GRANULES["31TDG"])
    assert other.tile == "31TDG" and other.bands == {} and "B01_60m" in other.absent
    assert read_safe(safe, granule="31tdg").tile == "31TDG"
    with pytest.raises(InputError, match="no granule 'T32ABC'.*31TDH"):
        read_safe(safe, granule="T32ABC")


def test_old_product_with_one_granule_extracted(s2, tmp_path):
    safe = _old_product(tmp_path, s2, "IMAGE_ID")
    shutil.rmtree(safe / "GRANULE" / OLD_GRANULES["31TDG"])
    p = read_safe(safe)  # only one granule on disk: no need to choose
    assert p.tile == "31TDH" and len(p.granules) == 2
