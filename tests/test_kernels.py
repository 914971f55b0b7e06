"""The compiled kernels of the correlator's fast paths (tio._kernels) against the numpy
formulations they replace (synthetic arrays; equal bit for bit, or to float32 rounding
where the order of the sums differs)."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from tio import _correlation as _c
from tio import _kernels


def _images(seed=0, shape=(90, 120)):
    rng = np.random.default_rng(seed)
    ref = ndimage.gaussian_filter(rng.normal(size=shape), 1.2) * 40 + 900
    sec = np.roll(ref, (2, -1), axis=(0, 1)) + rng.normal(size=shape)
    return ref.astype(np.float32), sec.astype(np.float32)


def test_zncc_clean_equals_zncc_surfaces():
    """The integer stage of the clean windows (windows gathered straight into the FFT
    buffers, compiled normalisation) gives the ZNCC surfaces of :func:`zncc_surfaces`,
    and the same standardised / demeaned windows."""
    ref, sec = _images()
    w, s = 32, 8
    p = w + 2 * s
    rtop = np.array([10, 20, 30, 40, 12], dtype=np.int64)
    rleft = np.array([10, 50, 30, 70, 33], dtype=np.int64)
    qtop, qleft = rtop - s, rleft - s
    r = sliding_window_view(ref, (w, w))[rtop, rleft]
    q = sliding_window_view(sec, (p, p))[qtop, qleft]
    lvm = _c.local_variance_map(sec, w)
    n = np.arange(2 * s + 1)
    lv = lvm[(qtop[:, None] + n)[:, :, None], (qleft[:, None] + n)[:, None, :]]
    zncc, rs, sd_r, qd = _c._zncc_clean(ref, sec, rtop, rleft, qtop, qleft, w, s, lv)
    expected, _ = _c.zncc_surfaces(r, q, w, s)
    np.testing.assert_allclose(zncc, expected, rtol=0, atol=2e-5)
    rs0, _, sd0 = _c._standardise(r)
    np.testing.assert_allclose(rs, rs0, rtol=0, atol=1e-5)
    np.testing.assert_allclose(sd_r, sd0, rtol=1e-6)
    np.testing.assert_allclose(qd, _c._demean(q)[0], rtol=0, atol=1e-3)
    # a flat reference window gives NaN everywhere
    flat = ref.copy()
    flat[10:42, 10:42] = 5.0
    zf = _c._zncc_clean(flat, sec, rtop, rleft, qtop, qleft, w, s, lv)[0]
    assert np.isnan(zf[0]).all() and np.isfinite(zf[1:]).all()


def test_tapered_reference_equals_numpy():
    rng = np.random.default_rng(1)
    w, size = 32, 36
    rs = rng.normal(size=(6, w, w)).astype(np.float32) * 3 + 2
    tw = _c._taper2d(w)
    out = np.full((6, size, size), np.nan, dtype=np.float32)
    _kernels.tapered_reference(rs, tw, out)
    a = np.zeros((6, size, size))
    ra = rs.astype(np.float64) * tw
    mean = ra.sum(axis=(1, 2)) / tw.astype(np.float64).sum()
    a[:, 1 : w + 1, 1 : w + 1] = ra - mean[:, None, None] * tw
    np.testing.assert_allclose(out, a, rtol=0, atol=1e-5)


def test_tapered_blocks_at_equals_gathered_blocks():
    """Indexing the sub-images in the kernel equals gathering them first."""
    rng = np.random.default_rng(2)
    w, p, size = 32, 48, 36
    qd = rng.normal(size=(9, p, p)).astype(np.float32)
    sel = np.array([7, 2, 2, 5], dtype=np.int64)
    by, bx = rng.integers(0, p - w - 2, 4), rng.integers(0, p - w - 2, 4)
    fy, fx = rng.uniform(-0.5, 0.5, 4), rng.uniform(-0.5, 0.5, 4)
    roll = float(_c.taper_roll(w))
    a = np.zeros((4, size, size), np.float32)
    b = np.zeros_like(a)
    _kernels.tapered_blocks_at(qd, sel, by, bx, fy, fx, w, roll, a)
    _kernels.tapered_blocks_at(qd[sel], np.arange(4), by, bx, fy, fx, w, roll, b)
    np.testing.assert_array_equal(a, b)


def test_newton_peaks_indexing_the_reference_spectra():
    """``newton_peaks`` with an index into the reference spectra equals the call on the
    gathered spectra, and finds a known sub-pixel shift."""
    rng = np.random.default_rng(3)
    w, size = 32, 36
    img = ndimage.gaussian_filter(rng.normal(size=(80, 80)), 1.5)
    shift = (0.3, -0.2)
    moved = ndimage.shift(img, shift, order=5, mode="wrap")
    ref = np.stack([img[20 : 20 + w, 20 + 3 * i : 20 + 3 * i + w] for i in range(5)])
    qd = np.stack([moved[19:67, 19 + 3 * i : 67 + 3 * i] for i in range(5)]).astype(np.float32)
    rbuf = np.empty((5, size, size), np.float32)
    _kernels.tapered_reference(ref.astype(np.float32), _c._taper2d(w), rbuf)
    spec = np.conj(np.fft.rfft2(rbuf)).astype(np.complex64)
    b = np.zeros((5, size, size), np.float32)
    z = np.zeros(5)
    i0 = np.zeros(5, np.int64)
    _kernels.tapered_blocks_at(qd, np.arange(5), i0, i0, z, z, w, 5.33, b)
    fb = np.fft.rfft2(b).astype(np.complex64)
    sw = _c._spectral_weight32(size)
    sel = np.array([4, 1, 3], dtype=np.int64)
    out = [np.empty(3), np.empty(3), np.empty(3, bool)]
    _kernels.newton_peaks(fb[sel], spec, sel, sw, np.full(3, 0.3), z[:3], z[:3], 0.25, *out)
    exp = [np.empty(3), np.empty(3), np.empty(3, bool)]
    _kernels.newton_peaks(
        fb[sel], spec[sel], np.arange(3), sw, np.full(3, 0.3), z[:3], z[:3], 0.25, *exp
    )
    for a, e in zip(out, exp, strict=True):
        np.testing.assert_array_equal(a, e)
    assert out[2].all()
    np.testing.assert_allclose(out[0], shift[0], atol=0.03)
    np.testing.assert_allclose(out[1], shift[1], atol=0.03)


def test_window_stds_equals_window_std():
    rng = np.random.default_rng(4)
    img = (rng.normal(size=(70, 90)) * 5 + 100).astype(np.float32)
    tops = np.array([0, 10, 38, 5], dtype=np.int64)
    lefts = np.array([0, 57, 20, 3], dtype=np.int64)
    out = np.empty(4)
    _kernels.window_stds(img, tops, lefts, 32, out)
    expected = _c.window_std(sliding_window_view(img, (32, 32))[tops, lefts])
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_nan_median_filter_equals_nanmedian():
    rng = np.random.default_rng(5)
    f = rng.normal(size=(13, 17))
    f[rng.random(f.shape) < 0.3] = np.nan
    f[:4, :4] = np.nan  # a cell without any finite neighbour
    for h in (1, 2):
        size = 2 * h + 1
        win = sliding_window_view(np.pad(f, h, constant_values=np.nan), (size, size))
        win = win.reshape(-1, size * size)
        has = np.isfinite(win).any(axis=1)
        expected = np.full(win.shape[0], np.nan)
        expected[has] = np.nanmedian(win[has], axis=1)
        out = np.empty(f.shape)
        _kernels.nan_median_filter(f, h, out)
        np.testing.assert_array_equal(out, expected.reshape(f.shape))


def _masked_blocks(seed=7, k=6, w=32, p=48):
    rng = np.random.default_rng(seed)
    rs = (rng.normal(size=(k, w, w)) * 4 + 3).astype(np.float32)
    qd = (rng.normal(size=(k, p, p)) * 4 - 2).astype(np.float32)
    rv = np.ones((k, w, w), dtype=bool)
    qv = np.ones((k, p, p), dtype=bool)
    qv[0, :9, :] = False  # image edge above
    qv[1, :, 40:] = False  # image edge right
    rv[2, 5:9, 10:20] = False  # a hole in the reference window
    qv[3, 20:25, 3:30] = False  # a hole in the secondary
    # window 4: none (the plain tapered block); window 5: both
    qv[5, :, :6] = False
    rv[5, 25:, :] = False
    sel = np.array([0, 1, 2, 3, 4, 5, 3], dtype=np.int64)
    by = rng.integers(0, p - w - 2, sel.size)
    bx = rng.integers(0, p - w - 2, sel.size)
    by[0], bx[1] = 2, 12
    fy, fx = rng.uniform(-0.5, 0.5, sel.size), rng.uniform(-0.5, 0.5, sel.size)
    return rs, qd, rv, qv, sel, by, bx, fy, fx


def test_weighted_blocks_at_equals_numpy():
    """The compiled weighted blocks of the edge-window sub-pixel path equal the numpy
    formulation (taper moved by the estimate times :func:`mask_weight` of the pixels
    usable in both windows, weighted demeaning), and the plain tapered block where
    every pixel is usable."""
    rs, qd, rv, qv, sel, by, bx, fy, fx = _masked_blocks()
    w, size = rs.shape[1], 36
    n = w + 2
    roll = float(_c.taper_roll(w))
    out = np.zeros((sel.size, size, size), np.float32)
    _kernels.weighted_blocks_at(qd, rv, qv, sel, by, bx, fy, fx, w, roll, 2, 0.75, out)
    x = np.arange(-1, w + 1, dtype=np.float64)
    for t, q in enumerate(sel):
        blk = qd[q, by[t] : by[t] + n, bx[t] : bx[t] + n].astype(np.float64)
        uv = qv[q, by[t] : by[t] + n, bx[t] : bx[t] + n].copy()
        uv[1:-1, 1:-1] &= rv[q]
        wgt = np.outer(_c.taper(x - fy[t], w), _c.taper(x - fx[t], w))
        if not uv.all():
            wgt = wgt * _c.mask_weight(uv[None], fy[t : t + 1], fx[t : t + 1])[0]
        expected = np.zeros((size, size))
        expected[:n, :n] = _c._weighted_demean(blk[None], wgt[None])[0]
        np.testing.assert_allclose(out[t], expected, rtol=0, atol=2e-5 * np.abs(blk).max())
    assert (out[:, n:, :] == 0).all() and (out[:, :, n:] == 0).all()


def test_weighted_reference_at_equals_numpy():
    """The compiled weighted reference windows (taper times the unmoved
    :func:`mask_weight` of the pixels usable in both windows) equal the numpy
    formulation of the edge-window sub-pixel path."""
    rs, qd, rv, qv, sel, by, bx, _, _ = _masked_blocks()
    w, size = rs.shape[1], 36
    n = w + 2
    tw = _c._taper2d(w)
    out = np.full((sel.size, size, size), np.nan, np.float32)
    masked = np.empty(sel.size, dtype=bool)
    _kernels.weighted_reference_at(rs, rv, qv, sel, by, bx, tw, 2, 0.75, out, masked)
    z = np.zeros(1)
    for t, q in enumerate(sel):
        uv = qv[q, by[t] : by[t] + n, bx[t] : bx[t] + n].copy()
        uv[1:-1, 1:-1] &= rv[q]
        assert masked[t] == (not uv.all())
        wgt = tw.astype(np.float64)
        if not uv.all():
            wgt = wgt * _c.mask_weight(uv[None], z, z)[0, 1:-1, 1:-1]
        expected = np.zeros((size, size))
        expected[1 : w + 1, 1 : w + 1] = _c._weighted_demean(
            rs[q][None].astype(np.float64), wgt[None]
        )[0]
        np.testing.assert_allclose(out[t], expected, rtol=0, atol=2e-5 * np.abs(rs).max())
    assert masked[[0, 1, 2, 3, 5]].all() and not masked[4]


def test_separable_blur_equals_two_dimensional():
    """The 1-D passes of a rectangular mask (image edges) equal the 2-D erosion and
    blur of :func:`mask_weight` to float32 rounding; other masks are left to it."""
    rng = np.random.default_rng(8)
    n, rad = 34, 4
    for t in range(6):
        v = np.zeros((n, n), dtype=bool)
        y0, x0 = rng.integers(0, 12, 2)
        y1, x1 = n - rng.integers(0, 12, 2)
        v[y0:y1, x0:x1] = True
        if t == 5:
            v[:] = True
        fy, fx = rng.uniform(-0.5, 0.5, 2)
        expected = _c.mask_weight(v[None], np.array([fy]), np.array([fx]))[0]
        wy = np.empty(2 * rad + 1, np.float32)
        wx = np.empty(2 * rad + 1, np.float32)
        _kernels._gauss_taps(fy, 0.75, rad, wy)
        _kernels._gauss_taps(fx, 0.75, rad, wx)
        out = np.full((n, n), np.nan, np.float32)
        work = np.empty((n, n + 2 * rad), np.float32)
        assert _kernels._separable_blur(v, 2, wy, wx, rad, out, work)
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    v[3, 3] = False  # not a rectangle
    assert not _kernels._separable_blur(v, 2, wy, wx, rad, out, work)


def test_zncc_rect_equals_zncc_surfaces():
    """The ZNCC of edge windows (usable secondary pixels forming a rectangle; inputs
    standardised by the compiled ``rect_standardise``) equals the general masked
    formulation, and so does the usable fraction."""
    ref, sec = _images(9)
    w, s = 32, 8
    p = w + 2 * s
    tops = np.array([0, 20, 40, 10, 30], dtype=np.int64)
    lefts = np.array([0, 30, 60, 70, 5], dtype=np.int64)
    r = sliding_window_view(ref, (w, w))[tops + s, lefts + s].copy()
    q = sliding_window_view(sec, (p, p))[tops, lefts].copy()
    qv = np.ones(q.shape, dtype=bool)
    qv[0, :6, :] = False
    qv[1, :, 41:] = False
    qv[2, 40:, :] = False
    qv[2, :, :3] = False  # a corner
    qv[3, :, :10] = False  # window 4: fully usable
    q[~qv] = 1e4  # values outside the rectangle must not count
    rv = np.ones(r.shape, dtype=bool)
    zncc, frac = _c._zncc_rect(r, q, qv, w, s, 16)
    expected, efrac = _c.zncc_surfaces(r, q, w, s, rv, qv, min_overlap=16)
    np.testing.assert_allclose(frac, efrac, rtol=0, atol=1e-12)
    assert np.array_equal(np.isnan(zncc), np.isnan(expected))
    np.testing.assert_allclose(zncc, expected, rtol=0, atol=2e-5, equal_nan=True)
    # a flat reference window gives NaN
    r[2] = 7.0
    assert np.isnan(_c._zncc_rect(r, q, qv, w, s, 16)[0][2]).all()


def test_zncc_normalise_at_equals_gathered():
    """Reading the local variances from the map equals normalising with the gathered
    variances (bit for bit)."""
    rng = np.random.default_rng(10)
    k, n, w = 5, 17, 32
    lvm = rng.uniform(0.0, 50.0, size=(60, 70))
    lvm[10:14, 20:25] = 0.0  # flat secondary windows: NaN
    lr = np.array([0, 10, 5, 40, 3], dtype=np.int64)
    lc = np.array([0, 20, 50, 30, 8], dtype=np.int64)
    num = rng.normal(size=(k, n, n)).astype(np.float32)
    sd_q = rng.uniform(0.5, 2.0, k)
    bad = np.array([False, False, True, False, False])
    idx = np.arange(n)
    lv = lvm[(lr[:, None] + idx)[:, :, None], (lc[:, None] + idx)[:, None, :]]
    a = np.empty((k, n, n))
    b = np.empty((k, n, n))
    _kernels.zncc_normalise(num, lv, sd_q, bad, w, 1e-6, a)
    _kernels.zncc_normalise_at(num, lvm, lr, lc, sd_q, bad, w, 1e-6, b)
    np.testing.assert_array_equal(a, b)
    assert np.isnan(b[2]).all() and np.isnan(b[1, :4, :5]).all()


def test_peak_analysis_equals_numpy():
    """The compiled decisions of the integer stage (peak, bracketing, peak-ratio and
    ridge tests, score, parabolic start) equal the numpy functions, bit for bit."""
    rng = np.random.default_rng(11)
    k, n = 400, 17
    yy, xx = np.mgrid[0:n, 0:n]
    cy, cx = rng.uniform(-1, n, k), rng.uniform(-1, n, k)
    sy, sx = rng.uniform(0.8, 6.0, k), rng.uniform(0.8, 6.0, k)
    z = np.exp(
        -0.5 * (((yy - cy[:, None, None]) / sy[:, None, None]) ** 2)
        - 0.5 * (((xx - cx[:, None, None]) / sx[:, None, None]) ** 2)
    )
    z = z * rng.uniform(0.3, 1.0, (k, 1, 1)) + rng.normal(0, 0.05, (k, n, n))
    z[rng.random((k, n, n)) < 0.03] = np.nan  # offsets not evaluated
    z[5] = np.nan  # all
    z[6] = -0.2  # no positive peak
    z[7] = 0.0
    z[7, 8, 8], z[7, 8, 3] = 1.0, 0.95  # a second peak: ambiguous
    for max_ratio in (0.9, 1.0):
        iy0, ix0, ok0 = _c.integer_peaks(z)
        if max_ratio < 1.0:
            ok0 &= ~_c.ambiguous_peaks(z, iy0, ix0, max_ratio)
            ok0 &= ~_c.weak_curvature(z, iy0, ix0, ok0)
        idx = np.flatnonzero(ok0)
        iy, ix = np.empty(k, np.int64), np.empty(k, np.int64)
        ok = np.empty(k, bool)
        sc, fy, fx = np.empty(k), np.empty(k), np.empty(k)
        _kernels.peak_analysis(
            z, max_ratio, _c._PEAK_EXCLUSION, _c._MIN_CURVATURE, iy, ix, ok, sc, fy, fx
        )
        np.testing.assert_array_equal(iy, iy0)
        np.testing.assert_array_equal(ix, ix0)
        np.testing.assert_array_equal(ok, ok0)
        np.testing.assert_array_equal(sc[idx], _c.peak_score(z[idx], iy0[idx], ix0[idx]))
        ey, ex = _c._parabolic_init(z[idx], iy0[idx], ix0[idx])
        np.testing.assert_array_equal(fy[idx], ey)
        np.testing.assert_array_equal(fx[idx], ex)
        assert np.isnan(sc[~ok]).all()
        assert 50 < idx.size < k - 50 and not ok[[5, 6]].any()
        assert ok[7] == (max_ratio == 1.0)


def test_gather_and_usable_windows_equal_fancy_indexing():
    """gather_at and windows_usable_at (the compiled gathers of the edge windows and of
    the deformation pass) give the arrays of numpy's fancy indexing of sliding-window
    views."""
    rng = np.random.default_rng(11)
    img = rng.normal(size=(60, 70)).astype(np.float32)
    valid = np.ones(img.shape, dtype=bool)
    valid[22:24, 10:12] = False  # inside the window at (20, 7) only
    tops = np.array([0, 5, 20, 44, 3], dtype=np.int64)
    lefts = np.array([0, 30, 7, 54, 38], dtype=np.int64)
    for size, image in ((16, img), (16, valid), (12, img.astype(np.float64))):
        out = np.empty((tops.size, size, size), dtype=image.dtype)
        _kernels.gather_at(image, tops, lefts, size, out)
        np.testing.assert_array_equal(out, sliding_window_view(image, (size, size))[tops, lefts])
    usable = np.empty(tops.size, dtype=bool)
    _kernels.windows_usable_at(valid, tops, lefts, 16, usable)
    expected = sliding_window_view(valid, (16, 16))[tops, lefts].all(axis=(1, 2))
    np.testing.assert_array_equal(usable, expected)
    assert usable.any() and not usable.all()  # both outcomes are exercised


def test_map_tasks_keeps_order_and_raises():
    """_map_tasks (the calling thread plus pool threads) returns the results in the
    order of the tasks, runs each task once, and raises a task's exception."""
    import threading

    seen = []
    lock = threading.Lock()

    def square(x):
        with lock:
            seen.append(x)
        return x * x

    for workers in (1, 2, 3):
        seen.clear()
        assert _c._map_tasks(square, range(25), workers) == [x * x for x in range(25)]
        assert sorted(seen) == list(range(25))

    def fail(x):
        if x == 3:
            raise ValueError("task 3")
        return x

    try:
        _c._map_tasks(fail, range(10), 2)
    except ValueError as e:
        assert str(e) == "task 3"
    else:
        raise AssertionError("no exception")
