"""Compiled kernels of TIO's correlator (private).

Numba-compiled loops over a batch of windows (the GIL is released, so the tiles of
windows processed by the correlator's thread pool run in parallel). They replace
chains of numpy operations whose temporaries made the sub-pixel stage memory-bound:

* :func:`tapered_blocks_at` - the secondary block of every window, at its own integer
  position, multiplied by the separable taper moved by the current sub-pixel
  estimate and demeaned (weighted mean), written into a zero-padded FFT buffer;
* :func:`newton_peaks` - the whitened, weighted cross-power spectrum of every window
  and the maximum of its inverse DFT, located by Newton iterations on the continuous
  (trigonometric polynomial) correlation surface: the value, gradient and Hessian at
  any real position are sums over the half spectrum, so the peak is found exactly
  (no upsampled grid, no parabola through grid values: no pixel-locking of the
  peak finder), in a few iterations from a start within the main lobe;
* :func:`mask_blur` - the eroded, blurred weight of the usable pixels moved by a
  sub-pixel shift (:func:`_correlation.mask_weight`; the weighted kernels of the edge
  windows compute it window by window, by 1-D passes where the usable pixels form a
  rectangle);
* :func:`local_variance` - local variances of a tile's secondary at every window
  position (integral images, no full-size temporaries);
* :func:`separate_regions` - the flood fill of the peak-ratio test;
* :func:`gather_windows` and :func:`zncc_normalise` - the integer stage of the clean
  windows: reference windows (standardised) and secondary sub-images (demeaned)
  copied from the images straight into zero-padded FFT buffers, and the ZNCC from
  the correlation and the local variances;
* :func:`tapered_reference`, :func:`tapered_blocks_at` - the sub-pixel stage's
  buffers without gathering copies; :func:`weighted_reference_at`,
  :func:`weighted_blocks_at` - the same with the mask weight of the edge windows;
  :func:`rect_standardise`, :func:`rect_zncc` - the integer stage of the edge windows;
  :func:`peak_analysis` - the integer stage's decisions on the ZNCC surfaces;
* :func:`window_stds`, :func:`nan_median_filter` - the texture scale of an image and
  the median filter of an offset field.

The FFTs themselves stay in :mod:`scipy.fft` (batched pocketfft).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# No ``parallel=True``: the kernels run inside the correlator's own thread pool (one
# tile per thread), and release the GIL. ``error_model="numpy"``: a float division by
# zero gives inf or NaN instead of raising (every division here is guarded or cannot
# divide by zero), which removes the check that kept the compiler from vectorising
# loops with a division (the whitening of :func:`newton_peaks`); results are
# bit-identical.
_OPTS = dict(cache=True, fastmath=False, nogil=True, error_model="numpy")


@njit(**_OPTS)
def _taper(x, w, roll):
    """Taper of a ``w``-px window at real position ``x``: 0 at -1 and ``w``, cos^2 roll-off
    over ``roll`` px from each end, 1 in between (scalar version of ``_correlation.taper``)."""
    if x <= -1.0 or x >= w:
        return 0.0
    d = min(x + 1.0, w - x)
    if d >= roll:
        return 1.0
    s = math.sin(0.5 * math.pi * d / roll)
    return s * s


@njit(**_OPTS)
def _demean_taper_at(q, k, r0, c0, ty, tx, out):
    """``out[i, j] = (v[i, j] - m) * ty[i] * tx[j]`` for ``i, j < n = len(ty)``, ``m`` the
    mean of ``v = q[k, r0:r0 + n, c0:c0 + n]`` weighted by the taper ``ty`` x ``tx`` (0 if
    the taper is all zero). ``v`` is read row by row from ``q`` (K, P, P): each row a
    contiguous slice, so that the loops vectorise (a 2-D slice of ``q`` has strides
    unknown to the compiler)."""
    n = ty.shape[0]
    acc = np.zeros(n)
    for i in range(n):
        if ty[i] == 0.0:
            continue
        a = ty[i]
        row = q[k, r0 + i, c0 : c0 + n]
        for j in range(n):
            acc[j] += a * row[j]
    sv = 0.0
    for j in range(n):
        sv += tx[j] * acc[j]
    swx = 0.0
    for j in range(n):
        swx += tx[j]
    swy = 0.0
    for i in range(n):
        swy += ty[i]
    sw = swx * swy
    mean = sv / sw if sw > 0 else 0.0
    for i in range(n):
        row = q[k, r0 + i, c0 : c0 + n]
        o = out[i]
        tyi = ty[i]
        for j in range(n):
            o[j] = (row[j] - mean) * tyi * tx[j]


@njit(**_OPTS)
def tapered_blocks_at(qd, sel, by, bx, fy, fx, w, roll, out):
    """Write the tapered, demeaned secondary blocks of the sub-images ``qd[sel]`` (no
    copy of them) into ``out`` (zeroed beforehand).

    ``qd`` (K, P, P) secondary sub-images; block ``t`` is
    ``qd[sel[t], by[t]:by[t] + w + 2, bx[t]:bx[t] + w + 2]``, its taper is
    ``taper(i - 1 - fy[t]) * taper(j - 1 - fx[t])``; it is written into ``out[t]``
    (float32, only its first ``w + 2`` rows and columns).
    """
    n = w + 2
    ty = np.empty(n)
    tx = np.empty(n)
    for t in range(sel.shape[0]):
        for i in range(n):
            ty[i] = _taper(i - 1.0 - fy[t], w, roll)
            tx[i] = _taper(i - 1.0 - fx[t], w, roll)
        r0 = by[t]
        c0 = bx[t]
        _demean_taper_at(qd, sel[t], r0, c0, ty, tx, out[t])


@njit(**_OPTS)
def tapered_reference(rs, tw, out):
    """The reference windows of the sub-pixel stage, into zero-padded FFT buffers.

    ``rs`` (K, w, w) windows, ``tw`` (w, w) float32 taper, ``out`` (K, L, L) float32:
    ``out[k, 1:w + 1, 1:w + 1] = rs[k] * tw - m * tw`` with ``m`` the taper-weighted
    mean of ``rs[k]`` (float32 products, sums in float64), zeros elsewhere.
    """
    k, w, _ = rs.shape
    size = out.shape[1]
    stw = 0.0
    for i in range(w):
        for j in range(w):
            stw += tw[i, j]
    for t in range(k):
        o = out[t]
        for i in range(size):
            for j in range(size):
                o[i, j] = 0.0
        sv = 0.0
        for i in range(w):
            for j in range(w):
                v = np.float32(rs[t, i, j]) * tw[i, j]
                o[i + 1, j + 1] = v
                sv += v
        m = np.float32(sv / stw)
        for i in range(w):
            for j in range(w):
                o[i + 1, j + 1] -= m * tw[i, j]


@njit(**_OPTS)
def block_origins(py, px, sel, s, alive, by, bx):
    """Top-left corners of the secondary blocks of the windows ``sel`` in their sub-images.

    ``py``/``px`` (N,) integer offsets of every window (indices in the ZNCC surface,
    ``0 .. 2 s``); the block of window ``sel[t]`` is one pixel larger than the window
    on every side, its corner ``(by[t], bx[t])`` = the offset clipped to
    ``1 .. 2 s - 1``, minus one. A window whose offset had to be clipped (its block
    would leave the sub-image) loses ``alive`` (in place). Nothing can fail; ``by`` and
    ``bx`` must hold ``sel.size`` values.
    """
    lo, hi = 1, 2 * s - 1
    for t in range(sel.size):
        k = sel[t]
        y, x = py[k], px[k]
        if y < lo or y > hi or x < lo or x > hi:
            alive[k] = False
        by[t] = min(max(y, lo), hi) - 1
        bx[t] = min(max(x, lo), hi) - 1


@njit(**_OPTS)
def newton_bookkeeping(sel, ey, ex, conv, f0y, f0x, refine, alive, py, px, fy, fx, todo):
    """Store the new sub-pixel estimates ``(ey[t], ex[t])`` of the windows ``sel[t]``.

    A window keeps ``alive`` only if its Newton search converged (``conv[t]``) to a
    finite position; the estimate of a live window (zero otherwise) is split into its
    nearest integer (added to ``py``, ``px``) and the fraction left (``fy``, ``fx``),
    all in place. The live windows whose estimate moved by more than ``refine`` px from
    the taper position ``(f0y[t], f0x[t])`` are written to ``todo``, in the order of
    ``sel``; their number is returned. ``todo`` must hold ``sel.size`` values.
    """
    n = 0
    for t in range(sel.size):
        k = sel[t]
        y, x = ey[t], ex[t]
        a = alive[k] and conv[t] and math.isfinite(y) and math.isfinite(x)
        alive[k] = a
        if not a:
            y = 0.0
            x = 0.0
        ry = np.rint(y)
        rx = np.rint(x)
        py[k] += np.int64(ry)
        px[k] += np.int64(rx)
        fy[k] = y - ry
        fx[k] = x - rx
        if a and max(abs(y - f0y[t]), abs(x - f0x[t])) > refine:
            todo[n] = k
            n += 1
    return n


@njit(**_OPTS)
def newton_peaks(fb, fa, sel, weight, whiten, sy, sx, max_step, out_y, out_x, ok):
    """Peak of the whitened cross-correlation of each window, by Newton iterations.

    ``fb`` (K, L, H) half spectra of the secondary blocks, ``fa`` (N, L, H) conjugate
    half spectra of the reference windows (``fa[sel[k]]`` for block ``k``), ``weight``
    (L, H) spectral weight (with the Hermitian multiplicity), ``whiten`` (K,) the
    exponent of the modulus division of each window (0.5: the cross-power spectrum is
    divided by the square root of its
    modulus; 0: not divided). The correlation
    at a real position ``(y, x)`` (pixels) is
    ``c(y, x) = sum_{a,b} Re(X[a, b] exp(2 i pi (f_a y + f_b x) / L))``; starting at
    ``(sy, sx)`` the Newton step is taken while the Hessian is negative definite (else
    a gradient step), each step clipped to ``max_step`` px. Results in ``out_y``,
    ``out_x``; ``ok`` False for a flat spectrum or no convergence.
    """
    k, L, H = fb.shape
    tau = 2.0 * math.pi / L
    # work arrays, once per batch; the spectrum is stored transposed (columns first) so
    # that the column sums of the iterations run over all the rows at once
    xr = np.empty((H, L))
    xi = np.empty((H, L))
    wt = np.empty((H, L), dtype=weight.dtype)
    for a in range(L):
        for b in range(H):
            wt[b, a] = weight[a, b]
    xr1 = xr.ravel()
    xi1 = xi.ravel()
    w1 = wt.ravel()
    s0r = np.empty(L)
    s0i = np.empty(L)
    s1r = np.empty(L)
    s1i = np.empty(L)
    s2r = np.empty(L)
    s2i = np.empty(L)
    ecr = np.empty(H)
    eci = np.empty(H)
    eyr = np.empty(L // 2 + 1)
    eyi = np.empty(L // 2 + 1)
    for t in range(k):
        ft = sel[t]
        mmax = 0.0
        for a in range(L):
            for b in range(H):
                c = fb[t, a, b] * fa[ft, a, b]
                re = c.real
                im = c.imag
                xr[b, a] = re
                xi[b, a] = im
                m = re * re + im * im
                if m > mmax:
                    mmax = m
        if not mmax > 0.0:
            ok[t] = False
            out_y[t] = np.nan
            out_x[t] = np.nan
            continue
        tiny = 1e-24 * mmax
        wh = whiten[t]
        hw = -0.5 * wh
        # The weights in float32 (the spectra are complex64), one loop per case: the
        # branch out of the loop and float32 let the compiler vectorise it.
        t32 = np.float32(tiny)
        if wh == 0.5:
            for e in range(L * H):
                m = max(np.float32(xr1[e] * xr1[e] + xi1[e] * xi1[e]), t32)
                g = w1[e] / math.sqrt(math.sqrt(m))
                xr1[e] *= g
                xi1[e] *= g
        elif wh == 0.0:
            for e in range(L * H):
                xr1[e] *= w1[e]
                xi1[e] *= w1[e]
        else:  # m ** -(wh / 2), by exp and log (about twice as fast as pow)
            h32 = np.float32(hw)
            for e in range(L * H):
                m = max(np.float32(xr1[e] * xr1[e] + xi1[e] * xi1[e]), t32)
                g = w1[e] * math.exp(h32 * math.log(m))
                xr1[e] *= g
                xi1[e] *= g
        y = sy[t]
        x = sx[t]
        conv = False
        for _it in range(12):
            # e^{i tau b x} for b = 0 .. H - 1 by complex rotation, and e^{i tau f y} for
            # the row frequencies f = 0 .. L / 2 (the negative ones are their conjugates):
            # two cos/sin pairs per iteration instead of H + L (same values to 1e-16)
            c1 = math.cos(tau * x)
            s1 = math.sin(tau * x)
            ecr[0] = 1.0
            eci[0] = 0.0
            for b in range(1, H):
                ecr[b] = ecr[b - 1] * c1 - eci[b - 1] * s1
                eci[b] = ecr[b - 1] * s1 + eci[b - 1] * c1
            c1 = math.cos(tau * y)
            s1 = math.sin(tau * y)
            eyr[0] = 1.0
            eyi[0] = 0.0
            for f in range(1, L // 2 + 1):
                eyr[f] = eyr[f - 1] * c1 - eyi[f - 1] * s1
                eyi[f] = eyr[f - 1] * s1 + eyi[f - 1] * c1
            # inner sums over the columns: sum_b X[a, b] e^{i tau f_b x} * (1, f_b, f_b^2),
            # for all rows at once (a vectorisable loop over the rows; for each row the
            # sum runs over b in increasing order)
            for a in range(L):
                s0r[a] = 0.0
                s0i[a] = 0.0
                s1r[a] = 0.0
                s1i[a] = 0.0
                s2r[a] = 0.0
                s2i[a] = 0.0
            for b in range(H):
                er = ecr[b]
                ei = eci[b]
                f1 = np.float64(b)
                f2 = np.float64(b * b)
                for a in range(L):
                    vr = xr[b, a] * er - xi[b, a] * ei
                    vi = xr[b, a] * ei + xi[b, a] * er
                    s0r[a] += vr
                    s0i[a] += vi
                    s1r[a] += f1 * vr
                    s1i[a] += f1 * vi
                    s2r[a] += f2 * vr
                    s2i[a] += f2 * vi
            gy = 0.0
            gx = 0.0
            hyy = 0.0
            hxx = 0.0
            hxy = 0.0
            for a in range(L):
                fa_ = a if a <= L // 2 else a - L
                if fa_ >= 0:
                    cr = eyr[fa_]
                    ci = eyi[fa_]
                else:
                    cr = eyr[-fa_]
                    ci = -eyi[-fa_]
                # Re(e * S) and Im(e * S)
                re0 = cr * s0r[a] - ci * s0i[a]
                im0 = cr * s0i[a] + ci * s0r[a]
                re1 = cr * s1r[a] - ci * s1i[a]
                im1 = cr * s1i[a] + ci * s1r[a]
                re2 = cr * s2r[a] - ci * s2i[a]
                # d/dy of Re(e^{i tau f y} S) = -tau f Im(...); d2/dy2 = -(tau f)^2 Re(...)
                gy += -fa_ * im0
                gx += -im1
                hyy += -fa_ * fa_ * re0
                hxx += -re2
                hxy += -fa_ * re1
            gy *= tau
            gx *= tau
            hyy *= tau * tau
            hxx *= tau * tau
            hxy *= tau * tau
            det = hyy * hxx - hxy * hxy
            if hyy < 0.0 and det > 0.0:
                dy = -(hxx * gy - hxy * gx) / det
                dx = -(hyy * gx - hxy * gy) / det
            else:  # not concave here: gradient ascent step
                nrm = math.sqrt(gy * gy + gx * gx)
                if nrm == 0.0:
                    break
                dy = max_step * gy / nrm
                dx = max_step * gx / nrm
            dy = min(max(dy, -max_step), max_step)
            dx = min(max(dx, -max_step), max_step)
            y += dy
            x += dx
            # quadratic convergence: after a Newton step below 5e-3 px the error is of
            # the order of its square, ~1e-5 px (measured: a step of 1e-3 px leaves 2e-7)
            if abs(dy) < 5e-3 and abs(dx) < 5e-3:
                conv = hyy < 0.0 and det > 0.0
                break
        ok[t] = conv
        out_y[t] = y
        out_x[t] = x


@njit(**_OPTS)
def mask_blur(valid, erode, wy, wx, rad, out):
    """Eroded, blurred usable-pixel masks with per-window taps (:func:`_correlation.mask_weight`).

    ``valid`` (K, n, n) bool; the mask is eroded by ``erode`` pixels (minimum over a
    ``2 erode + 1`` square, the nearest pixel repeated beyond the edges), then blurred
    separably: ``wy``/``wx`` (K, 2 rad + 1) float32 taps of the rows and columns, tap
    ``i`` for the offset ``i - rad``, the eroded mask repeated beyond the edges (edge
    padding). ``out`` (K, n, n) float32, clipped to [0, 1]; float32 sums in the order
    of the numpy version (rows first, then columns), which it matches bit for bit.
    """
    k, n, _ = out.shape
    m = n + 2 * rad
    col = np.empty((n, n), dtype=np.bool_)
    e = np.empty((n, n), dtype=np.bool_)
    rows = np.empty((n, m), dtype=np.float32)
    ep = np.empty((m, m), dtype=np.float32)
    for t in range(k):
        _mask_blur_one(valid[t], erode, wy[t], wx[t], rad, out[t], col, e, rows, ep, False)


@njit(**_OPTS)
def _mask_blur_one(valid, erode, wy, wx, rad, out, col, e, rows, ep, separable):
    """:func:`mask_blur` of one window (``valid``, ``out`` (n, n); ``wy``/``wx`` its taps;
    ``col``, ``e`` (n, n) bool, ``rows`` (n, n + 2 rad), ``ep`` (n + 2 rad) squared float32
    work arrays). With ``separable``, a rectangle of usable pixels takes
    :func:`_separable_blur` (1-D passes; equal up to float32 rounding)."""
    n = out.shape[0]
    m = n + 2 * rad
    nt = 2 * rad + 1
    if separable and _separable_blur(valid, erode, wy, wx, rad, out, rows):
        return
    # erosion: minimum over the rows, then over the columns (index clamped)
    for y in range(n):
        for x in range(n):
            v = True
            for d in range(-erode, erode + 1):
                yy = min(max(y + d, 0), n - 1)
                v = v and valid[yy, x]
            col[y, x] = v
    for y in range(n):
        for x in range(n):
            v = True
            for d in range(-erode, erode + 1):
                xx = min(max(x + d, 0), n - 1)
                v = v and col[y, xx]
            e[y, x] = v
    # the eroded mask padded by ``rad`` (edge), as float32
    for y in range(m):
        ys = min(max(y - rad, 0), n - 1)
        for x in range(m):
            xs = min(max(x - rad, 0), n - 1)
            ep[y, x] = 1.0 if e[ys, xs] else 0.0
    for y in range(n):
        for x in range(m):
            rows[y, x] = 0.0
    for i in range(nt):
        c = wy[i]
        for y in range(n):
            src = 2 * rad - i + y
            for x in range(m):
                rows[y, x] += c * ep[src, x]
    for y in range(n):
        for x in range(n):
            out[y, x] = 0.0
    for i in range(nt):
        c = wx[i]
        for y in range(n):
            for x in range(n):
                out[y, x] += c * rows[y, 2 * rad - i + x]
    for y in range(n):
        for x in range(n):
            out[y, x] = min(max(out[y, x], np.float32(0.0)), np.float32(1.0))


@njit(**_OPTS)
def _separable_blur(valid, erode, wy, wx, rad, out, work):
    """:func:`_mask_blur_one` of a mask that is a rectangle of usable pixels (the
    product of a row mask and a column mask: windows at the image edges), by 1-D
    erosions and blurs; returns False (nothing written) for any other mask. The
    values are those of the 2-D computation up to the rounding of one float32 product.
    ``work`` is a float32 array of at least 4 rows of ``n + 2 rad``."""
    n = out.shape[0]
    ra = work[0]
    ca = work[1]
    for i in range(n):
        ra[i] = 0.0
        ca[i] = 0.0
    for i in range(n):
        for j in range(n):
            if valid[i, j]:
                ra[i] = 1.0
                ca[j] = 1.0
    for i in range(n):
        for j in range(n):
            if valid[i, j] != (ra[i] > 0.0 and ca[j] > 0.0):
                return False
    by = work[2]
    bx = work[3]
    for a in range(2):
        src = ra if a == 0 else ca
        wt = wy if a == 0 else wx
        dst = by if a == 0 else bx
        # eroded (clamped index), padded by ``rad`` (edge), blurred
        for y in range(n):
            v = 1.0
            for d in range(-erode, erode + 1):
                v = min(v, src[min(max(y + d, 0), n - 1)])
            dst[y + rad] = v
        for y in range(n):
            acc = np.float32(0.0)
            for i in range(2 * rad + 1):
                yy = 2 * rad - i + y
                e = dst[min(max(yy, rad), rad + n - 1)]
                acc += wt[i] * np.float32(e)
            src[y] = acc  # the source is no longer needed
    for y in range(n):
        for x in range(n):
            out[y, x] = min(max(ra[y] * ca[x], np.float32(0.0)), np.float32(1.0))
    return True


@njit(**_OPTS)
def _gauss_taps(frac, sigma, rad, out):
    """Gaussian taps of :func:`_correlation.mask_weight` (float32): tap ``i`` is the
    normal density (standard deviation ``sigma``) at ``i - rad - frac``."""
    norm = 1.0 / (sigma * math.sqrt(2.0 * math.pi))
    for i in range(2 * rad + 1):
        t = (np.float64(i - rad) - frac) / sigma
        out[i] = np.float32(norm * math.exp(-0.5 * t * t))


@njit(**_OPTS)
def weighted_reference_at(rs, rv, qv, sel, by, bx, tw, erode, sigma, out, masked):
    """Reference windows of the weighted (edge-window) sub-pixel path, into zero-padded
    FFT buffers.

    Window ``t`` is ``rs[sel[t]]`` (w, w) with usable pixels ``rv[sel[t]]``; its
    secondary block is ``qv[sel[t], by[t]:by[t] + w + 2, bx[t]:bx[t] + w + 2]``. The
    pixels usable in both (block coordinates, the reference padded with usable pixels)
    give the weight :func:`_correlation.mask_weight` at zero shift (``erode``,
    ``sigma``), times the taper ``tw`` (w, w); ``out[t, 1:w + 1, 1:w + 1]`` is the window
    minus its weighted mean, times the weight (float64 sums; zeros elsewhere).
    ``masked[t]`` says whether the block has unusable pixels; where it has none the
    weight is the taper alone (as :func:`tapered_reference`).
    """
    k = sel.shape[0]
    w = rs.shape[1]
    n = w + 2
    size = out.shape[1]
    rad = int(math.ceil(4 * sigma)) + 1
    m = n + 2 * rad
    uv = np.empty((n, n), dtype=np.bool_)
    mw = np.empty((n, n), dtype=np.float32)
    col = np.empty((n, n), dtype=np.bool_)
    e = np.empty((n, n), dtype=np.bool_)
    rows = np.empty((n, m), dtype=np.float32)
    ep = np.empty((m, m), dtype=np.float32)
    taps = np.empty(2 * rad + 1, dtype=np.float32)
    _gauss_taps(0.0, sigma, rad, taps)
    wgt = np.empty((w, w))
    for t in range(k):
        q = sel[t]
        anybad = False
        for i in range(n):
            for j in range(n):
                u = qv[q, by[t] + i, bx[t] + j]
                if 1 <= i <= w and 1 <= j <= w:
                    u = u and rv[q, i - 1, j - 1]
                uv[i, j] = u
                if not u:
                    anybad = True
        masked[t] = anybad
        o = out[t]
        for i in range(size):
            for j in range(size):
                o[i, j] = 0.0
        if anybad:
            _mask_blur_one(uv, erode, taps, taps, rad, mw, col, e, rows, ep, True)
            for i in range(w):
                for j in range(w):
                    wgt[i, j] = np.float64(tw[i, j]) * np.float64(mw[i + 1, j + 1])
        else:
            for i in range(w):
                for j in range(w):
                    wgt[i, j] = tw[i, j]
        sw = 0.0
        sv = 0.0
        for i in range(w):
            for j in range(w):
                sw += wgt[i, j]
                sv += np.float64(rs[q, i, j]) * wgt[i, j]
        mean = sv / max(sw, 1e-12)
        for i in range(w):
            for j in range(w):
                o[i + 1, j + 1] = (np.float64(rs[q, i, j]) - mean) * wgt[i, j]


@njit(**_OPTS)
def weighted_blocks_at(qd, rv, qv, sel, by, bx, fy, fx, w, roll, erode, sigma, out):
    """Secondary blocks of the weighted (edge-window) sub-pixel path, into zero-padded
    FFT buffers (their first ``w + 2`` rows and columns).

    Block ``t`` is ``qd[sel[t], by[t]:by[t] + w + 2, bx[t]:bx[t] + w + 2]``; its weight is
    the separable taper moved by ``(fy[t], fx[t])`` times, where the block has pixels
    unusable in it or in the reference window ``rv[sel[t]]`` (see
    :func:`weighted_reference_at`), :func:`_correlation.mask_weight` moved by the same
    shift. ``out[t]`` is the block minus its weighted mean, times the weight (float64
    sums); a block without unusable pixels is written as by :func:`tapered_blocks_at`.
    """
    k = sel.shape[0]
    n = w + 2
    rad = int(math.ceil(4 * sigma)) + 1
    m = n + 2 * rad
    uv = np.empty((n, n), dtype=np.bool_)
    mw = np.empty((n, n), dtype=np.float32)
    col = np.empty((n, n), dtype=np.bool_)
    e = np.empty((n, n), dtype=np.bool_)
    rows = np.empty((n, m), dtype=np.float32)
    ep = np.empty((m, m), dtype=np.float32)
    wy = np.empty(2 * rad + 1, dtype=np.float32)
    wx = np.empty(2 * rad + 1, dtype=np.float32)
    ty = np.empty(n)
    tx = np.empty(n)
    for t in range(k):
        q = sel[t]
        r0 = by[t]
        c0 = bx[t]
        for i in range(n):
            ty[i] = _taper(i - 1.0 - fy[t], w, roll)
            tx[i] = _taper(i - 1.0 - fx[t], w, roll)
        anybad = False
        for i in range(n):
            for j in range(n):
                u = qv[q, r0 + i, c0 + j]
                if 1 <= i <= w and 1 <= j <= w:
                    u = u and rv[q, i - 1, j - 1]
                uv[i, j] = u
                if not u:
                    anybad = True
        o = out[t]
        if not anybad:
            _demean_taper_at(qd, q, r0, c0, ty, tx, o)
            continue
        _gauss_taps(fy[t], sigma, rad, wy)
        _gauss_taps(fx[t], sigma, rad, wx)
        _mask_blur_one(uv, erode, wy, wx, rad, mw, col, e, rows, ep, True)
        sw = 0.0
        sv = 0.0
        for i in range(n):
            for j in range(n):
                g = ty[i] * tx[j] * np.float64(mw[i, j])
                sw += g
                sv += np.float64(qd[q, r0 + i, c0 + j]) * g
        mean = sv / max(sw, 1e-12)
        for i in range(n):
            for j in range(n):
                g = ty[i] * tx[j] * np.float64(mw[i, j])
                o[i, j] = (np.float64(qd[q, r0 + i, c0 + j]) - mean) * g


@njit(**_OPTS)
def separate_regions(above, iy, ix, out):
    """Whether each boolean surface has a True cell not 8-connected to ``(iy, ix)``.

    ``above`` (K, n, n) bool, ``iy``/``ix`` (K,) the start cell (True), ``out`` (K,)
    bool. A flood fill from the start cell (the connected-component labelling of
    ``scipy.ndimage.label`` with 8-connectivity, reduced to the one question asked).
    """
    k, n, _ = above.shape
    seen = np.empty((n, n), dtype=np.bool_)
    stack = np.empty(n * n, dtype=np.int64)
    for t in range(k):
        for y in range(n):
            for x in range(n):
                seen[y, x] = False
        top = 0
        seen[iy[t], ix[t]] = True
        stack[0] = iy[t] * n + ix[t]
        top = 1
        reached = 1
        while top > 0:
            top -= 1
            y, x = divmod(stack[top], n)
            for a in range(max(y - 1, 0), min(y + 2, n)):
                for b in range(max(x - 1, 0), min(x + 2, n)):
                    if above[t, a, b] and not seen[a, b]:
                        seen[a, b] = True
                        stack[top] = a * n + b
                        top += 1
                        reached += 1
        total = 0
        for y in range(n):
            for x in range(n):
                if above[t, y, x]:
                    total += 1
        out[t] = total > reached


@njit(**_OPTS)
def _parabola(ym, y0, yp):
    """Vertex offset (clipped to [-0.5, 0.5]; 0 if not concave) and height of the parabola
    through (-1, ym), (0, y0), (1, yp): ``_correlation._parabolic`` for one point."""
    den = ym - 2.0 * y0 + yp
    d = 0.0
    if den < 0:
        d = 0.5 * (ym - yp) / den
        if math.isnan(d):
            d = 0.0
        elif math.isinf(d):
            d = 1.0 if d > 0 else -1.0
    d = min(max(d, -0.5), 0.5)
    return d, y0 - 0.25 * (ym - yp) * d


@njit(**_OPTS)
def peak_analysis(zncc, max_ratio, exclusion, min_ratio, iy, ix, ok, score, fy, fx):
    """The integer stage's decisions on ZNCC surfaces, in one pass per window.

    The same results as ``_correlation.integer_peaks`` (``iy``, ``ix``, ``ok``), then,
    where ``ok``, ``ambiguous_peaks`` (with ``max_ratio`` < 1) and ``weak_curvature``
    (``min_ratio``) turning ``ok`` False, and for the windows left ``peak_score``
    (``score``) and ``_parabolic_init`` (``fy``, ``fx``); NaN score and zero fractions
    elsewhere. ``zncc`` (K, n, n) float64 (NaN: not evaluated).
    """
    k, n, _ = zncc.shape
    above = np.empty((1, n, n), dtype=np.bool_)
    other = np.empty(1, dtype=np.bool_)
    py = np.empty(1, dtype=np.int64)
    px = np.empty(1, dtype=np.int64)
    for t in range(k):
        z = zncc[t]
        best = -np.inf
        by = 0
        bx = 0
        for a in range(n):
            for b in range(n):
                v = z[a, b]
                if math.isfinite(v) and v > best:
                    best = v
                    by = a
                    bx = b
        iy[t] = by
        ix[t] = bx
        good = math.isfinite(best) and 0 < by < n - 1 and 0 < bx < n - 1
        if good:
            good = (
                math.isfinite(z[by - 1, bx])
                and math.isfinite(z[by + 1, bx])
                and math.isfinite(z[by, bx - 1])
                and math.isfinite(z[by, bx + 1])
            )
        if good and max_ratio < 1.0:
            z1 = best
            cut = max_ratio * z1
            for a in range(n):
                for b in range(n):
                    v = z[a, b]
                    near = abs(a - by) <= exclusion and abs(b - bx) <= exclusion
                    above[0, a, b] = near or (math.isfinite(v) and v >= cut)
            py[0] = by
            px[0] = bx
            separate_regions(above, py, px, other)
            if other[0] or not z1 > 0:
                good = False
            if good:
                z0 = z[by, bx]
                hyy = z[by + 1, bx] + z[by - 1, bx] - 2 * z0
                hxx = z[by, bx + 1] + z[by, bx - 1] - 2 * z0
                hxy = 0.25 * (
                    z[by + 1, bx + 1] - z[by + 1, bx - 1] - z[by - 1, bx + 1] + z[by - 1, bx - 1]
                )
                tr = -(hyy + hxx)
                det = hyy * hxx - hxy * hxy
                lam = 0.5 * tr - math.sqrt(max(0.25 * tr * tr - det, 0.0))
                if not lam >= min_ratio * max(1.0 - z0, 1e-6):
                    good = False
        ok[t] = good
        if good:
            z0 = z[by, bx]
            dy, hy = _parabola(z[by - 1, bx], z0, z[by + 1, bx])
            dx, hx = _parabola(z[by, bx - 1], z0, z[by, bx + 1])
            score[t] = min(max(z0 + (hy - z0) + (hx - z0), 0.0), 1.0)
            fy[t] = dy
            fx[t] = dx
        else:
            score[t] = np.nan
            fy[t] = 0.0
            fx[t] = 0.0


@njit(**_OPTS)
def local_variance(image, mean, w, out):
    """Sum of squared deviations from the local mean over every ``w x w`` window.

    ``image`` (H, W), ``mean`` the value subtracted first (float64), ``out``
    (H - w + 1, W - w + 1) float64. Integral images of ``image - mean`` and of its
    square (running sums down the columns, then along the rows, in float64), in the
    order of :func:`_correlation.local_variance_map`'s numpy version, which it matches
    bit for bit without its full-size temporaries.
    """
    h, wd = image.shape
    c1 = np.zeros((h + 1, wd + 1))
    c2 = np.zeros((h + 1, wd + 1))
    for i in range(h):
        for j in range(wd):
            a = np.float64(image[i, j]) - mean
            c1[i + 1, j + 1] = c1[i, j + 1] + a
            c2[i + 1, j + 1] = c2[i, j + 1] + a * a
    for i in range(1, h + 1):
        for j in range(1, wd):
            c1[i, j + 1] += c1[i, j]
            c2[i, j + 1] += c2[i, j]
    inv = w * w
    for i in range(h - w + 1):
        for j in range(wd - w + 1):
            s1 = c1[i + w, j + w] - c1[i, j + w] - c1[i + w, j] + c1[i, j]
            s2 = c2[i + w, j + w] - c2[i, j + w] - c2[i + w, j] + c2[i, j]
            out[i, j] = max(s2 - s1 * s1 / inv, 0.0)


@njit(**_OPTS)
def rect_zncc(srq, rs, qs, y0, y1, x0, x1, min_cnt, flat, out_z, out_frac):
    """ZNCC surfaces of windows whose usable secondary pixels form a rectangle.

    ``srq`` (K, n, n) sums of ``rs * qs`` over each offset (an FFT correlation; ``qs`` is
    zero outside the rectangle), ``rs`` (K, w, w) and ``qs`` (K, P, P) the standardised
    reference windows and secondary sub-images, ``[y0, y1) x [x0, x1)`` the rectangle
    of usable pixels of each sub-image. For each offset ``(v, u)`` the pixels usable in
    both windows form the rectangle rows ``[max(y0 - v, 0), min(y1 - v, w))`` (and
    likewise for the columns) of the reference window; the sums of the values and
    squares over it come from integral images. Writes the ZNCC (NaN where the overlap
    has fewer than ``min_cnt`` pixels or either window is flat: variance below
    ``flat`` times the count) and the overlap fraction.
    """
    k, n, _ = srq.shape
    w = rs.shape[1]
    p = qs.shape[1]
    for t in range(k):
        ir = np.zeros((w + 1, w + 1))
        ir2 = np.zeros((w + 1, w + 1))
        for i in range(w):
            a1 = 0.0
            a2 = 0.0
            for j in range(w):
                x = rs[t, i, j]
                a1 += x
                a2 += x * x
                ir[i + 1, j + 1] = ir[i, j + 1] + a1
                ir2[i + 1, j + 1] = ir2[i, j + 1] + a2
        iq = np.zeros((p + 1, p + 1))
        iq2 = np.zeros((p + 1, p + 1))
        for i in range(p):
            a1 = 0.0
            a2 = 0.0
            for j in range(p):
                x = qs[t, i, j]
                a1 += x
                a2 += x * x
                iq[i + 1, j + 1] = iq[i, j + 1] + a1
                iq2[i + 1, j + 1] = iq2[i, j + 1] + a2
        for v in range(n):
            ra = min(max(y0[t] - v, 0), w)
            rb = min(max(y1[t] - v, 0), w)
            for u in range(n):
                ca = min(max(x0[t] - u, 0), w)
                cb = min(max(x1[t] - u, 0), w)
                cnt = max(rb - ra, 0) * max(cb - ca, 0)
                out_frac[t, v, u] = cnt / (w * w)
                if cnt < min_cnt or cnt == 0:
                    out_z[t, v, u] = np.nan
                    continue
                sr = ir[rb, cb] - ir[ra, cb] - ir[rb, ca] + ir[ra, ca]
                sr2 = ir2[rb, cb] - ir2[ra, cb] - ir2[rb, ca] + ir2[ra, ca]
                qa, qb, qc, qd = ra + v, rb + v, ca + u, cb + u
                sq = iq[qb, qd] - iq[qa, qd] - iq[qb, qc] + iq[qa, qc]
                sq2 = iq2[qb, qd] - iq2[qa, qd] - iq2[qb, qc] + iq2[qa, qc]
                var_r = sr2 - sr * sr / cnt
                var_q = sq2 - sq * sq / cnt
                if not (var_r > flat * cnt and var_q > flat * cnt):
                    out_z[t, v, u] = np.nan
                    continue
                z = (srq[t, v, u] - sr * sq / cnt) / math.sqrt(var_r * var_q)
                out_z[t, v, u] = min(max(z, -1.0), 1.0)


@njit(**_OPTS)
def rect_standardise(r, q, y0, y1, x0, x1, flat, out_r, out_q, flat_r, flat_q):
    """Inputs of :func:`rect_zncc`, written into zero-padded FFT buffers.

    ``r`` (K, w, w) reference windows, standardised (minus the mean, divided by the
    std; float64 sums) into ``out_r[k, :w, :w]``; ``q`` (K, P, P) secondary sub-images,
    standardised over the rectangle ``[y0, y1) x [x0, x1)`` of usable pixels and zero
    outside it, into ``out_q[k, :P, :P]``; zeros elsewhere in both (K, L, L) float32
    buffers. A flat window (std below ``flat`` times its mean absolute value, or zero)
    is written as zeros and flagged in ``flat_r``/``flat_q``. Same values as the numpy
    standardisation of ``_correlation._zncc_rect`` up to the order of the float sums.
    """
    k, w, _ = r.shape
    size = out_r.shape[1]
    for t in range(k):
        flat_r[t] = _standardise_into(r[t], 0, 0, w, True, flat, out_r[t])[1]
        o = out_q[t]
        for i in range(size):
            for j in range(size):
                o[i, j] = 0.0
        ya, yb, xa, xb = y0[t], y1[t], x0[t], x1[t]
        cnt = max((yb - ya) * (xb - xa), 1)
        sm = 0.0
        for i in range(ya, yb):
            for j in range(xa, xb):
                sm += q[t, i, j]
        mean = sm / cnt
        m32 = np.float32(mean)
        ss = 0.0
        for i in range(ya, yb):
            for j in range(xa, xb):
                d = np.float32(q[t, i, j]) - m32
                o[i, j] = d
                ss += np.float64(d) * d
        sd = math.sqrt(ss / cnt)
        fl = sd <= flat * abs(mean) or sd == 0.0
        flat_q[t] = fl
        g = np.float32(0.0) if fl else np.float32(1.0 / sd)
        for i in range(ya, yb):
            for j in range(xa, xb):
                o[i, j] *= g


@njit(**_OPTS)
def _keys(t):
    """Keys (1981) cubic convolution weights (a = -0.5) of the 4 samples around ``t`` in [0, 1)."""
    t2 = t * t
    t3 = t2 * t
    w0 = -0.5 * t3 + t2 - 0.5 * t
    w1 = 1.5 * t3 - 2.5 * t2 + 1.0
    w2 = -1.5 * t3 + 2.0 * t2 + 0.5 * t
    w3 = 0.5 * t3 - 0.5 * t2
    return w0, w1, w2, w3


@njit(**_OPTS)
def deformed_blocks(qd, by, bx, gy, gx, fy, fx, w, roll, out):
    """:func:`tapered_blocks_at` (every sub-image, in order) with the secondary sampled
    on a deformed grid.

    Block ``k`` pixel ``(i, j)`` is the secondary sub-image ``qd[k]`` at the real
    position ``(by[k] + i + gy[k, i, j], bx[k] + j + gx[k, i, j])``, interpolated by
    cubic convolution (Keys 1981; exact at integer positions, so a zero deformation
    gives exactly :func:`tapered_blocks_at`); positions are clamped to the sub-image.
    The taper and the weighted demeaning are those of :func:`tapered_blocks_at`.
    Row by row: the positions, their integer parts and the cubic weights first (loops
    that vectorise), then the 16-sample sums (the same sums in the same order as one
    loop per pixel: bit-identical).
    """
    k = qd.shape[0]
    P = qd.shape[1]
    n = w + 2
    ty = np.empty(n)
    tx = np.empty(n)
    v3 = np.empty((1, n, n))
    v = v3[0]
    ys = np.empty(n)
    xs = np.empty(n)
    yi = np.empty(n, np.int64)
    xi = np.empty(n, np.int64)
    wy = np.empty((4, n))
    wx = np.empty((4, n))
    hi = P - 2.000001
    for t in range(k):
        for i in range(n):
            ty[i] = _taper(i - 1.0 - fy[t], w, roll)
            tx[i] = _taper(i - 1.0 - fx[t], w, roll)
        for i in range(n):
            gyr = gy[t, i]
            gxr = gx[t, i]
            for j in range(n):
                y = min(max(by[t] + i + gyr[j], 1.0), hi)
                x = min(max(bx[t] + j + gxr[j], 1.0), hi)
                y0 = math.floor(y)
                x0 = math.floor(x)
                ys[j] = y - y0
                xs[j] = x - x0
                yi[j] = int(y0)
                xi[j] = int(x0)
            for j in range(n):
                wy[0, j], wy[1, j], wy[2, j], wy[3, j] = _keys(ys[j])
                wx[0, j], wx[1, j], wx[2, j], wx[3, j] = _keys(xs[j])
            vi = v[i]
            for j in range(n):
                y0 = yi[j]
                x0 = xi[j]
                b0 = wx[0, j]
                b1 = wx[1, j]
                b2 = wx[2, j]
                b3 = wx[3, j]
                acc = 0.0
                for u in range(4):
                    row = qd[t, y0 - 1 + u]
                    r = b0 * row[x0 - 1] + b1 * row[x0] + b2 * row[x0 + 1] + b3 * row[x0 + 2]
                    acc += wy[u, j] * r
                vi[j] = acc
        _demean_taper_at(v3, 0, 0, 0, ty, tx, out[t])


@njit(**_OPTS)
def window_deformations(fy, fx, ii, jj, step, w, gy, gx, my, mx):
    """Offset field interpolated to every pixel of the blocks of windows ``(ii, jj)``.

    ``fy``, ``fx`` (ny, nx) offsets on the output grid (cell ``(i, j)`` centred at
    pixel ``((w - 1) / 2 + i * step, (w - 1) / 2 + j * step)``), bilinear between
    cells, constant beyond the outer ones. Block pixel ``(a, b)`` of window ``k`` is
    reference pixel ``(ii[k] * step + a - 1, jj[k] * step + b - 1)``. Writes the
    window means (over the ``w x w`` window) into ``my``, ``mx`` and the field minus
    that mean into ``gy``, ``gx`` (K, w + 2, w + 2).
    """
    ny, nx = fy.shape
    n = w + 2
    c = (w - 1) / 2.0
    r0 = np.empty(n, np.int64)
    r1 = np.empty(n, np.int64)
    tr = np.empty(n)
    c0 = np.empty(n, np.int64)
    c1 = np.empty(n, np.int64)
    tc = np.empty(n)
    ya = np.empty(n)
    yb = np.empty(n)
    xa = np.empty(n)
    xb = np.empty(n)
    for k in range(ii.shape[0]):
        for a in range(n):
            g = (ii[k] * step + a - 1 - c) / step
            g = min(max(g, 0.0), ny - 1.0)
            i0 = min(int(math.floor(g)), max(ny - 2, 0))
            r0[a] = i0
            r1[a] = min(i0 + 1, ny - 1)
            tr[a] = g - i0
            g = (jj[k] * step + a - 1 - c) / step
            g = min(max(g, 0.0), nx - 1.0)
            j0 = min(int(math.floor(g)), max(nx - 2, 0))
            c0[a] = j0
            c1[a] = min(j0 + 1, nx - 1)
            tc[a] = g - j0
        sy = 0.0
        sx = 0.0
        for a in range(n):
            # the two grid rows interpolated along the columns, once per pair of grid
            # rows (the same for most block rows), then between the rows (the same
            # products in the same order as one formula per pixel)
            if a == 0 or r0[a] != r0[a - 1] or r1[a] != r1[a - 1]:
                for b in range(n):
                    v = tc[b]
                    ya[b] = (1 - v) * fy[r0[a], c0[b]] + v * fy[r0[a], c1[b]]
                    yb[b] = (1 - v) * fy[r1[a], c0[b]] + v * fy[r1[a], c1[b]]
                    xa[b] = (1 - v) * fx[r0[a], c0[b]] + v * fx[r0[a], c1[b]]
                    xb[b] = (1 - v) * fx[r1[a], c0[b]] + v * fx[r1[a], c1[b]]
            u = tr[a]
            for b in range(n):
                vy = (1 - u) * ya[b] + u * yb[b]
                vx = (1 - u) * xa[b] + u * xb[b]
                gy[k, a, b] = vy
                gx[k, a, b] = vx
                if 1 <= a <= w and 1 <= b <= w:
                    sy += vy
                    sx += vx
        my[k] = sy / (w * w)
        mx[k] = sx / (w * w)
        for a in range(n):
            for b in range(n):
                gy[k, a, b] -= my[k]
                gx[k, a, b] -= mx[k]


@njit(**_OPTS)
def _window_mean(img, top, left, h):
    """Mean (float64) of ``img[top:top + h, left:left + h]``: sums per column first
    (independent accumulators: a vectorisable loop), rows read as contiguous slices."""
    acc = np.zeros(h)
    for i in range(h):
        row = img[top + i, left : left + h]
        for j in range(h):
            acc[j] += row[j]
    s = 0.0
    for j in range(h):
        s += acc[j]
    return s / (h * h)


@njit(**_OPTS)
def _window_spread(img, top, left, h, mean, flat, out):
    """Std (float64) of ``img[top:top + h, left:left + h]`` about ``mean`` (deviations in
    float32, as written to ``out[:h, :h]`` unless ``out`` is None) and whether the window
    is flat (std below ``flat`` times ``|mean|``, or zero)."""
    m32 = np.float32(mean)
    acc = np.zeros(h)
    for i in range(h):
        row = img[top + i, left : left + h]
        if out is None:
            for j in range(h):
                d = np.float32(row[j]) - m32
                acc[j] += np.float64(d) * d
        else:
            o = out[i]
            for j in range(h):
                d = np.float32(row[j]) - m32
                o[j] = d
                acc[j] += np.float64(d) * d
    ss = 0.0
    for j in range(h):
        ss += acc[j]
    sd = math.sqrt(ss / (h * h))
    return sd, sd <= flat * abs(mean) or sd == 0.0


@njit(**_OPTS)
def _standardise_into(img, top, left, h, scale, flat, out):
    """``img[top:top + h, left:left + h]`` minus its mean (float32, mean in float64) into
    ``out[:h, :h]``, times 1 / std if ``scale`` (0 if flat), zeros elsewhere in ``out``.
    Returns the std (float64) and whether the window is flat (std below ``flat`` times
    its mean absolute value, or zero): the conventions of ``_correlation._standardise``
    (``scale``) and ``_correlation._demean`` (not ``scale``)."""
    mean = _window_mean(img, top, left, h)
    sd, is_flat = _window_spread(img, top, left, h, mean, flat, out)
    out[:h, h:] = 0.0
    out[h:, :] = 0.0
    if scale:
        g = np.float32(0.0) if is_flat else np.float32(1.0 / sd)
        for i in range(h):
            for j in range(h):
                out[i, j] *= g
    return sd, is_flat


@njit(**_OPTS)
def _moments(img, top, left, h, flat):
    """Std and flatness of ``img[top:top + h, left:left + h]``, computed as
    :func:`_standardise_into` does (same values), without writing the window."""
    return _window_spread(img, top, left, h, _window_mean(img, top, left, h), flat, None)


@njit(**_OPTS)
def gather_references(
    ref, sec, rtop, rleft, qtop, qleft, w, p, flat, out_r, sd_r, flat_r, sd_q, flat_q
):
    """:func:`gather_windows` without the copies of the secondary sub-images: the
    standardised reference windows in ``out_r`` (K, L, L) and the stds and flatness of
    both (same values); the sub-images are read from ``sec`` where needed."""
    for t in range(rtop.shape[0]):
        sd_r[t], flat_r[t] = _standardise_into(ref, rtop[t], rleft[t], w, True, flat, out_r[t])
        sd_q[t], flat_q[t] = _moments(sec, qtop[t], qleft[t], p, flat)


@njit(**_OPTS)
def gather_windows(
    ref, sec, rtop, rleft, qtop, qleft, w, p, flat, out_r, out_q, sd_r, flat_r, sd_q, flat_q
):
    """Reference windows and secondary sub-images of a batch, gathered from the images
    straight into zero-padded FFT buffers (the integer stage of the clean windows).

    ``ref``/``sec`` (H, W) images; window ``k`` is ``ref[rtop[k]:rtop[k] + w,
    rleft[k]:rleft[k] + w]``, its sub-image ``sec[qtop[k]:qtop[k] + p, qleft[k]:qleft[k] + p]``.
    ``out_r`` (K, L, L) float32: the reference window standardised (minus its mean,
    divided by its std; zeros if flat) in its top-left ``w x w`` corner, zeros
    elsewhere; ``out_q`` (K, L, L) float32: the sub-image minus its mean in its top-left
    ``p x p`` corner, zeros elsewhere. ``sd_r``/``sd_q`` (K,) the stds, ``flat_r``/
    ``flat_q`` (K,) bool whether flat (std below ``flat`` times the mean absolute value,
    or zero). Same values as ``_correlation._standardise`` and ``_demean`` of the
    gathered windows, up to the order of the float sums.
    """
    for t in range(rtop.shape[0]):
        sd_r[t], flat_r[t] = _standardise_into(ref, rtop[t], rleft[t], w, True, flat, out_r[t])
        sd_q[t], flat_q[t] = _standardise_into(sec, qtop[t], qleft[t], p, False, flat, out_q[t])


@njit(**_OPTS)
def zncc_normalise(num, lv, sd_q, bad, w, flat, out):
    """ZNCC surfaces from the correlation of standardised reference windows with
    demeaned secondary sub-images: ``num / sqrt(w^2 lv)`` clipped to [-1, 1], NaN where
    the secondary window is flat (``lv <= flat w^2 sd_q^2``) or ``bad`` (a flat window).

    ``num`` (K, n, n) correlations, ``lv`` (K, n, n) float64 local variances of the
    secondary windows (sums of squared deviations), ``sd_q`` (K,) std of the
    sub-images, ``bad`` (K,) bool; ``out`` (K, n, n) float64.
    """
    k, n, _ = out.shape
    ww = np.float64(w * w)
    for t in range(k):
        lim = flat * ww * (sd_q[t] * sd_q[t])
        for v in range(n):
            for u in range(n):
                lvv = lv[t, v, u]
                if bad[t] or not lvv > lim:
                    out[t, v, u] = np.nan
                else:
                    z = np.float64(num[t, v, u]) / math.sqrt(ww * lvv)
                    out[t, v, u] = min(max(z, -1.0), 1.0)


@njit(**_OPTS)
def zncc_normalise_at(num, lvm, lr, lc, sd_q, bad, w, flat, out):
    """:func:`zncc_normalise` with the local variances read from a map: window ``k``'s
    at offset ``(v, u)`` is ``lvm[lr[k] + v, lc[k] + u]`` (no gathered copy)."""
    ww = np.float64(w * w)
    for t in range(out.shape[0]):
        _normalise_one(num[t], lvm, lr[t], lc[t], sd_q[t], bad[t], ww, flat, out[t])


@njit(**_OPTS)
def _normalise_one(num, lvm, r0, c0, sd_q, bad, ww, flat, out):
    """One window of :func:`zncc_normalise_at`: ``out[v, u] = num[v, u] / sqrt(ww *
    lvm[r0 + v, c0 + u])`` clipped to [-1, 1], NaN where ``bad`` or where the local
    variance is not above ``flat * ww * sd_q**2``."""
    n = out.shape[0]
    lim = flat * ww * (sd_q * sd_q)
    for v in range(n):
        for u in range(n):
            lvv = lvm[r0 + v, c0 + u]
            if bad or not lvv > lim:
                out[v, u] = np.nan
            else:
                z = np.float64(num[v, u]) / math.sqrt(ww * lvv)
                out[v, u] = min(max(z, -1.0), 1.0)


@njit(**_OPTS)
def window_stds(image, tops, lefts, w, out):
    """Standard deviation (float64, two passes) of the ``w x w`` windows of ``image`` whose
    top-left pixels are ``(tops[k], lefts[k])``, into ``out[k]`` (the fully usable case
    of ``_correlation.window_std``, without gathering the windows)."""
    n = w * w
    acc = np.empty(w)
    for t in range(tops.shape[0]):
        # sums per column first (independent accumulators: a vectorisable loop)
        acc[:] = 0.0
        for i in range(w):
            row = image[tops[t] + i, lefts[t] : lefts[t] + w]
            for j in range(w):
                acc[j] += row[j]
        s = 0.0
        for j in range(w):
            s += acc[j]
        mean = s / n
        acc[:] = 0.0
        for i in range(w):
            row = image[tops[t] + i, lefts[t] : lefts[t] + w]
            for j in range(w):
                d = row[j] - mean
                acc[j] += d * d
        ss = 0.0
        for j in range(w):
            ss += acc[j]
        out[t] = math.sqrt(ss / n)


@njit(**_OPTS)
def nan_median_filter(f, h, out):
    """Median of the finite values of ``f`` (float64, (ny, nx)) over the ``2 h + 1``
    square around each cell (cells outside ``f`` ignored), into ``out``; NaN where there
    is none. The median of an even count is the mean of the two middle values, as
    ``numpy.nanmedian`` (which it equals)."""
    ny, nx = f.shape
    s = np.empty((2 * h + 1) ** 2)
    for i in range(ny):
        for j in range(nx):
            # the finite values kept sorted as they come (insertion: a few values, no
            # allocation per cell)
            c = 0
            for a in range(max(i - h, 0), min(i + h + 1, ny)):
                for b in range(max(j - h, 0), min(j + h + 1, nx)):
                    v = f[a, b]
                    if math.isfinite(v):
                        e = c
                        while e > 0 and s[e - 1] > v:
                            s[e] = s[e - 1]
                            e -= 1
                        s[e] = v
                        c += 1
            if c == 0:
                out[i, j] = np.nan
                continue
            if c % 2 == 1:
                out[i, j] = s[c // 2]
            else:
                out[i, j] = (s[c // 2 - 1] + s[c // 2]) / 2.0


@njit(**_OPTS)
def _demean_into(img, y, x, h, out):
    """``img[y:y + h, x:x + h]`` minus its mean into ``out[:h, :h]`` (float32; the mean
    summed in float64 per column first, a vectorisable loop), zeros elsewhere in
    ``out``. Returns the mean."""
    mean = _window_mean(img, y, x, h)
    m32 = np.float32(mean)
    for i in range(h):
        row = img[y + i, x : x + h]
        o = out[i]
        for j in range(h):
            o[j] = np.float32(row[j]) - m32
        o[h:] = 0.0
    out[h:, :] = 0.0
    return mean


@njit(**_OPTS)
def lattice_blocks(ref, sec, top, left, qdy, qdx, step, nu, nv, b, p, out_r, out_q, mean_r):
    """Demeaned reference blocks and secondary regions on a lattice, in zero-padded FFT
    buffers (shared-block integer stage, ``_correlation._zncc_shared``).

    Lattice point ``t = iu * nv + iv`` (``iu < nu``, ``iv < nv``) has its reference block
    ``ref[y:y + b, x:x + b]`` at ``y = top + iu * step``, ``x = left + iv * step``, and its
    secondary region ``sec[y + qdy:y + qdy + p, x + qdx:x + qdx + p]``. ``out_r`` (T, L, L)
    float32: the block minus its mean in its top-left ``b x b`` corner, zeros elsewhere;
    ``mean_r`` (T,) float64 that mean; ``out_q`` (T, L, L) float32: the region minus its
    mean in its top-left ``p x p`` corner, zeros elsewhere (means summed in float64,
    differences in float32, as in :func:`gather_windows`). The caller keeps every block
    and region inside the images.
    """
    for iu in range(nu):
        for iv in range(nv):
            t = iu * nv + iv
            y = top + iu * step
            x = left + iv * step
            mean_r[t] = _demean_into(ref, y, x, b, out_r[t])
            _demean_into(sec, y + qdy, x + qdx, p, out_q[t])


@njit(**_OPTS)
def lattice_sums(spec, iu, iv, nv, m, nb, out):
    """``out[k] = sum over a, c < nb of spec[(iu[k] + a m) * nv + iv[k] + c m]``: the
    cross-power spectrum of window ``k`` from those of its ``nb x nb`` blocks (the
    lattice of :func:`lattice_blocks`, blocks ``m`` lattice steps apart)."""
    k = iu.shape[0]
    _, L, H = spec.shape
    for t in range(k):
        o = out[t]
        for a in range(L):
            for c in range(H):
                o[a, c] = 0.0
        for ba in range(nb):
            for bc in range(nb):
                src = spec[(iu[t] + ba * m) * nv + iv[t] + bc * m]
                for a in range(L):
                    for c in range(H):
                        o[a, c] += src[a, c]


@njit(**_OPTS)
def box_sum_map(image, mean, b, out):
    """Sums of ``image - mean`` over every ``b x b`` box (integral image in float64);
    ``out`` (H - b + 1, W - b + 1), element ``[y, x]`` for the box at ``image[y, x]``."""
    h, wd = image.shape
    c1 = np.zeros((h + 1, wd + 1))
    for i in range(h):
        for j in range(wd):
            c1[i + 1, j + 1] = c1[i, j + 1] + (np.float64(image[i, j]) - mean)
    for i in range(1, h + 1):
        for j in range(1, wd):
            c1[i, j + 1] += c1[i, j]
    for i in range(h - b + 1):
        for j in range(wd - b + 1):
            out[i, j] = c1[i + b, j + b] - c1[i, j + b] - c1[i + b, j] + c1[i, j]


@njit(**_OPTS)
def block_mean_correction(
    num, bsum, mean_r, iu, iv, nv, m, nb, b, lr, lc, sd_r, flat_r, lvm, sd_q, bad, w, flat, out
):
    """ZNCC surfaces of the standardised reference windows from the sum over their blocks
    of the correlations of the per-block demeaned blocks (``num``, (K, n, n)).

    The correlation of window ``k`` with its secondary sub-image is ``(num[k, y, x] +
    sum_blocks (mean_blk - mean_win) * B_blk(y, x)) / sd_r[k]`` (0 where ``flat_r[k]``),
    with ``mean_blk`` from ``mean_r`` (indexed as in :func:`lattice_sums`), ``mean_win``
    their average and ``B_blk(y, x)`` the sum of the secondary over the block moved by the
    offset ``(y, x)``: ``bsum[lr[k] + a b + y, lc[k] + c b + x]`` for block ``(a, c)``
    (:func:`box_sum_map`). It is then normalised as :func:`zncc_normalise_at` does
    (same arguments ``lvm``, ``lr``, ``lc``, ``sd_q``, ``bad``, ``w``, ``flat``; same
    values) into ``out`` (K, n, n) float64.
    """
    k, n, _ = num.shape
    cm = np.empty(nb * nb)
    o = np.empty((n, n))
    ww = np.float64(w * w)
    for t in range(k):
        if flat_r[t]:
            for y in range(n):
                for x in range(n):
                    o[y, x] = 0.0
        else:
            mw = 0.0
            for ba in range(nb):
                for bc in range(nb):
                    v = mean_r[(iu[t] + ba * m) * nv + iv[t] + bc * m]
                    cm[ba * nb + bc] = v
                    mw += v
            mw /= nb * nb
            g = 1.0 / sd_r[t]
            for y in range(n):
                for x in range(n):
                    o[y, x] = np.float64(num[t, y, x])
            for ba in range(nb):
                for bc in range(nb):
                    d = cm[ba * nb + bc] - mw
                    r0 = lr[t] + ba * b
                    c0 = lc[t] + bc * b
                    for y in range(n):
                        for x in range(n):
                            o[y, x] += d * bsum[r0 + y, c0 + x]
            for y in range(n):
                for x in range(n):
                    o[y, x] *= g
        _normalise_one(o, lvm, lr[t], lc[t], sd_q[t], bad[t], ww, flat, out[t])


@njit(**_OPTS)
def windows_usable_at(valid, tops, lefts, size, out):
    """``out[k] = valid[tops[k]:tops[k] + size, lefts[k]:lefts[k] + size].all()`` for
    windows of an image (no gathered copies; the caller keeps them inside it)."""
    for t in range(tops.shape[0]):
        good = True
        for i in range(size):
            row = valid[tops[t] + i, lefts[t] : lefts[t] + size]
            for j in range(size):
                if not row[j]:
                    good = False
                    break
            if not good:
                break
        out[t] = good


@njit(**_OPTS)
def gather_at(image, tops, lefts, size, out):
    """``out[k] = image[tops[k]:tops[k] + size, lefts[k]:lefts[k] + size]`` (the same
    values as numpy's fancy indexing of a sliding-window view, without the GIL)."""
    for t in range(tops.shape[0]):
        for i in range(size):
            row = image[tops[t] + i, lefts[t] : lefts[t] + size]
            o = out[t, i]
            for j in range(size):
                o[j] = row[j]


@njit(**_OPTS)
def boxes_usable(valid, y0, y1, x0, x1, out):
    """``out[k] = valid[k, y0[k]:y1[k], x0[k]:x1[k]].all()`` (True for an empty box)."""
    for t in range(valid.shape[0]):
        good = True
        for i in range(y0[t], y1[t]):
            for j in range(x0[t], x1[t]):
                if not valid[t, i, j]:
                    good = False
                    break
            if not good:
                break
        out[t] = good
