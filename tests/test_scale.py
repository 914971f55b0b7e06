"""Dask execution, interrupted runs, lost workers, full disks (issue 10).

Small generated scenes (192 px, 6 dates, 14 pairs) so that the whole module
stays around a minute or two on 2 cores.
"""

import contextlib
import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr

from tio.config import load_config
from tio.errors import OutputError
from tio.pipeline import run
from tio.synthetic import make_scene

N_PAIRS = 14  # 6 dates, each paired with the next 4


def _config(scenes: Path, out: Path, **more):
    return load_config(
        None,
        {
            "input.paths": [str(scenes)],
            "output.directory": str(out),
            "output.quicklooks": False,
            "compute.scheduler": "synchronous",
            **more,
        },
    )


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    make_scene(root / "scenes", shape=(192, 192), n_dates=6, seed=11)
    return root / "scenes"


@pytest.fixture(scope="module")
def reference(scenes, tmp_path_factory):
    """The uninterrupted single-process run."""
    out = tmp_path_factory.mktemp("reference") / "out"
    result = run(_config(scenes, out), progress=False)
    assert len(result.pairs) == N_PAIRS
    return out


@pytest.fixture(scope="module")
def cluster():
    """A local Dask cluster of 2 worker processes, reached through its address."""
    from distributed import Client, LocalCluster

    cl = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = Client(cl)
    yield cl, client
    client.close()
    cl.close()


def _assert_same_products(a: Path, b: Path):
    tifs = sorted(p.name for p in a.glob("*.tif"))
    assert tifs and tifs == sorted(p.name for p in b.glob("*.tif"))
    for name in tifs:
        with rasterio.open(a / name) as fa, rasterio.open(b / name) as fb:
            np.testing.assert_allclose(
                fa.read(), fb.read(), rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=name
            )
    with (
        xr.open_dataset(a / "timeseries.nc", engine="h5netcdf") as ta,
        xr.open_dataset(b / "timeseries.nc", engine="h5netcdf") as tb,
    ):
        assert set(ta.data_vars) == set(tb.data_vars)
        for v in ta.data_vars:
            x, y = ta[v].values, tb[v].values
            if x.dtype.kind == "f":
                np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=v)
            else:
                np.testing.assert_array_equal(x, y, err_msg=v)
    for sub in ("raw", "corrected"):
        names = sorted(p.name for p in (a / "pairs" / sub).glob("*.tif"))
        assert len(names) == N_PAIRS
        assert names == sorted(p.name for p in (b / "pairs" / sub).glob("*.tif"))


def test_local_cluster_gives_the_single_process_products(scenes, reference, cluster, tmp_path):
    cl, _ = cluster
    out = tmp_path / "dask"
    cfg = _config(scenes, out, **{"compute.scheduler": cl.scheduler_address})
    run(cfg, progress=False)
    log = (out / "tio.log").read_text()
    assert f"Dask scheduler {cl.scheduler_address} (2 workers)" in log
    _assert_same_products(reference, out)


@pytest.mark.parametrize("where", ["this process", "local Dask cluster"])
def test_run_killed_during_correlation_resumes(scenes, reference, tmp_path, where):
    import psutil

    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "tio",
        "run",
        str(scenes),
        "-o",
        str(out),
        "--no-quicklooks",
        *(["--scheduler", "synchronous"] if where == "this process" else ["--workers", "2"]),
        "-q",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    raw = out / "pairs" / "raw"
    deadline = time.monotonic() + 300
    family: list = []
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if raw.is_dir() and len(list(raw.glob("[0-9]*.tif"))) >= 3:
                break
            time.sleep(0.01)
        with contextlib.suppress(psutil.Error):
            family = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGKILL)  # kill -9, in the middle of correlation
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        # the Dask nannies and workers would die with their parent, but not at once:
        # here they die now, like the whole machine, so that none writes a pair later
        for child in family:
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(family, timeout=30)
    if where != "this process":
        assert len(family) >= 2, family  # the run had its worker processes
    done_before = len(list(raw.glob("[0-9]*.tif")))
    assert 3 <= done_before < N_PAIRS, done_before
    assert not (out / "velocity.tif").exists()
    run(_config(scenes, out), progress=False)
    log = (out / "tio.log").read_text()
    assert "stack: up to date" in log
    redone = N_PAIRS - done_before
    assert f"correlate: {done_before} of {N_PAIRS} pairs already done" in log
    assert f"correlate: {redone} pairs correlated" in log
    _assert_same_products(reference, out)


