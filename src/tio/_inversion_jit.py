"""Compiled (numba) kernel of the robust inversion of one component.

Same mathematics, same results as the numpy implementation in
:mod:`tio._inversion` (``_invert_component_numpy``), but each pixel's whole
robust inversion (normal equations, banded Cholesky factorisation, solution,
re-weighting, ties of disconnected networks, diagonal of the inverse) runs in
one compiled call per block, without temporary ``(P, M)`` arrays.
:func:`invert_component` solves :data:`_VEC` pixels at once, the pixels
innermost in its work arrays (the pair structure is the same at every pixel,
so every step is a loop over the pixels that the compiler vectorises); the
few pixels whose network a pass leaves disconnected are done again one by
one by :func:`_invert_scalar`, which also handles the ties. The kernel
releases the GIL: :func:`tio.inversion.invert` runs blocks on a pool of
threads, one block per thread. The numpy version is used when numba is not
installed; ``tests/test_inversion.py`` checks that both agree.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_OPTS = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")


@njit(**_OPTS)
def _chol(A, b, k, rtol):
    """In-place banded Cholesky of one matrix, band ``A[j, o] = A_full[j+o, j]``; False if singular.

    The diagonal of the factor is stored as its inverse (``A[j, 0] = 1 / L[j, j]``).
    """
    floor = 0.0
    for j in range(k):
        if A[j, 0] > floor:
            floor = A[j, 0]
    floor *= rtol
    for j in range(k):
        piv = A[j, 0]
        if not piv > floor:
            return False
        inv = 1.0 / np.sqrt(piv)
        A[j, 0] = inv
        nb = b if j + b < k else k - 1 - j
        for o in range(1, nb + 1):
            A[j, o] *= inv
        for o1 in range(1, nb + 1):
            c1 = A[j, o1]
            for o2 in range(o1, nb + 1):
                A[j + o1, o2 - o1] -= c1 * A[j, o2]
    return True


@njit(**_OPTS)
def _band_solve(L, b, k, rhs, x):
    for j in range(k):
        x[j] = rhs[j]
    for j in range(k):
        xj = x[j] * L[j, 0]
        x[j] = xj
        nb = b if j + b < k else k - 1 - j
        for o in range(1, nb + 1):
            x[j + o] -= L[j, o] * xj
    for j in range(k - 1, -1, -1):
        nb = b if j + b < k else k - 1 - j
        s = x[j]
        for o in range(1, nb + 1):
            s -= L[j, o] * x[j + o]
        x[j] = s * L[j, 0]


@njit(**_OPTS)
def _inv_diag(L, b, k, Z, out):
    """Takahashi: band of the inverse from the factor; its diagonal into ``out``.

    ``Z`` (k, b+1) holds the band of the inverse in the storage of ``L``
    (``Z[j, o] = inverse[j+o, j]``): only entries within the band are needed.
    """
    for j in range(k - 1, -1, -1):
        il = L[j, 0]
        nb = b if j + b < k else k - 1 - j
        s_diag = 0.0
        for ii in range(nb):  # inverse[j+1+ii, j]
            c = j + 1 + ii
            s = 0.0
            for kk in range(nb):
                r = j + 1 + kk
                if r >= c:
                    s += L[j, 1 + kk] * Z[c, r - c]
                else:
                    s += L[j, 1 + kk] * Z[r, c - r]
            z = -s * il
            Z[j, 1 + ii] = z
            s_diag += L[j, 1 + ii] * z
        Z[j, 0] = (il - s_diag) * il
        out[j] = Z[j, 0]


@njit(**_OPTS)
def _find(parent, a):
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


@njit(**_OPTS)
def _labels(w, i1, i2, n, labels):
    """Label of each date = its component's earliest date (edges: pairs with w > 0)."""
    parent = np.arange(n)
    for p in range(i1.size):
        if w[p] > 0:
            ra = _find(parent, i1[p])
            rb = _find(parent, i2[p])
            if ra != rb:
                if ra < rb:
                    parent[rb] = ra
                else:
                    parent[ra] = rb
    for j in range(n):
        labels[j] = _find(parent, j)


@njit(**_OPTS)
def _augment(A0, rhs, b, k, Rs, g, tie, A2, rhs2):
    """NSBAS's smoothed-series system of one pixel (see ``tio._inversion.augment``).

    ``A0`` (k, b+1) data band (transposed storage), ``rhs`` (k,); fills ``A2``
    (2k+1, 2b+1) and ``rhs2`` (2k+1,); unknowns ``s_0, u_1, s_1, ..., s_k``.
    """
    n2 = 2 * k + 1
    for j in range(n2):
        rhs2[j] = 0.0
        for o in range(2 * b + 1):
            A2[j, o] = 0.0
    for j in range(k):
        rhs2[2 * j + 1] = rhs[j]
        for o in range(b + 1):
            A2[2 * j + 1, 2 * o] = A0[j, o]
    for j in range(n2):
        A2[j, 0] += tie
    for j in range(k):
        A2[2 * j + 1, 1] -= tie
    for i in range(k + 1):
        for o in range(3):
            if i + o <= k and 2 * o <= 2 * b:
                A2[2 * i, 2 * o] += g * Rs[i, o]


