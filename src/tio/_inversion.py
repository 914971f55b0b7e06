"""Numerics of the pixel-wise time-series inversion (numpy, scipy.sparse; numba kernel).

Everything here works on plain arrays of pixels laid out *pixel-last*: a block
of ``M`` pixels is a set of ``(P, M)`` arrays (one row per pair), so that every
operation of the solver runs on contiguous vectors of ``M`` pixels. The public
wrapper :func:`tio.inversion.invert` reads the pairs, calls
:func:`invert_block` on blocks of pixels (in parallel) and assembles the result.

Notation
--------
``N`` dates ``t_0 < ... < t_{N-1}``; ``K = N - 1`` increments
``x_k = u(t_{k+1}) - u(t_k)``; ``P`` pairs; ``G`` the ``(P, K)`` design matrix
(row ``p`` has a 1 on every increment between the two dates of pair ``p``);
``L`` the ``(N, K)`` cumulative-sum operator, ``u = L x`` (so ``u_0 = 0``).

The unknowns of the model are the increments ``x``. The solver works with the
equivalent unknowns ``u_1 .. u_{N-1}`` (an exact, invertible change of
variables ``x = D u``: same solution, same covariance after propagation),
because there each pair row has just two non-zeros (``u_{i2} - u_{i1}``) and
the normal matrix ``C^T W C`` is a weighted graph Laplacian (date 0 grounded)
whose bandwidth is the longest pair span in dates (4 or 5 for "each date with
the next 4 or 5"), instead of a dense ``(N-1)**2`` matrix. Each pixel's system
is then solved by a banded Cholesky factorisation, ``O(N b**2)`` work, and the
diagonal of its inverse (the variance of every cumulative displacement) comes
from the same factor by Takahashi's recurrence. The optional temporal
regularisation adds ``lambda * S^T S`` (``S`` the time-aware second
difference, the operator of the gap smoothing), which keeps the band; the
band of the inverse also gives each pair's leverage ``h`` (its two dates are
at most ``b`` apart), hence its deletion residual ``r / (1 - h)``, used by
the re-weighting passes. The Python loops run over the
``N`` dates and the pairs; every step is a numpy operation on all the pixels
of a block.

Reference: Bontemps, Lacroix & Doin (2018), Remote Sensing of Environment
210:144-158, which inverts the pair network with the NSBAS ``invers_pixel``
scheme (Doin et al. 2011; Lopez-Quiroz et al. 2009).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

try:  # the compiled kernel (same results, several times faster)
    from . import _inversion_jit as _jit
except ImportError:  # pragma: no cover - numba not installed
    _jit = None

__all__ = [
    "DAYS_PER_YEAR",
    "Network",
    "band_cholesky",
    "band_inverse_diagonal",
    "band_solve",
    "baseline_weights",
    "build_network",
    "connected_components",
    "invert_block",
    "linear_velocity",
    "pair_sigmas",
    "robust_std",
]

DAYS_PER_YEAR = 365.25
#: A pivot of the banded Cholesky factorisation below this share of the
#: largest diagonal entry marks the system singular (a date, or a group of
#: dates, that no used pair ties to the first date).
PIVOT_RTOL = 1e-10
#: Weight (relative to data rows of unit weight) given to the tie rows of
#: :func:`augment` (the smoothing rows keep their ratio ``gamma2 / TIE_WEIGHT``)
#: when solving for the values of a disconnected pixel: small enough that the
#: values inside each sub-network are the data's to within ~1e-6 of their size
#: (the limit of a vanishing weight), large enough for float64.
LIMIT_WEIGHT = 1e-6
#: Weight of the rows tying the cumulative displacement to the smoothed series
#: at disconnected pixels (relative to data rows of unit weight), as NSBAS.
TIE_WEIGHT = 5e-4
#: Weight of the rows that pin the first date of each sub-network when
#: ``smoothing_gamma2 == 0`` (they only remove the null space).
ANCHOR_WEIGHT = 1e8
#: Floor of ``1 - h`` (``h`` the leverage of a pair) in the deletion residuals.
MIN_FREEDOM = 1e-9
#: Use the compiled kernel of :mod:`tio._inversion_jit` when numba is installed.
USE_JIT = True
#: Floor (metres) of the cumulative sigmas used as weights in the velocity fit.
SIGMA_FLOOR = 1e-6


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
    band : int
        Half-bandwidth ``b`` of the normal matrices (longest pair span in
        dates, at least 2 for the smoothing).
    to_band : scipy.sparse.csr_matrix, shape ((b+1)*(N-1), P)
        ``to_band @ w`` gives the lower band of ``C^T diag(w) C`` of a stack of
        pixels (``w`` of shape ``(P, M)``), entry ``[o, j]`` = ``A[j+o, j]``.
    C : scipy.sparse.csr_matrix, shape (P, N-1)
        Design matrix on ``u_1 .. u_{N-1}`` (+1 at the second date, -1 at the
        first unless it is date 0).
    Ct : scipy.sparse.csr_matrix, shape (N-1, P)
        Its transpose.
    E : scipy.sparse.csr_matrix, shape (N, P)
        Incidence: 1 where date ``j`` is one of the two dates of pair ``p``.
    R : ndarray, shape (b+1, N-1)
        Lower band of ``S^T S``, ``S`` the time-aware second difference of the
        cumulative displacement (:func:`smoothing_operator`), ``u_0 = 0``.
    Rs : ndarray, shape (3, N)
        Lower band of ``S^T S`` acting on a whole series ``s_0 .. s_{N-1}``
        (the smoothed series of :func:`augment`).
    """

    n_dates: int
    i1: np.ndarray
    i2: np.ndarray
    t: np.ndarray
    band: int
    to_band: sp.csr_matrix
    C: sp.csr_matrix
    Ct: sp.csr_matrix
    E: sp.csr_matrix
    R: np.ndarray
    Rs: np.ndarray


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
    p = i1.size
    b = int(max(2, (i2 - i1).max(initial=1)))
    b = min(b, max(k - 1, 0))
    pairs = np.arange(p)
    has1 = i1 > 0
    # design on u_1..u_{N-1}
    rows = np.concatenate([pairs, pairs[has1]])
    cols = np.concatenate([i2 - 1, i1[has1] - 1])
    vals = np.concatenate([np.ones(p), -np.ones(has1.sum())])
    C = sp.csr_matrix((vals, (rows, cols)), shape=(p, k))
    # band of C^T diag(w) C: diagonal at i2-1 and i1-1, off-diagonal -1 at
    # (row i2-1, column i1-1), i.e. band offset i2-i1 in column i1-1.
    brow = np.concatenate(
        [0 * k + (i2 - 1), 0 * k + (i1[has1] - 1), (i2 - i1)[has1] * k + (i1[has1] - 1)]
    )
    bcol = np.concatenate([pairs, pairs[has1], pairs[has1]])
    bval = np.concatenate([np.ones(p), np.ones(has1.sum()), -np.ones(has1.sum())])
    to_band = sp.csr_matrix((bval, (brow, bcol)), shape=((b + 1) * k, p))
    E = sp.csr_matrix(
        (np.ones(2 * p), (np.concatenate([i1, i2]), np.concatenate([pairs, pairs]))),
        shape=(n, p),
    )
    S = smoothing_operator(t)  # (N-2, N-1) on the increments
    Du = (np.eye(n, k=1) - np.eye(n))[:k]  # x = Du u, (N-1, N)
    Sfull = S @ Du  # on u_0..u_{N-1}
    Su = Sfull[:, 1:]  # on u_1..u_{N-1}
    Rd = Su.T @ Su
    R = np.zeros((b + 1, k))
    for o in range(b + 1):
        R[o, : k - o] = np.diagonal(Rd, -o)
    Rf = Sfull.T @ Sfull
    Rs = np.zeros((3, n))
    for o in range(min(3, n)):
        Rs[o, : n - o] = np.diagonal(Rf, -o)
    return Network(n, i1, i2, t, b, to_band, C, C.T.tocsr(), E, R, Rs)


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
    v = np.asarray(values)
    if not np.issubdtype(v.dtype, np.floating):
        v = v.astype(np.float64)
    v = v.ravel()
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


