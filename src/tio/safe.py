"""Read the metadata of Sentinel-2 SAFE products, as users download them.

:func:`read_safe` takes a ``.SAFE`` folder or a ``.zip`` of one and returns a
:class:`SafeProduct`: acquisition time, tile, orbit, processing baseline, the
radiometric scaling (quantification value and the offsets introduced with
processing baseline 04.00) and the GDAL paths of every band and quality mask
present. :func:`band_path` picks one band (finest resolution unless asked) and
:func:`reflectance` turns its digital numbers into reflectance.

What is supported
-----------------
- Levels L1C and L2A, processing baselines 02.0x to 05.xx.
- The current ("compact") naming, one tile per product:
  ``S2A_MSIL1C_20180101T105441_N0206_R051_T31TDH_20180101T124911.SAFE`` with
  ``MTD_MSIL1C.xml`` (or ``MTD_MSIL2A.xml``) and ``GRANULE/L1C_T31TDH_.../MTD_TL.xml``.
- The old 2015-2016 naming, possibly several tiles per product:
  ``S2A_OPER_PRD_MSIL1C_PDMC_....SAFE`` with ``S2A_OPER_MTD_SAFL1C_....xml`` and
  granules ``GRANULE/S2A_OPER_MSI_L1C_TL_..._T31TDH_N02.01/`` each with
  ``S2A_OPER_MTD_L1C_TL_....xml``. Pass ``granule=`` to choose a tile.
- Folders and ``.zip`` archives. A zip is never extracted: metadata are read with
  :mod:`zipfile` and the band paths are ``/vsizip/{zip}/{member}`` paths GDAL opens.

XML is read with :mod:`xml.etree.ElementTree`, matching elements on their local
names so that the namespaces (which changed between PSD versions) do not matter.
Band files are taken from the product metadata's file list (``IMAGE_FILE`` or, in
the old format, ``IMAGE_ID``) and from the files under ``IMG_DATA``; a file the
metadata list but that is absent (partial download or extraction) is reported as
missing, never returned.
"""

from __future__ import annotations

import os
import re
import warnings
import xml.etree.ElementTree as ET
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = ["SPECTRAL_BANDS", "SafeProduct", "band_path", "read_safe", "reflectance"]

#: The 13 spectral bands, in the order of their ``bandId`` (0 to 12) in the metadata.
SPECTRAL_BANDS: tuple[str, ...] = (
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B8A",
    "B09",
    "B10",
    "B11",
    "B12",
)
_OTHER_LAYERS = ("SCL", "TCI", "AOT", "WVP")
_ORDER = {name: i for i, name in enumerate(SPECTRAL_BANDS + _OTHER_LAYERS)}

# resolution (m) of a band file without a resolution in its name or folder (L1C)
_NATIVE_RES = {
    **dict.fromkeys(("B02", "B03", "B04", "B08", "TCI"), 10),
    **dict.fromkeys(("B05", "B06", "B07", "B8A", "B11", "B12", "SCL", "AOT", "WVP"), 20),
    **dict.fromkeys(("B01", "B09", "B10"), 60),
}

_PRODUCT_MTD_RE = re.compile(
    r"^(?:MTD_MSIL(?:1C|2A)|S2[A-D_]_(?:OPER|USER)_MTD_SAFL(?:1C|2A|2AP)_.*)\.xml$", re.I
)
_TILE_MTD_RE = re.compile(r"^(?:MTD_TL|S2[A-D_]_(?:OPER|USER)_MTD_L(?:1C|2A)_.*)\.xml$", re.I)
_BAND_FILE_RE = re.compile(
    r"_(B0[1-9]|B1[0-2]|B8A|TCI|AOT|WVP|SCL)(?:_(\d+)m)?\.(?:jp2|tif|tiff)$", re.I
)
_RES_DIR_RE = re.compile(r"/R(\d+)m/", re.I)
_MASK_RE = re.compile(
    r"MSK_([A-Z]+)_(?:.*_)?(B\d{2}|B8A|\d+m)(?:_MSIL\w*)?\.(?:jp2|gml|tif|tiff)$", re.I
)
_OLD_PROBA_RE = re.compile(r"(?:^|_)(CLD|SNW)_(?:.*_)?(\d+m)\.(?:jp2|tif|tiff)$", re.I)
_TILE_RE = re.compile(r"(?:^|_)T(\d{2}[A-Z]{3})(?=_|\.|$)")
_IMAGE_EXT = {"JPEG2000": ".jp2", "GEOTIFF": ".tif"}


