"""Accuracy, speed and memory of TIO's correlation engine against scikit-image and OpenCV.

What it measures
----------------
Synthetic cases built from three real images (read from the shared data folder):

* Landsat-8 panchromatic (uint16, 15 m): a textured, cloud-free strip at the bottom of
  ``landsat8_pan_p020r039/l8_B8.tif``;
* Landsat-7 band 4 of the Khumbu (uint8, 30 m, steep relief, partly saturated snow):
  ``landsat7_khumbu/LE71400412000304SGS00_B4_crop.TIF``;
* Sentinel-2 L1C (uint16, JPEG 2000, 10 m): a cloud- and nodata-free block of
  ``sentinel2_l1c_pair_T33UUU/ref_S2A_20160608T153121_T33UUU_sub.jp2``.

Each crop (the reference) is warped by a known displacement into a secondary image:

(a) ``uniform``: sub-pixel shifts ``dy = 1 + f``, ``dx = -2 + f`` for the fractions
    ``f = 0, 0.1, ..., 0.9``, applied as a Fourier phase ramp to a crop 32 px larger on
    each side (mirror-extended so that it is periodic without a jump) whose centre is
    then cut out: no interpolation smoothing;
(b) ``lobes``: two smooth landslide-like lobes (raised-cosine ellipses, 3 px and 1.5 px,
    in different directions; stable ground elsewhere). The field is defined on the
    reference grid; the secondary is sampled with ``scipy.ndimage.map_coordinates``
    (order 5) at the inverted field. The truth of a window is the average of the field
    over its 32 x 32 pixels (the value at the window centre is printed as well);
(c) ``large``: uniform shifts of 6 to 7 px in both axes (four combinations of signs).

Both images get Gaussian noise of 1 % or 3 % of the crop's robust range (1st to 99th
percentile), independently; the secondary also gets a gain of 1.1 and an offset of 5 %
of the range.

Methods, on the same grid of 32-px windows (step 16) and search range (8 px):

1. ``tio``: :func:`tio.correlation.correlate_arrays` (one call per image pair);
2. ``skimage``: a per-window loop of ``skimage.registration.phase_cross_correlation`` on
   the reference and secondary windows at the same position (32 x 32 each,
   ``upsample_factor=20``), the way it is commonly used; its sign (it returns the shift
   that registers the secondary onto the reference) is checked on a known shift at start
   and converted to TIO's convention;
3. ``opencv``: a per-window loop of ``cv2.matchTemplate(search_area, ref_window,
   cv2.TM_CCOEFF_NORMED)`` with a search area of 32 + 2 * 8 px (clipped at the image
   edges), integer peak plus a 1-D parabolic fit in each axis; a peak on the border of
   the correlation surface is rejected (NaN), as TIO does.

For each method and case it prints: the share of windows returned, the RMSE per axis
(``sqrt(mean((ex**2 + ey**2) / 2))`` in pixels, over the windows the method returned; and
over the windows all methods returned), the median absolute error, the share of gross
errors (> 0.5 px), the pixel-locking bias (mean error at each fraction, and its largest
absolute value), and windows per second (only the correlation call or loop is timed;
OpenCV is set to one thread, SciPy's FFT uses one worker by default; TIO's compiled
kernels are loaded or compiled once by an untimed warm-up call before anything is
timed, here and in the memory subprocess). Each method runs over all the pairs of a
case in turn, after one untimed call on the first pair (``run_case``; the speed of a call
depends on what ran just before it: ``bench_correlation_threads.py``). Ratios TIO/skimage
and TIO/OpenCV are printed for speed and accuracy, and PASS/FAIL against the targets of
the issue: uniform shifts at 1 % noise, TIO RMSE <= 0.02 px and mean error within
+-0.01 px at every fraction; on lobes, TIO RMSE at most half that of the best comparator;
TIO at least 10x the speed of the skimage loop and faster than OpenCV.

Scene-size inputs (what users actually correlate; the small crops above have many edge
windows and little work per call): the whole Landsat-8 pan image (1207 x 1254 px) and a
2048 x 1600 block of the Sentinel-2 reference (rows 1152-3199, columns 768-2367: the
largest nodata-free block that spans 2048 rows, the nodata wedge leaving no nodata-free
2048 x 2048 block), each warped by the lobes (scaled to the image) with 1 % noise, gain
and offset, correlated by each of the three methods on the same grid (window 32, step 16,
search 8), three times each (the fastest call of each method is kept: one call takes a
second or a few, and bursts of load from other jobs would decide otherwise; the results
are the same every time). Printed per scene: windows per second of each method, the ratios,
the RMSE of each (truth: window average), and PASS/FAIL of the speed target on that scene
(``--quick``: 512 x 512 blocks of the two images).

Memory: TIO on a 5000 x 5000 pair (a real Sentinel-2 crop mirrored to that size, shifted
by a known sub-pixel amount with an FFT) at step 8, in a subprocess: peak RSS
(``ru_maxrss`` of the child, which includes building the inputs, and the RSS sampled during
the call), time and windows per second; target < 2 GB.

Real imagery: the two Sentinel-2 dates of ``sentinel2_l1c_pair_T33UUU`` (misregistered by
about 7 m east-west and 17-19 m north-south according to AROSICS) are cut to their common
extent by map coordinates (nodata = 0, turned into NaN) and correlated with
:func:`tio.correlation.correlate` as georeferenced DataArrays. The median ``ew``/``ns``
over windows with score >= 0.5 on clear ground is compared with independent global phase
correlations of a large clear block (skimage, upsampling 100; OpenCV ``phaseCorrelate``
with a Hann window). Clouds are pixels of the secondary brighter than the 98th
percentile of the reference, dilated by 15 px; the share of windows that are NaN or score
< 0.5 is printed for cloudy windows, for the nodata wedge and for clear ground.

Usage::

    python benchmarks/bench_correlation.py [--quick] [--data DIR]

``--data`` (or the environment variable ``TIO_SHARED_DATA``) is the shared data folder,
by default ``../shared/data`` relative to the repository. ``--quick`` uses small crops
(except for the lobes, whose strain depends on the crop size), a 1000 x 1000 memory test
and a coarser grid on the real pair: a smoke run of about a minute; the full run takes 2
to 4 minutes on 2 cores. Comparators: ``pip install scikit-image
opencv-python-headless``; a missing one is reported and its columns are skipped.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import scipy
import xarray as xr
from rasterio.windows import Window, from_bounds
from scipy import ndimage

import tio
from tio.correlation import correlate, correlate_arrays

try:
    import skimage
    from skimage.registration import phase_cross_correlation
except ImportError:  # pragma: no cover - depends on the environment
    skimage = None
    phase_cross_correlation = None
try:
    import cv2
except ImportError:  # pragma: no cover - depends on the environment
    cv2 = None

REPO = Path(__file__).resolve().parents[1]
WINDOW, STEP, SEARCH = 32, 16, 8
MARGIN = 32  # real pixels around a crop used by the warps, cut off afterwards
FRACTIONS = np.round(np.arange(10) / 10, 1)
NOISES = (0.01, 0.03)
GAIN, OFFSET = 1.1, 0.05  # radiometric change of the secondary (offset in robust ranges)
LARGE_SHIFTS = ((6.3, -6.7), (-6.55, 6.15), (6.85, 6.45), (-6.1, -6.9))  # (dy, dx)
GROSS = 0.5  # px, a gross error
MEMORY_SIZE, MEMORY_SIZE_QUICK, MEMORY_STEP = 5000, 1000, 8
MEMORY_SHIFT = (1.3, -2.6)  # (dy, dx) px
MEMORY_TARGET = 2e9  # bytes (2 GB)
SCORE_MIN = 0.5
# Scene-size inputs (what users correlate): (name, path, (row, col, height, width), quick dims)
SCENE_NOISE = 0.01
SCENE_REPEATS = 3  # calls of each method per scene; the fastest is kept

S2_DIR = "sentinel2_l1c_pair_T33UUU"
S2_REF = f"{S2_DIR}/ref_S2A_20160608T153121_T33UUU_sub.jp2"
S2_TGT = f"{S2_DIR}/tgt_S2A_20160529T153631_T33UUU_sub.jp2"


@dataclass(frozen=True)
class Scene:
    name: str
    path: str
    full: tuple[int, int, int, int]  # row, col, height, width of the crop
    quick: tuple[int, int, int, int]


SCENES = (
    # bottom strip of the Landsat-8 scene: fields, roads, towns, no cloud
    Scene("L8-pan", "landsat8_pan_p020r039/l8_B8.tif", (951, 100, 256, 1024), (951, 300, 128, 384)),
    # lower-left of the Khumbu crop: glaciers and rock, the least saturated part (~10 %)
    Scene(
        "L7-Khumbu",
        "landsat7_khumbu/LE71400412000304SGS00_B4_crop.TIF",
        (271, 0, 384, 384),
        (400, 40, 160, 160),
    ),
    # fields south-east of the nodata wedge of the Sentinel-2 reference
    Scene("S2-10m", S2_REF, (2400, 1700, 512, 512), (2400, 1700, 192, 192)),
)


# Whole scenes: the full Landsat-8 pan image, and the largest block of the Sentinel-2
# reference without nodata that spans 2048 rows (the nodata wedge on the left leaves no
# nodata-free 2048 x 2048 block): rows 1152-3199, columns 768-2367, 1.6 % of its pixels
# brighter than the image's 98th percentile (a little cloud).
BIG_SCENES = (
    Scene("L8-pan", "landsat8_pan_p020r039/l8_B8.tif", (0, 0, 1207, 1254), (300, 300, 512, 512)),
    Scene("S2-10m", S2_REF, (1152, 768, 2048, 1600), (1152, 768, 512, 512)),
)


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
def data_dir(arg: str | None) -> Path:
    """The shared data folder: --data, else $TIO_SHARED_DATA, else ../shared/data."""
    if arg:
        d, how = Path(arg), "--data"
    elif os.environ.get("TIO_SHARED_DATA"):
        d, how = Path(os.environ["TIO_SHARED_DATA"]), "TIO_SHARED_DATA"
    else:
        d, how = REPO.parent / "shared" / "data", "the default ../shared/data"
    needed = [s.path for s in SCENES] + [S2_TGT]
    missing = [p for p in needed if not (d / p).is_file()]
    if missing:
        sys.exit(
            f"error: shared data folder {d} (from {how}) is missing "
            + ", ".join(missing)
            + ". Pass --data DIR or set TIO_SHARED_DATA to the folder holding "
            "landsat8_pan_p020r039/, landsat7_khumbu/ and sentinel2_l1c_pair_T33UUU/."
        )
    return d


def read_crop(path: Path, row: int, col: int, height: int, width: int, margin: int):
    """The crop with ``margin`` extra pixels each side (mirrored where the image ends)."""
    with rasterio.open(path) as ds:
        r0, c0 = max(row - margin, 0), max(col - margin, 0)
        r1, c1 = min(row + height + margin, ds.height), min(col + width + margin, ds.width)
        a = ds.read(1, window=Window(c0, r0, c1 - c0, r1 - r0)).astype(np.float64)
    pads = ((r0 - (row - margin), row + height + margin - r1), (c0 - (col - margin), 0))
    pads = (pads[0], (pads[1][0], col + width + margin - c1))
    if any(p for pair in pads for p in pair):
        a = np.pad(a, pads, mode="symmetric")
    return a


def robust_range(a) -> float:
    lo, hi = np.percentile(a, [1, 99])
    return float(hi - lo)


# --------------------------------------------------------------------------------------
# warps with a known truth
# --------------------------------------------------------------------------------------
def fourier_shift(img, dy: float, dx: float):
    """Content of ``img`` moved by (+dy, +dx) px with a phase ramp (mirror-periodic)."""
    h, w = img.shape
    ext = np.concatenate([img, img[::-1]], axis=0)
    ext = np.concatenate([ext, ext[:, ::-1]], axis=1)
    spec = np.fft.rfft2(ext)
    ky = np.fft.fftfreq(2 * h)[:, None]
    kx = np.fft.rfftfreq(2 * w)[None, :]
    spec *= np.exp(-2j * np.pi * ky * dy) * np.exp(-2j * np.pi * kx * dx)
    return np.fft.irfft2(spec, s=ext.shape)[:h, :w]


def lobes(h: int, w: int):
    """Two raised-cosine elliptical lobes (dy, dx in px) as a function of (row, col)."""
    specs = (  # centre row, centre col, semi-axis rows, semi-axis cols, amplitude, angle
        (0.50 * h, 0.30 * w, 0.40 * h, 0.25 * w, 3.0, np.deg2rad(-60.0)),
        (0.50 * h, 0.74 * w, 0.30 * h, 0.17 * w, 1.5, np.deg2rad(150.0)),
    )

    def f(rr, cc):
        dy = np.zeros(np.broadcast(rr, cc).shape)
        dx = np.zeros_like(dy)
        for cy, cx, ry, rx, amp, ang in specs:
            rho = np.hypot((rr - cy) / ry, (cc - cx) / rx)
            prof = np.where(rho < 1, np.cos(0.5 * np.pi * np.minimum(rho, 1)) ** 2, 0.0)
            dy += amp * np.sin(ang) * prof
            dx += amp * np.cos(ang) * prof
        return dy, dx

    return f


def warp_lobes(big, margin: int, h: int, w: int, fld):
    """Secondary such that ``sec(x + d(x)) = ref(x)`` for the field ``fld`` (crop coords)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    sy, sx = yy.copy(), xx.copy()
    for _ in range(12):  # invert y = x + d(x) by fixed-point iteration (|grad d| << 1)
        dy, dx = fld(sy, sx)
        sy, sx = yy - dy, xx - dx
    return ndimage.map_coordinates(big, [sy + margin, sx + margin], order=5, mode="mirror")


