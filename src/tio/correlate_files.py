"""Correlate two raster files: the ``tio correlate`` command's work.

:func:`correlate_files` reads a reference and a secondary image (any raster GDAL
reads, or a Sentinel-2 SAFE product with a band), puts the secondary on the
reference grid (resampling it if the grids differ), correlates them with
:func:`tio.correlation.correlate` and writes the pair map: a float32 GeoTIFF
with band 1 east-west (m, positive east), band 2 north-south (m, positive north),
band 3 score (0-1), NaN as nodata, one value every ``step`` reference pixels at
window centres, tags ``TIO_DATE1``/``TIO_DATE2`` when the dates are known. The
file I/O lives here; the numerics in :mod:`tio.correlation`.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from rasterio.enums import Resampling

from .errors import InputError, NoOverlapError
from .ingest import Scene, open_scene
from .raster import coords_from_transform, write_pair
from .stack import Grid, boxes_overlap, grid_for, is_on_grid, read_on_grid, scene_bounds

log = logging.getLogger(__name__)

__all__ = ["PairResult", "correlate_files"]


@dataclass(frozen=True)
class PairResult:
    """What :func:`correlate_files` wrote and how."""

    path: Path
    dataset: xr.Dataset
    date1: dt.date | None
    date2: dt.date | None
    resampled: bool


def _as_dataarray(values: np.ndarray, grid: Grid) -> xr.DataArray:
    x, y = coords_from_transform(tuple(grid.transform), grid.shape)
    return xr.DataArray(
        values,
        dims=("y", "x"),
        coords={"x": x, "y": y},
        attrs={"crs": grid.crs, "transform": list(tuple(grid.transform)[:6])},
    )


def _read_mask(path: str | Path | None, grid: Grid) -> np.ndarray | None:
    """A mask raster on ``grid``: True where unusable (non-zero values or nodata)."""
    if path is None:
        return None
    scene = Scene(path=str(path), date=None, source=str(path))
    values = read_on_grid(scene, grid, Resampling.nearest)
    return ~np.isfinite(values) | (values != 0)


def correlate_files(
    reference: str | Path,
    secondary: str | Path,
    output: str | Path,
    *,
    band: str = "B04",
    window: int = 32,
    step: int = 8,
    search: int = 8,
    prefilter: str = "none",
    max_masked_fraction: float = 0.25,
    reference_mask: str | Path | None = None,
    secondary_mask: str | Path | None = None,
    dates: tuple[dt.date, dt.date] | None = None,
    aoi=None,
    resampling: str = "cubic",
    **engine_options,
) -> PairResult:
    """Correlate ``secondary`` against ``reference`` and write the pair map to ``output``.

    Parameters
    ----------
    reference, secondary
        Raster files or Sentinel-2 SAFE products (folder or .zip; ``band`` chosen).
    output
        GeoTIFF to write (temporary name, then renamed).
    window, step, search, prefilter, max_masked_fraction, engine_options
        Passed to :func:`tio.correlation.correlate`.
    reference_mask, secondary_mask
        Optional rasters, non-zero = unusable (cloud...); resampled (nearest) onto
        the reference grid.
    dates
        ``(date1, date2)``; default: from the files' metadata or names.
    aoi
        Optional area of interest (lon/lat box, GeoJSON file or WKT, see
        :func:`tio.aoi.parse_aoi`) to cut the reference grid.
    resampling
        Resampler for a secondary on another grid.

    Raises
    ------
    NoOverlapError
        The secondary does not overlap the reference (both extents given).
    InputError
        A file cannot be read, or the secondary has no valid pixel on the grid.
    CorrelationError
        The engine refused the inputs (window larger than the image...).
    """
    from .correlation import correlate

    ref_scene = open_scene(reference, band=band)
    sec_scene = open_scene(secondary, band=band)
    grid = grid_for(ref_scene, aoi)
    ref_box = grid.bounds
    sec_box = scene_bounds(sec_scene, grid.crs)
    if not boxes_overlap(ref_box, sec_box):
        raise NoOverlapError(
            f"{secondary} does not overlap {reference}: reference extent "
            f"x {ref_box[0]:.1f}..{ref_box[2]:.1f}, y {ref_box[1]:.1f}..{ref_box[3]:.1f}; "
            f"secondary extent x {sec_box[0]:.1f}..{sec_box[2]:.1f}, "
            f"y {sec_box[1]:.1f}..{sec_box[3]:.1f} (in the reference CRS)"
        )
    resampled = not is_on_grid(sec_scene, grid)
    if resampled:
        log.warning(
            "%s is not on the grid of %s: resampled onto it (%s)", secondary, reference, resampling
        )
    ref = read_on_grid(ref_scene, grid, Resampling.nearest)
    sec = read_on_grid(sec_scene, grid, Resampling[resampling])
    if not np.isfinite(ref).any():
        raise InputError(f"{reference} holds no valid pixel in the area to correlate")
    if not np.isfinite(sec).any():
        raise InputError(
            f"{secondary} holds no valid pixel on the grid of {reference} (all nodata there)"
        )
    ds = correlate(
        _as_dataarray(ref, grid),
        _as_dataarray(sec, grid),
        window=window,
        step=step,
        search=search,
        prefilter=prefilter,
        max_masked_fraction=max_masked_fraction,
        reference_mask=_read_mask(reference_mask, grid),
        secondary_mask=_read_mask(secondary_mask, grid),
        **engine_options,
    )
    d1, d2 = dates if dates else (ref_scene.date, sec_scene.date)
    extra = {"TIO_REFERENCE": str(reference), "TIO_SECONDARY": str(secondary)}
    if resampled:
        extra["TIO_RESAMPLING"] = resampling
    path = write_pair(output, ds, d1, d2, extra)
    return PairResult(path=Path(path), dataset=ds, date1=d1, date2=d2, resampled=resampled)