@dataclass(frozen=True)
class SafeProduct:
    """Metadata and file paths of one Sentinel-2 product (one tile).

    Attributes
    ----------
    path
        The ``.SAFE`` folder or ``.zip`` archive given to :func:`read_safe` (the
        folder when its metadata file was given).
    name
        Product name without ``.SAFE``, e.g.
        ``S2A_MSIL2A_20221005T115411_N0400_R023_T29UNU_20221005T164454``.
    level
        ``"L1C"`` or ``"L2A"``.
    spacecraft
        ``"Sentinel-2A"``, ``"Sentinel-2B"``, ``"Sentinel-2C"``...
    sensing_time
        Start of the acquisition (UTC, timezone-aware), from ``DATATAKE_SENSING_START``
        (else ``PRODUCT_START_TIME``, else the tile's ``SENSING_TIME``).
    tile
        MGRS tile, e.g. ``"29UNU"``.
    relative_orbit
        Relative orbit number (1 to 143).
    processing_baseline
        E.g. ``"04.00"``.
    cloud_cover
        Cloud cover in percent (``Cloud_Coverage_Assessment``), None if not given.
    quantification
        Divisor turning digital numbers into reflectance (usually 10000).
    offsets
        Spectral band name -> offset added to the digital numbers before dividing
        (-1000 from baseline 04.00, 0 before).
    crs
        Coordinate reference system of the tile, e.g. ``"EPSG:32629"``.
    bands
        Layer key -> GDAL-openable path of the files present. Keys: ``"B04"`` (the
        finest resolution present), ``"B04_60m"`` (one per resolution present),
        likewise ``"SCL"``, ``"TCI"``, ``"AOT"``, ``"WVP"``.
    masks
        Quality masks present: ``"CLASSI"``, ``"DETFOO_B04"``, ``"QUALIT_B04"``,
        ``"CLDPRB_20m"``, ``"SNWPRB_60m"``, and before baseline 04.00 ``"CLOUDS"``,
        ``"NODATA_B04"``, ``"DEFECT_B04"``, ``"SATURA_B04"``, ``"TECQUA_B04"``...
    granules
        Folder names of all the product's granules (several only in old products).
    absent
        Layer keys (``"B04_10m"``) listed in the product metadata whose file is
        missing -> the path where it was expected, inside the product.
    """

    path: Path
    name: str
    level: str
    spacecraft: str
    sensing_time: datetime
    tile: str
    relative_orbit: int
    processing_baseline: str
    cloud_cover: float | None
    quantification: float
    offsets: dict[str, float]
    crs: str | None
    bands: dict[str, str]
    masks: dict[str, str]
    granules: tuple[str, ...]
    absent: dict[str, str] = field(default_factory=dict)

    def __hash__(self) -> int:  # the dict fields are not hashable
        return hash((self.path, self.name, self.tile))


# --------------------------------------------------------------------------- sources


class _Source:
    """Files of a product, folder or zip, as paths relative to the product root."""

    label: str
    files: dict[str, str]  # lower-case relative path -> relative path

    def read(self, rel: str) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError

    def gdal_path(self, rel: str) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def find(self, rel: str) -> str | None:
        """The actual relative path of ``rel`` (compared without case), or None."""
        return self.files.get(rel.lower())

    def close(self) -> None:
        pass


class _DirSource(_Source):
    def __init__(self, root: Path, label: str):
        self.root = root
        self.label = label
        self.files = {}
        for dirpath, _dirs, names in os.walk(root, followlinks=True):
            for n in names:
                rel = Path(dirpath, n).relative_to(root).as_posix()
                self.files[rel.lower()] = rel

    def read(self, rel: str) -> bytes:
        try:
            return (self.root / rel).read_bytes()
        except OSError as exc:
            raise InputError(f"{self.label}: cannot read {rel} ({exc.strerror or exc})") from None

    def gdal_path(self, rel: str) -> str:
        return os.path.abspath(self.root / rel)