def window_means(a, window: int, step: int):
    """Mean of ``a`` over each correlation window (cell (i, j) at [i*step, i*step+window))."""
    a = np.asarray(a, dtype=np.float64)
    h, w = a.shape
    ny, nx = (h - window) // step + 1, (w - window) // step + 1
    ii = np.zeros((h + 1, w + 1))
    ii[1:, 1:] = a.cumsum(0).cumsum(1)
    r = np.arange(ny) * step
    c = np.arange(nx) * step
    s = (
        ii[np.ix_(r + window, c + window)]
        - ii[np.ix_(r, c + window)]
        - ii[np.ix_(r + window, c)]
        + ii[np.ix_(r, c)]
    )
    return s / window**2


def grid_shape(shape, window=WINDOW, step=STEP):
    return (shape[0] - window) // step + 1, (shape[1] - window) // step + 1


def degrade(ref, sec, level: float, rng_range: float, rng):
    """Independent noise on both images, gain and offset on the secondary (float32)."""
    sigma = level * rng_range
    r = ref + rng.normal(0.0, sigma, ref.shape)
    s = GAIN * sec + OFFSET * rng_range + rng.normal(0.0, sigma, sec.shape)
    return r.astype(np.float32), s.astype(np.float32)


# --------------------------------------------------------------------------------------
# methods: each returns (dy, dx, seconds) on TIO's grid, in TIO's sign convention
# --------------------------------------------------------------------------------------
SK_SIGN = -1.0  # replaced by the empirical check in check_signs()