#: Floor of ``1 - h`` (``h`` the leverage of a pair) in the deletion residuals.
MIN_FREEDOM = 1e-9

#: Pixels gathered together from the pixel-last arrays (one page per pair row
#: serves the whole tile instead of one pixel).
_TILE = 64


@njit(**_OPTS)
def _invert_scalar(
    d,
    valid,
    w0,
    i1,
    i2,
    n,
    b,
    R,
    Rs,
    n_iter,
    scale,
    gross,
    gamma2,
    rtol,
    limit,
    anchor,
    tie,
    lam,
    lam_final,
    wprior,
    stop,
):
    """Robust inversion of one component for every pixel of a block.

    ``lam`` (>= 0) times ``R`` (the band of ``S^T S``, transposed storage) is
    added to the normal matrix of the re-weighting passes, and of the final
    solution too if ``lam_final`` (temporal regularisation; see
    ``tio._inversion._invert_component_numpy``).

    Arrays are pixel-last: ``d``, ``valid``, ``w0`` (P, M) (``w0`` may be
    (P, 1): one weight per pair). Returns ``u``
    (N, M), ``var`` (N, M) (unit-variance diagonal of the covariance, NaN
    outside the largest sub-network when ``gamma2 == 0``), ``s0sq`` (M),
    ``r`` (P, M) (NaN where not valid), ``outlier`` (P, M), ``smoothed``
    (N, M), ``ok`` (M).

    ``wprior`` (P, M) or (P, 1): the a priori weights that set ``s0sq`` of a
    pixel left without degrees of freedom (``1 / mean(wprior)`` over its used
    pairs); pass ``w0`` itself, or the a priori weights when ``w0`` holds the
    weights of a last re-weighting pass (``n_iter == 0``: final solve only).
    With ``stop`` (and ``n_iter > 0``), each pixel stops in its last
    re-weighting pass, before the gross-outlier decision: ``r`` then holds the
    residuals that decision reads (deletion residuals in regularised passes),
    ``ok`` whether the pixel got there, and nothing else is filled.
    """
    p_count, m = d.shape
    k = n - 1
    u_out = np.zeros((n, m))
    var_out = np.zeros((n, m))
    s0_out = np.zeros(m)
    r_out = np.empty((p_count, m))
    out_flag = np.zeros((p_count, m), dtype=np.bool_)
    sm_out = np.zeros((n, m), dtype=np.bool_)
    ok_out = np.zeros(m, dtype=np.bool_)
    T = _TILE
    wcol = w0.shape[1] != 1  # else one a priori weight per pair
    pcol = wprior.shape[1] != 1
    tv = np.zeros((T, p_count), dtype=np.bool_)
    tdz = np.zeros((T, p_count))
    twz = np.zeros((T, p_count))
    tr = np.zeros((T, p_count))
    tflag = np.zeros((T, p_count), dtype=np.bool_)
    w = np.empty(p_count)
    A = np.zeros((k, b + 1))
    A0 = np.zeros((k, b + 1))
    rhs = np.zeros(k)
    x = np.zeros(k)
    Z = np.zeros((k, b + 1))
    diag = np.zeros(k)
    n2 = 2 * k + 1
    b2 = 2 * b
    A2 = np.zeros((n2, b2 + 1))
    rhs2 = np.zeros(n2)
    x2 = np.zeros(n2)
    Z2 = np.zeros((n2, b2 + 1))
    diag2 = np.zeros(n2)
    labels = np.zeros(n, dtype=np.int64)
    sizes = np.zeros(n, dtype=np.int64)
    for t0 in range(0, m, T):
        nt = min(T, m - t0)
        for p in range(p_count):
            for q in range(nt):
                v = valid[p, t0 + q]
                tv[q, p] = v
                if v:
                    tdz[q, p] = d[p, t0 + q]
                    twz[q, p] = w0[p, t0 + q] if wcol else w0[p, 0]
                else:
                    tdz[q, p] = 0.0
                    twz[q, p] = 0.0
                tflag[q, p] = False
                tr[q, p] = np.nan
        for q in range(nt):
            px = t0 + q
            dz = tdz[q]
            wz = twz[q]
            vm = tv[q]
            r = tr[q]
            flag = tflag[q]
            for p in range(p_count):
                w[p] = wz[p]
            ok = True
            disc = False
            norm = 1.0
            n_used = 0
            reg = False
            n_comp = 1
            for it in range(n_iter + 1):
                reg = lam > 0 and (it < n_iter or lam_final)
                if reg and it == n_iter:
                    # final regularised solution: the sub-networks of the used
                    # pairs (flagged; with gamma2 == 0 they stay NaN, unregularised)
                    _labels(w, i1, i2, n, labels)
                    n_comp = 0
                    for j in range(n):
                        if labels[j] == j:
                            n_comp += 1
                    if n_comp > 1 and gamma2 <= 0:
                        reg = False
                su = 0.0
                n_used = 0
                for p in range(p_count):
                    if w[p] > 0:
                        su += w[p]
                        n_used += 1
                norm = n_used / su if su > 0 else 1.0
                for o in range(b + 1):
                    for j in range(k):
                        A[j, o] = 0.0
                for j in range(k):
                    rhs[j] = 0.0
                for p in range(p_count):
                    wp = w[p] * norm
                    if wp > 0:
                        a = i1[p] - 1
                        c = i2[p] - 1
                        A[c, 0] += wp
                        rhs[c] += wp * dz[p]
                        if a >= 0:
                            A[a, 0] += wp
                            A[a, c - a] -= wp
                            rhs[a] -= wp * dz[p]
                if reg:
                    for j in range(k):
                        for o in range(b + 1):
                            A[j, o] += lam * R[j, o]
                for o in range(b + 1):
                    for j in range(k):
                        A0[j, o] = A[j, o]
                ok = _chol(A, b, k, rtol)
                disc = not ok
                if disc:
                    _labels(w, i1, i2, n, labels)
                    if gamma2 > 0:
                        _augment(A0, rhs, b, k, Rs, limit / tie * gamma2, limit, A2, rhs2)
                        ok = _chol(A2, b2, n2, rtol)
                        if ok:
                            _band_solve(A2, b2, n2, rhs2, x2)
                            for j in range(k):
                                x[j] = x2[2 * j + 1]
                    else:
                        for o in range(b + 1):
                            for j in range(k):
                                A[j, o] = A0[j, o]
                        for j in range(1, n):
                            if labels[j] == j:
                                A[j - 1, 0] += anchor
                        ok = _chol(A, b, k, rtol)
                        if ok:
                            _band_solve(A, b, k, rhs, x)
                else:
                    _band_solve(A, b, k, rhs, x)
                if not ok:
                    break
                for p in range(p_count):
                    up2 = x[i2[p] - 1]
                    up1 = x[i1[p] - 1] if i1[p] > 0 else 0.0
                    r[p] = dz[p] - (up2 - up1)
                if it < n_iter:
                    lev = reg and not disc
                    if lev:  # deletion residuals: band of the inverse
                        _inv_diag(A, b, k, Z, diag)
                    halt = stop and it == n_iter - 1
                    for p in range(p_count):
                        if vm[p]:
                            rr = r[p]
                            if lev and w[p] > 0:
                                a = i1[p] - 1
                                c = i2[p] - 1
                                q_ = Z[c, 0]
                                if a >= 0:
                                    q_ += Z[a, 0] - 2.0 * Z[a, c - a]
                                rr /= max(1.0 - w[p] * norm * q_, MIN_FREEDOM)
                            if halt:
                                r[p] = rr
                            elif abs(rr) > gross and it == n_iter - 1:
                                w[p] = 0.0
                                flag[p] = True
                            else:
                                w[p] = wz[p] / (scale * scale + rr * rr)
                                flag[p] = False
                        elif halt:
                            r[p] = np.nan
                    if halt:
                        break
            if not ok:
                for p in range(p_count):
                    r[p] = np.nan
                continue
            if stop and n_iter > 0:
                ok_out[px] = True
                continue
            # covariance (unit variance) and the sub-network structure
            largest = 0
            if not reg:
                n_comp = 1
            if disc or (reg and n_comp > 1):
                n_comp = 0
                for j in range(n):
                    sizes[j] = 0
                for j in range(n):
                    sizes[labels[j]] += 1
                    if labels[j] == j:
                        n_comp += 1
                best = -1
                for j in range(n):
                    if sizes[j] > best:
                        best = sizes[j]
                        largest = j
                for j in range(n):
                    sm_out[j, px] = labels[j] != largest
                if disc and gamma2 > 0:
                    _augment(A0, rhs, b, k, Rs, gamma2, tie, A2, rhs2)
                    if not _chol(A2, b2, n2, rtol):
                        for p in range(p_count):
                            r[p] = np.nan
                        continue
                    _inv_diag(A2, b2, n2, Z2, diag2)
                    for j in range(k):
                        diag[j] = diag2[2 * j + 1]
                else:
                    _inv_diag(A, b, k, Z, diag)
            else:
                _inv_diag(A, b, k, Z, diag)
            u_out[0, px] = 0.0
            var_out[0, px] = 0.0
            for j in range(k):
                u_out[j + 1, px] = x[j]
                var_out[j + 1, px] = diag[j]
            if disc and gamma2 <= 0:
                ref = u_out[largest, px]
                for j in range(n):
                    if labels[j] == largest:
                        u_out[j, px] -= ref
                    else:
                        u_out[j, px] = np.nan
                        var_out[j, px] = np.nan
                var_out[largest, px] = 0.0
            # a posteriori variance of unit weight
            wrss = 0.0
            sw0 = 0.0
            for p in range(p_count):
                if w[p] > 0:
                    wrss += w[p] * norm * r[p] * r[p]
                    sw0 += wprior[p, px] if pcol else wprior[p, 0]
                if not vm[p]:
                    r[p] = np.nan
            dof = n_used - (n - n_comp)
            if dof > 0:
                s0_out[px] = wrss / dof
            else:
                mean_w0 = sw0 / max(n_used, 1)
                s0_out[px] = 1.0 / mean_w0 if mean_w0 > 0 else 1.0
            ok_out[px] = True
        for p in range(p_count):
            for q in range(nt):
                r_out[p, t0 + q] = tr[q, p]
                out_flag[p, t0 + q] = tflag[q, p]
    return u_out, var_out, s0_out, r_out, out_flag, sm_out, ok_out


