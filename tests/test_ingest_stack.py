"""Scene discovery and the common grid, on real Sentinel-2 and Landsat files."""

import datetime as dt
import shutil

import numpy as np
import pytest
import rasterio
from rasterio.warp import Resampling, reproject, transform_bounds

from tio.errors import InputError, NoOverlapError
from tio.ingest import find_scenes
from tio.stack import build_stack, load_stack, save_stack

S2PAIR = "sentinel2_l1c_pair_T33UUU"
L2A = "sentinel2_safe/S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454.SAFE"
L1C = "sentinel2_safe/S2A_MSIL1C_20180101T105441_N0206_R051_T31TDH_20180101T124911.SAFE"


def test_safe_products_band_and_date(shared_data):
    scenes = find_scenes([shared_data / L1C, shared_data / L2A], band="B01")
    assert [s.date for s in scenes] == [dt.date(2018, 1, 1), dt.date(2022, 10, 5)]
    assert scenes[0].path.endswith("_B01.jp2")
    assert scenes[1].path.endswith("_B01_60m.jp2")
    with rasterio.open(scenes[0].path) as src:
        assert src.width == 1830


def test_safe_zip_is_read_through_vsizip(shared_data, tmp_path):
    z = shutil.make_archive(
        str(tmp_path / L1C.split("/")[-1]),
        "zip",
        shared_data / "sentinel2_safe",
        L1C.split("/")[-1],
    )
    other = tmp_path / "x_20190101.tif"
    _copy_with_date(shared_data / "landsat8_pan_p020r039" / "l8_B8.tif", other)
    scenes = find_scenes([z, other], band="B01")
    assert scenes[0].path.startswith("/vsizip/") and scenes[0].date == dt.date(2018, 1, 1)
    with rasterio.open(scenes[0].path) as src:
        assert src.count == 1


def test_missing_band_is_a_clear_error(shared_data):
    # the 10 m bands of this product are not in the test data
    with pytest.raises(InputError, match="band B08 at 10 m is not available"):
        find_scenes([shared_data / L2A, shared_data / L1C], band="B08")
    # B04 at its native 10 m is absent from both; the L2A has it at 60 m only on request
    with pytest.raises(InputError, match="B04"):
        find_scenes([shared_data / L2A, shared_data / L1C], band="B04")
    from tio.ingest import open_scene

    assert open_scene(shared_data / L2A, band="B04_60m").path.endswith("_B04_60m.jp2")
    scene = open_scene(shared_data / L2A, band="B01")
    assert (scene.tile, scene.orbit, scene.sensor) == ("29UNU", 23, "Sentinel-2A")


def _copy_with_date(src_path, dst_path, **changes):
    with rasterio.open(src_path) as src:
        profile = src.profile | {"driver": "GTiff"} | changes
        data = src.read()
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data)


def test_bad_inputs_name_the_file(tmp_path, shared_data):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no image"):
        find_scenes([tmp_path / "empty"])
    with pytest.raises(InputError, match="input not found"):
        find_scenes([tmp_path / "nope.tif"])
    corrupt = tmp_path / "broken_20200101.tif"
    corrupt.write_bytes(b"II*\x00garbage" * 10)
    with pytest.raises(InputError, match="broken_20200101.tif"):
        find_scenes([corrupt])
    nodate = tmp_path / "image.tif"
    _copy_with_date(shared_data / "landsat7_khumbu" / "LE71400412000304SGS00_B4_crop.TIF", nodate)
    with pytest.raises(InputError, match="image.tif: no acquisition date"):
        find_scenes([nodate])
    with pytest.raises(InputError, match="at least 2 dates"):
        find_scenes([_dated(tmp_path, shared_data, "20200101")])


def _dated(tmp_path, shared_data, date):
    p = tmp_path / f"scene_{date}.tif"
    _copy_with_date(shared_data / "landsat8_pan_p020r039" / "l8_B8.tif", p)
    return p