def warm_up() -> float:
    """One untimed TIO call that runs every code path once (seconds it took).

    TIO's compiled kernels (numba) are compiled on their first use, or loaded from
    numba's on-disk cache; that one-time cost is not part of the per-call speed, so it
    is paid here, before anything is timed (as a long-running process pays it once).
    """
    rng = np.random.default_rng(0)
    a = ndimage.gaussian_filter(rng.normal(size=(160, 160)), 1.5).astype(np.float32)
    mask = np.zeros(a.shape, bool)
    mask[60:70, 60:90] = True  # unusable pixels inside the image: the weighted path
    t0 = time.perf_counter()
    correlate_arrays(a, np.roll(a, (1, -2), axis=(0, 1)), window=WINDOW, step=STEP, search=SEARCH)
    correlate_arrays(a, a, window=WINDOW, step=STEP, search=SEARCH, secondary_mask=mask)
    # a 2 % stretch: strained windows, the window-deformation pass
    yy, xx = np.mgrid[0:160, 0:160] * 0.98
    b = ndimage.map_coordinates(a, [yy, xx], order=3, mode="mirror").astype(np.float32)
    correlate_arrays(a, b, window=WINDOW, step=STEP, search=SEARCH)
    return time.perf_counter() - t0


def run_tio(ref, sec, step=STEP):
    t0 = time.perf_counter()
    f = correlate_arrays(ref, sec, window=WINDOW, step=step, search=SEARCH)
    return f.dy, f.dx, time.perf_counter() - t0


