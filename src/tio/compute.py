"""Where the work of a run is done: Dask tasks, the cluster's lifecycle, the task bodies.

:func:`executor` opens what ``[compute]`` asks for:

* ``scheduler`` unset: a ``distributed.LocalCluster`` started for the run, ``workers``
  processes (default one per CPU core) of one thread each, ``memory_limit`` each
  (default the machine's memory shared between them), closed at the end;
* ``scheduler = "tcp://host:port"``: the workers of an existing dask.distributed
  cluster (they must see the run folder under the same path and have TIO installed);
* ``scheduler = "synchronous"``: every task in this process, one after the other.

Tasks exchange file names, never big arrays: a correlation task reads its two
images from the run's Zarr stack and writes its pair GeoTIFF; an inversion task
reads a band of rows of the Zarr pair cube and writes its rows of the Zarr time
series. Every task writes under a temporary name and renames, so a task that dies
(worker killed, machine lost) leaves nothing that looks complete; Dask runs it
again on another worker (``retries`` on errors, the scheduler's
``allowed-failures`` on lost workers). The results never depend on where or how
many times a task ran.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from .errors import OutputError, TioError

log = logging.getLogger("tio")

__all__ = ["Executor", "executor", "invert_blocks", "write_pair_cube"]

TASK_RETRIES = 2  # extra attempts of a task that raised (lost workers: allowed-failures)


class Executor:
    """Runs tasks: ``map(fn, argument tuples, on_done)`` returns results in order."""

    threads = None  # threads one task may use (None: all cores)
    description = "this process"

    def map(self, fn: Callable, args: Sequence[tuple], on_done=None, name: str = "task") -> list:
        out = []
        for a in args:
            out.append(fn(*a))
            if on_done:
                on_done(out[-1])
        return out


class _DaskExecutor(Executor):
    threads = 1

    def __init__(self, client, description: str):
        self.client = client
        self.description = description

    def map(self, fn: Callable, args: Sequence[tuple], on_done=None, name: str = "task") -> list:
        from dask.base import tokenize
        from distributed import as_completed

        futures = [
            self.client.submit(
                fn, *a, key=f"tio-{name}-{k}-{tokenize(a)}", pure=False, retries=TASK_RETRIES
            )
            for k, a in enumerate(args)
        ]
        index = {f.key: k for k, f in enumerate(futures)}
        out: list = [None] * len(futures)
        try:
            for fut in as_completed(futures):
                if fut.status == "error":
                    exc = fut.exception()
                    if isinstance(exc, TioError):
                        raise exc
                    if type(exc).__name__ == "KilledWorker":
                        raise TioError(
                            f"a {name} task killed the workers that ran it several times "
                            "(out of memory? give them more with --memory-limit, or fewer "
                            f"workers): {exc}"
                        )
                    raise TioError(f"a {name} task failed: {type(exc).__name__}: {exc}")
                out[index[fut.key]] = fut.result()
                fut.release()
                if on_done:
                    on_done(out[index[fut.key]])
        finally:
            for f in futures:
                if not f.done():
                    f.cancel()
        return out


@contextlib.contextmanager
def executor(compute) -> Iterator[Executor]:
    """The executor ``compute`` (a :class:`tio.config.ComputeConfig`) asks for."""
    scheduler = compute.scheduler
    if scheduler == "synchronous":
        yield Executor()
        return
    from distributed import Client, LocalCluster

    cluster = None
    try:
        if scheduler:
            if compute.workers or compute.memory_limit:
                log.warning(
                    "compute.workers / compute.memory_limit are ignored with a scheduler "
                    "address: the cluster's own workers are used"
                )
            try:
                client = Client(scheduler, timeout="30s")
            except (OSError, TimeoutError) as exc:
                raise TioError(f"cannot reach the Dask scheduler {scheduler}: {exc}") from None
            n = len(client.scheduler_info().get("workers", {}))
            desc = f"Dask scheduler {scheduler} ({n} workers)"
        else:
            n = compute.workers or os.cpu_count() or 1
            cluster = LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                memory_limit=compute.memory_limit or "auto",
                dashboard_address=":0",
                silence_logs=logging.ERROR,
            )
            client = Client(cluster)
            limit = cluster.workers[next(iter(cluster.workers))].memory_manager.memory_limit
            desc = f"local Dask cluster, {n} workers of 1 thread" + (
                f", {limit / 2**30:.1f} GiB each" if limit else ""
            )
        try:
            yield _DaskExecutor(client, desc)
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


# ---------------------------------------------------------------------------
# correlation of one pair


def correlate_pair(
    stack_path: str, i: int, j: int, options: dict, out_path: str, tags: dict, threads
) -> float | str:
    """Correlate dates ``i`` and ``j`` of a Zarr stack into a pair GeoTIFF.

    Returns the share of windows matched, or, when the pair cannot be correlated
    (a :class:`~tio.errors.CorrelationError`: e.g. one date has no usable pixel
    left), the message saying why, as a string: the driver leaves such a pair out
    of the network instead of stopping the run. The file is written under a
    temporary name and renamed: it exists only complete, with its ``TIO_KEY`` tag.
    """
    import datetime as dt

    from .correlation import correlate
    from .errors import CorrelationError
    from .raster import write_pair
    from .stack import open_stack

    stack = open_stack(stack_path)
    images = []
    for k in (i, j):
        da = stack["image"].isel(time=k).drop_vars(["time", "source"], errors="ignore").load()
        da.attrs = {"crs": stack.attrs.get("crs"), "transform": list(stack.attrs["transform"])}
        images.append(da)
    dates = [dt.date.fromisoformat(str(stack["time"].values[k])[:10]) for k in (i, j)]
    try:
        ds = correlate(*images, **options, workers=threads)
    except CorrelationError as exc:
        return str(exc)
    write_pair(Path(out_path), ds, dates[0], dates[1], tags)
    return float(np.isfinite(ds["ew"].values).mean())


# ---------------------------------------------------------------------------
# the pair cube fed to the inversion


def _zarr_error(path: Path, exc: OSError, tmp: Path | None = None) -> OutputError:
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    return OutputError(f"cannot write {path}: {exc.strerror or exc}")


def write_pair_cube(path: Path, files: Sequence[Path], pairs, key: str) -> None:
    """Copy corrected pair GeoTIFFs into a Zarr cube ``(pair, y, x)``, one pair at a time.

    Chunks are one pair by bands of rows, so an inversion task reads its rows of
    every pair without reading the rest. Written under a temporary name, renamed
    when complete; ``key`` (the corrected pairs' key) is kept in its attributes.
    """
    import dask.array as da

    from .raster import read_pair

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    first = read_pair(files[0])
    ny, nx = first.sizes["y"], first.sizes["x"]
    rows = _cube_rows(nx)
    shape, chunks = (len(files), ny, nx), (1, min(rows, ny), nx)
    template = xr.Dataset(
        {v: (("pair", "y", "x"), da.zeros(shape, "float32", chunks=chunks)) for v in _CUBE_VARS},
        coords={
            "x": first["x"].values,
            "y": first["y"].values,
            "pair": [p.name for p in pairs],
            "date1": ("pair", np.array([np.datetime64(p.date1.isoformat(), "ns") for p in pairs])),
            "date2": ("pair", np.array([np.datetime64(p.date2.isoformat(), "ns") for p in pairs])),
        },
        attrs={
            **{k: first.attrs[k] for k in ("transform", "units")},
            "crs": first.attrs.get("crs") or "",
            "tio_key": key,
        },
    )
    try:
        for old in path.parent.glob(f".{path.name}.tmp*"):  # left by a killed run
            shutil.rmtree(old, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        template.to_zarr(tmp, compute=False, mode="w", consolidated=False, zarr_format=2)
        for k, f in enumerate(files):
            m = first if k == 0 else read_pair(f)
            region = xr.Dataset(
                {v: (("pair", "y", "x"), m[v].values[None].astype("float32")) for v in _CUBE_VARS}
            )
            region.to_zarr(tmp, region={"pair": slice(k, k + 1)}, consolidated=False, zarr_format=2)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except OSError as exc:
        raise _zarr_error(path, exc, tmp) from None


_CUBE_VARS = ("ew", "ns", "score")


def _cube_rows(nx: int) -> int:
    """Rows per chunk of the pair cube: about 256k pixels."""
    return max(1, (1 << 18) // max(nx, 1))


def open_pair_cube(path) -> xr.Dataset:
    """The Zarr pair cube (lazy), with the attributes :func:`tio.inversion.invert` keeps."""
    ds = xr.open_zarr(path, consolidated=False, zarr_format=2)
    ds.attrs["crs"] = ds.attrs.get("crs") or None
    ds.attrs.pop("tio_key", None)
    return ds


def pair_cube_key(path) -> str | None:
    try:
        import zarr

        return zarr.open_group(path, mode="r").attrs.get("tio_key")
    except Exception:
        return None


# ---------------------------------------------------------------------------
# inversion by blocks of rows


def pair_weights(cube: xr.Dataset, params: dict) -> dict[str, np.ndarray] | None:
    """``1 / sigma_p**2`` per pair and component for the whole scene, or None.

    The a priori weights of :func:`tio.inversion.invert` for its
    ``pair_weighting`` (in ``params``), computed once for the whole scene so
    that every block of rows gets them: ``"residual"`` inverts the same regular
    sample of pixels ``invert`` would (read from the cube), ``"std"`` reads whole
    maps (one pair in memory at a time), ``"none"`` gives None.
    """
    from ._inversion import pair_sigmas, robust_std
    from .inversion import _valid, residual_pair_weights, residual_sample

    weighting = params.get("pair_weighting", "residual")
    if weighting == "none":
        return None
    if weighting == "residual":
        return residual_pair_weights(residual_sample(cube), **params)
    score_weighting = bool(params.get("score_weighting"))

    sig = {c: np.empty(cube.sizes["pair"]) for c in ("ew", "ns")}
    for p in range(cube.sizes["pair"]):
        m = cube.isel(pair=p)
        a = np.asarray(m["ew"].values, np.float64)
        b = np.asarray(m["ns"].values, np.float64)
        s = np.asarray(m["score"].values, np.float64) if score_weighting else None
        ok = _valid(a, b, s)
        sig["ew"][p] = robust_std(a[ok])
        sig["ns"][p] = robust_std(b[ok])
    return {c: 1.0 / pair_sigmas(s) ** 2 for c, s in sig.items()}


def _invert_rows(cube: xr.Dataset, weights: dict | None, params: dict) -> xr.Dataset:
    """:func:`tio.inversion.invert` on a block of rows with whole-scene pair weights.

    With ``pair_weighting="residual"`` or ``"std"`` the block is inverted once,
    both components, with the pair weights of the whole scene (``weights``, from
    :func:`pair_weights`): exactly the weights ``invert`` gives the whole scene.
    """
    from .inversion import invert

    return invert(cube, **params, pair_weights=weights)


def invert_block(
    cube_path: str, r0: int, r1: int, weights: dict | None, params: dict, ts_path: str
) -> dict:
    """Invert rows ``r0:r1`` of the Zarr pair cube into the Zarr time series.

    Returns the number of rows and the per-pair sums of squared residuals and
    counts (for the RMS of each pair over the whole scene), also kept in a marker
    file that records the block as done.
    """
    cube = open_pair_cube(cube_path).isel(y=slice(r0, r1)).load()
    ts = _invert_rows(cube, weights, params)
    stats = _residual_stats(ts)
    region = ts.drop_vars([v for v in ts.variables if "y" not in ts[v].dims])
    done = _marks(Path(ts_path)) / "done" / f"{r0}"
    try:
        region.to_zarr(ts_path, region={"y": slice(r0, r1)}, consolidated=False, zarr_format=2)
        np.save(done.with_suffix(".tmp.npy"), stats)
        os.replace(done.with_suffix(".tmp.npy"), done.with_suffix(".npy"))
    except OSError as exc:
        raise _zarr_error(Path(ts_path), exc) from None
    return {"rows": r1 - r0, "stats": stats}


def _marks(ts_path: Path) -> Path:
    """Folder of the markers of a Zarr time series: its key, the blocks done."""
    return ts_path.with_name(ts_path.name + ".blocks")


def _residual_stats(ts: xr.Dataset) -> np.ndarray:
    """``[sum r_ew^2, sum r_ns^2, count]`` per pair over the block's inverted pixels."""
    r_ew = ts["residual_ew"].values.astype(np.float64)
    r_ns = ts["residual_ns"].values.astype(np.float64)
    n = ts.sizes["pair"]
    return np.stack(
        [
            np.nansum(r_ew.reshape(n, -1) ** 2, axis=1),
            np.nansum(r_ns.reshape(n, -1) ** 2, axis=1),
            np.isfinite(r_ew.reshape(n, -1)).sum(axis=1).astype(np.float64),
        ]
    )


def invert_blocks(
    cube_path: Path,
    ts_path: Path,
    params: dict,
    run: Executor,
    *,
    key: str = "",
    rows: int | None = None,
    progress=None,
) -> xr.Dataset:
    """Invert the Zarr pair cube block by block (tasks of ``run``) into ``ts_path``.

    Same results as :func:`tio.inversion.invert` on the whole cube (the pair
    weights are computed over whole maps first), in memory bounded by a block.
    Blocks already done in ``ts_path`` (an interrupted run with the same inputs
    and parameters) are not redone. Returns the time series, read lazily.
    """
    import dask.array as da

    cube_path, ts_path = Path(cube_path), Path(ts_path)
    cube = open_pair_cube(cube_path)
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    # about 2**24 pair-pixel values per block (~0.4 GB of float64 ew/ns/score per task)
    rows = rows or max(1, min(_cube_rows(nx), (1 << 24) // (cube.sizes["pair"] * max(nx, 1))))
    starts = list(range(0, ny, rows))
    weights = pair_weights(cube, params)
    marks = _marks(ts_path)
    created = marks / "created"
    try:
        if not (created.exists() and created.read_text() == key):
            shutil.rmtree(ts_path, ignore_errors=True)
            shutil.rmtree(marks, ignore_errors=True)
            # the first row gives every variable, its dims, dtype and attributes
            head = _invert_rows(cube.isel(y=slice(0, 1)).load(), weights, params)
            template = xr.Dataset(
                {
                    name: (
                        v.dims,
                        da.zeros(
                            [ny if d == "y" else v.sizes[d] for d in v.dims],
                            dtype=v.dtype,
                            chunks=[rows if d == "y" else -1 for d in v.dims],
                        )
                        if "y" in v.dims
                        else v.values,
                        v.attrs,
                    )
                    for name, v in head.data_vars.items()
                },
                coords={
                    **{k: c.variable for k, c in head.coords.items() if "y" not in c.dims},
                    "y": cube["y"].values,
                },
                attrs=head.attrs,
            )
            template.to_zarr(ts_path, compute=False, mode="w", consolidated=False, zarr_format=2)
            (marks / "done").mkdir(parents=True)
            created.write_text(key)
    except OSError as exc:
        raise _zarr_error(ts_path, exc) from None
    done = marks / "done"
    todo = [r0 for r0 in starts if not (done / f"{r0}.npy").exists()]
    if progress and len(todo) < len(starts):
        progress(sum(min(ny, r0 + rows) - r0 for r0 in starts if r0 not in todo))
    if len(todo) < len(starts):
        log.info("invert: %d of %d blocks already done", len(starts) - len(todo), len(starts))
    run.map(
        invert_block,
        [(str(cube_path), r0, min(ny, r0 + rows), weights, params, str(ts_path)) for r0 in todo],
        on_done=(lambda r: progress(r["rows"])) if progress else None,
        name="invert",
    )
    stats = sum(np.load(done / f"{r0}.npy") for r0 in starts)
    ts = xr.open_zarr(ts_path, consolidated=False, zarr_format=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        for k, c in enumerate(("ew", "ns")):
            rms = np.where(stats[2] > 0, np.sqrt(stats[k] / stats[2]), np.nan).astype("float32")
            ts[f"rms_pair_{c}"] = ("pair", rms, ts[f"rms_pair_{c}"].attrs)
    ts.attrs["crs"] = ts.attrs.get("crs") or None
    return ts
