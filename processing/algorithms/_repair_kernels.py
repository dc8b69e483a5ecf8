"""Compiled pixel loops of :mod:`~processing.algorithms.cosmic_rays` and
:mod:`~processing.algorithms.interpolate` (numba).

Each replaces several full-image numpy temporaries with one pass; the
arithmetic is that of the numpy code (float32 comparisons where it compared
float32 arrays, float64 interpolation), so the results are the same.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__: list[str] = []  # private helpers

_OPTS = {"cache": True, "nogil": True, "error_model": "numpy"}


@numba.njit(**_OPTS)
def usable_and_candidates(image, variance, mask, bad_bits, min_sigma, good):
    """Usable pixels and the cosmic-ray candidates of ``find_cosmic_rays``.

    ``good`` (output, bool) marks pixels whose float32 value and variance are
    finite, the variance positive and (with a mask) none of ``bad_bits`` set.
    Returns the flat indices, in raster order, of the good pixels off the
    outermost rows and columns with ``v > min_sigma * sqrt(var)`` (float32).
    """
    ny, nx = image.shape
    m32 = np.float32(min_sigma)
    # Pre-test in float64 with a margin far above float32 rounding; only pixels
    # passing it get the exact float32 test (and its square root).
    loose = np.float64(m32) * np.float64(m32) * (1.0 - 1e-4)
    out = np.empty(1024, dtype=np.int64)
    maybe = np.empty(nx, dtype=np.bool_)
    n = 0
    for y in range(ny):
        row_v = image[y]
        row_var = variance[y]
        row_good = good[y]
        for x in range(nx):
            v = np.float32(row_v[x])
            var = np.float32(row_var[x])
            ok = math.isfinite(v) & math.isfinite(var) & (var > 0)
            if mask is not None:
                ok = ok & ((mask[y, x] & bad_bits) == 0)
            row_good[x] = ok
            vd = np.float64(v)
            maybe[x] = ok & (vd > 0) & (vd * vd >= loose * np.float64(var))
        if y == 0 or y == ny - 1:
            continue
        for x in range(1, nx - 1):
            if maybe[x]:
                v = np.float32(row_v[x])
                if v > m32 * np.float32(math.sqrt(np.float32(row_var[x]))):
                    if n == out.size:
                        bigger = np.empty(2 * n, dtype=np.int64)
                        bigger[:n] = out
                        out = bigger
                    out[n] = y * nx + x
                    n += 1
    return out[:n].copy()


@numba.njit(**_OPTS)
def _row_bad(image, mask, bad_bits, include_nan, y, out):
    """Bad flags of row ``y``: any of ``bad_bits``, or (``include_nan``) a non-finite value."""
    nx = image.shape[1]
    any_bad = False
    for x in range(nx):
        b = (mask[y, x] & bad_bits) != 0
        if include_nan and not math.isfinite(image[y, x]):
            b = True
        out[x] = b
        any_bad = any_bad or b
    return any_bad


@numba.njit(**_OPTS)
def bad_rows(image, mask, bad_bits, include_nan):
    """Rows holding bad pixels, their number, and whether a bad run touches the left or
    right edge (then the fallback value is needed)."""
    ny, nx = image.shape
    flags = np.empty(nx, dtype=np.bool_)
    rows = np.empty(ny, dtype=np.int64)
    n_rows = 0
    n_bad = 0
    edge = False
    for y in range(ny):
        if _row_bad(image, mask, bad_bits, include_nan, y, flags):
            rows[n_rows] = y
            n_rows += 1
            for x in range(nx):
                n_bad += flags[x]
            edge = edge or flags[0] or flags[nx - 1]
    return rows[:n_rows].copy(), n_bad, edge


@numba.njit(**_OPTS)
def fill_rows(image, mask, bad_bits, include_nan, rows, fallback, flag_bit):
    """Replace the bad pixels of ``rows`` by the line between their nearest good neighbours.

    As the numpy version it replaces: values in float64, ``v_l + t (v_r - v_l)``
    with ``t = (c - l) / (r - l)``; pixels without a good neighbour on both sides
    get ``fallback``.  Every replaced pixel gets ``flag_bit`` in ``mask``.
    """
    nx = image.shape[1]
    bad = np.empty(nx, dtype=np.bool_)
    for y in rows:
        _row_bad(image, mask, bad_bits, include_nan, y, bad)  # before any pixel changes
        left = -1
        x = 0
        while x < nx:
            if not bad[x]:
                left = x
                x += 1
                continue
            end = x  # the run of bad pixels x .. end - 1
            while end < nx and bad[end]:
                end += 1
            if left >= 0 and end < nx:
                vl = np.float64(image[y, left])
                vr = np.float64(image[y, end])
                for c in range(x, end):
                    t = (c - left) / (end - left)
                    image[y, c] = vl + t * (vr - vl)
            else:
                for c in range(x, end):
                    image[y, c] = fallback
            for c in range(x, end):
                mask[y, c] |= flag_bit
            x = end


@numba.njit(**_OPTS)
def prepare_planes_into(image, variance, mask, no_data, out_image, out_variance, out_mask):
    """float32/int32 copies of the planes with unusable pixels repaired, in one pass.

    A pixel whose float32 value or variance is not finite, or whose variance is
    not positive, gets ``no_data`` in the mask, value 0 and variance +inf.
    Returns the number, minimum and maximum of the finite float32 values.
    """
    ny, nx = image.shape
    n = 0
    lo = np.inf
    hi = -np.inf
    for y in range(ny):
        for x in range(nx):
            v = np.float32(image[y, x])
            var = np.float32(variance[y, x])
            m = np.int32(mask[y, x])
            if math.isfinite(v):
                n += 1
                vd = np.float64(v)
                if vd < lo:
                    lo = vd
                if vd > hi:
                    hi = vd
            if not (math.isfinite(v) and math.isfinite(var) and var > 0):
                m |= no_data
                v = np.float32(0.0)
                var = np.float32(np.inf)
            out_image[y, x] = v
            out_variance[y, x] = var
            out_mask[y, x] = m
    return n, lo, hi