#: Pixels solved together by :func:`invert_component` (innermost dimension of
#: its work arrays: each operation runs on a vector of pixels).
_VEC = 32


@njit(**_OPTS)
def _chol_v(A, b, k, rtol, nt, fail, floor):
    """:func:`_chol` of ``nt`` matrices at once, ``A`` (k, b+1, T); ``fail[q]`` if singular."""
    for q in range(nt):
        floor[q] = 0.0
    for j in range(k):
        for q in range(nt):
            v = A[j, 0, q]
            floor[q] = v if v > floor[q] else floor[q]
    for q in range(nt):
        floor[q] *= rtol
    for j in range(k):
        nb = b if j + b < k else k - 1 - j
        for q in range(nt):
            piv = A[j, 0, q]
            bad = not piv > floor[q]
            fail[q] |= bad
            A[j, 0, q] = 1.0 / np.sqrt(1.0 if bad else piv)
        for o in range(1, nb + 1):
            for q in range(nt):
                A[j, o, q] *= A[j, 0, q]
        for o1 in range(1, nb + 1):
            for o2 in range(o1, nb + 1):
                for q in range(nt):
                    A[j + o1, o2 - o1, q] -= A[j, o1, q] * A[j, o2, q]


@njit(**_OPTS)
def _band_solve_v(L, b, k, rhs, x, nt):
    """:func:`_band_solve` of ``nt`` systems at once (pixels last)."""
    for j in range(k):
        for q in range(nt):
            x[j, q] = rhs[j, q]
    for j in range(k):
        nb = b if j + b < k else k - 1 - j
        for q in range(nt):
            x[j, q] *= L[j, 0, q]
        for o in range(1, nb + 1):
            for q in range(nt):
                x[j + o, q] -= L[j, o, q] * x[j, q]
    for j in range(k - 1, -1, -1):
        nb = b if j + b < k else k - 1 - j
        for o in range(1, nb + 1):
            for q in range(nt):
                x[j, q] -= L[j, o, q] * x[j + o, q]
        for q in range(nt):
            x[j, q] *= L[j, 0, q]