def pair_leverage(i1, i2, n_dates, w) -> np.ndarray:
    """Leverage ``h_p`` of each pair in the weighted least-squares fit of a network.

    ``h_p = w_p g_p^T (G^T W G)^+ g_p``, the diagonal of the hat matrix, with
    ``G`` the design on the increments (a pseudo-inverse where the network is
    disconnected). A pair that alone sets a date has ``h = 1``; the mean is
    ``rank / P``. The expected squared residual of a pair of variance
    ``s**2`` is ``s**2 (1 - h)``.
    """
    i1 = np.asarray(i1)
    i2 = np.asarray(i2)
    w = np.asarray(w, np.float64)
    steps = np.arange(n_dates - 1)
    G = ((steps >= i1[:, None]) & (steps < i2[:, None])).astype(np.float64)
    N = G.T @ (G * w[:, None])
    return np.einsum("pi,ij,pj->p", G, np.linalg.pinv(N, hermitian=True), G) * w


def baseline_weights(days, mode: str) -> np.ndarray:
    """Pair weights from the temporal baseline (GDM-OPT's three choices).

    ``"none"``: 1. ``"short"``: ``median(days) / days`` (short pairs, less
    decorrelated, count more). ``"long"``: ``days / median(days)`` (long
    pairs, larger signal for the same matching error, count more).
    """
    days = np.asarray(days, dtype=np.float64)
    if mode == "none":
        return np.ones_like(days)
    ratio = days / np.median(days)
    if mode == "short":
        return 1.0 / ratio
    if mode == "long":
        return ratio
    raise ValueError(f"unknown baseline weighting {mode!r}")


