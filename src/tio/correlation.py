"""Sub-pixel image correlation: offset fields between two images on the same grid.

Two entry points:

* :func:`correlate_arrays` works on numpy arrays and returns an :class:`OffsetField`
  in pixels (``dx`` toward increasing column, ``dy`` toward increasing row).
* :func:`correlate` works on TIO DataArrays (dims ``("y", "x")``, attrs ``crs`` and
  ``transform``) and returns an :class:`xarray.Dataset` of east-west / north-south
  displacements in map units, placed at the window centres.

The numerics (FFT-based zero-normalised cross-correlation after Lewis 1995 and
Padfield 2012 for the integer offset; phase correlation whose peak is located on
the continuous inverse DFT (Guizar-Sicairos et al. 2008 for the principle, Newton
iterations for the search), iterated with a taper that follows the estimated shift,
for the sub-pixel part) live in :mod:`tio._correlation`, with compiled (numba)
kernels in :mod:`tio._kernels`. Flat and ambiguous windows (weak texture, repetitive
patterns: peak-ratio test after Hu & Mordohai 2012; flat ridges along edges) give
NaN rather than a confident wrong offset; a Wallis pre-filter (Wallis 1976)
equalises local contrast; a prior offset field or a coarse-to-fine image pyramid
(Burt & Adelson 1983) reaches displacements larger than the search range; tiles of
windows run in a thread pool.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import numpy as np
import xarray as xr

from tio import _correlation as _c
from tio.errors import CorrelationError

__all__ = ["OffsetField", "correlate", "correlate_arrays"]


@dataclass(frozen=True)
class OffsetField:
    """Offsets of a secondary image relative to a reference, on a regular grid.

    Attributes
    ----------
    dx : ndarray of float32, shape (ny, nx)
        Offset in pixels; positive when the secondary content is displaced toward
        increasing column index. NaN where invalid.
    dy : ndarray of float32, shape (ny, nx)
        Offset in pixels; positive toward increasing row index (south for north-up
        images). NaN where invalid.
    score : ndarray of float32, shape (ny, nx)
        Quality in [0, 1]: zero-normalised cross-correlation of the reference window
        and the secondary window re-sampled at the measured offset, clipped at 0.
        NaN where invalid.
    row0, col0 : float
        Pixel-index coordinates of the centre of output cell (0, 0) (pixel centres
        are at integer indices); ``(window - 1) / 2``.
    step : int
        Spacing of the output grid in pixels: cell ``(i, j)`` is centred at
        ``(row0 + i * step, col0 + j * step)``.
    """

    dx: np.ndarray
    dy: np.ndarray
    score: np.ndarray
    row0: float
    col0: float
    step: int

    @property
    def shape(self) -> tuple[int, int]:
        """Shape (ny, nx) of the output grid."""
        return self.dx.shape

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-index (row, col) coordinates of the window centres (1-D each)."""
        ny, nx = self.dx.shape
        return (
            self.row0 + self.step * np.arange(ny, dtype=np.float64),
            self.col0 + self.step * np.arange(nx, dtype=np.float64),
        )


