"""Find the scenes of a run: local images, folders of images, Sentinel-2 SAFE products.

:func:`find_scenes` turns what the user gives (files, folders, SAFE folders or
``.zip`` archives) into a date-sorted list of :class:`Scene`, one per acquisition
date. It opens nothing but metadata; pixels are read by :mod:`tio.stack`.

Dates come, in order of preference, from a ``TIO_DATE`` tag, from a
``YYYYMMDD`` / ``YYYY-MM-DD`` date in the file (or SAFE product) name, from a
Landsat scene id in the name, from the Landsat ``*_MTL.txt`` file beside the
image, or from the TIFF ``DATETIME`` tag. A file without any date is an error naming the file.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from .errors import InputError
from .raster import date_from_name
from .safe import SafeProduct, band_path, read_safe

log = logging.getLogger(__name__)

__all__ = ["IMAGE_SUFFIXES", "Found", "Scene", "find_scenes", "open_scene", "survey"]

IMAGE_SUFFIXES = {".tif", ".tiff", ".jp2", ".vrt", ".img", ".jpg", ".jpeg", ".png"}


@dataclass(frozen=True)
class Scene:
    """One acquisition to read.

    Attributes
    ----------
    path
        What GDAL opens: a file path, or a ``/vsizip/`` path inside a SAFE archive.
    date
        Acquisition date (None only from :func:`open_scene` when unknown).
    source
        What the user gave (the image, or the SAFE product).
    nodata
        Pixel value meaning "no data" when the file does not declare one
        (0 for Sentinel-2 bands), else None.
    sensor, tile, orbit, cloud_cover
        What the metadata says, when it says it (cloud cover in percent of the
        whole product, not of the area of interest).
    product
        The SAFE product's metadata (:class:`tio.safe.SafeProduct`), for SAFE inputs.
    mask_path
        A Sentinel-2 scene classification (SCL) raster GDAL opens, for catalogue
        scenes (:mod:`tio.catalog`) that are not SAFE products.
    parts
        Other tiles of the same acquisition (catalogue scenes): where this scene has
        no data on the grid, they fill it (tiles merged over an area spanning them).
    """

    path: str
    date: dt.date | None
    source: str
    nodata: float | None = None
    sensor: str = ""
    tile: str = ""
    orbit: int | None = None
    cloud_cover: float | None = None
    product: SafeProduct | None = field(default=None, compare=False, repr=False)
    mask_path: str | None = None
    parts: tuple[Scene, ...] = field(default=(), compare=False, repr=False)


def _is_safe(path: Path) -> bool:
    name = path.name.upper()
    return ".SAFE" in name and (path.is_dir() or name.endswith(".ZIP"))


def _date_from_mtl(path: Path) -> dt.date | None:
    """``DATE_ACQUIRED`` of the Landsat ``*_MTL.txt`` beside ``path`` (same name prefix)."""
    try:
        candidates = sorted(path.parent.glob("*_MTL.txt"))
    except OSError:
        return None
    for mtl in candidates:
        prefix = mtl.name[: -len("MTL.txt")]
        if path.name.startswith(prefix):
            m = re.search(
                r"DATE_ACQUIRED\s*=\s*(\d{4}-\d{2}-\d{2})", mtl.read_text(errors="replace")
            )
            if m:
                return dt.date.fromisoformat(m[1])
    return None


def _date_of_raster(path: str, shown: str) -> dt.date | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                tags = src.tags()
    except RasterioError as exc:
        raise InputError(f"cannot open {shown}: {exc}") from None
    if tags.get("TIO_DATE"):
        try:
            return dt.date.fromisoformat(tags["TIO_DATE"][:10])
        except ValueError:
            raise InputError(
                f"{shown}: tag TIO_DATE={tags['TIO_DATE']!r} is not an ISO date"
            ) from None
    d = date_from_name(Path(path).name) or _date_from_mtl(Path(path))
    if d:
        return d
    stamp = tags.get("TIFFTAG_DATETIME", "")
    m = re.match(r"(\d{4})[:-](\d{2})[:-](\d{2})", stamp)
    if m:
        return dt.date(int(m[1]), int(m[2]), int(m[3]))
    return None


def open_scene(path: str | Path, *, band: str = "B04") -> Scene:
    """One image or SAFE product as a :class:`Scene`; its date is None when unknown.

    Raises
    ------
    InputError
        The path does not exist, cannot be opened, or a SAFE product lacks the band.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"input not found: {p}")
    if _is_safe(p):
        product = read_safe(p)
        return Scene(
            path=band_path(product, band, None if "_" in band else _NATIVE_RES.get(band.upper())),
            date=product.sensing_time.date(),
            source=str(p),
            nodata=0.0,
            sensor=product.spacecraft,
            tile=product.tile,
            orbit=product.relative_orbit,
            cloud_cover=product.cloud_cover,
            product=product,
        )
    if p.is_dir():
        raise InputError(f"{p} is a folder, not an image or a SAFE product")
    return Scene(
        path=str(p), date=_date_of_raster(str(p), str(p)), source=str(p), sensor=_sensor(p.name)
    )