def connected_components(valid, i1, i2, n_dates) -> np.ndarray:
    """Connected components of the date graph of every pixel.

    Nodes are dates, edges are the pairs valid at the pixel. A date without
    any valid pair is its own component.

    Parameters
    ----------
    valid : ndarray of bool, shape (M, P)
    i1, i2 : ndarray of int, shape (P,)
    n_dates : int

    Returns
    -------
    labels : ndarray of int32, shape (M, N)
        Label of each date = the index of the earliest date of its component.
    """
    return _components(np.ascontiguousarray(np.asarray(valid, dtype=bool).T), i1, i2, n_dates).T


def _components(used, i1, i2, n_dates) -> np.ndarray:
    """:func:`connected_components` on pixel-last arrays: ``used`` (P, M) -> (N, M).

    Min-label propagation, vectorised over pixels; the Python loops run over
    pairs and sweeps (each sweep, forward then backward over the pairs,
    propagates labels along any chain of pairs).
    """
    p, m = used.shape
    labels = np.tile(np.arange(n_dates, dtype=np.int32)[:, None], (1, m))
    order = np.argsort(i1, kind="stable")
    order = np.concatenate([order, order[::-1]])
    for _ in range(n_dates + 1):
        changed = False
        for q in order:
            a = labels[i1[q]]
            b = labels[i2[q]]
            diff = used[q] & (a != b)
            if diff.any():
                low = np.minimum(a, b)
                np.copyto(a, low, where=diff)
                np.copyto(b, low, where=diff)
                changed = True
        if not changed:
            break
    # Min-label propagation leaves the minimum of each component everywhere in it.
    return labels


# --------------------------------------------------------------------------- banded algebra
_COMBOS: dict[int, tuple] = {}
_GATHER: dict[int, tuple] = {}


def _combos(nb):
    """Index arrays of the trailing update of one Cholesky column (``nb`` below)."""
    if nb not in _COMBOS:
        o1, o2 = np.triu_indices(nb)  # o1 <= o2, 0-based offsets below the pivot
        _COMBOS[nb] = (o2 - o1, o1 + 1, o1, o2)
    return _COMBOS[nb]


def _gather(nb):
    """Band coordinates of the ``nb x nb`` block below-right of a pivot."""
    if nb not in _GATHER:
        k, i = np.meshgrid(np.arange(nb), np.arange(nb), indexing="ij")
        _GATHER[nb] = (np.abs(k - i), np.minimum(k, i) + 1)
    return _GATHER[nb]


def band_cholesky(A, rtol=PIVOT_RTOL):
    """Cholesky factorisation ``A = L L^T`` of a stack of banded SPD matrices, in place.

    Parameters
    ----------
    A : ndarray, shape (b+1, K, M)
        Lower band, ``A[o, j, m] = A_m[j+o, j]`` (entries beyond the matrix are 0).
        Overwritten by the band of ``L``.
    rtol : float
        A pivot below ``rtol`` times the largest diagonal entry of the matrix
        marks it singular.

    Returns
    -------
    ok : ndarray of bool, shape (M,)
        False where the matrix is singular (its ``L`` is then meaningless but
        finite: the failing column is set to an infinite pivot).
    """
    bp1, k, m = A.shape
    b = bp1 - 1
    floor = rtol * np.maximum(A[0].max(axis=0), 0.0)
    ok = np.ones(m, dtype=bool)
    for j in range(k):
        piv = A[0, j]
        good = piv > floor
        if not good.all():
            ok &= good
            piv = np.where(good, piv, np.inf)
        d = np.sqrt(piv)
        A[0, j] = d
        nb = min(b, k - 1 - j)
        if nb:
            col = A[1 : nb + 1, j] / d
            A[1 : nb + 1, j] = col
            dd, jo, a1, a2 = _combos(nb)
            A[dd, j + jo] -= col[a1] * col[a2]
    return ok


def band_solve(L, rhs):
    """Solve ``L L^T x = rhs`` for a stack of banded Cholesky factors.

    ``L`` (b+1, K, M) from :func:`band_cholesky`; ``rhs`` (K, M). Returns x (K, M).
    """
    bp1, k, _ = L.shape
    b = bp1 - 1
    y = np.array(rhs, dtype=np.float64, copy=True)
    for j in range(k):
        y[j] /= L[0, j]
        nb = min(b, k - 1 - j)
        if nb:
            y[j + 1 : j + nb + 1] -= L[1 : nb + 1, j] * y[j]
    for j in range(k - 1, -1, -1):
        nb = min(b, k - 1 - j)
        if nb:
            y[j] -= np.einsum("im,im->m", L[1 : nb + 1, j], y[j + 1 : j + nb + 1])
        y[j] /= L[0, j]
    return y


