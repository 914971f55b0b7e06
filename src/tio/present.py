"""Present a run: every picture, overlay, animation, point table, catalog and report.

:func:`render_run` is what ``tio run`` does after writing the data products and
what ``tio quicklook RUNDIR`` does on its own: it reads only the products
(``timeseries.nc``, ``stack.zarr`` for the greyscale background, the corrected pair
maps for the scores), so pictures can be re-rendered without recomputing.

Written in the run folder:

==============================  =====================================================
file                            content
==============================  =====================================================
quicklook_cumulative.png        cumulative displacement at the last date
quicklook_velocity.png          mean velocity
quicklook_rms.png               residual RMS per pixel
quicklook_coverage.png          share of pairs used per pixel, valid share per pair
rms_dates.png                   median residual RMS through each date
network.png                     the pair network (drawn again from the time series)
animation.png                   APNG of the cumulative displacement (``.gif``/``.mp4``)
points.csv, points.png          time series at the points and at the largest motion
overlays/                       EPSG:4326 PNGs with world files, ``overlays.json``
catalog.json, timeseries.json   STAC catalog of the products
report.html                     self-contained report with a verdict
==============================  =====================================================
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from .errors import InputError

__all__ = ["attribution_for", "load_run", "render_run"]

log = logging.getLogger("tio")


def attribution_for(sources: Sequence[str], years: Sequence[int]) -> str | None:
    """ "Contains modified Copernicus Sentinel data YEAR(S)" when a source is Sentinel."""
    sentinel = any(
        re.search(r"(^|[/\\])S2[ABCD]_", str(s))
        or ".SAFE" in str(s)
        or "sentinel" in str(s).lower()
        for s in sources
    )
    if not sentinel or not years:
        return None
    y0, y1 = min(years), max(years)
    return f"Contains modified Copernicus Sentinel data {y0 if y0 == y1 else f'{y0}-{y1}'}"


def load_run(run_dir: str | Path) -> tuple[xr.Dataset, xr.Dataset | None]:
    """The time series (``timeseries.nc``) and image stack (``stack.zarr``) of a run."""
    run = Path(run_dir)
    nc = run / "timeseries.nc"
    if not run.is_dir():
        raise InputError(f"{run}: no such run folder")
    if not nc.exists():
        raise InputError(
            f"{nc}: missing; quicklooks are drawn from the NetCDF cube "
            "(run with output.netcdf = true)"
        )
    # lazy: each picture reads the variables it draws, never the whole cube at once
    ts = xr.open_dataset(nc, engine="h5netcdf", chunks={})
    stack = None
    if (run / "stack.zarr").exists():
        from .stack import open_stack

        stack = open_stack(run / "stack.zarr").isel(time=[0]).load()
    elif (run / "stack.nc").exists():
        with xr.open_dataset(run / "stack.nc", engine="h5netcdf") as ds:
            stack = ds.isel(time=[0]).load()
    return ts, stack


def _scores(run: Path, ts: xr.Dataset) -> np.ndarray | None:
    """Median correlation score of each corrected pair map (pair,), when all are present.

    Read one pair at a time: memory does not grow with the number of pairs.
    """
    import rasterio

    from .report import score_medians

    folder = run / "pairs" / "corrected"
    out = []
    for name in ts["pair"].values:
        path = folder / f"{name}.tif"
        if not path.exists():
            return None
        with rasterio.open(path) as src:
            if src.count < 3 or (src.height, src.width) != (ts.sizes["y"], ts.sizes["x"]):
                return None
            out.append(score_medians(src.read(3).astype("float32")[None])[0])
    return np.array(out) if out else None


def _network_picture(run: Path, ts: xr.Dataset) -> Path:
    """``network.png`` drawn again from the pairs of the time series."""
    from .network import plot_network
    from .report import network_of

    return plot_network(network_of(ts), run / "network.png")


def _inputs(ts: xr.Dataset, stack: xr.Dataset | None) -> list[str]:
    text = ts.attrs.get("inputs") or ts.attrs.get("tio_inputs")
    if text:
        return [s for s in str(text).splitlines() if s]
    if stack is not None and "source" in stack.coords:
        return [str(s) for s in stack["source"].values]
    return []


def render_run(
    run_dir: str | Path,
    *,
    ts: xr.Dataset | None = None,
    stack: xr.Dataset | None = None,
    points: str | Path | None = None,
    animation: str = "apng",
    attribution: str | None = None,
    extra_pictures: Sequence[tuple[Path, str]] = (),
    step: Callable[[str], None] | None = None,
) -> list[Path]:
    """Draw every picture of a run, its overlays, animation, points, catalog and report.

    ``ts``/``stack`` default to the ones stored in ``run_dir``. ``step`` is called
    with a short name before each part (for progress reporting).
    """
    from . import animation as anim
    from . import quicklook as ql
    from ._mapdecor import DIVERGING, SEQUENTIAL, SEQUENTIAL_LIGHT, georef, symmetric_limit
    from .overlay import write_overlay, write_overlay_index
    from .points import locate, read_points, write_points_csv
    from .product_stac import write_stac_catalog
    from .report import assess, write_report

    run = Path(run_dir)
    if ts is None:
        ts, stored_stack = load_run(run)
        stack = stack if stack is not None else stored_stack
    tell = step or (lambda _name: None)
    dates = ql.iso_dates(ts)
    inputs = _inputs(ts, stack)
    if attribution is None:
        attribution = attribution_for(inputs, [int(d[:4]) for d in dates])
    scores = _scores(run, ts)
    geo = georef(ts)
    pics: list[tuple[Path, str]] = []
    kw = dict(stack=stack, attribution=attribution)

    tell("quicklooks")
    pics.append((ql.quicklook_displacement(ts, run / "quicklook_cumulative.png", **kw),
                 f"Cumulative displacement {dates[0]} to {dates[-1]}"))  # fmt: skip
    pics.append((ql.quicklook_velocity(ts, run / "quicklook_velocity.png", **kw),
                 "Mean velocity"))  # fmt: skip
    pics.append((ql.quicklook_rms(ts, run / "quicklook_rms.png", **kw),
                 "Residual RMS per pixel"))  # fmt: skip
    pics.append((ql.quicklook_coverage(ts, run / "quicklook_coverage.png", scores=scores, **kw),
                 "Data coverage"))  # fmt: skip
    pics.append((ql.plot_rms_dates(ts, run / "rms_dates.png"), "Residual RMS through each date"))
    pics.append((_network_picture(run, ts), "Pair network (arcs coloured by temporal baseline)"))
    pics += list(extra_pictures)

    tell("animation")
    suffix = {"apng": ".png", "gif": ".gif", "mp4": ".mp4"}[animation]
    movie = anim.animate_map(ts, run / f"animation{suffix}", fmt=animation, **kw)
    if animation == "apng":
        pics.append((movie, "Cumulative displacement through time (animated)"))

    tell("points")
    user_points = read_points(points) if points else []
    located = locate(ts, user_points)
    written = [movie]
    if located:
        written.append(write_points_csv(ts, located, run / "points.csv"))
        pics.append(
            (
                ql.plot_points(
                    ts,
                    [p.row for p in located],
                    [p.col for p in located],
                    [f"{p.name} (x {p.x:.0f}, y {p.y:.0f})" for p in located],
                    run / "points.png",
                ),
                "Time series at the points (1-sigma bars)",
            )
        )

    if geo.metric:
        tell("overlays")
        folder = run / "overlays"
        folder.mkdir(exist_ok=True)
        units = str(ts.attrs.get("units", ts.attrs.get("tio_units", "m")))
        ew, ns = ts["cumulative_ew"].values[-1], ts["cumulative_ns"].values[-1]
        vew, vns = ts["velocity_ew"].values, ts["velocity_ns"].values
        lim = symmetric_limit(ew, ns)
        mag = np.hypot(ew, ns)
        vmag = np.hypot(vew, vns)
        rms_ew, rms_ns = ql.residual_rms(ts)
        rms = np.hypot(rms_ew, rms_ns)
        n_share = ts["n_pairs"].values.astype("float32") / max(ts.sizes["pair"], 1) * 100
        n_share[ts["n_pairs"].values <= 0] = np.nan
        period = f"{dates[0]} to {dates[-1]}"
        layers = [
            ("cumulative_magnitude", mag, SEQUENTIAL, 0, symmetric_limit(mag), units,
             f"cumulative displacement magnitude {period}"),
            ("cumulative_ew", ew, DIVERGING, -lim, lim, units, f"cumulative east-west {period}"),
            ("cumulative_ns", ns, DIVERGING, -lim, lim, units, f"cumulative north-south {period}"),
            ("velocity_magnitude", vmag, SEQUENTIAL, 0, symmetric_limit(vmag), units + "/year",
             f"mean velocity magnitude {period}"),
            ("residual_rms", rms, SEQUENTIAL_LIGHT, 0, symmetric_limit(rms, q=98), units,
             "residual RMS per pixel"),
            ("coverage", n_share, SEQUENTIAL_LIGHT, 0, 100, "% of the pairs",
             "share of the pairs used per pixel"),
        ]  # fmt: skip
        overlays = [
            write_overlay(folder, n, d, geo, cmap=c, vmin=lo, vmax=hi, units=u, label=lab)
            for n, d, c, lo, hi, u, lab in layers
        ]
        if stack is not None and "image" in stack:
            img = np.asarray(stack["image"].isel(time=0).values, dtype="float32")
            finite = img[np.isfinite(img)]
            lo, hi = np.percentile(finite, [2, 98]) if finite.size else (0, 1)
            overlays.append(
                write_overlay(folder, "reference", img, georef(stack), cmap="gray", vmin=lo,
                              vmax=hi, units="", label=f"reference image {dates[0]}")
            )  # fmt: skip
        apng, bbox, vmax = anim.animate_overlay(ts, folder / "animation_4326.png")
        w, s, e, n = bbox
        index = write_overlay_index(
            folder,
            overlays,
            extra={
                "animation": {
                    "file": apng.name,
                    "bounds": [[s, w], [n, e]],
                    "bbox": [w, s, e, n],
                    "colormap": SEQUENTIAL,
                    "vmin": 0.0,
                    "vmax": vmax,
                    "units": units,
                    "dates": dates,
                    "frame_ms": anim.FRAME_MS,
                }
            },
        )
        written += [folder / o.file for o in overlays] + [apng, index]

    written += [p for p, _ in pics]
    tell("report")
    products = sorted(
        p
        for p in run.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name != "report.html"
    )
    pixel_size = None
    if stack is not None:
        pixel_size = abs(float(georef(stack).transform.a))
    dropped = str(stack.attrs.get("dropped", "")) if stack is not None else ""
    verdict = assess(ts, scores=scores, pixel_size=pixel_size, dropped=dropped)
    report = write_report(run, ts, verdict, pictures=pics, inputs=inputs, products=products)
    written.append(report)
    tell("catalog")
    written.append(write_stac_catalog(run, geo, dates))
    log.info("report: %s (%s)", verdict.verdict, "; ".join(verdict.reasons))
    return sorted(set(written))
