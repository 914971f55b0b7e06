"""Numerics of the pixel-wise time-series inversion (numpy only).

Everything here works on plain arrays of pixels: a block of ``M`` pixels is a
set of ``(M, P)`` arrays (one column per pair). The public wrapper
:func:`tio.inversion.invert` reads the pairs, calls :func:`invert_block` on
blocks of pixels and assembles the result.

Notation
--------
``N`` dates ``t_0 < ... < t_{N-1}``; ``K = N - 1`` unknowns, the increments
``x_k = u(t_{k+1}) - u(t_k)``; ``P`` pairs; ``G`` the ``(P, K)`` design matrix
(row ``p`` has a 1 on every increment between the two dates of pair ``p``);
``L`` the ``(N, K)`` cumulative-sum operator, ``u = L x`` (so ``u_0 = 0``).

Reference: Bontemps, Lacroix & Doin (2018), Remote Sensing of Environment
210:144-158, which inverts the pair network with the NSBAS ``invers_pixel``
scheme (Doin et al. 2011; Lopez-Quiroz et al. 2009).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "DAYS_PER_YEAR",
    "GROSS_OUTLIER_FACTOR",
    "Network",
    "build_network",
    "connected_components",
    "invert_block",
    "linear_velocity",
    "pair_sigmas",
    "robust_std",
]

DAYS_PER_YEAR = 365.25
#: Factor applied to the weight of a pair whose residual exceeds ``gross_outlier``
#: (NSBAS divides such weights by 1000).
GROSS_OUTLIER_FACTOR = 1e-3
#: Largest condition number accepted for a normal matrix (estimated from the
#: diagonals of the matrix and of its inverse); pixels beyond it are NaN.
MAX_CONDITION = 1e12
#: Floor (metres) of the cumulative sigmas used as weights in the velocity fit.
SIGMA_FLOOR = 1e-6
#: Weight of the rows that pin the first date of each sub-network of a disconnected
#: pixel (any positive value gives the same solution: they only remove the null space).
_ANCHOR_WEIGHT = 1.0


@dataclass(frozen=True)
class Network:
    """Matrices of a pair network, shared by every pixel.

    Attributes
    ----------
    n_dates : int
        Number of dates ``N``.
    i1, i2 : ndarray of int, shape (P,)
        Index of the first and second date of each pair (``i1 < i2``).
    t : ndarray, shape (N,)
        Dates in years since the first date.
    G : ndarray, shape (P, N-1)
        Design matrix (increments between successive dates).
    GG : ndarray, shape (P, n_active)
        Row-wise outer products ``G_p G_p^T``, flattened, restricted to the
        entries ``active`` that some pair makes non-zero: ``w @ GG`` gives
        the normal matrices ``G^T diag(w) G`` of a stack of pixels in one
        GEMM (see :func:`normal_matrices`).
    active : ndarray of int, shape (n_active,)
        Flat indices (in a ``(N-1, N-1)`` matrix) of those entries.
    E : ndarray, shape (P, N)
        Incidence matrix: 1 where date ``j`` is one of the two dates of pair ``p``.
    LL : ndarray, shape (N, (N-1)**2)
        Outer products ``L_j L_j^T`` of the rows of the cumulative-sum operator.
    R : ndarray, shape (N-1, N-1)
        ``S^T S`` for the time-aware second-difference operator ``S``
        acting on the increments.
    Ru : ndarray, shape (N, N)
        The same acting on the cumulative displacement.
    """

    n_dates: int
    i1: np.ndarray
    i2: np.ndarray
    t: np.ndarray
    G: np.ndarray
    GG: np.ndarray
    active: np.ndarray
    E: np.ndarray
    LL: np.ndarray
    R: np.ndarray
    Ru: np.ndarray


def build_network(i1, i2, t) -> Network:
    """Build the matrices of the inversion for a pair network.

    Parameters
    ----------
    i1, i2 : array_like of int, shape (P,)
        Date indices of each pair; ``0 <= i1 < i2 < N``.
    t : array_like, shape (N,)
        Strictly increasing dates (any unit; years are used by the velocity).

    Returns
    -------
    Network
    """
    i1 = np.asarray(i1, dtype=np.intp)
    i2 = np.asarray(i2, dtype=np.intp)
    t = np.asarray(t, dtype=np.float64)
    n = t.size
    if n < 2 or np.any(np.diff(t) <= 0):
        raise ValueError("need at least 2 strictly increasing dates")
    if i1.shape != i2.shape or np.any(i1 >= i2) or np.any(i1 < 0) or np.any(i2 >= n):
        raise ValueError("pair date indices must satisfy 0 <= i1 < i2 < n_dates")
    k = n - 1
    cols = np.arange(k)
    G = ((cols >= i1[:, None]) & (cols < i2[:, None])).astype(np.float64)
    GG = (G[:, :, None] * G[:, None, :]).reshape(G.shape[0], k * k)
    active = np.flatnonzero(GG.any(axis=0))
    E = np.zeros((i1.size, n))
    E[np.arange(i1.size), i1] = 1.0
    E[np.arange(i1.size), i2] = 1.0
    L = np.tril(np.ones((n, k)), -1)  # u_j = sum_{k < j} x_k
    LL = (L[:, :, None] * L[:, None, :]).reshape(n, k * k)
    S = smoothing_operator(t)
    Su = S @ (np.eye(n, k=1) - np.eye(n))[:k]  # x_k = u_{k+1} - u_k
    return Network(n, i1, i2, t, G, GG[:, active], active, E, LL, S.T @ S, Su.T @ Su)


def smoothing_operator(t) -> np.ndarray:
    """Time-aware second-difference operator acting on the increments.

    Row ``j - 1`` (interior date ``j = 1 .. N-2``) is the change of mean
    velocity between the intervals either side of ``t_j``, multiplied by the
    mean length of the two intervals so that it is a displacement (metres):
    ``(x_j / dt_j - x_{j-1} / dt_{j-1}) * (dt_{j-1} + dt_j) / 2``.
    For evenly spaced dates it is the plain second difference
    ``u_{j+1} - 2 u_j + u_{j-1}``; it is zero for a constant velocity.

    Returns
    -------
    ndarray, shape (N-2, N-1)
    """
    dt = np.diff(np.asarray(t, dtype=np.float64))
    k = dt.size
    S = np.zeros((max(k - 1, 0), k))
    for j in range(1, k):
        mean_dt = 0.5 * (dt[j - 1] + dt[j])
        S[j - 1, j] = mean_dt / dt[j]
        S[j - 1, j - 1] = -mean_dt / dt[j - 1]
    return S


def robust_std(values) -> float:
    """Robust standard deviation ``1.4826 * MAD`` of the finite values (NaN if none)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def pair_sigmas(sigmas) -> np.ndarray:
    """Make per-pair robust standard deviations usable as weights ``1 / sigma**2``.

    Zero sigmas (constant maps) are raised to 1e-3 times the median of the
    positive ones; non-finite sigmas (pairs without a valid pixel) become 1.
    If no sigma is positive, all become 1 (equal weights).
    """
    s = np.asarray(sigmas, dtype=np.float64).copy()
    pos = s[np.isfinite(s) & (s > 0)]
    if pos.size == 0:
        return np.ones_like(s)
    s[~np.isfinite(s)] = 1.0
    return np.maximum(s, 1e-3 * np.median(pos))