class _ZipSource(_Source):
    def __init__(self, zf: zipfile.ZipFile, zip_path: Path, prefix: str, label: str):
        self.zf = zf
        self.prefix = prefix
        self.label = label
        self.vsi = f"/vsizip/{Path(os.path.abspath(zip_path)).as_posix()}/"
        self.files = {}
        for n in zf.namelist():
            if n.startswith(prefix) and not n.endswith("/"):
                rel = n[len(prefix) :]
                self.files[rel.lower()] = rel

    def read(self, rel: str) -> bytes:
        try:
            return self.zf.read(self.prefix + rel)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, KeyError) as exc:
            raise InputError(
                f"{self.label}: cannot read {rel} from the zip archive, which is corrupt or "
                f"truncated ({exc}); download it again"
            ) from None

    def gdal_path(self, rel: str) -> str:
        return self.vsi + self.prefix + rel

    def close(self) -> None:
        self.zf.close()


def _open_source(path: Path) -> tuple[_Source, str, Path]:
    """Open the product at ``path``: its files, its product metadata file and its root."""
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_file() and _PRODUCT_MTD_RE.match(path.name):
        path = path.parent  # the user pointed at MTD_MSIL1C.xml itself
    label = str(path)
    if path.is_dir():
        try:
            top = os.listdir(path)
        except OSError as exc:
            raise InputError(f"{label}: cannot list the folder ({exc.strerror or exc})") from None
        looks_safe = {n.lower() for n in top} & {"granule", "manifest.safe", "datastrip"}
        mtd = _product_mtd(label, [n for n in top if (path / n).is_file()], bool(looks_safe))
        return _DirSource(path, label), mtd, path  # walk the tree only once it is a product
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        what = "corrupt or truncated zip archive" if path.suffix.lower() == ".zip" else None
        raise InputError(
            f"{label}: not a Sentinel-2 SAFE product: "
            + (f"{what} ({exc}); download it again" if what else f"not a folder nor a zip ({exc})")
        ) from None
    try:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        prefixes = sorted(
            {n.rpartition("/")[0] for n in names if n.count("/") <= 1 and _is_product_mtd(n)}
        )
        if len(prefixes) > 1:
            raise InputError(
                f"{label}: the archive holds several products ({', '.join(prefixes)}); "
                "give one product per zip"
            )
        if prefixes:
            prefix = prefixes[0] + "/" if prefixes[0] else ""
        else:  # where the SAFE would be, for the error message
            tops = sorted({n.split("/")[0] for n in names if "/" in n})
            prefix = tops[0] + "/" if len(tops) == 1 else ""
        src = _ZipSource(zf, path, prefix, label)
        looks_safe = any(
            f.startswith(("granule/", "datastrip/")) or f == "manifest.safe" for f in src.files
        )
        top = [rel for rel in src.files.values() if "/" not in rel]
        return src, _product_mtd(label, top, looks_safe), path
    except BaseException:
        zf.close()
        raise


def _is_product_mtd(member: str) -> bool:
    return bool(_PRODUCT_MTD_RE.match(member.rpartition("/")[2]))


def _product_mtd(label: str, top_files: list[str], looks_safe: bool) -> str:
    found = sorted(f for f in top_files if _PRODUCT_MTD_RE.match(f))
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise InputError(
            f"{label}: several product metadata files ({', '.join(found)}); expected exactly one"
        )
    wanted = "MTD_MSIL1C.xml, MTD_MSIL2A.xml or old-style S2x_OPER_MTD_SAFL1C_*.xml"
    if looks_safe:
        raise InputError(
            f"{label}: the product metadata file is missing (looked for {wanted}); "
            "the product is incomplete: download or extract it again"
        )
    raise InputError(f"{label}: not a Sentinel-2 SAFE product (it holds no {wanted})")


# --------------------------------------------------------------------------- XML