def test_aoi_window_on_real_sentinel2_pair(shared_data, tmp_path):
    folder = shared_data / "sentinel2_l1c_pair_T33UUU"
    scenes = find_scenes([folder])
    assert [s.date for s in scenes] == [dt.date(2016, 5, 29), dt.date(2016, 6, 8)]
    # a 2 km x 1.5 km box inside both images
    aoi = transform_bounds("EPSG:32633", "EPSG:4326", 340000, 5845000, 342000, 5846500)
    stack = build_stack(scenes, aoi=aoi)
    t = stack.attrs["transform"]
    assert t[0] == 10 and t[4] == -10
    # snapped outward to whole pixels of the first image: origin on its 10 m grid
    assert (t[2] - 335440) % 10 == 0 and (t[5] - 5866490) % 10 == 0
    assert t[2] <= 340000 and t[5] >= 5846500
    ny, nx = stack["image"].shape[1:]
    assert 200 <= nx <= 215 and 150 <= ny <= 165  # the box grows a little in lon/lat
    assert np.isfinite(stack["image"].values).all()
    # the second date is read at the same pixels as a direct windowed read
    with rasterio.open(scenes[1].path) as src:
        win = rasterio.windows.from_bounds(
            t[2], t[5] + ny * t[4], t[2] + nx * t[0], t[5], src.transform
        )
        direct = src.read(1, window=win.round_offsets().round_lengths())
    np.testing.assert_array_equal(stack["image"].values[1], direct.astype("float32"))
    path = tmp_path / "stack.nc"
    save_stack(stack, path)
    again = load_stack(path)
    np.testing.assert_array_equal(again["image"].values, stack["image"].values)
    assert again.attrs["transform"] == stack.attrs["transform"]


def test_aoi_outside_image(shared_data):
    scenes = find_scenes([shared_data / "sentinel2_l1c_pair_T33UUU"])
    with pytest.raises(NoOverlapError, match="outside"):
        build_stack(scenes, aoi=(2.0, 48.0, 2.1, 48.1))


