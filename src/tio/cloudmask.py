"""Per-pixel cloud masks of Sentinel-2 products, on any pixel grid.

:func:`cloud_mask` gives, for one :class:`tio.safe.SafeProduct` and one
:class:`tio.stack.Grid`, a boolean array on the grid (True = cloudy or otherwise
unusable) and the name of the layer it came from; :func:`b09_cloudy` is the
original whole-scene TIO rule on the water-vapour band B09.

Which layer is used
-------------------
The first of these the product holds (files found by :func:`tio.safe.read_safe`):

``"SCL"`` (L2A)
    Scene classification of Sen2Cor. Flagged: :data:`SCL_CLOUDY` (3 cloud shadow,
    8 cloud medium probability, 9 cloud high probability, 10 thin cirrus), plus 11
    snow or ice when ``snow=True``, plus :data:`SCL_UNUSABLE` (0 no data, 1 saturated
    or defective): pixels without valid data cannot be correlated either. When one
    SCL file is on the grid's own pixel lattice (same CRS, pixel size and alignment)
    it is read through a window; otherwise the finest SCL present is resampled.
``"MSK_CLASSI"`` (L1C from processing baseline 04.00, also in L2A)
    ``MSK_CLASSI_B00.jp2``, 60 m, three uint8 bands, each 1 = flagged, 0 = not:
    band 1 opaque clouds, band 2 cirrus, band 3 snow and ice (order of the ESA
    Sentinel-2 Products Specification Document, PSD 14.x; it is also what the
    ``MSK_CLASSI_OPAQUE``, ``_CIRRUS``, ``_SNOW_ICE`` layers of Earth Engine follow).
    Checked on the real T29UNU 2022-10-05 product: band-1 pixels are 89 % SCL
    classes 8-9, band-2 pixels are mostly SCL 8-10, and band 3 is rare. Bands 1 and
    2 are flagged, band 3 too when ``snow=True``. This mask has no no-data value
    (0 means "not flagged" as well as "no data"), so the tile's own no-data area
    is *not* flagged: the image reader turns those pixels (DN 0) into NaN anyway.
``"MSK_CLOUDS (GML)"`` (L1C before baseline 04.00)
    ``MSK_CLOUDS_B00.gml``: a GML 3.2 ``eop:Mask`` whose ``eop:MaskFeature``
    polygons (``maskType`` OPAQUE or CIRRUS, both flagged) are pixel outlines in the
    tile CRS. They are parsed with :mod:`xml.etree.ElementTree` and burnt onto the
    grid with :func:`rasterio.features.rasterize` (a pixel is flagged when its centre
    is inside a polygon). A file with no feature means no cloud. There is no snow
    layer in this format, so ``snow`` has no effect.

A product with none of them gives None.

Resampling and reading
----------------------
Masks are categorical, so they are resampled with nearest neighbour only, through
a GDAL :class:`~rasterio.vrt.WarpedVRT` on the grid: GDAL reads only the blocks
that cover the grid. Files are opened with ``OVERVIEW_LEVEL=NONE`` so that the
reduced-resolution levels of a JPEG 2000 file (wavelet averages, meaningless for
class numbers) are never used. Pixels of the grid outside the product's tile are
flagged (there is nothing to correlate there).
"""

from __future__ import annotations

import re
import warnings
import xml.etree.ElementTree as ET
import zipfile

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import CRSError, NotGeoreferencedWarning, RasterioError, WindowError
from rasterio.features import rasterize
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_geom
from rasterio.windows import Window, from_bounds
from shapely.geometry import Polygon, box, mapping, shape

from .errors import InputError
from .safe import SafeProduct
from .stack import Grid, _window_on

__all__ = [
    "CLASSI_BANDS",
    "SCL_CLOUDY",
    "SCL_SNOW",
    "SCL_UNUSABLE",
    "b09_cloudy",
    "cloud_mask",
]