# native resolution of each Sentinel-2 band (m): a band asked for by name alone is read
# at this resolution, never silently at a coarser one
_NATIVE_RES = {
    **dict.fromkeys(["B02", "B03", "B04", "B08"], 10),
    **dict.fromkeys(["B05", "B06", "B07", "B8A", "B11", "B12"], 20),
    **dict.fromkeys(["B01", "B09", "B10"], 60),
}


def _sensor(name: str) -> str:
    """The platform a file name says, e.g. Sentinel-2A or Landsat 8, else empty."""
    up = name.upper()
    m = re.search(r"(?:^|_)S2([ABCD])_", up)
    if m:
        return f"Sentinel-2{m[1]}"
    m = re.match(r"L[COTEM]0?(\d)", up)
    if m:
        return f"Landsat {m[1]}"
    return ""


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise InputError(f"input not found: {p}")
        if p.is_dir() and not _is_safe(p):
            inner = sorted(
                c
                for c in p.iterdir()
                if (
                    c.is_file()
                    and c.suffix.lower() in IMAGE_SUFFIXES
                    and not c.name.startswith(".")
                )
                or _is_safe(c)
            )
            if not inner:
                raise InputError(
                    f"folder {p} holds no image (looked for {', '.join(sorted(IMAGE_SUFFIXES))} "
                    "files and .SAFE products)"
                )
            out.extend(inner)
        else:
            out.append(p)
    return out


@dataclass(frozen=True)
class Found:
    """What :func:`survey` found at one path: the scene, or why it is left out."""

    source: str
    scene: Scene | None
    kept: bool
    reason: str = ""


def survey(
    paths: Iterable[str | Path],
    *,
    band: str = "B04",
    start: dt.date | None = None,
    end: dt.date | None = None,
    orbit: int | None = None,
) -> list[Found]:
    """Every input path with its scene, and whether it is kept (and why not).

    A path that cannot be used (unreadable, no date, band missing, outside the
    date range, a second scene of the same date) is reported, not raised.

    Raises
    ------
    InputError
        A path given does not exist, or a folder holds no image.
    """
    found: list[Found] = []
    seen: dict[dt.date, str] = {}
    for p in _expand(paths):
        try:
            scene = open_scene(p, band=band)
        except InputError as exc:
            found.append(Found(str(p), None, False, str(exc)))
            continue
        date = scene.date
        if date is None:
            reason = (
                f"{p}: no acquisition date: add a TIO_DATE tag or put YYYYMMDD in the file name"
            )
        elif (start and date < start) or (end and date > end):
            reason = f"{date} is outside the date range"
        elif orbit is not None and scene.orbit is not None and scene.orbit != orbit:
            reason = f"relative orbit {scene.orbit}, not the orbit {orbit} asked for"
        elif date in seen:
            reason = f"a scene of {date} was already given ({seen[date]})"
        else:
            seen[date] = str(p)
            found.append(Found(str(p), scene, True))
            continue
        found.append(Found(str(p), scene, False, reason))
    last = dt.date.max
    return sorted(
        found, key=lambda f: (f.scene.date if f.scene and f.scene.date else last, f.source)
    )


def find_scenes(
    paths: Iterable[str | Path],
    *,
    band: str = "B04",
    start: dt.date | None = None,
    end: dt.date | None = None,
    orbit: int | None = None,
) -> list[Scene]:
    """Scenes from files, folders and SAFE products, one per date, sorted by date.

    Unusable inputs are skipped with a warning naming the file and the problem
    (see :func:`survey`); the run goes on while at least two dates remain.

    Raises
    ------
    InputError
        A path does not exist, or fewer than two usable dates remain (the message
        lists why the others were left out).
    """
    found = survey(paths, band=band, start=start, end=end, orbit=orbit)
    for f in found:
        if not f.kept:
            level = logging.INFO if "outside the date range" in f.reason else logging.WARNING
            log.log(level, "%s skipped: %s", f.source, f.reason)
    result = [f.scene for f in found if f.kept]
    if len(result) < 2:
        why = "; ".join(f.reason for f in found if not f.kept)
        raise InputError(
            f"need at least 2 dates to measure displacement, found {len(result)}"
            + (" in the date range" if start or end else "")
            + (f" (left out: {why})" if why else "")
        )
    return result


def check_date_limit(
    scenes: list[Scene],
    limit: int | None,
    where: str = "the inputs",
    advice: str = "narrow the dates (--start/--end) or the inputs, or raise the limit "
    "(input.max_dates)",
) -> None:
    """Raise :class:`~tio.errors.InputError` if ``scenes`` span more than ``limit`` dates."""
    n = len({s.date for s in scenes})
    if limit is not None and n > limit:
        raise InputError(
            f"{where}: {n} dates from {scenes[0].date} to {scenes[-1].date}, above the limit "
            f"of {limit}: {advice}"
        )