@njit(**_OPTS)
def _inv_band_v(L, b, k, Z, nt, s, sd):
    """:func:`_inv_diag` of ``nt`` factors at once: band of the inverse into ``Z``."""
    for j in range(k - 1, -1, -1):
        nb = b if j + b < k else k - 1 - j
        for q in range(nt):
            sd[q] = 0.0
        for ii in range(nb):
            c = j + 1 + ii
            for q in range(nt):
                s[q] = 0.0
            for kk in range(nb):
                r = j + 1 + kk
                if r >= c:
                    zr = c
                    zo = r - c
                else:
                    zr = r
                    zo = c - r
                for q in range(nt):
                    s[q] += L[j, 1 + kk, q] * Z[zr, zo, q]
            for q in range(nt):
                z = -s[q] * L[j, 0, q]
                Z[j, 1 + ii, q] = z
                sd[q] += L[j, 1 + ii, q] * z
        for q in range(nt):
            il = L[j, 0, q]
            Z[j, 0, q] = (il - sd[q]) * il


@njit(**_OPTS)
def invert_component(
    d,
    d2,
    valid,
    w0,
    w02,
    i1,
    i2,
    n,
    b,
    R,
    Rs,
    n_iter,
    scale,
    gross,
    gamma2,
    rtol,
    limit,
    anchor,
    tie,
    lam,
    lam_final,
    joint,
):
    """Robust inversion of one component (or both) for every pixel of a block.

    Same arguments, results and arithmetic as :func:`_invert_scalar`, on
    :data:`_VEC` columns at once (each operation a loop over the columns,
    which the compiler vectorises).

    ``joint``: both components, ``d`` and ``w0`` EW, ``d2`` and ``w02`` NS
    (else ``d2`` and ``w02`` are not read). The results then have ``2 M``
    columns, ``[EW | NS]``; a vector holds EW and NS of :data:`_VEC` / 2
    pixels, the re-weighting reads the larger of a pair's two residuals, and
    in the last re-weighting pass a pair whose residual exceeds ``gross`` in
    either component is rejected in both.

    Columns that a pass leaves disconnected (singular normal matrix), or whose
    final regularised solution ties sub-networks, are done again by
    :func:`_invert_scalar`: from the start if it happened in a re-weighting
    pass (with ``joint``, both components of the pixel: the re-weighting
    passes one by one, the joint decision here, then the final solve), the
    final solve only, with the weights of the vector's last pass, if it
    happened there.
    """
    p_count, m_pix = d.shape
    half = m_pix if joint else 0
    m = 2 * m_pix if joint else m_pix
    k = n - 1
    u_out = np.zeros((n, m))
    var_out = np.zeros((n, m))
    s0_out = np.zeros(m)
    r_out = np.empty((p_count, m))
    out_flag = np.zeros((p_count, m), dtype=np.bool_)
    sm_out = np.zeros((n, m), dtype=np.bool_)
    ok_out = np.zeros(m, dtype=np.bool_)
    T = _VEC
    step = T // 2 if joint else T
    wcol = w0.shape[1] != 1
    wcol2 = w02.shape[1] != 1
    dz = np.zeros((p_count, T))
    wz = np.zeros((p_count, T))
    vm = np.zeros((p_count, T), dtype=np.bool_)
    w = np.zeros((p_count, T))
    r = np.zeros((p_count, T))
    flag = np.zeros((p_count, T), dtype=np.bool_)
    A = np.zeros((k, b + 1, T))
    Z = np.zeros((k, b + 1, T))
    rhs = np.zeros((k, T))
    x = np.zeros((k, T))
    su = np.zeros(T)
    nu = np.zeros(T, dtype=np.int64)
    norm = np.zeros(T)
    fail = np.zeros(T, dtype=np.bool_)
    fail_at = np.zeros(T, dtype=np.int64)
    t1 = np.zeros(T)
    t2 = np.zeros(T)
    dec = np.zeros(T)
    wrss = np.zeros(T)
    sw0 = np.zeros(T)
    col = np.zeros(T, dtype=np.int64)
    partner = np.zeros(T, dtype=np.int64)
    redo = np.zeros(m, dtype=np.bool_)  # again from the start
    final = np.zeros(m, dtype=np.bool_)  # final solve again
    labels = np.zeros(n, dtype=np.int64)
    wpix = np.zeros(p_count)
    sc2 = scale * scale
    for s in range(0, m_pix, step):
        h = min(step, m_pix - s)
        nt = 2 * h if joint else h
        for q in range(h):
            col[q] = s + q
            partner[q] = q
            if joint:
                col[h + q] = half + s + q
                partner[q] = h + q
                partner[h + q] = q
        for p in range(p_count):
            for q in range(nt):
                g = col[q]
                px = g - half if g >= m_pix else g
                v = valid[p, px]
                vm[p, q] = v
                if g >= m_pix:  # NS of a pixel (joint)
                    wv = w02[p, px] if wcol2 else w02[p, 0]
                    dv = d2[p, px]
                else:
                    wv = w0[p, px] if wcol else w0[p, 0]
                    dv = d[p, px]
                dz[p, q] = dv if v else 0.0
                wz[p, q] = wv if v else 0.0
                w[p, q] = wz[p, q]
                flag[p, q] = False
        for q in range(nt):
            fail[q] = False
            fail_at[q] = n_iter + 1
        for it in range(n_iter + 1):
            reg = lam > 0 and (it < n_iter or lam_final)
            if reg and it == n_iter:
                # sub-networks tied by the regularisation: done one by one
                for q in range(nt):
                    if not fail[q]:
                        for p in range(p_count):
                            wpix[p] = w[p, q]
                        _labels(wpix, i1, i2, n, labels)
                        for j in range(1, n):
                            if labels[j] == j:
                                fail[q] = True
            for q in range(nt):
                su[q] = 0.0
                nu[q] = 0
            for p in range(p_count):
                for q in range(nt):
                    wv = w[p, q]
                    pos = wv > 0
                    su[q] += wv if pos else 0.0
                    nu[q] += 1 if pos else 0
            for q in range(nt):
                norm[q] = nu[q] / su[q] if su[q] > 0 else 1.0
            for j in range(k):
                for o in range(b + 1):
                    for q in range(nt):
                        A[j, o, q] = 0.0
                for q in range(nt):
                    rhs[j, q] = 0.0
            for p in range(p_count):
                a = i1[p] - 1
                c = i2[p] - 1
                if a >= 0:
                    ca = c - a
                    for q in range(nt):
                        wv = w[p, q] * norm[q]
                        wp = wv if wv > 0 else 0.0
                        A[c, 0, q] += wp
                        rhs[c, q] += wp * dz[p, q]
                        A[a, 0, q] += wp
                        A[a, ca, q] -= wp
                        rhs[a, q] -= wp * dz[p, q]
                else:
                    for q in range(nt):
                        wv = w[p, q] * norm[q]
                        wp = wv if wv > 0 else 0.0
                        A[c, 0, q] += wp
                        rhs[c, q] += wp * dz[p, q]
            if reg:
                for j in range(k):
                    for o in range(b + 1):
                        lr = lam * R[j, o]
                        for q in range(nt):
                            A[j, o, q] += lr
            _chol_v(A, b, k, rtol, nt, fail, t1)
            for q in range(nt):
                if fail[q] and fail_at[q] > it:
                    fail_at[q] = it
            _band_solve_v(A, b, k, rhs, x, nt)
            if it == n_iter:
                for p in range(p_count):
                    a = i1[p] - 1
                    c = i2[p] - 1
                    if a >= 0:
                        for q in range(nt):
                            r[p, q] = dz[p, q] - (x[c, q] - x[a, q])
                    else:
                        for q in range(nt):
                            r[p, q] = dz[p, q] - (x[c, q] - 0.0)
                break
            # residuals, deletion residuals (regularised passes) and new weights
            last = it == n_iter - 1
            if reg:
                _inv_band_v(A, b, k, Z, nt, t1, t2)
            for p in range(p_count):
                a = i1[p] - 1
                c = i2[p] - 1
                if a >= 0:
                    ca = c - a
                    for q in range(nt):
                        rr = dz[p, q] - (x[c, q] - x[a, q])
                        r[p, q] = rr
                        if reg:
                            h_ = Z[c, 0, q]
                            h_ += Z[a, 0, q] - 2.0 * Z[a, ca, q]
                            dr = rr / max(1.0 - w[p, q] * norm[q] * h_, MIN_FREEDOM)
                            rr = dr if w[p, q] > 0 else rr
                        dec[q] = rr
                else:
                    for q in range(nt):
                        rr = dz[p, q] - (x[c, q] - 0.0)
                        r[p, q] = rr
                        if reg:
                            h_ = Z[c, 0, q]
                            dr = rr / max(1.0 - w[p, q] * norm[q] * h_, MIN_FREEDOM)
                            rr = dr if w[p, q] > 0 else rr
                        dec[q] = rr
                if last:
                    for q in range(nt):
                        rr = dec[q]
                        ro = dec[partner[q]]
                        out = abs(rr) > gross or abs(ro) > gross
                        nw = 0.0 if out else wz[p, q] / (sc2 + max(rr * rr, ro * ro))
                        v = vm[p, q]
                        w[p, q] = nw if v else w[p, q]
                        flag[p, q] = out if v else flag[p, q]
                else:
                    for q in range(nt):
                        rr = dec[q]
                        ro = dec[partner[q]]
                        nw = wz[p, q] / (sc2 + max(rr * rr, ro * ro))
                        w[p, q] = nw if vm[p, q] else w[p, q]
        # covariance (unit variance) of the final solution
        _inv_band_v(A, b, k, Z, nt, t1, t2)
        for q in range(nt):
            wrss[q] = 0.0
            sw0[q] = 0.0
        for p in range(p_count):
            for q in range(nt):
                wv = w[p, q]
                if wv > 0:
                    wrss[q] += wv * norm[q] * r[p, q] * r[p, q]
                    sw0[q] += wz[p, q]
                g = col[q]
                r_out[p, g] = r[p, q] if vm[p, q] else np.nan
                out_flag[p, g] = flag[p, q]
        for j in range(k):
            for q in range(nt):
                g = col[q]
                u_out[j + 1, g] = x[j, q]
                var_out[j + 1, g] = Z[j, 0, q]
        for q in range(nt):
            g = col[q]
            if fail[q]:
                if fail_at[q] < n_iter:
                    redo[g] = True
                    if joint:
                        redo[col[partner[q]]] = True
                else:  # keep the weights of the last pass for the final solve
                    final[g] = True
                    for p in range(p_count):
                        r_out[p, g] = w[p, q]
                continue
            u_out[0, g] = 0.0
            var_out[0, g] = 0.0
            dof = nu[q] - (n - 1)
            if dof > 0:
                s0_out[g] = wrss[q] / dof
            else:
                mean_w0 = sw0[q] / max(nu[q], 1)
                s0_out[g] = 1.0 / mean_w0 if mean_w0 > 0 else 1.0
            ok_out[g] = True
    for g in range(m):
        final[g] = final[g] and not redo[g]
    outs = (u_out, var_out, s0_out, r_out, sm_out, ok_out)
    const = (i1, i2, n, b, R, Rs, scale, gross, gamma2, rtol, limit, anchor, tie, lam, lam_final)
    idx = np.flatnonzero(redo)
    if idx.size:
        dc, vc, wc = _columns(d, d2, valid, w0, w02, idx, half)
        if joint:  # pass by pass, both components side by side, then the final solve
            wl = wc.copy()
            both = np.ones(idx.size, dtype=np.bool_)
            for it in range(n_iter):
                rr = _scalar(dc, vc, wl, 1, wc, True, const)
                wl = _joint_weights(
                    rr[3], rr[6], vc, wc, idx, half, gross, sc2, it == n_iter - 1, out_flag, both
                )
            _put_columns(_scalar(dc, vc, wl, 0, wc, False, const), idx, outs, None)
            for i in range(idx.size):
                ok_out[idx[i]] = ok_out[idx[i]] and both[i]
        else:
            _put_columns(_scalar(dc, vc, wc, n_iter, wc, False, const), idx, outs, out_flag)
    idx = np.flatnonzero(final)
    if idx.size:
        dc, vc, wc = _columns(d, d2, valid, w0, w02, idx, half)
        wl = np.empty((p_count, idx.size))
        for p in range(p_count):
            for i in range(idx.size):
                wl[p, i] = r_out[p, idx[i]]
        _put_columns(_scalar(dc, vc, wl, 0, wc, False, const), idx, outs, None)
    return u_out, var_out, s0_out, r_out, out_flag, sm_out, ok_out


