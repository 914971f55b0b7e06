"""Time series at points: a CSV of date, EW, NS, magnitude and uncertainty per point.

Points come from a CSV (columns ``lon,lat`` or ``x,y`` in the grid's CRS, an
optional ``name``) or a GeoJSON file of Point features (longitude/latitude, a
``name`` property when present). Each point takes the value of the output cell
that contains it. The cell with the largest cumulative displacement at the last
date is always added (named ``largest motion``).

``points.csv`` columns: ``point, x, y, lon, lat, row, col, date, ew, ns, magnitude,
sigma_ew, sigma_ns, sigma_magnitude`` (metres, EW positive east, NS positive north).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from ._mapdecor import Georef, georef
from .errors import InputError
from .raster import atomic_path

__all__ = ["Point", "read_points", "locate", "write_points_csv"]


@dataclass(frozen=True)
class Point:
    """A named location, as lon/lat (``crs='EPSG:4326'``) or map x/y in the grid's CRS."""

    name: str
    x: float
    y: float
    crs: str | None = "EPSG:4326"


def read_points(path: str | Path) -> list[Point]:
    """Points of a CSV (``lon,lat`` or ``x,y`` columns) or a GeoJSON file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the points file ({exc.strerror})") from None
    if path.suffix.lower() in (".json", ".geojson") or text.lstrip().startswith("{"):
        return _geojson_points(path, text)
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise InputError(f"{path}: no point (expected a header line and one row per point)")
    cols = {c.strip().lower(): c for c in rows[0]}
    if {"lon", "lat"} <= cols.keys():
        kx, ky, crs = cols["lon"], cols["lat"], "EPSG:4326"
    elif {"longitude", "latitude"} <= cols.keys():
        kx, ky, crs = cols["longitude"], cols["latitude"], "EPSG:4326"
    elif {"x", "y"} <= cols.keys():
        kx, ky, crs = cols["x"], cols["y"], None
    else:
        raise InputError(f"{path}: the header needs columns lon,lat or x,y (found {list(rows[0])})")
    kn = cols.get("name")
    points = []
    for i, row in enumerate(rows, start=2):
        try:
            x, y = float(row[kx]), float(row[ky])
        except (TypeError, ValueError):
            raise InputError(f"{path}, line {i}: not a number: {row[kx]!r}, {row[ky]!r}") from None
        if crs and not (-180 <= x <= 180 and -90 <= y <= 90):
            raise InputError(f"{path}, line {i}: lon/lat out of range: {x}, {y}")
        points.append(Point((row.get(kn) if kn else None) or f"P{i - 1}", x, y, crs))
    return points


def _geojson_points(path: Path, text: str) -> list[Point]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    feats = doc.get("features", [doc]) if isinstance(doc, dict) else []
    points = []
    for i, f in enumerate(feats, start=1):
        geom = f.get("geometry") if f.get("type") == "Feature" else f
        if not geom or geom.get("type") != "Point":
            continue
        lon, lat = geom["coordinates"][:2]
        name = (f.get("properties") or {}).get("name") or f"P{i}"
        points.append(Point(str(name), float(lon), float(lat), "EPSG:4326"))
    if not points:
        raise InputError(f"{path}: no Point geometry in the GeoJSON")
    return points


@dataclass(frozen=True)
class Located:
    """A point placed on the output grid."""

    name: str
    row: int
    col: int
    x: float
    y: float
    lon: float
    lat: float


def _lonlat(geo: Georef, x: float, y: float) -> tuple[float, float]:
    if not geo.metric:
        return float("nan"), float("nan")
    from pyproj import CRS, Transformer

    t = Transformer.from_crs(CRS.from_wkt(geo.crs), "EPSG:4326", always_xy=True)
    lon, lat = t.transform(x, y)
    return float(lon), float(lat)


def locate(ts: xr.Dataset, points: list[Point]) -> list[Located]:
    """Cells of ``ts`` that hold the points, plus the cell of largest final motion.

    A point outside the grid raises :class:`InputError` naming it.
    """
    geo = georef(ts)
    h, w = geo.shape
    out = []
    for p in points:
        x, y = p.x, p.y
        if p.crs and geo.crs:
            from pyproj import CRS, Transformer

            t = Transformer.from_crs(p.crs, CRS.from_wkt(geo.crs), always_xy=True)
            x, y = t.transform(p.x, p.y)
        elif p.crs and not geo.crs:
            raise InputError(f"point {p.name}: lon/lat given but the run is in pixel units")
        col, row = (~geo.transform) * (x, y)
        r, c = int(np.floor(row)), int(np.floor(col))
        if not (0 <= r < h and 0 <= c < w):
            left, right, bottom, top = geo.extent
            raise InputError(
                f"point {p.name} ({p.x}, {p.y}) is outside the output grid "
                f"(x {left:.1f} to {right:.1f}, y {bottom:.1f} to {top:.1f})"
            )
        cx, cy = geo.transform * (c + 0.5, r + 0.5)
        out.append(Located(p.name, r, c, cx, cy, *_lonlat(geo, cx, cy)))
    mag = np.hypot(ts["cumulative_ew"].values[-1], ts["cumulative_ns"].values[-1])
    if np.isfinite(mag).any():
        r, c = np.unravel_index(int(np.nanargmax(mag)), mag.shape)
        cx, cy = geo.transform * (c + 0.5, r + 0.5)
        out.append(Located("largest motion", int(r), int(c), cx, cy, *_lonlat(geo, cx, cy)))
    return out


def write_points_csv(ts: xr.Dataset, located: list[Located], path: str | Path) -> Path:
    """One row per point and date (see the module docstring for the columns)."""
    from .products import magnitude
    from .quicklook import iso_dates

    dates = iso_dates(ts)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        ["point", "x", "y", "lon", "lat", "row", "col", "date", "ew", "ns", "magnitude"]
        + ["sigma_ew", "sigma_ns", "sigma_magnitude"]
    )
    for p in located:
        ew = ts["cumulative_ew"].values[:, p.row, p.col]
        ns = ts["cumulative_ns"].values[:, p.row, p.col]
        sew = ts["sigma_ew"].values[:, p.row, p.col]
        sns = ts["sigma_ns"].values[:, p.row, p.col]
        mag, smag = magnitude(ew, ns, sew, sns)
        for k, d in enumerate(dates):
            vals = [ew[k], ns[k], mag[k], sew[k], sns[k], smag[k]]
            w.writerow(
                [
                    p.name,
                    f"{p.x:.3f}",
                    f"{p.y:.3f}",
                    f"{p.lon:.6f}",
                    f"{p.lat:.6f}",
                    p.row,
                    p.col,
                    d,
                ]
                + ["" if not np.isfinite(v) else f"{v:.4f}" for v in vals]
            )
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
    return path
