"""Compiled passes of :func:`processing.algorithms.stats.clipped_stats` (numba).

The statistics of a 16-Mpixel plane need order statistics (quartiles) and a
few clipped sums.  Instead of copying the usable values and partitioning them
(numpy's percentile), :func:`usable_count` histograms the top bits of the
values' bit patterns (monotone in the value), :func:`order_statistics` gathers
only the values of the bins holding the requested ranks and selects exactly
among them, and :func:`clipped_sums` makes one pass per clipping iteration.
Every pass reads the plane and its mask in place.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ._measure_kernels import _select

__all__: list[str] = []  # private helpers of processing.algorithms.stats

_OPTS = {"cache": True, "nogil": True, "error_model": "numpy"}

@numba.njit(**_OPTS)
def _usable(x, mask, bits, i):
    v = x[i]
    if not math.isfinite(v):
        return False
    return mask is None or (mask[i] & bits) == 0


@numba.njit(**_OPTS)
def _bin(key, sign_bit, shift):
    """Histogram bin of a float's bit pattern, monotone in the float's value."""
    if key & sign_bit:
        key = ~key
    else:
        key = key | sign_bit
    return int(key >> shift)


@numba.njit(**_OPTS)
def usable_count(x, keys, mask, bits, sign_bit, shift, counts):
    """Histogram (``counts``, zeroed) of the usable values' top bits; returns their number.

    Usable: finite, none of ``bits`` in ``mask``.  ``keys`` is ``x`` viewed as
    unsigned integers; the bins are the top bits of its sign-adjusted pattern,
    which orders like the values (no pass for the range is needed).
    """
    n = 0
    for i in range(x.size):
        if _usable(x, mask, bits, i):
            counts[_bin(keys[i], sign_bit, shift)] += 1
            n += 1
    return n


@numba.njit(**_OPTS)
def order_statistics(x, keys, mask, bits, sign_bit, shift, counts, ranks, out):
    """``out[q]`` = the ``ranks[q]``-th smallest usable value (``ranks`` ascending, in range).

    ``counts`` is the histogram of :func:`usable_count`; only the bins holding
    a requested rank are gathered, and the rank is selected exactly within its bin.
    """
    m = ranks.size
    bin_of = np.empty(m, dtype=np.int64)
    within = np.empty(m, dtype=np.int64)
    cum = 0
    b = 0
    for q in range(m):
        while cum + counts[b] <= ranks[q]:
            cum += counts[b]
            b += 1
        bin_of[q] = b
        within[q] = ranks[q] - cum
    slot = np.full(counts.size, -1, dtype=np.int64)
    start = np.zeros(m + 1, dtype=np.int64)
    n_slots = 0
    for q in range(m):
        if slot[bin_of[q]] < 0:
            slot[bin_of[q]] = n_slots
            start[n_slots + 1] = start[n_slots] + counts[bin_of[q]]
            n_slots += 1
    buf = np.empty(start[n_slots], dtype=x.dtype)
    fill = start[:n_slots].copy()
    for i in range(x.size):
        if _usable(x, mask, bits, i):
            s = slot[_bin(keys[i], sign_bit, shift)]
            if s >= 0:
                buf[fill[s]] = x[i]
                fill[s] += 1
    for q in range(m):
        s = slot[bin_of[q]]
        k = start[s] + within[q]
        _select(buf, start[s], start[s + 1], k)
        out[q] = buf[k]


@numba.njit(**_OPTS)
def clipped_sums(x, mask, bits, center, hwidth, shift):
    """Count, sum and sum of squares of ``x - shift`` over usable ``|x - center| <= hwidth``.

    ``center`` and ``hwidth`` have the dtype of ``x`` (the comparison is done
    in it, as numpy does for a float32 array and Python floats); the sums are
    float64.
    """
    n = 0
    s1 = 0.0
    s2 = 0.0
    for i in range(x.size):
        if _usable(x, mask, bits, i):
            v = x[i]
            if abs(v - center) <= hwidth:
                d = np.float64(v) - shift
                s1 += d
                s2 += d * d
                n += 1
    return n, s1, s2
