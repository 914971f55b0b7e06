"""Quicklook pictures of a run (matplotlib, non-interactive Agg backend).

Every map panel has a perceptually ordered colour map (diverging and centred on
zero for east-west and north-south, sequential for magnitudes, RMS and counts;
never jet), a colour bar with units, a scale bar, a north arrow (rotated by the
grid convergence) and the dates in the title; NaN (not inverted) is transparent
over the greyscale reference image; arrows show the motion, subsampled. The
imagery attribution is written in a corner when given.

=============================  ====================================================
function                       picture
=============================  ====================================================
:func:`quicklook_displacement` cumulative EW, NS, magnitude at the last date
:func:`quicklook_velocity`     mean velocity EW, NS, magnitude
:func:`quicklook_rms`          RMS of the residuals per pixel (EW, NS)
:func:`quicklook_coverage`     share of the pairs used per pixel, valid share per pair
:func:`plot_rms_dates`         median RMS of the residuals through each date
:func:`plot_points`            time series at points with 1-sigma bars
=============================  ====================================================
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from ._mapdecor import (  # noqa: E402
    DIVERGING,
    SEQUENTIAL,
    SEQUENTIAL_LIGHT,
    Georef,
    georef,
    grid_convergence,
    north_arrow,
    scale_bar,
    symmetric_limit,
)
from .raster import atomic_path  # noqa: E402

__all__ = [
    "plot_points",
    "plot_rms_dates",
    "quicklook_coverage",
    "quicklook_displacement",
    "quicklook_rms",
    "quicklook_velocity",
]


def iso_dates(ts: xr.Dataset) -> list[str]:
    """The dates of ``ts`` as ISO strings."""
    from .products import _iso

    return _iso(ts["time"].values)


def _units(ts: xr.Dataset) -> str:
    return str(ts.attrs.get("units", ts.attrs.get("tio_units", "m")))


def _background(stack: xr.Dataset | None):
    """(image, georef) of the first date of the stack, or None."""
    if stack is None or "image" not in stack:
        return None
    img = np.asarray(stack["image"].isel(time=0).values, dtype="float32")
    return img, georef(stack)


def _map_axes(ax, geo: Georef) -> None:
    ext = geo.extent
    if geo.metric:  # map coordinates: kilometres, a few plain ticks
        km = FuncFormatter(lambda v, _: f"{v / 1000:.1f}")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(4))
            axis.set_major_formatter(km)
        ax.set_xlabel("easting (km)")
        ax.set_ylabel("northing (km)")
    else:
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    ax.set_xlim(ext[0], ext[1])
    ax.set_ylim(ext[2], ext[3])
    ax.set_aspect("equal")


def _draw_map(
    fig,
    ax,
    data: np.ndarray,
    geo: Georef,
    *,
    cmap: str,
    vmin: float,
    vmax: float,
    label: str,
    units: str,
    background=None,
    north: float = 0.0,
):
    if background is not None:
        bg, bgeo = background
        finite = bg[np.isfinite(bg)]
        lo, hi = np.percentile(finite, [2, 98]) if finite.size else (0, 1)
        ax.imshow(bg, cmap="gray", vmin=lo, vmax=hi, extent=bgeo.extent, interpolation="nearest")
    im = ax.imshow(
        np.ma.masked_invalid(data),
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        extent=geo.extent,
        alpha=0.85 if background is not None else 1.0,
        interpolation="nearest",
    )
    fig.colorbar(im, ax=ax, shrink=0.85, label=units)
    ax.set_title(label)
    _map_axes(ax, geo)
    scale_bar(ax, geo.extent, metric=geo.metric)
    north_arrow(ax, north)
    return im


def _arrows(
    ax,
    ew: np.ndarray,
    ns: np.ndarray,
    geo: Georef,
    *,
    color: str = "cyan",
    reference: float | None = None,
) -> None:
    """About 15 arrows across, where the motion is above a fifth of ``reference``
    (default: the 99th percentile of this map's magnitude); the arrow of length
    ``reference`` spans a tenth of the panel, so frames drawn with one reference
    are comparable."""
    mag = np.hypot(ew, ns)
    ref = reference if reference is not None else symmetric_limit(mag)
    sub = max(1, int(max(ew.shape) / 15))
    rows, cols = np.mgrid[0 : ew.shape[0] : sub, 0 : ew.shape[1] : sub]
    xx, yy = geo.transform * (cols + 0.5, rows + 0.5)
    u, v = ew[::sub, ::sub], ns[::sub, ::sub]
    big = np.isfinite(u) & np.isfinite(v) & (np.hypot(u, v) > 0.2 * ref)
    if not big.any():
        return
    left, right = geo.extent[:2]
    longest = ref if reference is not None else float(np.nanmax(np.hypot(u[big], v[big])))
    scale = longest / (0.1 * abs(right - left))
    ax.quiver(
        xx[big],
        yy[big],
        u[big],
        v[big],
        color=color,
        angles="xy",
        scale_units="xy",
        scale=scale,
        width=0.006,
        headwidth=4,
        zorder=4,
    )


def _save(fig, path: Path, attribution: str | None) -> Path:
    if attribution:
        fig.text(0.995, 0.005, attribution, ha="right", va="bottom", fontsize=7, color="0.3")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def _three_panels(
    ew, ns, geo: Georef, *, background, units: str, title: str, path: Path, attribution
) -> Path:
    mag = np.hypot(ew, ns)
    lim = symmetric_limit(ew, ns)
    north = grid_convergence(geo)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.2), constrained_layout=True)
    specs = [
        (ew, "East-west (+ east)", DIVERGING, -lim, lim),
        (ns, "North-south (+ north)", DIVERGING, -lim, lim),
        (mag, "Magnitude", SEQUENTIAL, 0, symmetric_limit(mag)),
    ]
    for ax, (data, label, cmap, vmin, vmax) in zip(axes, specs, strict=True):
        _draw_map(
            fig,
            ax,
            data,
            geo,
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            label=label,
            units=units,
            background=background,
            north=north,
        )
    _arrows(axes[2], ew, ns, geo)
    fig.suptitle(title)
    return _save(fig, path, attribution)


def quicklook_displacement(
    ts: xr.Dataset,
    path: str | Path,
    *,
    stack: xr.Dataset | None = None,
    attribution: str | None = None,
) -> Path:
    """PNG of the cumulative displacement between the first and the last date."""
    dates = iso_dates(ts)
    return _three_panels(
        ts["cumulative_ew"].values[-1],
        ts["cumulative_ns"].values[-1],
        georef(ts),
        background=_background(stack),
        units=_units(ts),
        title=f"Cumulative displacement {dates[0]} to {dates[-1]}",
        path=Path(path),
        attribution=attribution,
    )


def quicklook_velocity(
    ts: xr.Dataset,
    path: str | Path,
    *,
    stack: xr.Dataset | None = None,
    attribution: str | None = None,
) -> Path:
    """PNG of the mean velocity over the period."""
    dates = iso_dates(ts)
    return _three_panels(
        ts["velocity_ew"].values,
        ts["velocity_ns"].values,
        georef(ts),
        background=_background(stack),
        units=_units(ts) + "/year",
        title=f"Mean velocity {dates[0]} to {dates[-1]}",
        path=Path(path),
        attribution=attribution,
    )


def residual_rms(ts: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """RMS over the pairs of each pixel's residuals (EW, NS); NaN where none."""
    out = []
    for comp in ("ew", "ns"):
        r = ts[f"residual_{comp}"].values
        with _quiet():
            out.append(np.sqrt(np.nanmean(r * r, axis=0)).astype("float32"))
    return out[0], out[1]


@contextlib.contextmanager
def _quiet():
    """Silence numpy's warnings about all-NaN slices."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def quicklook_rms(
    ts: xr.Dataset,
    path: str | Path,
    *,
    stack: xr.Dataset | None = None,
    attribution: str | None = None,
) -> Path:
    """PNG of the RMS of each pixel's residuals over its pairs (EW and NS)."""
    dates = iso_dates(ts)
    geo = georef(ts)
    rms_ew, rms_ns = residual_rms(ts)
    vmax = symmetric_limit(rms_ew, rms_ns, q=98)
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 5.2), constrained_layout=True)
    north = grid_convergence(geo)
    for ax, data, label in zip(
        axes, (rms_ew, rms_ns), ("Residual RMS east-west", "Residual RMS north-south"), strict=True
    ):
        _draw_map(
            fig,
            ax,
            data,
            geo,
            cmap=SEQUENTIAL_LIGHT,
            vmin=0,
            vmax=vmax,
            label=label,
            units=_units(ts),
            background=_background(stack),
            north=north,
        )
    fig.suptitle(f"Misfit of the pairs to the time series, {dates[0]} to {dates[-1]}")
    return _save(fig, Path(path), attribution)


