"""The driver: chain the stages of a run and skip what is already done.

Stages and what each leaves in the output folder::

    find scenes    tio.ingest.find_scenes       (nothing: metadata only), or with an
                   area and dates but no paths tio.catalog.scenes_for (a STAC search)
    stack          tio.stack.build_stack        stack.zarr (chunked, one date at a time)
    pairs          tio.network.select_pairs     network.txt, network.png
    correlate      tio.correlation.correlate    pairs/raw/YYYYMMDD_YYYYMMDD.tif
    correct        tio.corrections.iter_corrected pairs/corrected/*.tif, pairs/corrections.csv
    invert         tio.compute.invert_blocks    pairs/cube.zarr, .tio/timeseries.zarr, then
                                                timeseries.nc and the GeoTIFF products
    quicklooks     tio.quicklook                quicklook_*.png

Every output carries a key: a hash of the parameters and of the inputs that
made it (a ``TIO_KEY`` tag in GeoTIFFs, ``.tio/state.json`` for the rest). A
stage whose outputs exist with the same key is skipped, so a run started again
after a crash, or with only late-stage parameters changed, redoes only what is
needed. Outputs are written under temporary names and renamed when complete.
A pair that could not be correlated (the reason is in the data, e.g. a date
without a usable pixel) is recorded there too, with its key, and left out
without a new try while its inputs and options stay the same.

Correlation (one task per pair) and inversion (one task per band of rows) run
as tasks of :mod:`tio.compute` (Dask, or this process), which read their inputs
from the run folder and write their outputs there.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm import tqdm

from . import __version__
from .compute import Executor, executor
from .config import RunConfig, dump_toml
from .errors import CorrelationError, InputError, OutputError
from .ingest import Scene, check_date_limit, find_scenes
from .network import Pair, describe_network, plot_network, select_pairs
from .raster import atomic_path, read_pair, read_tags, write_pair

log = logging.getLogger("tio")

__all__ = ["RunResult", "run"]


@dataclass
class RunResult:
    """What a run produced."""

    out_dir: Path
    scenes: list[Scene]
    pairs: list[Pair]
    timeseries: xr.Dataset
    products: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _hash(*parts) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _State:
    """``.tio/state.json``: the key each finished stage was made with."""

    def __init__(self, out: Path):
        self.path = out / ".tio" / "state.json"
        try:
            self.data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.data = {}

    def done(self, stage: str, key: str, *outputs: Path) -> bool:
        return self.data.get(stage) == key and all(p.exists() for p in outputs)

    def mark(self, stage: str, key: str) -> None:
        self.data[stage] = key
        self.save()

    def save(self) -> None:
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))


def _setup_logging(out: Path, verbose: bool) -> logging.Handler:
    handler = logging.FileHandler(out / "tio.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    return handler


class _Console(logging.Handler):
    """Log lines on the terminal that do not break tqdm's progress bars."""

    def emit(self, record):
        if getattr(record, "file_only", False):
            return
        tqdm.write(
            f"{record.levelname.lower()}: {self.format(record)}"
            if record.levelno >= logging.WARNING
            else self.format(record)
        )


def _bar(total: int, desc: str, unit: str, enabled: bool):
    return tqdm(
        total=total,
        desc=f"{desc:<10}",
        unit=unit,
        disable=not enabled,
        leave=True,
        dynamic_ncols=True,
    )


_STACK_OPTIONS = (
    "aoi",
    "resampling",
    "crs",
    "resolution",
    "max_cloud",
    "pixel_units",
    "mask_snow",
    "b09_threshold",
)


def _stack_options(cfg_in) -> dict:
    """The input section's values that are :func:`tio.stack.build_stack` options."""
    return cfg_in.model_dump(include=set(_STACK_OPTIONS))