#: SCL classes always flagged as cloud: cloud shadow, cloud medium probability, cloud
#: high probability, thin cirrus.
SCL_CLOUDY: tuple[int, ...] = (3, 8, 9, 10)
#: SCL class of snow and ice, flagged only with ``snow=True``.
SCL_SNOW = 11
#: SCL classes without valid data, always flagged: no data, saturated or defective.
SCL_UNUSABLE: tuple[int, ...] = (0, 1)
#: Meaning of the bands of MSK_CLASSI_B00.jp2, in file order (band 1, 2, 3).
CLASSI_BANDS: tuple[str, ...] = ("opaque clouds", "cirrus", "snow and ice")

_SRS_RE = re.compile(r"EPSG\D*(?:[\d.]+\D+)?(\d{4,5})\s*$", re.I)


# --------------------------------------------------------------------------- public


def cloud_mask(
    product: SafeProduct, grid: Grid, *, snow: bool = False
) -> tuple[np.ndarray, str] | None:
    """Cloud mask of ``product`` on ``grid``.

    Parameters
    ----------
    product
        From :func:`tio.safe.read_safe`.
    grid
        The pixel grid of the output (it must have a CRS).
    snow
        Also flag snow and ice (SCL class 11, band 3 of MSK_CLASSI).

    Returns
    -------
    (mask, source) or None
        ``mask`` is a boolean array of ``grid.shape``, True where the pixel is cloud,
        cloud shadow, no data (SCL) or outside the tile; ``source`` names the layer
        used: ``"SCL"``, ``"MSK_CLASSI"`` or ``"MSK_CLOUDS (GML)"``. None when the
        product holds no per-pixel cloud mask. See the module documentation.

    Raises
    ------
    InputError
        The grid has no CRS, or a mask file cannot be read or parsed (the message
        names the file).
    """
    grid_crs = _grid_crs(product, grid)
    scl = _pick_scl(product, grid, grid_crs)
    if scl is not None:
        data, inside = _read_mask(scl, grid, grid_crs, bands=[1])
        flagged = SCL_UNUSABLE + SCL_CLOUDY + ((SCL_SNOW,) if snow else ())
        return np.isin(data[0], flagged) | ~inside, "SCL"

    classi = product.masks.get("CLASSI")
    if classi is not None:
        bands = [1, 2, 3] if snow else [1, 2]
        data, inside = _read_mask(classi, grid, grid_crs, bands=bands, need=3)
        return (data != 0).any(axis=0) | ~inside, "MSK_CLASSI"

    clouds = product.masks.get("CLOUDS")
    if clouds is not None:
        if clouds.lower().endswith(".gml"):
            return _gml_mask(clouds, product, grid, grid_crs), "MSK_CLOUDS (GML)"
        data, inside = _read_mask(clouds, grid, grid_crs, bands=None)  # a raster version
        return (data != 0).any(axis=0) | ~inside, "MSK_CLOUDS"
    return None


def scl_mask(path: str, grid: Grid, *, snow: bool = False) -> np.ndarray:
    """Cloud mask on ``grid`` from a scene classification raster alone (a STAC ``SCL`` asset).

    True where SCL flags cloud, cloud shadow, no data (and snow with ``snow``) or
    where the file does not cover the grid. Only the blocks over the grid are read.

    Raises
    ------
    InputError
        The grid has no CRS, or the file cannot be read (the message names it).
    """
    if grid.crs is None:
        raise InputError(f"{path}: a cloud mask needs a georeferenced grid")
    data, inside = _read_mask(path, grid, CRS.from_user_input(grid.crs), bands=[1])
    flagged = SCL_UNUSABLE + SCL_CLOUDY + ((SCL_SNOW,) if snow else ())
    return np.isin(data[0], flagged) | ~inside


