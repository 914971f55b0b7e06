"""Quicklook pictures of a run (matplotlib, non-interactive Agg backend).

:func:`quicklook_displacement` draws the cumulative displacement at the last date
and :func:`quicklook_velocity` the mean velocity: east-west and north-south with a
diverging colour map centred on zero, the magnitude with a sequential one over
the greyscale reference image, motion arrows subsampled, a colour bar with units
and the dates in the title. NaN (not inverted) is transparent.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from .raster import atomic_path  # noqa: E402

__all__ = ["quicklook_displacement", "quicklook_velocity"]


def _extent(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    dx = (x[1] - x[0]) if x.size > 1 else 1.0
    dy = (y[1] - y[0]) if y.size > 1 else -1.0
    return (x[0] - dx / 2, x[-1] + dx / 2, y[-1] + dy / 2, y[0] - dy / 2)


def _symmetric_limit(*arrays: np.ndarray) -> float:
    vals = np.concatenate([np.abs(a[np.isfinite(a)]).ravel() for a in arrays])
    if vals.size == 0:
        return 1.0
    lim = float(np.percentile(vals, 99))
    return lim if lim > 0 else 1.0


def _panels(ew, ns, x, y, *, background, units, title, path: Path, attribution: str | None) -> Path:
    mag = np.hypot(ew, ns)
    ext = _extent(x, y)
    lim = _symmetric_limit(ew, ns)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.2), constrained_layout=True)
    specs = [
        (ew, "East-west (+ east)", "RdBu_r", -lim, lim),
        (ns, "North-south (+ north)", "RdBu_r", -lim, lim),
        (mag, "Magnitude", "magma", 0, _symmetric_limit(mag)),
    ]
    for ax, (data, label, cmap, vmin, vmax) in zip(axes, specs, strict=True):
        if background is not None:
            bg, bx, by = background
            lo, hi = np.nanpercentile(bg, [2, 98])
            ax.imshow(
                bg, cmap="gray", vmin=lo, vmax=hi, extent=_extent(bx, by), interpolation="nearest"
            )
        im = ax.imshow(
            np.ma.masked_invalid(data),
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            extent=ext,
            alpha=0.85 if background is not None else 1.0,
            interpolation="nearest",
        )
        fig.colorbar(im, ax=ax, shrink=0.85, label=units)
        ax.set_title(label)
        if units.startswith("m"):  # map coordinates: kilometres, a few plain ticks
            km = FuncFormatter(lambda v, _: f"{v / 1000:.1f}")
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_locator(MaxNLocator(4))
                axis.set_major_formatter(km)
            ax.set_xlabel("easting (km)")
            ax.set_ylabel("northing (km)")
        else:
            ax.set_xlabel("column")
            ax.set_ylabel("row")
        ax.set_xlim(ext[0], ext[1])
        ax.set_ylim(ext[2], ext[3])
        ax.set_aspect("equal")
    # arrows on the magnitude panel, about 15 across
    sub = max(1, int(max(ew.shape) / 15))
    xx, yy = np.meshgrid(x[::sub], y[::sub])
    u, v = ew[::sub, ::sub], ns[::sub, ::sub]
    big = np.isfinite(u) & (np.hypot(u, v) > 0.2 * _symmetric_limit(mag))
    if big.any():
        # the longest arrow spans about a tenth of the panel
        scale = float(np.nanmax(np.hypot(u[big], v[big]))) / (0.1 * abs(ext[1] - ext[0]))
        axes[2].quiver(
            xx[big],
            yy[big],
            u[big],
            v[big],
            color="cyan",
            angles="xy",
            scale_units="xy",
            scale=scale,
            width=0.006,
            headwidth=4,
        )
    fig.suptitle(title)
    if attribution:
        fig.text(0.99, 0.01, attribution, ha="right", va="bottom", fontsize=7, color="0.3")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def _period(ts: xr.Dataset) -> tuple[str, str]:
    """First and last date as ISO strings."""
    t = ts["time"].values
    return str(np.datetime_as_string(t[0], unit="D")), str(np.datetime_as_string(t[-1], unit="D"))


def _background(stack: xr.Dataset | None):
    if stack is None:
        return None
    img = stack["image"].isel(time=0).values
    return img, stack["x"].values, stack["y"].values


def quicklook_displacement(
    ts: xr.Dataset,
    path: str | Path,
    *,
    stack: xr.Dataset | None = None,
    attribution: str | None = None,
) -> Path:
    """PNG of the cumulative displacement between the first and the last date."""
    d0, d1 = _period(ts)
    units = ts.attrs.get("units", "m")
    return _panels(
        ts["cumulative_ew"].values[-1],
        ts["cumulative_ns"].values[-1],
        ts["x"].values,
        ts["y"].values,
        background=_background(stack),
        units=units,
        title=f"Cumulative displacement {d0} to {d1}",
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
    d0, d1 = _period(ts)
    units = ts.attrs.get("units", "m") + "/year"
    return _panels(
        ts["velocity_ew"].values,
        ts["velocity_ns"].values,
        ts["x"].values,
        ts["y"].values,
        background=_background(stack),
        units=units,
        title=f"Mean velocity {d0} to {d1}",
        path=Path(path),
        attribution=attribution,
    )