def band_inverse_diagonal(L):
    """Diagonal of ``(L L^T)^-1`` for a stack of banded Cholesky factors, (K, M)."""
    return band_inverse(L)[0]


def band_inverse(L):
    """Band of ``(L L^T)^-1`` for a stack of banded Cholesky factors, (b+1, K, M).

    Takahashi's recurrence: the entries of the inverse ``Z`` inside the band
    are computed from the last column backwards,
    ``Z[j, i] = (delta_ij / L[j, j] - sum_{k > j} L[k, j] Z[k, i]) / L[j, j]``,
    which needs only entries of ``Z`` inside the band.
    """
    bp1, k, m = L.shape
    b = bp1 - 1
    Z = np.zeros((bp1, k, m))
    for j in range(k - 1, -1, -1):
        ljj = L[0, j]
        nb = min(b, k - 1 - j)
        if nb:
            lc = L[1 : nb + 1, j]
            oo, jo = _gather(nb)
            zsub = Z[oo, j + jo]  # (nb, nb, M): Z[j+1+kk, j+1+ii]
            zji = -np.einsum("km,kim->im", lc, zsub) / ljj
            Z[1 : nb + 1, j] = zji
            Z[0, j] = (1.0 / ljj - np.einsum("km,km->m", lc, zji)) / ljj
        else:
            Z[0, j] = 1.0 / ljj**2
    return Z


def band_to_dense(Ab) -> np.ndarray:
    """Dense ``(M, K, K)`` symmetric matrices from a lower band (tests, debugging)."""
    bp1, k, m = Ab.shape
    A = np.zeros((m, k, k))
    for o in range(bp1):
        j = np.arange(k - o)
        A[:, j + o, j] = Ab[o, : k - o].T
        A[:, j, j + o] = Ab[o, : k - o].T
    return A


# --------------------------------------------------------------------------- per component
def _normalised(w, n_used):
    """Weights scaled to a mean of 1 over the used pairs of each pixel."""
    mean = w.sum(axis=0) / np.maximum(n_used, 1)
    return w / np.where(mean > 0, mean, 1.0)


def _band_system(net, wn, dz):
    k = net.n_dates - 1
    A = np.asarray(net.to_band @ wn).reshape(net.band + 1, k, wn.shape[1])
    rhs = np.asarray(net.Ct @ (wn * dz))
    return A, rhs


def _tie(net, A, used, gamma2, weight):
    """Make the systems of disconnected pixels solvable; returns (A, labels).

    Labels the sub-networks of each pixel. ``gamma2 > 0``: add
    ``weight * S^T S`` (unused when the values come from :func:`augment`).
    ``gamma2 == 0``: pin the first date of every sub-network that does not
    hold date 0 (:data:`ANCHOR_WEIGHT`), so that each sub-network is solved
    relative to its first date.
    """
    labels = _components(used, net.i1, net.i2, net.n_dates)
    A = A.copy()
    if gamma2 > 0:
        A += weight * net.R[:, :, None]
    else:
        roots = labels[1:] == np.arange(1, net.n_dates)[:, None]
        A[0] += ANCHOR_WEIGHT * roots
    return A, labels


def augment(net, A, rhs, gamma2, tie):
    """The system of disconnected pixels with NSBAS's smoothed series.

    Unknowns, interleaved by date: ``s_0, u_1, s_1, u_2, ..., s_{N-1}``
    (``2N - 1``); ``u`` the cumulative displacement (``u_0 = 0``), ``s`` a
    smoothed series tied to it by rows ``sqrt(tie) (u_j - s_j) = 0`` and
    penalised by ``sqrt(gamma2) S s = 0`` (``S`` the time-aware second
    difference). The offsets between sub-networks are those that let one
    smooth series follow the whole record, not just the intervals next to
    the gap. ``A`` (b+1, N-1, M) and ``rhs`` (N-1, M) are the data part.

    Returns the band ``(2b+1, 2N-1, M)`` and right-hand side ``(2N-1, M)``.
    """
    b1, k, m = A.shape
    n = k + 1
    A2 = np.zeros((2 * (b1 - 1) + 1, 2 * n - 1, m))
    for o in range(b1):
        A2[2 * o, 1 : 2 * k : 2] = A[o]
    rhs2 = np.zeros((2 * n - 1, m))
    rhs2[1::2] = rhs
    A2[0] += tie  # the s_j and u_j diagonals (u_0 = 0 is not an unknown)
    A2[1, 1::2] -= tie  # (s_j, u_j) below u_j
    for o in range(3):
        if 2 * o < A2.shape[0]:
            A2[2 * o, 0::2] += gamma2 * net.Rs[o][:, None]
    return A2, rhs2


