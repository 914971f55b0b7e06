"""Numerical core of TIO's image correlation (private; use :mod:`tio.correlation`).

The offset of every correlation window is measured in two stages (and optionally
refined by window deformation, 3.), each vectorised
with numpy over a batch of windows (no Python loop per window):

1. **Integer stage** - zero-normalised cross-correlation (ZNCC) of the reference
   window against every position of the secondary within ``[-search, +search]``
   pixels of its *prior* offset (zero unless given), computed in the Fourier domain
   (Lewis 1995): the numerator is an FFT correlation of the window with the
   secondary sub-image of side ``window + 2 * search``, the local energies come
   from integral images. When the step divides half the window, the windows
   without unusable pixels are correlated block by block, on blocks shared by
   neighbouring windows (:func:`_zncc_shared`: 32 x 32 transforms instead of
   48 x 48 for 32-px windows and a search of 8 px). Windows that contain unusable
   pixels use the masked formulation of Padfield (2012), in which unusable pixels
   have zero weight. The integer offset is the ZNCC maximum; a maximum on the border
   of the search range is rejected, and so is a window whose texture is too weak (standard deviation
   below a fraction of the typical window's) or whose ZNCC surface has a second
   local maximum nearly as high as the first (peak-ratio test, Hu & Mordohai 2012):
   repetitive or flat texture must give NaN, not a confident wrong offset.
2. **Sub-pixel stage** - the shift between the reference window and the secondary
   block at the integer offset is measured by a (partially whitened) phase
   correlation. The taper (:func:`taper`: cos^2 roll-off over ``w / 6`` pixels at
   each end, flat in between) and the mask weight of the secondary are *moved by
   the current estimate*, so the two weighted windows become exact shifted copies:
   no image re-sampling is needed, and the bias of a fixed taper (toward the taper
   position) disappears. A cosine roll-off of the cross-power spectrum toward
   Nyquist (:func:`spectral_weight`) removes the pixel-locking caused by aliased
   high frequencies. Every window takes compiled kernels (:mod:`tio._kernels`): the
   first estimate starts at the parabolic sub-pixel position of the ZNCC peak, where
   the taper is centred; the peak of the continuous inverse DFT (a trigonometric
   polynomial) is found by Newton iterations; a next estimate is made only where the
   estimate moved by more than ``_REFINE`` from the taper position. Windows with
   unusable pixels near the match (image edges, masks) also weight both windows by
   the smooth mask weight (:func:`_subpixel_weighted`). The cross-power spectrum is
   divided by the square root of its modulus (:func:`whitening`). A ZNCC peak that
   is a flat ridge (straight edge) is rejected (:func:`weak_curvature`): the peak
   wanders along it with the noise.
3. **Window deformation** (:func:`deform_refine`, ``deform`` passes): windows where the
   offset field changes by more than ``_MIN_STRAIN`` px within half a window are
   measured again on the secondary re-sampled (cubic convolution) at every pixel
   moved by the interpolated first-pass field minus its window mean, which removes
   the strain inside the window (Scarano 2002, image deformation methods in
   particle-image velocimetry).

Measured with ``benchmarks/bench_correlation.py`` (32-px windows, 1 % noise, gain and
offset change): mean error within 0.007 px at every fractional shift.

Displacements larger than the search range are reached coarse to fine
(:func:`pyramid_offset_field`, after the image pyramids of Burt & Adelson 1983): the
images are area-averaged by 2, 4, ... and the median-filtered offsets of each level
are the prior of the next finer one.

Windows are processed in rectangular tiles whose working memory is bounded by
``_BATCH_BYTES``; the tiles are independent and may run in a thread pool (numpy and
scipy.fft release the GIL; glibc is told to keep freed memory, :func:`_tune_malloc`).
Windows without any unusable pixel take a fast path
(reference windows and shared blocks copied from the images straight into FFT buffers
by compiled kernels, local energies from integral images, float32 sub-pixel stage with
separable tapers reading the secondary image in place, no per-window copies);
windows whose secondary sub-image reaches outside the image or
contains unusable pixels are gathered into batches of their own for the masked
formulation. The tiling and batching do not depend on the number of threads, so the
results do not either (bit for bit).

Conventions: images are indexed ``[row, col]``; an offset ``(dy, dx)`` means that the
content of the secondary image is displaced by ``dy`` rows and ``dx`` columns
relative to the reference, i.e. ``secondary(r, c) = reference(r - dy, c - dx)``.

References
----------
.. [1] J. P. Lewis, "Fast normalized cross-correlation", Vision Interface, 1995.
.. [2] D. Padfield, "Masked object registration in the Fourier domain",
       IEEE Trans. Image Process. 21(5):2706-2718, 2012.
.. [3] M. Guizar-Sicairos, S. T. Thurman and J. R. Fienup, "Efficient subpixel
       image registration algorithms", Opt. Lett. 33(2):156-158, 2008.
.. [4] H. Knutsson and C.-F. Westin, "Normalized and differential convolution",
       CVPR 1993 (normalised convolution, used to smooth images with holes).
.. [5] R. H. Wallis, "An approach to the space variant restoration and enhancement
       of images", Proc. Symp. on Current Mathematical Problems in Image Science,
       Monterey, 1976; E. P. Baltsavias, "Multiphoto geometrically constrained
       matching", PhD thesis, ETH Zurich, 1991 (the Wallis filter in image matching).
.. [6] X. Hu and P. Mordohai, "A quantitative evaluation of confidence measures for
       stereo vision", IEEE Trans. PAMI 34(11):2121-2133, 2012 (peak-ratio test).
.. [7] P. J. Burt and E. H. Adelson, "The Laplacian pyramid as a compact image
       code", IEEE Trans. Commun. 31(4):532-540, 1983.
.. [8] F. Scarano, "Iterative image deformation methods in PIV", Meas. Sci.
       Technol. 13(1):R1-R19, 2002.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import fft as sfft
from scipy import ndimage

from tio.errors import CorrelationError

#: Working-memory budget of one tile of windows, in bytes (besides the float32
#: copies of the two images). Each worker thread holds one tile at a time.
_BATCH_BYTES = 128 * 2**20
# Largest number of windows per tile or batch, so that small images (a few hundred to a
# few thousand windows) still give every thread work; the tiling depends only on the
# sizes. Measured (one thread, CPU time, the three crops of bench_correlation.py): no
# cost at 256 windows, 10 % more at 128.
_MAX_BATCH = 256

#: Minimum number of common valid pixels for a ZNCC value to be trusted.
_MIN_OVERLAP = 16

#: Relative variance (and relative std of a whole window) below which a window is
#: considered flat, i.e. without usable texture.
_FLAT = 1e-6

#: Half-size (pixels) of the zone around the ZNCC maximum where a second local
#: maximum is not looked for (it belongs to the main peak).
_PEAK_EXCLUSION = 2

#: Ridge test (:func:`weak_curvature`): smallest fall-off of the ZNCC around its
#: maximum (per squared pixel, weakest direction) relative to ``1 - peak``. Measured
#: on the benchmark cases (32-px windows): 0.15 to 0.25 remove a gross error along a
#: straight edge (4.3 px at score 0.98, Sentinel-2, 1 % noise) that 0.1 keeps; 0.25
#: also rejects most windows of weakly textured stripes that are measured right
#: (tests), and 3.5 % of the Sentinel-2 windows at 3 % noise (0.5: 12 %).
_MIN_CURVATURE = 0.2

#: Largest number of windows sampled to estimate the typical texture of an image.
_TEXTURE_SAMPLES = 4096

#: Gain limit of the Wallis filter: the local standard deviation is increased by
#: this fraction of its image median before dividing by it, so flat areas (noise)
#: are amplified at most ~10 times more than typical texture.
_WALLIS_FLOOR = 0.1

PREFILTERS = ("none", "highpass", "wallis")

#: Sub-pixel stage: a window gets another estimate (taper of the secondary moved to
#: the last one) while the estimate moved by more than this (pixels) from the taper
#: position. Measured on the uniform-shift benchmark cases: the same accuracy and mean
#: error per fraction with 0, 0.02, 0.05 and 0.1 px; 0.01 keeps the residual bias of
#: the taper position (about 6 % of the move) below 1e-3 px.
_REFINE = 0.01
# Window deformation: windows whose offset field changes by more than this (px) within
# half a window are re-estimated on the deformed secondary.
_MIN_STRAIN = 0.1
# Sub-pixel estimates per window in a deformation pass (one is enough: it starts at the
# first pass's offset, where the taper of the secondary is centred; measured: 2 changes the
# lobe RMSE of benchmarks/bench_correlation.py by less than 0.002 px).
_DEFORM_ITERATIONS = 1
# Exponent of the modulus division of the cross-power spectrum (compiled path).
_WHITEN = 0.5


# --------------------------------------------------------------------------------------
# Pre-processing
# --------------------------------------------------------------------------------------
def normalised_smooth(image, valid, sigma):
    """Gaussian smoothing of an image with holes (normalised convolution).

    Parameters
    ----------
    image : ndarray, shape (H, W), float
        Image; values where ``valid`` is False are ignored (may be NaN).
    valid : ndarray of bool, shape (H, W)
        True where the pixel is usable.
    sigma : float
        Standard deviation of the Gaussian, in pixels.

    Returns
    -------
    smooth : ndarray of float32, shape (H, W)
        ``G * (valid * image) / G * valid`` (Knutsson & Westin 1993); NaN where
        no valid pixel lies within about ``4 * sigma``.
    """
    num = ndimage.gaussian_filter(np.where(valid, image, 0).astype(np.float32), sigma)
    den = ndimage.gaussian_filter(valid.astype(np.float32), sigma)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[den < 1e-4] = np.nan
    return out


def _normalised_box(image, valid_f, size):
    """Box mean of an image with holes over ``size x size`` (normalised convolution)."""
    num = ndimage.uniform_filter(np.where(valid_f > 0, image, 0).astype(np.float32), size)
    den = ndimage.uniform_filter(valid_f, size)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[den < 1e-3] = np.nan
    return out


def wallis_filter(image, valid, size):
    """Wallis filter: local mean removal and local contrast normalisation.

    ``out = (g - m) / (s + f)`` where ``m`` and ``s`` are the mean and the RMS
    deviation from that mean of the usable pixels in a ``size x size`` moving
    window (normalised convolution, so holes and edges do not bleed), and
    ``f = _WALLIS_FLOOR * median(s)``. This is the filter of Wallis (1976) with full
    brightness forcing (target mean 0) and a contrast-expansion constant
    ``c = 1 / (1 + _WALLIS_FLOOR)``, i.e. a gain limited to about 10 times that of
    typical texture, so that flat areas are not blown up to full contrast noise.
    Local contrast differences between the two images (gamma, haze, shadow,
    illumination gradients) are equalised, which the window-wise ZNCC cannot do
    inside a window.

    Parameters
    ----------
    image : ndarray of float32, shape (H, W)
        Image; values where ``valid`` is False are ignored.
    valid : ndarray of bool, shape (H, W)
        Usable pixels.
    size : int
        Side of the moving window (odd), in pixels.

    Returns
    -------
    filtered : ndarray of float32, shape (H, W)
        Wallis-filtered image (NaN where no usable pixel lies within the window).
    detail : ndarray of float32, shape (H, W)
        ``g - m``, the image without its local mean (used to measure texture).

    Notes
    -----
    ``s`` is computed as the box mean of ``(g - m)^2`` rather than
    ``E[g^2] - m^2``: the two agree where ``m`` is smooth, and the former does not
    suffer from cancellation in float32.
    """
    vf = valid.astype(np.float32)
    detail = image - _normalised_box(image, vf, size)
    s = np.sqrt(np.maximum(_normalised_box(detail * detail, vf, size), 0.0))
    ok = valid & np.isfinite(s)
    floor = np.float32(_WALLIS_FLOOR * np.median(s[ok])) if ok.any() else np.float32(0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = detail / (s + floor)
    return out.astype(np.float32), detail


def prepare_image(image, mask, prefilter, window, wallis_size=None):
    """Convert an image to float32, find its usable pixels, pre-filter and fill holes.

    Parameters
    ----------
    image : array_like, shape (H, W)
        Image (any real dtype). Non-finite values are unusable.
    mask : array_like of bool or None
        True where the pixel is unusable (cloud, nodata...).
    prefilter : {"none", "highpass", "wallis"}
        ``"highpass"`` subtracts a Gaussian-smoothed copy (sigma = ``window / 4``,
        normalised convolution so holes do not bleed), which removes illumination
        gradients and makes the correlation rely on texture. ``"wallis"`` applies
        :func:`wallis_filter` (local mean and contrast normalisation).
    window : int
        Correlation window size (sets the high-pass sigma).
    wallis_size : int, optional
        Side of the Wallis window; see :func:`default_wallis_size`.

    Returns
    -------
    filled : ndarray of float32, shape (H, W)
        Pre-filtered image whose unusable pixels are replaced by a smooth local
        estimate (normalised convolution, else the mean). The correlation gives
        them zero weight (integer stage) or a weight below 0.5 % (sub-pixel stage),
        so the fill only keeps the arithmetic finite and harmless.
    valid : ndarray of bool, shape (H, W)
        True where the pixel is usable.
    texture : ndarray of float32, shape (H, W)
        Image on which the texture (contrast) of a window is measured: ``filled``
        itself, except for ``"wallis"`` where it is the image minus its local mean
        before the contrast normalisation (which would make flat areas look
        textured).
    """
    img = np.array(image, dtype=np.float32, copy=True)
    valid = np.isfinite(img)
    if mask is not None:
        valid &= ~np.asarray(mask, dtype=bool)
    if not valid.any():
        img = np.zeros_like(img)
        return img, valid, img
    sigma = max(window / 4.0, 1.0)
    texture = None
    if prefilter == "highpass":
        img = img - normalised_smooth(img, valid, sigma)
    elif prefilter == "wallis":
        size = default_wallis_size(window) if wallis_size is None else int(wallis_size)
        img, texture = wallis_filter(img, valid, size)
    if not valid.all():
        fill = normalised_smooth(img, valid, sigma)
        fill[~np.isfinite(fill)] = np.mean(img[valid], dtype=np.float64)
        img = np.where(valid, img, fill)
    img[~np.isfinite(img)] = 0.0
    if texture is None:
        texture = img
    else:
        texture[~valid] = 0.0
    return img, valid, texture


def default_wallis_size(window):
    """Default Wallis window: the odd size nearest to ``window / 2``, within [15, 31].

    Chosen by measurement: Landsat-8 pan shifted by (1.7, -2.35) px, secondary with
    a gamma of 0.5, a 3-fold brightness ramp and a haze patch, 2 % noise, 32-px
    windows: RMS error of ``dx`` 0.018, 0.018, 0.020, 0.021, 0.022 px for Wallis
    windows of 15, 17, 21, 31, 41 px (0.022 px with the high-pass, 0.024 px with
    no filter). Smaller windows normalise more locally but see less texture.
    """
    return int(min(31, max(15, 2 * (int(window) // 4) + 1)))


def window_std(t, valid=None):
    """Standard deviation of each window of a batch over its usable pixels (float64).

    ``t`` has shape (K, w, w); ``valid`` (bool, same shape) or None. Windows without
    a usable pixel get 0.
    """
    t = np.asarray(t, dtype=np.float64)
    if valid is None:
        return t.std(axis=(1, 2))
    wgt = valid.astype(np.float64)
    n = wgt.sum(axis=(1, 2))
    nn = np.maximum(n, 1.0)
    mean = (t * wgt).sum(axis=(1, 2)) / nn
    d = (t - mean[:, None, None]) * wgt
    return np.where(n > 0, np.sqrt(np.einsum("kij,kij->k", d, d) / nn), 0.0)


def texture_scale(texture, valid, window, step, max_bad):
    """Typical texture of an image: median window standard deviation.

    At most ``_TEXTURE_SAMPLES`` windows of the output grid are sampled on a regular
    sub-grid; windows with more than ``max_bad`` unusable pixels are ignored.
    Returns 0.0 if no window qualifies.
    """
    w = int(window)
    ny = (texture.shape[0] - w) // step + 1
    nx = (texture.shape[1] - w) // step + 1
    k = max(1, int(np.ceil(np.sqrt(ny * nx / _TEXTURE_SAMPLES))))
    if valid.all():  # compiled, straight from the image (same values as window_std)
        from tio import _kernels

        tops, lefts = np.meshgrid(
            np.arange(0, ny, k) * step, np.arange(0, nx, k) * step, indexing="ij"
        )
        sd = np.empty(tops.size)
        _kernels.window_stds(texture, tops.ravel(), lefts.ravel(), w, sd)
        return float(np.median(sd)) if sd.size else 0.0
    tv = sliding_window_view(texture, (w, w))[:: step * k, :: step * k]
    vv = sliding_window_view(valid, (w, w))[:: step * k, :: step * k]
    out = []
    for i in range(tv.shape[0]):  # one row of sampled windows at a time (bounded memory)
        t, v = tv[i], vv[i]
        keep = 1.0 - v.mean(axis=(1, 2)) <= max_bad
        if keep.any():
            out.append(window_std(t[keep], v[keep]))
    sd = np.concatenate(out) if out else np.zeros(0)
    return float(np.median(sd)) if sd.size else 0.0


# --------------------------------------------------------------------------------------
# Integer stage
# --------------------------------------------------------------------------------------
def _box_sums(a, w):
    """Sums of ``a`` over every ``w x w`` sub-window (integral image), batched.

    ``a`` has shape (K, M, M); the result (float64) has shape (K, M - w + 1, M - w + 1)
    and element ``[k, v, u]`` is ``a[k, v:v + w, u:u + w].sum()``.
    """
    k, m, _ = a.shape
    c = np.zeros((k, m + 1, m + 1))
    np.cumsum(a, axis=1, out=c[:, 1:, 1:])
    np.cumsum(c[:, 1:, 1:], axis=2, out=c[:, 1:, 1:])
    return c[:, w:, w:] - c[:, :-w, w:] - c[:, w:, :-w] + c[:, :-w, :-w]


def _standardise(a, weight=None):
    """Standardise each image of a batch over its (weighted) pixels, as float32.

    Returns ``(a - mean) / std`` (times ``weight``), a boolean array telling which
    images are flat (std below ``_FLAT`` times their mean absolute value, or zero;
    flat images are returned as zeros) and the std (float64).
    """
    axes = (1, 2)
    if weight is None:
        n = a.shape[1] * a.shape[2]
        mean = a.sum(axis=axes, dtype=np.float64) / n
        out = a.astype(np.float32)
        out -= mean.astype(np.float32)[:, None, None]
        ss = np.einsum("kij,kij->k", out, out)
        sd = np.sqrt(ss.astype(np.float64) / n)
    else:
        n = np.maximum(weight.sum(axis=axes), 1.0)
        mean = (a * weight).sum(axis=axes) / n
        out = ((a - mean[:, None, None]) * weight).astype(np.float32)
        sd = np.sqrt(np.einsum("kij,kij->k", out, out).astype(np.float64) / n)
    flat = (sd <= _FLAT * np.abs(mean)) | (sd == 0)
    out *= np.where(flat, 0.0, 1.0 / np.where(flat, 1.0, sd)).astype(np.float32)[:, None, None]
    return out, flat, sd


@functools.lru_cache(maxsize=16)
def _box_spectrum(window, size):
    """Conjugate rfft2 of a ``window x window`` box of ones in an ``size x size`` array."""
    box = np.zeros((size, size), dtype=np.float32)
    box[:window, :window] = 1.0
    out = np.conj(sfft.rfft2(box))
    out.flags.writeable = False
    return out


def local_variance_map(image, w):
    """Sum of squared deviations from the local mean over every ``w x w`` window.

    Integral images (Lewis 1995) in float64 after removing the mean of ``image``
    (compiled: :func:`tio._kernels.local_variance`, no full-size temporaries).
    Element ``[y, x]`` of the result (shape ``(H - w + 1, W - w + 1)``) is for the
    window whose top-left pixel is ``image[y, x]``.
    """
    from tio import _kernels

    a = np.asarray(image)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    mean = float(np.asarray(a, dtype=np.float64).mean())
    out = np.empty((a.shape[0] - w + 1, a.shape[1] - w + 1))
    _kernels.local_variance(a, mean, int(w), out)
    return out


def zncc_surfaces(
    ref, sec, window, search, ref_valid=None, sec_valid=None, min_overlap=None, sec_local_var=None
):
    """ZNCC of reference windows against secondary sub-images for all integer offsets.

    Fast normalised cross-correlation (Lewis 1995): the numerator is an FFT
    correlation of the zero-mean reference window against the secondary sub-image
    of side ``window + 2 * search`` (no wrap-around is possible since the FFT size is
    at least the sub-image size), the local means and energies of the secondary come
    from integral images. With masks, the masked normalised cross-correlation of
    Padfield (2012) is used: six FFT correlations of the weighted images and weights
    give, for each offset, the sums over the pixels valid in *both* windows. The
    images are standardised in float64 and transformed in float32 (ZNCC accurate to
    about 1e-5, ample to locate the integer peak).

    Parameters
    ----------
    ref : ndarray, shape (K, w, w)
        Reference windows.
    sec : ndarray, shape (K, w + 2 s, w + 2 s)
        Secondary sub-images; offset ``(dy, dx)`` aligns ``ref[k]`` with
        ``sec[k, s + dy : s + dy + w, s + dx : s + dx + w]``.
    window, search : int
        ``w`` and ``s``.
    ref_valid, sec_valid : ndarray of bool or None
        Usable pixels (same shapes as ``ref``/``sec``). Both None -> unmasked path.
    min_overlap : int, optional
        Minimum number of pixels valid in both windows (masked path).
    sec_local_var : ndarray, shape (K, 2 s + 1, 2 s + 1), optional
        Unmasked path only: sum of squared deviations of the secondary window at
        every offset (e.g. gathered from :func:`local_variance_map`, which is much
        cheaper on a block of overlapping windows); computed here if omitted.

    Returns
    -------
    zncc : ndarray of float64, shape (K, 2 s + 1, 2 s + 1)
        ZNCC in [-1, 1] at offset ``(v - s, u - s)`` for element ``[k, v, u]``; NaN
        where the reference or the secondary window is flat (its variance is below
        ``_FLAT`` times that of the sub-image, or the whole window is constant) or
        the overlap is too small.
    sec_valid_fraction : ndarray of float64, shape (K, 2 s + 1, 2 s + 1)
        Fraction of usable pixels in the secondary window at each offset.
    """
    w, s = window, search
    n = 2 * s + 1
    size = sfft.next_fast_len(w + 2 * s, real=True)
    shape = (size, size)
    with np.errstate(invalid="ignore", divide="ignore"):
        if ref_valid is None and sec_valid is None:
            r, flat_r, _ = _standardise(ref)
            if sec_local_var is None:
                q, flat_q, _ = _standardise(sec)
                fr = sfft.rfft2(r, s=shape)
                fq = sfft.rfft2(np.stack([q, q * q], axis=1), s=shape)
                box = _box_spectrum(w, size)
                prod = np.empty((fq.shape[0], 3) + fq.shape[2:], dtype=fq.dtype)
                np.multiply(np.conj(fr), fq[:, 0], out=prod[:, 0])
                np.multiply(box, fq[:, 0], out=prod[:, 1])
                np.multiply(box, fq[:, 1], out=prod[:, 2])
                del fq, fr
                c = sfft.irfft2(prod, s=shape)[:, :, :n, :n].astype(np.float64)
                num, s1, s2 = c[:, 0], c[:, 1], c[:, 2]
                var_q = s2 - s1 * s1 / (w * w)
            else:
                q, flat_q, sd = _standardise(sec)
                sd2 = sd * sd
                fr = sfft.rfft2(r, s=shape)
                fr = np.conj(fr, out=fr)
                fr *= sfft.rfft2(q, s=shape)
                num = sfft.irfft2(fr, s=shape)[:, :n, :n].astype(np.float64)
                var_q = sec_local_var / np.where(sd2 > 0, sd2, 1.0)[:, None, None]
            var_r = np.float64(w * w)
            ok = (var_q > _FLAT * w * w) & ~(flat_r | flat_q)[:, None, None]
            zncc = np.where(ok, num / np.sqrt(var_r * var_q), np.nan)
            return np.clip(zncc, -1.0, 1.0), np.ones_like(zncc)

        ref = np.asarray(ref, dtype=np.float64)
        sec = np.asarray(sec, dtype=np.float64)
        wr = np.ones(ref.shape) if ref_valid is None else ref_valid.astype(np.float64)
        wq = np.ones(sec.shape) if sec_valid is None else sec_valid.astype(np.float64)
        r, flat_r, _ = _standardise(ref, wr)
        q, flat_q, _ = _standardise(sec, wq)
        wr32 = wr.astype(np.float32)
        wq32 = wq.astype(np.float32)
        ref_all = bool(wr32.all())
        # Pruned transforms: the reference windows fill only w of the ``size`` rows;
        # only the first n rows of the correlations are transformed back.
        if ref_all:  # the weight of the reference is a box of ones (cached spectrum)
            fa = _rfft2_rows(np.stack([r, r * r], axis=1), size)
            np.conjugate(fa, out=fa)
            fw = _box_spectrum(w, size)
            fa = [fw, fa[:, 0], fa[:, 1]]
        else:
            fa = _rfft2_rows(np.stack([wr32, r, r * r], axis=1), size)
            np.conjugate(fa, out=fa)
            fa = [fa[:, 0], fa[:, 1], fa[:, 2]]
        fb = sfft.rfft2(np.stack([wq32, q, q * q], axis=1), s=shape)
        prod = np.empty((fb.shape[0], 6) + fb.shape[2:], dtype=fb.dtype)
        for i, (a, b) in enumerate(((0, 0), (1, 0), (2, 0), (0, 1), (0, 2), (1, 1))):
            np.multiply(fa[a], fb[:, b], out=prod[:, i])
        del fa, fb
        c = _irfft2_rows(prod, size, n)[..., :n].astype(np.float64)
        del prod
        cnt = np.rint(c[:, 0])
        sr, sr2, sq, sq2, srq = c[:, 1], c[:, 2], c[:, 3], c[:, 4], c[:, 5]
        var_r = sr2 - sr * sr / cnt
        var_q = sq2 - sq * sq / cnt
        cov = srq - sr * sq / cnt
        if min_overlap is None:
            min_overlap = _MIN_OVERLAP
        ok = (cnt >= max(min_overlap, _MIN_OVERLAP)) & (var_r > _FLAT * cnt) & (var_q > _FLAT * cnt)
        ok &= ~(flat_r | flat_q)[:, None, None]
        zncc = np.where(ok, cov / np.sqrt(var_r * var_q), np.nan)
        # usable fraction of the secondary window (= overlap when the reference is full)
        frac = cnt / (w * w) if ref_all else _box_sums(wq, w) / (w * w)
    return np.clip(zncc, -1.0, 1.0), frac


def _rfft2_rows(a, size):
    """``rfft2(a, s=(size, size))`` over the last two axes, for ``a`` with fewer rows."""
    f = sfft.rfft(a, n=size, axis=-1)
    return sfft.fft(f, n=size, axis=-2, overwrite_x=True)


def _irfft2_rows(f, size, n):
    """First ``n`` rows of ``irfft2(f, s=(size, size))`` over the last two axes."""
    g = sfft.ifft(f, axis=-2, overwrite_x=True)[..., :n, :]
    return sfft.irfft(g, n=size, axis=-1)


def integer_peaks(zncc):
    """Integer peak of each ZNCC surface, rejecting peaks that may lie outside it.

    Parameters
    ----------
    zncc : ndarray, shape (K, n, n)
        ZNCC surfaces (NaN = offset not evaluated / invalid).

    Returns
    -------
    iy, ix : ndarray of int, shape (K,)
        Row and column index of the maximum.
    ok : ndarray of bool, shape (K,)
        False if the surface is all-NaN, if the maximum is on the border of the
        search range (the true peak is probably outside it), or if one of its four
        neighbours is NaN (peak not bracketed).
    """
    k, n, _ = zncc.shape
    z = np.where(np.isfinite(zncc), zncc, -np.inf)
    flat = z.reshape(k, -1).argmax(axis=1)
    iy, ix = np.divmod(flat, n)
    kk = np.arange(k)
    ok = np.isfinite(z[kk, iy, ix])
    ok &= (iy > 0) & (iy < n - 1) & (ix > 0) & (ix < n - 1)
    cy0, cy1 = np.clip(iy - 1, 0, n - 1), np.clip(iy + 1, 0, n - 1)
    cx0, cx1 = np.clip(ix - 1, 0, n - 1), np.clip(ix + 1, 0, n - 1)
    for a, b in ((cy0, ix), (cy1, ix), (iy, cx0), (iy, cx1)):
        ok &= np.isfinite(z[kk, a, b])
    return iy, ix, ok


def ambiguous_peaks(zncc, iy, ix, max_ratio, exclusion=_PEAK_EXCLUSION):
    """Whether each ZNCC surface has a distinct second peak nearly as high as the first.

    The surface is cut at ``max_ratio`` times its maximum ``z1``; the window is
    ambiguous if the part above the cut is not a single connected region (8
    neighbours) around the main peak, i.e. if a local maximum higher than
    ``max_ratio * z1`` is separated from the main peak by a dip below that level
    (the "peak ratio" of Hu & Mordohai 2012, counting only distinct peaks). Regions
    within ``exclusion`` pixels (Chebyshev distance) of the main peak are part of
    it. A repetitive texture (stripes, regular patterns) gives several such
    regions; noise-like windows give many; a single straight edge gives one
    elongated region (a ridge: the offset along the edge is weakly constrained)
    and is not flagged here; :func:`weak_curvature` catches the flat ridges. Points
    on the border of the search range count like the others.

    Parameters
    ----------
    zncc : ndarray, shape (K, n, n)
        ZNCC surfaces (NaN = not evaluated).
    iy, ix : ndarray of int, shape (K,)
        Position of the main peak (from :func:`integer_peaks`).
    max_ratio : float
        Level of the cut, relative to the main peak, in (0, 1].
    exclusion : int
        Half-size of the zone around the main peak merged with it.

    Returns
    -------
    ndarray of bool, shape (K,)
        True if ambiguous, or if the main peak is not positive (no real match).
    """
    k, n, _ = zncc.shape
    kk = np.arange(k)
    z = np.where(np.isfinite(zncc), zncc, -np.inf)
    z1 = z[kk, iy, ix]
    above = z >= (max_ratio * z1)[:, None, None]
    v = np.arange(n)
    near = (np.abs(v[None, :, None] - iy[:, None, None]) <= exclusion) & (
        np.abs(v[None, None, :] - ix[:, None, None]) <= exclusion
    )
    above |= near  # the exclusion zone joins every part of the main peak close to it
    # a region above the cut not 8-connected to the main peak (compiled flood fill)
    from tio import _kernels

    other = np.empty(k, dtype=bool)
    _kernels.separate_regions(
        np.ascontiguousarray(above), iy.astype(np.int64), ix.astype(np.int64), other
    )
    return other | ~(z1 > 0)


# --------------------------------------------------------------------------------------
# Sub-pixel stage
# --------------------------------------------------------------------------------------
def taper(x, w, roll=None):
    """Continuous taper of a ``w``-pixel window: 0 at ``x = -1`` and ``x = w``, a cos^2
    roll-off over ``roll`` pixels from each end and 1 in between.

    ``roll`` defaults to :func:`taper_roll`; ``roll = (w + 1) / 2`` gives a Hann taper.
    Like the Hann taper it can be evaluated at any real position, which lets it follow
    a sub-pixel shift of the content.
    """
    if roll is None:
        roll = taper_roll(w)
    x = np.asarray(x, dtype=np.float64)
    d = np.minimum(x + 1.0, w - x)  # distance to the zero points
    t = np.clip(d / roll, 0.0, 1.0)
    return np.where((x > -1.0) & (x < w), np.sin(0.5 * np.pi * t) ** 2, 0.0)


def taper_roll(w):
    """Roll-off (pixels) of the sub-pixel taper of a ``w``-pixel window: ``w / 6``.

    Measured again with the square-root whitening of every window (:func:`whitening`) on
    the 90 small-crop pairs of ``benchmarks/bench_correlation.py`` (other noise draws;
    RMSE per axis, uniform shifts 1 % noise / lobes 3 % noise, Landsat-8 / Landsat-7 /
    Sentinel-2): w/6 0.0115 / 0.0146 / 0.0192 and 0.043 / 0.045 / 0.061 px; w/4 0.0128 /
    0.0181 / 0.0203 and 0.048 / 0.051 / 0.076 (worse everywhere); w/7 0.0112 / 0.0139 /
    0.0197 and 0.042 / 0.044 / 0.059 (better lobes, but the Sentinel-2 uniform case
    nearer its 0.02 px target and its largest mean error 0.0051 against 0.0039 px); w/8
    0.0111 / 0.0137 / 0.0204 (over 0.02 px on Sentinel-2). Earlier measurements:

    With a whitening that followed the ZNCC peak (see :func:`whitening`) and window
    deformation, measured on all fractional shifts 0, 0.3, 0.6, 0.9 and the lobes of
    ``benchmarks/bench_correlation.py`` (RMSE per axis, Landsat-8 / Landsat-7 /
    Sentinel-2): roll-off w/4: uniform 1 % noise 0.0126 / 0.0169 / 0.0196 px, lobes
    3 % noise 0.046 / 0.049 / 0.066; w/6: 0.0112 / 0.0135 / 0.0189 and 0.041 / 0.042 /
    0.058; w/8: 0.0110 / 0.0134 / 0.0205 and 0.040 / 0.038 / 0.056, but a mean error
    of 0.009 px at some fractions on Sentinel-2 (0.006 with w/6). Earlier (fixed
    whitening, no deformation; uniform shifts, 1 % noise): Hann taper 0.022 / 0.027 /
    0.047 px; roll-off of 12 px 0.017 / 0.023 / 0.041;
    8 px 0.014 / 0.017 / 0.038; no loss of the freedom from pixel-locking (the taper
    of the secondary follows the estimate). A flatter window uses more pixels with
    full weight, hence averages more noise (older measurements gave the opposite
    ranking between 8 and 12 px, with a fixed whitening exponent).
    """
    return max(1.0, w / 6.0)


def _weighted_demean(a, weight):
    """``(a - weighted mean) * weight`` for each image of a batch."""
    sw = np.maximum(weight.sum(axis=(1, 2), keepdims=True), 1e-12)
    mean = (a * weight).sum(axis=(1, 2), keepdims=True) / sw
    return (a - mean) * weight


def mask_weight(valid, frac_y, frac_x, erode=2, sigma=0.75):
    """Smooth weight of the usable pixels, evaluated at positions moved by a sub-pixel shift.

    The usable-pixel mask is eroded by ``erode`` pixels and blurred by a Gaussian of
    standard deviation ``sigma``; the blurred function is evaluated exactly at the
    positions ``(y - frac_y, x - frac_x)`` (separable convolution with per-window
    shifted Gaussian taps). Multiplying a window by this weight (with shift 0) and
    the matching secondary block by the shifted weight keeps the two weighted signals
    shifted copies of each other, like the moving taper of the sub-pixel estimator
    (:func:`_subpixel_fast`), while giving unusable pixels a weight below
    0.5 % for ``|frac| <= 0.5``.

    Parameters
    ----------
    valid : ndarray of bool, shape (K, n, n)
        Usable pixels.
    frac_y, frac_x : ndarray, shape (K,)
        Shift of the evaluation positions.
    erode, sigma : float
        Erosion (pixels) and Gaussian standard deviation (pixels).

    Returns
    -------
    ndarray of float32, shape (K, n, n)
        Weight in [0, 1] (1 far from unusable pixels).
    """
    k, n, _ = valid.shape
    rad = int(np.ceil(4 * sigma)) + 1
    taps = np.arange(-rad, rad + 1, dtype=np.float64)
    norm = 1.0 / (sigma * np.sqrt(2.0 * np.pi))

    def weights(frac):
        t = taps[None, :] - np.asarray(frac, np.float64)[:, None]
        return (norm * np.exp(-0.5 * (t / sigma) ** 2)).astype(np.float32)  # (K, taps)

    # M(y) = sum_t E(y - t) g(t - frac), in float32 (a weight: ample precision), compiled
    from tio import _kernels

    out = np.empty((k, n, n), dtype=np.float32)
    v = np.ascontiguousarray(valid, dtype=bool)
    _kernels.mask_blur(v, int(erode), weights(frac_y), weights(frac_x), rad, out)
    return out


def _parabolic(ym, y0, yp):
    """Vertex offset and height of the parabola through (-1, ym), (0, y0), (1, yp).

    The offset is clipped to [-0.5, 0.5] and is 0 (height ``y0``) when the three
    points are not concave.
    """
    den = ym - 2.0 * y0 + yp
    with np.errstate(invalid="ignore", divide="ignore"):
        concave = den < 0
        d = np.where(concave, 0.5 * (ym - yp) / den, 0.0)
    d = np.clip(np.nan_to_num(d), -0.5, 0.5)
    height = y0 - 0.25 * (ym - yp) * d
    return d, height


@functools.lru_cache(maxsize=16)
def spectral_weight(size):
    """Weights of the half spectrum (``rfft2`` layout) used by the sub-pixel estimator.

    Separable cosine roll-off ``cos(pi f / 2)`` (``f`` = frequency / Nyquist), 1 at DC
    and 0 at Nyquist, times the Hermitian multiplicity (2 for the columns whose
    conjugate is not stored). Frequencies near Nyquist are aliased in most satellite
    images and are spread by the taper; phase correlation that trusts them locks onto
    integer shifts. Measured on Landsat-8 windows of 32 px shifted by 0.25 px: bias
    -0.012 px with a flat weight, -0.001 px with a cos^2 roll-off. On the uniform
    cases of ``benchmarks/bench_correlation.py`` (1 % noise, RMSE per axis on
    Landsat-8 / Landsat-7 / Sentinel-2, largest mean error over the fractions):
    cos^4 0.016 / 0.018 / 0.028 px (0.007 px); cos^3 0.015 / 0.017 / 0.025 (0.006);
    cos^2 0.014 / 0.017 / 0.022 (0.004); cos 0.013 / 0.017 / 0.020 (0.003);
    cos^0.5 0.013 / 0.019 / 0.020 (0.004, two gross errors on Landsat-7).
    """
    fy = np.abs(sfft.fftfreq(size)) * 2.0  # 1 at Nyquist
    fx = sfft.rfftfreq(size) * 2.0
    gy = np.cos(0.5 * np.pi * fy)
    gx = np.cos(0.5 * np.pi * fx)
    gx[1:] *= 2.0
    if size % 2 == 0:
        gx[-1] = 0.0
        gy[size // 2] = 0.0
    out = np.outer(gy, gx)
    out.flags.writeable = False
    return out


def _parabolic_init(zncc, iy, ix):
    """Sub-pixel position of the ZNCC peak by parabolas through the integer maximum."""
    kk = np.arange(zncc.shape[0])
    z0 = zncc[kk, iy, ix]
    fy = _parabolic(zncc[kk, iy - 1, ix], z0, zncc[kk, iy + 1, ix])[0]
    fx = _parabolic(zncc[kk, iy, ix - 1], z0, zncc[kk, iy, ix + 1])[0]
    return fy, fx


def weak_curvature(zncc, iy, ix, ok=None, min_ratio=None):
    """Whether each ZNCC peak is too flat in some direction (a ridge).

    The Hessian of the surface at the integer maximum ``z1`` (finite differences
    over its 3 x 3 neighbourhood) gives the smallest fall-off of the correlation per
    squared pixel, ``lam``, over all directions. The offset is poorly constrained
    along that direction when ``lam`` is small compared with the dissimilarity at
    the peak, ``1 - z1`` (which grows with noise): a window is flagged when
    ``lam < min_ratio * (1 - z1)`` (default ``_MIN_CURVATURE``). A straight edge
    gives such a ridge: the peak then wanders along it with the noise, by several
    pixels, with a high score. Only windows where ``ok`` (default all) is True
    are evaluated (the others need a bracketed peak); they return False.
    """
    if min_ratio is None:
        min_ratio = _MIN_CURVATURE
    k = zncc.shape[0]
    out = np.zeros(k, dtype=bool)
    jj = np.arange(k) if ok is None else np.flatnonzero(ok)
    if jj.size == 0:
        return out
    py, px = iy[jj], ix[jj]

    def z(a, b):
        return zncc[jj, py + a, px + b]

    z0 = z(0, 0)
    hyy = z(1, 0) + z(-1, 0) - 2 * z0
    hxx = z(0, 1) + z(0, -1) - 2 * z0
    hxy = 0.25 * (z(1, 1) - z(1, -1) - z(-1, 1) + z(-1, -1))
    tr = -(hyy + hxx)
    det = hyy * hxx - hxy * hxy
    lam = 0.5 * tr - np.sqrt(np.maximum(0.25 * tr * tr - det, 0.0))
    out[jj] = ~(lam >= min_ratio * np.maximum(1.0 - z0, 1e-6))
    return out


def peak_score(zncc, iy, ix):
    """Peak ZNCC interpolated by parabolas through the integer maximum (clipped to [0, 1])."""
    kk = np.arange(zncc.shape[0])
    z0 = zncc[kk, iy, ix]
    hy = _parabolic(zncc[kk, iy - 1, ix], z0, zncc[kk, iy + 1, ix])[1] - z0
    hx = _parabolic(zncc[kk, iy, ix - 1], z0, zncc[kk, iy, ix + 1])[1] - z0
    return np.clip(z0 + hy + hx, 0.0, 1.0)


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------
def _bytes_per_window(window, search, upsample_points):
    """Upper bound of the working memory per window (bytes), measured with tracemalloc.

    The masked integer stage dominates: float64 copies and float32 stacks of the
    sub-image, 2 x 3 half spectra, 6 products and 6 correlation planes.
    """
    p = sfft.next_fast_len(window + 2 * search, real=True)
    integer = 110 * p * p
    q = _subpixel_size(window)
    subpix = 40 * q * q + 8 * upsample_points * (q + upsample_points)
    return integer + subpix


def grid_shape(shape, window, step):
    """Shape ``(ny, nx)`` of the output grid of an image of shape ``shape``."""
    return ((shape[0] - window) // step + 1, (shape[1] - window) // step + 1)


def _even_batches(n, most):
    """Bounds ``(start, stop)`` of an even number of near-equal batches covering ``n``
    items (at most ``most`` each; one batch if ``n < 2``), so that two threads get work
    of the same size even when ``n`` would fill a single batch. Depends only on ``n``
    and ``most``."""
    n, most = int(n), max(1, int(most))
    if n < 2:
        return [(0, n)] if n else []
    parts = max(2, -(-n // most))
    parts += parts % 2
    size = -(-n // parts)
    return [(b, min(b + size, n)) for b in range(0, n, size)]


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _thread_pool(threads):
    """The process's pool of ``threads`` threads (at least one).

    Created on first use and kept, not started again on every call
    (``benchmarks/bench_correlation_threads.py`` compares the two per call: a pool per
    call took 1.5-1.8 % more wall time on the small crops of bench_correlation).
    Keyed by the process id as well, so that a forked child makes its own
    (the threads of the parent's pool do not exist in the child). Concurrent calls
    share the pool; its tasks never wait for other tasks of the pool, so they cannot
    deadlock. The threads are idle between calls and joined at interpreter exit.
    """
    threads = max(1, int(threads))
    key = (os.getpid(), threads)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tio-correlate")
            _POOLS[key] = pool
    return pool


def _map_tasks(fn, tasks, workers):
    """``[fn(t) for t in tasks]`` on ``workers`` threads: the calling thread and
    ``workers - 1`` threads of :func:`_thread_pool` take the tasks in order from a
    shared counter (the caller works too: one thread fewer to wake up per call, and
    the caller is already running; handing every task to a pool of ``workers``
    threads took 1.4-1.8 % more wall time, ``benchmarks/bench_correlation_threads.py``).
    Results in the order of ``tasks``. The first exception stops the handing out of
    tasks and is raised once the tasks already started have finished.
    """
    tasks = list(tasks)
    n = len(tasks)
    workers = min(max(1, int(workers)), n)
    if workers <= 1:
        return [fn(t) for t in tasks]
    results = [None] * n
    lock = threading.Lock()
    state = {"next": 0, "failed": False}

    def drain():
        while True:
            with lock:
                i = state["next"]
                if i >= n or state["failed"]:
                    return
                state["next"] = i + 1
            try:
                results[i] = fn(tasks[i])
            except BaseException:
                state["failed"] = True
                raise

    pool = _thread_pool(workers - 1)
    helpers = [pool.submit(drain) for _ in range(workers - 1)]
    try:
        drain()
    finally:
        for h in helpers:
            h.result()
    return results


@functools.lru_cache(maxsize=1)
def _tune_malloc():
    """Keep freed memory in the process (glibc only; once per process): allocations below
    64 MB from the heap, not from fresh ``mmap`` pages, and up to 256 MB of free memory
    kept instead of being returned to the system (``mallopt`` ``M_MMAP_THRESHOLD``,
    ``M_TRIM_THRESHOLD``, ``M_TOP_PAD``).

    Each batch of windows allocates temporary arrays of a few MB (FFT buffers and
    spectra, many of them by numpy and scipy); by default glibc maps them afresh and
    unmaps them when freed, and the page faults and unmappings of the worker threads
    serialise on the process's memory map. Measured (bench_correlation's 90 small-crop
    pairs, two threads): 12-35 % less wall time (the same pairs in two processes do
    not slow each other, in two threads each task took 1.6 times as long). The memory
    kept is reused by the next batches; peak memory is unchanged within the benchmark's
    measurement. Set the environment variable ``TIO_MALLOC_TUNING=0`` to leave the
    allocator alone. Failure (another C library) is silent: nothing is changed.
    """
    import os
    import sys

    if os.environ.get("TIO_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
    mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    mallopt(-2, 64 << 20)  # M_TOP_PAD


def offset_field(
    reference,
    secondary,
    reference_mask=None,
    secondary_mask=None,
    *,
    window,
    step,
    search,
    prefilter,
    max_masked_fraction,
    min_texture=0.0,
    max_peak_ratio=1.0,
    prior=None,
    wallis_size=None,
    workers=1,
    iterations=2,
    upsample=10,
    deform=0,
):
    """Offsets of the secondary image relative to the reference on a regular grid.

    See :func:`tio.correlation.correlate_arrays` for the meaning of the arguments.
    ``prior`` is None or a pair ``(dy, dx)`` of float arrays of the output grid
    shape (pixels; NaN = 0): the search of window ``(i, j)`` is centred on the
    rounded prior offset. ``workers`` is the number of threads that process the
    tiles. ``iterations`` is the number of sub-pixel estimates (the first with the
    same taper on both windows, the next ones with the secondary taper moved to the
    previous estimate); ``upsample`` only sizes the tiles (every sub-pixel peak is now
    found by Newton iterations on the continuous correlation, not on an upsampled
    grid). ``deform`` is the number of
    window-deformation passes (:func:`deform_refine`; 0 = off).

    Returns
    -------
    dy, dx, score : ndarray of float32, shape (ny, nx)
        Offsets in pixels and quality (peak ZNCC, parabola-interpolated, clipped to
        [0, 1]); NaN where the window is rejected: too many unusable pixels in the
        reference window or in every candidate secondary window, flat or weak
        texture, ambiguous correlation (second peak too close to the first),
        correlation peak on the border of the search range or not bracketed by
        evaluated offsets, matched secondary window with too many unusable pixels,
        or sub-pixel refinement moving the integer offset onto the border of the
        search range or the estimate more than 0.75 px from the integer peak.
    """
    _tune_malloc()
    w, s = int(window), int(search)
    ny, nx = grid_shape(reference.shape, w, step)
    if prior is None:
        oy = np.zeros((ny, nx), dtype=np.int64)
        ox = np.zeros((ny, nx), dtype=np.int64)
    else:
        # beyond the image size there is no overlap anyway: clip (bounds the padding)
        lim = max(reference.shape)
        oy, ox = (
            np.rint(np.clip(np.nan_to_num(np.asarray(p, np.float64)), -lim, lim)).astype(np.int64)
            for p in prior
        )
    big = max(int(np.abs(oy).max(initial=0)), int(np.abs(ox).max(initial=0)))
    # Secondary padded by ``search`` (plus the largest prior) so every window has a
    # full sub-image; the pad is unusable (zero weight), which lets edge windows use
    # what lies inside the image.
    pad = s + big

    def prepare_secondary():
        sec, sec_valid, _ = prepare_image(secondary, secondary_mask, prefilter, w, wallis_size)
        sec = np.pad(sec, pad, mode="edge")
        sec_valid = np.pad(sec_valid, pad, mode="constant", constant_values=False)
        return sec, sec_valid

    # the secondary is prepared by a pool thread while this one prepares the reference
    # and measures its texture (serial work that would leave the other threads idle)
    workers = max(1, int(workers))
    sec_task = _thread_pool(workers - 1).submit(prepare_secondary) if workers > 1 else None
    ref, ref_valid, texture = prepare_image(reference, reference_mask, prefilter, w, wallis_size)
    max_bad = float(max_masked_fraction)
    min_sd = 0.0
    if min_texture > 0:
        min_sd = float(min_texture) * texture_scale(texture, ref_valid, w, step, max_bad)
    sec, sec_valid = sec_task.result() if sec_task is not None else prepare_secondary()

    p0 = w + 2 * s
    views = dict(
        refimg=ref,
        secimg=sec,
        svalimg=sec_valid,
        rvalimg=ref_valid,
        teximg=texture,
        all_valid=bool(ref_valid.all()),
        tex_is_ref=texture is ref,
        oy=oy + big,  # top-left corner of the sub-image, relative to i * step (padded)
        ox=ox + big,
    )

    out_dy = np.full((ny, nx), np.nan, dtype=np.float32)
    out_dx = np.full((ny, nx), np.nan, dtype=np.float32)
    out_sc = np.full((ny, nx), np.nan, dtype=np.float32)

    m = 2 * int(np.ceil(0.6 * upsample)) + 1
    per_chunk = max(1, min(_MAX_BATCH, _BATCH_BYTES // _bytes_per_window(w, s, m)))
    # near-square tiles: the shared blocks of the integer stage (_zncc_shared) and the
    # tile's secondary box overlap the neighbouring tiles by a margin along each side
    # (17 x 17 lattice points for 16 x 16 windows at step 16, 5 x 64 for 4 x 63), and
    # tiles of equal sizes, so that the threads finish together (the tiles of a
    # 15 x 63 grid: 15 x 16 windows, not 15 x 17 and a last one of 15 x 12)
    bi = max(1, min(ny, math.isqrt(per_chunk)))
    bi = -(-ny // -(-ny // bi))
    bj = max(1, min(nx, per_chunk // bi))
    bj = -(-nx // -(-nx // bj))
    opts = dict(
        w=w,
        s=s,
        step=int(step),
        max_bad=max_bad,
        min_overlap=max(_MIN_OVERLAP, int(np.ceil(0.1 * w * w))),
        min_sd=min_sd,
        max_peak_ratio=float(max_peak_ratio),
        iterations=iterations,
        upsample=upsample,
    )
    # The tiling depends only on the sizes, not on ``workers``: the results are the
    # same whatever the number of threads.
    tiles = [
        (np.arange(i0, min(i0 + bi, ny)), np.arange(j0, min(j0 + bj, nx)))
        for i0 in range(0, ny, bi)
        for j0 in range(0, nx, bj)
    ]

    def store(result):
        if result is not None:
            ii, jj, dy, dx, score = result
            out_dy[ii, jj] = dy
            out_dx[ii, jj] = dx
            out_sc[ii, jj] = score

    # Windows whose secondary sub-image reaches outside the image (edges) use the
    # masked formulation, in batches of their own; the others are processed tile by
    # tile, those without any unusable pixel on the fast path (the rest, found in the
    # tiles, are gathered and processed afterwards in batches of the same size).
    gi, gj = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    r0 = gi * int(step) + views["oy"]
    c0 = gj * int(step) + views["ox"]
    inside = (r0 >= pad) & (r0 + p0 <= pad + reference.shape[0])
    inside &= (c0 >= pad) & (c0 + p0 <= pad + reference.shape[1])
    views["inside"] = inside

    # The edge windows cost about twice as much per window as the others: their batches
    # are smaller (a quarter of a tile), of equal sizes (an even number of them) and go
    # first, so that the threads finish together (longest tasks first). Each window's
    # result does not depend on its batch. (Tiles cut smaller than per_chunk, to balance
    # the threads on small images - at least 8 or 4 per image - were slower in trial
    # runs on the small crops of bench_correlation.py.)
    small = max(1, per_chunk // 4)
    ei, ej = gi[~inside], gj[~inside]
    tasks = [("masked", (ei[a:b], ej[a:b])) for a, b in _even_batches(ei.size, small)]
    tasks += [
        ("tile", t) for t in tiles if inside[t[0][0] : t[0][-1] + 1, t[1][0] : t[1][-1] + 1].any()
    ]

    def run(task):
        kind, args = task
        if kind == "tile":
            return _tile(views, *args, **opts)
        return _masked_tile(views, *args, **opts), None

    pending = []
    for result, rest in _map_tasks(run, tasks, workers):
        store(result)
        if rest is not None:
            pending.append(rest)
    if pending:
        pi = np.concatenate([p[0] for p in pending])
        pj = np.concatenate([p[1] for p in pending])
        # an even number of equal batches: both threads get work
        tasks = [("masked", (pi[a:b], pj[a:b])) for a, b in _even_batches(pi.size, per_chunk)]
        for result, _ in _map_tasks(run, tasks, workers):
            store(result)
    out_dy += oy
    out_dx += ox
    if deform > 0:
        deform_refine(
            ref,
            ref_valid,
            sec,
            sec_valid,
            pad,
            out_dy,
            out_dx,
            w=w,
            step=int(step),
            passes=deform,
            score=out_sc,
            workers=workers,
        )
    return out_dy, out_dx, out_sc


def _tile(views, rows, cols, *, step, **opts):
    """Gather the windows of one tile (rows x cols of the output grid) and process them."""
    ii, jj = np.meshgrid(rows, cols, indexing="ij")
    ii, jj = ii.ravel(), jj.ravel()
    inside = views["inside"][ii, jj]
    ii, jj = ii[inside], jj[inside]  # the others are processed by _masked_tile
    rv = None
    if not views["all_valid"]:
        rv = _gather(views["rvalimg"], ii * step, jj * step, opts["w"])
        keep = 1.0 - rv.mean(axis=(1, 2)) <= opts["max_bad"]
        if not keep.any():
            return None, None
        ii, jj, rv = ii[keep], jj[keep], rv[keep]
    # top-left corners of the secondary sub-images in the padded secondary
    r0 = ii * step + views["oy"][ii, jj]
    c0 = jj * step + views["ox"][ii, jj]
    # Local variance of the secondary at every offset of every window, from integral
    # images of the tile's secondary box (windows overlap heavily).
    w, s = opts["w"], opts["s"]
    p0 = w + 2 * s
    # (A prior that varies wildly within the tile would make the box huge: then the
    # variances are computed window by window, by FFT.)
    rmin, cmin = r0.min(), c0.min()
    rmax, cmax = r0.max() + p0, c0.max() + p0
    box = views["secimg"][rmin:rmax, cmin:cmax]
    lv = None
    if box.size <= 4 * ii.size * p0 * p0:
        # the map and each window's corner in it (read there by the compiled
        # normalisation, no gathered copy)
        lv = (local_variance_map(box, w), r0 - rmin, c0 - cmin)
    # Windows without any unusable pixel (reference window and secondary sub-image)
    # take the fast path here; the others are returned for :func:`_masked_tile`.
    k = ii.size
    if lv is None:
        return None, (ii, jj)
    if rv is None and views["svalimg"][rmin:rmax, cmin:cmax].all():
        clean = np.ones(k, dtype=bool)
    else:
        from tio import _kernels

        clean = np.empty(k, dtype=bool)
        _kernels.windows_usable_at(views["svalimg"], r0, c0, int(p0), clean)
        if rv is not None:
            clean &= rv.all(axis=(1, 2))
    rest = None
    if not clean.all():
        d = ~clean
        rest = (ii[d], jj[d])
        ii, jj, r0, c0 = ii[clean], jj[clean], r0[clean], c0[clean]
        lv = (lv[0], lv[1][clean], lv[2][clean])
        if ii.size == 0:
            return None, rest
    tex = None
    if opts["min_sd"] > 0 and not views["tex_is_ref"]:
        tex = _gather(views["teximg"], ii * step, jj * step, w)
    corners = (ii * step, jj * step, r0, c0)
    # one prior offset for every clean window of the tile: the integer stage on blocks
    # shared by neighbouring windows (_zncc_shared), when the step allows it
    shared = None
    b = _shared_block(w, step)
    if b and (r0 - ii * step == r0[0] - ii[0] * step).all():
        if (c0 - jj * step == c0[0] - jj[0] * step).all():
            shared = (b, step, box)
    dy, dx, score = _process_clean(
        views["refimg"], views["secimg"], corners, lv, tex, shared=shared, **opts
    )
    return (ii, jj, dy, dx, score), rest


def _masked_tile(views, ii, jj, *, step, **opts):
    """Process a batch of windows (output-grid indices) with the masked formulation.

    The windows and sub-images are gathered by a compiled kernel (:func:`_gather`: the
    same arrays as fancy indexing of the sliding-window views, without the GIL)."""
    w, p0 = opts["w"], opts["w"] + 2 * opts["s"]
    rtop, rleft = ii * step, jj * step
    rv = _gather(views["rvalimg"], rtop, rleft, w)
    if not views["all_valid"]:
        keep = 1.0 - rv.mean(axis=(1, 2)) <= opts["max_bad"]
        if not keep.any():
            return None
        ii, jj, rv = ii[keep], jj[keep], rv[keep]
        rtop, rleft = rtop[keep], rleft[keep]
    r0 = rtop + views["oy"][ii, jj]
    c0 = rleft + views["ox"][ii, jj]
    r = _gather(views["refimg"], rtop, rleft, w)
    tex = None
    if opts["min_sd"] > 0:
        tex = r if views["tex_is_ref"] else _gather(views["teximg"], rtop, rleft, w)
    qv = _gather(views["svalimg"], r0, c0, p0)
    q = _gather(views["secimg"], r0, c0, p0)
    dy, dx, score = _process_block(r, q, rv, qv, None, tex, **opts)
    return ii, jj, dy, dx, score


def _gather(image, tops, lefts, size):
    """``image[tops[k]:tops[k] + size, lefts[k]:lefts[k] + size]`` stacked (K, size,
    size), by :func:`tio._kernels.gather_at`."""
    from tio import _kernels

    out = np.empty((tops.shape[0], size, size), dtype=image.dtype)
    _kernels.gather_at(image, tops.astype(np.int64), lefts.astype(np.int64), int(size), out)
    return out


def _subpixel_size(w):
    """Side of the FFTs of the sub-pixel stage for ``w``-px windows: the block (``w + 2``
    px) zero-padded to the next size whose real FFT is fast (36 for ``w = 32``; the
    complex fast size 35 = 5 x 7 costs 1.8 times as much for the real transform)."""
    return sfft.next_fast_len(w + 2, real=True)


@functools.lru_cache(maxsize=16)
def _spectral_weight32(size):
    out = spectral_weight(size).astype(np.float32)
    out.flags.writeable = False
    return out


def _demeaned(a, in_place=False):
    """``a`` minus its mean for each image of a batch (float32; the first output of
    :func:`_demean`, without the std); in ``a`` itself if ``in_place`` and ``a`` is
    float32 (a copy the caller owns)."""
    n = a.shape[1] * a.shape[2]
    mean = a.sum(axis=(1, 2), dtype=np.float64) / n
    out = a if in_place and a.dtype == np.float32 else a.astype(np.float32)
    out -= mean.astype(np.float32)[:, None, None]
    return out


def _demean(a):
    """``a`` minus its mean for each image of a batch (float32), flatness and std.

    Same conventions as :func:`_standardise` (without the division by the std).
    """
    n = a.shape[1] * a.shape[2]
    mean = a.sum(axis=(1, 2), dtype=np.float64) / n
    out = a.astype(np.float32)
    out -= mean.astype(np.float32)[:, None, None]
    sd = np.sqrt(np.einsum("kij,kij->k", out, out).astype(np.float64) / n)
    flat = (sd <= _FLAT * np.abs(mean)) | (sd == 0)
    return out, flat, sd


def _zncc_clean(ref, sec, rtop, rleft, qtop, qleft, w, s, lv):
    """ZNCC surfaces of windows without unusable pixels (see :func:`zncc_surfaces`).

    ``ref``/``sec`` are the (prepared, padded) images; reference window ``k`` has its
    top-left pixel at ``(rtop[k], rleft[k])``, its secondary sub-image (side
    ``w + 2 s``) at ``(qtop[k], qleft[k])``. They are gathered straight into the
    zero-padded FFT buffers, standardised and demeaned
    (:func:`tio._kernels.gather_windows`, no intermediate copies). ``lv`` is the local
    variance of the (un-normalised) secondary windows at every offset (K, 2s + 1,
    2s + 1), or a tuple ``(map, rows, cols)``: a local-variance map and the corner of
    window ``k``'s offsets in it. Only the
    ``2 s + 1`` rows of the correlation that are needed are transformed back. Returns
    the surfaces (float64), the standardised reference windows (a view of a buffer),
    their std and the demeaned secondary sub-images (float32).
    """
    from tio import _kernels

    n = 2 * s + 1
    p = w + 2 * s
    k = rtop.shape[0]
    size = sfft.next_fast_len(p, real=True)
    rbuf = np.empty((k, size, size), dtype=np.float32)
    qbuf = np.empty((k, size, size), dtype=np.float32)
    sd_r, sd_q = np.empty(k), np.empty(k)
    flat_r, flat_q = np.empty(k, dtype=bool), np.empty(k, dtype=bool)
    _kernels.gather_windows(
        ref, sec, rtop, rleft, qtop, qleft, w, p, _FLAT, rbuf, qbuf, sd_r, flat_r, sd_q, flat_q
    )
    fr = sfft.rfft2(rbuf)
    np.conjugate(fr, out=fr)
    fr *= sfft.rfft2(qbuf)
    num = _irfft2_rows(fr, size, n)[:, :, :n]
    del fr
    # With a standardised reference and an un-normalised secondary:
    # zncc = num / sqrt(w^2 * local variance), the secondary's scale cancels.
    zncc = np.empty((k, n, n))
    if isinstance(lv, tuple):  # (map, rows, cols): window k's at map[rows[k]:, cols[k]:]
        lvm, lr, lc = lv
        _kernels.zncc_normalise_at(
            num,
            lvm,
            lr.astype(np.int64),
            lc.astype(np.int64),
            sd_q,
            flat_r | flat_q,
            w,
            _FLAT,
            zncc,
        )
    else:
        _kernels.zncc_normalise(num, lv, sd_q, flat_r | flat_q, w, _FLAT, zncc)
    return zncc, rbuf[:, :w, :w], sd_r, qbuf[:, :p, :p]


def _shared_block(w, step):
    """Block side of the shared-block integer stage (:func:`_zncc_shared`) for windows
    of ``w`` px at ``step`` px: ``w / 2`` when ``step`` divides it (then every block of a
    window is a block of the lattice at ``step``, shared with the neighbouring windows),
    else 0 (the stage does not apply)."""
    if w % 2 or step >= w or (w // 2) % step:
        return 0
    return w // 2


def _zncc_shared(ref, sec, rtop, rleft, qtop, qleft, w, s, lv, b, step, box):
    """:func:`_zncc_clean` with the correlations computed on blocks shared by the windows.

    Each reference window is cut into ``(w / b)^2`` blocks of ``b x b`` px (``b`` from
    :func:`_shared_block`); with a step that divides ``b`` and one prior offset for all
    the windows (``qtop - rtop`` and ``qleft - rleft`` constant: the caller checks it),
    these blocks and the secondary regions they are correlated with (``b + 2 s`` px
    square) lie on a lattice at ``step`` px shared by neighbouring windows. Every
    lattice point's block (minus its mean) and region (minus its mean) are transformed
    once (FFT side ``b + 2 s`` rounded up to a fast size: 32 instead of 48 for 32-px
    windows and a search of 8 px), their cross-power spectra are summed over the blocks
    of each window (:func:`tio._kernels.lattice_sums`) and transformed back once per
    window; the sum of the per-block means' deviations from the window mean times the
    box sums of the secondary (:func:`tio._kernels.block_mean_correction`) turns it
    into the correlation of the demeaned window, divided by its std: the numerator of
    :func:`_zncc_clean`, equal up to float32 rounding. The reference windows are at
    multiples of ``step`` (the grid step); ``box`` is the secondary box of the tile in
    which ``lv`` (a tuple ``(map, rows, cols)``) is indexed. Same outputs
    as :func:`_zncc_clean`, except that the secondary sub-images are not gathered
    (None is returned in their place: the sub-pixel stage reads them from ``sec``);
    the standardised reference windows, the stds and the flatness are those of
    :func:`tio._kernels.gather_windows` (:func:`tio._kernels.gather_references`).
    """
    from tio import _kernels

    n = 2 * s + 1
    p = w + 2 * s
    k = rtop.shape[0]
    rs = np.empty((k, w, w), dtype=np.float32)
    sd_r, sd_q = np.empty(k), np.empty(k)
    flat_r, flat_q = np.empty(k, dtype=bool), np.empty(k, dtype=bool)
    _kernels.gather_references(
        ref, sec, rtop, rleft, qtop, qleft, w, p, _FLAT, rs, sd_r, flat_r, sd_q, flat_q
    )
    top, left = int(rtop.min()), int(rleft.min())
    m = b // step
    nb = w // b
    iu = ((rtop - top) // step).astype(np.int64)
    iv = ((rleft - left) // step).astype(np.int64)
    nu, nv = int(iu.max()) + (nb - 1) * m + 1, int(iv.max()) + (nb - 1) * m + 1
    pb = b + 2 * s
    size = sfft.next_fast_len(pb, real=True)
    blocks = np.empty((nu * nv, size, size), dtype=np.float32)
    regions = np.empty((nu * nv, size, size), dtype=np.float32)
    mean_r = np.empty(nu * nv)
    qdy, qdx = int(qtop[0] - rtop[0]), int(qleft[0] - rleft[0])
    _kernels.lattice_blocks(
        ref, sec, top, left, qdy, qdx, step, nu, nv, b, pb, blocks, regions, mean_r
    )
    spec = sfft.rfft2(blocks)
    np.conjugate(spec, out=spec)
    spec *= sfft.rfft2(regions)
    fw = np.empty((k, size, size // 2 + 1), dtype=spec.dtype)
    _kernels.lattice_sums(spec, iu, iv, nv, m, nb, fw)
    del spec
    num = _irfft2_rows(fw, size, n)[:, :, :n]
    del fw
    lvm, lr, lc = lv
    lr, lc = lr.astype(np.int64), lc.astype(np.int64)
    bsum = np.empty((box.shape[0] - b + 1, box.shape[1] - b + 1))
    _kernels.box_sum_map(box, float(np.mean(box, dtype=np.float64)), b, bsum)
    zncc = np.empty((k, n, n))
    _kernels.block_mean_correction(
        num,
        bsum,
        mean_r,
        iu,
        iv,
        nv,
        m,
        nb,
        b,
        lr,
        lc,
        sd_r,
        flat_r,
        lvm,
        sd_q,
        flat_r | flat_q,
        w,
        _FLAT,
        zncc,
    )
    return zncc, rs, sd_r, None


def whitening(score, k):
    """Exponent of the modulus division of the cross-power spectrum: ``_WHITEN`` (0.5).

    Dividing by a power of the modulus sharpens the correlation peak, removes the
    bias of aliased, strongly textured images and keeps the low frequencies, where
    a changed scene (crops, snow, shadows) holds most of its energy, from drawing
    the peak. It also amplifies the frequencies where white noise dominates: an
    exponent that went from 0.5 for a ZNCC peak ``score`` of 1 down to 0 (plain
    cross-correlation, the matched filter for white noise) at 0.95 was used for a
    while. It gained on the white-noise cases of ``benchmarks/bench_correlation.py``
    (lobes, 3 % noise, Landsat-8: 0.041 against 0.045 px) but on the scenes of
    ``tio demo``, whose changes between dates are not white noise and whose scores
    are mostly below 0.95, it doubled the error of the time series (stable ground
    1.33 m against 0.70 m with seed 0, 1.35 m against 0.72 m with seed 3; a floor
    of 0.25 gave 0.90 m). ``score`` (ZNCC peaks, or None) is accepted for that
    reason; the exponent is the same for every window.
    """
    return np.full(k, _WHITEN)


def _subpixel_fast(
    rs, qd, iy, ix, *, w, s, iterations, init=None, deform=None, score=None, qorigin=None
):
    """Sub-pixel stage of windows without unusable pixels (compiled kernels).

    Tapered, partially whitened phase correlation (the reference window times the
    taper, the secondary block times the same taper moved by the current estimate, so
    that the two weighted signals are shifted copies when the estimate is right; the
    cross-power spectrum divided by a power of its modulus, :func:`whitening`, and
    weighted by :func:`spectral_weight`), with the peak of the correlation located by
    Newton iterations on the continuous surface (:func:`tio._kernels.newton_peaks`).
    The first estimate starts at ``init`` (the parabolic
    sub-pixel position of the ZNCC peak; zero if None), where the taper of the
    secondary is centred; each next one moves the taper to the previous estimate, up
    to ``iterations`` estimates. ``rs`` (K, w, w) reference windows (any per-window
    scale and offset), ``qd`` (K, w + 2s, w + 2s) secondary sub-images, ``iy``/``ix``
    integer peaks (indices in the ZNCC surface), ``score`` the ZNCC peaks (for
    :func:`whitening`). Returns the offsets ``ty``/``tx`` (relative to the centre of
    the sub-images) and whether each is valid: the block (one pixel larger than the
    window on every side) must stay in the sub-image, and the estimate within 0.75 px
    of the integer peak (when the two stages disagree by more than that the window is
    rejected rather than returned with a confident wrong value; measured: removes the
    rare gross errors on Landsat-7 crops). ``deform`` (optional) is a pair ``(gy, gx)`` of arrays
    (K, w + 2, w + 2): the secondary block is then sampled at those offsets from its
    pixels (window deformation, :func:`tio._kernels.deformed_blocks`). ``qorigin``
    (optional, not with ``deform``) is a pair ``(rows, cols)`` of int arrays (K,):
    ``qd`` is then the secondary image (H, W, float32), in which the sub-image of window
    ``k`` has its top-left pixel at ``(rows[k], cols[k])`` (no gathered copies; the
    blocks are demeaned with their taper weight either way).
    """
    from tio import _kernels

    k = rs.shape[0]
    size = _subpixel_size(w)
    # the tapered, demeaned reference windows in zero-padded buffers; the same buffers
    # then hold the secondary blocks (written in their first w + 2 rows and columns,
    # the rest stays zero)
    buf = np.empty((k, size, size), dtype=np.float32)
    _kernels.tapered_reference(rs, _taper2d(w), buf)
    spec = sfft.rfft2(buf)
    np.conjugate(spec, out=spec)
    sw = _spectral_weight32(size)
    q32 = qd if qd.dtype == np.float32 else qd.astype(np.float32)
    if qorigin is not None:
        q32 = q32[None]
        qoy, qox = (np.asarray(o, dtype=np.int64) for o in qorigin)
    roll = float(taper_roll(w))
    py, px, fy, fx = _first_estimates(iy, ix, init, k)
    wh = whitening(score, k)
    alive = np.ones(k, dtype=bool)
    todo = np.arange(k)
    for _ in range(max(iterations, 1)):
        sel = todo
        m = sel.size
        if m == 0:
            break
        by, bx = _block_origins(py, px, sel, s, alive)
        b = buf[:m]
        f0y, f0x = fy[sel], fx[sel]
        if qorigin is not None:
            z = np.zeros(m, dtype=np.int64)
            _kernels.tapered_blocks_at(q32, z, by + qoy[sel], bx + qox[sel], f0y, f0x, w, roll, b)
        elif deform is None:
            _kernels.tapered_blocks_at(q32, sel, by, bx, f0y, f0x, w, roll, b)
        else:
            gy = deform[0] if m == k else deform[0][sel]
            gx = deform[1] if m == k else deform[1][sel]
            qq = q32 if m == k else q32[sel]
            _kernels.deformed_blocks(qq, by, bx, gy, gx, f0y, f0x, w, roll, b)
        todo = _newton_update(sfft.rfft2(b), spec, sel, sw, wh, f0y, f0x, alive, py, px, fy, fx)
    ty = py - s + fy
    tx = px - s + fx
    alive &= (np.abs(ty - (iy - s)) <= 0.75) & (np.abs(tx - (ix - s)) <= 0.75)
    return ty, tx, alive


def _first_estimates(iy, ix, init, k):
    """Integer offsets (int64 copies of ``iy``, ``ix``) and fractions (``init``
    clipped to +-0.5, zero if None) of the first sub-pixel estimate of ``k`` windows."""
    py, px = iy.astype(np.int64), ix.astype(np.int64)
    if init is None:
        return py, px, np.zeros(k), np.zeros(k)
    fy = np.clip(np.asarray(init[0], np.float64), -0.5, 0.5).copy()
    fx = np.clip(np.asarray(init[1], np.float64), -0.5, 0.5).copy()
    return py, px, fy, fx


def _block_origins(py, px, sel, s, alive):
    """Top-left corners of the secondary blocks of the windows ``sel`` in their sub-images.

    A block is one pixel larger than the window on every side, at the integer offset
    ``py``, ``px`` (indices in the ZNCC surface, ``0 .. 2 s``); a window whose block
    would leave the sub-image loses ``alive`` (in place) and gets a clipped corner
    (:func:`tio._kernels.block_origins`, compiled: no GIL held).
    """
    from tio import _kernels

    by = np.empty(sel.size, dtype=np.int64)
    bx = np.empty(sel.size, dtype=np.int64)
    _kernels.block_origins(py, px, sel, int(s), alive, by, bx)
    return by, bx


def _newton_update(fb, spec, sel, sw, wh, f0y, f0x, alive, py, px, fy, fx):
    """One sub-pixel estimate of the windows ``sel`` (in place); the windows to redo.

    ``fb`` are the spectra of their secondary blocks, tapered at the fractions
    ``f0y``, ``f0x``; the Newton peak search (:func:`tio._kernels.newton_peaks`)
    gives the new estimate, split into its integer part (added to ``py``, ``px``)
    and fraction (``fy``, ``fx``). Windows without a converged peak lose
    ``alive``. Returned: the windows whose estimate moved by more than
    ``_REFINE`` from the taper position, where the taper of the secondary was
    not yet centred on the estimate.
    """
    from tio import _kernels

    m = sel.size
    ey, ex = np.empty(m), np.empty(m)
    conv = np.empty(m, dtype=bool)
    _kernels.newton_peaks(fb, spec, sel, sw, wh[sel], f0y, f0x, 0.25, ey, ex, conv)
    # the bookkeeping compiled too (no GIL held: a dozen small numpy calls otherwise)
    todo = np.empty(m, dtype=np.int64)
    n = _kernels.newton_bookkeeping(
        sel, ey, ex, conv, f0y, f0x, _REFINE, alive, py, px, fy, fx, todo
    )
    return todo[:n]


def _subpixel_weighted(rs, qd, iy, ix, rv, qv, *, w, s, iterations, init=None, score=None):
    """Sub-pixel stage of windows with unusable pixels near the match (compiled kernels).

    The estimator of :func:`_subpixel_fast` (Newton peak of the partially whitened
    phase correlation, first estimate at ``init``, the taper of the secondary moved by
    the current estimate, whitening exponent from :func:`whitening`), with a weight of the
    unusable pixels: where the block (``w + 2`` px square around
    the matched window) or the reference window has unusable pixels, both are also
    weighted by :func:`mask_weight` of the pixels usable in both (moved by the current
    estimate for the secondary, unmoved for the reference) and demeaned with that
    weight (:func:`tio._kernels.weighted_blocks_at`,
    :func:`tio._kernels.weighted_reference_at`). A reference spectrum is transformed
    again only when the block of its window has moved by a pixel. Same inputs and
    outputs as :func:`_subpixel_fast`, plus ``rv``/``qv`` the usable pixels of the
    reference windows and secondary sub-images.
    """
    from tio import _kernels

    k = rs.shape[0]
    size = _subpixel_size(w)
    tw = _taper2d(w)
    sw = _spectral_weight32(size)
    r32 = np.ascontiguousarray(rs, dtype=np.float32)
    q32 = np.ascontiguousarray(qd, dtype=np.float32)
    rvb = np.ascontiguousarray(rv, dtype=bool)
    qvb = np.ascontiguousarray(qv, dtype=bool)
    roll = float(taper_roll(w))
    py, px, fy, fx = _first_estimates(iy, ix, init, k)
    wh = whitening(score, k)
    spec = np.empty((k, size, size // 2 + 1), dtype=np.complex64)
    sby = np.full(k, -1, dtype=np.int64)  # block position of each reference spectrum
    sbx = np.full(k, -1, dtype=np.int64)
    buf = np.zeros((k, size, size), dtype=np.float32)
    alive = np.ones(k, dtype=bool)
    todo = np.arange(k)
    for _ in range(max(iterations, 1)):
        sel = todo
        m = sel.size
        if m == 0:
            break
        by, bx = _block_origins(py, px, sel, s, alive)
        new = (sby[sel] != by) | (sbx[sel] != bx)
        if new.any():
            ns = sel[new]
            rb = np.empty((ns.size, size, size), dtype=np.float32)
            masked = np.empty(ns.size, dtype=bool)
            _kernels.weighted_reference_at(
                r32, rvb, qvb, ns, by[new], bx[new], tw, 2, 0.75, rb, masked
            )
            sp = sfft.rfft2(rb)
            np.conjugate(sp, out=sp)
            spec[ns] = sp
            sby[ns], sbx[ns] = by[new], bx[new]
        b = buf[:m]
        f0y, f0x = fy[sel], fx[sel]
        _kernels.weighted_blocks_at(q32, rvb, qvb, sel, by, bx, f0y, f0x, w, roll, 2, 0.75, b)
        todo = _newton_update(sfft.rfft2(b), spec, sel, sw, wh, f0y, f0x, alive, py, px, fy, fx)
    ty = py - s + fy
    tx = px - s + fx
    alive &= (np.abs(ty - (iy - s)) <= 0.75) & (np.abs(tx - (ix - s)) <= 0.75)
    return ty, tx, alive


@functools.lru_cache(maxsize=16)
def _taper2d(w):
    """The separable taper of the sub-pixel stage on a ``w x w`` window (float32)."""
    tp = taper(np.arange(w), w).astype(np.float32)
    out = np.outer(tp, tp)
    out.flags.writeable = False
    return out


def strain_deviation(dy, dx, window, step):
    """Largest change of a (filled) offset field between a window centre and the
    output cells within half a window of it (px; the larger of the two axes)."""
    k = max(1, (int(window) // 2) // int(step))
    ny, nx = dy.shape
    dev = np.zeros((ny, nx))
    for f in (dy, dx):
        p = np.pad(f, k, mode="edge")
        for a in range(-k, k + 1):
            for b in range(-k, k + 1):
                if a == 0 and b == 0:
                    continue
                sh = p[k + a : k + a + ny, k + b : k + b + nx]
                np.maximum(dev, np.abs(sh - f), out=dev)
    return dev


def deform_refine(
    ref,
    ref_valid,
    sec,
    sec_valid,
    pad,
    dy,
    dx,
    *,
    w,
    step,
    passes=1,
    min_strain=_MIN_STRAIN,
    score=None,
    workers=1,
):
    """Window deformation: re-estimate the offsets of strained windows (in place).

    The first-pass field (median-filtered and hole-filled, :func:`smooth_fill`) is
    interpolated bilinearly to every pixel of each window whose field changes by
    more than ``min_strain`` px within half a window (:func:`strain_deviation`);
    the secondary is sampled at each pixel moved by the interpolated field minus its
    window mean ``m`` (cubic convolution, :func:`tio._kernels.deformed_blocks`), so
    that what is left is a shift of about ``m`` plus the first pass's residual,
    which the sub-pixel stage measures (started at ``m``); the new offset is that
    estimate. The strain inside the window, which blurs and biases the correlation
    peak, is removed (the image deformation method of particle-image velocimetry,
    Scarano 2002). Only windows whose reference window and secondary sub-image are
    fully usable are refined; ``passes`` repeats it with the refined field.
    ``ref``/``ref_valid`` are the prepared reference and its usable pixels,
    ``sec``/``sec_valid`` the prepared secondary padded by ``pad`` px; ``dy``/``dx``
    total offsets (px) on the output grid, modified in place; ``score`` their
    scores (for :func:`whitening`). Batches of windows run on ``workers`` threads
    (the result does not depend on it).
    """
    from tio import _kernels

    s2 = 3
    p0 = w + 2 * s2
    chunk = 64  # most windows per task: about 4 MB of working memory

    def refine(ii, jj, fy, fx):
        k = ii.size
        gy = np.empty((k, w + 2, w + 2))
        gx = np.empty((k, w + 2, w + 2))
        my = np.empty(k)
        mx = np.empty(k)
        # the field at every block pixel (bilinear) minus its window mean
        _kernels.window_deformations(fy, fx, ii, jj, int(step), int(w), gy, gx, my, mx)
        ny_ = np.rint(my).astype(np.int64)
        nx_ = np.rint(mx).astype(np.int64)
        top = ii * step + ny_ - s2 + pad
        left = jj * step + nx_ - s2 + pad
        use = (top >= 0) & (top + p0 <= sec.shape[0]) & (left >= 0) & (left + p0 <= sec.shape[1])
        b = np.flatnonzero(use)
        if b.size == 0:
            return None
        # the windows and sub-images fully usable, then gathered (compiled: no GIL held)
        rtop, rleft = ii[b] * step, jj[b] * step
        ok_r = np.empty(b.size, dtype=bool)
        ok_q = np.empty(b.size, dtype=bool)
        _kernels.windows_usable_at(ref_valid, rtop, rleft, int(w), ok_r)
        _kernels.windows_usable_at(sec_valid, top[b], left[b], int(p0), ok_q)
        keep = ok_r & ok_q
        b = b[keep]
        if b.size == 0:
            return None
        rs = _gather(ref, rtop[keep], rleft[keep], w)
        qd = _gather(sec, top[b], left[b], p0)
        rs, qd = _demeaned(rs, in_place=True), _demeaned(qd, in_place=True)
        cy = np.full(b.size, s2, dtype=np.int64)
        ty, tx, alive = _subpixel_fast(
            rs,
            qd,
            cy,
            cy.copy(),
            w=w,
            s=s2,
            iterations=_DEFORM_ITERATIONS,
            init=(my[b] - ny_[b], mx[b] - nx_[b]),
            deform=(gy[b], gx[b]),
            score=None if score is None else score[ii[b], jj[b]],
        )
        ty += ny_[b]
        tx += nx_[b]
        good = alive & (np.abs(ty - my[b]) <= 1.0) & (np.abs(tx - mx[b]) <= 1.0)
        return ii[b][good], jj[b][good], ty[good], tx[good]

    for _ in range(max(0, int(passes))):
        ok = np.isfinite(dy) & np.isfinite(dx)
        if ok.sum() < 4:
            return
        fy, fx = (np.ascontiguousarray(f, np.float64) for f in smooth_fill(dy, dx))
        dev = strain_deviation(fy, fx, w, step)
        ii, jj = np.nonzero(ok & (dev > min_strain))
        if ii.size == 0:
            return
        ii, jj = ii.astype(np.int64), jj.astype(np.int64)
        # an even number of equal batches (a small image has fewer strained windows
        # than one batch): both threads get work
        tasks = [(ii[a:b], jj[a:b], fy, fx) for a, b in _even_batches(ii.size, chunk)]
        for res in _map_tasks(lambda t: refine(*t), tasks, workers):
            if res is not None:
                ri, rj, ty, tx = res
                dy[ri, rj] = ty
                dx[ri, rj] = tx


def _process_clean(
    ref,
    sec,
    corners,
    lv,
    tex,
    *,
    w,
    s,
    max_bad,
    min_overlap,
    min_sd,
    max_peak_ratio,
    iterations,
    upsample,
    shared=None,
):
    """:func:`_process_block` for windows without unusable pixels.

    ``ref``/``sec`` are the prepared reference and padded secondary images,
    ``corners`` the top-left pixels ``(rtop, rleft, qtop, qleft)`` of the reference
    windows and of the secondary sub-images (see :func:`_zncc_clean`). ``tex`` None
    with ``min_sd > 0`` means that the texture is measured on the reference windows.
    ``shared`` ``(b, step, box)``: the integer stage runs on shared blocks
    (:func:`_zncc_shared`), else (None) window by window (:func:`_zncc_clean`).
    """
    k = corners[0].shape[0]
    from tio import _kernels

    if shared is None:
        zncc, rs, sd_r, qd = _zncc_clean(ref, sec, *corners, w, s, lv)
    else:
        zncc, rs, sd_r, qd = _zncc_shared(ref, sec, *corners, w, s, lv, *shared)
    # integer_peaks, ambiguous_peaks, weak_curvature, peak_score and _parabolic_init in
    # one compiled pass (same results)
    iy, ix = np.empty(k, dtype=np.int64), np.empty(k, dtype=np.int64)
    ok = np.empty(k, dtype=bool)
    sc, fy0, fx0 = np.empty(k), np.empty(k), np.empty(k)
    _kernels.peak_analysis(
        zncc, float(max_peak_ratio), _PEAK_EXCLUSION, _MIN_CURVATURE, iy, ix, ok, sc, fy0, fx0
    )
    if min_sd > 0:
        ok &= (sd_r if tex is None else window_std(tex)) >= min_sd
    dy = np.full(k, np.nan)
    dx = np.full(k, np.nan)
    score = np.full(k, np.nan)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return dy, dx, score
    score[idx] = sc[idx]
    every = idx.size == k  # then no copy of the windows
    qorigin = None
    if qd is None:  # the sub-images are read from the secondary image
        qd, qorigin = sec, (corners[2][idx], corners[3][idx])
    elif not every:
        qd = qd[idx]
    ty, tx, alive = _subpixel_fast(
        rs if every else rs[idx],
        qd,
        iy[idx],
        ix[idx],
        w=w,
        s=s,
        iterations=iterations,
        init=(fy0[idx], fx0[idx]),
        score=score[idx],
        qorigin=qorigin,
    )
    dy[idx] = np.where(alive, ty, np.nan)
    dx[idx] = np.where(alive, tx, np.nan)
    score[idx] = np.where(alive, score[idx], np.nan)
    return dy, dx, score


def _process_block(
    r,
    q,
    rv,
    qv,
    lv,
    tex,
    *,
    w,
    s,
    max_bad,
    min_overlap,
    min_sd,
    max_peak_ratio,
    iterations,
    upsample,
):
    """Integer and sub-pixel offsets of a batch of windows.

    ``r`` (K, w, w) reference windows, ``q`` (K, w + 2s, w + 2s) secondary
    sub-images, ``rv``/``qv`` their usable pixels, ``lv``
    (K, 2s + 1, 2s + 1) local variance of the secondary windows at every offset
    (or None: computed from ``q``),
    ``tex`` (K, w, w) the reference windows on which texture is measured (None to
    skip the texture test). Offsets are relative to the centre of the sub-images.
    """
    k = r.shape[0]
    n = 2 * s + 1
    clean = rv.all(axis=(1, 2)) & qv.all(axis=(1, 2))
    zncc = np.empty((k, n, n))
    frac = np.ones((k, n, n))
    if clean.any():
        lvc = None if lv is None else lv[clean]
        zncc[clean] = zncc_surfaces(r[clean], q[clean], w, s, sec_local_var=lvc)[0]
    if not clean.all():
        # windows whose only unusable pixels form the outside of a rectangle of the
        # secondary sub-image (near the image edges) take a cheaper exact formulation
        rect = ~clean & _rectangular(rv, qv)
        if rect.all():  # no copies of the windows (the usual batch of edge windows)
            zncc, frac = _zncc_rect(r, q, qv, w, s, min_overlap)
        elif rect.any():
            zncc[rect], frac[rect] = _zncc_rect(r[rect], q[rect], qv[rect], w, s, min_overlap)
        d = ~clean & ~rect
        if d.any():
            zncc[d], frac[d] = zncc_surfaces(
                r[d], q[d], w, s, rv[d], qv[d], min_overlap=min_overlap
            )
    # integer_peaks; ambiguous (another, distinct offset matches almost as well:
    # repetitive texture, ambiguous_peaks) and ridge-like (weak_curvature) peaks;
    # peak_score and _parabolic_init: one compiled pass (same results)
    from tio import _kernels

    iy, ix = np.empty(k, dtype=np.int64), np.empty(k, dtype=np.int64)
    ok = np.empty(k, dtype=bool)
    sc, fy0, fx0 = np.empty(k), np.empty(k), np.empty(k)
    _kernels.peak_analysis(
        zncc, float(max_peak_ratio), _PEAK_EXCLUSION, _MIN_CURVATURE, iy, ix, ok, sc, fy0, fx0
    )
    # The matched secondary window must be usable enough. Offsets are not excluded
    # beforehand: a true match that is too masked must give NaN, not a false match.
    ok &= 1.0 - frac[np.arange(k), iy, ix] <= max_bad + 1e-9
    # Weak texture: the match would be decided by noise.
    if tex is not None:
        if rv.all():  # compiled (the windows stacked as one image)
            w_ = tex.shape[1]
            sd = np.empty(k)
            _kernels.window_stds(
                np.ascontiguousarray(tex).reshape(k * w_, w_),
                np.arange(k, dtype=np.int64) * w_,
                np.zeros(k, dtype=np.int64),
                w_,
                sd,
            )
            ok &= sd >= min_sd
        else:
            ok &= window_std(tex, rv) >= min_sd

    dy = np.full(k, np.nan)
    dx = np.full(k, np.nan)
    score = np.full(k, np.nan)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return dy, dx, score
    score[idx] = sc[idx]

    # ---- sub-pixel stage on the windows with a valid integer peak. Windows whose
    # reference window and secondary block (one pixel larger than the window, plus one
    # pixel of margin for a move of the integer position) are fully usable - most
    # windows near the image edges - take the compiled path; the others are weighted
    # by their usable pixels.
    full = _blocks_usable(rv[idx], qv[idx], iy[idx], ix[idx], w)
    for sel, fast in ((idx[full], True), (idx[~full], False)):
        if sel.size == 0:
            continue
        if fast:
            ty, tx, alive = _subpixel_fast(
                _demeaned(r[sel], in_place=True),
                _demeaned(q[sel], in_place=True),
                iy[sel],
                ix[sel],
                w=w,
                s=s,
                iterations=iterations,
                init=(fy0[sel], fx0[sel]),
                score=score[sel],
            )
        else:
            ty, tx, alive = _subpixel_weighted(
                _demeaned(r[sel], in_place=True),
                _demeaned(q[sel], in_place=True),
                iy[sel],
                ix[sel],
                rv[sel],
                qv[sel],
                w=w,
                s=s,
                iterations=iterations,
                init=(fy0[sel], fx0[sel]),
                score=score[sel],
            )
        dy[sel] = np.where(alive, ty, np.nan)
        dx[sel] = np.where(alive, tx, np.nan)
        score[sel] = np.where(alive, score[sel], np.nan)
    return dy, dx, score


def _rectangular(rv, qv):
    """Whether each reference window is fully usable and the usable pixels of each
    secondary sub-image fill a rectangle (its bounding box)."""
    rows = qv.any(axis=2)
    cols = qv.any(axis=1)
    h = rows.sum(axis=1)
    wd = cols.sum(axis=1)
    # rows (cols) with a usable pixel must be contiguous: first + count = last + 1
    p = qv.shape[1]
    contiguous = (p - np.argmax(rows[:, ::-1], axis=1) - np.argmax(rows, axis=1) == h) & (
        p - np.argmax(cols[:, ::-1], axis=1) - np.argmax(cols, axis=1) == wd
    )
    return rv.all(axis=(1, 2)) & contiguous & (qv.sum(axis=(1, 2)) == h * wd) & (h > 0)


def _zncc_rect(r, q, qv, w, s, min_overlap):
    """Masked ZNCC (same result as :func:`zncc_surfaces` with masks) of fully usable
    reference windows against secondary sub-images whose usable pixels form a
    rectangle.

    The pixels valid in both windows at an offset then form a rectangle too: its
    area and the sums of the reference and secondary values (and squares) over it
    come from integral images; only the cross term needs an FFT correlation, of the
    reference window with the secondary sub-image set to zero outside its rectangle.
    """
    k, p, _ = q.shape
    n = 2 * s + 1
    size = sfft.next_fast_len(p, real=True)
    rows = qv.any(axis=2)
    cols = qv.any(axis=1)
    y0 = np.argmax(rows, axis=1)
    y1 = p - np.argmax(rows[:, ::-1], axis=1)
    x0 = np.argmax(cols, axis=1)
    x1 = p - np.argmax(cols[:, ::-1], axis=1)
    from tio import _kernels

    # the reference standardised, the secondary standardised over its usable pixels and
    # zero elsewhere (float32), straight into zero-padded FFT buffers (compiled)
    rbuf = np.empty((k, size, size), dtype=np.float32)
    qbuf = np.empty((k, size, size), dtype=np.float32)
    flat_r, flat_q = np.empty(k, dtype=bool), np.empty(k, dtype=bool)
    _kernels.rect_standardise(
        np.ascontiguousarray(r, dtype=np.float32),
        np.ascontiguousarray(q, dtype=np.float32),
        y0.astype(np.int64),
        y1.astype(np.int64),
        x0.astype(np.int64),
        x1.astype(np.int64),
        _FLAT,
        rbuf,
        qbuf,
        flat_r,
        flat_q,
    )
    rs, qs = rbuf[:, :w, :w], qbuf[:, :p, :p]
    # cross term: sum over the overlap of r * q (q is zero outside its rectangle); the
    # row transforms of the reference only over its w non-zero rows
    fr = _rfft2_rows(rbuf[:, :w, :], size)
    np.conjugate(fr, out=fr)
    fr *= sfft.rfft2(qbuf)
    srq = _irfft2_rows(fr, size, n)[:, :, :n].astype(np.float64)
    zncc = np.empty((k, n, n))
    frac = np.empty((k, n, n))
    _kernels.rect_zncc(
        srq,
        rs,
        qs,
        y0,
        y1,
        x0,
        x1,
        max(min_overlap, _MIN_OVERLAP),
        _FLAT,
        zncc,
        frac,
    )
    zncc[flat_r | flat_q] = np.nan
    return zncc, frac


def _blocks_usable(rv, qv, iy, ix, w):
    """Whether the reference window and the secondary block around the integer peak
    (``w + 4`` pixels square, centred on the matched window) are fully usable."""
    k, p, _ = qv.shape
    if k == 0:
        return np.zeros(0, dtype=bool)
    from tio import _kernels

    ok = rv.all(axis=(1, 2)) & (iy >= 2) & (ix >= 2) & (iy + w + 2 <= p) & (ix + w + 2 <= p)
    y0, x0 = np.clip(iy - 2, 0, p), np.clip(ix - 2, 0, p)
    y1, x1 = np.clip(iy + w + 2, 0, p), np.clip(ix + w + 2, 0, p)
    usable = np.empty(k, dtype=bool)
    _kernels.boxes_usable(
        np.ascontiguousarray(qv, dtype=bool),
        *(a.astype(np.int64) for a in (y0, y1, x0, x1)),
        usable,
    )
    return ok & usable


# --------------------------------------------------------------------------------------
# Coarse to fine
# --------------------------------------------------------------------------------------
def downsample2(image, valid):
    """Halve the resolution of an image by averaging 2 x 2 blocks (area averaging).

    A coarse pixel is usable only if its four pixels are; a trailing odd row or
    column is dropped. Returns a float32 image with NaN on unusable pixels.
    """
    h, w = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    a = np.where(valid[:h, :w], image[:h, :w], 0.0).astype(np.float64)
    out = a.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)).astype(np.float32)
    ok = valid[:h, :w].reshape(h // 2, 2, w // 2, 2).all(axis=(1, 3))
    out[~ok] = np.nan
    return out


def smooth_fill(dy, dx, size=3, fallback=None):
    """Median-filter an offset field (ignoring NaN) and fill its holes by nearest value.

    The ``size x size`` median removes isolated wrong matches; cells with no finite
    neighbour take the value of the nearest filtered cell. An all-NaN field becomes
    ``fallback`` (a pair of arrays of the same shape), or zero. Used to turn the
    result of a coarse level into the prior of the next one.
    """
    ok = np.isfinite(dy) & np.isfinite(dx)
    if not ok.any():
        if fallback is not None:
            return fallback
        return np.zeros(dy.shape), np.zeros(dx.shape)
    from tio import _kernels

    out = []
    for f in (dy, dx):
        f = np.where(ok, f, np.nan).astype(np.float64)
        med = np.empty(f.shape)
        _kernels.nan_median_filter(f, size // 2, med)  # compiled numpy.nanmedian
        out.append(med)
    good = np.isfinite(out[0])
    if not good.all():
        _, (iy, ix) = ndimage.distance_transform_edt(~good, return_indices=True)
        out = [f[iy, ix] for f in out]
    return out[0], out[1]


def regrid(dy, dx, src, dst_shape, dst):
    """Bilinear resampling of an offset field from one output grid to another.

    ``src`` and ``dst`` are ``(centre, step, scale)``: the pixel index of the centre
    of output cell 0 (same in rows and columns), the grid step in pixels and the
    pixel size in full-resolution pixels (``2 ** level``). Offsets are converted
    from source to destination pixels. Outside the source grid the nearest cell is
    used.
    """
    c_s, step_s, scale_s = src
    c_d, step_d, scale_d = dst

    def src_index(n):
        full = (c_d + step_d * np.arange(n) + 0.5) * scale_d - 0.5  # full-res pixels
        return ((full + 0.5) / scale_s - 0.5 - c_s) / step_s

    gi, gj = np.meshgrid(src_index(dst_shape[0]), src_index(dst_shape[1]), indexing="ij")
    f = scale_s / scale_d
    return tuple(
        f * ndimage.map_coordinates(np.asarray(a, np.float64), [gi, gj], order=1, mode="nearest")
        for a in (dy, dx)
    )


def max_levels(shape, window):
    """Largest number of pyramid levels such that the coarsest image holds a window."""
    lv = 0
    while min(shape) // 2 ** (lv + 1) >= window:
        lv += 1
    return lv


def pyramid_offset_field(
    reference, secondary, reference_mask=None, secondary_mask=None, *, levels, prior=None, **kw
):
    """Coarse-to-fine offsets: :func:`offset_field` on an image pyramid.

    Level ``k`` (``levels`` down to 1) correlates the images area-averaged by
    ``2 ** k`` (:func:`downsample2`) with the same window, step and search (in
    coarse pixels, so window ``k`` sees ``2 ** k`` times more ground and the search
    reaches ``2 ** k * search`` full-resolution pixels). Its offsets, median-filtered
    and hole-filled (:func:`smooth_fill`), resampled to the next finer grid and
    doubled (:func:`regrid`), are the prior of the next level; the last level is
    the full-resolution image. ``levels`` is reduced, silently, so the coarsest
    image still holds a window. A user ``prior`` (on the full-resolution grid)
    seeds the coarsest level. Other keywords are those of :func:`offset_field`.

    Offsets up to about ``(2 ** (levels + 1) - 1) * (search - 1)`` pixels are found
    in textured areas; a wrong coarse offset that survives the median makes the
    window NaN (or, rarely, wrong) at the next level.
    """
    w, step = int(kw["window"]), int(kw["step"])
    levels = min(int(levels), max_levels(reference.shape, w))
    shape0 = grid_shape(reference.shape, w, step)
    centre = (w - 1) / 2.0
    if levels == 0:
        return offset_field(reference, secondary, reference_mask, secondary_mask, prior=prior, **kw)
    # pyramid (NaN = unusable); images of level 0 keep their masks
    pyr = []
    for img, mask in ((reference, reference_mask), (secondary, secondary_mask)):
        a = np.asarray(img, dtype=np.float32)
        valid = np.isfinite(a) if mask is None else np.isfinite(a) & ~np.asarray(mask, bool)
        lv = []
        for _ in range(levels):
            a = downsample2(a, valid)
            valid = np.isfinite(a)
            lv.append(a)
        pyr.append(lv)
    cur = None
    if prior is not None:  # NaN = no prior = 0
        cur = (
            tuple(np.nan_to_num(np.asarray(p, np.float64)) for p in prior),
            (centre, step, 1),
            shape0,
        )
    for k in range(levels, 0, -1):
        ref_k, sec_k = pyr[0][k - 1], pyr[1][k - 1]
        shape_k = grid_shape(ref_k.shape, w, step)
        pk = None
        if cur is not None:
            pk = regrid(*cur[0], cur[1], shape_k, (centre, step, 2**k))
        if not (np.isfinite(ref_k).any() and np.isfinite(sec_k).any()):
            continue  # nothing usable at this level: keep the current prior
        dy, dx, _ = offset_field(ref_k, sec_k, prior=pk, **{**kw, "deform": 0})
        cur = (smooth_fill(dy, dx, fallback=pk), (centre, step, 2**k), shape_k)
    p0 = regrid(*cur[0], cur[1], shape0, (centre, step, 1)) if cur is not None else None
    return offset_field(reference, secondary, reference_mask, secondary_mask, prior=p0, **kw)


def check_inputs(
    reference,
    secondary,
    reference_mask,
    secondary_mask,
    window,
    step,
    search,
    prefilter,
    max_masked_fraction,
    min_texture=0.0,
    max_peak_ratio=1.0,
    prior=None,
    levels=0,
    wallis_size=None,
    workers=1,
    deform=0,
):
    """Validate the arguments of a correlation; raise CorrelationError with a clear message.

    Returns the reference, secondary and masks as numpy arrays (masks may be None)
    and the prior as a pair ``(dy, dx)`` of float64 arrays (or None).
    """
    ref = np.asarray(reference)
    sec = np.asarray(secondary)
    for name, a in (("reference", ref), ("secondary", sec)):
        if a.ndim != 2:
            raise CorrelationError(f"the {name} image must be 2-D, got shape {a.shape}")
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise CorrelationError(f"the {name} image must be numeric, got dtype {a.dtype}")
        if np.iscomplexobj(a):
            raise CorrelationError(f"the {name} image must be real-valued, got dtype {a.dtype}")
    if ref.shape != sec.shape:
        raise CorrelationError(
            f"the reference ({ref.shape[0]} x {ref.shape[1]} px) and secondary "
            f"({sec.shape[0]} x {sec.shape[1]} px) images have different shapes; "
            "resample them to the same grid first"
        )
    masks = []
    for name, m in (("reference_mask", reference_mask), ("secondary_mask", secondary_mask)):
        if m is not None:
            m = np.asarray(m)
            if m.shape != ref.shape:
                raise CorrelationError(
                    f"{name} has shape {m.shape} but the images have shape {ref.shape}"
                )
            m = m.astype(bool)
        masks.append(m)
    for name, v in (
        ("window", window),
        ("step", step),
        ("search", search),
        ("levels", levels),
        ("workers", workers),
        ("deform", deform),
    ):
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise CorrelationError(f"{name} must be an integer, got {v!r}")
    if window < 8:
        raise CorrelationError(f"window must be at least 8 px, got {window}")
    if step < 1:
        raise CorrelationError(f"step must be at least 1 px, got {step}")
    if search < 1:
        raise CorrelationError(f"search must be at least 1 px, got {search}")
    if levels < 0:
        raise CorrelationError(f"levels must be >= 0, got {levels}")
    if workers < 1:
        raise CorrelationError(f"workers must be >= 1, got {workers}")
    if deform < 0:
        raise CorrelationError(f"deform must be >= 0, got {deform}")
    if window > min(ref.shape):
        raise CorrelationError(
            f"the correlation window ({window} px) is larger than the image "
            f"({ref.shape[0]} x {ref.shape[1]} px); use a smaller window or a larger image"
        )
    if prefilter not in PREFILTERS:
        raise CorrelationError(f"prefilter must be one of {PREFILTERS}, got {prefilter!r}")
    if wallis_size is not None and (
        isinstance(wallis_size, bool)
        or not isinstance(wallis_size, int | np.integer)
        or wallis_size < 3
        or wallis_size % 2 == 0
    ):
        raise CorrelationError(f"wallis_size must be an odd integer >= 3, got {wallis_size!r}")

    def number(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return np.nan

    if not 0.0 <= number(max_masked_fraction) < 1.0:
        raise CorrelationError(
            f"max_masked_fraction must be in [0, 1), got {max_masked_fraction!r}"
        )
    if not 0.0 <= number(min_texture) < np.inf:
        raise CorrelationError(f"min_texture must be a number >= 0, got {min_texture!r}")
    if not 0.0 < number(max_peak_ratio) <= 1.0:
        raise CorrelationError(f"max_peak_ratio must be in (0, 1], got {max_peak_ratio!r}")
    grid = grid_shape(ref.shape, int(window), int(step))
    if prior is not None:
        if hasattr(prior, "dx") and hasattr(prior, "dy"):
            pdx, pdy = prior.dx, prior.dy
        else:
            try:
                pdx, pdy = prior
            except (TypeError, ValueError):
                raise CorrelationError(
                    "prior must be a pair (dx, dy) of arrays of the output grid shape "
                    f"{grid} or an OffsetField, got {type(prior).__name__}"
                ) from None
        pdx = np.asarray(pdx, dtype=np.float64)
        pdy = np.asarray(pdy, dtype=np.float64)
        if pdx.shape != grid or pdy.shape != grid:
            raise CorrelationError(
                f"prior must be a pair (dx, dy) of arrays of the output grid shape {grid}, "
                f"got shapes {pdx.shape} and {pdy.shape}"
            )
        prior = (pdy, pdx)
    for name, a, m in (("reference", ref, masks[0]), ("secondary", sec, masks[1])):
        usable = np.isfinite(a) if np.issubdtype(a.dtype, np.floating) else np.ones(a.shape, bool)
        if m is not None:
            usable &= ~m
        if not usable.any():
            raise CorrelationError(
                f"the {name} image has no usable pixel (all nodata or masked); nothing to correlate"
            )
    return ref, sec, masks[0], masks[1], prior