def connected_components(valid, i1, i2, n_dates) -> np.ndarray:
    """Connected components of the date graph of every pixel.

    Nodes are dates, edges are the pairs valid at the pixel. Labels are found
    by min-label propagation, vectorised over pixels (the Python loops run
    over pairs and sweeps only).

    Parameters
    ----------
    valid : ndarray of bool, shape (M, P)
    i1, i2 : ndarray of int, shape (P,)
    n_dates : int

    Returns
    -------
    labels : ndarray of int32, shape (M, N)
        Label of each date = the index of the earliest date of its component.
        A date without any valid pair is its own component.
    """
    valid = np.asarray(valid, dtype=bool)
    m, p = valid.shape
    labels = np.tile(np.arange(n_dates, dtype=np.int32), (m, 1))
    order = np.concatenate([np.arange(p), np.arange(p)[::-1]])
    for _ in range(n_dates + 1):  # each sweep propagates at least one edge further
        changed = False
        for q in order:
            a = labels[:, i1[q]]
            b = labels[:, i2[q]]
            diff = valid[:, q] & (a != b)
            if diff.any():
                low = np.minimum(a, b)
                labels[:, i1[q]] = np.where(diff, low, a)
                labels[:, i2[q]] = np.where(diff, low, b)
                changed = True
        if not changed:
            break
    return labels


