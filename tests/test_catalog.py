"""Catalogue search and retrieval against real servers on 127.0.0.1 (no mock of HTTP).

* A real STAC API, stac-fastapi-geoparquet (DuckDB through rustac, its extensions
  from PyPI so that it runs offline), served by uvicorn, holds STAC items whose
  assets are cloud-optimised GeoTIFF crops of the real Sentinel-2 pair T33UUU.
* A small file server (http.server) serves those files with HTTP Range support,
  counts the bytes it sends, and injects faults (500, 401, dropped connections).

``tio search`` and a 2-date ``tio run`` go through both; the download cache is
tested for retries, credentials errors, resume after a dropped connection and
checksum mismatches. The real STAC items of ``shared/data/stac_items`` are parsed
into scenes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import importlib
import json
import platform
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.warp import transform_bounds
from rasterio.windows import from_bounds

from tio.catalog import item_to_scene
from tio.cli.main import cli
from tio.download import Cache, Checksum, parse_multihash, request
from tio.errors import AuthError, DownloadError

# ------------------------------------------------------------------ file server


class _FileHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _fault(self):
        faults = self.server.faults.get(self.path.split("?")[0])
        return faults.pop(0) if faults else None

    def _send_error(self, code: int):
        body = f"error {code}".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self):
        self._serve(head=True)

    def do_POST(self):  # an OpenID token endpoint: password grant
        from urllib.parse import parse_qs

        form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
        srv = self.server
        with srv.lock:
            srv.requests.append(("POST", self.path, None))
            srv.posted.append(form)
        if form.get("username") == ["alice"] and form.get("password") == ["s3cret-pw"]:
            body = json.dumps({"access_token": "tok-123"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self._send_error(401)

    def do_GET(self):
        self._serve(head=False)

    def _serve(self, head: bool):
        srv = self.server
        with srv.lock:
            srv.requests.append((self.command, self.path, self.headers.get("Range")))
            fault = self._fault()
        if isinstance(fault, str) and fault.startswith("sleep:"):  # the client times out
            time.sleep(float(fault[6:]))
            self.close_connection = True
            return
        if fault in (500, 503, 429, 401, 403):
            self._send_error(fault)
            return
        if self.path.startswith("/proxy") and srv.upstream:  # pass through to the STAC API
            import urllib.request

            with urllib.request.urlopen(srv.upstream + self.path[len("/proxy") :]) as up:
                body = up.read()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        need = srv.auth.get(self.path.split("?")[0])
        if need and self.headers.get("Authorization") != need:
            self._send_error(401)
            return
        path = srv.root / self.path.split("?")[0].lstrip("/")
        if not path.is_file():
            self._send_error(404)
            return
        data = path.read_bytes()
        start, end, status = 0, len(data) - 1, 200
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if m:
                start = int(m[1])
                end = min(int(m[2]) if m[2] else len(data) - 1, len(data) - 1)
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
        body = data[start : end + 1]
        self.send_response(status)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if head:
            return
        if isinstance(fault, str) and fault.startswith("drop:"):
            body = body[: int(fault[5:])]  # then the connection is cut
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True
            with srv.lock:
                srv.bytes_served += len(body)
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)
        with srv.lock:
            srv.bytes_served += len(body)


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), _FileHandler)
        self.root = root
        self.lock = threading.Lock()
        self.faults: dict[str, list] = {}
        self.auth: dict[str, str] = {}
        self.posted: list[dict] = []
        self.upstream: str | None = None
        self.requests: list[tuple] = []
        self.bytes_served = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def reset(self):
        with self.lock:
            self.faults.clear()
            self.auth.clear()
            self.posted.clear()
            self.requests.clear()
            self.bytes_served = 0


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    srv = FileServer(root)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


# ------------------------------------------------------------------ STAC API server


def _duckdb_extensions(root: Path) -> Path:
    """A DuckDB extension folder made of the extensions installed from PyPI."""
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine()]
    for name in ("spatial", "icu", "parquet", "json"):
        pkg = importlib.import_module(f"duckdb_extension_{name}")
        (found,) = Path(pkg.__file__).parent.glob(f"extensions/*/{name}.duckdb_extension")
        dest = root / found.parent.name / f"linux_{arch}"
        dest.mkdir(parents=True, exist_ok=True)
        (dest / found.name).symlink_to(found)
    return root


def start_stac_api(items: list[dict], tmp: Path):
    """stac-fastapi-geoparquet over ``items`` on 127.0.0.1; returns (url, server, thread)."""
    import rustac
    import uvicorn
    from stac_fastapi.geoparquet.api import create
    from stac_fastapi.geoparquet.settings import Settings

    parquet = tmp / "items.parquet"

    async def write():
        await rustac.write(str(parquet), items)

    asyncio.run(write())
    client = rustac.DuckdbClient(
        install_extensions=False, extension_directory=str(_duckdb_extensions(tmp / "duckdb"))
    )
    settings = Settings(
        stac_fastapi_geoparquet_href=str(parquet),
        stac_fastapi_title="tio test catalogue",
        stac_fastapi_description="real STAC API on loopback",
        stac_fastapi_landing_id="tio-test",
    )
    api = create(settings=settings, duckdb_client=client)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(api.app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "the STAC API did not start"
        time.sleep(0.05)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


# ------------------------------------------------------------------ test catalogue

CROP = (336000.0, 5840000.0, 354000.0, 5860000.0)  # EPSG:32633, inside both images
AOI_UTM = (344000.0, 5848000.0, 346500.0, 5850500.0)  # 2.5 km x 2.5 km
SPLIT = {  # two tiles of one acquisition, overlapping by 1 km, the area on both
    "S2A_33UUU_20160708": (336000.0, 5840000.0, 345500.0, 5860000.0),
    "S2A_33UVU_20160708": (344500.0, 5840000.0, 354000.0, 5860000.0),
}


def _aoi_lonlat(box=AOI_UTM):
    return transform_bounds("EPSG:32633", "EPSG:4326", *box)


def _write_cog(path: Path, data: np.ndarray, transform, nodata=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(
        driver="COG",
        width=data.shape[1],
        height=data.shape[0],
        count=1,
        dtype=data.dtype,
        crs="EPSG:32633",
        transform=transform,
        blocksize=256,
        compress="DEFLATE",
    )
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


def _sha256_multihash(path: Path) -> str:
    return "1220" + hashlib.sha256(path.read_bytes()).hexdigest()


def _item(item_id, when, href_dir, root_url, *, cloud, orbit, baseline, tile, box, files_root):
    w, s, e, n = transform_bounds("EPSG:32633", "EPSG:4326", *box, densify_pts=21)
    red = files_root / href_dir / "B04.tif"
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": item_id,
        "collection": "sentinel-2-l2a",
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]],
        },
        "bbox": [w, s, e, n],
        "properties": {
            "datetime": when,
            "platform": "sentinel-2a",
            "constellation": "sentinel-2",
            "eo:cloud_cover": cloud,
            "s2:mgrs_tile": tile,
            "sat:relative_orbit": orbit,
            "s2:processing_baseline": baseline,
            "proj:epsg": 32633,
        },
        "links": [],
        "assets": {
            "red": {
                "href": f"{root_url}/{href_dir}/B04.tif",
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "roles": ["data"],
                "file:checksum": _sha256_multihash(red),
                "file:size": red.stat().st_size,
            },
            "scl": {
                "href": f"{root_url}/{href_dir}/SCL.tif",
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "roles": ["data"],
            },
        },
    }


@pytest.fixture(scope="module")
def catalogue(files, shared_data, tmp_path_factory):
    """COG crops of the real T33UUU pair served over HTTP, and a STAC API describing them.

    Items: the two real dates (orbit 65, tile 33UUU), an older processing baseline
    of the first date, the same date on a neighbour tile covering part of the area,
    a third date on another orbit, and a cloudy date (80 %).
    """
    pair = shared_data / "sentinel2_l1c_pair_T33UUU"
    sizes = {}
    for src_name, folder, cloud_block in (
        ("ref_S2A_20160608T153121_T33UUU_sub.jp2", "S2A_33UUU_20160608", False),
        ("tgt_S2A_20160529T153631_T33UUU_sub.jp2", "S2A_33UUU_20160529", True),
    ):
        with rasterio.open(pair / src_name) as src:
            win = from_bounds(*CROP, src.transform).round_offsets().round_lengths()
            data = src.read(1, window=win)
            transform = src.window_transform(win)
        _write_cog(files.root / folder / "B04.tif", data, transform, nodata=0)
        # a scene classification at 20 m: vegetation (4), with a cloud (9) patch in the area
        scl = np.full((data.shape[0] // 2, data.shape[1] // 2), 4, dtype="uint8")
        if cloud_block:
            r0 = int((CROP[3] - AOI_UTM[3]) / 20)
            c0 = int((AOI_UTM[0] - CROP[0]) / 20)
            scl[r0 : r0 + 15, c0 : c0 + 15] = 9
        _write_cog(files.root / folder / "SCL.tif", scl, transform * transform.scale(2, 2))
        sizes[folder] = (files.root / folder / "B04.tif").stat().st_size
    # one acquisition cut in two overlapping tiles, the area spanning both
    with rasterio.open(pair / "ref_S2A_20160608T153121_T33UUU_sub.jp2") as src:
        for folder, box in SPLIT.items():
            win = from_bounds(*box, src.transform).round_offsets().round_lengths()
            data = src.read(1, window=win)
            transform = src.window_transform(win)
            _write_cog(files.root / folder / "B04.tif", data, transform, nodata=0)
            scl = np.full((data.shape[0] // 2, data.shape[1] // 2), 4, dtype="uint8")
            _write_cog(files.root / folder / "SCL.tif", scl, transform * transform.scale(2, 2))
    url = files.url
    common = dict(root_url=url, files_root=files.root, tile="33UUU")
    items = [
        _item(
            "S2A_33UUU_20160608_0_L2A",
            "2016-06-08T10:20:00Z",
            "S2A_33UUU_20160608",
            cloud=1.5,
            orbit=65,
            baseline="02.04",
            box=CROP,
            **common,
        ),
        _item(
            "S2A_33UUU_20160608_1_L2A",  # the same acquisition, older baseline
            "2016-06-08T10:20:00Z",
            "S2A_33UUU_20160608",
            cloud=1.5,
            orbit=65,
            baseline="02.02",
            box=CROP,
            **common,
        ),
        _item(
            "S2A_33UUU_20160529_0_L2A",
            "2016-05-29T10:20:00Z",
            "S2A_33UUU_20160529",
            cloud=12.0,
            orbit=65,
            baseline="02.02",
            box=CROP,
            **common,
        ),
        _item(  # same acquisition as 2016-06-08, on a tile covering only part of the area
            "S2A_33UUT_20160608_0_L2A",
            "2016-06-08T10:20:00Z",
            "S2A_33UUU_20160608",
            cloud=3.0,
            orbit=65,
            baseline="02.04",
            box=(336000.0, 5840000.0, 345000.0, 5860000.0),
            **{**common, "tile": "33UUT"},
        ),
        _item(  # another orbit, covering the area on one date only
            "S2A_33UUU_20160603_0_L2A",
            "2016-06-03T10:10:00Z",
            "S2A_33UUU_20160529",
            cloud=5.0,
            orbit=108,
            baseline="02.02",
            box=CROP,
            **common,
        ),
        _item(
            "S2A_33UUU_20160618_0_L2A",  # too cloudy for --max-cloud 20
            "2016-06-18T10:20:00Z",
            "S2A_33UUU_20160608",
            cloud=80.0,
            orbit=65,
            baseline="02.04",
            box=CROP,
            **common,
        ),
        _item(  # 2016-07-08 on two tiles, each covering part of the area
            "S2A_33UUU_20160708_0_L2A",
            "2016-07-08T10:20:00Z",
            "S2A_33UUU_20160708",
            cloud=2.0,
            orbit=65,
            baseline="02.04",
            box=SPLIT["S2A_33UUU_20160708"],
            **common,
        ),
        _item(
            "S2A_33UVU_20160708_0_L2A",
            "2016-07-08T10:20:00Z",
            "S2A_33UVU_20160708",
            cloud=2.0,
            orbit=65,
            baseline="02.04",
            box=SPLIT["S2A_33UVU_20160708"],
            **{**common, "tile": "33UVU"},
        ),
    ]
    api_url, server, thread = start_stac_api(items, tmp_path_factory.mktemp("stac"))
    yield {"url": api_url, "sizes": sizes, "items": items}
    server.should_exit = True
    thread.join(timeout=10)


def _aoi_arg() -> str:
    return ",".join(f"{v:.6f}" for v in _aoi_lonlat())


# ------------------------------------------------------------------ search


def test_tio_search_through_a_real_stac_api(catalogue, tmp_path):
    out = tmp_path / "scenes.geojson"
    res = CliRunner().invoke(
        cli,
        [
            "search",
            "--aoi",
            _aoi_arg(),
            "--start",
            "2016-05-01",
            "--end",
            "2016-06-30",
            "--max-cloud",
            "20",
            "--catalog",
            catalogue["url"],
            "--geojson",
            str(out),
            "--all",
        ],
    )
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split()[:6] == ["date", "platform", "tile", "orbit", "cloud%", "area%"]
    kept = [ln for ln in lines[1:] if "left out" not in ln and ln[:4].isdigit()]
    assert [ln.split()[0] for ln in kept] == ["2016-05-29", "2016-06-08"]
    assert all("Sentinel-2A" in ln and "33UUU" in ln and " 65 " in ln for ln in kept)
    assert kept[1].split()[-1] == "S2A_33UUU_20160608_0_L2A"  # the newest baseline
    text = res.output
    assert "S2A_33UUU_20160608_1_L2A" in text and "older processing baseline 02.02" in text
    assert re.search(r"S2A_33UUT_20160608_0_L2A.*tile 33UUU, which covers more", text)
    assert re.search(r"S2A_33UUU_20160603_0_L2A.*relative orbit 108, not 65", text)
    assert "S2A_33UUU_20160618_0_L2A" not in text  # 80 % cloud: filtered by the server
    assert "2 scene(s) kept of 5 found" in text and "relative orbit 65" in text
    gj = json.loads(out.read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 5
    f = next(f for f in gj["features"] if f["id"] == "S2A_33UUU_20160529_0_L2A")
    assert f["properties"]["kept"] and f["properties"]["tile"] == "33UUU"
    assert f["properties"]["href"].endswith("/S2A_33UUU_20160529/B04.tif")


def test_search_download_into_the_cache_verified(catalogue, files, tmp_path):
    files.reset()
    args = [
        *("search", "--aoi", _aoi_arg(), "--start", "2016-05-01", "--end", "2016-06-30"),
        *("--catalog", catalogue["url"], "--download", "--cache-dir", str(tmp_path / "c")),
    ]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    got = sorted(p.relative_to(tmp_path / "c").as_posix() for p in (tmp_path / "c").rglob("*.tif"))
    assert got == [
        "S2A_33UUU_20160529_0_L2A/red.tif",
        "S2A_33UUU_20160529_0_L2A/scl.tif",
        "S2A_33UUU_20160608_0_L2A/red.tif",
        "S2A_33UUU_20160608_0_L2A/scl.tif",
    ]
    red = tmp_path / "c" / "S2A_33UUU_20160529_0_L2A" / "red.tif"
    assert red.read_bytes() == (files.root / "S2A_33UUU_20160529" / "B04.tif").read_bytes()
    served = files.bytes_served
    res = CliRunner().invoke(cli, args)  # all in the cache: nothing fetched again
    assert res.exit_code == 0, res.output
    assert files.bytes_served == served


def test_search_orbit_asked_for_and_empty_search(catalogue):
    common = ["search", "--aoi", _aoi_arg(), "--catalog", catalogue["url"]]
    res = CliRunner().invoke(
        cli, [*common, "--start", "2016-05-01", "--end", "2016-06-30", "--orbit", "108"]
    )
    assert res.exit_code == 0, res.output
    assert "2016-06-03" in res.output and "1 scene(s) kept" in res.output
    res = CliRunner().invoke(cli, [*common, "--start", "2017-01-01", "--end", "2017-01-31"])
    assert res.exit_code == 1
    msg = res.output.strip()
    assert msg.startswith("error: ") and catalogue["url"] in msg and len(msg.splitlines()) == 1
    assert "no sentinel-2-l2a scene" in msg and "widen the dates or raise the cloud limit" in msg


def test_search_retries_a_500_from_the_catalogue(files, catalogue):
    files.reset()
    files.upstream = catalogue["url"]
    files.faults["/proxy"] = [500]
    res = CliRunner().invoke(
        cli,
        [
            *("search", "--aoi", _aoi_arg(), "--start", "2016-05-01", "--end", "2016-06-30"),
            *("--catalog", f"{files.url}/proxy/"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "2 scene(s) kept" in res.output
    assert [r[1] for r in files.requests] == ["/proxy", "/proxy"]  # 500, then retried
    files.faults["/proxy"] = [500] * 10
    res = CliRunner().invoke(
        cli,
        [
            *("search", "--aoi", _aoi_arg(), "--start", "2016-05-01", "--end", "2016-06-30"),
            *("--catalog", f"{files.url}/proxy"),
        ],
    )
    assert res.exit_code == 1
    assert f"{files.url}/proxy" in res.output and "500" in res.output
    files.upstream = None


def test_search_errors_name_the_catalogue(files, catalogue):
    files.reset()
    files.faults["/locked"] = [401] * 10
    res = CliRunner().invoke(
        cli,
        [
            *("search", "--aoi", _aoi_arg(), "--start", "2016-05-01", "--end", "2016-06-30"),
            *("--catalog", f"{files.url}/locked"),
        ],
    )
    assert res.exit_code == 1
    assert f"{files.url}/locked" in res.output and "HTTP 401" in res.output
    assert "credentials" in res.output
    res = CliRunner().invoke(
        cli,
        ["search", "--aoi", _aoi_arg(), "--start", "2016-05-01", "--end", "2016-06-30"]
        + ["--catalog", "nowhere"],
    )
    assert res.exit_code == 1 and "unknown catalogue 'nowhere'" in res.output
    (files.root / "page.html").write_text("<html>not a catalogue</html>")
    res = CliRunner().invoke(
        cli,
        ["search", "--aoi", _aoi_arg(), "--start", "2016-05-01", "--end", "2016-06-30"]
        + ["--catalog", f"{files.url}/page.html"],
    )
    assert res.exit_code == 1, res.output
    assert f"{files.url}/page.html: not a STAC API answer" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_tiles_of_one_acquisition_are_merged_over_the_area(catalogue):
    from rasterio.enums import Resampling

    from tio.catalog import remote_gdal_env, search
    from tio.stack import grid_for, read_on_grid

    aoi = list(_aoi_lonlat())
    result = search(aoi, "2016-07-01", "2016-07-31", catalog=catalogue["url"])
    kept = [c for c in result.candidates if c.kept]
    (left_out,) = [c for c in result.candidates if not c.kept]
    assert len(kept) == 1 and kept[0].coverage > 0.99
    merged = kept[0].scene
    assert merged.tile == "33UVU" and [p.tile for p in merged.parts] == ["33UUU"]
    assert left_out.reason == "merged into S2A_33UVU_20160708_0_L2A (tile 33UVU)"
    # the same acquisition read whole from the 2016-06-08 crop
    (whole,) = [
        c.scene
        for c in search(aoi, "2016-06-08", "2016-06-08", catalog=catalogue["url"]).candidates
        if c.kept
    ]
    with remote_gdal_env():
        grid = grid_for(merged, aoi)
        assert grid.shape == grid_for(whole, aoi).shape  # the union of the tiles, not one
        values = read_on_grid(merged, grid, Resampling.cubic)
        reference = read_on_grid(whole, grid, Resampling.cubic)
    assert np.isfinite(values).all()
    np.testing.assert_array_equal(values, reference)


# ------------------------------------------------------------------ tio run over HTTP


@pytest.mark.slow
def test_tio_run_reads_only_the_area_over_http(catalogue, files, tmp_path):
    files.reset()
    out = tmp_path / "run"
    res = CliRunner().invoke(
        cli,
        [
            "run",
            *("--aoi", _aoi_arg(), "--start", "2016-05-01", "--end", "2016-06-30"),
            *("--catalog", catalogue["url"], "--window", "32", "--step", "16"),
            *("--set", "input.catalog_max_cloud=20", "--no-quicklooks", "-q", "-o", str(out)),
        ],
    )
    assert res.exit_code == 0, res.output
    from tio.stack import open_stack

    with open_stack(out / "stack.zarr") as ds:
        assert [str(t)[:10] for t in ds.time.values] == ["2016-05-29", "2016-06-08"]
        assert list(ds.source.values) == ["S2A_33UUU_20160529_0_L2A", "S2A_33UUU_20160608_0_L2A"]
        # the lon/lat box of the 2.5 km area, back in UTM and snapped to pixels
        assert all(250 <= n <= 275 for n in ds.image.shape[1:]), ds.image.shape
        masked = ds["mask"].values
        # the SCL cloud patch (15 x 15 px of 20 m) is masked on 2016-05-29 only
        assert 800 <= masked[0].sum() <= 1000 and masked[1].sum() == 0
    assert (out / "timeseries.nc").exists()
    total = sum(catalogue["sizes"].values())
    served = files.bytes_served
    assert 0 < served < 0.12 * total, (served, total)  # about 6 % here
    assert all(m in ("GET", "HEAD") for m, _, _ in files.requests)
    assert any(r for _, _, r in files.requests), "no range request"
    log = (out / "tio.log").read_text()
    assert "older processing baseline" in log and "relative orbit 108, not 65" in log


# ------------------------------------------------------------------ real STAC items


def test_real_stac_items_parse_into_scenes(shared_data):
    d = shared_data / "stac_items"
    pc = item_to_scene(
        json.loads((d / "S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json").read_text())
    )
    assert pc.date == dt.date(2019, 6, 29) and pc.tile == "06VVN" and pc.orbit == 43
    assert pc.sensor == "Sentinel-2B" and pc.cloud_cover == pytest.approx(0.314306)
    assert pc.path.startswith("/vsicurl/https://") and "B04_10m" in pc.path
    assert pc.mask_path.startswith("/vsicurl/https://") and "SCL_20m" in pc.mask_path
    assert pc.source == "S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531"

    v0 = item_to_scene(json.loads((d / "S2A_28QCH_20200714_0_L2A.json").read_text()), "B08")
    assert v0.date == dt.date(2020, 7, 14) and v0.tile == "28QCH" and v0.orbit == 123
    assert v0.sensor == "Sentinel-2A" and v0.cloud_cover == pytest.approx(2.36)
    assert v0.path.startswith("/vsicurl/https://") and v0.path.endswith("/B08.tif")
    assert v0.mask_path.endswith("/SCL.tif")

    search = json.loads((d / "earth_search_v1_sentinel-2-l1c_search.json").read_text())
    (feature,) = search["features"]
    l1c = item_to_scene(feature, "B04")
    assert l1c.date == dt.date(2024, 2, 6) and l1c.tile == "27VWK" and l1c.orbit == 81
    assert l1c.sensor == "Sentinel-2B" and l1c.mask_path is None
    assert l1c.path == "/vsis3/sentinel-s2-l1c/tiles/27/V/WK/2024/2/6/0/B04.jp2"
    with pytest.raises(Exception, match="no asset for band B10"):
        item_to_scene({**feature, "assets": {"red": feature["assets"]["red"]}}, "B10")


# ------------------------------------------------------------------ downloads and faults


def _product(files, name: str, size: int = 300_000, seed: int = 0) -> tuple[str, Checksum]:
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = files.root / "products" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"{files.url}/products/{name}", parse_multihash(
        "1220" + hashlib.sha256(data).hexdigest()
    )


def test_download_retries_500_then_200(files, tmp_path):
    files.reset()
    url, checksum = _product(files, "a.zip")
    files.faults["/products/a.zip"] = [500]
    got = Cache(tmp_path / "cache").fetch(url, "PRODUCT_A", checksum=checksum, backoff=0.01)
    assert got == tmp_path / "cache" / "PRODUCT_A" / "a.zip"
    assert hashlib.sha256(got.read_bytes()).hexdigest() == checksum.hexdigest
    assert [r[1] for r in files.requests] == ["/products/a.zip"] * 2
    # in the cache: no new request
    assert Cache(tmp_path / "cache").fetch(url, "PRODUCT_A") == got
    assert len(files.requests) == 2


def test_download_gives_up_after_bounded_retries(files, tmp_path):
    files.reset()
    url, _ = _product(files, "b.zip")
    files.faults["/products/b.zip"] = [503] * 10
    with pytest.raises(DownloadError, match=r"b\.zip: HTTP 503 after 3 attempts"):
        Cache(tmp_path / "cache").fetch(url, "B", attempts=3, backoff=0.01)
    assert len(files.requests) == 3
    assert not list((tmp_path / "cache").rglob("*.zip*"))


def test_download_401_is_a_credentials_error(files, tmp_path):
    files.reset()
    url, _ = _product(files, "c.zip")
    files.faults["/products/c.zip"] = [401]
    with pytest.raises(AuthError) as err:
        Cache(tmp_path / "cache").fetch(url, "C", backoff=0.01)
    msg = str(err.value)
    assert url in msg and "HTTP 401" in msg and "CDSE_USERNAME" in msg
    assert len(files.requests) == 1  # not retried


def test_download_resumes_after_a_dropped_connection(files, tmp_path):
    files.reset()
    url, checksum = _product(files, "d.zip", size=400_000, seed=1)
    files.faults["/products/d.zip"] = ["drop:150000"]
    got = Cache(tmp_path / "cache").fetch(url, "D", checksum=checksum, backoff=0.01)
    assert hashlib.sha256(got.read_bytes()).hexdigest() == checksum.hexdigest
    ranges = [r[2] for r in files.requests]
    assert len(ranges) == 2 and ranges[0] is None, ranges
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", ranges[1])[1])
    assert 100_000 <= resumed_at <= 150_000  # what had reached the disk
    # the second request asked only for the rest
    assert files.bytes_served == 150_000 + 400_000 - resumed_at
    assert not list(got.parent.glob("*.part"))


def test_checksum_mismatch_removes_the_partial_file(files, tmp_path):
    files.reset()
    cache = Cache(tmp_path / "cache")
    url_ok, ok = _product(files, "e.zip", seed=2)
    kept = cache.fetch(url_ok, "E", checksum=ok)
    before = sorted(p.relative_to(cache.root) for p in cache.root.rglob("*"))
    url, _ = _product(files, "f.zip", seed=3)
    wrong = Checksum("sha256", hashlib.sha256(b"something else").hexdigest())
    with pytest.raises(DownloadError, match=r"f\.zip: sha256 checksum mismatch"):
        cache.fetch(url, "F", checksum=wrong)
    assert sorted(p.relative_to(cache.root) for p in cache.root.rglob("*")) == before
    assert kept.exists()


def test_cache_evicts_oldest_first(files, tmp_path):
    files.reset()
    cache = Cache(tmp_path / "cache", limit=700_000)
    paths = []
    for i, name in enumerate(("g.zip", "h.zip", "i.zip")):
        url, ck = _product(files, name, size=300_000, seed=10 + i)
        paths.append(cache.fetch(url, name.upper(), checksum=ck))
        time.sleep(0.02)
    assert not paths[0].exists() and paths[1].exists() and paths[2].exists()
    assert cache.size() <= 700_000


def test_request_retries_then_returns(files):
    files.reset()
    url, _ = _product(files, "j.zip", size=1000)
    files.faults["/products/j.zip"] = [429, 500]
    resp = request("GET", url, backoff=0.01)
    assert resp.status_code == 200 and len(resp.content) == 1000
    assert len(files.requests) == 3


def test_copernicus_odata_download_with_credentials(files, tmp_path, monkeypatch, caplog):
    """The OData flow: look the product up by name, get a token, download, verify MD5."""
    from tio.download import download_cdse_safe

    files.reset()
    name = "S2A_MSIL1C_20160608T153121_N0204_R065_T33UUU_20160608T153121"
    data = np.random.default_rng(5).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    product_id = "0f1e2d3c-aaaa-bbbb-cccc-123456789abc"
    dl = files.root / "zipper" / f"Products({product_id})" / "$value"
    dl.parent.mkdir(parents=True)
    dl.write_bytes(data)
    odata = files.root / "odata" / "Products"
    odata.parent.mkdir(parents=True)
    odata.write_text(
        json.dumps(
            {
                "value": [
                    {
                        "Id": product_id,
                        "Name": f"{name}.SAFE",
                        "Checksum": [
                            {"Algorithm": "MD5", "Value": hashlib.md5(data).hexdigest()},
                        ],
                    }
                ]
            }
        )
    )
    files.auth[f"/zipper/Products({product_id})/$value"] = "Bearer tok-123"
    urls = dict(
        odata_url=f"{files.url}/odata",
        download_url=f"{files.url}/zipper",
        token_url=f"{files.url}/token",
    )
    monkeypatch.delenv("CDSE_USERNAME", raising=False)
    monkeypatch.delenv("CDSE_PASSWORD", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    with pytest.raises(AuthError, match="CDSE_USERNAME and CDSE_PASSWORD"):
        download_cdse_safe(name, Cache(tmp_path / "cache"), **urls)
    monkeypatch.setenv("CDSE_USERNAME", "alice")
    monkeypatch.setenv("CDSE_PASSWORD", "wrong")
    with pytest.raises(AuthError, match="HTTP 401.*credentials"):
        download_cdse_safe(name, Cache(tmp_path / "cache"), **urls)
    monkeypatch.delenv("CDSE_USERNAME")
    monkeypatch.delenv("CDSE_PASSWORD")
    (tmp_path / ".netrc").write_text(
        "machine identity.dataspace.copernicus.eu login alice password s3cret-pw\n"
    )
    (tmp_path / ".netrc").chmod(0o600)
    caplog.set_level("DEBUG")
    got = download_cdse_safe(name, Cache(tmp_path / "cache"), **urls)
    assert got == tmp_path / "cache" / f"{name}.SAFE" / f"{name}.SAFE.zip"
    assert got.read_bytes() == data
    assert "s3cret-pw" not in caplog.text
    # the password went to the token endpoint only
    assert [r[1] for r in files.requests if r[0] == "POST"] == ["/token", "/token"]


def test_planetary_computer_needs_its_optional_package():
    from tio.catalog import search
    from tio.errors import CatalogError

    try:
        import planetary_computer  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("planetary-computer is installed: the message is not shown")
    with pytest.raises(CatalogError, match=r"pip install 'tio\[planetary\]'"):
        search(
            [12.7, 52.76, 12.72, 52.78], "2020-01-01", "2020-02-01", catalog="planetary-computer"
        )


def test_run_without_files_needs_an_area_and_dates(tmp_path):
    res = CliRunner().invoke(cli, ["run", "--start", "2020-01-01", "-q", "-o", str(tmp_path)])
    assert res.exit_code == 1
    assert "no input given" in res.output and "--aoi" in res.output


def test_request_retries_after_a_timeout(files, tmp_path):
    files.reset()
    url, checksum = _product(files, "k.zip", size=5000)
    files.faults["/products/k.zip"] = ["sleep:1.5"]
    got = Cache(tmp_path / "cache").fetch(url, "K", checksum=checksum, timeout=0.5, backoff=0.01)
    assert got.stat().st_size == 5000 and len(files.requests) == 2
    files.faults["/products/k.zip"] = ["sleep:1"] * 3
    with pytest.raises(DownloadError, match=r"k\.zip: ReadTimeout after 2 attempts"):
        request("GET", url, timeout=0.3, attempts=2, backoff=0.01)


def test_window_reads_over_http_are_retried_by_gdal(catalogue, files):
    from rasterio.enums import Resampling

    from tio.catalog import remote_gdal_env, search
    from tio.stack import grid_for, read_on_grid

    aoi = list(_aoi_lonlat())
    (scene,) = [
        c.scene
        for c in search(aoi, "2016-06-08", "2016-06-08", catalog=catalogue["url"]).candidates
        if c.kept
    ]
    with remote_gdal_env():
        grid = grid_for(scene, aoi)
    files.reset()
    files.faults["/S2A_33UUU_20160608/B04.tif"] = [503]
    files.faults["/S2A_33UUU_20160608/SCL.tif"] = [503]
    with remote_gdal_env():
        values = read_on_grid(scene, grid, Resampling.cubic)
    assert np.isfinite(values).all()
    assert files.faults["/S2A_33UUU_20160608/B04.tif"] == []  # a 503 was served, then retried
    assert files.faults["/S2A_33UUU_20160608/SCL.tif"] == []


def test_date_limit_stops_a_catalogue_run_before_any_image_is_read(catalogue, files, tmp_path):
    """``input.max_dates`` (the portal sets it) is checked on the search's dates, before any
    image is read or downloaded."""
    files.reset()
    out = tmp_path / "run"
    res = CliRunner().invoke(
        cli,
        [
            "run",
            *("--aoi", _aoi_arg(), "--start", "2016-05-01", "--end", "2016-07-31"),
            *("--catalog", catalogue["url"], "--set", "input.catalog_max_cloud=100"),
            *("--set", "input.max_dates=2", "--no-quicklooks", "-q", "-o", str(out)),
        ],
    )
    assert res.exit_code == 1, res.output
    assert re.search(
        r"[3-9] dates from 2016-05-\d\d to 2016-07-08, above the limit of 2", res.output
    )
    assert catalogue["url"] in res.output and "input.max_dates" in res.output
    assert files.bytes_served == 0 and not (out / "stack.zarr").exists()