@njit(**_OPTS)
def _scalar(d, valid, w0, n_iter, wprior, stop, const):
    """:func:`_invert_scalar` with the arguments shared by every call of a block in ``const``."""
    i1, i2, n, b, R, Rs, scale, gross, gamma2, rtol, limit, anchor, tie, lam, lam_final = const
    return _invert_scalar(
        d,
        valid,
        w0,
        i1,
        i2,
        n,
        b,
        R,
        Rs,
        n_iter,
        scale,
        gross,
        gamma2,
        rtol,
        limit,
        anchor,
        tie,
        lam,
        lam_final,
        wprior,
        stop,
    )


@njit(**_OPTS)
def _columns(d, d2, valid, w0, w02, idx, half):
    """Data, valid pairs and a priori weights of the result columns ``idx``, (P, len(idx)) each.

    Column ``g`` is the pixel ``g`` of ``d`` and ``w0``, or with ``half > 0``
    (joint), for ``g >= half``, the pixel ``g - half`` of ``d2`` and ``w02``.
    """
    p_count = d.shape[0]
    mr = idx.size
    wcol = w0.shape[1] != 1
    wcol2 = w02.shape[1] != 1
    dc = np.empty((p_count, mr))
    vc = np.empty((p_count, mr), dtype=np.bool_)
    wc = np.empty((p_count, mr))
    for i in range(mr):
        g = idx[i]
        second = half > 0 and g >= half
        px = g - half if second else g
        for p in range(p_count):
            vc[p, i] = valid[p, px]
            if second:
                dc[p, i] = d2[p, px]
                wc[p, i] = w02[p, px] if wcol2 else w02[p, 0]
            else:
                dc[p, i] = d[p, px]
                wc[p, i] = w0[p, px] if wcol else w0[p, 0]
    return dc, vc, wc


