"""Correct each pair's displacement maps before the inversion.

A correlation map between two optical images carries a misregistration of the
whole image (several metres for Sentinel-2) and sometimes a long-wavelength
ramp. :func:`correct_pair`

1. discards offsets whose correlation score is below ``min_score``;
2. subtracts each component's median over the map (the original TIO's only
   correction), assuming most of the area is stable;
3. optionally removes a plane fitted robustly (iteratively trimmed at 3 MAD).

It returns the corrected Dataset and a record of what was removed, which the
pipeline writes to ``pairs/corrections.csv`` so users can inspect it.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["correct_pair", "robust_plane"]


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
    ds: xr.Dataset, *, min_score: float = 0.2, median: bool = True, ramp: bool = False
) -> tuple[xr.Dataset, dict]:
    """Mask low scores, remove the median offset and optionally a ramp.

    Parameters
    ----------
    ds
        A pair map: ``ew``, ``ns`` (m), ``score`` on (y, x).
    min_score
        Offsets with a lower score (or NaN score) become NaN.
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
    record: dict = {"valid_fraction": float(1 - bad.mean())}
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
    out.attrs["corrections"] = (
        ",".join(k for k, on in (("median", median), ("ramp", ramp)) if on) or "none"
    )
    return out, record
