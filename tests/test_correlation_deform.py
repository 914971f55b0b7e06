"""Tests of the window deformation pass and the compiled deformed-block kernel of the
correlator (tio._correlation.deform_refine, tio._kernels.deformed_blocks), and of the
whitening of the sub-pixel estimator."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import xarray as xr
from rasterio.windows import Window
from scipy import ndimage

from tio import _correlation as _c
from tio import _kernels
from tio.config import CorrelationConfig
from tio.correlation import correlate, correlate_arrays
from tio.errors import CorrelationError

MARGIN = 40


@pytest.fixture(scope="module")
def l8(shared_data):
    """Landsat-8 panchromatic crop (360 x 360 px + margin)."""
    path = shared_data / "landsat8_pan_p020r039" / "l8_B8.tif"
    with rasterio.open(path) as src:
        n = 360 + 2 * MARGIN
        return src.read(1, window=Window(600 - MARGIN, 760 - MARGIN, n, n)).astype(np.float64)


def _bump(h, w, amp_y, amp_x, sigma):
    cy, cx = h / 2.0, w / 2.0

    def field(y, x):
        g = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2.0 * sigma**2))
        return amp_y * g, amp_x * g

    return field


def _warped_pair(big, field, seed, noise=0.01):
    """Reference crop and a secondary whose content is moved by ``field``, with noise;
    truth ``D`` at every reference pixel p: ``sec(p + D(p)) = ref(p)``."""
    m = MARGIN
    h, w = big.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    fy, fx = field(yy, xx)
    coef = ndimage.spline_filter(big, order=5)
    warped = ndimage.map_coordinates(coef, [yy - fy, xx - fx], order=5, prefilter=False)
    ty, tx = np.zeros_like(yy), np.zeros_like(xx)
    for _ in range(12):
        ty, tx = field(yy + ty, xx + tx)
    rng = np.random.default_rng(seed)
    sd = big.std()
    ref = big[m:-m, m:-m] + rng.normal(0, noise * sd, (h - 2 * m, w - 2 * m))
    sec = 1.1 * warped[m:-m, m:-m] + 50 + rng.normal(0, noise * sd, (h - 2 * m, w - 2 * m))
    return ref.astype(np.float32), sec.astype(np.float32), ty[m:-m, m:-m], tx[m:-m, m:-m]


def _window_means(a, window, step):
    ii = np.zeros((a.shape[0] + 1, a.shape[1] + 1))
    ii[1:, 1:] = a.cumsum(0).cumsum(1)
    ny, nx = _c.grid_shape(a.shape, window, step)
    r = np.arange(ny) * step
    c = np.arange(nx) * step
    s = (
        ii[np.ix_(r + window, c + window)]
        - ii[np.ix_(r, c + window)]
        - ii[np.ix_(r + window, c)]
        + ii[np.ix_(r, c)]
    )
    return s / window**2


def _rmse(out, ty, tx):
    ok = np.isfinite(out.dy) & np.isfinite(out.dx)
    return float(np.sqrt(np.mean(((out.dy - ty)[ok] ** 2 + (out.dx - tx)[ok] ** 2) / 2))), ok


def test_deformation_reduces_error_on_a_strained_lobe(l8):
    """A 3-px Gaussian bump (sigma 30 px: up to ~0.8 px of change across a window):
    one deformation pass at least halves the RMSE against the window-mean truth, and
    a second pass does not make it worse."""
    field = _bump(*l8.shape, -1.8, 2.4, 30.0)
    ref, sec, ty, tx = _warped_pair(l8, field, seed=1)
    wy, wx = _window_means(ty, 32, 8), _window_means(tx, 32, 8)
    e0, ok0 = _rmse(correlate_arrays(ref, sec, window=32, step=8, deform=0), wy, wx)
    e1, ok1 = _rmse(correlate_arrays(ref, sec, window=32, step=8, deform=1), wy, wx)
    e2, _ = _rmse(correlate_arrays(ref, sec, window=32, step=8, deform=2), wy, wx)
    assert ok1.mean() >= ok0.mean() - 0.01 and ok1.mean() > 0.95
    assert e1 < 0.5 * e0, (e0, e1)
    assert e1 < 0.04, e1
    assert e2 < 1.1 * e1, (e1, e2)


def test_deformation_keeps_the_signs_and_the_peak(l8):
    """Signs: the bump moves content up (-dy) and right (+dx); its peak is not smoothed."""
    field = _bump(*l8.shape, -1.8, 2.4, 30.0)
    ref, sec, ty, tx = _warped_pair(l8, field, seed=2)
    out = correlate_arrays(ref, sec, window=32, step=8)
    wx = _window_means(tx, 32, 8)
    assert np.nanmin(out.dy) < -1.3 and np.nanmax(out.dx) > 1.8
    assert abs(np.nanmax(out.dx) - wx.max()) < 0.05


def test_uniform_shift_is_untouched_by_deformation(l8):
    """Without strain no window is re-estimated: bit-identical to ``deform=0``."""
    m = MARGIN
    ref = l8[m:-m, m:-m]
    sec = ndimage.shift(l8, (0.4, -1.3), order=5)[m:-m, m:-m]
    a = correlate_arrays(ref, sec, window=32, step=16, deform=0)
    b = correlate_arrays(ref, sec, window=32, step=16, deform=1)
    np.testing.assert_array_equal(a.dy, b.dy)
    np.testing.assert_array_equal(a.dx, b.dx)


def _blocks(seed=0, k=5, w=16, p=26):
    rng = np.random.default_rng(seed)
    qd = rng.normal(size=(k, p, p)).astype(np.float32)
    by = rng.integers(2, 6, k)
    bx = rng.integers(2, 6, k)
    fy = rng.uniform(-0.5, 0.5, k)
    fx = rng.uniform(-0.5, 0.5, k)
    return qd, by, bx, fy, fx, w


def test_deformed_blocks_zero_deformation_equals_tapered_blocks():
    qd, by, bx, fy, fx, w = _blocks()
    k, n = qd.shape[0], w + 2
    roll = float(_c.taper_roll(w))
    a = np.zeros((k, n + 2, n + 2), np.float32)
    b = np.zeros_like(a)
    _kernels.tapered_blocks_at(qd, np.arange(k), by, bx, fy, fx, w, roll, a)
    z = np.zeros((k, n, n))
    _kernels.deformed_blocks(qd, by, bx, z, z, fy, fx, w, roll, b)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_deformed_blocks_integer_and_linear_deformation():
    """An integer deformation is a move of the block; a fractional one is the cubic
    convolution of the sub-image (checked against an explicit Keys interpolation)."""
    qd, by, bx, fy, fx, w = _blocks(1)
    k, n = qd.shape[0], w + 2
    roll = float(_c.taper_roll(w))
    a = np.zeros((k, n, n), np.float32)
    b = np.zeros_like(a)
    _kernels.tapered_blocks_at(qd, np.arange(k), by + 1, bx - 2, fy, fx, w, roll, a)
    _kernels.deformed_blocks(
        qd, by, bx, np.ones((k, n, n)), np.full((k, n, n), -2.0), fy, fx, w, roll, b
    )
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)

    # a fractional deformation: compare the un-tapered values with numpy cubic convolution
    def keys(t):
        t = np.abs(t)
        return np.where(
            t <= 1,
            1.5 * t**3 - 2.5 * t**2 + 1,
            np.where(t < 2, -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2, 0.0),
        )

    g = np.random.default_rng(3).uniform(-0.6, 0.6, (2, k, n, n))
    out = np.zeros((k, n, n), np.float32)
    _kernels.deformed_blocks(qd, by, bx, g[0], g[1], fy, fx, w, roll, out)
    for t in range(k):
        ys = by[t] + np.arange(n)[:, None] + g[0, t]
        xs = bx[t] + np.arange(n)[None, :] + g[1, t]
        v = np.zeros((n, n))
        y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
        for u in range(-1, 3):
            for q in range(-1, 3):
                v += keys(ys - (y0 + u)) * keys(xs - (x0 + q)) * qd[t][y0 + u, x0 + q]
        tw = np.outer(
            _c.taper(np.arange(n) - 1.0 - fy[t], w, roll),
            _c.taper(np.arange(n) - 1.0 - fx[t], w, roll),
        )
        mean = (v * tw).sum() / tw.sum()
        np.testing.assert_allclose(out[t], (v - mean) * tw, rtol=0, atol=1e-4)


def test_strain_deviation():
    dy = np.zeros((6, 7))
    dx = np.zeros((6, 7))
    dx[3, 3] = 0.5
    dev = _c.strain_deviation(dy, dx, 32, 16)
    assert dev[3, 3] == 0.5 and dev[2, 2] == 0.5 and dev[0, 0] == 0.0 and dev[1, 3] == 0.0


def test_whitening_does_not_follow_the_score():
    """Square-root whitening for every window: an exponent that fell to 0 (plain
    cross-correlation) for scores below 0.95 doubled the error of ``tio demo``."""
    wh = _c.whitening(np.array([1.0, 0.99, 0.95, 0.5, np.nan]), 5)
    np.testing.assert_array_equal(wh, np.full(5, 0.5))
    np.testing.assert_array_equal(_c.whitening(None, 3), np.full(3, 0.5))


def test_deform_option_is_checked_and_recorded(l8):
    a = l8[:96, :96].astype(np.float32)
    with pytest.raises(CorrelationError, match="deform"):
        correlate_arrays(a, a, deform=-1)
    with pytest.raises(CorrelationError, match="deform"):
        correlate_arrays(a, a, deform=1.5)
    da = xr.DataArray(a, dims=("y", "x"))
    assert correlate(da, da, deform=0).attrs["deform"] == 0
    assert correlate(da, da).attrs["deform"] == 1
    assert CorrelationConfig().deform == 1