def correlate_arrays(
    reference,
    secondary,
    *,
    window: int = 32,
    step: int = 8,
    search: int = 8,
    reference_mask=None,
    secondary_mask=None,
    prefilter: str = "none",
    max_masked_fraction: float = 0.25,
    min_texture: float = 0.1,
    max_peak_ratio: float = 0.9,
    prior=None,
    levels: int = 0,
    wallis_size: int | None = None,
    workers: int | None = None,
    deform: int = 1,
) -> OffsetField:
    """Measure the sub-pixel offset field between two images on the same grid.

    Window ``(i, j)`` covers reference rows ``[i*step, i*step + window)`` and columns
    ``[j*step, j*step + window)``. Its offset is found in two stages:

    1. integer offset: maximum of the zero-normalised cross-correlation (ZNCC) over
       all offsets in ``[-search, search]`` in each direction around the prior
       offset (zero by default), computed with FFTs (Lewis 1995); unusable pixels
       get zero weight (masked ZNCC, Padfield 2012). Windows without enough texture
       and windows whose ZNCC surface has a second peak nearly as high as the first
       (repetitive texture) are rejected;
    2. sub-pixel offset: partially whitened phase correlation (the cross-power
       spectrum divided by its modulus to a power from 0.5 for a noise-free match
       down to 0, plain cross-correlation, for a ZNCC peak of 0.95 or less) of the
       tapered windows (cos^2 roll-off
       over a sixth of the window at each end, flat in between), the maximum of the
       continuous inverse DFT (Guizar-Sicairos et al. 2008, Opt. Lett. 33:156) found
       by Newton iterations. The taper (and the weight of unusable pixels) of the
       secondary is centred on the current estimate - first the parabolic sub-pixel
       position of the ZNCC peak, then the previous estimate while it moves by more
       than 0.01 px (at most ``2`` estimates) - so both weighted windows are exact
       shifted copies; with a cosine roll-off of the cross-power spectrum toward
       Nyquist (aliased frequencies) this removes the bias toward integer values
       ("pixel locking"). Measured with benchmarks/bench_correlation.py (32-px
       windows, 1 % noise): mean error within 0.007 px at every fractional shift.

    Parameters
    ----------
    reference, secondary : array_like, shape (H, W)
        Real images on the same grid. Non-finite values are no data.
    window : int, default 32
        Side of the square correlation window, in pixels (>= 8).
    step : int, default 8
        Spacing of the windows (and of the output grid), in pixels.
    search : int, default 8
        Largest offset looked for, in pixels, in each direction, around the prior.
        A correlation peak on the border of the search range is rejected (NaN)
        because the true peak is probably outside it, so offsets are measured up to
        about ``search - 0.5`` px from the prior: choose ``search`` at least 1 px
        larger than the largest expected displacement (or its uncertainty, with a
        prior), or use ``levels``.
    reference_mask, secondary_mask : array_like of bool, shape (H, W), optional
        True where a pixel is unusable (cloud, shadow, nodata).
    prefilter : {"none", "highpass", "wallis"}, default "none"
        ``"highpass"`` subtracts from both images a Gaussian-smoothed copy
        (sigma = ``window / 4``, ignoring unusable pixels); it helps when the
        illumination or the radiometry differ at scales larger than the window.
        ``"wallis"`` also divides by the local standard deviation over a moving
        window of ``wallis_size`` px (Wallis 1976, gain limited in flat areas): it
        equalises local contrast, which helps with non-linear radiometric changes
        (haze, shadows, different sensors). Measured on Landsat-8 with a gamma of
        0.5, a 3-fold brightness ramp and a haze patch (32-px windows, 2 % noise):
        0.018 px RMS with ``"wallis"``, 0.022 px with ``"highpass"``, 0.024 px
        with ``"none"``.
    max_masked_fraction : float, default 0.25
        A window is rejected (NaN) if more than this fraction of its reference
        pixels, or of the secondary window matched at the correlation peak, is
        unusable (the ZNCC itself uses only the pixels usable in both).
    min_texture : float, default 0.1
        A window is rejected (NaN) if the standard deviation of its usable
        (pre-filtered) reference pixels is below ``min_texture`` times the median of
        that of the image's windows (its typical texture). Measured: the 1st
        percentile of this ratio is 0.2-0.4 on Landsat-7/8, Sentinel-2 and
        Perito Moreno scenes, and the default rejects 0 % of the windows of
        shifted Landsat-8 and Sentinel-2 crops and 0.4 % of a Landsat-7 Khumbu crop
        (saturated snow, where it removes the two wrong matches). A uniform patch
        with 2 % noise (ratio ~0.04) is rejected. 0 disables the test.
    max_peak_ratio : float, default 0.9
        A window is rejected (NaN) if its ZNCC surface, cut at ``max_peak_ratio``
        times its maximum, has a part above the cut that is separated from the main
        peak (and more than 2 px from it): a distinct second match nearly as good
        as the first, as given by repetitive texture (crevasse fields, crop rows,
        waves, stripes) or noise. A single straight edge (one elongated ridge) is
        kept, unless the ridge is so flat that the peak is not located along it
        (fall-off of the ZNCC around the peak, in its weakest direction, below a
        fifth of ``1 - peak`` per squared pixel: the peak then wanders by pixels
        with the noise). Measured rejection of good windows on shifted copies: 0.1 %
        on Landsat-8, 0.2 % on Landsat-7, 0.6-1.8 % on Sentinel-2 farmland (edges
        whose ridge has a second bump). 1 disables both tests.
    prior : OffsetField or pair (dx, dy) of array_like, optional
        A priori offsets, in pixels, on the output grid (arrays of shape
        ``(ny, nx)``, same conventions as the result; NaN means 0): window
        ``(i, j)`` is searched within ``search`` px of its rounded prior. Use it
        for displacements larger than ``search`` (e.g. a previous result, a
        velocity model); the returned offsets are total offsets (prior included).
    levels : int, default 0
        Number of coarse-to-fine levels (0 = off). Level ``k`` correlates the images
        area-averaged by ``2 ** k`` with the same window, step and search; its
        median-filtered result is the prior of the next finer level. Offsets up to
        about ``(2 ** (levels + 1) - 1) * (search - 1)`` px can then be found.
        Reduced so that the coarsest image still holds a window. Each coarser
        level has 4 times fewer windows than the next finer one, so all levels
        together add about a third of the time of a single-level run. Measured on
        Landsat-8 (search 8, 2 levels): a uniform 20-px shift and a smooth 15-px
        lobe are recovered with 0.011 and 0.035 px RMS error.
    wallis_size : int, optional
        Side (odd, px) of the moving window of the Wallis pre-filter; default: the
        odd size nearest to ``window / 2`` within [15, 31].
    workers : int, optional
        Number of threads that process tiles of windows in parallel (numpy and
        scipy.fft release the GIL). The result does not depend on it (bit for
        bit); working memory is about ``workers`` times that of one tile. Default
        ``os.cpu_count()``. Measured on a 2000 x 2000 px image on 2 cores: 1.5-1.9
        times faster with 2 workers than with 1 (no gain when other processes
        already use the cores).
    deform : int, default 1
        Number of window-deformation passes (0 = off). A pass takes the offset field
        (median-filtered, holes filled), interpolates it to every pixel of each window
        where it changes by more than 0.1 px within half a window, samples the
        secondary at every pixel moved by that field minus its window mean (cubic
        convolution) and measures again the sub-pixel offset of the window: the
        strain inside the window, which blurs the correlation peak and biases the
        offset, is removed (the image deformation method of particle-image
        velocimetry). Offsets remain means over the window. Only windows whose
        reference window and secondary sub-image are fully usable are refined; in a
        uniform field nothing is redone. Measured on smooth lobes up to 3 px
        (benchmarks/bench_correlation.py, Landsat-8, 1 % noise): RMSE 0.045 px
        without, about 0.02 px with one pass; a second pass changes little.

    Returns
    -------
    OffsetField
        ``dx``, ``dy`` (pixels) and ``score`` of shape
        ``((H - window) // step + 1, (W - window) // step + 1)``, with
        ``row0 = col0 = (window - 1) / 2``.

    Raises
    ------
    CorrelationError
        If the images are not 2-D, differ in shape, a mask's or the prior's shape
        differs, the window is larger than the image, a parameter is out of range,
        or either image has no usable pixel at all (all nodata or masked).

    Notes
    -----
    Edges: the secondary window is allowed to reach outside the image; the pixels
    outside count as unusable, so edge windows are measured from what is available
    as long as at most ``max_masked_fraction`` of the matched secondary window lies
    outside (or is otherwise unusable). The output is NaN where the reference
    window has too many unusable pixels, where its texture is flat or too weak
    (``min_texture``), where the correlation is ambiguous (``max_peak_ratio``),
    where the correlation peak is on the border of the search range or next to an
    offset that could not be evaluated, where the matched secondary window is too
    masked, or where the sub-pixel refinement drifts more than 0.75 px from the
    integer peak. For unrelated images most windows are NaN; the few chance peaks
    left have low scores (median ~0.3): filter on ``score`` (e.g. > 0.5)
    downstream.

    Failure modes: ``min_texture`` is relative to the image's median texture, so in
    an image that is mostly uniform (open water, fresh snow) the uniform windows are
    not caught by it (the peak-ratio test and the low score usually are). A
    repetitive pattern whose period is longer than ``search`` looks unique within
    the search range and is not detected. With ``levels``, a coarse level can only
    see features that survive the averaging; where it is wrong, the finer levels
    give NaN there (or, rarely, a wrong offset that the median filter did not
    catch).

    The windows are processed in tiles whose working memory stays under about
    130 MB (measured ~70 MB) per worker, besides a few float32 copies of the two
    images. Speed and memory on a 5000 x 5000 pair (window 32, step 8, search 8): see
    benchmarks/bench_correlation.py and the README.
    """
    ref, sec, rmask, smask, prior_yx = _c.check_inputs(
        reference,
        secondary,
        reference_mask,
        secondary_mask,
        window,
        step,
        search,
        prefilter,
        max_masked_fraction,
        min_texture=min_texture,
        max_peak_ratio=max_peak_ratio,
        prior=prior,
        levels=levels,
        wallis_size=wallis_size,
        workers=_default_workers() if workers is None else workers,
        deform=deform,
    )
    dy, dx, score = _c.pyramid_offset_field(
        ref,
        sec,
        rmask,
        smask,
        levels=int(levels),
        prior=prior_yx,
        window=int(window),
        step=int(step),
        search=int(search),
        prefilter=prefilter,
        max_masked_fraction=float(max_masked_fraction),
        min_texture=float(min_texture),
        max_peak_ratio=float(max_peak_ratio),
        wallis_size=wallis_size,
        workers=_default_workers() if workers is None else int(workers),
        deform=int(deform),
    )
    centre = (int(window) - 1) / 2.0
    return OffsetField(dx=dx, dy=dy, score=score, row0=centre, col0=centre, step=int(step))