def test_deleted_pair_product_is_the_only_one_recomputed(scenes, reference, tmp_path):
    out = tmp_path / "again"
    cfg = _config(scenes, out)
    run(cfg, progress=False)
    raw = out / "pairs" / "raw"
    files = sorted(raw.glob("[0-9]*.tif"))
    before = {p.name: p.stat().st_mtime_ns for p in files}
    victim = files[5]
    victim.unlink()
    result = run(cfg, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in sorted(raw.glob("[0-9]*.tif"))}
    assert set(after) == set(before)
    changed = [n for n in after if after[n] != before[n]]
    assert changed == [victim.name]
    assert "stack" in result.skipped
    log = (out / "tio.log").read_text()
    assert f"correlate: {N_PAIRS - 1} of {N_PAIRS} pairs already done" in log
    assert "correlate: 1 pairs correlated" in log
    _assert_same_products(reference, out)
    # where the work runs is not a parameter of the results: nothing is redone
    other = _config(scenes, out, **{"compute.scheduler": None, "compute.workers": 1})
    result = run(other, progress=False)
    assert {"stack", "correlate", "correct", "invert"} <= set(result.skipped)
    assert (out / "tio.log").read_text().count("tasks run on") == log.count("tasks run on")


def test_worker_killed_mid_task_does_not_lose_the_run(scenes, reference, cluster, tmp_path):
    cl, client = cluster
    out = tmp_path / "lost_worker"
    cfg = _config(scenes, out, **{"compute.scheduler": cl.scheduler_address})
    killed: list[int] = []
    errors: list[BaseException] = []

    def go():
        try:
            run(cfg, progress=False)
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    thread = threading.Thread(target=go)
    thread.start()
    deadline = time.monotonic() + 120
    while not killed and thread.is_alive() and time.monotonic() < deadline:
        busy = {
            w: keys
            for w, keys in client.processing().items()
            if any(str(k).startswith("tio-correlate") for k in keys)
        }
        if busy:
            worker = next(iter(busy))
            pid = client.run(os.getpid, workers=[worker])[worker]
            os.kill(pid, signal.SIGKILL)  # the worker dies in the middle of a task
            killed.append(pid)
        time.sleep(0.02)
    thread.join(300)
    assert killed, "no correlation task was caught running"
    assert not thread.is_alive()
    assert not errors, errors
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker
    _assert_same_products(reference, out)


def test_full_disk_leaves_no_partial_product(scenes, tmp_path, monkeypatch):
    out = tmp_path / "full"
    cfg = _config(scenes, out)
    real = xr.Dataset.to_zarr
    calls = {"n": 0}

    def full_disk(self, store, *args, **kwargs):
        if "cube.zarr" in str(store) and kwargs.get("region"):
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, store, *args, **kwargs)

    monkeypatch.setattr(xr.Dataset, "to_zarr", full_disk)
    with pytest.raises(OutputError, match=r"cube\.zarr.*No space left on device"):
        run(cfg, progress=False)
    assert not (out / "pairs" / "cube.zarr").exists()
    assert not list((out / "pairs").glob(".cube.zarr.tmp*"))
    assert not (out / "velocity.tif").exists()
    monkeypatch.setattr(xr.Dataset, "to_zarr", real)
    result = run(cfg, progress=False)  # space freed: the run ends from where it stopped
    assert {"stack", "correlate", "correct"} <= set(result.skipped)
    assert (out / "velocity.tif").exists()


def test_unwritable_output_folder_is_a_clear_error(scenes, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="a_file"):
        run(_config(scenes, blocker / "out"), progress=False)


def test_compute_options_reach_the_local_cluster(scenes, reference, tmp_path):
    out = tmp_path / "local"
    cfg = _config(
        scenes,
        out,
        **{"compute.scheduler": None, "compute.workers": 1, "compute.memory_limit": "1.5GB"},
    )
    run(cfg, progress=False)
    log = (out / "tio.log").read_text()
    assert "local Dask cluster, 1 workers of 1 thread, 1.4 GiB each" in log
    _assert_same_products(reference, out)


def test_blocks_invert_as_the_whole_scene(reference, tmp_path):
    """Blocks of rows, each inverted once for both components with the whole scene's
    pair weights, give what one inversion of the whole scene gives."""
    from tio.compute import Executor, invert_blocks, write_pair_cube
    from tio.inversion import invert
    from tio.network import Pair
    from tio.raster import read_pair_stack

    files = sorted((reference / "pairs" / "corrected").glob("[0-9]*.tif"))
    whole = read_pair_stack(files)
    pairs = [
        Pair(0, 0, *(np.datetime64(d, "D").astype(object) for d in (d1, d2)))
        for d1, d2 in zip(whole["date1"].values, whole["date2"].values, strict=True)
    ]
    write_pair_cube(tmp_path / "cube.zarr", files, pairs, "k")
    for params in ({}, {"score_weighting": True, "baseline_weighting": "short"}):
        expected = invert(whole, **params)
        ts_path = tmp_path / "ts.zarr"
        got = invert_blocks(
            tmp_path / "cube.zarr", ts_path, params, Executor(), key=str(params), rows=7
        )
        got = got.load()
        for v in expected.data_vars:
            np.testing.assert_allclose(
                got[v].values, expected[v].values, rtol=1e-6, atol=1e-7, equal_nan=True, err_msg=v
            )
