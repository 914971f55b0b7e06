"""The driver: chain the stages of a run and skip what is already done.

Stages and what each leaves in the output folder::

    find scenes    tio.ingest.find_scenes       (nothing: metadata only), or with an
                   area and dates but no paths tio.catalog.scenes_for (a STAC search)
    stack          tio.stack.build_stack        stack.nc
    pairs          tio.network.select_pairs     network.txt
    correlate      tio.correlation.correlate    pairs/raw/YYYYMMDD_YYYYMMDD.tif
    correct        tio.corrections.correct_pair pairs/corrected/*.tif, pairs/corrections.csv
    invert         tio.inversion.invert         timeseries.nc and the GeoTIFF products
    quicklooks     tio.quicklook                quicklook_*.png

Every output carries a key: a hash of the parameters and of the inputs that
made it (a ``TIO_KEY`` tag in GeoTIFFs, ``.tio/state.json`` for the rest). A
stage whose outputs exist with the same key is skipped, so a run started again
after a crash, or with only late-stage parameters changed, redoes only what is
needed. Outputs are written under temporary names and renamed when complete.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm import tqdm

from . import __version__
from .config import RunConfig, dump_toml
from .errors import InputError, OutputError
from .ingest import Scene, find_scenes
from .network import Pair, describe_network, select_pairs
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


def _image(stack: xr.Dataset, i: int) -> xr.DataArray:
    da = stack["image"].isel(time=i).drop_vars(["time", "source"], errors="ignore")
    da.attrs = {"crs": stack.attrs.get("crs"), "transform": list(stack.attrs["transform"])}
    return da


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
        result = _run_stages(config, out, state, progress)
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


def _run_stages(config: RunConfig, out: Path, state: _State, progress: bool) -> RunResult:
    # the numerical stages are imported here so that `tio --help` stays instant
    from .corrections import correct_pair
    from .correlation import correlate
    from .inversion import invert
    from .products import write_products
    from .stack import build_stack, load_stack, save_stack

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

    # 2. stack ---------------------------------------------------------------
    stack_key = _hash(
        "stack",
        cfg_in.model_dump(mode="json", exclude={"start", "end"}),
        _scene_fingerprint(scenes),
    )
    stack_path = out / "stack.nc"
    if state.done("stack", stack_key, stack_path):
        stack = load_stack(stack_path)
        skipped.append("stack")
        log.info("stack: up to date")
    else:
        from .catalog import remote_gdal_env

        with _bar(len(scenes), "read", "scene", progress) as bar, remote_gdal_env(remote):
            stack = build_stack(scenes, **_stack_options(cfg_in), progress=bar.update)
        save_stack(stack, stack_path)
        state.mark("stack", stack_key)
    kept = set(stack["source"].values.tolist())
    scenes = [s for s in scenes if s.source in kept]  # without the dropped dates
    log.info("stack: %d dates on a grid of %s", len(scenes), stack.attrs["grid"])

    # 3. pairs ---------------------------------------------------------------
    dates = [s.date for s in scenes]
    pairs = select_pairs(
        dates,
        max_next=config.pairs.max_next,
        min_days=config.pairs.min_days,
        max_days=config.pairs.max_days,
    )
    report = describe_network(dates, pairs)
    for line in report.lines()[:1]:
        log.info("network: %s", line)
    if not report.connected:
        log.warning(
            "the pair network is disconnected (%d components): dates are tied only by "
            "temporal smoothing (inversion.smoothing_gamma2)",
            len(report.components),
        )
    with atomic_path(out / "network.txt") as tmp:
        tmp.write_text("\n".join(report.lines()) + "\n")

    # 4. correlate -----------------------------------------------------------
    corr_params = cfg_c.model_dump(mode="json", exclude={"min_score"})
    raw_dir = out / "pairs" / "raw"
    raw_keys = {}
    todo = []
    for p in pairs:
        key = _hash("correlate", stack_key, corr_params, p.name)
        raw_keys[p.name] = key
        path = raw_dir / f"{p.name}.tif"
        if not (path.exists() and read_tags(path).get("TIO_KEY") == key):
            todo.append(p)
    if len(todo) < len(pairs):
        log.info("correlate: %d of %d pairs already done", len(pairs) - len(todo), len(pairs))
    if not todo:
        skipped.append("correlate")
    matched = []
    with _bar(len(todo), "correlate", "pair", progress) as bar:
        for p in todo:
            ds = correlate(
                _image(stack, p.i),
                _image(stack, p.j),
                **cfg_c.model_dump(exclude={"min_score"}),  # the rest are correlate()'s options
            )
            valid = float(np.isfinite(ds["ew"].values).mean())
            write_pair(
                raw_dir / f"{p.name}.tif", ds, p.date1, p.date2, {"TIO_KEY": raw_keys[p.name]}
            )
            log.debug("correlated %s: %.0f %% of windows matched", p.name, 100 * valid)
            matched.append(valid)
            bar.update()
    if todo:
        log.info(
            "correlate: %d pairs correlated, %.0f %% of windows matched on average",
            len(todo),
            100 * float(np.mean(matched)),
        )

    # 5. correct -------------------------------------------------------------
    corr_dir = out / "pairs" / "corrected"
    cc = config.correction
    fixed_keys = {}
    records = []
    todo_fix = []
    for p in pairs:
        key = _hash("correct", raw_keys[p.name], cc.model_dump(mode="json"), cfg_c.min_score)
        fixed_keys[p.name] = key
        path = corr_dir / f"{p.name}.tif"
        if not (
            path.exists()
            and read_tags(path).get("TIO_KEY") == key
            and state.data.get("corrections", {}).get(p.name)
        ):
            todo_fix.append(p)
        else:
            records.append(state.data["corrections"][p.name])
    if not todo_fix:
        skipped.append("correct")
    with _bar(len(todo_fix), "correct", "pair", progress) as bar:
        for p in todo_fix:
            ds = read_pair(raw_dir / f"{p.name}.tif")
            fixed, rec = correct_pair(
                ds,
                min_score=cfg_c.min_score,
                median=cc.median,
                ramp=cc.ramp,
                outlier_test=cc.outlier_test,
                outlier_threshold=cc.outlier_threshold,
                pixel_size=abs(stack.attrs["transform"][0]),
            )
            write_pair(
                corr_dir / f"{p.name}.tif",
                fixed,
                p.date1,
                p.date2,
                {"TIO_KEY": fixed_keys[p.name], "TIO_CORRECTIONS": fixed.attrs["corrections"]},
            )
            rec = {
                "pair": p.name,
                "date1": p.date1.isoformat(),
                "date2": p.date2.isoformat(),
                **rec,
            }
            records.append(rec)
            state.data.setdefault("corrections", {})[p.name] = rec
            bar.update()
    if todo_fix:
        log.info(
            "correct: %d pairs; %.0f %% of offsets kept (score >= %g%s)",
            len(todo_fix),
            100 * float(np.mean([r["valid_fraction"] for r in records])),
            cfg_c.min_score,
            ", neighbour median test" if cc.outlier_test else "",
        )
    if todo_fix:
        state.save()  # the correction records of the pairs just done
        _write_corrections_csv(out / "pairs" / "corrections.csv", records, pairs)

    # 6. invert + products ---------------------------------------------------
    inv_key = _hash("invert", sorted(fixed_keys.values()), config.inversion.model_dump(mode="json"))
    prod_key = _hash(inv_key, config.output.model_dump(mode="json", exclude={"directory"}))
    ts_path = out / "timeseries.nc"
    if state.done("products", prod_key, out / "cumulative_ew.tif", out / "velocity.tif"):
        skipped.append("invert")
        with xr.open_dataset(
            ts_path if ts_path.exists() else out / ".tio" / "timeseries.nc", engine="h5netcdf"
        ) as f:
            ts = f.load()
        log.info("invert: up to date")
        products = sorted(out.glob("*.tif"))
    else:
        pair_cube = _load_pairs(corr_dir, pairs)
        with _bar(pair_cube.sizes["y"], "invert", "row", progress) as bar:
            # the inversion section's names are invert()'s keyword arguments
            ts = invert(pair_cube, **config.inversion.model_dump(), progress=bar.update)
        ts.attrs.update(
            units=pair_cube.attrs.get("units", "m"),
            tio_version=__version__,
            grid=stack.attrs.get("grid", ""),
            resampling=stack.attrs.get("resampling", ""),
            inputs="\n".join(s.source for s in scenes),
        )
        n_ok = int(np.isfinite(ts["cumulative_ew"].values[-1]).sum())
        log.info("invert: %d of %d pixels inverted", n_ok, ts.sizes["x"] * ts.sizes["y"])
        products = write_products(ts, out, netcdf=config.output.netcdf)
        if not config.output.netcdf:
            from .products import write_netcdf

            write_netcdf(ts, out / ".tio" / "timeseries.nc")
        if config.output.quicklooks:
            products += _quicklooks(ts, stack, out, scenes)
        state.mark("products", prod_key)
    return RunResult(
        out_dir=out, scenes=scenes, pairs=pairs, timeseries=ts, products=products, skipped=skipped
    )


def _write_corrections_csv(path: Path, records: list[dict], pairs: list[Pair]) -> None:
    order = {p.name: k for k, p in enumerate(pairs)}
    records = sorted((r for r in records if r["pair"] in order), key=lambda r: order[r["pair"]])
    cols = [
        "pair",
        "date1",
        "date2",
        "valid_fraction",
        "low_score",
        "outliers",
        "median_ew",
        "median_ns",
        "ramp_ew",
        "ramp_ns",
    ]
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


def _load_pairs(folder: Path, pairs: list[Pair]) -> xr.Dataset:
    maps = [read_pair(folder / f"{p.name}.tif") for p in pairs]
    first = maps[0]
    cube = xr.Dataset(
        {
            v: (("pair", "y", "x"), np.stack([m[v].values for m in maps]))
            for v in ("ew", "ns", "score")
        },
        coords={
            "x": first["x"].values,
            "y": first["y"].values,
            "pair": [p.name for p in pairs],
            "date1": ("pair", np.array([np.datetime64(p.date1.isoformat(), "ns") for p in pairs])),
            "date2": ("pair", np.array([np.datetime64(p.date2.isoformat(), "ns") for p in pairs])),
        },
        attrs={k: first.attrs[k] for k in ("crs", "transform", "units")},
    )
    return cube


def _quicklooks(ts: xr.Dataset, stack: xr.Dataset, out: Path, scenes: list[Scene]) -> list[Path]:
    from .quicklook import quicklook_displacement, quicklook_velocity

    years = sorted({s.date.year for s in scenes})
    sentinel = any(re.search(r"(^|/)S2[ABCD]_", s.source) or ".SAFE" in s.source for s in scenes)
    span = str(years[0]) if years[0] == years[-1] else f"{years[0]}-{years[-1]}"
    attribution = f"Contains modified Copernicus Sentinel data {span}" if sentinel else None
    return [
        quicklook_displacement(
            ts, out / "quicklook_cumulative.png", stack=stack, attribution=attribution
        ),
        quicklook_velocity(
            ts, out / "quicklook_velocity.png", stack=stack, attribution=attribution
        ),
    ]