def normal_matrices(net, w) -> np.ndarray:
    """Normal matrices ``G^T diag(w_m) G`` of a stack of pixels, shape (M, K, K).

    Only the entries some pair reaches are computed (the matrices are banded
    for networks of short pairs); the result is a transposed view.
    """
    k = net.n_dates - 1
    At = np.zeros((k * k, w.shape[0]))
    At[net.active] = net.GG.T @ w.T
    return At.T.reshape(w.shape[0], k, k)


def _spd_inverse(A):
    """Invert a stack of symmetric positive (semi-)definite matrices.

    Returns ``(Ainv, ok)``; matrices that are singular or whose condition
    number exceeds :data:`MAX_CONDITION` get ``ok = False`` and a NaN inverse
    instead of raising. The condition number is estimated by
    ``max(diag(A)) * max(diag(A^-1))``, a lower bound of the 2-norm condition
    number for symmetric positive definite matrices (within a factor ``K**2``).
    """
    try:
        Ainv = np.linalg.inv(A)
        ok = np.ones(A.shape[0], dtype=bool)
    except np.linalg.LinAlgError:
        lam, V = np.linalg.eigh(A)
        keep = lam > np.abs(lam[:, -1:]) / MAX_CONDITION
        ok = keep.all(axis=1)
        inv_lam = np.where(keep, 1.0 / np.where(keep, lam, 1.0), 0.0)
        Ainv = np.einsum("mik,mk,mjk->mij", V, inv_lam, V)
    with np.errstate(invalid="ignore", over="ignore"):
        cond = np.einsum("mii->mi", A).max(axis=1) * np.einsum("mii->mi", Ainv).max(axis=1)
    ok &= np.isfinite(cond) & (cond < MAX_CONDITION)
    Ainv[~ok] = np.nan
    return Ainv, ok