@njit(**_OPTS)
def _put_columns(res, idx, outs, out_flag):
    """Write the results ``res`` of :func:`_invert_scalar` to the columns ``idx``.

    ``outs`` = ``(u, var, s0sq, r, smoothed, ok)`` of the block; the outlier
    flags too unless ``out_flag`` is None.
    """
    u2, var2, s02, r2, f2, sm2, ok2 = res
    u_out, var_out, s0_out, r_out, sm_out, ok_out = outs
    n = u_out.shape[0]
    p_count = r_out.shape[0]
    for i in range(idx.size):
        px = idx[i]
        for j in range(n):
            u_out[j, px] = u2[j, i]
            var_out[j, px] = var2[j, i]
            sm_out[j, px] = sm2[j, i]
        for p in range(p_count):
            r_out[p, px] = r2[p, i]
            if out_flag is not None:
                out_flag[p, px] = f2[p, i]
        s0_out[px] = s02[i]
        ok_out[px] = ok2[i]


@njit(**_OPTS)
def _joint_weights(rr, ok, valid, w0, idx, half, gross, sc2, last, out_flag, both):
    """New weights of one re-weighting pass of both components, for the columns ``idx``.

    ``rr`` (P, len(idx)) holds the residuals the weights read (deletion
    residuals in regularised passes; :func:`_invert_scalar` with ``stop``),
    ``ok`` whether each column got there; ``idx`` holds both components of
    each pixel (columns ``g`` and ``g + half``). A pair's weight is
    ``w0 / (scale**2 + max(r_ew**2, r_ns**2))``, and in the ``last`` pass 0
    where either residual exceeds ``gross`` (then flagged in ``out_flag``).
    Clears ``both`` (per column) where a component of the pixel did not get
    there; every weight of such a pixel is 0.
    """
    p_count, mr = rr.shape
    wcol = w0.shape[1] != 1
    pos = np.full(out_flag.shape[1], -1, dtype=np.int64)
    for i in range(mr):
        pos[idx[i]] = i
    wl = np.zeros((p_count, mr))
    for i in range(mr):
        g = idx[i]
        j = pos[g + half if g < half else g - half]
        both[i] = both[i] and ok[i] and ok[j]
        for p in range(p_count):
            v = valid[p, i] and both[i]
            a = rr[p, i]
            o = rr[p, j]
            out = v and last and (abs(a) > gross or abs(o) > gross)
            if last:
                out_flag[p, g] = out
            wv = w0[p, i] if wcol else w0[p, 0]
            wl[p, i] = wv / (sc2 + max(a * a, o * o)) if v and not out else 0.0
    return wl