class _Xml:
    """An XML document indexed by local element name (namespaces ignored)."""

    def __init__(self, data: bytes, label: str, rel: str):
        self.rel = rel
        try:
            self.root = ET.fromstring(data)
        except ET.ParseError as exc:
            raise InputError(f"{label}: {rel} is not valid XML ({exc})") from None
        self.index: dict[str, list[ET.Element]] = {}
        for el in self.root.iter():
            if isinstance(el.tag, str):
                self.index.setdefault(_local(el.tag), []).append(el)

    @property
    def kind(self) -> str:
        return _local(self.root.tag)

    def all(self, name: str) -> list[ET.Element]:
        return self.index.get(name, [])

    def text(self, name: str) -> str | None:
        for el in self.all(name):
            if el.text and el.text.strip():
                return el.text.strip()
        return None


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _attr(el: ET.Element, *names: str) -> str | None:
    for key, value in el.attrib.items():
        if _local(key) in names:
            return value
    return None


def _parse_time(text: str, label: str, what: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InputError(f"{label}: {what} {text!r} is not an ISO date-time") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _band_name(text: str) -> str | None:
    """``"B4"``, ``"b04"``, ``"B8A"``, ``"scl"`` -> canonical name, else None."""
    t = text.strip().upper()
    m = re.fullmatch(r"B0?(\d{1,2})(A?)", t)
    if m:
        name = f"B{int(m[1]):02d}{m[2]}" if not m[2] else f"B{int(m[1])}A"
        return name if name in SPECTRAL_BANDS else None
    return t if t in _OTHER_LAYERS else None


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _ImageEntry:
    granule: str
    rel: str  # relative path without extension (as listed), or with one
    ext: str


def _listed_images(mtd: _Xml) -> list[_ImageEntry]:
    """Band files listed in the product metadata (IMAGE_FILE or old IMAGE_ID)."""
    out = []
    for name in ("Granule", "Granules"):
        for g in mtd.all(name):
            gid = _attr(g, "granuleIdentifier") or ""
            ext = _IMAGE_EXT.get((_attr(g, "imageFormat") or "JPEG2000").upper(), ".jp2")
            for child in g:
                text = (child.text or "").strip()
                if not text:
                    continue
                tag = _local(child.tag)
                if tag == "IMAGE_FILE":
                    parts = text.split("/")
                    granule = parts[1] if len(parts) > 2 and parts[0].upper() == "GRANULE" else gid
                    out.append(_ImageEntry(granule, text, ext))
                elif tag == "IMAGE_ID" and gid:
                    out.append(_ImageEntry(gid, f"GRANULE/{gid}/IMG_DATA/{text}", ext))
    return out


def _granule_folders(src: _Source) -> list[str]:
    found = []
    for rel in src.files.values():
        parts = rel.split("/")
        if len(parts) > 2 and parts[0].upper() == "GRANULE" and parts[1] not in found:
            found.append(parts[1])
    return found


def _tile_of(*texts: str | None) -> str | None:
    for t in texts:
        m = _TILE_RE.search(t or "")
        if m:
            return m[1]
    return None


def _select_granule(
    src: _Source, granules: list[str], on_disk: list[str], granule: str | None
) -> str | None:
    if granule is not None:
        want = granule.strip().upper().removeprefix("T")
        for g in granules:
            if g == granule or g.upper() == granule.upper() or _tile_of(g) == want:
                return g
        have = ", ".join(f"{g} (tile {_tile_of(g) or '?'})" for g in granules)
        raise InputError(
            f"{src.label}: no granule {granule!r} in this product; "
            + (f"it has {have}" if have else "it lists no granule")
        )
    candidates = on_disk or granules
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    raise InputError(
        f"{src.label}: the product holds {len(candidates)} granules (tiles "
        + ", ".join(_tile_of(g) or g for g in candidates)
        + "); choose one with granule='T31TDH' style tile code or the granule folder name: "
        + ", ".join(candidates)
    )


def _tile_mtd(src: _Source, granule: str | None, n_granules: int) -> str | None:
    if granule:
        prefix = f"granule/{granule.lower()}/"
        for low, rel in src.files.items():
            rest = low[len(prefix) :] if low.startswith(prefix) else None
            if rest is not None and "/" not in rest and _TILE_MTD_RE.match(rest):
                return rel
    if n_granules <= 1:  # some trimmed copies keep MTD_TL.xml at the product root
        return src.find("MTD_TL.xml")
    return None


def _resolution(rel: str, band: str, suffix: str | None) -> int:
    if suffix:
        return int(suffix)
    m = _RES_DIR_RE.search("/" + rel)
    return int(m[1]) if m else _NATIVE_RES[band]


def _collect_bands(
    src: _Source, granule: str | None, listed: list[_ImageEntry]
) -> tuple[dict[str, str], dict[str, str]]:
    """(bands, absent) of ``granule``: key -> GDAL path, key -> expected relative path."""
    found: dict[tuple[str, int], str] = {}
    missing: dict[tuple[str, int], str] = {}

    def add(rel: str, target: dict[tuple[str, int], str], value: str) -> None:
        m = _BAND_FILE_RE.search(rel)
        if m:
            band = m[1].upper()
            target.setdefault((band, _resolution(rel, band, m[2])), value)

    if granule is None:
        return {}, {}
    for entry in listed:
        if entry.granule != granule:
            continue
        base = entry.rel
        has_ext = re.search(r"\.(jp2|tif|tiff)$", base, re.I)
        tries = [base] if has_ext else [base + e for e in (entry.ext, ".jp2", ".tif", ".tiff")]
        actual = next((a for a in map(src.find, tries) if a), None)
        if actual:
            add(actual, found, src.gdal_path(actual))
        else:
            add(tries[0], missing, tries[0])
    prefix = f"granule/{granule.lower()}/img_data/"
    for low, rel in sorted(src.files.items()):
        if low.startswith(prefix):
            add(rel, found, src.gdal_path(rel))

    bands: dict[str, str] = {}
    for band, res in sorted(found, key=lambda k: (_ORDER[k[0]], k[1])):
        bands.setdefault(band, found[(band, res)])  # finest first
        bands[f"{band}_{res}m"] = found[(band, res)]
    absent = {
        f"{band}_{res}m": rel
        for (band, res), rel in sorted(missing.items(), key=lambda kv: (_ORDER[kv[0][0]], kv[0][1]))
        if (band, res) not in found
    }
    return bands, absent


def _collect_masks(src: _Source, granule: str | None) -> dict[str, str]:
    if granule is None:
        return {}
    prefix = f"granule/{granule.lower()}/qi_data/"
    masks: dict[str, str] = {}
    for low, rel in sorted(src.files.items()):
        if not low.startswith(prefix):
            continue
        name = rel.rpartition("/")[2]
        m = _MASK_RE.search(name)
        if m:
            kind, qual = m[1].upper(), m[2]
            qual = qual.upper() if qual.upper().startswith("B") else qual.lower()
            key = kind if qual == "B00" else f"{kind}_{qual}"
        elif m := _OLD_PROBA_RE.search(name):
            key = {"CLD": "CLDPRB", "SNW": "SNWPRB"}[m[1].upper()] + f"_{m[2].lower()}"
        else:
            continue
        # prefer a raster (.jp2) over a vector (.gml) version of the same mask
        if key not in masks or masks[key].lower().endswith(".gml"):
            masks[key] = src.gdal_path(rel)
    return masks


def _spectral_ids(mtd: _Xml) -> dict[str, str]:
    """bandId -> band name, from Spectral_Information (defaults to the standard order)."""
    ids = {str(i): b for i, b in enumerate(SPECTRAL_BANDS)}
    for el in mtd.all("Spectral_Information"):
        bid, phys = _attr(el, "bandId"), _attr(el, "physicalBand")
        name = _band_name(phys) if phys else None
        if bid is not None and name:
            ids[bid] = name
    return ids


def _float(text: str | None, label: str, what: str) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{label}: {what} {text!r} is not a number") from None


def _radiometry(mtd: _Xml, level: str, baseline: str, label: str) -> tuple[float, dict[str, float]]:
    where = f"{label}: {mtd.rel}"
    if level == "L2A":
        q = next((k for k in mtd.index if k.endswith("BOA_QUANTIFICATION_VALUE")), None)
        quant = _float(mtd.text(q) if q else None, where, "BOA_QUANTIFICATION_VALUE")
        offset_tag = "BOA_ADD_OFFSET"
    else:
        quant = _float(mtd.text("QUANTIFICATION_VALUE"), where, "QUANTIFICATION_VALUE")
        offset_tag = "RADIO_ADD_OFFSET"
    if quant is None:
        warnings.warn(f"{where} gives no quantification value; using 10000", stacklevel=3)
        quant = 10000.0
    if quant <= 0:
        raise InputError(f"{where}: quantification value {quant} is not positive")
    ids = _spectral_ids(mtd)
    offsets = dict.fromkeys(SPECTRAL_BANDS, 0.0)
    listed = mtd.all(offset_tag)
    for el in listed:
        band = ids.get(_attr(el, "band_id", "bandId") or "")
        value = _float((el.text or "").strip() or None, where, offset_tag)
        if band and value is not None:
            offsets[band] = value
    if not listed and _baseline_number(baseline) >= 4.0:
        warnings.warn(
            f"{where}: processing baseline {baseline} but no {offset_tag}; assuming -1000",
            stacklevel=3,
        )
        offsets = dict.fromkeys(SPECTRAL_BANDS, -1000.0)
    return quant, offsets


def _baseline_number(baseline: str) -> float:
    try:
        return float(baseline)
    except ValueError:
        return 0.0


def read_safe(path: str | os.PathLike, *, granule: str | None = None) -> SafeProduct:
    """Read the metadata of a Sentinel-2 SAFE product (folder or ``.zip``).

    Parameters
    ----------
    path
        The ``.SAFE`` folder, a ``.zip`` archive of it, or the product metadata file
        (``MTD_MSIL1C.xml``...) inside the folder.
    granule
        Which granule (tile) to describe, for old products holding several: a tile
        code (``"T31TDH"`` or ``"31TDH"``) or a granule folder name. Not needed when
        the product has one granule.

    Returns
    -------
    SafeProduct

    Raises
    ------
    InputError
        ``path`` is not a SAFE product, the zip is corrupt or truncated, the product
        metadata is missing or malformed, or the granule is ambiguous or unknown.
        The message names the product and the problem.
    """
    src, mtd_rel, root = _open_source(Path(path))
    try:
        return _read(src, root, mtd_rel, granule)
    finally:
        src.close()


def _read(src: _Source, given: Path, mtd_rel: str, granule: str | None) -> SafeProduct:
    label = src.label
    mtd = _Xml(src.read(mtd_rel), label, mtd_rel)
    if not re.fullmatch(r"Level-(1C|2Ap?)_User_Product", mtd.kind):
        raise InputError(
            f"{label}: {mtd_rel} is not Sentinel-2 L1C or L2A product metadata (root "
            f"element {mtd.kind!r}, expected Level-1C_User_Product or Level-2A_User_Product)"
        )
    level = "L1C" if "1C" in mtd.kind else "L2A"

    uri = mtd.text("PRODUCT_URI") or ""
    name = re.sub(r"(\.SAFE)?(\.zip)?$", "", uri.rpartition("/")[2], flags=re.I)
    if not name:
        name = re.sub(r"(\.SAFE)?(\.zip)?$", "", given.name, flags=re.I)
    label = f"{label} ({name})" if name and name not in label else label
    where = f"{label}: {mtd_rel}"

    listed = _listed_images(mtd)
    on_disk = _granule_folders(src)
    granules = list(dict.fromkeys([e.granule for e in listed if e.granule] + on_disk))
    for g in mtd.all("Granule") + mtd.all("Granules"):
        gid = _attr(g, "granuleIdentifier")
        if gid and not granules:
            granules.append(gid)
    chosen = _select_granule(src, granules, on_disk, granule)

    tile_rel = _tile_mtd(src, chosen, len(granules))
    tile_xml = _Xml(src.read(tile_rel), label, tile_rel) if tile_rel else None
    if tile_xml is not None and not tile_xml.kind.endswith("Tile_ID"):
        raise InputError(
            f"{label}: {tile_rel} is not Sentinel-2 tile metadata (root element "
            f"{tile_xml.kind!r}, expected Level-1C_Tile_ID or Level-2A_Tile_ID)"
        )
    tile_text = tile_xml.text if tile_xml is not None else (lambda _name: None)

    gid_attr = None
    for g in mtd.all("Granule") + mtd.all("Granules"):
        gid = _attr(g, "granuleIdentifier")
        if gid and (chosen is None or _tile_of(gid) == _tile_of(chosen) or gid == chosen):
            gid_attr = gid
            break
    tile = _tile_of(tile_text("TILE_ID"), chosen, gid_attr, name)
    if tile is None:
        raise InputError(f"{where}: cannot tell the MGRS tile (no TILE_ID nor T##XXX in names)")

    t = mtd.text("DATATAKE_SENSING_START") or mtd.text("PRODUCT_START_TIME")
    if t:
        sensing = _parse_time(t, where, "sensing time")
    elif tile_text("SENSING_TIME"):
        sensing = _parse_time(tile_text("SENSING_TIME"), f"{label}: {tile_rel}", "SENSING_TIME")
    else:
        m = re.search(r"_V(\d{8}T\d{6})", name) or re.search(r"_(\d{8}T\d{6})_", name)
        if not m:
            raise InputError(f"{where}: no sensing time (DATATAKE_SENSING_START)")
        sensing = datetime.strptime(m[1], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)

    craft = mtd.text("SPACECRAFT_NAME") or ""
    m = re.search(r"2([A-D])\b", craft.upper()) or re.match(r"S2([A-D])_", name.upper())
    if not m:
        raise InputError(f"{where}: cannot tell the spacecraft (no SPACECRAFT_NAME)")
    spacecraft = f"Sentinel-2{m[1]}"

    orbit_text = mtd.text("SENSING_ORBIT_NUMBER")
    if orbit_text is None:
        m = re.search(r"_R(\d{3})(?=_)", name)
        orbit_text = m[1] if m else None
    try:
        relative_orbit = int(orbit_text) if orbit_text is not None else None
    except ValueError:
        raise InputError(f"{where}: SENSING_ORBIT_NUMBER {orbit_text!r} is not a number") from None
    if relative_orbit is None:
        raise InputError(f"{where}: no relative orbit (SENSING_ORBIT_NUMBER)")

    baseline = mtd.text("PROCESSING_BASELINE")
    if baseline is None:
        m = re.search(r"_N(\d{2})\.?(\d{2})(?=_|$)", f"{name}_{gid_attr or ''}")
        baseline = f"{m[1]}.{m[2]}" if m else None
    if baseline is None:
        raise InputError(f"{where}: no processing baseline (PROCESSING_BASELINE)")

    cloud = _float(mtd.text("Cloud_Coverage_Assessment"), where, "Cloud_Coverage_Assessment")
    if cloud is None and tile_xml is not None:
        cloud = _float(tile_text("CLOUDY_PIXEL_PERCENTAGE"), label, "CLOUDY_PIXEL_PERCENTAGE")

    quant, offsets = _radiometry(mtd, level, baseline, label)

    crs = tile_text("HORIZONTAL_CS_CODE")
    if crs is None:  # Sentinel-2 tiles are in the UTM zone of their MGRS square
        crs = f"EPSG:{(32600 if tile[2] >= 'N' else 32700) + int(tile[:2])}"

    bands, absent = _collect_bands(src, chosen, listed)
    return SafeProduct(
        path=given,
        name=name,
        level=level,
        spacecraft=spacecraft,
        sensing_time=sensing,
        tile=tile,
        relative_orbit=relative_orbit,
        processing_baseline=baseline,
        cloud_cover=cloud,
        quantification=quant,
        offsets=offsets,
        crs=crs,
        bands=bands,
        masks=_collect_masks(src, chosen),
        granules=tuple(granules),
        absent=absent,
    )


# --------------------------------------------------------------------------- bands


def _split_key(band: str) -> tuple[str, int | None]:
    m = re.fullmatch(r"\s*([A-Za-z0-9]+?)(?:_(\d+)m)?\s*", band)
    name = _band_name(m[1]) if m else None
    if name is None:
        raise InputError(
            f"unknown Sentinel-2 band {band!r}: use one of {', '.join(SPECTRAL_BANDS)}, "
            f"{', '.join(_OTHER_LAYERS)} (optionally with a resolution, e.g. 'B04_60m')"
        )
    return name, int(m[2]) if m[2] else None


def _resolutions(product: SafeProduct, band: str, table: dict[str, str]) -> list[int]:
    return sorted(int(k[len(band) + 1 : -1]) for k in table if re.fullmatch(rf"{band}_\d+m", k))


def _available(product: SafeProduct) -> str:
    names = [b for b in product.bands if "_" not in b]
    if not names:
        return "No band file is present in this product"
    return "Bands present: " + ", ".join(
        f"{b} ({'/'.join(str(r) for r in _resolutions(product, b, product.bands))} m)"
        for b in names
    )


def _iter_absent(product: SafeProduct, band: str, res: int | None) -> Iterator[str]:
    for key, rel in product.absent.items():
        if key.startswith(band + "_") and (res is None or key == f"{band}_{res}m"):
            yield rel


def band_path(product: SafeProduct, band: str, resolution: int | None = None) -> str:
    """GDAL path of a band of ``product``, at the finest resolution present unless given.

    Parameters
    ----------
    product
        From :func:`read_safe`.
    band
        ``"B04"`` (also ``"B4"``, ``"b04"``), ``"B8A"``, ``"SCL"``, ``"TCI"``, ``"AOT"``,
        ``"WVP"``, or a key with a resolution such as ``"B04_60m"``.
    resolution
        Pixel size in metres (10, 20 or 60); None for the finest present.

    Returns
    -------
    str
        A path rasterio/GDAL opens (``/vsizip/...`` for a zipped product).

    Raises
    ------
    InputError
        The band is unknown or absent at that resolution; the message names the
        product, the band, the resolutions of that band present and the other bands.
    """
    name, res_in_key = _split_key(band)
    if resolution is not None and res_in_key is not None and resolution != res_in_key:
        raise InputError(f"band {band!r} contradicts resolution={resolution}")
    res = resolution if resolution is not None else res_in_key
    key = name if res is None else f"{name}_{int(res)}m"
    found = product.bands.get(key)
    if found:
        return found

    what = f"{name}" + (f" at {int(res)} m" if res is not None else "")
    have = _resolutions(product, name, product.bands)
    missing = list(_iter_absent(product, name, res))
    reasons = []
    if have:
        reasons.append(f"{name} is present only at {', '.join(str(r) for r in have)} m")
    if missing:
        reasons.append(
            f"the product metadata lists {', '.join(missing)} but the file is absent "
            "(partial download or extraction?)"
        )
    elif name == "SCL" and product.level == "L1C":
        reasons.append("L1C products have no scene classification (SCL is an L2A layer)")
    elif not have:
        reasons.append(f"the product has no {name} file")
    why = "; ".join(reasons)
    raise InputError(
        f"{product.path} ({product.name}): band {what} is not available: {why}. "
        f"{_available(product)}"
    )


def reflectance(dn: np.ndarray, product: SafeProduct, band: str) -> np.ndarray:
    """Reflectance of a spectral band from its digital numbers.

    ``(dn + offset) / quantification`` as float32, with the offset (``RADIO_ADD_OFFSET``
    or ``BOA_ADD_OFFSET``, -1000 from baseline 04.00) and the quantification value
    (usually 10000) of ``product``. Pixels equal to 0 (no data) become NaN.

    Parameters
    ----------
    dn
        Digital numbers read from the band file.
    product
        The product the band comes from.
    band
        Band name (``"B04"``, ``"B04_60m"``...).

    Returns
    -------
    numpy.ndarray
        float32 array of the shape of ``dn``.

    Raises
    ------
    InputError
        ``band`` is not a spectral band (SCL, TCI, AOT and WVP are not reflectances).
    """
    name, _res = _split_key(band)
    if name not in SPECTRAL_BANDS:
        raise InputError(
            f"{product.name}: {name} is not a spectral band; reflectance applies to "
            f"{', '.join(SPECTRAL_BANDS)}"
        )
    dn = np.asarray(dn)
    offset = np.float32(product.offsets.get(name, 0.0))
    out = (dn.astype(np.float32) + offset) / np.float32(product.quantification)
    out[dn == 0] = np.nan
    return out