def _spd_solve(A, b):
    """Solve a stack of symmetric positive definite systems ``A x = b``.

    Falls back on :func:`_spd_inverse` (which flags singular matrices instead
    of raising) when LAPACK reports an exactly singular matrix.
    """
    try:
        return np.linalg.solve(A, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        Ainv, _ = _spd_inverse(A)
        return np.einsum("mij,mj->mi", Ainv, b)


def _robust_lsq(net, d, valid, w0, anchors, *, n_iter, scale, gross, rank):
    """Weighted, iteratively re-weighted least squares for one component.

    Parameters
    ----------
    net : Network
    d : ndarray, shape (M, P)
        Pair displacements (any value where not valid).
    valid : ndarray of bool, shape (M, P)
    w0 : ndarray, shape (M, P)
        A priori weights (1 / variance of each pair, or 1).
    anchors : tuple (index, matrices) or None
        Normal-matrix terms pinning one date of every sub-network but the
        first date's at the disconnected pixels ``index``. They only remove
        the null space: whatever the data determine is unaffected.
    n_iter, scale, gross
        Re-weighting passes, residual scale and gross-outlier threshold (metres).
    rank : ndarray of int, shape (M,)
        Rank of the data part of the system (``N - number of components``).

    Returns
    -------
    x : (M, K) increments; Ainv : (M, K, K) inverse normal matrices (with
    anchors); wn : (M, P) final weights normalised to a mean of 1 over the
    valid pairs; s0sq : (M,) variance of unit weight; r : (M, P) residuals
    (NaN where not valid); outlier : (M, P) bool; ok : (M,) bool, False where
    the normal matrix was singular.
    """
    dz = np.where(valid, d, 0.0)
    w0 = np.where(valid, w0, 0.0)
    n_valid = valid.sum(axis=1)

    def normal(w):
        # Weights normalised to a mean of 1 over the valid pairs: the smoothing
        # weight is relative to unit-weight data rows.
        mean_w = w.sum(axis=1) / np.maximum(n_valid, 1)
        wn = w / np.where(mean_w > 0, mean_w, 1.0)[:, None]
        A = normal_matrices(net, wn)
        if anchors is not None:
            A[anchors[0]] += anchors[1]
        return A, (wn * dz) @ net.G, wn

    A, b, wn = normal(w0)
    outlier = np.zeros_like(valid)
    for _ in range(n_iter):
        x = _spd_solve(A, b)
        r = np.where(valid, dz - x @ net.G.T, 0.0)
        outlier = valid & (np.abs(r) > gross)
        w = w0 / (scale**2 + r**2)
        w = np.where(outlier, w * GROSS_OUTLIER_FACTOR, w)
        A, b, wn = normal(w)
    Ainv, ok = _spd_inverse(A)  # the last solution needs the inverse anyway
    x = np.einsum("mij,mj->mi", Ainv, b)
    r = dz - x @ net.G.T
    wrss = np.where(valid, wn * r**2, 0.0).sum(axis=1)
    dof = n_valid - outlier.sum(axis=1) - rank
    # Without redundancy, trust the a priori weights: variance 1 / w0 (sigma_p**2
    # of each pair for "std" weighting, 1 m^2 for "none").
    mean_w0 = w0.sum(axis=1) / np.maximum(n_valid, 1)
    prior = 1.0 / np.where(mean_w0 > 0, mean_w0, 1.0)
    s0sq = np.where(dof > 0, wrss / np.maximum(dof, 1), prior)
    r = np.where(valid, r, np.nan)
    return x, Ainv, wn, s0sq, r, outlier, ok


def _cumulative(x) -> np.ndarray:
    """Cumulative displacement ``u = L x``, shape (M, N), ``u[:, 0] = 0``."""
    u = np.zeros((x.shape[0], x.shape[1] + 1))
    np.cumsum(x, axis=1, out=u[:, 1:])
    return u


def _cumulative_var(cov) -> np.ndarray:
    """Diagonal of ``L C L^T`` (variance of the cumulative displacement), (M, N).

    Uses ``var(u_{j+1}) = var(u_j) + 2 cov(u_j, x_j) + var(x_j)``.
    """
    m, k, _ = cov.shape
    lower = np.tril(np.ones((k, k)), -1)
    step = 2.0 * np.einsum("mjl,jl->mj", cov, lower) + np.einsum("mjj->mj", cov)
    var = np.zeros((m, k + 1))
    np.cumsum(step, axis=1, out=var[:, 1:])
    return var


def _cumulative_cov(cov) -> np.ndarray:
    """Full covariance ``L C L^T`` of the cumulative displacement, (M, N, N)."""
    m, k, _ = cov.shape
    T = np.zeros((m, k + 1, k + 1))
    T[:, 1:, 1:] = np.cumsum(np.cumsum(cov, axis=1), axis=2)
    return T


def _smooth_offsets(net, u, labels):
    """Offsets between sub-networks that make the whole series smoothest.

    ``u`` (M, N) is exact inside each sub-network (labelled by ``labels``)
    and 0 at the first date of every sub-network but the first date's. Each
    of those sub-networks is shifted by the constant ``a_c`` minimising
    ``|S (u + B a)|^2`` (``S`` the time-aware second difference): the limit of
    the smoothing-regularised least squares as the smoothing weight goes to 0,
    which leaves everything the data determine untouched.
    """
    m, n = u.shape
    cols = np.arange(n)
    B = (labels[:, :, None] == cols) & (cols > 0)  # (M, N dates, N labels)
    B = B.astype(np.float64)
    RB = np.einsum("ik,mkj->mij", net.Ru, B)
    Q = np.einsum("mij,mik->mjk", B, RB)
    unused = ~B.any(axis=1)  # labels that are not the root of another sub-network
    Q[:, cols, cols] += unused
    rhs = -np.einsum("mij,mi->mj", RB, u)
    Qinv, ok = _spd_inverse(Q)
    a = np.einsum("mjk,mk->mj", Qinv, rhs)
    return u + np.einsum("mij,mj->mi", B, a), ok


def invert_block(
    net,
    ew,
    ns,
    valid,
    w0_ew,
    w0_ns,
    *,
    min_valid,
    residual_scale,
    gross_outlier,
    reweight_iterations,
    smoothing_gamma2,
):
    """Invert a block of pixels, both components.

    Parameters
    ----------
    net : Network
    ew, ns : ndarray, shape (M, P)
        Pair displacements of each pixel (metres).
    valid : ndarray of bool, shape (M, P)
        Pairs usable at each pixel (both components finite).
    w0_ew, w0_ns : ndarray, shape (M, P)
        A priori weights of each pair at each pixel.
    min_valid : int
        Pixels with fewer valid pairs are not inverted.
    residual_scale, gross_outlier, reweight_iterations, smoothing_gamma2
        See :func:`tio.inversion.invert`.

    Returns
    -------
    dict
        ``inverted`` (M,) bool; ``n_valid`` (M,); ``smoothed`` (M, N) bool and,
        for each component ``c`` in ``("ew", "ns")``: ``cum_c`` and ``sigma_c``
        (M, N), ``res_c`` (M, P), ``rms_date_c`` (M, N), ``vel_c`` and
        ``vel_sigma_c`` (M,), ``n_out_c`` (M,). NaN / False / 0 where a pixel
        is not inverted.

    Notes
    -----
    At pixels whose valid pairs leave several sub-networks (connected
    components of the date graph), the data fix everything inside each
    sub-network; the offsets between sub-networks are set by the temporal
    smoothing in the limit of a vanishing weight (:func:`_smooth_offsets`),
    and the covariance is that of the system regularised with weight
    ``smoothing_gamma2``: ``(G^T W G + gamma2 S^T S)^-1 s0^2``. With
    ``smoothing_gamma2 == 0`` the dates outside the largest sub-network are
    NaN and the series is relative to the first date of that sub-network.
    """
    m, p = valid.shape
    n = net.n_dates
    k = n - 1
    n_valid = valid.sum(axis=1)
    out = {
        "n_valid": n_valid,
        "inverted": np.zeros(m, dtype=bool),
        "smoothed": np.zeros((m, n), dtype=bool),
    }
    for c in ("ew", "ns"):
        out[f"cum_{c}"] = np.full((m, n), np.nan)
        out[f"sigma_{c}"] = np.full((m, n), np.nan)
        out[f"rms_date_{c}"] = np.full((m, n), np.nan)
        out[f"res_{c}"] = np.full((m, p), np.nan)
        out[f"vel_{c}"] = np.full(m, np.nan)
        out[f"vel_sigma_{c}"] = np.full(m, np.nan)
        out[f"n_out_{c}"] = np.zeros(m, dtype=np.int64)

    todo = np.flatnonzero(n_valid >= max(min_valid, 1))
    if todo.size == 0:
        return out
    v = valid[todo]

    # Connectivity of every pixel's network.
    labels = connected_components(v, net.i1, net.i2, n)
    is_root = labels == np.arange(n)
    n_comp = is_root.sum(axis=1)
    rank = n - n_comp
    flat = labels + n * np.arange(todo.size)[:, None]
    sizes = np.bincount(flat.ravel(), minlength=todo.size * n).reshape(todo.size, n)
    largest = sizes.argmax(axis=1)  # ties: the sub-network of the earliest date
    disc_idx = np.flatnonzero(n_comp > 1)
    smoothed = (n_comp[:, None] > 1) & (labels != largest[:, None])
    anchors = None
    if disc_idx.size:
        roots = is_root[disc_idx]
        roots[:, 0] = False
        mats = _ANCHOR_WEIGHT * (roots.astype(np.float64) @ net.LL).reshape(-1, k, k)
        anchors = (disc_idx, mats)

    ok_all = np.ones(todo.size, dtype=bool)
    results = {}
    for c, d, w0 in (("ew", ew, w0_ew), ("ns", ns, w0_ns)):
        x, Ainv, wn, s0sq, r, outlier, ok = _robust_lsq(
            net,
            d[todo],
            v,
            w0[todo],
            anchors,
            n_iter=reweight_iterations,
            scale=residual_scale,
            gross=gross_outlier,
            rank=rank,
        )
        u = _cumulative(x)
        cov = Ainv * s0sq[:, None, None]
        sigma = np.sqrt(np.clip(_cumulative_var(cov), 0.0, None))
        if disc_idx.size and smoothing_gamma2 > 0:
            ud, ok_d = _smooth_offsets(net, u[disc_idx], labels[disc_idx])
            A = normal_matrices(net, wn[disc_idx]) + smoothing_gamma2 * net.R
            Cinv, ok_c = _spd_inverse(A)
            var = _cumulative_var(Cinv * s0sq[disc_idx, None, None])
            u[disc_idx] = ud
            sigma[disc_idx] = np.sqrt(np.clip(var, 0.0, None))
            ok[disc_idx] &= ok_d & ok_c
        elif disc_idx.size:
            # var(u_j - u_ref), ref = first date of the largest sub-network.
            ref = largest[disc_idx]
            ii = np.arange(disc_idx.size)
            Td = _cumulative_cov(cov[disc_idx])
            u[disc_idx] -= u[disc_idx, ref][:, None]
            var = np.einsum("mjj->mj", Td) + Td[ii, ref, ref][:, None] - 2.0 * Td[ii, :, ref]
            sigma[disc_idx] = np.sqrt(np.clip(var, 0.0, None))
            u[smoothed] = np.nan
            sigma[smoothed] = np.nan
        ok_all &= ok
        results[c] = (u, sigma, r, outlier)

    idx = todo[ok_all]
    out["inverted"][idx] = True
    out["smoothed"][idx] = smoothed[ok_all]
    vv = v[ok_all]
    count = vv.astype(np.float64) @ net.E
    for c, (u, sigma, r, outlier) in results.items():
        u, sigma, r = u[ok_all], sigma[ok_all], r[ok_all]
        out[f"cum_{c}"][idx] = u
        out[f"sigma_{c}"][idx] = sigma
        out[f"res_{c}"][idx] = r
        out[f"n_out_{c}"][idx] = outlier[ok_all].sum(axis=1)
        sq = np.where(vv, r, 0.0) ** 2 @ net.E
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"rms_date_{c}"][idx] = np.where(count > 0, np.sqrt(sq / count), np.nan)
        vel, vel_sigma = linear_velocity(net.t, u, sigma)
        out[f"vel_{c}"][idx] = vel
        out[f"vel_sigma_{c}"][idx] = vel_sigma
    return out