def test_other_grid_is_resampled(shared_data, tmp_path):
    src_path = shared_data / "landsat8_pan_p020r039" / "l8_B8.tif"
    first = tmp_path / "l8_20150804.tif"
    _copy_with_date(src_path, first)
    # the same scene on a 20 m grid shifted by half a pixel
    with rasterio.open(src_path) as src:
        data = src.read(1)
        t = src.transform
        new_t = rasterio.Affine(20, 0, t.c + 7.5, 0, -20, t.f - 7.5)
        out = np.zeros((src.height * 15 // 20, src.width * 15 // 20), "uint16")
        reproject(
            data,
            out,
            src_transform=t,
            src_crs=src.crs,
            dst_transform=new_t,
            dst_crs=src.crs,
            resampling=Resampling.average,
            src_nodata=0,
            dst_nodata=0,
        )
        profile = src.profile | {
            "driver": "GTiff",
            "transform": new_t,
            "width": out.shape[1],
            "height": out.shape[0],
            "nodata": 0,
        }
    second = tmp_path / "l8_20150820.tif"
    with rasterio.open(second, "w", **profile) as dst:
        dst.write(out, 1)
    aoi = transform_bounds("EPSG:32616", "EPSG:4326", 455000, 3395000, 465000, 3405000)
    stack = build_stack(find_scenes([first, second]), aoi=aoi, resampling="cubic")
    a, b = stack["image"].values
    ok = np.isfinite(a) & np.isfinite(b)
    assert ok.mean() > 0.95
    assert np.corrcoef(a[ok], b[ok])[0, 1] > 0.9


def test_landsat_dates_from_mtl_and_scene_id(shared_data):
    from tio.ingest import open_scene

    assert open_scene(shared_data / "landsat8_pan_p020r039" / "l8_B8.tif").date == dt.date(
        2015, 8, 4
    )
    khumbu = shared_data / "landsat7_khumbu" / "LE71400412000304SGS00_B4_crop.TIF"
    assert open_scene(khumbu).date == dt.date(2000, 10, 30)  # year 2000, day 304


def test_bad_scenes_are_skipped_while_enough_remain(tmp_path, shared_data, caplog):
    good = [_dated(tmp_path, shared_data, d) for d in ("20200101", "20200111")]
    corrupt = tmp_path / "scene_20200121.tif"
    corrupt.write_bytes(b"II*\x00" + b"\x00" * 100)
    with caplog.at_level("WARNING"):
        scenes = find_scenes([tmp_path])
    assert [s.source for s in scenes] == [str(p) for p in good]
    assert "scene_20200121.tif" in caplog.text
    # a truncated JPEG 2000 opens but cannot be read: dropped from the stack, the rest goes on
    src = shared_data / S2PAIR / "tgt_S2A_20160529T153631_T33UUU_sub.jp2"
    truncated = tmp_path / "trunc" / "tgt_S2A_20160529T153631_T33UUU_sub.jp2"
    truncated.parent.mkdir()
    truncated.write_bytes(src.read_bytes()[: src.stat().st_size // 3])
    ref = shared_data / S2PAIR / "ref_S2A_20160608T153121_T33UUU_sub.jp2"
    third = tmp_path / "trunc" / "ref_copy_20160618.jp2"
    third.write_bytes(ref.read_bytes())
    aoi = transform_bounds("EPSG:32633", "EPSG:4326", 340000, 5845000, 341000, 5846000)
    scenes = find_scenes([truncated, ref, third])
    with caplog.at_level("WARNING"):
        stack = build_stack(scenes, aoi=aoi)
    assert stack.sizes["time"] == 2
    assert "tgt_S2A_20160529T153631_T33UUU_sub.jp2" in stack.attrs["dropped"]


def test_cloudy_date_dropped_by_max_cloud(tmp_path, shared_data):
    paths = [_dated(tmp_path, shared_data, d) for d in ("20200101", "20200111", "20200121")]
    with rasterio.open(paths[1], "r+") as dst:
        data = dst.read(1)
        data[: int(data.shape[0] * 0.7)] = 0  # 70 % empty (0 = nodata for 16-bit imagery)
        dst.write(data, 1)
    scenes = find_scenes(paths)
    assert build_stack(scenes, max_cloud=0.5).sizes["time"] == 2
    assert "max_cloud" in build_stack(scenes, max_cloud=0.5).attrs["dropped"]
    assert build_stack(scenes, max_cloud=0.9).sizes["time"] == 3
    with pytest.raises(InputError, match="at least 2 usable dates"):
        build_stack(scenes[:2], max_cloud=0.5)


def test_images_without_georeferencing_need_pixel_units(shared_data):
    folder = shared_data / "perito_moreno_glacier"
    scenes = find_scenes([folder / "20200207.jpg", folder / "20200210.jpg"])
    with pytest.raises(InputError, match="--pixel-units"):
        build_stack(scenes, pixel_units=False)
    stack = build_stack(scenes, pixel_units=True)
    assert stack.attrs["crs"] is None and stack["image"].shape == (2, 1231, 1731)


def test_tio_scenes_lists_what_a_run_would_keep(shared_data):
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tio",
            "scenes",
            shared_data / L2A,
            shared_data / L1C,
            shared_data / S2PAIR,
            "--band",
            "B01",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    l2a = next(line for line in lines if "29UNU" in line)
    assert "2022-10-05" in l2a and "Sentinel-2A" in l2a and " 23 " in l2a
    # the earliest date (a Sentinel-2 subset near Berlin) sets the grid: both subsets are kept,
    # the two products elsewhere in Europe are dropped, with why
    s2 = next(line for line in lines if "ref_S2A_20160608" in line)
    assert "Sentinel-2A" in s2 and "kept" in s2
    assert "dropped: no valid pixel over the area" in l2a
    assert lines[-1].startswith("2 of 4 inputs kept")


def test_sentinel2_cloud_mask_applied_when_reading(shared_data):
    from rasterio.enums import Resampling

    from tio.cloudmask import cloud_mask
    from tio.ingest import open_scene
    from tio.stack import grid_for, read_on_grid

    scene = open_scene(shared_data / L2A, band="B04_60m")
    aoi = transform_bounds("EPSG:32629", "EPSG:4326", 540000, 5840000, 560000, 5860000)
    grid = grid_for(scene, aoi)
    raw = read_on_grid(scene, grid, Resampling.nearest, mask_clouds=False)
    masked = read_on_grid(scene, grid, Resampling.nearest)
    clouds, source = cloud_mask(scene.product, grid)
    assert source == "SCL"
    assert 0.05 < clouds.mean() < 0.95  # a partly cloudy area
    assert np.isnan(masked[clouds]).all()
    np.testing.assert_array_equal(masked[~clouds], raw[~clouds])


def test_orbit_filter(shared_data):
    from tio.ingest import survey

    found = survey([shared_data / L2A, shared_data / L1C], band="B01", orbit=23)
    by_tile = {f.scene.tile: f for f in found}
    assert by_tile["29UNU"].kept
    assert not by_tile["31TDH"].kept and "relative orbit 51" in by_tile["31TDH"].reason


def test_first_scene_outside_the_area_is_dropped_not_fatal(shared_data, tmp_path):
    ref = shared_data / S2PAIR / "ref_S2A_20160608T153121_T33UUU_sub.jp2"
    copy = tmp_path / "ref_copy_20160618.jp2"
    copy.write_bytes(ref.read_bytes())
    # south of the 2016-05-29 subset (which ends at y = 5834970), inside the 2016-06-08 one
    aoi = transform_bounds("EPSG:32633", "EPSG:4326", 345000, 5831000, 348000, 5834000)
    scenes = find_scenes([shared_data / S2PAIR, copy])
    assert scenes[0].date == dt.date(2016, 5, 29)
    stack = build_stack(scenes, aoi=aoi)
    assert stack.sizes["time"] == 2
    assert "tgt_S2A_20160529" in stack.attrs["dropped"] and "outside" in stack.attrs["dropped"]
