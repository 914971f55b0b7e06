"""Raster files in and out: thin, explicit wrappers around rasterio.

Conventions shared by every stage (see ``docs/DATA.md``):

* an image or map in memory is an :class:`xarray.DataArray` (or a Dataset of them)
  with dims ``("y", "x")``, coords ``x``/``y`` = map coordinates of pixel centres,
  attrs ``crs`` (WKT, or ``None`` for images without georeferencing) and
  ``transform`` (6 floats, rasterio ``Affine`` order a, b, c, d, e, f);
* every file is written under a temporary name in its destination folder and
  renamed when complete, so a product that exists is a complete product;
* float rasters use NaN as nodata and carry band descriptions.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
import xarray as xr
from affine import Affine
from rasterio.errors import RasterioError

from .errors import InputError, OutputError

__all__ = [
    "GeoTIFFWriter",
    "atomic_path",
    "coords_from_transform",
    "dates_from_name",
    "read_pair",
    "read_pair_stack",
    "write_geotiff",
    "write_pair",
]

_DATE_RE = re.compile(r"(?<!\d)(\d{4})-?(\d{2})-?(\d{2})(?!\d)")
_DATE_PAIR_RE = re.compile(
    r"(?<!\d)(\d{4}-?\d{2}-?\d{2})(?:T\d{6})?[_-](\d{4}-?\d{2}-?\d{2})(?:T\d{6})?(?!\d)"
)


_LANDSAT_ID_RE = re.compile(r"(?<![A-Z0-9])L[COTEM]0?\d(\d{6})(\d{4})(\d{3})[A-Z]{3}\d{2}")


def date_from_name(name: str) -> dt.date | None:
    """Acquisition date written in a file name, or None.

    The first valid ``YYYYMMDD`` or ``YYYY-MM-DD`` (Sentinel-2 and Landsat
    Collection 2 product names hold it first), else the year and day of year of
    a pre-collection Landsat scene id (``LC80200392015216LGN00``).
    """
    for m in _DATE_RE.finditer(name):
        try:
            return dt.date(int(m[1]), int(m[2]), int(m[3]))
        except ValueError:
            continue
    m = _LANDSAT_ID_RE.search(name.upper())
    if m and 1 <= int(m[3]) <= 366:
        return dt.date(int(m[2]), 1, 1) + dt.timedelta(days=int(m[3]) - 1)
    return None


def dates_from_name(name: str) -> tuple[dt.date, dt.date] | None:
    """``(date1, date2)`` from ``YYYYMMDD_YYYYMMDD`` or ``YYYY-MM-DD_YYYY-MM-DD`` in a name."""
    m = _DATE_PAIR_RE.search(name)
    if not m:
        return None
    d1, d2 = date_from_name(m[1]), date_from_name(m[2])
    return (d1, d2) if d1 and d2 else None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left as it was,
    so an existing output is always complete. Folder errors become OutputError.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create folder {path.parent}: {exc.strerror}") from None
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def coords_from_transform(transform: Sequence[float], shape: tuple[int, int]):
    """Map coordinates ``(x, y)`` of pixel centres for a north-up grid."""
    t = Affine(*transform[:6])
    rows, cols = shape
    x = t.c + t.a * (np.arange(cols) + 0.5)
    y = t.f + t.e * (np.arange(rows) + 0.5)
    return x, y


def write_geotiff(
    path: str | Path,
    data: np.ndarray,
    *,
    transform: Sequence[float],
    crs: str | None,
    descriptions: Sequence[str] | None = None,
    tags: dict[str, str] | None = None,
    band_tags: Sequence[dict[str, str]] | None = None,
    cog: bool = True,
) -> Path:
    """Write a float32 raster (``(bands, rows, cols)`` or ``(rows, cols)``), NaN nodata.

    Written as a cloud-optimised GeoTIFF (DEFLATE, internal tiles, overviews)
    unless ``cog=False``, under a temporary name then renamed.
    """
    arr = np.asarray(data, dtype="float32")
    if arr.ndim == 2:
        arr = arr[None]
    count, rows, cols = arr.shape
    profile = dict(
        driver="GTiff",
        width=cols,
        height=rows,
        count=count,
        dtype="float32",
        nodata=float("nan"),
        crs=crs or None,
        transform=Affine(*transform[:6]),
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        with rasterio.MemoryFile() as mem:
            with mem.open(**profile) as dst:
                dst.write(arr)
                for i, desc in enumerate(descriptions or [], start=1):
                    dst.set_band_description(i, desc)
                if tags:
                    dst.update_tags(**tags)
                for i, bt in enumerate(band_tags or [], start=1):
                    dst.update_tags(i, **bt)
            with mem.open() as src:
                if cog:
                    rasterio.shutil.copy(src, tmp, **_cog_options(rows, cols))
                else:
                    rasterio.shutil.copy(src, tmp, driver="GTiff", compress="DEFLATE")
    return path


class GeoTIFFWriter:
    """A float32 raster written band of rows by band of rows, then as a COG.

    ``with GeoTIFFWriter(path, count=..., shape=(rows, cols), ...) as w:
    w.write(values, r0)`` writes ``values`` (``(count, n, cols)`` or ``(n, cols)``)
    at rows ``r0:r0+n`` of an uncompressed temporary GeoTIFF on disk; on leaving
    the block without error it is copied to ``path`` as the same cloud-optimised
    GeoTIFF :func:`write_geotiff` writes (same values, tags, descriptions), under
    a temporary name then renamed. Memory holds one band of rows, not the raster.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        count: int,
        shape: tuple[int, int],
        transform: Sequence[float],
        crs: str | None,
        descriptions: Sequence[str] | None = None,
        tags: dict[str, str] | None = None,
    ):
        self.path = Path(path)
        self.rows, self.cols = shape
        self.count = count
        self.profile = dict(
            driver="GTiff",
            width=self.cols,
            height=self.rows,
            count=count,
            dtype="float32",
            nodata=float("nan"),
            crs=crs or None,
            transform=Affine(*transform[:6]),
            interleave="band",
            BIGTIFF="IF_SAFER",
        )
        self.descriptions = descriptions
        self.tags = tags
        self.src = self.path.with_name(f".{self.path.stem}.tmp{os.getpid()}.src.tif")
        self.dst = None

    def __enter__(self) -> GeoTIFFWriter:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.dst = rasterio.open(self.src, "w", **self.profile)
        except (OSError, RasterioError) as exc:
            raise OutputError(f"cannot write {self.path}: {exc}") from None
        return self

    def write(self, values: np.ndarray, r0: int) -> None:
        from rasterio.windows import Window

        arr = np.asarray(values, dtype="float32")
        if arr.ndim == 2:
            arr = arr[None]
        try:
            self.dst.write(arr, window=Window(0, r0, self.cols, arr.shape[1]))
        except (OSError, RasterioError) as exc:
            raise OutputError(f"cannot write {self.path}: {exc}") from None

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                for i, desc in enumerate(self.descriptions or [], start=1):
                    self.dst.set_band_description(i, desc)
                if self.tags:
                    self.dst.update_tags(**self.tags)
            self.dst.close()
            if exc_type is None:
                with atomic_path(self.path) as tmp:
                    try:
                        with rasterio.open(self.src) as src:
                            rasterio.shutil.copy(src, tmp, **_cog_options(self.rows, self.cols))
                    except RasterioError as err:
                        raise OutputError(f"cannot write {self.path}: {err}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.src.unlink()


def _cog_options(rows: int, cols: int) -> dict:
    return dict(
        driver="COG",
        compress="DEFLATE",
        predictor="YES",
        blocksize=256,
        overview_resampling="average" if min(rows, cols) > 512 else "nearest",
    )


# ---------------------------------------------------------------------------
# pair products: the ``tio correlate`` contract

PAIR_BANDS = (
    ("ew", "east-west displacement (m, positive east)"),
    ("ns", "north-south displacement (m, positive north)"),
    ("score", "correlation score (0-1)"),
)


def write_pair(
    path: str | Path,
    ds: xr.Dataset,
    date1: dt.date | None = None,
    date2: dt.date | None = None,
    extra_tags: dict[str, str] | None = None,
) -> Path:
    """Write a pair map (``ew``, ``ns``, ``score``) as a 3-band GeoTIFF.

    Band 1 EW metres positive east, band 2 NS metres positive north, band 3 score
    in [0, 1]; tags ``TIO_DATE1``/``TIO_DATE2`` (ISO dates) when known and
    ``TIO_UNITS`` (``m`` or ``pixel``).
    """
    units = ds.attrs.get("units", "m")
    descs = [d if units == "m" else d.replace("(m,", "(pixel,") for _, d in PAIR_BANDS]
    tags = {"TIO_UNITS": units}
    if date1:
        tags["TIO_DATE1"] = date1.isoformat()
    if date2:
        tags["TIO_DATE2"] = date2.isoformat()
    for key in ("window", "step", "search", "prefilter"):
        if key in ds.attrs:
            tags[f"TIO_{key.upper()}"] = str(ds.attrs[key])
    tags.update(extra_tags or {})
    data = np.stack([ds[name].values for name, _ in PAIR_BANDS])
    return write_geotiff(
        path,
        data,
        transform=ds.attrs["transform"],
        crs=ds.attrs.get("crs"),
        descriptions=descs,
        tags=tags,
    )


def read_pair(path: str | Path) -> xr.Dataset:
    """Read a pair map written by :func:`write_pair` (or ``tio correlate``).

    Returns a Dataset with ``ew``, ``ns``, ``score`` (y, x), attrs ``crs``,
    ``transform``, ``units``, ``date1``, ``date2`` (ISO strings), ``path``.
    Dates come from the ``TIO_DATE1``/``TIO_DATE2`` tags, else from the file name.
    """
    path = Path(path)
    try:
        with rasterio.open(path) as src:
            if src.count < 2:
                raise InputError(
                    f"{path}: a pair map needs bands EW, NS (and score); found {src.count}"
                )
            data = src.read(masked=False).astype("float32")
            tags = src.tags()
            transform = tuple(src.transform)[:6]
            crs = src.crs.to_wkt() if src.crs else None
            if src.nodata is not None and not np.isnan(src.nodata):
                data[data == src.nodata] = np.nan
    except RasterioError as exc:
        raise InputError(f"cannot read pair map {path}: {exc}") from None
    d1 = tags.get("TIO_DATE1")
    d2 = tags.get("TIO_DATE2")
    if not (d1 and d2):
        found = dates_from_name(path.name)
        if not found:
            raise InputError(
                f"{path}: no dates: expected tags TIO_DATE1/TIO_DATE2 or YYYYMMDD_YYYYMMDD "
                "in the file name"
            )
        d1, d2 = found[0].isoformat(), found[1].isoformat()
    rows, cols = data.shape[1:]
    x, y = coords_from_transform(transform, (rows, cols))
    score = data[2] if data.shape[0] >= 3 else np.where(np.isfinite(data[0]), 1.0, np.nan)
    ds = xr.Dataset(
        {
            "ew": (("y", "x"), data[0]),
            "ns": (("y", "x"), data[1]),
            "score": (("y", "x"), score.astype("float32")),
        },
        coords={"x": x, "y": y},
        attrs={
            "crs": crs,
            "transform": list(transform),
            "units": tags.get("TIO_UNITS", "m"),
            "date1": d1,
            "date2": d2,
            "path": str(path),
        },
    )
    return ds


def read_tags(path: str | Path) -> dict[str, str]:
    """Dataset-level tags of a raster (empty dict if it cannot be opened)."""
    try:
        with rasterio.open(path) as src:
            return src.tags()
    except RasterioError:
        return {}


def read_pair_stack(paths: Sequence[str | Path]) -> xr.Dataset:
    """Read pair maps (``tio correlate`` outputs) into the input of :func:`tio.inversion.invert`.

    Every file must be on the grid of the first one (same size, geotransform
    and CRS) and in the same units. Dates come from the ``TIO_DATE1`` /
    ``TIO_DATE2`` tags, else from ``YYYYMMDD_YYYYMMDD`` or
    ``YYYY-MM-DD_YYYY-MM-DD`` in the file name (:func:`read_pair`).

    Returns
    -------
    xarray.Dataset
        ``ew``, ``ns``, ``score`` (pair, y, x) float32; coords ``x``, ``y``,
        ``pair`` (file stem), ``date1``, ``date2`` (datetime64[ns]); attrs
        ``crs``, ``transform``, ``units``.

    Raises
    ------
    InputError
        No file, an unreadable file or one without dates, a file on another
        grid or in other units (the message names it and says how it differs),
        a pair whose first date is not before its second.
    """
    if not paths:
        raise InputError("no pair maps given")
    maps = []
    first = None
    for path in paths:
        ds = read_pair(path)
        if first is None:
            first = ds
        else:
            name = Path(path).name
            ref = Path(first.attrs["path"]).name
            if (ds.sizes["y"], ds.sizes["x"]) != (first.sizes["y"], first.sizes["x"]):
                raise InputError(
                    f"{path}: {ds.sizes['x']} x {ds.sizes['y']} values, but {ref} has "
                    f"{first.sizes['x']} x {first.sizes['y']}: every pair map must be on one grid"
                )
            if not np.allclose(ds.attrs["transform"], first.attrs["transform"], rtol=0, atol=1e-6):
                raise InputError(
                    f"{path}: geotransform {tuple(ds.attrs['transform'])} differs from {ref}'s "
                    f"{tuple(first.attrs['transform'])}: every pair map must be on one grid"
                )
            if (ds.attrs["crs"] or None) != (first.attrs["crs"] or None):
                raise InputError(
                    f"{path}: CRS differs from {ref}'s: every pair map must be on one grid"
                )
            if ds.attrs["units"] != first.attrs["units"]:
                raise InputError(
                    f"{name}: units {ds.attrs['units']!r}, but {ref} is in {first.attrs['units']!r}"
                )
        d1, d2 = ds.attrs["date1"], ds.attrs["date2"]
        if d1 >= d2:
            raise InputError(f"{path}: first date {d1} is not before second date {d2}")
        maps.append(ds)
    return xr.Dataset(
        {
            v: (("pair", "y", "x"), np.stack([m[v].values for m in maps]).astype("float32"))
            for v in ("ew", "ns", "score")
        },
        coords={
            "x": first["x"].values,
            "y": first["y"].values,
            "pair": [Path(m.attrs["path"]).stem for m in maps],
            "date1": ("pair", np.array([np.datetime64(m.attrs["date1"], "ns") for m in maps])),
            "date2": ("pair", np.array([np.datetime64(m.attrs["date2"], "ns") for m in maps])),
        },
        attrs={k: first.attrs[k] for k in ("crs", "transform", "units")},
    )