def b09_cloudy(
    product: SafeProduct, grid: Grid, *, threshold: float = 1200.0
) -> tuple[bool, float]:
    """The original TIO cloud rule: mean of band B09 over the grid's area above ``threshold``.

    B09 (945 nm, water vapour, 60 m) is bright over clouds. The mean is taken over
    the B09 pixels whose centre is inside the grid's footprint (in the band's own
    CRS, read through a window, not resampled), leaving out no-data pixels (DN 0).
    It is expressed in the digital numbers of 2017, i.e. after adding the product's
    B09 offset (-1000 from processing baseline 04.00) and rescaling to a
    quantification value of 10000, so that the historical threshold of 1200 keeps
    its meaning. For L2A products the values are Sen2Cor's B09, not top-of-atmosphere.

    Returns
    -------
    (cloudy, mean)
        ``cloudy`` is ``mean > threshold``. When the grid holds no valid B09 pixel
        (outside the tile or in its no-data area) the date is unusable:
        ``(True, nan)``.

    Raises
    ------
    InputError
        B09 is absent from the product, cannot be read, or the grid has no CRS.
    """
    path = product.bands.get("B09")
    if path is None:
        raise InputError(
            f"{product.path} ({product.name}): band B09 is absent, so the B09 cloud rule "
            "cannot be applied (use cloud_mask or keep B09 when downloading)"
        )
    grid_crs = _grid_crs(product, grid)
    with _open(path) as src:
        if src.crs is None:
            raise InputError(f"{path}: no georeferencing")
        area = box(*grid.bounds).segmentize(max(abs(grid.transform.a), 1.0) * 16)
        if src.crs != grid_crs:
            area = shape(transform_geom(grid_crs, src.crs, mapping(area)))
        full = Window(0, 0, src.width, src.height)
        try:
            w = from_bounds(*area.bounds, src.transform)
            c0, r0 = int(np.floor(w.col_off)), int(np.floor(w.row_off))
            c1 = int(np.ceil(w.col_off + w.width))
            r1 = int(np.ceil(w.row_off + w.height))
            win = Window(c0, r0, max(c1 - c0, 1), max(r1 - r0, 1)).intersection(full)
        except WindowError:
            return True, float("nan")
        try:
            dn = src.read(1, window=win)
        except RasterioError as exc:
            raise InputError(f"{path}: cannot read band B09 ({exc})") from None
        wt = src.window_transform(win)
    inside = rasterize([(mapping(area), 1)], out_shape=dn.shape, transform=wt, dtype="uint8")
    if not inside.any():  # grid smaller than a B09 pixel
        inside = rasterize(
            [(mapping(area), 1)], out_shape=dn.shape, transform=wt, dtype="uint8", all_touched=True
        )
    values = dn[(inside > 0) & (dn != 0)].astype(np.float64)
    if values.size == 0:
        return True, float("nan")
    offset = float(product.offsets.get("B09", 0.0))
    mean = (float(values.mean()) + offset) * 10000.0 / float(product.quantification)
    return bool(mean > threshold), mean


# --------------------------------------------------------------------------- rasters


def _grid_crs(product: SafeProduct, grid: Grid) -> CRS:
    if not grid.crs:
        raise InputError(
            f"{product.name}: the grid has no CRS, so the cloud mask of a georeferenced "
            "product cannot be placed on it"
        )
    try:
        return CRS.from_user_input(grid.crs)
    except CRSError as exc:
        raise InputError(f"{product.name}: the grid's CRS is not valid ({exc})") from None


def _open(path: str):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            # no reduced-resolution level: JPEG 2000 ones are wavelet averages of classes
            return rasterio.open(path, OVERVIEW_LEVEL="NONE")
    except RasterioError as exc:
        raise InputError(f"{path}: cannot open the file ({exc})") from None


def _lattice_window(src, grid: Grid, grid_crs: CRS) -> Window | None:
    """Window of ``src`` that is exactly ``grid``, or None (other CRS, size, alignment)."""
    if src.crs is None or src.crs != grid_crs:
        return None
    same = Grid(src.crs.to_wkt(), grid.transform, grid.shape)  # CRS spelled as src's
    return _window_on(src, same)


