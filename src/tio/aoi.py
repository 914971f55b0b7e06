"""Areas of interest: a lon/lat box, a GeoJSON file or a WKT geometry.

:func:`parse_aoi` turns what a user gives into an :class:`Aoi`: its lon/lat
bounds (what is read) and its geometry (recorded in the products' metadata).
:func:`utm_crs` gives the UTM zone of its centre, TIO's default output CRS.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

__all__ = ["Aoi", "parse_aoi", "utm_crs"]


@dataclass(frozen=True)
class Aoi:
    """An area of interest in WGS84 longitude/latitude."""

    bounds: tuple[float, float, float, float]  # west, south, east, north
    wkt: str

    @property
    def centre(self) -> tuple[float, float]:
        w, s, e, n = self.bounds
        return (w + e) / 2, (s + n) / 2


def _from_bounds(w: float, s: float, e: float, n: float) -> Aoi:
    if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
        raise ConfigError(
            f"area of interest {w}, {s}, {e}, {n}: must be west < east in [-180, 180] and "
            "south < north in [-90, 90] (longitude, latitude in degrees)"
        )
    wkt = f"POLYGON (({w} {s}, {e} {s}, {e} {n}, {w} {n}, {w} {s}))"
    return Aoi((float(w), float(s), float(e), float(n)), wkt)


def _from_geometry(geom, what: str) -> Aoi:
    if geom.is_empty:
        raise ConfigError(f"area of interest {what} is an empty geometry")
    aoi = _from_bounds(*geom.bounds)
    return Aoi(aoi.bounds, geom.wkt)


def parse_aoi(value: str | Sequence[float] | Path) -> Aoi:
    """An :class:`Aoi` from 4 numbers, ``"W,S,E,N"``, a GeoJSON file or a WKT string.

    GeoJSON may be a geometry, a Feature or a FeatureCollection (all features
    together), in longitude/latitude (RFC 7946). Raises ConfigError, naming what
    was given, when it is none of these or outside lon/lat ranges.
    """
    from shapely import wkt as shapely_wkt
    from shapely.errors import ShapelyError
    from shapely.geometry import shape
    from shapely.ops import unary_union

    if isinstance(value, Aoi):
        return value
    if not isinstance(value, str | Path):
        values = list(value)
        if len(values) != 4:
            raise ConfigError(f"area of interest {values}: give 4 numbers WEST,SOUTH,EAST,NORTH")
        return _from_bounds(*map(float, values))
    text = str(value).strip()
    parts = text.replace(" ", ",").split(",")
    try:
        numbers = [float(p) for p in parts if p]
    except ValueError:
        numbers = []
    if len(numbers) == 4 and len(text) < 120:
        return _from_bounds(*numbers)
    path = Path(text)
    if path.suffix.lower() in {".geojson", ".json"} or path.is_file():
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read area of interest file {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise ConfigError(f"area of interest file {path} is not valid GeoJSON: {exc}") from None
        feats = data.get("features") if isinstance(data, dict) else None
        if isinstance(data, dict) and data.get("type") == "FeatureCollection":
            geoms = [f.get("geometry") for f in feats or [] if f.get("geometry")]
        elif isinstance(data, dict) and data.get("type") == "Feature":
            geoms = [data.get("geometry")]
        else:
            geoms = [data]
        try:
            geom = unary_union([shape(g) for g in geoms if g])
        except (ShapelyError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(
                f"area of interest file {path} holds no usable geometry: {exc}"
            ) from None
        return _from_geometry(geom, str(path))
    try:
        geom = shapely_wkt.loads(text)
    except (ShapelyError, ValueError):
        raise ConfigError(
            f"area of interest {text[:60]!r} is neither WEST,SOUTH,EAST,NORTH, a GeoJSON file "
            "nor a WKT geometry"
        ) from None
    return _from_geometry(geom, "WKT")


def utm_crs(lon: float, lat: float) -> str:
    """EPSG code of the UTM zone holding (lon, lat), e.g. ``"EPSG:32632"``."""
    zone = min(60, int((lon + 180) // 6) + 1)
    return f"EPSG:{(32600 if lat >= 0 else 32700) + zone}"
