"""Correct each pair's displacement maps before the inversion.

A correlation map between two optical images carries a misregistration of the
whole image (several metres for Sentinel-2), sometimes a long-wavelength ramp,
and, for Sentinel-2, steps along the boundaries of the 12 staggered detectors
(along-track stripes). All are estimated on **stable ground** only, so that the
moving area does not bias them, and removed from the whole map.

Per pair, :func:`correct_pair` and, for a whole network, :func:`correct_pairs`:

1. **Outlier filtering** (values become NaN, counts kept in the record):
   correlation score below ``min_score``; displacement farther than
   ``max_displacement`` from the map's median; isolated vectors that disagree
   with their 3 x 3 neighbours (local vector-median filter: the normalised
   median test of Westerweel & Scarano 2005, Exp. Fluids 39:1096).
2. **Stable ground**: a user mask (:func:`read_stable_mask`, raster or vector
   file) or, by default, chosen automatically by :func:`auto_stable`: pixels of
   high correlation score whose residual displacement, after the current
   correction, is small in (nearly) every pair, refined iteratively.
3. **Corrections**, each on or off, fitted jointly and robustly (iteratively
   re-weighted least absolute deviations) on stable ground, per component:
   offset (the median), plane (ramp), and per-detector offsets (stripes).
   Detector footprints come from the products' ``MSK_DETFOO`` masks
   (:func:`detector_footprints`) or, without them, from the stripe geometry:
   boundaries parallel to the Sentinel-2 ground track, found as significant
   steps in the across-track profile of the residual (:func:`stripe_labels`).

Each returns the corrected Dataset and a record of what was removed, which the
pipeline writes to ``pairs/corrections.csv``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from .errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "auto_stable",
    "correct_pair",
    "correct_pairs",
    "detector_footprints",
    "fit_corrections",
    "iter_corrected",
    "median_test",
    "outlier_mask",
    "read_stable_mask",
    "robust_plane",
    "stripe_labels",
    "track_heading",
]


# --------------------------------------------------------------------------- outliers


def median_test(
    ew: np.ndarray, ns: np.ndarray, *, eps: float, threshold: float = 2.0
) -> np.ndarray:
    """Offsets that fail the normalised median test against their 3 x 3 neighbours.

    For each component, ``r = |u - m| / (rm + eps)`` where ``m`` is the median of
    the 8 neighbours and ``rm`` the median of their absolute deviations from
    ``m`` (Westerweel & Scarano 2005). A vector fails when ``r > threshold`` for
    either component, or when fewer than 3 of its neighbours are valid (an
    isolated value cannot be checked). ``eps`` (same unit as the offsets) is the
    noise floor, typically 0.1 pixel. Returns a boolean array, True = reject.
    Compiled (:mod:`tio._filters_jit`); ``_median_test_numpy`` is the numpy
    version it reproduces.
    """
    from ._filters_jit import median_test as kernel

    return kernel(
        np.ascontiguousarray(ew, dtype="float64"),
        np.ascontiguousarray(ns, dtype="float64"),
        float(eps),
        float(threshold),
    )


def _median_test_numpy(
    ew: np.ndarray, ns: np.ndarray, *, eps: float, threshold: float = 2.0
) -> np.ndarray:
    """:func:`median_test` in numpy (the reference of the compiled kernel)."""
    from numpy.lib.stride_tricks import sliding_window_view

    bad = np.zeros(ew.shape, dtype=bool)
    for v in (ew, ns):
        pad = np.pad(v.astype("float64"), 1, mode="constant", constant_values=np.nan)
        win = sliding_window_view(pad, (3, 3)).reshape(*v.shape, 9).copy()
        win[..., 4] = np.nan  # the centre is not its own neighbour
        n_valid = np.isfinite(win).sum(axis=-1)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN neighbourhoods
            med = np.nanmedian(win, axis=-1)
            spread = np.nanmedian(np.abs(win - med[..., None]), axis=-1)
            r = np.abs(v - med) / (spread + eps)
        bad |= (r > threshold) | (n_valid < 3)
    return bad & np.isfinite(ew) & np.isfinite(ns)


def outlier_mask(
    ds: xr.Dataset,
    *,
    min_score: float = 0.4,
    max_displacement: float | None = None,
    outlier_test: bool = True,
    outlier_threshold: float = 2.0,
    pixel_size: float = 1.0,
) -> tuple[np.ndarray, dict]:
    """Values to discard (True) and how many each filter removed.

    ``max_displacement`` (map units) is measured from the map's median vector, so
    that the misregistration does not count as motion.
    """
    ew = ds["ew"].values.astype("float64")
    ns = ds["ns"].values.astype("float64")
    finite = np.isfinite(ew) & np.isfinite(ns)
    bad = ~finite | ~(ds["score"].values >= min_score)
    counts = {"low_score": int((bad & finite).sum()), "too_large": 0, "outliers": 0}
    if max_displacement is not None and (~bad).any():
        me, mn = np.median(ew[~bad]), np.median(ns[~bad])
        with np.errstate(invalid="ignore"):
            big = ~bad & (np.hypot(ew - me, ns - mn) > max_displacement)
        counts["too_large"] = int(big.sum())
        bad |= big
    if outlier_test:
        rejected = median_test(
            np.where(bad, np.nan, ew),
            np.where(bad, np.nan, ns),
            eps=0.1 * pixel_size,
            threshold=outlier_threshold,
        )
        counts["outliers"] = int(rejected.sum())
        bad |= rejected
    counts["valid_fraction"] = float(1 - bad.mean())
    return bad, counts


# --------------------------------------------------------------------------- fitting


def robust_plane(values: np.ndarray, x: np.ndarray, y: np.ndarray, n_iter: int = 4):
    """Plane ``a + b*x + c*y`` fitted to finite ``values``, trimming outliers at 3 MAD.

    ``x`` and ``y`` are 1-D coordinates (broadcast against ``values``). Returns
    ``(a, b, c)``, with x and y centred on their means, so ``a`` is the value at
    the map centre; None when fewer than 10 finite values remain.
    """
    xx, yy = np.meshgrid(x - x.mean(), y - y.mean())
    keep = np.isfinite(values)
    coef = None
    for _ in range(n_iter):
        if keep.sum() < 10:
            return coef
        a = np.column_stack([np.ones(keep.sum()), xx[keep], yy[keep]])
        coef, *_ = np.linalg.lstsq(a, values[keep], rcond=None)
        resid = values - (coef[0] + coef[1] * xx + coef[2] * yy)
        mad = np.nanmedian(np.abs(resid[keep]))
        keep = np.isfinite(values) & (np.abs(resid) <= 3 * 1.4826 * mad + 1e-12)
    return tuple(float(c) for c in coef)


def _l1_fit(a: np.ndarray, y: np.ndarray, n_iter: int = 30) -> np.ndarray:
    """Least absolute deviations by iteratively re-weighted least squares; values
    farther than 5 robust sigmas get no weight."""
    beta, *_ = np.linalg.lstsq(a, y, rcond=None)
    for _ in range(n_iter):
        r = y - a @ beta
        s = 1.4826 * np.median(np.abs(r)) + 1e-12
        w = 1.0 / np.maximum(np.abs(r), 0.02 * s)
        w[np.abs(r) > 5 * s] = 0.0
        sw = np.sqrt(w)
        new, *_ = np.linalg.lstsq(a * sw[:, None], y * sw, rcond=None)
        if np.max(np.abs(new - beta)) < 1e-7 * (1 + np.max(np.abs(beta))):
            beta = new
            break
        beta = new
    return beta


def fit_corrections(
    v: np.ndarray,
    use: np.ndarray,
    xx: np.ndarray,
    yy: np.ndarray,
    *,
    median: bool = True,
    ramp: bool = False,
    labels: np.ndarray | None = None,
    min_per_label: int = 20,
) -> tuple[np.ndarray, dict]:
    """Model of one component's bias, fitted on ``use`` (stable, valid) pixels.

    The model is ``offset + b*xx + c*yy + s[label]`` with only the enabled terms;
    ``xx``, ``yy`` are centred coordinates (map units). The terms are fitted
    jointly by least absolute deviations; the offset is then the median over
    ``use`` of what the other terms leave, and the stripe offsets ``s`` have a
    median of zero over ``use`` (so the offset stays the map's misregistration).
    Labels with fewer than ``min_per_label`` stable pixels get no stripe offset.

    Returns the model (NaN-free, same shape as ``v``) and ``{"offset": float,
    "ramp": (b, c) | None, "stripes": {label: offset}}``.
    """
    model = np.zeros(v.shape, dtype="float64")
    rec: dict = {"offset": 0.0, "ramp": None, "stripes": {}}
    use = use & np.isfinite(v)
    if use.sum() < 10:
        return model, rec
    y = v[use].astype("float64")
    cols = [np.ones(y.size)]
    names: list = ["1"]
    if ramp:
        cols += [xx[use], yy[use]]
        names += ["x", "y"]
    stripe_labels: list = []
    if labels is not None:
        lab_use = labels[use]
        found, counts = np.unique(lab_use, return_counts=True)
        stripe_labels = [int(k) for k, c in zip(found, counts, strict=True) if c >= min_per_label]
        for k in stripe_labels[1:]:  # the first is the reference (intercept)
            cols.append((lab_use == k).astype("float64"))
            names.append(("s", k))
    a = np.column_stack(cols)
    beta = _l1_fit(a, y) if a.shape[1] > 1 else np.array([np.median(y)])
    coef = dict(zip(names, beta, strict=True))
    if ramp:
        rec["ramp"] = (float(coef["x"]), float(coef["y"]))
        model += coef["x"] * xx + coef["y"] * yy
    if len(stripe_labels) > 1:
        s = np.zeros(v.shape)
        for k in stripe_labels[1:]:
            s[labels == k] = coef[("s", k)]
        centre = float(np.median(s[use]))
        s[np.isin(labels, stripe_labels)] -= centre
        rec["stripes"] = {k: float(s[labels == k].flat[0]) for k in stripe_labels}
        model += s
    offset = float(np.median(y - model[use]))
    if median:
        rec["offset"] = offset
        model += offset
    return model, rec


# --------------------------------------------------------------------------- stripes


def track_heading(crs, transform: Sequence[float], shape: tuple[int, int]) -> float | None:
    """Heading of the descending Sentinel-2 ground track over a grid, in radians
    clockwise from the grid's north (about -165 degrees, i.e. towards south-south-west,
    at mid-latitudes). None without a CRS.

    From the orbit (sun-synchronous, inclination 98.62 degrees, altitude 786 km):
    the inertial ground velocity has an east component ``V cos(i) / cos(lat)``,
    minus the Earth's rotation ``omega R cos(lat)``; the grid convergence is
    taken from the CRS.
    """
    if not crs:
        return None
    from pyproj import CRS, Transformer

    crs = CRS.from_user_input(crs)
    rows, cols = shape
    a, b, c, d, e, f = transform[:6]
    xc, yc = c + a * cols / 2 + b * rows / 2, f + d * cols / 2 + e * rows / 2
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    to_grid = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    lon, lat = to_ll.transform(xc, yc)
    phi = math.radians(lat)
    v_ground = 7.45 * 6371.0 / (6371.0 + 786.0)  # km/s at the ground
    ve_inertial = v_ground * math.cos(math.radians(98.62)) / max(math.cos(phi), 0.15)
    ve_inertial = max(-v_ground, min(v_ground, ve_inertial))
    vn = -math.sqrt(max(v_ground**2 - ve_inertial**2, 0.0))  # descending: southward
    ve = ve_inertial - 0.4651 * math.cos(phi)
    heading_true = math.atan2(ve, vn)
    # grid convergence: direction of true north in grid coordinates
    x1, y1 = to_grid.transform(lon, lat + 0.01)
    conv = math.atan2(x1 - xc, y1 - yc)
    return heading_true + conv


def stripe_labels(
    resid: Sequence[np.ndarray],
    use: np.ndarray,
    xx: np.ndarray,
    yy: np.ndarray,
    heading: float,
    *,
    spacing: float,
    min_edge: float = 1500.0,
    min_gap: float = 15000.0,
    min_step: float = 0.0,
    z: float = 8.0,
) -> tuple[np.ndarray, list[float]]:
    """Detector bands from the stripe geometry when no footprint mask is known.

    Detector boundaries run along the ground track (``heading``, radians from grid
    north). The residual components ``resid`` are profiled across track on
    ``use`` pixels and split by binary segmentation where a step is significant
    (``z`` standard errors and above ``min_step`` in either component), at least
    ``min_edge`` (map units) from the edges of the data and ``min_gap`` from
    another boundary (detectors are about 25 km wide). Returns integer labels
    (0, 1, ...) on the grid and the across-track positions of the boundaries.
    """
    u = xx * math.cos(heading) - yy * math.sin(heading)
    labels = np.zeros(xx.shape, dtype=np.int32)
    ok = use & np.all([np.isfinite(r) for r in resid], axis=0)
    if ok.sum() < 50:
        return labels, []
    bins = np.floor((u[ok] - u[ok].min()) / spacing).astype(int)
    nb = int(bins.max()) + 1
    n = np.bincount(bins, minlength=nb).astype(float)
    sums = [np.bincount(bins, weights=r[ok], minlength=nb) for r in resid]
    sig = [1.4826 * np.median(np.abs(r[ok] - np.median(r[ok]))) + 1e-12 for r in resid]
    u0 = float(u[ok].min())
    edges_u: list[float] = []

    def split(lo: int, hi: int) -> None:
        cn = np.cumsum(n[lo:hi])
        tot = cn[-1]
        css = [np.cumsum(s_arr[lo:hi]) for s_arr in sums]
        pos = (lo + 1 + np.arange(len(cn) - 1)) * spacing
        n1 = cn[:-1]
        n2 = tot - n1
        ok = (pos - lo * spacing >= min_edge) & (hi * spacing - pos >= min_edge)
        ok &= (n1 >= 20) & (n2 >= 20)
        for e in edges_u_rel:
            ok &= np.abs(pos - e) >= min_gap
        stat = np.zeros(len(pos))
        big = np.zeros(len(pos), bool)
        with np.errstate(all="ignore"):
            for cs, sg in zip(css, sig, strict=True):
                step = cs[:-1] / n1 - (cs[-1] - cs[:-1]) / n2
                stat += (step / (sg * np.sqrt(1 / n1 + 1 / n2))) ** 2
                big |= np.abs(step) > min_step
        stat = np.where(ok & big & np.isfinite(stat), stat, 0.0)
        k = int(np.argmax(stat)) if stat.size else 0
        best, best_k = (float(stat[k]), lo + k + 1) if stat.size and stat[k] > 0 else (0.0, None)
        if best_k is None or math.sqrt(best) < z:
            return
        edges_u_rel.append(best_k * spacing)
        split(lo, best_k)
        split(best_k, hi)

    edges_u_rel: list[float] = []
    split(0, nb)
    edges_u = sorted(u0 + e for e in edges_u_rel)
    labels[:] = np.searchsorted(np.asarray(edges_u), u, side="right")
    return labels, edges_u


def detector_footprints(scene, grid) -> np.ndarray | None:
    """Detector number (1-12, 0 outside) of each pixel of ``grid`` from the scene's
    ``MSK_DETFOO`` mask for its band (JPEG 2000 raster from baseline 04.00, GML
    polygons before), or None when the scene has no such mask."""
    product = getattr(scene, "product", None)
    if product is None:
        return None
    import re

    band = None
    m = re.search(r"_(B(?:0[1-9]|1[0-2]|8A))(?:_\d+m)?\.jp2$", scene.path, re.I)
    if m:
        band = m[1].upper()
    key = f"DETFOO_{band}" if band else None
    path = product.masks.get(key) if key else None
    if path is None:
        path = next((p for k, p in sorted(product.masks.items()) if k.startswith("DETFOO")), None)
    if path is None:
        return None
    from rasterio.crs import CRS

    from .cloudmask import _read_mask

    crs = CRS.from_user_input(grid.crs)
    if path.lower().endswith((".gml", ".xml")):
        return _gml_detectors(path, product, grid, crs)
    data, _inside = _read_mask(path, grid, crs, bands=[1])
    return data[0]


def _gml_detectors(path: str, product, grid, crs) -> np.ndarray:
    """Detector numbers from a GML ``MSK_DETFOO`` (features with gml:id
    ``detector_footprint-B04-03-0``: detector 03)."""
    import re
    import xml.etree.ElementTree as ET

    from rasterio.features import rasterize
    from rasterio.warp import transform_geom
    from shapely.geometry import Polygon, mapping

    from .cloudmask import _gml_crs, _local, _read_bytes, _ring

    try:
        root = ET.fromstring(_read_bytes(path))
    except ET.ParseError as exc:
        raise InputError(f"{path}: not a valid GML detector footprint ({exc})") from None
    srs = next(
        (v for e in root.iter() for k, v in e.attrib.items() if _local(k) == "srsName"), None
    )
    shapes = []
    for feat in root.iter():
        if _local(feat.tag) != "MaskFeature":
            continue
        fid = next((v for k, v in feat.attrib.items() if _local(k) == "id"), "")
        m = re.search(r"-(\d{1,2})-\d+$", fid) or re.search(r"(\d{1,2})\D*$", fid)
        if not m:
            continue
        det = int(m[1])
        for ring in feat.iter():
            if _local(ring.tag) == "LinearRing":
                shapes.append((mapping(Polygon(_ring(ring, path))), det))
                break
    out = np.zeros(grid.shape, dtype="uint8")
    if shapes:
        src_crs = _gml_crs(srs, product, path)
        if src_crs != crs:
            shapes = [(transform_geom(src_crs, crs, g), d) for g, d in shapes]
        out = rasterize(shapes, out_shape=grid.shape, transform=grid.transform, dtype="uint8")
    return out


# --------------------------------------------------------------------------- stable ground


def read_stable_mask(path: str | Path, like: xr.Dataset, *, moving: bool = False) -> np.ndarray:
    """A stable-ground mask on the grid of the pair map ``like`` (True = stable).

    ``path`` is a raster (any GDAL format; non-zero = stable; nearest neighbour
    onto the grid, in the raster's CRS) or a vector file (GeoJSON, in lon/lat
    unless it names a CRS; inside the polygons = stable). With ``moving`` the
    file marks the moving area instead and stable ground is everything else.
    Pixels outside a raster's extent count as not stable.
    """
    import json

    import rasterio
    from rasterio.crs import CRS
    from rasterio.errors import RasterioError
    from rasterio.warp import Resampling, reproject, transform_geom

    path = Path(path)
    ny, nx = like.sizes["y"], like.sizes["x"]
    # the map's grid: pixel centres at x, y
    x, y = like["x"].values, like["y"].values
    dx = float(x[1] - x[0]) if nx > 1 else float(like.attrs["transform"][0])
    dy = float(y[1] - y[0]) if ny > 1 else float(like.attrs["transform"][4])
    from affine import Affine

    transform = Affine(dx, 0, x[0] - dx / 2, 0, dy, y[0] - dy / 2)
    dst_crs = CRS.from_user_input(like.attrs["crs"]) if like.attrs.get("crs") else None
    if path.suffix.lower() in {".geojson", ".json"}:
        from rasterio.features import rasterize
        from shapely.geometry import mapping, shape

        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(
                f"stable-ground mask {path}: cannot read it as GeoJSON ({exc})"
            ) from None
        if data.get("type") == "FeatureCollection":
            geoms = [f["geometry"] for f in data.get("features", []) if f.get("geometry")]
        elif data.get("type") == "Feature":
            geoms = [data["geometry"]]
        else:
            geoms = [data]
        name = (data.get("crs") or {}).get("properties", {}).get("name")
        src_crs = CRS.from_user_input(name) if name else CRS.from_epsg(4326)
        geoms = [mapping(shape(g)) for g in geoms]
        if dst_crs is not None and src_crs != dst_crs:
            geoms = [transform_geom(src_crs, dst_crs, g) for g in geoms]
        inside = (
            rasterize([(g, 1) for g in geoms], out_shape=(ny, nx), transform=transform) > 0
            if geoms
            else np.zeros((ny, nx), bool)
        )
    else:
        try:
            with rasterio.open(path) as src:
                dst = np.full((ny, nx), 255, dtype="uint8")
                band = src.read(1, masked=True)
                arr = np.where(band.mask, 255, (band.filled(0) != 0)).astype("uint8")
                # without any CRS (pixel units) both grids are taken as the same plane
                plane = src.crs or dst_crs or CRS.from_epsg(3857)
                reproject(
                    arr,
                    dst,
                    src_transform=src.transform,
                    src_crs=plane,
                    dst_transform=transform,
                    dst_crs=dst_crs or plane,
                    src_nodata=255,
                    dst_nodata=255,
                    resampling=Resampling.nearest,
                )
        except (RasterioError, OSError) as exc:
            raise InputError(f"stable-ground mask {path}: cannot read it ({exc})") from None
        inside = dst == 1
        if moving:
            return (dst == 0) & ~inside
    return ~inside if moving else inside


def _high_score(score: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Valid values whose score reaches the map's median valid score."""
    ok = ~bad & np.isfinite(score)
    if not ok.any():
        return ok
    return ok & (score >= np.median(score[ok]))


