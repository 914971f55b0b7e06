"""tio serve: OGC API – Processes and portal API against a real uvicorn server (httpx).

One server on 127.0.0.1 and a free port serves a generated scene (200 x 200 px,
5 dates) from a data folder of its allow-list. The tests submit a job, follow it
to completion, read its results, cancel another, restart the server and find the
jobs again; then they try to get around the limits: path traversal, symlink
escape, oversize requests, missing tokens, invalid parameters.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import zipfile
from io import BytesIO
from pathlib import Path

import httpx
import pytest

from tio.synthetic import make_scene
from web_server import Server, wait_for

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token-for-the-tests-0123456789"
STATUSES = {"accepted", "running", "successful", "failed", "dismissed"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("webdata")
    make_scene(root / "scenes", shape=(200, 200), n_dates=5, seed=7)
    (root / "secret.txt").write_text("outside every job folder")
    return root


@pytest.fixture(scope="module")
def server(data_dir, tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("web") / "jobs", {"demo": data_dir / "scenes"})
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def finished_job(client, server):
    """A job submitted with the defaults and followed to completion."""
    r = client.post(
        "/processes/tio/execution", json={"inputs": {"source": {"folder": "demo"}, "title": "t1"}}
    )
    assert r.status_code == 201, r.text
    info = r.json()
    assert r.headers["location"].endswith(f"/jobs/{info['jobID']}")
    assert info["status"] == "accepted"
    done = wait_for(client, info["jobID"], {"successful", "failed"})
    assert done["status"] == "successful", done
    return done


def _links_ok(doc):
    assert isinstance(doc["links"], list) and doc["links"]
    for link in doc["links"]:
        assert link["href"].startswith("http") and link["rel"]


# ------------------------------------------------------------------ OGC endpoints


def test_landing_conformance_processes_are_ogc_json(client):
    landing = client.get("/").json()
    _links_ok(landing)
    rels = {link["rel"] for link in landing["links"]}
    assert {"self", "service-desc", "http://www.opengis.net/def/rel/ogc/1.0/conformance"} <= rels
    assert "http://www.opengis.net/def/rel/ogc/1.0/processes" in rels
    conf = client.get("/conformance").json()
    assert "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/core" in conf["conformsTo"]
    procs = client.get("/processes").json()
    _links_ok(procs)
    (summary,) = procs["processes"]
    assert summary["id"] == "tio" and summary["version"]
    assert "async-execute" in summary["jobControlOptions"]
    desc = client.get("/processes/tio").json()
    assert {"source", "bbox", "start", "end", "max_cloud", "parameters"} <= set(desc["inputs"])
    assert desc["inputs"]["source"]["schema"]["properties"]["folder"]["enum"] == ["demo"]
    assert desc["outputs"]
    assert client.get("/processes/nope").status_code == 404
    api = client.get("/openapi.json").json()
    assert api["openapi"].startswith("3.") and "/processes/{process_id}/execution" in api["paths"]
    # a browser asking for HTML is sent to the portal, which is served with Leaflet
    r = client.get("/", headers={"Accept": "text/html"}, follow_redirects=True)
    assert r.status_code == 200 and "job-form" in r.text
    leaflet = client.get("/portal/vendor/leaflet/leaflet.js")  # vendored, no CDN
    assert leaflet.status_code == 200 and "1.9.4" in leaflet.text[:200]
    assert "cdn" not in r.text.lower() and "https://" not in r.text


def test_submit_poll_results(client, server, finished_job):
    job_id = finished_job["jobID"]
    progress = finished_job["_progress_seen"]
    assert progress == sorted(progress) and finished_job["progress"] == 100
    for key in ("jobID", "status", "created", "started", "finished", "updated", "links"):
        assert key in finished_job
    rels = {link["rel"] for link in finished_job["links"]}
    assert "http://www.opengis.net/def/rel/ogc/1.0/results" in rels
    folder = server.jobs_dir / job_id
    assert (folder / "tio.log").is_file() and "done in" in (folder / "tio.log").read_text()

    listed = client.get("/jobs").json()
    _links_ok(listed)
    assert job_id in [j["jobID"] for j in listed["jobs"]]
    assert all(j["status"] in STATUSES for j in listed["jobs"])

    results = client.get(f"/jobs/{job_id}/results").json()
    for name in ("timeseries.nc", "cumulative_ew.tif", "animation.png", "report.html",
                 "overlays/overlays.json", "overlays/animation_4326.png", "tio.log"):  # fmt: skip
        assert name in results, name
    png = client.get(results["overlays/animation_4326.png"]["href"])
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"acTL" in png.content[:200]  # an animated PNG
    overlays = client.get(results["overlays/overlays.json"]["href"]).json()
    (s, w), (n, e) = overlays["animation"]["bounds"]

    # the time series at the centre of the map
    ts = client.get(f"/jobs/{job_id}/timeseries", params={"lon": (w + e) / 2, "lat": (s + n) / 2})
    assert ts.status_code == 200, ts.text
    series = ts.json()
    assert len(series["dates"]) == len(series["ew"]) == len(series["magnitude"]) == 5
    assert series["ew"][0] == 0.0
    far = client.get(f"/jobs/{job_id}/timeseries", params={"lon": w - 1, "lat": s})
    assert far.status_code == 404 and "outside" in far.json()["detail"]

    zipped = client.get(results["archive"]["href"])
    assert zipped.status_code == 200
    names = zipfile.ZipFile(BytesIO(zipped.content)).namelist()
    assert any(n.endswith("/timeseries.nc") for n in names)
    assert not any("/." in n for n in names)  # no hidden state files


def test_cancel_a_job(client, server):
    r = client.post("/processes/tio/execution", json={"inputs": {"source": {"folder": "demo"}}})
    assert r.status_code == 201
    job_id = r.json()["jobID"]
    time.sleep(1.5)  # let it start
    r = client.delete(f"/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["status"] == "dismissed"
    assert client.get(f"/jobs/{job_id}").json()["status"] == "dismissed"
    assert client.get(f"/jobs/{job_id}/results").status_code == 404
    deadline = time.monotonic() + 30
    while (server.jobs_dir / job_id).exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not (server.jobs_dir / job_id).exists(), "the cancelled job's folder is removed"
    assert client.delete("/jobs/0123456789abcdef0123456789abcdef").status_code == 404


def test_a_failing_job_says_why(client):
    wide = {"correlation": {"window": 512}}
    body = {"inputs": {"source": {"folder": "demo"}, "parameters": wide}}
    r = client.post("/processes/tio/execution", json=body)
    assert r.status_code == 201, r.text
    done = wait_for(client, r.json()["jobID"], {"successful", "failed"})
    assert done["status"] == "failed" and "larger than the image" in done["message"], done
    res = client.get(f"/jobs/{done['jobID']}/results")
    assert res.status_code == 404 and "larger than the image" in res.json()["detail"]
    assert res.json()["type"].endswith("result-not-ready")
    assert "larger than the image" in client.get(f"/jobs/{done['jobID']}/log").text


@pytest.mark.filterwarnings("ignore:Port .* is already in use")
def test_jobs_run_on_an_existing_dask_scheduler(data_dir, tmp_path):
    from dask.distributed import LocalCluster

    with LocalCluster(
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        scheduler_port=0,
        dashboard_address=None,
        n_workers=1,
        threads_per_worker=1,
    ) as cluster:
        srv = Server(
            tmp_path / "jobs",
            {"demo": data_dir / "scenes"},
            "--scheduler",
            cluster.scheduler_address,
        ).start()
        try:
            with httpx.Client(base_url=srv.url, timeout=60) as c:
                body = {"inputs": {"source": {"folder": "demo"}, "start": "2021-06-01"}}
                r = c.post("/processes/tio/execution", json=body)
                done = wait_for(c, r.json()["jobID"], {"successful", "failed"})
                assert done["status"] == "successful", done
        finally:
            srv.stop()
        assert any(p.startswith("tio-job") for p in cluster.scheduler.task_prefixes)


def test_restart_keeps_the_jobs(client, server, finished_job):
    # a job that is running when the server stops
    r = client.post("/processes/tio/execution", json={"inputs": {"source": {"folder": "demo"}}})
    running = r.json()["jobID"]
    wait_for(client, running, {"running"}, timeout=60)
    server.stop()
    server.start()
    with httpx.Client(base_url=server.url, timeout=60) as c:
        jobs = {j["jobID"]: j for j in c.get("/jobs").json()["jobs"]}
        assert jobs[finished_job["jobID"]]["status"] == "successful"
        assert c.get(f"/jobs/{finished_job['jobID']}/results").status_code == 200
        lost = jobs[running]
        assert lost["status"] == "failed" and "shut down" in lost["message"], lost

        # a crash (SIGKILL): the job is failed at the next start and its run is stopped
        r = c.post("/processes/tio/execution", json={"inputs": {"source": {"folder": "demo"}}})
        crashed = r.json()["jobID"]
        wait_for(c, crashed, {"running"}, timeout=60)
        pid_file = server.jobs_dir / crashed / ".tio" / "pid"
        deadline = time.monotonic() + 30
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        pid = int(pid_file.read_text())
    server.kill()
    server.start()
    with httpx.Client(base_url=server.url, timeout=60) as c:
        job = c.get(f"/jobs/{crashed}").json()
        assert job["status"] == "failed" and "stopped while" in job["message"], job
    deadline = time.monotonic() + 15
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    state = Path(f"/proc/{pid}/stat")
    assert not state.exists() or state.read_text().split()[2] == "Z", "the orphan run goes on"


def test_jobs_left_running_by_a_crash_are_marked_failed(tmp_path):
    from tio.web.jobs import JobManager, JobStore

    store = JobStore(tmp_path / "jobs.sqlite")
    store.add("a" * 32, "crashed", {})
    store.update("a" * 32, status="running")
    store.add("b" * 32, "queued", {})
    store.close()
    manager = JobManager(tmp_path)  # not started: only the recovery
    assert manager.store.get("a" * 32).status == "failed"
    assert "stopped while this job was running" in manager.store.get("a" * 32).message
    assert manager.store.get("b" * 32).status == "accepted"  # queued again
    manager.store.close()


def test_progress_is_read_from_the_log():
    from tio.web.jobs import progress_from_log

    log = (
        "t INFO tio: 5 scenes from 2021-03-01 to 2023-03-01\n"
        "t INFO tio: stack: 5 dates on a grid of x\n"
        "t INFO tio: network: 5 dates, 10 pairs, 1 connected component(s)\n"
        "t DEBUG tio: correlated 20210301_20210719: 80 % of windows matched\n"
    )
    percent, last = progress_from_log(log)
    assert 22 < percent < 30 and last.startswith("network:")
    assert progress_from_log(log + "t INFO tio: done in 3 s\n")[0] == 100


# -------------------------------------------------------------------- security


def test_downloads_cannot_leave_the_job_folder(client, server, finished_job, data_dir):
    job_id = finished_job["jobID"]
    folder = server.jobs_dir / job_id
    (folder / "escape.txt").symlink_to(data_dir / "secret.txt")
    (folder / "escape_dir").symlink_to(data_dir)
    (folder / "inside.txt").symlink_to(folder / "config.toml")
    base = f"{server.url}/jobs/{job_id}/files/"
    attempts = [
        "../jobs.sqlite",
        "..%2Fjobs.sqlite",
        "%2e%2e/jobs.sqlite",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "overlays/../../jobs.sqlite",
        "..%5cjobs.sqlite",
        "%2Fetc%2Fpasswd",
        "/etc/passwd",
        ".tio/state.json",
        "escape.txt",
        "escape_dir/secret.txt",
        "nothing.txt",
    ]
    for path in attempts:
        # send the path as written: no client-side normalisation of ".." or "%2e"
        r = httpx.get(httpx.URL(base + path), timeout=30)
        assert r.status_code in (400, 404), (path, r.status_code)
        assert b"outside every job folder" not in r.content and b"root:" not in r.content
    raw = subprocess.run(
        ["curl", "-s", "--path-as-is", base + "../../../jobs.sqlite"],
        capture_output=True,
        check=False,
    )
    assert b"SQLite" not in raw.stdout
    assert client.get(f"/jobs/{job_id}/files/inside.txt").status_code == 200  # stays inside
    listed = client.get(f"/jobs/{job_id}/results").json()
    assert "escape.txt" not in listed and not any(k.startswith("escape_dir") for k in listed)
    zipped = zipfile.ZipFile(BytesIO(client.get(f"/jobs/{job_id}/download.zip").content))
    assert not any("escape" in n for n in zipped.namelist())
    for bad_id in ("..%2F..%2Fetc", "%2e%2e%2fjobs.sqlite", "A" * 32, "0" * 31):
        assert httpx.get(httpx.URL(f"{server.url}/jobs/{bad_id}")).status_code == 404
    for p in ("escape.txt", "escape_dir", "inside.txt"):
        (folder / p).unlink()


def test_oversize_requests_are_refused(client):
    big = {"inputs": {"source": {"folder": "demo"}, "title": "x" * 100_000}}
    r = client.post("/processes/tio/execution", json=big)
    assert r.status_code == 413, r.text

    def chunks():  # no Content-Length: the body is counted as it comes
        yield b'{"inputs": {"source": {"folder": "demo"}, "title": "'
        for _ in range(100):
            yield b"y" * 1000
        yield b'"}}'

    r = client.post(
        "/processes/tio/execution", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413, r.text


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        ({"source": {"folder": "demo"}, "bbox": [7.1, 46.0, 7.0, 46.1]}, "inputs.bbox"),
        ({"source": {"folder": "demo"}, "bbox": [7.0, 46.0, 7.1]}, "inputs.bbox"),
        ({"source": {"folder": "demo"}, "bbox": [0, 0, 10, 10]}, "inputs.bbox"),  # too large
        ({"source": {"folder": "demo"}, "bbox": [100, 10, 100.1, 10.1]}, "inputs.bbox"),
        ({"source": {"folder": "elsewhere"}}, "inputs.source.folder"),
        ({"source": {"folder": "../etc"}}, "inputs.source.folder"),
        ({"source": {}}, "inputs.source"),
        ({"source": {"folder": "demo"}, "max_cloud": 2}, "inputs.max_cloud"),
        ({"source": {"folder": "demo"}, "start": "2022-01-01", "end": "2021-01-01"}, "inputs"),
        ({"source": {"folder": "demo"}, "start": "yesterday"}, "inputs.start"),
        ({"source": {"folder": "demo"}, "start": "2030-01-01"}, "inputs.start"),
        ({"source": {"folder": "demo"}, "colour": "red"}, "inputs.colour"),
        ({"source": {"folder": "demo"}, "parameters": {"correlation": {"window": 3}}},
         "correlation.window"),
        ({"source": {"folder": "demo"}, "parameters": {"correlation": {"size": 3}}},
         "correlation.size"),
        ({"source": {"folder": "demo"}, "parameters": {"output": {"directory": "/tmp/x"}}},
         "inputs.parameters.output.directory"),
        ({"source": {"folder": "demo"}, "parameters": {"input": {"paths": ["/etc"]}}},
         "inputs.parameters.input.paths"),
        ({"source": {"folder": "demo"}, "parameters": {"shell": {"cmd": "rm"}}},
         "inputs.parameters.shell"),
    ],
)  # fmt: skip
def test_invalid_parameters_name_the_field(client, inputs, field):
    r = client.post("/processes/tio/execution", json={"inputs": inputs})
    assert r.status_code == 422, r.text
    doc = r.json()
    assert doc["status"] == 422 and field in doc["detail"], doc


def test_malformed_bodies_and_queries(client, finished_job):
    for body in (b"not json", b"[1, 2]", b"{}", b'{"inputs": 3}'):
        r = client.post(
            "/processes/tio/execution", content=body, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 422, (body, r.text)
    r = client.get(f"/jobs/{finished_job['jobID']}/timeseries", params={"lon": 500, "lat": 0})
    assert r.status_code == 422 and "lon" in r.json()["detail"]


def test_catalogue_source_named_catalogues_only(client):
    def post(source, **extra):
        inputs = {"source": source, **extra}
        return client.post("/processes/tio/execution", json={"inputs": inputs})

    # a URL typed by a user is refused: the server only searches the catalogues it knows
    r = post({"catalog": "https://example.org/stac", "collection": "sentinel-2-l2a"})
    assert r.status_code == 422 and "inputs.source.catalog" in r.json()["detail"]
    r = post({"catalog": "earth-search", "collection": "landsat"})
    assert r.status_code == 422 and "inputs.source.collection" in r.json()["detail"]
    r = post({"catalog": "earth-search", "collection": "sentinel-2-l2a"})
    assert r.status_code == 422 and "inputs.bbox" in r.json()["detail"]
    area = {"bbox": [7.0, 46.0, 7.05, 46.03], "start": "2023-06-01", "end": "2023-07-01"}
    r = post({"catalog": "earth-search", "collection": "sentinel-2-l2a"}, **area)
    assert r.status_code == 201, r.text
    job = r.json()["jobID"]
    config = client.get(f"/jobs/{job}/results/job.toml")
    if config.status_code == 200:  # the job's configuration searches that catalogue
        assert 'catalog = "earth-search"' in config.text
        assert "max_dates = 100" in config.text  # the server's limit, checked by the job
    client.delete(f"/jobs/{job}")  # no internet here: do not let it retry


def test_token_required_for_submit_and_cancel_and_max_jobs(data_dir, tmp_path):
    srv = Server(
        tmp_path / "jobs",
        {"demo": data_dir / "scenes"},
        "--require-token",
        "--max-jobs",
        "1",
        "--max-dates",
        "4",
        env={"TIO_TOKEN": TOKEN},
    ).start()
    try:
        body = {"inputs": {"source": {"folder": "demo"}, "start": "2021-06-01"}}  # 4 dates
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            ok = {"Authorization": f"Bearer {TOKEN}"}
            everything = {"inputs": {"source": {"folder": "demo"}}}  # 5 dates > --max-dates
            r = c.post("/processes/tio/execution", json=everything, headers=ok)
            assert r.status_code == 422 and "limit of 4" in r.json()["detail"], r.text
            r = c.post("/processes/tio/execution", json=body)
            assert r.status_code == 401 and "token" in r.json()["detail"]
            assert r.headers["www-authenticate"] == "Bearer"
            bad = {"Authorization": "Bearer wrong"}
            assert c.post("/processes/tio/execution", json=body, headers=bad).status_code == 401
            ok = {"Authorization": f"Bearer {TOKEN}"}
            r = c.post("/processes/tio/execution", json=body, headers=ok)
            assert r.status_code == 201
            job_id = r.json()["jobID"]
            assert c.get(f"/jobs/{job_id}").status_code == 200  # reading needs no token
            assert c.get("/api/portal").json()["token_required"] is True
            assert c.delete(f"/jobs/{job_id}").status_code == 401
            # --max-jobs 1: a second job waits while the first runs
            second = c.post("/processes/tio/execution", json=body, headers=ok).json()["jobID"]
            wait_for(c, job_id, {"running"}, timeout=60)
            time.sleep(2)
            assert c.get(f"/jobs/{second}").json()["status"] == "accepted"
            assert c.delete(f"/jobs/{job_id}", headers=ok).json()["status"] == "dismissed"
            wait_for(c, second, {"running"}, timeout=60)  # starts once the first is gone
            assert c.delete(f"/jobs/{second}", headers=ok).json()["status"] == "dismissed"
    finally:
        srv.stop()


def test_refuses_a_public_address_without_a_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TIO_TOKEN"}
    r = subprocess.run(
        [sys.executable, "-m", "tio", "serve", "--host", "0.0.0.0", "--jobs-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2 and "TIO_TOKEN" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "tio", "serve", "--host", "0.0.0.0", "--jobs-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**env, "TIO_TOKEN": "short"},
        timeout=60,
        check=False,
    )
    assert r.returncode == 2 and "16 characters" in r.stderr


def test_job_list_is_in_sqlite(server, finished_job):
    with sqlite3.connect(server.jobs_dir / "jobs.sqlite") as db:
        rows = dict(db.execute("SELECT id, status FROM jobs").fetchall())
    assert rows[finished_job["jobID"]] == "successful"
    assert json.loads((server.jobs_dir / finished_job["jobID"] / "request.json").read_text())