@njit(**_OPTS)
def residual_sums(r, i1, i2, n):
    """See ``tio._inversion._residual_sums`` (``r`` NaN where a pair is not valid)."""
    p_count, m = r.shape
    ss = np.zeros((n, m))
    cnt = np.zeros((n, m))
    sp = np.zeros(p_count)
    npair = np.zeros(p_count)
    for p in range(p_count):
        a = i1[p]
        c = i2[p]
        s = 0.0
        k = 0
        for q in range(m):
            v = r[p, q]
            if np.isfinite(v):
                v2 = v * v
                ss[a, q] += v2
                ss[c, q] += v2
                cnt[a, q] += 1.0
                cnt[c, q] += 1.0
                s += v2
                k += 1
        sp[p] = s
        npair[p] = k
    return ss, cnt, sp, npair


@njit(**_OPTS)
def linear_velocity(t, u, sigma, floor):
    """See ``tio._inversion.linear_velocity``; ``u``, ``sigma`` (N, M), pixels last."""
    n, m = u.shape
    pos = np.full(m, np.inf)
    cnt = np.zeros(m)
    sw = np.zeros(m)
    swt = np.zeros(m)
    swu = np.zeros(m)
    stt = np.zeros(m)
    swdu = np.zeros(m)
    chi2 = np.zeros(m)
    w = np.zeros((n, m))
    for j in range(n):
        for i in range(m):
            s = sigma[j, i]
            if np.isfinite(u[j, i]) and np.isfinite(s) and s > 0 and s < pos[i]:
                pos[i] = s
    for i in range(m):
        if not np.isfinite(pos[i]):
            pos[i] = floor
    for j in range(n):
        for i in range(m):
            s = sigma[j, i]
            uu = u[j, i]
            if np.isfinite(uu) and np.isfinite(s):
                s = max(s if s > 0 else pos[i], floor)
                wj = 1.0 / s**2
                w[j, i] = wj
                cnt[i] += 1.0
                sw[i] += wj
                swt[i] += wj * t[j]
                swu[i] += wj * uu
    v = np.empty(m)
    sv = np.empty(m)
    for i in range(m):
        swt[i] /= sw[i]  # mean date
        swu[i] /= sw[i]  # mean displacement
    for j in range(n):
        for i in range(m):
            wj = w[j, i]
            if wj > 0:
                dt = t[j] - swt[i]
                stt[i] += wj * dt * dt
                swdu[i] += wj * dt * u[j, i]
    for i in range(m):
        v[i] = swdu[i] / stt[i]
    for j in range(n):
        for i in range(m):
            wj = w[j, i]
            if wj > 0:
                e = u[j, i] - swu[i] - v[i] * (t[j] - swt[i])
                chi2[i] += wj * e * e
    for i in range(m):
        red = chi2[i] / max(cnt[i] - 2.0, 1.0) if cnt[i] > 2 else 1.0
        if cnt[i] < 2 or not stt[i] > 0:
            v[i] = np.nan
            sv[i] = np.nan
        else:
            sv[i] = np.sqrt(max(red, 1.0) / stt[i])
    return v, sv