def _upper_quartile(res: np.ndarray, n_valid: np.ndarray) -> np.ndarray:
    """75th percentile over axis 0 ignoring NaN (nearest rank; NaN where none valid);
    much faster than ``np.nanpercentile`` along an axis."""
    flat = res.reshape(res.shape[0], -1)
    nv = n_valid.reshape(-1)
    q = np.full(flat.shape[1], np.nan, dtype="float32")
    block = max(1, 2**22 // max(1, flat.shape[0]))  # bounded memory for the sort
    for a in range(0, flat.shape[1], block):
        srt = np.sort(flat[:, a : a + block], axis=0)  # NaN last
        idx = np.clip(np.round(0.75 * (nv[a : a + block] - 1)).astype(int), 0, flat.shape[0] - 1)
        q[a : a + block] = np.take_along_axis(srt, idx[None], axis=0)[0]
    q[nv == 0] = np.nan
    return q.reshape(n_valid.shape)


def _stable_median(res: np.ndarray, stable: np.ndarray) -> float:
    """``nanmedian(res[:, stable])`` (0 if none is finite), with one copy of the finite
    values (filled pair by pair) instead of the copies ``nanmedian`` makes."""
    n = sum(int(np.isfinite(r[stable]).sum()) for r in res)
    if n == 0:
        return 0
    values = np.empty(n, dtype=res.dtype)
    k = 0
    for r in res:
        v = r[stable]
        v = v[np.isfinite(v)]
        values[k : k + v.size] = v
        k += v.size
    return float(np.median(values, overwrite_input=True))


def auto_stable(
    maps: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    fit,
    *,
    pixel_size: float,
    n_iter: int = 4,
    k: float = 3.0,
    min_fraction: float = 0.05,
) -> tuple[np.ndarray, dict]:
    """Stable ground chosen from the data of every pair.

    ``maps`` holds ``(ew, ns, good)`` per pair, with ``good`` the valid,
    high-score values. ``fit(p, ew, ns, use)`` returns pair ``p``'s bias model
    ``(model_ew, model_ns)`` fitted on ``use``. Starting from every good pixel,
    each pass fits every pair on the current stable set, measures each pixel's
    residual vector length in each pair, and keeps as stable the pixels whose 75th
    percentile over pairs is below ``k`` times the median residual over the
    stable set (at least 0.1 pixel), valid in at least 30 % of the pairs. Moving
    areas leave the set after the first pass, so later fits are not biased.

    Returns the mask and ``{"threshold": ..., "fraction": ..., "iterations": ...}``.
    """
    shape = maps[0][0].shape
    n = len(maps)
    stable = np.ones(shape, bool)
    info: dict = {"threshold": float("nan"), "fraction": 1.0, "iterations": 0}
    for it in range(n_iter):
        res = np.full((n, *shape), np.nan, dtype="float32")
        for p, (ew, ns, good) in enumerate(maps):
            use = good & stable
            if use.sum() < 10:
                use = good
            m_ew, m_ns = fit(p, ew, ns, use)
            r = np.hypot(ew - m_ew, ns - m_ns)
            res[p] = np.where(good, r, np.nan)
        level = _stable_median(res, stable)
        n_valid = np.isfinite(res).sum(axis=0)
        q75 = _upper_quartile(res, n_valid)
        threshold = max(k * level, 0.1 * pixel_size)
        new = (q75 <= threshold) & (n_valid >= max(1, math.ceil(0.3 * n)))
        if new.sum() < max(10, min_fraction * new.size):
            log.warning(
                "automatic stable ground: only %.1f %% of the area qualifies; using the "
                "%.0f %% most stable pixels",
                100 * new.mean(),
                100 * min_fraction * 4,
            )
            finite = np.isfinite(q75)
            if finite.any():
                cut = np.nanpercentile(q75[finite], 100 * min_fraction * 4)
                new = finite & (q75 <= cut)
        changed = int((new != stable).sum())
        stable = new
        info = {"threshold": threshold, "fraction": float(stable.mean()), "iterations": it + 1}
        if changed == 0:
            break
    return stable, info


# --------------------------------------------------------------------------- per pair


def _centred(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    x = ds["x"].values.astype(float)
    y = ds["y"].values.astype(float)
    return np.meshgrid(x - x.mean(), y - y.mean())


class _PairFitter:
    """Fits one pair's bias model (both components) on a given set of pixels."""

    def __init__(self, grid, *, median, ramp, stripes, labels, heading, pixel_size):
        self.median, self.ramp, self.stripes = median, ramp, stripes
        self.labels = labels
        self.heading = heading
        self.pixel_size = pixel_size
        self.xx, self.yy, x = grid  # centred coordinates, shared by the pairs of one grid
        self.spacing = abs(float(x[1] - x[0])) if x.size > 1 else pixel_size
        self.edges: list[float] = []

    def labels_for(self, ew, ns, use) -> np.ndarray | None:
        if not self.stripes:
            return None
        if self.labels is not None:
            return self.labels
        if self.heading is None:
            return None
        # the stripe geometry: boundaries found on what offset and ramp leave
        r = []
        for v in (ew, ns):
            m, _ = fit_corrections(v, use, self.xx, self.yy, median=True, ramp=self.ramp)
            r.append(v - m)
        labels, self.edges = stripe_labels(
            r,
            use,
            self.xx,
            self.yy,
            self.heading,
            spacing=self.spacing,
            min_step=0.02 * self.pixel_size,
        )
        return labels

    def __call__(self, ew, ns, use):
        labels = self.labels_for(ew, ns, use)
        out = []
        for v in (ew, ns):
            m, _ = fit_corrections(
                v, use, self.xx, self.yy, median=True, ramp=self.ramp, labels=labels
            )
            out.append(m)
        return out

    def final(self, ew, ns, use):
        labels = self.labels_for(ew, ns, use)
        models, recs = [], []
        for v in (ew, ns):
            m, rec = fit_corrections(
                v, use, self.xx, self.yy, median=self.median, ramp=self.ramp, labels=labels
            )
            models.append(m)
            recs.append(rec)
        return models, recs, labels


def _record(counts: dict, recs, stable_source: str, n_stable: int, labels, edges) -> dict:
    rec = dict(counts)
    rec["stable_source"] = stable_source
    rec["stable_pixels"] = n_stable
    for comp, r in zip(("ew", "ns"), recs, strict=True):
        rec[f"offset_{comp}"] = r["offset"]
        if r["ramp"] is not None:
            # per kilometre of map (map units per 1000 map units)
            rec[f"ramp_{comp}_x"] = 1000 * r["ramp"][0]
            rec[f"ramp_{comp}_y"] = 1000 * r["ramp"][1]
        if r["stripes"]:
            rec[f"stripes_{comp}"] = " ".join(f"{k}:{v:+.4f}" for k, v in r["stripes"].items())
    if labels is not None:
        rec["stripe_bands"] = len(np.unique(labels))
    if edges:
        rec["stripe_edges"] = " ".join(f"{e:.0f}" for e in edges)
    return rec


def _pair_labels(det1, det2) -> np.ndarray | None:
    if det1 is None and det2 is None:
        return None
    a = np.zeros_like(det2) if det1 is None else det1.astype(np.int32)
    b = np.zeros_like(det1) if det2 is None else det2.astype(np.int32)
    return a * 100 + b  # "0304": detector 3 in the first image, 4 in the second


class _Scratch:
    """Each pair's filtered maps between the passes: in memory, or one ``.npz`` file
    per pair in ``folder`` (then only the pair being worked on is in memory)."""

    def __init__(self, folder: Path | None):
        self.folder = None if folder is None else Path(folder)
        self.items: dict[int, tuple] = {}
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    def put(self, p: int, ew, ns, bad, good) -> None:
        if self.folder is None:
            self.items[p] = (ew, ns, bad, good)
        else:
            np.savez(self.folder / f"{p}.npz", ew=ew, ns=ns, bad=bad, good=good)

    def get(self, p: int) -> tuple:
        if self.folder is None:
            return self.items[p]
        with np.load(self.folder / f"{p}.npz") as f:
            return f["ew"], f["ns"], f["bad"], f["good"]


class _Filtered(Sequence):
    """``(ew, ns, good)`` of each pair, read from the scratch store when asked."""

    def __init__(self, scratch: _Scratch, n: int):
        self.scratch, self.n = scratch, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, p):
        if not 0 <= p < self.n:
            raise IndexError(p)
        ew, ns, _, good = self.scratch.get(p)
        return ew, ns, good


def correct_pairs(maps: Sequence[xr.Dataset], **options) -> list[tuple[xr.Dataset, dict]]:
    """Correct pair maps on one grid together (automatic stable ground uses them all).

    Parameters
    ----------
    maps
        Pair maps: ``ew``, ``ns`` (map units), ``score`` on the same (y, x) grid.
    min_score, max_displacement, outlier_test, outlier_threshold
        Outlier filtering, see :func:`outlier_mask`.
    median, ramp, stripes
        Which corrections are removed.
    stable
        Stable ground (True) on the grid, e.g. from :func:`read_stable_mask`;
        None: chosen by :func:`auto_stable`.
    detectors
        Per map, the detector numbers of its two images on the grid (from
        :func:`detector_footprints`), or None; without them the stripes follow
        the ground-track geometry (``heading``, from :func:`track_heading`).
    pixel_size
        Image pixel size in map units (noise floors: 0.1 pixel); default the
        grid spacing divided by the ``step`` attribute.

    Returns
    -------
    list of (corrected, record)
        Same grid and attrs; NaN where filtered. The record holds the counts of
        each filter, the stable-ground source and size, the removed offset, the
        ramp (map units per km) and the stripe offsets per component.

    ``options``: the keyword arguments of :func:`iter_corrected` (below), which
    gives the same, one pair at a time in bounded memory.
    """
    return list(iter_corrected(maps, **options))


def iter_corrected(
    maps: Sequence[xr.Dataset],
    *,
    min_score: float = 0.4,
    median: bool = True,
    ramp: bool = False,
    stripes: bool = False,
    stable: np.ndarray | None = None,
    detectors: Sequence[tuple[np.ndarray | None, np.ndarray | None]] | None = None,
    heading: float | None = None,
    outlier_test: bool = True,
    outlier_threshold: float = 2.0,
    max_displacement: float | None = None,
    pixel_size: float | None = None,
    scratch: str | Path | None = None,
) -> Iterator[tuple[xr.Dataset, dict]]:
    """:func:`correct_pairs`, yielding ``(corrected, record)`` pair by pair.

    ``maps`` is any sequence whose items are read when indexed (e.g. one that
    reads a pair GeoTIFF on ``maps[p]``): each map is read once to filter it and
    once to correct it, never all at once. With ``scratch`` (a folder, removed
    afterwards) the filtered maps wait there between the passes, so memory holds
    one pair's maps at a time, plus, for the automatic stable ground, one float32
    residual per pair and pixel (:func:`auto_stable`). The results are those of
    :func:`correct_pairs` whatever the options.
    """
    if not len(maps):
        return
    import shutil

    store = _Scratch(scratch)
    try:
        yield from _corrected(
            maps,
            store,
            min_score=min_score,
            median=median,
            ramp=ramp,
            stripes=stripes,
            stable=stable,
            detectors=detectors,
            heading=heading,
            outlier_test=outlier_test,
            outlier_threshold=outlier_threshold,
            max_displacement=max_displacement,
            pixel_size=pixel_size,
        )
    finally:
        if store.folder is not None:
            shutil.rmtree(store.folder, ignore_errors=True)


def _corrected(
    maps,
    store: _Scratch,
    *,
    min_score,
    median,
    ramp,
    stripes,
    stable,
    detectors,
    heading,
    outlier_test,
    outlier_threshold,
    max_displacement,
    pixel_size,
):
    ds0 = maps[0]
    if pixel_size is None:
        pixel_size = abs(ds0.attrs["transform"][0]) / float(ds0.attrs.get("step", 1))
    grid = (*_centred(ds0), ds0["x"].values)
    shape = (ds0.sizes["y"], ds0.sizes["x"])
    del ds0
    fitters, counts_of = [], []
    for p in range(len(maps)):
        ds = maps[p]
        if (ds.sizes["y"], ds.sizes["x"]) != shape:
            raise InputError("pair maps corrected together must be on one grid")
        bad, counts = outlier_mask(
            ds,
            min_score=min_score,
            max_displacement=max_displacement,
            outlier_test=outlier_test,
            outlier_threshold=outlier_threshold,
            pixel_size=pixel_size,
        )
        # float32 keeps a large network in memory (the fits work in float64)
        ew = np.where(bad, np.nan, ds["ew"].values).astype("float32")
        ns = np.where(bad, np.nan, ds["ns"].values).astype("float32")
        det = detectors[p] if detectors is not None else (None, None)
        fitters.append(
            _PairFitter(
                grid,
                median=median,
                ramp=ramp,
                stripes=stripes,
                labels=_pair_labels(*det) if stripes else None,
                heading=heading,
                pixel_size=pixel_size,
            )
        )
        counts_of.append(counts)
        store.put(p, ew, ns, bad, _high_score(ds["score"].values, bad))
        del ds, ew, ns, bad
    if stable is None:
        source = "auto"
        if median or ramp or stripes:
            stable, info = auto_stable(
                _Filtered(store, len(maps)),
                lambda p, ew, ns, use: fitters[p](ew, ns, use),
                pixel_size=pixel_size,
            )
            log.debug("automatic stable ground: %s", info)
        else:
            stable = np.ones(shape, bool)
    else:
        source = "mask"
    for p, (fitter, counts) in enumerate(zip(fitters, counts_of, strict=True)):
        ew, ns, bad, good = store.get(p)
        use = stable & good
        if use.sum() < 10:
            use = stable & ~bad
        if use.sum() < 10:
            use = ~bad
        models, recs, labels = fitter.final(ew, ns, use)
        fixed = maps[p].copy(deep=True)
        fixed["ew"].values[:] = (ew - models[0]).astype("float32")
        fixed["ns"].values[:] = (ns - models[1]).astype("float32")
        fixed["score"].values[bad] = np.nan
        steps = (
            ("outlier_test", outlier_test),
            ("max_displacement", max_displacement is not None),
            ("median", median),
            ("ramp", ramp),
            ("stripes", stripes),
        )
        fixed.attrs["corrections"] = ",".join(k for k, on in steps if on) or "none"
        rec = _record(counts, recs, source, int(use.sum()), labels, fitter.edges)
        del ew, ns, bad, good, models
        yield fixed, rec


def correct_pair(ds: xr.Dataset, **kwargs) -> tuple[xr.Dataset, dict]:
    """Correct one pair map alone; the keywords are those of :func:`correct_pairs`
    (``detectors`` as one ``(first, second)`` tuple). Stable ground, when not given,
    is chosen from this map only."""
    if "detectors" in kwargs and kwargs["detectors"] is not None:
        kwargs["detectors"] = [kwargs["detectors"]]
    return correct_pairs([ds], **kwargs)[0]
