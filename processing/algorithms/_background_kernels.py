"""Compiled loops of :mod:`processing.algorithms.background` (numba).

* :func:`bin_meanclip` is MEANCLIP of every bin, read in place from the image
  (no padded or per-bin copies of the plane): the quartiles come from
  selections among the bin's usable values (no sort), the clipping passes keep
  the residuals about the median that lie within the window, with the float32
  residuals and float64 window bounds of the sort-based version it replaces.
* :func:`hermite_rows` evaluates the piecewise-cubic Hermite interpolant along
  y for every image row from the two nodes around it (the numpy version
  multiplied mostly-zero weight matrices).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ._measure_kernels import select_ranks

__all__: list[str] = []  # private helpers of processing.algorithms.background

_OPTS = {"cache": True, "nogil": True, "error_model": "numpy"}


@numba.njit(**_OPTS)
def _quartiles(a, count, work, out):
    """Quartiles of ``a[:count]`` as the sorted-row version computed them.

    ``v[lo] + (pos - lo) * (v[hi] - v[lo])`` with ``pos = p (count - 1)`` for
    p = 1/4, 1/2, 3/4, the difference taken in float32.
    """
    last = max(count - 1, 0)
    ranks = np.empty(6, dtype=np.int64)
    pos = np.empty(3)
    for q in range(3):
        pos[q] = (0.25 * (q + 1)) * last
        lo = math.floor(pos[q])
        ranks[2 * q] = lo
        ranks[2 * q + 1] = min(lo + 1, last)
    values = np.empty(6, dtype=a.dtype)
    select_ranks(a, count, ranks, values, work)
    for q in range(3):
        v_lo, v_hi = values[2 * q], values[2 * q + 1]
        out[q] = np.float64(v_lo) + (pos[q] - ranks[2 * q]) * np.float64(np.float32(v_hi - v_lo))


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def _window_sums(r, n, lo, hi):
    """Count, sum and sum of float32 squares of the residuals within ``[lo, hi]`` (float64 bounds).

    Branch-free so that it vectorises ("reassoc": summation order only).
    """
    used = 0
    s1 = 0.0
    s2 = 0.0
    for k in range(n):
        v = r[k]
        inside = (np.float64(v) >= lo) & (np.float64(v) <= hi)
        w = np.float64(v) if inside else 0.0
        s1 += w
        s2 += np.float64(v * v) if inside else 0.0
        used += inside
    return used, s1, s2


@numba.njit(**_OPTS)
def bin_meanclip(image, mask, ignored, bh, bw, n_sigma, iqr_to_sigma, n_iter, mean, n_good):
    """Clipped mean and pixels used of every ``bh x bw`` bin (the last ones may be short).

    A pixel counts when its float32 value is finite and it has none of the
    ``ignored`` bits in ``mask`` (None: no mask).  The first pass is centred on
    the median with half-width ``n_sigma * iqr_to_sigma * IQR``, later ones on
    the previous mean with ``n_sigma`` standard deviations.
    """
    height, width = image.shape
    ny, nx = mean.shape
    buf = np.empty(bh * bw, dtype=np.float32)
    work = np.empty(bh * bw, dtype=np.float32)
    quart = np.empty(3)
    for by in range(ny):
        for bx in range(nx):
            n = 0
            x0, x1 = bx * bw, min((bx + 1) * bw, width)
            for y in range(by * bh, min((by + 1) * bh, height)):
                row = image[y, x0:x1]
                for i in range(x1 - x0):  # branch-free compaction
                    v = np.float32(row[i])
                    ok = math.isfinite(v)
                    if mask is not None:
                        ok = ok & ((mask[y, x0 + i] & ignored) == 0)
                    buf[n] = v
                    n += ok
            if n == 0:
                mean[by, bx] = 0.0
                n_good[by, bx] = 0
                continue
            _quartiles(buf, n, work, quart)
            median = quart[1]
            m32 = np.float32(median)
            for k in range(n):
                buf[k] = buf[k] - m32  # float32 residuals about the median
            center = 0.0
            hwidth = n_sigma * iqr_to_sigma * (quart[2] - quart[0])
            mu = 0.0
            var = 0.0
            used = 0
            for it in range(n_iter):
                if it > 0:
                    center = mu
                    hwidth = n_sigma * math.sqrt(max(var, 0.0))
                lo = center - hwidth
                hi = center + hwidth
                used, s1, s2 = _window_sums(buf, n, lo, hi)
                mu = s1 / used if used > 0 else center
                var = (s2 / used - mu * mu) * used / (used - 1) if used > 1 else 0.0
            mean[by, bx] = mu + median
            n_good[by, bx] = used


@numba.njit(**_OPTS)
def hermite_rows(k0, w0, k1, w1, j0, v0, j1, v1, values, slopes, out):
    """``out[y] = (w0 V[k0] + w1 V[k1]) + (v0 S[j0] + v1 S[j1])`` in float32, row by row.

    ``(k, w)`` are the (at most two) non-zero value weights of output row ``y``
    and ``(j, v)`` the slope weights (weight 0 for an unused slot).
    """
    ny, nx = out.shape
    for y in range(ny):
        a0, a1, b0, b1 = w0[y], w1[y], v0[y], v1[y]
        va, vb = values[k0[y]], values[k1[y]]
        sa, sb = slopes[j0[y]], slopes[j1[y]]
        row = out[y]
        for x in range(nx):
            row[x] = (a0 * va[x] + a1 * vb[x]) + (b0 * sa[x] + b1 * sb[x])
