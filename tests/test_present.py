"""Pictures, overlays, animation, points, STAC catalog and report of a run (tio.present)."""

import json
import re
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
import rasterio
import xarray as xr
from PIL import Image
from pyproj import Transformer

from tio.config import load_config
from tio.errors import ConfigError, InputError
from tio.pipeline import run
from tio.points import Point, locate
from tio.present import attribution_for, load_run, render_run
from tio.report import assess
from tio.synthetic import make_scene


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run on a generated scene, with one user point in lon/lat."""
    root = tmp_path_factory.mktemp("present")
    make_scene(root / "scenes", shape=(200, 200), n_dates=6, seed=11)
    with rasterio.open(sorted((root / "scenes").glob("*.tif"))[0]) as src:
        x, y = src.xy(150, 40)  # a pixel in the lower left, away from the landslide
        lon, lat = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True).transform(x, y)
    (root / "sites.csv").write_text(f"name,lon,lat\nfield site,{lon},{lat}\n")
    cfg = load_config(
        None,
        {
            "input.paths": [str(root / "scenes")],
            "output.directory": str(root / "out"),
            "output.points": str(root / "sites.csv"),
        },
    )
    result = run(cfg, progress=False)
    return root, result


def test_every_picture_and_product_is_written(finished):
    root, result = finished
    out = result.out_dir
    for name in [
        "quicklook_cumulative.png",
        "quicklook_velocity.png",
        "quicklook_rms.png",
        "quicklook_coverage.png",
        "rms_dates.png",
        "animation.png",
        "points.csv",
        "points.png",
        "report.html",
        "catalog.json",
        "timeseries.json",
        "overlays/overlays.json",
        "overlays/animation_4326.png",
        "overlays/cumulative_magnitude_4326.png",
        "overlays/cumulative_magnitude_4326.pgw",
    ]:
        assert (out / name).is_file(), name
    with Image.open(out / "quicklook_cumulative.png") as im:
        assert im.size == (1500, 520)
    with Image.open(out / "quicklook_rms.png") as im:
        assert im.size == (1050, 520)


def test_animation_has_one_frame_per_date_and_loops(finished):
    _, result = finished
    n_dates = len(result.scenes)
    for name in ("animation.png", "overlays/animation_4326.png"):
        with Image.open(result.out_dir / name) as im:
            assert im.format == "PNG" and im.is_animated, name
            assert im.n_frames == n_dates
            assert im.info["loop"] == 0  # forever
            first = np.asarray(im.convert("RGBA")).copy()
            im.seek(n_dates - 1)
            last = np.asarray(im.convert("RGBA"))
            assert np.abs(first.astype(int) - last.astype(int)).sum() > 0  # frames differ
    # the file starts with an acTL chunk before the image data: browsers play it
    data = (result.out_dir / "animation.png").read_bytes()
    assert data.index(b"acTL") < data.index(b"IDAT")


def test_gif_on_request_and_mp4_needs_ffmpeg(finished, tmp_path, monkeypatch):
    _, result = finished
    ts, stack = load_run(result.out_dir)
    from tio.animation import animate_map

    gif = animate_map(ts, tmp_path / "a.gif", stack=stack, fmt="gif")
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == ts.sizes["time"]
        assert im.info["loop"] == 0
    monkeypatch.setenv("PATH", str(tmp_path))  # no ffmpeg there
    from tio.errors import OutputError

    with pytest.raises(OutputError, match="ffmpeg"):
        animate_map(ts, tmp_path / "a.mp4", stack=stack, fmt="mp4")
    assert not (tmp_path / "a.mp4").exists()


def test_overlays_are_placed_in_lonlat_with_transparent_nodata(finished):
    _, result = finished
    out = result.out_dir
    index = json.loads((out / "overlays" / "overlays.json").read_text())
    assert index["crs"] == "EPSG:4326"
    ts = result.timeseries
    # the grid corners in lon/lat fall inside the overlay bounds, within a cell
    with rasterio.open(out / "cumulative_ew.tif") as src:
        to_ll = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True)
        left, bottom, right, top = src.bounds
        lons, lats = to_ll.transform([left, right, left, right], [top, top, bottom, bottom])
        cell = abs(src.res[0])
    west, south, east, north = index["overlays"]["cumulative_ew"]["bbox"]
    assert index["overlays"]["cumulative_ew"]["bounds"] == [[south, west], [north, east]]
    tol = 2 * cell / 111_000 / np.cos(np.radians(south))
    assert west - tol <= min(lons) and max(lons) <= east + tol
    assert south - tol <= min(lats) and max(lats) <= north + tol
    assert min(lons) < west + tol and max(lats) > north - tol  # tight, not just containing
    # world file: pixel size and the centre of the upper-left pixel agree with the bounds
    png = out / "overlays" / "cumulative_ew_4326.png"
    a, d, b, e, cx, cy = (float(v) for v in png.with_suffix(".pgw").read_text().split())
    with Image.open(png) as im:
        w, h = im.size
        rgba = np.asarray(im.convert("RGBA"))
    assert d == 0 and b == 0 and e < 0 < a
    assert cx - a / 2 == pytest.approx(west) and cy - e / 2 == pytest.approx(north)
    assert cx - a / 2 + w * a == pytest.approx(east)
    assert max(w, h) >= 512  # crisp cells, not a thumbnail
    # outside the rotated footprint and at NaN cells the overlay is transparent
    assert rgba[0, 0, 3] == 0 or rgba[-1, -1, 3] == 0
    assert (rgba[..., 3] == 255).mean() > 0.5
    n_nan = int(np.isnan(ts["cumulative_ew"].values[-1]).sum())
    if n_nan:
        assert (rgba[..., 3] == 0).sum() > 0


def test_quicklook_nodata_is_transparent_over_background(finished):
    """NaN cells show the greyscale image, not a colour: grey pixels appear in the panel."""
    _, result = finished
    with Image.open(result.out_dir / "quicklook_cumulative.png") as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    grey = (np.ptp(rgb, axis=2) < 4) & (rgb[..., 0] > 20) & (rgb[..., 0] < 235)
    assert grey.sum() > 100


def test_points_csv_holds_the_user_point_and_the_largest_motion(finished):
    _, result = finished
    ts = result.timeseries
    lines = (result.out_dir / "points.csv").read_text().splitlines()
    head = lines[0].split(",")
    assert head[:3] == ["point", "x", "y"] and "sigma_magnitude" in head
    rows = [dict(zip(head, line.split(","), strict=True)) for line in lines[1:]]
    names = [r["point"] for r in rows]
    n = ts.sizes["time"]
    assert names.count("field site") == n and names.count("largest motion") == n
    last = [r for r in rows if r["point"] == "largest motion"][-1]
    mag = np.hypot(ts["cumulative_ew"].values[-1], ts["cumulative_ns"].values[-1])
    assert float(last["magnitude"]) == pytest.approx(np.nanmax(mag), abs=1e-3)
    site = [r for r in rows if r["point"] == "field site"]
    r, c = int(site[-1]["row"]), int(site[-1]["col"])
    assert float(site[-1]["ew"]) == pytest.approx(ts["cumulative_ew"].values[-1, r, c], abs=1e-3)
    assert [s["date"] for s in site] == [sc.date.isoformat() for sc in result.scenes]


def test_point_outside_the_grid_and_bad_points_file(finished, tmp_path):
    _, result = finished
    with pytest.raises(InputError, match="outside the output grid"):
        locate(result.timeseries, [Point("far", 10.0, 10.0)])
    bad = tmp_path / "p.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="lon,lat or x,y"):
        load_config(None, {"output.points": str(bad), "input.paths": ["."]})


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.hrefs = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a["src"])
        if tag == "a":
            self.hrefs.append(a["href"])


def test_report_embeds_every_picture_and_has_no_broken_link(finished):
    _, result = finished
    out = result.out_dir
    text = (out / "report.html").read_text()
    parser = _Links()
    parser.feed(text)
    assert all(s.startswith("data:image/") for s in parser.srcs)
    # every picture of the run is embedded
    pictures = [
        "quicklook_cumulative.png",
        "quicklook_velocity.png",
        "quicklook_rms.png",
        "quicklook_coverage.png",
        "rms_dates.png",
        "animation.png",
        "points.png",
    ]
    assert len(parser.srcs) >= len(pictures)
    for name in pictures:
        import base64

        embedded = base64.b64encode((out / name).read_bytes()).decode()
        assert embedded in text, name
    assert parser.hrefs and all((out / h).is_file() for h in parser.hrefs)
    assert "Verdict:" in text and "cumulative_ew.tif" in text


def test_verdict_names_a_disconnected_network_and_low_coverage(finished):
    _, result = finished
    ts = result.timeseries
    ok = assess(ts)
    assert ok.verdict == "good", ok.reasons
    t = ts["time"].values
    bridges = (ts["date1"].values <= t[2]) & (ts["date2"].values >= t[3])
    keep = np.flatnonzero(~bridges)  # no pair across the gap between dates 2 and 3
    cut = ts.isel(pair=keep)
    verdict = assess(cut)
    assert verdict.verdict == "usable with care"
    d2 = str(np.datetime_as_string(ts["time"].values[2], unit="D"))
    d3 = str(np.datetime_as_string(ts["time"].values[3], unit="D"))
    assert any(f"disconnected between {d2} and {d3}" in r for r in verdict.reasons), verdict
    holes = ts.copy(deep=True)
    holes["cumulative_ew"][:] = np.nan
    holes["cumulative_ew"][:, :2, :2] = 0
    bad = assess(holes, scores=np.full((ts.sizes["pair"], 4, 4), 0.1, "float32"))
    assert bad.verdict == "reprocess"
    assert any("larger window" in r for r in bad.reasons)


def test_stac_catalog_links_and_assets_resolve(finished):
    _, result = finished
    out = result.out_dir
    cat = json.loads((out / "catalog.json").read_text())
    assert cat["type"] == "Catalog" and cat["stac_version"] == "1.0.0"
    items = [link["href"] for link in cat["links"] if link["rel"] == "item"]
    assert "./timeseries.json" in items
    assert len(items) == 1 + len(result.pairs)
    for href in items:
        path = (out / href).resolve()
        item = json.loads(path.read_text())
        assert item["type"] == "Feature" and item["geometry"]["type"] == "Polygon"
        assert item["properties"]["proj:code"] == "EPSG:32632"
        root = [link for link in item["links"] if link["rel"] == "root"][0]
        assert (path.parent / root["href"]).resolve() == (out / "catalog.json").resolve()
        for asset in item["assets"].values():
            assert (path.parent / asset["href"]).is_file(), asset["href"]
    ts_item = json.loads((out / "timeseries.json").read_text())
    assert ts_item["properties"]["start_datetime"].startswith(result.scenes[0].date.isoformat())
    assert ts_item["assets"]["cumulative_ew"]["type"].startswith("image/tiff")
    w, s, e, n = ts_item["bbox"]
    lon, lat = ts_item["geometry"]["coordinates"][0][0]
    assert w <= lon <= e and s <= lat <= n


def test_quicklook_command_redraws_without_recomputing(finished):
    _, result = finished
    out = result.out_dir
    nc_time = (out / "timeseries.nc").stat().st_mtime_ns
    for name in ("quicklook_velocity.png", "animation.png", "report.html"):
        (out / name).unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "tio", "quicklook", str(out)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("quicklook_velocity.png", "animation.png", "report.html"):
        assert (out / name).is_file()
        assert str(out / name) in proc.stdout
    assert (out / "timeseries.nc").stat().st_mtime_ns == nc_time
    proc = subprocess.run(
        [sys.executable, "-m", "tio", "quicklook", str(out.parent / "nothing")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "no such run folder" in proc.stderr
    help_text = subprocess.run(
        [sys.executable, "-m", "tio", "quicklook", "--help"], capture_output=True, text=True
    ).stdout
    assert "Examples:" in help_text


def test_pixel_unit_runs_get_pictures_but_no_overlays(finished, tmp_path):
    _, result = finished
    ts = result.timeseries.copy()
    h, w = ts.sizes["y"], ts.sizes["x"]
    ts = ts.assign_coords(x=np.arange(w) * 8 + 16.0, y=np.arange(h) * 8 + 16.0)
    ts.attrs.update(crs=None, transform=[8.0, 0, 12.0, 0, 8.0, 12.0], units="pixel")
    written = render_run(tmp_path, ts=ts)
    names = {p.name for p in written}
    assert "quicklook_cumulative.png" in names and "report.html" in names
    assert not (tmp_path / "overlays").exists()


def test_attribution_only_for_sentinel_sources():
    assert attribution_for(["/d/S2A_MSIL1C_20200101.SAFE"], [2020, 2021]) == (
        "Contains modified Copernicus Sentinel data 2020-2021"
    )
    assert attribution_for(["/d/LC08_L1TP_0200392015.tif"], [2015]) is None


def test_netcdf_carries_the_cf_attributes(finished):
    _, result = finished
    ds = xr.open_dataset(result.out_dir / "timeseries.nc", decode_cf=False)
    assert ds.attrs["Conventions"] == "CF-1.8"
    for key in ("title", "institution", "source", "history", "references"):
        assert ds.attrs.get(key), key
    gm = ds["spatial_ref"].attrs
    assert gm["grid_mapping_name"] == "transverse_mercator" and "crs_wkt" in gm
    for name, var in ds.data_vars.items():
        if name == "spatial_ref":
            continue
        assert var.attrs.get("units"), name
        assert var.attrs.get("long_name"), name
        if {"x", "y"} <= set(var.dims):
            assert var.attrs["grid_mapping"] == "spatial_ref", name
    assert re.match(r"days since \d{4}-\d{2}-\d{2}", ds["time"].attrs["units"])
    assert ds["time"].attrs["calendar"] and ds["time"].attrs["standard_name"] == "time"
    for c in ("x", "y"):
        assert ds[c].attrs["standard_name"] == f"projection_{c}_coordinate"
    ds.close()