def run_skimage(ref, sec):
    ny, nx = grid_shape(ref.shape)
    out = np.full((2, ny, nx), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        for i in range(ny):
            r = i * STEP
            for j in range(nx):
                c = j * STEP
                shift, _, _ = phase_cross_correlation(
                    ref[r : r + WINDOW, c : c + WINDOW],
                    sec[r : r + WINDOW, c : c + WINDOW],
                    upsample_factor=20,
                )
                out[0, i, j] = shift[0]
                out[1, i, j] = shift[1]
        dt = time.perf_counter() - t0
    return SK_SIGN * out[0], SK_SIGN * out[1], dt


def _parabolic(ym, y0, yp) -> float:
    den = ym - 2.0 * y0 + yp
    return 0.0 if den >= 0 else 0.5 * (ym - yp) / den


def run_opencv(ref, sec):
    h, w = sec.shape
    ny, nx = grid_shape(ref.shape)
    out = np.full((2, ny, nx), np.nan)
    t0 = time.perf_counter()
    for i in range(ny):
        r = i * STEP
        r0, r1 = max(r - SEARCH, 0), min(r + WINDOW + SEARCH, h)
        for j in range(nx):
            c = j * STEP
            c0, c1 = max(c - SEARCH, 0), min(c + WINDOW + SEARCH, w)
            res = cv2.matchTemplate(
                sec[r0:r1, c0:c1], ref[r : r + WINDOW, c : c + WINDOW], cv2.TM_CCOEFF_NORMED
            )
            _, _, _, (px, py) = cv2.minMaxLoc(res)
            if py == 0 or px == 0 or py == res.shape[0] - 1 or px == res.shape[1] - 1:
                continue  # peak on the border of the search range: rejected
            fy = _parabolic(res[py - 1, px], res[py, px], res[py + 1, px])
            fx = _parabolic(res[py, px - 1], res[py, px], res[py, px + 1])
            out[0, i, j] = r0 + py + fy - r
            out[1, i, j] = c0 + px + fx - c
    return out[0], out[1], time.perf_counter() - t0


def available_methods():
    methods = {"tio": run_tio}
    if skimage is not None:
        methods["skimage"] = run_skimage
    if cv2 is not None:
        methods["opencv"] = run_opencv
    return methods


def check_signs(pattern) -> None:
    """Check every method's sign on a known integer shift; set the skimage sign."""
    global SK_SIGN
    p = np.asarray(pattern[:96, :96], dtype=np.float32)
    dy, dx = 2, -3  # secondary content moved down 2 rows and left 3 columns
    ref = p[16:80, 16:80]
    sec = p[16 - dy : 80 - dy, 16 - dx : 80 - dx]
    print(f"sign check on a real crop, content shift dy={dy:+d} dx={dx:+d} (TIO convention):")
    f = correlate_arrays(ref, sec, window=WINDOW, step=STEP, search=SEARCH)
    print(f"  tio      median dy={np.nanmedian(f.dy):+.3f} dx={np.nanmedian(f.dx):+.3f}")
    if skimage is not None:
        per = np.roll(p[:64, :64], (dy, dx), axis=(0, 1))  # periodic: exact for phase corr.
        s = phase_cross_correlation(p[:64, :64], per, upsample_factor=20)[0]
        sign = np.sign(s[0] / dy)
        if sign != np.sign(s[1] / dx) or abs(abs(s[0]) - abs(dy)) > 0.05:
            sys.exit(f"error: unexpected skimage phase_cross_correlation result {s}")
        SK_SIGN = float(sign)
        print(
            f"  skimage  phase_cross_correlation returned ({s[0]:+.2f}, {s[1]:+.2f}): "
            f"multiplied by {SK_SIGN:+.0f}"
        )
    if cv2 is not None:
        oy, ox, _ = run_opencv(ref, sec)
        print(f"  opencv   median dy={np.nanmedian(oy):+.3f} dx={np.nanmedian(ox):+.3f}")
    # the Fourier shift moves content by +shift
    moved = fourier_shift(p.astype(np.float64), dy, dx)
    err = np.abs(moved[16:80, 16:80] - sec).max() / np.ptp(p)
    print(f"  fourier_shift of an integer shift vs slicing: max |diff| = {err:.1e} of range")


# --------------------------------------------------------------------------------------
# synthetic runs
# --------------------------------------------------------------------------------------
@dataclass
class Pair:
    ty: np.ndarray  # truth (window average)
    tx: np.ndarray
    cy: np.ndarray  # truth at the window centre
    cx: np.ndarray
    frac: float = np.nan
    est: dict = field(default_factory=dict)  # method -> (dy, dx)
    secs: dict = field(default_factory=dict)


def run_methods(pair: Pair, ref, sec, methods) -> None:
    for name, fn in methods.items():
        dy, dx, dt = fn(ref, sec)
        pair.est[name] = (np.asarray(dy, float), np.asarray(dx, float))
        pair.secs[name] = dt


def lobes_case(big, h: int, w: int):
    """The secondary of the lobes case for the crop ``big`` (``h`` x ``w`` inside a margin)
    and its truth: window averages (``ty``, ``tx``) and values at the window centres."""
    ny, nx = grid_shape((h, w))
    fld = lobes(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    fy, fx = fld(yy, xx)
    del yy, xx
    centres_r = (WINDOW - 1) / 2 + STEP * np.arange(ny)
    centres_c = (WINDOW - 1) / 2 + STEP * np.arange(nx)
    cy, cx = fld(centres_r[:, None], centres_c[None, :])
    sec0 = warp_lobes(big, MARGIN, h, w, fld)
    return sec0, Pair(window_means(fy, WINDOW, STEP), window_means(fx, WINDOW, STEP), cy, cx)


def synthetic_cases(scene: Scene, data: Path, quick: bool, methods, rng):
    """Run every method on every synthetic pair of one scene.

    Returns ``{(case, noise): (pairs, (h, w))}``. The lobes always use the full crop (their
    size, hence their strain, does not change with --quick).
    """
    crops = {}
    cases: dict[tuple[str, float], tuple[list[Pair], tuple[int, int]]] = {}
    shifts = {
        "uniform": [(1 + f, -2 + f, f) for f in FRACTIONS],
        "large": [(dy, dx, np.nan) for dy, dx in LARGE_SHIFTS],
    }
    for case in ("uniform", "lobes", "large"):
        dims = scene.quick if quick and case != "lobes" else scene.full
        if dims not in crops:
            big = read_crop(data / scene.path, *dims, MARGIN)
            ref0 = big[MARGIN:-MARGIN, MARGIN:-MARGIN]
            crops[dims] = (big, ref0, robust_range(ref0))
        big, ref0, rr = crops[dims]
        h, w = ref0.shape
        ny, nx = grid_shape((h, w))
        if case == "lobes":
            templates = [lobes_case(big, h, w)]
        else:
            templates = []
            for dy, dx, f in shifts[case]:
                sec0 = fourier_shift(big, dy, dx)[MARGIN:-MARGIN, MARGIN:-MARGIN]
                t = np.ones((ny, nx))
                templates.append((sec0, Pair(dy * t, dx * t, dy * t, dx * t, f)))
        for noise in NOISES:
            inputs = [degrade(ref0, sec0, noise, rr, rng) for sec0, _ in templates]
            pairs = [Pair(p.ty, p.tx, p.cy, p.cx, p.frac) for _, p in templates]
            run_case(pairs, inputs, methods)
            cases[(case, noise)] = (pairs, (h, w))
    return cases


def run_case(pairs: list[Pair], inputs, methods) -> None:
    """Each method in turn over all the pairs of a case (method-major), after one
    untimed call on the first pair.

    Method-major because the speed of a call depends on what ran just before it (a
    pause or another method's loop: ``bench_correlation_threads.py`` measures it), and a
    user correlating a stack runs one method back to back. The same protocol for every
    method; the untimed call gives each the same warm start.
    """
    for name, fn in methods.items():
        fn(*inputs[0])
        for pair, (ref, sec) in zip(pairs, inputs, strict=True):
            run_methods(pair, ref, sec, {name: fn})


def scene_cases(data: Path, quick: bool, methods, rng):
    """Every method on whole scenes warped by the lobes, 1 % noise (same grid).

    Returns ``{scene name: (pair, (h, w))}``.
    """
    out = {}
    for scene in BIG_SCENES:
        dims = scene.quick if quick else scene.full
        big = read_crop(data / scene.path, *dims, MARGIN)
        ref0 = big[MARGIN:-MARGIN, MARGIN:-MARGIN]
        h, w = ref0.shape
        sec0, pair = lobes_case(big, h, w)
        ref, sec = degrade(ref0, sec0, SCENE_NOISE, robust_range(ref0), rng)
        # one call per method is short (a second or a few): the best of SCENE_REPEATS
        # calls of each method, so that a burst of load from other jobs does not decide
        # (each method's calls back to back, as in run_case)
        secs = {m: [] for m in methods}
        for m in methods:
            for _ in range(1 if quick else SCENE_REPEATS):
                run_methods(pair, ref, sec, {m: methods[m]})
                secs[m].append(pair.secs[m])
        pair.secs = {m: min(v) for m, v in secs.items()}
        out[scene.name] = (pair, (h, w))
    return out


@dataclass
class Stats:
    n: int
    returned: float
    rmse: float
    rmse_common: float
    rmse_centre: float
    med: float
    gross: float
    bias: dict  # fraction -> (mean ey, mean ex)
    lock: float
    secs: float

    @property
    def speed(self) -> float:
        return self.n / self.secs if self.secs > 0 else np.nan


def _rms(ey, ex) -> float:
    return float(np.sqrt(np.mean((ey**2 + ex**2) / 2))) if ey.size else np.nan


def summarise(pairs: list[Pair], methods) -> dict[str, Stats]:
    out = {}
    common = [
        np.logical_and.reduce(
            [np.isfinite(p.est[m][0]) & np.isfinite(p.est[m][1]) for m in methods]
        )
        for p in pairs
    ]
    for m in methods:
        ey, ex, eyc, exc, cey, cex, fr = [], [], [], [], [], [], []
        n = 0
        for p, cm in zip(pairs, common, strict=True):
            dy, dx = p.est[m]
            ok = np.isfinite(dy) & np.isfinite(dx)
            n += dy.size
            ey.append((dy - p.ty)[ok])
            ex.append((dx - p.tx)[ok])
            cey.append((dy - p.cy)[ok])
            cex.append((dx - p.cx)[ok])
            eyc.append((dy - p.ty)[cm])
            exc.append((dx - p.tx)[cm])
            fr.append(np.full(int(ok.sum()), p.frac))
        ey, ex, fr = np.concatenate(ey), np.concatenate(ex), np.concatenate(fr)
        bias = {}
        for f in FRACTIONS:
            sel = fr == f
            if sel.any():
                bias[float(f)] = (float(ey[sel].mean()), float(ex[sel].mean()))
        lock = max((max(abs(a), abs(b)) for a, b in bias.values()), default=np.nan)
        err = np.hypot(ey, ex)
        out[m] = Stats(
            n=n,
            returned=ey.size / n,
            rmse=_rms(ey, ex),
            rmse_common=_rms(np.concatenate(eyc), np.concatenate(exc)),
            rmse_centre=_rms(np.concatenate(cey), np.concatenate(cex)),
            med=float(np.median(np.abs(np.concatenate([ey, ex])))) if ey.size else np.nan,
            gross=float(np.mean(err > GROSS)) if ey.size else np.nan,
            bias=bias,
            lock=lock,
            secs=sum(p.secs[m] for p in pairs),
        )
    return out


def print_table(title: str, stats: dict[str, Stats], lobes_case: bool) -> None:
    print(f"  {title}")
    extra = "  RMSE@ctr" if lobes_case else ""
    print(
        "    method    windows  returned  RMSE px  RMSE(common)  med|e|  >0.5px  "
        f"max|bias|{extra}   win/s"
    )
    for m, s in stats.items():
        lock = f"{s.lock:9.4f}" if np.isfinite(s.lock) else "        -"
        ctr = f"  {s.rmse_centre:8.4f}" if lobes_case else ""
        print(
            f"    {m:<8} {s.n:8d}  {100 * s.returned:7.1f}%  {s.rmse:7.4f}  {s.rmse_common:12.4f}"
            f"  {s.med:6.4f}  {100 * s.gross:5.1f}%  {lock}{ctr}  {s.speed:7.0f}"
        )
    t = stats["tio"]
    for m in ("skimage", "opencv"):
        if m in stats:
            o = stats[m]
            print(
                f"    TIO/{m}: speed x{t.speed / o.speed:.2f}, RMSE ratio {t.rmse / o.rmse:.3f}"
                f" (common windows {t.rmse_common / o.rmse_common:.3f})"
            )


def print_locking(stats: dict[str, Stats]) -> None:
    print("    mean error (px) per fractional shift f, dy then dx:")
    print(f"      {'f':<11}" + " ".join(f"{f:7.1f}" for f in FRACTIONS))
    for m, s in stats.items():
        for k, axis in enumerate(("dy", "dx")):
            vals = " ".join(f"{s.bias[float(f)][k]:+7.4f}" for f in FRACTIONS)
            print(f"      {m:<8}{axis} {vals}")


def verdict(ok) -> str:
    return "SKIP" if ok is None else ("PASS" if ok else "FAIL")


# --------------------------------------------------------------------------------------
# memory (subprocess)
# --------------------------------------------------------------------------------------
def _rss() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def memory_child(data: Path, size: int) -> None:
    """Runs in a subprocess: build a size x size pair, correlate it, print JSON."""
    import scipy.fft as sfft

    with rasterio.open(data / S2_REF) as ds:  # nodata-free part, east of the wedge
        crop = ds.read(1, window=Window(1100, 0, ds.width - 1100, ds.height)).astype(np.float32)
    ph, pw = max(size - crop.shape[0], 0), max(size - crop.shape[1], 0)
    ref = np.pad(crop, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="symmetric")
    ref = np.ascontiguousarray(ref[:size, :size])
    del crop
    rr = robust_range(ref[::4, ::4])
    dy, dx = MEMORY_SHIFT
    spec = sfft.rfft2(ref)
    spec *= np.exp(-2j * np.pi * sfft.fftfreq(size)[:, None] * dy).astype(np.complex64)
    spec *= np.exp(-2j * np.pi * sfft.rfftfreq(size)[None, :] * dx).astype(np.complex64)
    sec = sfft.irfft2(spec, s=ref.shape).astype(np.float32)
    del spec
    rng = np.random.default_rng(5)
    sigma = np.float32(0.01 * rr)
    ref += sigma * rng.standard_normal(ref.shape, dtype=np.float32)
    sec *= np.float32(GAIN)
    sec += np.float32(OFFSET * rr) + sigma * rng.standard_normal(sec.shape, dtype=np.float32)
    warm_up()
    gc.collect()
    before = _rss()
    peak = [before]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            stop.wait(0.01)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    dyf, dxf, secs = run_tio(ref, sec, step=MEMORY_STEP)
    stop.set()
    th.join()
    peak[0] = max(peak[0], _rss())
    # accuracy away from the outer edges (the FFT shift wraps there)
    m = 96 // MEMORY_STEP
    ey, ex = dyf[m:-m, m:-m] - dy, dxf[m:-m, m:-m] - dx
    ok = np.isfinite(ey) & np.isfinite(ex)
    print(
        json.dumps(
            {
                "shape": list(ref.shape),
                "windows": int(dyf.size),
                "seconds": secs,
                "rss_before": before,
                "rss_peak_sampled": peak[0],
                "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "returned": float(np.mean(np.isfinite(dyf) & np.isfinite(dxf))),
                "rmse_interior": _rms(ey[ok], ex[ok]),
                "median_dy": float(np.nanmedian(dyf)),
                "median_dx": float(np.nanmedian(dxf)),
            }
        )
    )


def memory_test(data: Path, size: int) -> bool | None:
    print(
        f"\n== 4. memory: TIO on a {size} x {size} pair (mirrored real Sentinel-2 crop, shift "
        f"dy={MEMORY_SHIFT[0]:+} dx={MEMORY_SHIFT[1]:+} px, 1 % noise), window {WINDOW}, "
        f"step {MEMORY_STEP}, search {SEARCH}, in a subprocess"
    )
    cmd = [sys.executable, str(Path(__file__).resolve()), "--data", str(data)]
    cmd += ["--memory-child", str(size)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print("  the subprocess failed:\n" + proc.stderr[-3000:])
        return False
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    gib = 1024**3
    print(
        f"  windows {r['windows']} ({r['shape'][0]} x {r['shape'][1]} px), returned "
        f"{100 * r['returned']:.1f}%"
    )
    print(
        f"  correlation time {r['seconds']:.1f} s -> {r['windows'] / r['seconds']:.0f} windows/s"
        f" (subprocess wall time {wall:.1f} s, including building the inputs)"
    )
    print(
        f"  RSS before the call {r['rss_before'] / gib:.3f} GiB; peak RSS sampled during the "
        f"call {r['rss_peak_sampled'] / gib:.3f} GiB (increase {(r['rss_peak_sampled'] - r['rss_before']) / gib:.3f} GiB)"  # noqa: E501
    )
    print(
        f"  peak RSS of the child (ru_maxrss, whole process incl. inputs) "
        f"{r['ru_maxrss'] / gib:.3f} GiB; RUSAGE_CHILDREN {children / gib:.3f} GiB"
    )
    print(
        f"  accuracy (windows >= 96 px from the edges): RMSE {r['rmse_interior']:.4f} px; "
        f"median dy {r['median_dy']:+.4f} dx {r['median_dx']:+.4f} px"
    )
    peak = max(r["ru_maxrss"], r["rss_peak_sampled"])
    ok = peak < MEMORY_TARGET
    print(f"  target peak RSS < 2 GB: {peak / 1e9:.3f} GB ({peak / gib:.3f} GiB)  {verdict(ok)}")
    return ok


# --------------------------------------------------------------------------------------
# real Sentinel-2 pair
# --------------------------------------------------------------------------------------
def _dataarray(a, transform, crs_wkt):
    rows = np.arange(a.shape[0])
    cols = np.arange(a.shape[1])
    return xr.DataArray(
        a,
        dims=("y", "x"),
        coords={
            "y": transform.f + transform.e * (rows + 0.5),
            "x": transform.c + transform.a * (cols + 0.5),
        },
        attrs={"crs": crs_wkt, "transform": tuple(transform)[:6]},
    )


def best_block(ok, size: int, stride: int = 32):
    """Top-left (row, col) of the size x size block with the largest share of ``ok``."""
    frac = window_means(ok, size, stride)
    i, j = np.unravel_index(np.argmax(frac), frac.shape)
    return i * stride, j * stride, float(frac[i, j])


def real_pair(data: Path, quick: bool) -> None:
    print(f"\n== 5. real Sentinel-2 pair {S2_DIR}: reference 2016-06-08, secondary 2016-05-29")
    with rasterio.open(data / S2_REF) as r, rasterio.open(data / S2_TGT) as t:
        b, c = r.bounds, t.bounds
        left, right = max(b.left, c.left), min(b.right, c.right)
        bottom, top = max(b.bottom, c.bottom), min(b.top, c.top)
        wr = from_bounds(left, bottom, right, top, r.transform).round_offsets().round_lengths()
        wt = from_bounds(left, bottom, right, top, t.transform).round_offsets().round_lengths()
        ref = r.read(1, window=wr).astype(np.float32)
        sec = t.read(1, window=wt).astype(np.float32)
        tr, crs = r.window_transform(wr), r.crs
        if t.window_transform(wt) != tr:
            sys.exit("error: the two Sentinel-2 images are not on the same pixel grid")
    print(
        f"  common extent x {left:.0f}..{right:.0f}, y {bottom:.0f}..{top:.0f} "
        f"({ref.shape[0]} x {ref.shape[1]} px, {crs.to_string()}); reference window "
        f"row {wr.row_off} col {wr.col_off}, secondary window row {wt.row_off} col {wt.col_off}"
    )
    nod_r, nod_s = ref == 0, sec == 0
    ref[nod_r] = np.nan
    sec[nod_s] = np.nan
    thr = float(np.nanpercentile(ref, 98))
    bright = sec > thr
    cloud = ndimage.binary_dilation(bright, structure=np.ones((31, 31), bool))
    print(
        f"  nodata: reference {100 * nod_r.mean():.1f}%, secondary {100 * nod_s.mean():.1f}%;"
        f" clouds: secondary > {thr:.0f} (98th percentile of the reference) on "
        f"{100 * bright.mean():.1f}% of pixels, {100 * cloud.mean():.1f}% after a 15-px dilation"
    )
    dref, dsec = _dataarray(ref, tr, crs.to_wkt()), _dataarray(sec, tr, crs.to_wkt())
    step = 32 if quick else STEP
    t0 = time.perf_counter()
    ds = correlate(dref, dsec, window=WINDOW, step=step, search=SEARCH)
    secs = time.perf_counter() - t0
    ew, ns, score = ds["ew"].values, ds["ns"].values, ds["score"].values
    print(
        f"  tio.correlation.correlate: window {WINDOW}, step {step}, search {SEARCH}: "
        f"{score.size} windows in {secs:.1f} s ({score.size / secs:.0f} windows/s)"
    )
    nodf = window_means(nod_r | nod_s, WINDOW, step)
    cldf = window_means(cloud & ~(nod_r | nod_s), WINDOW, step)  # dilated cloud mask
    brtf = window_means(bright & ~(nod_r | nod_s), WINDOW, step)  # cloud pixels proper
    clear = (nodf == 0) & (cldf == 0)
    good = clear & (score >= SCORE_MIN)
    med_ew, med_ns = float(np.median(ew[good])), float(np.median(ns[good]))
    nmad = [1.4826 * float(np.median(np.abs(v[good] - np.median(v[good])))) for v in (ew, ns)]
    cats = {
        "clear ground (no cloud within 15 px, no nodata)": clear,
        "cloudy (>= 50% cloud pixels)": (brtf >= 0.5) & (nodf < 0.5),
        "nodata wedge (>= 50% nodata)": nodf >= 0.5,
        "rest (cloud edges, haze, partly nodata)": ~clear & (brtf < 0.5) & (nodf < 0.5),
    }
    print(
        "    windows                                          count    NaN  score<0.5  "
        "NaN or <0.5  off>10m among kept"
    )
    for name, sel in cats.items():
        sc = score[sel]
        nan = np.isnan(sc)
        low = (~nan) & (sc < SCORE_MIN)
        kept = sel & (score >= SCORE_MIN)
        off = np.hypot(ew[kept] - med_ew, ns[kept] - med_ns) > 10.0
        n = max(sc.size, 1)
        print(
            f"    {name:<48} {sc.size:6d} {100 * nan.sum() / n:5.1f}%  {100 * low.sum() / n:8.1f}%"
            f"  {100 * (nan | low).sum() / n:10.1f}%  {100 * off.mean() if off.size else 0:8.1f}%"
            f" of {off.size}"
        )
    print("    (off>10m: score >= 0.5 but more than 1 px from the clear-ground median offset)")
    print(
        f"  TIO, clear ground, score >= {SCORE_MIN} ({good.sum()} windows): median ew "
        f"{med_ew:+.2f} m, ns {med_ns:+.2f} m (spread NMAD {nmad[0]:.2f} / {nmad[1]:.2f} m)"
    )

    # independent estimate: global phase correlation of a large clear block
    size = 512 if quick else 1024
    ok = np.isfinite(ref) & np.isfinite(sec) & ~cloud
    r0, c0, frac = best_block(ok, size)
    blk_r = ref[r0 : r0 + size, c0 : c0 + size].astype(np.float64)
    blk_s = sec[r0 : r0 + size, c0 : c0 + size].astype(np.float64)
    if not (np.isfinite(blk_r).all() and np.isfinite(blk_s).all()):
        print("  no nodata-free block found for the independent estimate")
        return
    print(
        f"  independent estimate on the {size} x {size} block at row {r0}, col {c0} "
        f"({100 * frac:.1f}% clear, nodata-free):"
    )
    rows, cols = ds["y"].values, ds["x"].values
    yb = (tr.f + tr.e * r0, tr.f + tr.e * (r0 + size))
    xb = (tr.c + tr.a * c0, tr.c + tr.a * (c0 + size))
    inb = (
        ((rows <= max(yb)) & (rows >= min(yb)))[:, None]
        & ((cols >= min(xb)) & (cols <= max(xb)))[None, :]
        & (score >= SCORE_MIN)
    )
    tb = (float(np.median(ew[inb])), float(np.median(ns[inb])))
    print(
        f"    TIO windows inside the block, score >= {SCORE_MIN} ({inb.sum()}): median ew "
        f"{tb[0]:+.2f} m, ns {tb[1]:+.2f} m"
    )
    estimates = {}
    if skimage is not None:
        s = phase_cross_correlation(blk_r - blk_r.mean(), blk_s - blk_s.mean(), upsample_factor=100)
        dy, dx = SK_SIGN * s[0][0], SK_SIGN * s[0][1]
        estimates["skimage phase_cross_correlation (upsample 100)"] = (dx * tr.a, dy * tr.e)
    if cv2 is not None:
        han = cv2.createHanningWindow((size, size), cv2.CV_64F)
        (dx, dy), _ = cv2.phaseCorrelate(blk_r, blk_s, han)
        estimates["OpenCV phaseCorrelate (Hann window)"] = (dx * tr.a, dy * tr.e)
    if not estimates:
        print("    no comparator installed: independent estimate skipped")
    for name, (e, n) in estimates.items():
        print(
            f"    {name}: ew {e:+.2f} m, ns {n:+.2f} m; TIO (all clear windows) minus it: "
            f"ew {med_ew - e:+.2f} m, ns {med_ns - n:+.2f} m; TIO (block) minus it: "
            f"ew {tb[0] - e:+.2f} m, ns {tb[1] - n:+.2f} m"
        )
    print("    (AROSICS, 256 x 256 windows: about 7 m east-west and 17-19 m north-south)")


# --------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small crops: a fast smoke run")
    ap.add_argument(
        "--data", help="shared data folder (default $TIO_SHARED_DATA or ../shared/data)"
    )
    ap.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    data = data_dir(args.data)
    if args.memory_child:
        memory_child(data, args.memory_child)
        return
    t_start = time.perf_counter()
    print(
        f"TIO {tio.__version__}, Python {platform.python_version()}, numpy {np.__version__}, "
        f"scipy {scipy.__version__}, {os.cpu_count()} CPUs (load average "
        f"{os.getloadavg()[0]:.1f}); data {data}"
        + ("; QUICK run (small crops)" if args.quick else "")
    )
    pkg = Path(tio.__file__).parent
    digest = hashlib.sha256()
    for name in ("correlation.py", "_correlation.py"):
        if (pkg / name).is_file():
            digest.update((pkg / name).read_bytes())
    print(f"engine: {pkg} (sha256 of correlation.py + _correlation.py: {digest.hexdigest()[:12]})")
    if skimage is not None:
        print(f"scikit-image {skimage.__version__}")
    else:
        print("MISSING comparator: scikit-image (pip install scikit-image): skimage skipped")
    if cv2 is not None:
        cv2.setNumThreads(1)
        print(f"opencv {cv2.__version__} (setNumThreads(1))")
    else:
        print("MISSING comparator: OpenCV (pip install opencv-python-headless): opencv skipped")
    methods = available_methods()
    print(
        f"window {WINDOW}, step {STEP}, search {SEARCH}; noise {NOISES} of the robust range, "
        f"secondary gain {GAIN} and offset {OFFSET} of the range"
    )
    print(f"TIO warm-up (compiled kernels loaded or compiled once, untimed): {warm_up():.1f} s")
    s2 = read_crop(data / S2_REF, 2400, 1700, 96, 96, 0)
    check_signs(s2)

    rng = np.random.default_rng(2024)
    all_stats: dict[tuple[str, str, float], dict[str, Stats]] = {}
    print("\n== 1-3. synthetic displacements of real images (RMSE per axis, px)")
    for scene in SCENES:
        t0 = time.perf_counter()
        cases = synthetic_cases(scene, data, args.quick, methods, rng)
        print(f"\n-- {scene.name}: crops of {scene.path} ({time.perf_counter() - t0:.0f} s)")
        for (case, noise), (pairs, (h, w)) in cases.items():
            stats = summarise(pairs, methods)
            all_stats[(scene.name, case, noise)] = stats
            desc = {
                "uniform": "uniform sub-pixel shifts dy=1+f, dx=-2+f, f=0..0.9",
                "lobes": "smooth lobes up to 3 px (truth: window average)",
                "large": "uniform shifts of 6-7 px " + str(LARGE_SHIFTS),
            }[case]
            title = (
                f"{case}, noise {100 * noise:.0f}%, {h} x {w} px crop, {len(pairs)} pair(s): {desc}"
            )
            print_table(title, stats, case == "lobes")
            if case == "uniform":
                print_locking(stats)

    # pooled speed over every synthetic run
    print("\n== speed, pooled over all synthetic pairs")
    tot = {m: [0, 0.0] for m in methods}
    for stats in all_stats.values():
        for m, s in stats.items():
            tot[m][0] += s.n
            tot[m][1] += s.secs
    speed = {m: n / t for m, (n, t) in tot.items()}
    for m, (n, t) in tot.items():
        print(f"  {m:<8} {n:7d} windows in {t:7.2f} s: {speed[m]:8.0f} windows/s")

    # scene-size inputs
    print(
        f"\n== speed and accuracy on scene-size inputs (lobes up to 3 px, "
        f"{100 * SCENE_NOISE:.0f}% noise; same grid and methods)"
    )
    t0 = time.perf_counter()
    scenes = scene_cases(data, args.quick, methods, np.random.default_rng(7))
    print(f"  ({time.perf_counter() - t0:.0f} s in all, building the inputs included)")
    scene_stats = {}
    for scene in BIG_SCENES:
        pair, (h, w) = scenes[scene.name]
        st = summarise([pair], methods)
        scene_stats[scene.name] = st
        print_table(f"{scene.name}: {h} x {w} px, {scene.path}", st, True)

    print("\n== targets")
    results = []
    for scene in SCENES:
        s = all_stats[(scene.name, "uniform", 0.01)]["tio"]
        ok = s.rmse <= 0.02 and s.lock <= 0.01
        results.append(ok)
        print(
            f"  uniform, 1% noise, {scene.name}: TIO RMSE {s.rmse:.4f} px (<= 0.02), max |mean "
            f"error| over fractions {s.lock:.4f} px (<= 0.01)  {verdict(ok)}"
        )
    comps = [m for m in methods if m != "tio"]
    for scene in SCENES:
        for noise in NOISES:
            st = all_stats[(scene.name, "lobes", noise)]
            if not comps:
                print(f"  lobes, {100 * noise:.0f}% noise, {scene.name}: no comparator  SKIP")
                results.append(None)
                continue
            best = min(comps, key=lambda m, st=st: st[m].rmse)
            ok = st["tio"].rmse <= 0.5 * st[best].rmse
            results.append(ok)
            print(
                f"  lobes, {100 * noise:.0f}% noise, {scene.name}: TIO RMSE {st['tio'].rmse:.4f} px"
                f" vs best comparator {best} {st[best].rmse:.4f} px: ratio "
                f"{st['tio'].rmse / st[best].rmse:.3f} (<= 0.5)  {verdict(ok)}"
            )
    for m, factor, rule in (("skimage", 10.0, ">= 10"), ("opencv", 1.0, "> 1")):
        if m not in speed:
            print(f"  speed TIO/{m} loop: comparator missing  SKIP")
            results.append(None)
            continue
        ratio = speed["tio"] / speed[m]
        ok = ratio >= factor if factor > 1 else ratio > factor
        print(f"  speed TIO/{m} loop x{ratio:.2f} ({rule})  {verdict(ok)}")
        results.append(ok)

    for scene in BIG_SCENES:
        st = scene_stats[scene.name]
        for m, factor, rule in (("skimage", 10.0, ">= 10"), ("opencv", 1.0, "> 1")):
            if m not in st:
                results.append(None)
                continue
            ratio = st["tio"].speed / st[m].speed
            ok = ratio >= factor if factor > 1 else ratio > factor
            print(
                f"  scene-size {scene.name} ({st['tio'].n} windows): speed TIO/{m} loop "
                f"x{ratio:.2f} ({rule}); TIO {st['tio'].speed:.0f}, {m} {st[m].speed:.0f} "
                f"windows/s; RMSE TIO {st['tio'].rmse:.4f}, {m} {st[m].rmse:.4f} px  "
                f"{verdict(ok)}"
            )
            results.append(ok)
    results.append(memory_test(data, MEMORY_SIZE_QUICK if args.quick else MEMORY_SIZE))
    real_pair(data, args.quick)

    n_pass = sum(r is True for r in results)
    n_fail = sum(r is False for r in results)
    n_skip = sum(r is None for r in results)
    print(
        f"\ntargets: {n_pass} PASS, {n_fail} FAIL, {n_skip} SKIP; total time "
        f"{time.perf_counter() - t_start:.0f} s (load average now {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
