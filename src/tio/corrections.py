"""Correct each pair's displacement maps before the inversion.

A correlation map between two optical images carries a misregistration of the
whole image (several metres for Sentinel-2) and sometimes a long-wavelength
ramp. :func:`correct_pair`

1. discards offsets whose correlation score is below ``min_score``, and
   isolated offsets that disagree with their neighbours (the normalised median
   test of Westerweel & Scarano 2005, Exp. Fluids 39:1096, used in particle-image
   velocimetry: wrong matches on repetitive or changed texture often score well
   but stand alone);
2. subtracts each component's median over the map (the original TIO's only
   correction), assuming most of the area is stable;
3. optionally removes a plane fitted robustly (iteratively trimmed at 3 MAD).

It returns the corrected Dataset and a record of what was removed, which the
pipeline writes to ``pairs/corrections.csv`` so users can inspect it.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

__all__ = ["correct_pair", "median_test", "robust_plane"]


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
    """
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


def correct_pair(
    ds: xr.Dataset,
    *,
    min_score: float = 0.4,
    median: bool = True,
    ramp: bool = False,
    outlier_test: bool = True,
    outlier_threshold: float = 2.0,
    pixel_size: float | None = None,
) -> tuple[xr.Dataset, dict]:
    """Mask low scores, remove the median offset and optionally a ramp.

    Parameters
    ----------
    ds
        A pair map: ``ew``, ``ns`` (m), ``score`` on (y, x).
    min_score
        Offsets with a lower score (or NaN score) become NaN.
    outlier_test, outlier_threshold
        Reject offsets failing :func:`median_test` at this threshold.
    pixel_size
        Image pixel size in the offsets' unit, for the test's noise floor
        (0.1 pixel); default: the grid spacing divided by the ``step`` attribute.
    median, ramp
        Which corrections to apply (each component separately).

    Returns
    -------
    corrected, record
        The corrected Dataset (same grid and attrs) and a dict with the valid
        fraction and the removed offset / plane coefficients per component.
    """
    out = ds.copy(deep=True)
    bad = ~(ds["score"].values >= min_score)
    n_low = int((bad & np.isfinite(ds["ew"].values)).sum())
    n_outliers = 0
    if outlier_test:
        if pixel_size is None:
            pixel_size = abs(ds.attrs["transform"][0]) / float(ds.attrs.get("step", 1))
        ew = np.where(bad, np.nan, ds["ew"].values)
        ns = np.where(bad, np.nan, ds["ns"].values)
        rejected = median_test(ew, ns, eps=0.1 * pixel_size, threshold=outlier_threshold)
        n_outliers = int(rejected.sum())
        bad |= rejected
    record: dict = {
        "valid_fraction": float(1 - bad.mean()),
        "low_score": n_low,
        "outliers": n_outliers,
    }
    x = ds["x"].values.astype(float)
    y = ds["y"].values.astype(float)
    for comp in ("ew", "ns"):
        v = out[comp].values.astype("float64")
        v[bad] = np.nan
        if median:
            med = float(np.nanmedian(v)) if np.isfinite(v).any() else 0.0
            v -= med
            record[f"median_{comp}"] = med
        if ramp:
            coef = robust_plane(v, x, y)
            if coef is not None:
                xx, yy = np.meshgrid(x - x.mean(), y - y.mean())
                v -= coef[0] + coef[1] * xx + coef[2] * yy
                record[f"ramp_{comp}"] = coef
        out[comp].values[:] = v.astype("float32")
    out["score"].values[bad] = np.nan
    steps = (("outlier_test", outlier_test), ("median", median), ("ramp", ramp))
    out.attrs["corrections"] = ",".join(k for k, on in steps if on) or "none"
    return out, record