def _default_workers() -> int:
    return os.cpu_count() or 1


# --------------------------------------------------------------------------------------
# xarray wrapper
# --------------------------------------------------------------------------------------
def _as_yx(da: xr.DataArray, name: str) -> xr.DataArray:
    if not isinstance(da, xr.DataArray):
        raise CorrelationError(f"{name} must be an xarray.DataArray, got {type(da).__name__}")
    extra = [d for d in da.dims if d not in ("y", "x")]
    for d in extra:
        if da.sizes[d] != 1:
            raise CorrelationError(
                f"{name} must have dims ('y', 'x'), got {da.dims} with {d} of size {da.sizes[d]}"
            )
    if extra:
        da = da.squeeze(extra, drop=True)
    if set(da.dims) != {"y", "x"}:
        raise CorrelationError(f"{name} must have dims ('y', 'x'), got {da.dims}")
    return da.transpose("y", "x")


def _transform_of(da: xr.DataArray) -> tuple[float, ...]:
    """Affine (a, b, c, d, e, f) of a DataArray: its attribute, else its coords."""
    t = da.attrs.get("transform")
    if t is not None:
        t = tuple(float(v) for v in list(t)[:6])
        if len(t) != 6:
            raise CorrelationError(f"the transform attribute must have 6 numbers, got {t}")
        return t
    if "x" in da.coords and "y" in da.coords and da.sizes["x"] > 1 and da.sizes["y"] > 1:
        x = np.asarray(da["x"], dtype=np.float64)
        y = np.asarray(da["y"], dtype=np.float64)
        a, e = x[1] - x[0], y[1] - y[0]
        return (a, 0.0, x[0] - a / 2, 0.0, e, y[0] - e / 2)
    return (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _mask_array(mask, like: xr.DataArray, name: str, pixel: tuple[float, float]):
    """A mask given as DataArray (checked to be on the grid of ``like``) or array."""
    if mask is None:
        return None
    if isinstance(mask, xr.DataArray):
        mask = _as_yx(mask, name)
        if mask.shape != like.shape:
            raise CorrelationError(
                f"{name} has shape {mask.shape} but the images have shape {like.shape}"
            )
        for dim, size in zip(("y", "x"), pixel, strict=True):
            if dim in mask.coords and dim in like.coords:
                if np.any(np.abs(mask[dim].values - like[dim].values) > 1e-3 * size):
                    raise CorrelationError(
                        f"{name} is not on the grid of the images ({dim} coordinates differ)"
                    )
        mask = mask.values
    return np.asarray(mask)


def _default(name: str):
    return inspect.signature(correlate_arrays).parameters[name].default


def _prior_pixels(prior: xr.Dataset, georef: bool, a: float, e: float):
    """(dx, dy) in pixels from a Dataset of ``ew`` / ``ns`` made by :func:`correlate`."""
    if "ew" not in prior or "ns" not in prior:
        raise CorrelationError("a prior Dataset must hold the variables 'ew' and 'ns'")
    ew = np.asarray(prior["ew"].transpose("y", "x").values, dtype=np.float64)
    ns = np.asarray(prior["ns"].transpose("y", "x").values, dtype=np.float64)
    units = prior.attrs.get("units", prior["ew"].attrs.get("units"))
    if georef and units == "m":
        return ew / a, ns / e
    if not georef and units in (None, "pixel"):
        return ew, -ns
    raise CorrelationError(
        f"the prior is in units {units!r} but the images are "
        f"{'georeferenced (m)' if georef else 'not georeferenced (pixel)'}"
    )


def correlate(reference: xr.DataArray, secondary: xr.DataArray, **kwargs) -> xr.Dataset:
    """Correlate two TIO DataArrays and return displacements in map units.

    Parameters
    ----------
    reference, secondary : xarray.DataArray
        Images with dims ``("y", "x")`` on the same grid (same shape and
        coordinates), coords ``x``/``y`` at pixel centres, attrs ``crs`` (WKT, or
        absent/None if not georeferenced) and ``transform`` (a, b, c, d, e, f in
        rasterio Affine order; derived from the coords if absent). Rotated
        transforms (b or d non-zero) are not supported.
    **kwargs
        Keyword arguments of :func:`correlate_arrays` (``window``, ``step``,
        ``search``, ``reference_mask``, ``secondary_mask``, ``prefilter``,
        ``max_masked_fraction``, ``min_texture``, ``max_peak_ratio``, ``prior``,
        ``levels``, ``wallis_size``, ``workers``, ``deform``); masks may be DataArrays on the
        same grid or numpy arrays. ``prior`` may also be an :class:`xarray.Dataset`
        returned by this function for the same images and parameters (its ``ew`` /
        ``ns`` are converted back to pixels; NaN = no prior). ``levels`` (default 0,
        off) enables the coarse-to-fine search for displacements larger than
        ``search``.

    Returns
    -------
    xarray.Dataset
        float32 variables ``ew`` (positive east), ``ns`` (positive north) and
        ``score`` on dims ``("y", "x")``, with coords ``x``/``y`` the map
        coordinates of the window centres. Georeferenced input (``crs`` set):
        ``ew = dx * a``, ``ns = dy * e`` in metres (units ``"m"``). Otherwise
        ``ew = dx``, ``ns = -dy`` in pixels (units ``"pixel"``; north is up the
        image). Attributes: ``crs`` (copied when the input has one), ``transform``
        of the output grid (pixel size ``step * a`` by ``step * e``, each output
        pixel centred on its window centre), ``units``, ``window``, ``step``,
        ``search``, ``prefilter``, ``max_masked_fraction``, ``min_texture``,
        ``max_peak_ratio``, ``levels``, ``deform``.

    Raises
    ------
    CorrelationError
        If the inputs are not on the same grid, have a rotated transform, or any
        condition listed in :func:`correlate_arrays`.
    """
    allowed = {
        "window",
        "step",
        "search",
        "reference_mask",
        "secondary_mask",
        "prefilter",
        "max_masked_fraction",
        "min_texture",
        "max_peak_ratio",
        "prior",
        "levels",
        "wallis_size",
        "workers",
        "deform",
    }
    unknown = set(kwargs) - allowed
    if unknown:
        raise CorrelationError(f"unknown argument(s) to correlate: {sorted(unknown)}")
    ref = _as_yx(reference, "reference")
    sec = _as_yx(secondary, "secondary")
    if ref.shape != sec.shape:
        raise CorrelationError(
            f"the reference ({ref.shape[0]} x {ref.shape[1]} px) and secondary "
            f"({sec.shape[0]} x {sec.shape[1]} px) images have different shapes; "
            "resample them to the same grid first"
        )
    t = _transform_of(ref)
    if t[1] != 0 or t[3] != 0:
        raise CorrelationError(f"rotated transforms are not supported, got {t}")
    ts = _transform_of(sec)
    # same grid: transforms and coordinates equal to a thousandth of a pixel
    tol = 1e-3 * np.array([abs(t[0]), abs(t[0]), abs(t[0]), abs(t[4]), abs(t[4]), abs(t[4])])
    if np.any(np.abs(np.subtract(t, ts)) > tol):
        raise CorrelationError(
            f"the reference and secondary images are not on the same grid (transforms "
            f"{t} and {ts}); resample them to a common grid first"
        )
    for dim, size in (("x", abs(t[0])), ("y", abs(t[4]))):
        if dim in ref.coords and dim in sec.coords:
            if np.any(np.abs(ref[dim].values - sec[dim].values) > 1e-3 * size):
                raise CorrelationError(
                    f"the reference and secondary images are not on the same grid ({dim} "
                    "coordinates differ); resample them to a common grid first"
                )
    a, _, c, _, e, f = t
    kwargs = dict(kwargs)
    for name in ("reference_mask", "secondary_mask"):
        kwargs[name] = _mask_array(kwargs.get(name), ref, name, (abs(e), abs(a)))
    georef = reference.attrs.get("crs") is not None
    if isinstance(kwargs.get("prior"), xr.Dataset):
        kwargs["prior"] = _prior_pixels(kwargs["prior"], georef, a, e)
    field = correlate_arrays(ref.values, sec.values, **kwargs)

    if georef:
        ew = field.dx * np.float32(a)
        ns = field.dy * np.float32(e)
        units = "m"
    else:
        ew = field.dx.copy()
        ns = -field.dy
        units = "pixel"
    rows, cols = field.centres()
    xs = c + a * (cols + 0.5)
    ys = f + e * (rows + 0.5)
    step = field.step
    out_t = [
        step * a,
        0.0,
        c + a * (field.col0 + 0.5) - step * a / 2,
        0.0,
        step * e,
        f + e * (field.row0 + 0.5) - step * e / 2,
    ]
    attrs = {
        "transform": [float(v) for v in out_t],
        "units": units,
        "window": int(kwargs.get("window", _default("window"))),
        "step": int(step),
        "search": int(kwargs.get("search", _default("search"))),
        "prefilter": kwargs.get("prefilter", _default("prefilter")),
        "max_masked_fraction": float(
            kwargs.get("max_masked_fraction", _default("max_masked_fraction"))
        ),
        "min_texture": float(kwargs.get("min_texture", _default("min_texture"))),
        "max_peak_ratio": float(kwargs.get("max_peak_ratio", _default("max_peak_ratio"))),
        "levels": int(kwargs.get("levels", _default("levels"))),
        "deform": int(kwargs.get("deform", _default("deform"))),
    }
    if "crs" in reference.attrs:
        attrs = {"crs": reference.attrs["crs"], **attrs}
    desc = {
        "ew": "east-west displacement of the secondary relative to the reference, east positive",
        "ns": "north-south displacement of the secondary relative to the reference, north positive",
        "score": "correlation quality (zero-normalised cross-correlation, clipped to [0, 1])",
    }
    ds = xr.Dataset(
        {
            "ew": (("y", "x"), ew.astype(np.float32), {"units": units, "long_name": desc["ew"]}),
            "ns": (("y", "x"), ns.astype(np.float32), {"units": units, "long_name": desc["ns"]}),
            "score": (
                ("y", "x"),
                field.score.astype(np.float32),
                {"units": "1", "long_name": desc["score"]},
            ),
        },
        coords={"y": ys, "x": xs},
        attrs=attrs,
    )
    return ds
