"""Map overlays: quicklook layers warped to longitude/latitude (EPSG:4326).

Web maps (Leaflet, OpenLayers, Google Earth) place an image by its longitude and
latitude bounds. Each overlay is an RGBA PNG on a regular lon/lat grid (nodata
transparent, no axes or labels) with a world file (``.pgw``: pixel size and the
centre of the upper-left pixel, in degrees) and an entry in ``overlays.json``::

    {"crs": "EPSG:4326",
     "overlays": {"cumulative_magnitude": {"file": "cumulative_magnitude_4326.png",
                  "bounds": [[south, west], [north, east]],   # Leaflet order
                  "bbox": [west, south, east, north],          # GeoJSON order
                  "colormap": "magma", "vmin": 0, "vmax": 12.3, "units": "m",
                  "label": "..."}}}

Runs in pixel units (images without georeferencing) have no overlays.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine

from ._mapdecor import Georef
from .raster import atomic_path

__all__ = ["Overlay", "colorize", "warp_rgba", "write_overlay", "write_overlay_index"]


@dataclass(frozen=True)
class Overlay:
    """One overlay written: its file and lon/lat bounds, and how it was coloured."""

    name: str
    file: str
    bbox: tuple[float, float, float, float]  # west, south, east, north
    colormap: str
    vmin: float
    vmax: float
    units: str
    label: str

    def as_json(self) -> dict:
        w, s, e, n = self.bbox
        return {
            "file": self.file,
            "bounds": [[s, w], [n, e]],
            "bbox": [w, s, e, n],
            "colormap": self.colormap,
            "vmin": self.vmin,
            "vmax": self.vmax,
            "units": self.units,
            "label": self.label,
        }


def colorize(data: np.ndarray, cmap: str, vmin: float, vmax: float, alpha: float = 1.0):
    """``data`` (2-D) as RGBA uint8 through a matplotlib colour map; NaN transparent."""
    import matplotlib

    cm = matplotlib.colormaps[cmap]
    span = (vmax - vmin) or 1.0
    norm = np.clip((np.nan_to_num(data, nan=0.0) - vmin) / span, 0, 1)
    rgba = (cm(norm) * 255).round().astype("uint8")
    rgba[..., 3] = np.where(np.isfinite(data), int(round(alpha * 255)), 0)
    return rgba


def warp_rgba(rgba: np.ndarray, geo: Georef, *, max_size: int = 2048, min_size: int = 512):
    """Warp an RGBA image on ``geo`` to EPSG:4326 (nearest neighbour).

    The longer side of the result has between ``min_size`` and ``max_size`` pixels.

    Returns ``(rgba_4326, transform_4326, (west, south, east, north))``.
    """
    from rasterio.crs import CRS
    from rasterio.enums import Resampling
    from rasterio.warp import calculate_default_transform, reproject

    h, w = rgba.shape[:2]
    left, right, bottom, top = geo.extent
    src_crs = CRS.from_wkt(geo.crs)
    dst_crs = CRS.from_epsg(4326)
    transform, width, height = calculate_default_transform(
        src_crs, dst_crs, w, h, left=left, bottom=bottom, right=right, top=top
    )
    scale = max(width, height) / max_size
    if max(width, height) < min_size:  # crisp cells once the browser scales the image
        scale = max(width, height) / min_size
    if scale != 1:  # light for web maps, yet with visible cells
        width, height = int(round(width / scale)), int(round(height / scale))
        transform = transform * Affine.scale(scale)
    out = np.zeros((4, height, width), dtype="uint8")
    for b in range(4):
        reproject(
            np.ascontiguousarray(rgba[..., b]),
            out[b],
            src_transform=geo.transform,
            src_crs=src_crs,
            dst_transform=transform,
            dst_crs=dst_crs,
            resampling=Resampling.nearest,
            src_nodata=None,
            dst_nodata=0,
        )
    west, north = transform.c, transform.f
    east, south = transform * (width, height)
    return np.moveaxis(out, 0, -1), transform, (west, south, east, north)


def _world_file_text(transform: Affine) -> str:
    t = transform
    centre_x, centre_y = t * (0.5, 0.5)
    return "\n".join(f"{v:.12f}" for v in (t.a, t.d, t.b, t.e, centre_x, centre_y)) + "\n"


def write_world_file(png: Path, transform: Affine) -> Path:
    """``name.pgw`` beside ``name.png``."""
    pgw = png.with_suffix(".pgw")
    with atomic_path(pgw) as tmp:
        tmp.write_text(_world_file_text(transform))
    return pgw


def write_overlay(
    folder: Path,
    name: str,
    data: np.ndarray,
    geo: Georef,
    *,
    cmap: str,
    vmin: float,
    vmax: float,
    units: str,
    label: str,
) -> Overlay:
    """Colour ``data`` and write ``folder/name_4326.png`` with its world file."""
    from PIL import Image

    rgba, transform, bbox = warp_rgba(colorize(data, cmap, vmin, vmax), geo)
    png = folder / f"{name}_4326.png"
    with atomic_path(png) as tmp:
        Image.fromarray(rgba, "RGBA").save(tmp, format="PNG", optimize=True)
    write_world_file(png, transform)
    return Overlay(name, png.name, bbox, cmap, float(vmin), float(vmax), units, label)


def write_overlay_index(folder: Path, overlays: list[Overlay], extra: dict | None = None) -> Path:
    """``overlays.json``: every overlay with its lon/lat bounds."""
    index = {"crs": "EPSG:4326", "overlays": {o.name: o.as_json() for o in overlays}}
    if extra:
        index.update(extra)
    path = folder / "overlays.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(index, indent=2))
    return path