def _solve_component(net, w, dz, gamma2, lam=0.0):
    """One weighted least-squares solution of every pixel of a block.

    ``lam`` (scalar or (M,)) times ``S^T S`` is added to the normal matrix
    (temporal regularisation; 0: none). Returns ``u`` (N, M) with
    ``u[0] = 0``, the Cholesky factor ``L``, ``ok`` and, for the pixels whose
    system is singular (index ``disc``: the used pairs leave the network
    disconnected and nothing ties it), their date labels and the band matrix
    without the tie (to build the covariance).
    """
    used = w > 0
    wn = _normalised(w, used.sum(axis=0))
    A, rhs = _band_system(net, wn, dz)
    if np.any(lam):
        A += net.R[:, :, None] * np.broadcast_to(lam, (w.shape[1],))[None, None, :]
    L = A.copy()
    ok = band_cholesky(L)
    disc = np.flatnonzero(~ok)
    labels = None
    u = np.zeros((net.n_dates, w.shape[1]))
    u[1:] = band_solve(L, rhs)
    if disc.size:
        Ad, labels = _tie(net, A[:, :, disc], used[:, disc], gamma2, LIMIT_WEIGHT)
        if gamma2 > 0:
            scale = LIMIT_WEIGHT / TIE_WEIGHT
            A2, rhs2 = augment(net, A[:, :, disc], rhs[:, disc], scale * gamma2, LIMIT_WEIGHT)
            ok[disc] = band_cholesky(A2)
            u[1:, disc] = band_solve(A2, rhs2)[1::2]
        else:
            ok[disc] = band_cholesky(Ad)
            L[:, :, disc] = Ad
            u[1:, disc] = band_solve(Ad, rhs[:, disc])
        A = A[:, :, disc]
    return u, L, ok, wn, used, disc, labels, A


def _largest(labels):
    """Label of the largest sub-network of each pixel (ties: the earliest), (M,)."""
    n, m = labels.shape
    flat = labels + n * np.arange(m)[None, :]
    sizes = np.bincount(flat.T.ravel(), minlength=m * n).reshape(m, n)
    return sizes.argmax(axis=1)


def _invert_component(
    net, d, valid, w0, *, n_iter, scale, gross, gamma2, lam=0.0, lam_final=False, other=None
):
    """Robust weighted least squares of one component for a block of pixels.

    ``d``, ``valid``, ``w0`` are (P, M). Returns a dict of pixel-last arrays:
    ``u``, ``sigma`` (N, M), ``r`` (P, M), ``outlier`` (P, M), ``ok`` (M,),
    ``smoothed`` (N, M). Runs the compiled kernel of
    :mod:`tio._inversion_jit` when numba is installed (and :data:`USE_JIT`),
    else :func:`_invert_component_numpy`; both give the same results.

    ``other = (d_ns, w0_ns)``: ``d`` and ``w0`` are EW, and both components
    are inverted with joint outliers (:func:`_invert_joint`); the results
    then have ``2 M`` columns, ``[EW | NS]``.
    """
    if not (USE_JIT and _jit is not None):
        partner = None
        if other is not None:  # both components side by side, [EW | NS]
            p, m = d.shape
            partner = np.concatenate([np.arange(m, 2 * m), np.arange(m)])
            d = np.concatenate([d, other[0]], axis=1)
            valid = np.concatenate([valid, valid], axis=1)
            w0 = np.concatenate([np.broadcast_to(w, (p, m)) for w in (w0, other[1])], axis=1)
        return _invert_component_numpy(
            net,
            d,
            valid,
            w0,
            n_iter=n_iter,
            scale=scale,
            gross=gross,
            gamma2=gamma2,
            lam=lam,
            lam_final=lam_final,
            partner=partner,
        )
    d2, w02 = (np.empty((d.shape[0], 0)), np.ones((d.shape[0], 1))) if other is None else other
    u, var, s0sq, r, outlier, smoothed, ok = _jit.invert_component(
        np.ascontiguousarray(d, dtype=np.float64),
        np.ascontiguousarray(d2, dtype=np.float64),
        np.ascontiguousarray(valid, dtype=bool),
        _weights_2d(w0, d.shape),
        _weights_2d(w02, d.shape),
        net.i1.astype(np.int64),
        net.i2.astype(np.int64),
        net.n_dates,
        net.band,
        np.ascontiguousarray(net.R.T),
        np.ascontiguousarray(net.Rs.T),
        int(n_iter),
        float(scale),
        float(gross),
        float(gamma2),
        PIVOT_RTOL,
        LIMIT_WEIGHT,
        ANCHOR_WEIGHT,
        TIE_WEIGHT,
        float(lam),
        bool(lam_final),
        other is not None,
    )
    with np.errstate(invalid="ignore"):
        sigma = np.sqrt(np.clip(var * s0sq[None, :], 0.0, None))
    return {"u": u, "sigma": sigma, "r": r, "outlier": outlier, "ok": ok, "smoothed": smoothed}