def linear_velocity(t, u, sigma):
    """Weighted straight-line fit ``u = a + v t`` of each pixel's series.

    Parameters
    ----------
    t : ndarray, shape (N,)
        Dates (years).
    u, sigma : ndarray, shape (M, N)
        Cumulative displacement and its 1-sigma; NaN dates are left out.

    Returns
    -------
    v, sigma_v : ndarray, shape (M,)
        Slope (units of ``u`` per unit of ``t``) and its standard error.

    Notes
    -----
    Weights are ``1 / sigma**2``. The reference date has sigma 0 by
    construction: it, and any other zero sigma, gets the smallest positive
    sigma of the pixel; all sigmas are floored at :data:`SIGMA_FLOOR` (so a
    noise-free series gets equal weights). ``sigma_v`` is the formal standard
    error of the slope multiplied by ``sqrt(max(1, chi2 / (n - 2)))``, so it
    also reflects the scatter of the series about the line (non-linear motion).
    It ignores the correlation between the cumulative values. NaN with fewer
    than 2 dates.
    """
    t = np.asarray(t, dtype=np.float64)
    ok = np.isfinite(u) & np.isfinite(sigma)
    sig = np.where(ok, sigma, np.inf)
    positive = np.where(sig > 0, sig, np.inf).min(axis=1, keepdims=True)
    positive = np.where(np.isfinite(positive), positive, SIGMA_FLOOR)
    sig = np.maximum(np.where(sig > 0, sig, positive), SIGMA_FLOOR)
    w = np.where(ok, 1.0 / sig**2, 0.0)
    uz = np.where(ok, u, 0.0)
    n = ok.sum(axis=1)
    sw = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        tm = (w @ t) / sw
        dtm = t[None, :] - tm[:, None]
        stt = (w * dtm**2).sum(axis=1)
        um = (w * uz).sum(axis=1) / sw
        v = (w * dtm * uz).sum(axis=1) / stt
        chi2 = (w * (uz - um[:, None] - v[:, None] * dtm) ** 2).sum(axis=1)
        red = np.where(n > 2, chi2 / np.maximum(n - 2, 1), 1.0)
        sv = np.sqrt(np.maximum(red, 1.0) / stt)
    bad = (n < 2) | ~(stt > 0)
    v[bad] = np.nan
    sv[bad] = np.nan
    return v, sv