def _pick_scl(product: SafeProduct, grid: Grid, grid_crs: CRS) -> str | None:
    """SCL file on the grid's lattice if any, else the finest SCL present (None if none)."""
    keyed = {
        int(m[1]): path
        for key, path in product.bands.items()
        if (m := re.fullmatch(r"SCL_(\d+)m", key))
    }
    if not keyed:
        return product.bands.get("SCL")
    res = abs(grid.transform.a)
    for r, path in keyed.items():
        if np.isclose(r, res):
            with _open(path) as src:
                if _lattice_window(src, grid, grid_crs) is not None:
                    return path
    return keyed[min(keyed)]


def _read_mask(
    path: str, grid: Grid, grid_crs: CRS, *, bands: list[int] | None, need: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Bands of a mask file on ``grid`` (nearest neighbour) and where the file covers it.

    Returns ``(data, inside)``: uint8 ``(len(bands), rows, cols)`` (0 outside the file)
    and boolean ``(rows, cols)``.
    """
    rows, cols = grid.shape
    with _open(path) as src:
        if src.count < need:
            raise InputError(
                f"{path}: {src.count} band(s), expected {need} "
                f"({', '.join(CLASSI_BANDS)}): not a valid MSK_CLASSI file"
            )
        if src.crs is None:
            raise InputError(f"{path}: the mask has no georeferencing")
        idx = list(bands) if bands is not None else list(range(1, src.count + 1))
        try:
            win = _lattice_window(src, grid, grid_crs)
            if win is not None:  # same lattice: plain windowed read of the part inside
                data = np.zeros((len(idx), rows, cols), dtype="uint8")
                inside = np.zeros((rows, cols), dtype=bool)
                try:
                    part = win.intersection(Window(0, 0, src.width, src.height))
                except WindowError:
                    return data, inside
                r0, c0 = int(part.row_off - win.row_off), int(part.col_off - win.col_off)
                h, w = int(part.height), int(part.width)
                data[:, r0 : r0 + h, c0 : c0 + w] = src.read(idx, window=part)
                inside[r0 : r0 + h, c0 : c0 + w] = True
                return data, inside
            with WarpedVRT(
                src,
                crs=grid_crs,
                transform=grid.transform,
                width=cols,
                height=rows,
                resampling=Resampling.nearest,
                add_alpha=True,
            ) as vrt:
                data = vrt.read(idx).astype("uint8", copy=False)
                inside = vrt.read(vrt.count) > 0
                return data, inside
        except RasterioError as exc:
            raise InputError(f"{path}: cannot read the mask ({exc})") from None


# --------------------------------------------------------------------------- GML


def _local(tag) -> str:
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


def _read_bytes(path: str) -> bytes:
    """Bytes of a file, or of a ``/vsizip/{archive}.zip/{member}`` path of read_safe."""
    try:
        if path.startswith("/vsizip/"):
            rest = path[len("/vsizip/") :]
            m = re.search(r"\.zip/", rest, re.I)
            if m is None:
                raise InputError(f"{path}: cannot tell the zip archive in this path")
            with zipfile.ZipFile(rest[: m.end() - 1]) as zf:
                return zf.read(rest[m.end() :])
        with open(path, "rb") as f:
            return f.read()
    except (OSError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{path}: cannot read the cloud mask ({exc})") from None


def _ring(el: ET.Element, path: str) -> list[tuple[float, float]]:
    """Coordinates of a gml:LinearRing (posList, or a list of gml:pos)."""
    pos_list = [e for e in el.iter() if _local(e.tag) == "posList"]
    if pos_list:
        dim = int(pos_list[0].get("srsDimension") or 2)
        text = pos_list[0].text or ""
    else:
        poss = [e for e in el.iter() if _local(e.tag) == "pos"]
        dim = int(poss[0].get("srsDimension") or 2) if poss else 2
        text = " ".join(e.text or "" for e in poss)
    try:
        values = [float(v) for v in text.split()]
    except ValueError:
        raise InputError(f"{path}: a polygon has non-numeric coordinates") from None
    if dim < 2 or len(values) % dim or len(values) < 3 * dim:
        raise InputError(f"{path}: a polygon ring has {len(values)} coordinates (dimension {dim})")
    return [(values[i], values[i + 1]) for i in range(0, len(values), dim)]


def _gml_polygons(data: bytes, path: str) -> tuple[list[Polygon], str | None]:
    """Polygons of all eop:MaskFeature elements and the srsName found (or None)."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise InputError(f"{path}: not a valid GML cloud mask ({exc})") from None
    if _local(root.tag) not in ("Mask", "FeatureCollection"):
        raise InputError(
            f"{path}: not a Sentinel-2 GML cloud mask (root element {_local(root.tag)!r}, "
            "expected eop:Mask)"
        )
    srs = next(
        (v for e in root.iter() for k, v in e.attrib.items() if _local(k) == "srsName"), None
    )
    polygons = []
    for feature in root.iter():
        if _local(feature.tag) != "MaskFeature":
            continue
        for poly in feature.iter():
            if _local(poly.tag) != "Polygon":
                continue
            exterior, holes = None, []
            for part in poly:
                rings = [e for e in part.iter() if _local(e.tag) == "LinearRing"]
                if not rings:
                    continue
                if _local(part.tag) == "exterior":
                    exterior = _ring(rings[0], path)
                elif _local(part.tag) == "interior":
                    holes.append(_ring(rings[0], path))
            if exterior is None:
                raise InputError(f"{path}: a cloud polygon has no exterior ring")
            polygons.append(Polygon(exterior, holes))
    return polygons, srs


def _gml_mask(path: str, product: SafeProduct, grid: Grid, grid_crs: CRS) -> np.ndarray:
    polygons, srs = _gml_polygons(_read_bytes(path), path)
    mask = np.zeros(grid.shape, dtype=bool)
    if polygons:
        src_crs = _gml_crs(srs, product, path)
        geoms = [mapping(p) for p in polygons]
        if src_crs != grid_crs:
            geoms = transform_geom(src_crs, grid_crs, geoms)
        burnt = rasterize(
            [(g, 1) for g in geoms], out_shape=grid.shape, transform=grid.transform, dtype="uint8"
        )
        mask |= burnt > 0
    return mask | ~_tile_footprint(product, grid, grid_crs)


def _gml_crs(srs: str | None, product: SafeProduct, path: str) -> CRS:
    text = srs if srs else product.crs
    m = _SRS_RE.search(text or "")
    try:
        if m:
            return CRS.from_epsg(int(m[1]))
        if text:
            return CRS.from_user_input(text)
    except CRSError:
        pass
    raise InputError(f"{path}: cannot tell the CRS of the cloud polygons (srsName {srs!r})")


def _tile_footprint(product: SafeProduct, grid: Grid, grid_crs: CRS) -> np.ndarray:
    """Pixels of ``grid`` inside the product's tile (all True if no band tells its extent)."""
    path = next((p for k, p in product.bands.items() if "_" not in k), None)
    if path is None:
        return np.ones(grid.shape, dtype=bool)
    with _open(path) as src:
        if src.crs is None:
            return np.ones(grid.shape, dtype=bool)
        step = abs(src.transform.a) * 16
        tile = mapping(box(*src.bounds).segmentize(step))
        if src.crs != grid_crs:
            tile = transform_geom(src.crs, grid_crs, tile)
    inside = rasterize([(tile, 1)], out_shape=grid.shape, transform=grid.transform, dtype="uint8")
    return inside > 0