def pair_valid_share(ts: xr.Dataset) -> np.ndarray:
    """Share of the pixels of each pair that the inversion used (finite residual)."""
    r = ts["residual_ew"].values
    return np.isfinite(r).reshape(r.shape[0], -1).mean(axis=1)


def quicklook_coverage(
    ts: xr.Dataset,
    path: str | Path,
    *,
    stack: xr.Dataset | None = None,
    scores: np.ndarray | None = None,
    attribution: str | None = None,
) -> Path:
    """PNG of the data coverage: share of the pairs used at each pixel, and per pair
    the share of valid pixels (bars) and the median correlation score (dots) when
    ``scores`` is given: (pair, y, x), or one median per pair (pair,)."""
    dates = iso_dates(ts)
    geo = georef(ts)
    n_pairs = ts.sizes["pair"]
    share = ts["n_pairs"].values.astype("float32") / max(n_pairs, 1) * 100
    share[ts["n_pairs"].values <= 0] = np.nan
    fig = plt.figure(figsize=(13, 5.2), constrained_layout=True)
    gs = fig.add_gridspec(1, 2, width_ratios=[1, 1.25])
    ax = fig.add_subplot(gs[0])
    _draw_map(
        fig,
        ax,
        share,
        geo,
        cmap=SEQUENTIAL_LIGHT,
        vmin=0,
        vmax=100,
        label="Pairs used per pixel",
        units="% of the pairs",
        background=_background(stack),
        north=grid_convergence(geo),
    )
    ax2 = fig.add_subplot(gs[1])
    valid = pair_valid_share(ts) * 100
    k = np.arange(n_pairs)
    ax2.bar(k, valid, color="0.6", label="valid pixels (%)")
    ax2.set_ylim(0, 100)
    ax2.set_ylabel("valid pixels used by the inversion (%)")
    labels = [str(p) for p in ts["pair"].values]
    step = max(1, n_pairs // 25)
    ax2.set_xticks(k[::step])
    ax2.set_xticklabels(labels[::step], rotation=90, fontsize=6)
    ax2.set_xlabel("pair")
    if scores is not None:
        from .report import score_medians

        med = score_medians(scores)
        ax3 = ax2.twinx()
        ax3.plot(k, med, "o", color="C3", ms=3, label="median score")
        ax3.set_ylim(0, 1)
        ax3.set_ylabel("median correlation score", color="C3")
    ax2.set_title("Coverage of each pair")
    fig.suptitle(f"Data coverage, {n_pairs} pairs, {dates[0]} to {dates[-1]}")
    return _save(fig, Path(path), attribution)


def plot_rms_dates(ts: xr.Dataset, path: str | Path) -> Path:
    """Line plot of the median (over pixels) RMS of the residuals through each date."""
    times = ts["time"].values
    fig, ax = plt.subplots(figsize=(9, 3.6), constrained_layout=True)
    for comp, label, color in (("ew", "east-west", "C0"), ("ns", "north-south", "C1")):
        r = ts[f"rms_date_{comp}"].values
        with _quiet():
            med = np.nanmedian(r.reshape(r.shape[0], -1), axis=1)
        ax.plot(times, med, "o-", color=color, label=label)
    ax.set_ylabel(f"median residual RMS ({_units(ts)})")
    ax.set_title("Misfit of the pairs through each date")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.autofmt_xdate()
    return _save(fig, Path(path), None)


def plot_points(
    ts: xr.Dataset, rows: Sequence[int], cols: Sequence[int], names: Sequence[str], path
) -> Path:
    """Time series (EW, NS, magnitude) at grid cells ``(rows[i], cols[i])`` with 1-sigma bars."""
    from .products import magnitude

    times = ts["time"].values
    units = _units(ts)
    n = len(names)
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.8 * n + 0.4), squeeze=False, sharex=True)
    for ax, r, c, name in zip(axes[:, 0], rows, cols, names, strict=True):
        ew = ts["cumulative_ew"].values[:, r, c]
        ns = ts["cumulative_ns"].values[:, r, c]
        sew = ts["sigma_ew"].values[:, r, c]
        sns = ts["sigma_ns"].values[:, r, c]
        mag, smag = magnitude(ew, ns, sew, sns)
        for v, s, label, color in (
            (ew, sew, "east-west (+ east)", "C0"),
            (ns, sns, "north-south (+ north)", "C1"),
            (mag, smag, "magnitude", "k"),
        ):
            ax.errorbar(times, v, yerr=s, fmt="o-", ms=3, capsize=2, color=color, label=label)
        ax.axhline(0, color="0.6", lw=0.6)
        ax.set_ylabel(f"displacement ({units})")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, ncols=3, loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    return _save(fig, Path(path), None)