def _scene_fingerprint(scenes: Sequence[Scene]) -> list:
    out = []
    for s in scenes:
        try:
            st = Path(s.source).stat()
            out.append([s.path, s.date.isoformat(), st.st_size, int(st.st_mtime)])
        except OSError:
            out.append([s.path, s.date.isoformat()])
    return out


def run(config: RunConfig, *, progress: bool = True, verbose: bool = False) -> RunResult:
    """Run every stage described by ``config``; see the module docstring.

    Raises
    ------
    TioError
        Any stage's error (bad input, empty network...), after logging it.
    """
    out = Path(config.output.directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {out}: {exc.strerror}") from None
    file_handler = _setup_logging(out, verbose)
    console = None
    if progress:
        console = _Console()
        console.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(console)
    started = time.monotonic()
    try:
        log.info("tio %s: run into %s", __version__, out.resolve())
        with atomic_path(out / "config.toml") as tmp:
            tmp.write_text(dump_toml(config))
        state = _State(out)
        with _LazyExecutor(config.compute) as tasks:
            result = _run_stages(config, out, state, progress, tasks)
        log.info("done in %.1f s; products in %s", time.monotonic() - started, out.resolve())
        return result
    except Exception as exc:
        log.error("%s", exc)
        raise
    finally:
        log.removeHandler(file_handler)
        file_handler.close()
        if console:
            log.removeHandler(console)


class _LazyExecutor:
    """The executor of ``[compute]``, started on first use (not for an up-to-date run)."""

    def __init__(self, compute):
        self.compute = compute
        self.stack = contextlib.ExitStack()
        self.executor: Executor | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stack.close()

    def get(self) -> Executor:
        if self.executor is None:
            self.executor = self.stack.enter_context(executor(self.compute))
            log.info("tasks run on: %s", self.executor.description)
        return self.executor


def _run_stages(
    config: RunConfig, out: Path, state: _State, progress: bool, tasks: _LazyExecutor
) -> RunResult:
    # the numerical stages are imported here so that `tio --help` stays instant
    from .compute import correlate_pair, invert_blocks, pair_cube_key, write_pair_cube
    from .products import write_products
    from .stack import build_stack, open_stack

    cfg_in, cfg_c = config.input, config.correlation
    skipped: list[str] = []

    # 1. scenes ------------------------------------------------------------
    remote = not cfg_in.paths
    if remote:
        if cfg_in.aoi is None or not (cfg_in.start or cfg_in.end):
            raise InputError(
                "no input given: pass image files, folders or SAFE products, or an area "
                "(--aoi) and dates (--start/--end) to search the catalogue"
            )
        from .catalog import scenes_for

        scenes = scenes_for(cfg_in)
    else:
        scenes = find_scenes(
            cfg_in.paths, band=cfg_in.band, start=cfg_in.start, end=cfg_in.end, orbit=cfg_in.orbit
        )
    log.info("%d scenes from %s to %s", len(scenes), scenes[0].date, scenes[-1].date)
    check_date_limit(scenes, cfg_in.max_dates)

    # 2. stack ---------------------------------------------------------------
    stack_key = _hash(
        "stack",
        cfg_in.model_dump(mode="json", exclude={"start", "end", "max_dates"}),
        _scene_fingerprint(scenes),
    )
    stack_path = out / "stack.zarr"
    if state.done("stack", stack_key, stack_path):
        stack = open_stack(stack_path)
        skipped.append("stack")
        log.info("stack: up to date")
    else:
        from .catalog import remote_gdal_env

        with _bar(len(scenes), "read", "scene", progress) as bar, remote_gdal_env(remote):
            stack = build_stack(
                scenes, **_stack_options(cfg_in), progress=bar.update, store=stack_path
            )
        state.mark("stack", stack_key)
    kept = set(stack["source"].values.tolist())
    scenes = [s for s in scenes if s.source in kept]  # without the dropped dates
    log.info("stack: %d dates on a grid of %s", len(scenes), stack.attrs["grid"])

    # 3. pairs ---------------------------------------------------------------
    dates = [s.date for s in scenes]
    # the pairs section's names are select_pairs()'s keyword arguments
    pairs = select_pairs(dates, **config.pairs.model_dump())
    report = describe_network(dates, pairs)
    for line in report.lines()[:2]:
        log.info("network: %s", line)
    if not report.connected:
        log.warning("%s", report.warning())
    _write_network(out, report)

    # 4. correlate -----------------------------------------------------------
    corr_params = cfg_c.model_dump(mode="json", exclude={"min_score"})
    raw_dir = out / "pairs" / "raw"
    raw_keys = {}
    todo = []
    # pairs that could not be correlated with the same inputs and options: the
    # reason is deterministic (e.g. a date without a usable pixel), so not retried
    known_failed = state.data.get("correlate_failed", {})
    failed = {}
    for p in pairs:
        key = _hash("correlate", stack_key, corr_params, p.name)
        raw_keys[p.name] = key
        path = raw_dir / f"{p.name}.tif"
        if key in known_failed:
            failed[p.name] = known_failed[key]
            log.warning(
                "correlate: pair %s left out, as in the last run with the same inputs and "
                "options (not tried again): %s",
                p.name,
                known_failed[key],
            )
        elif not (path.exists() and read_tags(path).get("TIO_KEY") == key):
            todo.append(p)
    if len(todo) + len(failed) < len(pairs):
        log.info(
            "correlate: %d of %d pairs already done",
            len(pairs) - len(todo) - len(failed),
            len(pairs),
        )
    if not todo:
        skipped.append("correlate")
    matched = []
    if todo:
        _remove_leftovers(raw_dir)
        run_tasks = tasks.get()
        with _bar(len(todo), "correlate", "pair", progress) as bar:
            # one task per pair: it reads its two dates from stack.zarr, writes its GeoTIFF
            matched = run_tasks.map(
                correlate_pair,
                [
                    (
                        str(stack_path),
                        p.i,
                        p.j,
                        cfg_c.model_dump(exclude={"min_score"}),  # correlate()'s options
                        str(raw_dir / f"{p.name}.tif"),
                        {"TIO_KEY": raw_keys[p.name]},
                        run_tasks.threads,
                    )
                    for p in todo
                ],
                on_done=lambda _: bar.update(),
                name="correlate",
            )
        for p, valid in zip(todo, matched, strict=True):
            if isinstance(valid, str):
                failed[p.name] = valid
                log.warning(
                    "correlate: pair %s (%s / %s) left out: %s",
                    p.name,
                    scenes[p.i].source,
                    scenes[p.j].source,
                    valid,
                )
            else:
                log.debug("correlated %s: %.0f %% of windows matched", p.name, 100 * valid)
        matched = [v for v in matched if not isinstance(v, str)]
    failed_keys = {raw_keys[name]: why for name, why in failed.items()}
    if failed_keys != known_failed:
        state.data["correlate_failed"] = failed_keys
        state.save()
    if failed:
        pairs = [p for p in pairs if p.name not in failed]
        if not pairs:
            raise CorrelationError(
                f"no pair could be correlated ({len(failed)} tried); the first: "
                f"{next(iter(failed.values()))}"
            )
        report = describe_network(dates, pairs)
        if not report.connected:
            log.warning("without the pairs left out: %s", report.warning())
        _write_network(out, report, failed)
    if matched:
        log.info(
            "correlate: %d pairs correlated, %.0f %% of windows matched on average",
            len(matched),
            100 * float(np.mean(matched)),
        )

    # 5. correct -------------------------------------------------------------
    corr_dir = out / "pairs" / "corrected"
    cc = config.correction
    mask_id = None if cc.stable_mask is None else _file_id(cc.stable_mask)
    # automatic stable ground uses every pair: one key for the whole stage
    fix_key = _hash(
        "correct",
        [raw_keys[p.name] for p in pairs],
        cc.model_dump(mode="json"),
        cfg_c.min_score,
        mask_id,
    )
    fixed_keys = {p.name: fix_key for p in pairs}
    records = []
    if all(
        (corr_dir / f"{p.name}.tif").exists()
        and read_tags(corr_dir / f"{p.name}.tif").get("TIO_KEY") == fix_key
        and state.data.get("corrections", {}).get(p.name)
        for p in pairs
    ):
        skipped.append("correct")
        records = [state.data["corrections"][p.name] for p in pairs]
        log.info("correct: up to date")
    else:
        records = _correct_stage(config, stack, scenes, pairs, raw_dir, corr_dir, fix_key, state)
        state.save()  # the correction records
        _write_corrections_csv(out / "pairs" / "corrections.csv", records, pairs)

    # 6. invert + products ---------------------------------------------------
    inv_key = _hash("invert", sorted(fixed_keys.values()), config.inversion.model_dump(mode="json"))
    prod_key = _hash(inv_key, config.output.model_dump(mode="json", exclude={"directory"}))
    ts_path = out / "timeseries.nc"
    if state.done("products", prod_key, out / "cumulative_ew.tif", out / "velocity.tif"):
        skipped.append("invert")
        # lazy: read when used, never the whole time series at once
        ts = xr.open_dataset(
            ts_path if ts_path.exists() else out / ".tio" / "timeseries.nc",
            engine="h5netcdf",
            chunks={},
        )
        log.info("invert: up to date")
        products = sorted(out.glob("*.tif"))
    else:
        # the corrected pairs in a chunked Zarr cube, inverted by blocks of rows
        cube_path = out / "pairs" / "cube.zarr"
        if pair_cube_key(cube_path) != fix_key:
            write_pair_cube(cube_path, [corr_dir / f"{p.name}.tif" for p in pairs], pairs, fix_key)
        with _bar(_rows_of(corr_dir / f"{pairs[0].name}.tif"), "invert", "row", progress) as bar:
            # the inversion section's names are invert()'s keyword arguments
            ts = invert_blocks(
                cube_path,
                out / ".tio" / "timeseries.zarr",
                config.inversion.model_dump(),
                tasks.get(),
                key=inv_key,
                progress=bar.update,
            )  # lazy (Zarr): the products read it by bands of rows
        ts.attrs.update(
            units=ts.attrs.get("units", "m"),
            tio_version=__version__,
            grid=stack.attrs.get("grid", ""),
            resampling=stack.attrs.get("resampling", ""),
            inputs="\n".join(s.source for s in scenes),
        )
        import dask

        # the time series is read here, in this process, not on the cluster's workers
        with dask.config.set(scheduler="synchronous"):
            n_ok = int(np.isfinite(ts["cumulative_ew"].isel(time=-1).values).sum())
            log.info("invert: %d of %d pixels inverted", n_ok, ts.sizes["x"] * ts.sizes["y"])
            _remove_leftovers(out)  # temporary products of a killed run
            products = write_products(ts, out, netcdf=config.output.netcdf)
            if not config.output.netcdf:
                from .products import write_netcdf

                write_netcdf(ts, out / ".tio" / "timeseries.nc")
            if config.output.quicklooks:
                products += _quicklooks(ts, stack, out, scenes, config.output)
        state.mark("products", prod_key)
    return RunResult(
        out_dir=out, scenes=scenes, pairs=pairs, timeseries=ts, products=products, skipped=skipped
    )


def _remove_leftovers(folder: Path) -> None:
    """Temporary files of tasks killed in a previous run (no task of this run is running)."""
    for p in folder.glob(".*.tmp*"):
        with contextlib.suppress(OSError):
            p.unlink()


def _rows_of(path: Path) -> int:
    import rasterio

    with rasterio.open(path) as src:
        return src.height


def _file_id(path) -> list:
    p = Path(path)
    try:
        st = p.stat()
        return [str(p.resolve()), st.st_size, int(st.st_mtime)]
    except OSError:
        return [str(p)]


def _on_pair_grid(values: np.ndarray, stack: xr.Dataset, ds: xr.Dataset) -> np.ndarray:
    """Nearest value of a stack-grid array at the pair map's pixel centres."""
    a, _, c, _, e, f = stack.attrs["transform"][:6]
    cols = np.clip(np.floor((ds["x"].values - c) / a).astype(int), 0, values.shape[1] - 1)
    rows = np.clip(np.floor((ds["y"].values - f) / e).astype(int), 0, values.shape[0] - 1)
    return values[np.ix_(rows, cols)]


def _detectors(stack: xr.Dataset, scenes: list[Scene], like: xr.Dataset) -> list[np.ndarray | None]:
    """Each date's detector numbers from MSK_DETFOO on the grid of the pair map
    ``like`` (one date at a time on the stack grid), or None."""
    from affine import Affine

    from .corrections import detector_footprints
    from .stack import Grid

    if not stack.attrs.get("crs"):
        return [None] * len(scenes)
    grid = Grid(
        stack.attrs["crs"],
        Affine(*stack.attrs["transform"][:6]),
        (stack.sizes["y"], stack.sizes["x"]),
    )
    out = []
    for s in scenes:
        try:
            dets = detector_footprints(s, grid)
            out.append(None if dets is None else _on_pair_grid(dets, stack, like))
        except InputError as exc:
            log.warning("%s: detector footprints not read (%s)", s.source, exc)
            out.append(None)
    return out


class _PairFiles(Sequence):
    """Pair GeoTIFFs read (:func:`tio.raster.read_pair`) each time an item is asked for."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k):
        return read_pair(self.paths[k])


def _write_network(out: Path, report, left_out: dict[str, str] | None = None) -> None:
    """``network.txt`` and ``network.png``; ``left_out``: pairs that failed, and why."""
    lines = report.lines()
    for name, why in (left_out or {}).items():
        lines.append(f"left out (correlation failed): {name}: {why}")
    with atomic_path(out / "network.txt") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    try:
        plot_network(report, out / "network.png")
    except Exception as exc:  # a figure must never stop a run
        log.warning("network plot not drawn: %s", exc)


def _correct_stage(config, stack, scenes, pairs, raw_dir, corr_dir, key, state) -> list[dict]:
    from .corrections import iter_corrected, read_stable_mask, track_heading

    cc = config.correction
    # read when used: the corrections hold one pair's maps at a time
    maps = _PairFiles([raw_dir / f"{p.name}.tif" for p in pairs])
    first = maps[0]
    stable = None
    if cc.stable_mask is not None:
        stable = read_stable_mask(cc.stable_mask, first, moving=cc.stable_mask_moving)
        log.info(
            "correct: stable ground from %s (%.0f %% of the area)",
            cc.stable_mask,
            100 * float(stable.mean()),
        )
    detectors = None
    heading = None
    if cc.stripes:
        dets = _detectors(stack, scenes, first)
        detectors = [tuple(dets[k] for k in (p.i, p.j)) for p in pairs]
        n_foot = sum(d is not None for d in dets)
        if n_foot < len(dets):
            heading = track_heading(
                stack.attrs.get("crs"),
                stack.attrs["transform"],
                (stack.sizes["y"], stack.sizes["x"]),
            )
        log.info(
            "correct: detector footprints (MSK_DETFOO) for %d of %d dates%s",
            n_foot,
            len(dets),
            ""
            if n_foot == len(dets)
            else (
                "; the others' stripes follow the ground-track geometry"
                if heading is not None
                else "; no georeferencing, so no stripes for the others"
            ),
        )
        # a pair without footprints for both dates uses the geometry
        detectors = [d if all(v is not None for v in d) else (None, None) for d in detectors]
    del first
    results = iter_corrected(
        maps,
        min_score=config.correlation.min_score,
        median=cc.median,
        ramp=cc.ramp,
        stripes=cc.stripes,
        stable=stable,
        detectors=detectors,
        heading=heading,
        outlier_test=cc.outlier_test,
        outlier_threshold=cc.outlier_threshold,
        max_displacement=cc.max_displacement,
        pixel_size=abs(stack.attrs["transform"][0]),
        scratch=corr_dir.parent / f".correct.tmp{os.getpid()}",
    )
    for old in corr_dir.parent.glob(".correct.tmp*"):  # left by a killed run
        shutil.rmtree(old, ignore_errors=True)
    records = []
    state.data["corrections"] = {}
    for p, (fixed, rec) in zip(pairs, results, strict=True):
        write_pair(
            corr_dir / f"{p.name}.tif",
            fixed,
            p.date1,
            p.date2,
            {"TIO_KEY": key, "TIO_CORRECTIONS": fixed.attrs["corrections"]},
        )
        rec = {"pair": p.name, "date1": p.date1.isoformat(), "date2": p.date2.isoformat(), **rec}
        records.append(rec)
        state.data["corrections"][p.name] = rec
        log.info(
            "correct %s: %d low score, %d too large, %d outliers masked; %.0f %% kept; "
            "offset %+.2f / %+.2f on %d stable pixels",
            p.name,
            rec["low_score"],
            rec["too_large"],
            rec["outliers"],
            100 * rec["valid_fraction"],
            rec["offset_ew"],
            rec["offset_ns"],
            rec["stable_pixels"],
            extra={"file_only": True},
        )
    log.info(
        "correct: %d pairs; %.0f %% of offsets kept (score >= %g%s%s); removed: %s",
        len(pairs),
        100 * float(np.mean([r["valid_fraction"] for r in records])),
        config.correlation.min_score,
        ", neighbour median test" if cc.outlier_test else "",
        f", within {cc.max_displacement:g} of the median" if cc.max_displacement else "",
        ", ".join(
            k for k, on in (("offset", cc.median), ("ramp", cc.ramp), ("stripes", cc.stripes)) if on
        )
        or "nothing",
    )
    return records


_CSV_COLUMNS = [
    "pair",
    "date1",
    "date2",
    "valid_fraction",
    "low_score",
    "too_large",
    "outliers",
    "stable_source",
    "stable_pixels",
    "offset_ew",
    "offset_ns",
    "ramp_ew_x",
    "ramp_ew_y",
    "ramp_ns_x",
    "ramp_ns_y",
    "stripe_bands",
    "stripe_edges",
    "stripes_ew",
    "stripes_ns",
]


def _write_corrections_csv(path: Path, records: list[dict], pairs: list[Pair]) -> None:
    order = {p.name: k for k, p in enumerate(pairs)}
    records = sorted((r for r in records if r["pair"] in order), key=lambda r: order[r["pair"]])
    cols = _CSV_COLUMNS
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for r in records:
        w.writerow(
            [
                (
                    " ".join(f"{c:.6g}" for c in r[c])
                    if isinstance(r.get(c), list | tuple)
                    else (f"{r[c]:.4f}" if isinstance(r.get(c), float) else r.get(c, ""))
                )
                for c in cols
            ]
        )
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def _quicklooks(
    ts: xr.Dataset, stack: xr.Dataset, out: Path, scenes: list[Scene], output
) -> list[Path]:
    """Pictures, overlays, animation, points, STAC catalog and report (tio.present)."""
    from .present import attribution_for, render_run

    attribution = attribution_for([s.source for s in scenes], [s.date.year for s in scenes])
    return render_run(
        out,
        ts=ts,
        stack=stack,
        points=output.points,
        animation=output.animation,
        attribution=attribution,
        step=lambda name: log.info("present: %s", name),
    )