def _invert_joint(net, ew, ns, valid, w0_ew, w0_ns, **kw):
    """Both components of a block of pixels with joint gross-outlier rejection.

    The re-weighting passes of EW and NS run side by side and a pair's new
    weight reads the larger of its two residuals (deletion residuals in
    regularised passes); in the last one, a pair whose residual exceeds the
    gross-outlier threshold in either component gets zero weight in both, so
    both final solutions are computed without it. ``ew``, ``ns``, ``valid``
    (P, M); ``w0_ew``, ``w0_ns`` (P, M) or (P, 1). Returns the dicts of
    :func:`_invert_component` of EW and NS.
    """
    m = valid.shape[1]
    res = _invert_component(net, ew, valid, w0_ew, other=(ns, w0_ns), **kw)
    return tuple({k: v[..., sl] for k, v in res.items()} for sl in (slice(0, m), slice(m, None)))


def _deletion_residuals(net, L, wn, r, ok):
    """Residuals ``r / (1 - h)`` (``h`` the leverage of each pair) where ``ok``.

    The residual of each pair to the solution of all the others: for a pair
    that alone sets a date, the prediction of the regularisation from the
    dates around it; elsewhere, mostly that of the other pairs. Pairs not
    used (zero weight) keep ``r``, which already is that.
    """
    Z = band_inverse(L)
    a, c = net.i1 - 1, net.i2 - 1
    q = Z[0, c]
    has = a >= 0
    q[has] += Z[0, a[has]] - 2.0 * Z[(c - a)[has], a[has]]
    h = np.where(ok[None, :], wn * q, 0.0)
    return r / np.maximum(1.0 - h, MIN_FREEDOM)


def _weights_2d(w0, shape):
    """A priori weights for the kernel: (P, 1) when one per pair, else (P, M)."""
    w0 = np.asarray(w0, dtype=np.float64)
    if w0.ndim == 1:
        w0 = w0[:, None]
    if w0.shape != (shape[0], 1):
        w0 = np.broadcast_to(w0, shape)
    return np.ascontiguousarray(w0)


