"""Map furniture for the quicklooks: georeferencing of a run, scale bar, north arrow.

Private helpers of :mod:`tio.quicklook`, :mod:`tio.animation` and :mod:`tio.overlay`.
A run's layers are read either from the in-memory Dataset of
:func:`tio.inversion.invert` (attrs ``crs`` = WKT, ``transform`` = 6 floats) or from
``timeseries.nc`` (a CF ``spatial_ref`` grid-mapping variable with ``crs_wkt`` and
``GeoTransform``); :func:`georef` returns the same for both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cmcrameri.cm  # noqa: F401  (registers the "cmc.*" colour maps)
import numpy as np
import xarray as xr
from affine import Affine
from matplotlib import patheffects

# Perceptually uniform colour maps (never jet). EW and NS: Crameri's "vik", diverging,
# light at zero, readable by colour-blind viewers (Crameri, Shephard & Heron 2020,
# Nature Communications 11:5444); magnitudes, RMS, counts: matplotlib's sequential
# "magma" and "viridis", monotonic in lightness.

DIVERGING = "cmc.vik"
SEQUENTIAL = "magma"
SEQUENTIAL_LIGHT = "viridis"


@dataclass(frozen=True)
class Georef:
    """CRS (WKT or None) and affine transform of a grid, with its shape."""

    crs: str | None
    transform: Affine
    shape: tuple[int, int]

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(left, right, bottom, top) for ``imshow``."""
        t = self.transform
        h, w = self.shape
        x0, y0 = t.c, t.f
        x1, y1 = t * (w, h)
        return (min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1))

    @property
    def metric(self) -> bool:
        """True when the grid is in a projected CRS in metres."""
        if not self.crs:
            return False
        from pyproj import CRS

        crs = CRS.from_wkt(self.crs)
        return crs.is_projected and crs.axis_info[0].unit_name in ("metre", "meter")


def georef(ds: xr.Dataset | xr.DataArray) -> Georef:
    """Georeferencing of a TIO Dataset (in memory or read back from NetCDF)."""
    shape = (ds.sizes["y"], ds.sizes["x"])
    attrs = ds.attrs
    if "transform" in attrs:
        return Georef(attrs.get("crs") or None, Affine(*list(attrs["transform"])[:6]), shape)
    if "spatial_ref" in getattr(ds, "coords", {}) or (
        isinstance(ds, xr.Dataset) and "spatial_ref" in ds
    ):
        sr = ds["spatial_ref"].attrs
        wkt = sr.get("crs_wkt") or sr.get("spatial_ref")
        gt = sr.get("GeoTransform")
        if gt:
            return Georef(wkt, Affine.from_gdal(*[float(v) for v in str(gt).split()]), shape)
    # pixel units, or no stored transform: rebuild one from the coordinates
    x, y = ds["x"].values, ds["y"].values
    dx = float(x[1] - x[0]) if x.size > 1 else 1.0
    dy = float(y[1] - y[0]) if y.size > 1 else 1.0
    return Georef(
        attrs.get("crs") or None, Affine(dx, 0, x[0] - dx / 2, 0, dy, y[0] - dy / 2), shape
    )


def _nice(length: float) -> float:
    """Largest 1, 2 or 5 times a power of ten not above ``length``."""
    if length <= 0:
        return 1.0
    p = 10 ** math.floor(math.log10(length))
    for m in (5, 2, 1):
        if m * p <= length:
            return m * p
    return p


def scale_bar(ax, extent, *, metric: bool, color: str = "black") -> None:
    """A scale bar of a round length (about a fifth of the width), lower left."""
    left, right, bottom, top = extent
    width = right - left
    length = _nice(width / 5)
    x0 = left + 0.05 * width
    y0 = bottom + 0.06 * (top - bottom)
    h = 0.012 * (top - bottom)
    ax.add_patch(_rect((x0, y0), length / 2, h, facecolor=color, edgecolor=color, lw=0.8, zorder=5))
    ax.add_patch(
        _rect(
            (x0 + length / 2, y0),
            length / 2,
            h,
            facecolor="white",
            edgecolor=color,
            lw=0.8,
            zorder=5,
        )
    )
    if metric:
        label = f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m"
    else:
        label = f"{length:g} px"
    ax.text(
        x0 + length / 2,
        y0 + 2.2 * h,
        label,
        ha="center",
        va="bottom",
        fontsize=8,
        color=color,
        zorder=5,
        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.7),
    )


def _rect(*args, **kwargs):
    from matplotlib.patches import Rectangle

    return Rectangle(*args, **kwargs)


def grid_convergence(geo: Georef) -> float:
    """Angle (degrees, clockwise) from grid north to true north at the centre of the grid.

    Zero for pixel grids and geographic CRSs. For UTM it is the meridian convergence,
    up to about 3 degrees at the edges of a zone.
    """
    if not geo.metric:
        return 0.0
    from pyproj import CRS, Transformer

    crs = CRS.from_wkt(geo.crs)
    left, right, bottom, top = geo.extent
    cx, cy = (left + right) / 2, (bottom + top) / 2
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    to_xy = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    lon, lat = to_ll.transform(cx, cy)
    x1, y1 = to_xy.transform(lon, min(lat + 0.01, 89.9))
    return math.degrees(math.atan2(x1 - cx, y1 - cy))


def north_arrow(ax, angle_deg: float = 0.0, *, color: str = "black") -> None:
    """An arrow pointing to true north (``angle_deg`` clockwise from the top), upper right."""
    a = math.radians(angle_deg)
    cx, cy, r = 0.93, 0.86, 0.06
    dx, dy = r * math.sin(a), r * math.cos(a)
    arrow = ax.annotate(
        "",
        xy=(cx + dx, cy + dy),
        xytext=(cx - dx, cy - dy),
        xycoords="axes fraction",
        arrowprops=dict(
            arrowstyle="-|>",
            color=color,
            lw=1.6,
            mutation_scale=14,
        ),
        zorder=6,
    )
    arrow.arrow_patch.set_path_effects([patheffects.withStroke(linewidth=4, foreground="white")])
    ax.text(
        cx + 1.45 * dx,
        cy + 1.45 * dy,
        "N",
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=9,
        fontweight="bold",
        color=color,
        zorder=6,
        bbox=dict(boxstyle="circle,pad=0.1", fc="white", ec="none", alpha=0.7),
    )


def symmetric_limit(*arrays: np.ndarray, q: float = 99) -> float:
    """The ``q``-th percentile of |values| over all arrays (1 when empty or zero)."""
    finite = [np.abs(a[np.isfinite(a)]).ravel() for a in arrays]
    vals = np.concatenate(finite) if finite else np.array([])
    if vals.size == 0:
        return 1.0
    lim = float(np.percentile(vals, q))
    return lim if lim > 0 else 1.0
