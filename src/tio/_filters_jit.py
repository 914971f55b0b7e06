"""Compiled (numba) kernel of the normalised median test of :mod:`tio.corrections`.

Same result as the numpy version (``tio.corrections._median_test_numpy``), which
builds a ``(ny, nx, 9)`` copy of the neighbourhoods and takes NaN-aware medians
along it; this one walks the grid once, sorting the (at most 8) valid neighbours
of each offset in place. ``tests/test_corrections.py`` checks that both agree.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _median(buf, n):
    """Median of ``buf[:n]`` (sorted in place by insertion; ``n`` >= 1)."""
    for a in range(1, n):
        v = buf[a]
        b = a - 1
        while b >= 0 and buf[b] > v:
            buf[b + 1] = buf[b]
            b -= 1
        buf[b + 1] = v
    h = n // 2
    if n % 2:
        return buf[h]
    return 0.5 * (buf[h - 1] + buf[h])


@njit(cache=True, nogil=True)
def median_test(ew, ns, eps, threshold):
    """True where an offset fails the 3 x 3 normalised median test (see the caller)."""
    ny, nx = ew.shape
    bad = np.zeros((ny, nx), dtype=np.bool_)
    buf = np.empty(8)
    dev = np.empty(8)
    for i in range(ny):
        for j in range(nx):
            if not (np.isfinite(ew[i, j]) and np.isfinite(ns[i, j])):
                continue
            for c in range(2):
                v = ew if c == 0 else ns
                n = 0
                for di in range(-1, 2):
                    ii = i + di
                    if ii < 0 or ii >= ny:
                        continue
                    for dj in range(-1, 2):
                        jj = j + dj
                        if (di == 0 and dj == 0) or jj < 0 or jj >= nx:
                            continue
                        x = v[ii, jj]
                        if np.isfinite(x):
                            buf[n] = x
                            n += 1
                if n < 3:
                    bad[i, j] = True
                    break
                med = _median(buf, n)
                for k in range(n):
                    dev[k] = abs(buf[k] - med)
                spread = _median(dev, n)
                if abs(v[i, j] - med) / (spread + eps) > threshold:
                    bad[i, j] = True
                    break
    return bad