def _invert_component_numpy(
    net, d, valid, w0, *, n_iter, scale, gross, gamma2, lam=0.0, lam_final=False, partner=None
):
    """Robust weighted least squares of one component for a block of pixels (numpy).

    ``d``, ``valid``, ``w0`` are (P, M). Returns a dict of pixel-last arrays.
    ``partner`` (M,): column ``partner[j]`` holds the other component of the
    pixel of column ``j`` (same valid pairs); a pair rejected as a gross
    outlier in either is rejected in both.

    Temporal regularisation: ``lam * S^T S`` (``S`` the time-aware second
    difference of the cumulative displacement, :func:`smoothing_operator`)
    is added to the normal matrix of every re-weighting pass, so that a pair
    that alone sets an increment gets a large residual where it makes an
    implausible jump, and to the final solution too if ``lam_final``. In the
    final solution, the sub-networks the used pairs leave are then tied by
    the regularisation (flagged ``smoothed``), except with ``gamma2 == 0``,
    where such pixels are solved without it (dates outside the largest
    sub-network NaN).
    """
    dz = np.where(valid, d, 0.0)
    w0 = np.where(valid, w0, 0.0)
    w = w0
    outlier = np.zeros_like(valid)
    m = d.shape[1]
    n = net.n_dates
    reg_disc = np.zeros(m, dtype=bool)
    for it in range(n_iter + 1):
        lam_it = lam if it < n_iter else 0.0
        if lam > 0 and it == n_iter and lam_final:
            labels_all = _components(w > 0, net.i1, net.i2, n)
            n_comp_all = (labels_all == np.arange(n)[:, None]).sum(axis=0)
            split = n_comp_all > 1
            lam_it = np.where(split & (gamma2 <= 0), 0.0, lam)
            reg_disc = split & (lam_it > 0)
        u, L, ok, wn, used, disc, labels, A_disc = _solve_component(net, w, dz, gamma2, lam_it)
        r = dz - np.asarray(net.C @ u[1:])
        if it < n_iter and np.any(lam_it):
            connected = np.ones(m, dtype=bool)
            connected[disc] = False
            r = _deletion_residuals(net, L, wn, r, connected)
        if it < n_iter:
            # gross outliers are rejected in the last pass only, from a solution
            # already re-weighted (rejecting on the first, plain solution can
            # drop good pairs that a large outlier pulled away)
            ra = np.abs(r)
            if partner is not None:  # both components of a pixel: the larger residual
                ra = np.maximum(ra, ra[:, partner])
            outlier = valid & (ra > gross) & (it == n_iter - 1)
            w = w0 / (scale**2 + ra**2)
            w[outlier] = 0.0
    n_used = used.sum(axis=0)
    n_comp = np.ones(m, dtype=np.int64)
    smoothed = np.zeros((n, m), dtype=bool)
    var = np.zeros((n, m))
    var[1:] = band_inverse_diagonal(L)
    reg_disc[disc] = False
    if reg_disc.any():  # tied by the regularisation: flag, keep the values
        lab = labels_all[:, reg_disc]
        n_comp[reg_disc] = n_comp_all[reg_disc]
        smoothed[:, reg_disc] = lab != _largest(lab)[None, :]
    if disc.size:
        is_root = labels == np.arange(n)[:, None]
        n_comp[disc] = is_root.sum(axis=0)
        largest = _largest(labels)
        smoothed[:, disc] = labels != largest[None, :]
        if gamma2 > 0:
            Ag, _ = augment(net, A_disc, np.zeros(A_disc.shape[1:]), gamma2, TIE_WEIGHT)
            ok[disc] &= band_cholesky(Ag)
            var[1:, disc] = band_inverse_diagonal(Ag)[1::2]
        else:
            ii = np.arange(disc.size)
            ud = u[:, disc]
            ud -= ud[largest, ii][None, :]
            vd = var[:, disc]
            vd[largest, ii] = 0.0
            ud[smoothed[:, disc]] = np.nan
            vd[smoothed[:, disc]] = np.nan
            u[:, disc] = ud
            var[:, disc] = vd
    rank = n - n_comp
    wrss = np.where(used, wn * r**2, 0.0).sum(axis=0)
    dof = n_used - rank
    mean_w0 = np.where(used, w0, 0.0).sum(axis=0) / np.maximum(n_used, 1)
    prior = 1.0 / np.where(mean_w0 > 0, mean_w0, 1.0)
    s0sq = np.where(dof > 0, wrss / np.maximum(dof, 1), prior)
    sigma = np.sqrt(np.clip(var * s0sq[None, :], 0.0, None))
    return {
        "u": u,
        "sigma": sigma,
        "r": np.where(valid, r, np.nan),
        "outlier": outlier,
        "ok": ok & np.isfinite(u).any(axis=0),
        "smoothed": smoothed,
    }


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
    regularisation=0.0,
    regularise_final=True,
    residuals=True,
    joint_outliers=True,
):
    """Invert a block of pixels, both components (pixel-last arrays).

    Parameters
    ----------
    net : Network
    ew, ns : ndarray, shape (P, M)
        Pair displacements of each pixel (metres).
    valid : ndarray of bool, shape (P, M)
        Pairs usable at each pixel.
    w0_ew, w0_ns : ndarray, shape (P, M) (or broadcastable)
        A priori weights of each pair at each pixel.
    min_valid : int
        Pixels with fewer valid pairs are not inverted.
    residual_scale, gross_outlier, reweight_iterations, smoothing_gamma2
        See :func:`tio.inversion.invert`.
    regularisation : float
        Weight ``lambda`` of the temporal regularisation ``lambda * S^T S``
        added to the normal matrices (0: none).
    regularise_final : bool
        Regularise the final solution too (else only the re-weighting passes).
    residuals : bool
        Return the residual of every pair (``res_c``, (P, M)).
    joint_outliers : bool
        Re-weight each pair from the larger of its EW and NS residuals, so
        that a pair rejected as a gross outlier in one component is rejected
        in the other too (:func:`_invert_joint`).

    Returns
    -------
    dict
        ``inverted`` (M,) bool; ``n_valid`` (M,); ``smoothed`` (N, M) bool
        (a date outside the largest sub-network of the EW or the NS network
        of the pixel); and for each component ``c`` in ``("ew", "ns")``:
        ``cum_c`` and ``sigma_c`` (N, M), ``rms_date_c`` (N, M), ``vel_c`` and
        ``vel_sigma_c`` (M,), ``n_out_c`` (M,), ``sum_sq_c`` (P,) (sum of the
        squared residuals of each pair over the inverted pixels), ``res_c``
        (P, M) if ``residuals``; plus ``count`` (P,) the number of inverted
        pixels where each pair is valid. NaN / False / 0 where a pixel is not
        inverted.

    Notes
    -----
    Each re-weighting pass recomputes the weights of every valid pair from its
    residual to the previous solution, ``w0 / (s**2 + r**2)``, and gives zero
    weight to pairs with ``|r| > gross_outlier``. Where the used pairs leave
    several sub-networks (connected components of the date graph: a date
    whose pairs are all invalid or rejected is one on its own), the data fix
    everything inside each sub-network and NSBAS's smoothed series
    (:func:`augment`: tied to ``u`` with weight :data:`TIE_WEIGHT`, its
    second difference penalised with ``smoothing_gamma2``), in the limit of
    a vanishing weight (:data:`LIMIT_WEIGHT`), sets the offsets between them;
    the covariance is that of the augmented system with its real weights,
    ``s0^2`` times the inverse of its normal matrix. With
    ``smoothing_gamma2 == 0`` the dates outside the largest sub-network are
    NaN and the series is relative to the first date of that sub-network.
    """
    p, m = valid.shape
    n = net.n_dates
    n_valid = valid.sum(axis=0)
    out = {
        "n_valid": n_valid,
        "inverted": np.zeros(m, dtype=bool),
        "smoothed": np.zeros((n, m), dtype=bool),
        "count": np.zeros(p),
    }
    for c in ("ew", "ns"):
        out[f"cum_{c}"] = np.full((n, m), np.nan)
        out[f"sigma_{c}"] = np.full((n, m), np.nan)
        out[f"rms_date_{c}"] = np.full((n, m), np.nan)
        if residuals:
            out[f"res_{c}"] = np.full((p, m), np.nan)
        out[f"vel_{c}"] = np.full(m, np.nan)
        out[f"vel_sigma_{c}"] = np.full(m, np.nan)
        out[f"n_out_{c}"] = np.zeros(m, dtype=np.int64)
        out[f"sum_sq_{c}"] = np.zeros(p)

    todo = np.flatnonzero(n_valid >= max(min_valid, 1))
    if todo.size == 0:
        return out
    every = todo.size == m  # no copies of the (P, M) arrays then

    def take(a):
        a = np.asarray(a)
        if a.ndim == 2 and a.shape[1] == 1:  # one weight per pair
            return a
        a = np.broadcast_to(a, valid.shape)
        return a if every else a[:, todo]

    v = take(valid)
    results = {}
    ok_all = np.ones(todo.size, dtype=bool)
    smoothed = np.zeros((n, todo.size), dtype=bool)
    joint = joint_outliers and reweight_iterations > 0
    opts = {
        "scale": residual_scale,
        "gross": gross_outlier,
        "gamma2": smoothing_gamma2,
        "lam": regularisation,
        "lam_final": regularise_final,
    }
    if joint:
        results["ew"], results["ns"] = _invert_joint(
            net,
            take(ew),
            take(ns),
            v,
            take(w0_ew),
            take(w0_ns),
            n_iter=reweight_iterations,
            **opts,
        )
    else:
        for c, d, w0 in (("ew", ew, w0_ew), ("ns", ns, w0_ns)):
            results[c] = _invert_component(
                net, take(d), v, take(w0), n_iter=reweight_iterations, **opts
            )
    for res in results.values():
        ok_all &= res["ok"]
        smoothed |= res["smoothed"]

    whole = every and ok_all.all()  # every pixel of the block: no index copies

    def sel(a):
        return a if ok_all.all() else a[:, ok_all]

    def put(key, value):
        if whole:
            out[key] = value
        else:
            out[key][..., idx] = value

    idx = todo[ok_all]
    out["inverted"][idx] = True
    put("smoothed", sel(smoothed))
    first = True
    for c, res in results.items():
        u, sigma, r = sel(res["u"]), sel(res["sigma"]), sel(res["r"])
        put(f"cum_{c}", u)
        put(f"sigma_{c}", sigma)
        if residuals:
            put(f"res_{c}", r)
        out[f"n_out_{c}"][idx] = sel(res["outlier"]).sum(axis=0)
        ss_date, count, ss_pair, n_pair = _residual_sums(net, r)
        if first:  # r is finite exactly at the valid pairs of the inverted pixels
            out["count"] = n_pair
            first = False
        out[f"sum_sq_{c}"] = ss_pair
        with np.errstate(invalid="ignore", divide="ignore"):
            put(f"rms_date_{c}", np.where(count > 0, np.sqrt(ss_date / count), np.nan))
        if USE_JIT and _jit is not None:
            vel, vel_sigma = _jit.linear_velocity(
                net.t, np.ascontiguousarray(u), np.ascontiguousarray(sigma), SIGMA_FLOOR
            )
        else:
            vel, vel_sigma = linear_velocity(net.t, u.T, sigma.T)
        out[f"vel_{c}"][idx] = vel
        out[f"vel_sigma_{c}"][idx] = vel_sigma
    return out


def _residual_sums(net, r):
    """Sums of the squared residuals ``r`` (P, M; NaN where a pair is not valid).

    Returns, per date and pixel, the sum over the valid pairs that have the
    date as one of their two dates and their number, (N, M) each; per pair,
    the sum over the pixels and their number, (P,) each.
    """
    if USE_JIT and _jit is not None:
        return _jit.residual_sums(
            np.ascontiguousarray(r, dtype=np.float64),
            net.i1.astype(np.int64),
            net.i2.astype(np.int64),
            net.n_dates,
        )
    fin = np.isfinite(r)
    sq = np.where(fin, r, 0.0) ** 2
    return (
        np.asarray(net.E @ sq),
        np.asarray(net.E @ fin.astype(np.float64)),
        sq.sum(axis=1),
        fin.sum(axis=1).astype(np.float64),
    )


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
