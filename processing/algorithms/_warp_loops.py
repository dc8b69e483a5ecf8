"""Per-pixel loops of :mod:`processing.algorithms.warp` (numba, with a numpy fallback).

Kept apart from the public module so that the numba-compiled code and its
numpy twin sit side by side.  Both compute, for every destination pixel with
source position ``(u, v)`` (0-based, in the source array),
``A * sum K I``, ``A**2 * sum K**2 V`` with kernel weights normalised per axis,
the 2x2 bilinear mask OR plus the footprint OR of the ``grow_full_mask`` bits,
and NO_DATA where the footprint leaves the array or meets a NaN.
"""

from __future__ import annotations

import functools

import numpy as np

from store.resample import lanczos_weights

__all__: list[str] = []  # private helpers of processing.algorithms.warp

LUT_SIZE = 1 << 14  # fractional offsets per pixel in the kernel table


@functools.lru_cache(maxsize=4)
def kernel_table(order: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised Lanczos weights (and their squares) for fractions ``k / LUT_SIZE``.

    Shape ``(LUT_SIZE + 1, 2 order)``; each row sums to 1.
    """
    frac = np.arange(LUT_SIZE + 1) / LUT_SIZE
    table = lanczos_weights(frac, order)
    table = np.ascontiguousarray(table / table.sum(axis=1, keepdims=True))
    squared = table * table
    table.flags.writeable = False
    squared.flags.writeable = False
    return table, squared


def warp_chunk_numpy(img, var, msk, xs, ys, area, order, full_bits, nodata):
    """Vectorised gather over the ``2a x 2a`` taps of every pixel in a chunk."""
    ny_s, nx_s = img.shape
    shape = xs.shape
    out_img = np.full(shape, np.nan)
    out_var = np.full(shape, np.inf)
    out_msk = np.full(shape, nodata, dtype=np.int32)
    with np.errstate(invalid="ignore"):
        inside = ((xs >= order - 1) & (xs < nx_s - order)
                  & (ys >= order - 1) & (ys < ny_s - order))
    sel = np.flatnonzero(inside)
    if sel.size == 0:
        return out_img, out_var, out_msk, np.zeros(shape, dtype=bool)
    u, v = xs.ravel()[sel], ys.ravel()[sel]
    iu, iv = np.floor(u).astype(np.intp), np.floor(v).astype(np.intp)
    fu, fv = u - iu, v - iv
    wx = lanczos_weights(fu, order)
    wy = lanczos_weights(fv, order)
    base = (iv - order + 1) * nx_s + (iu - order + 1)
    flat_img = img.ravel()
    flat_var = None if var is None else var.ravel()
    flat_full = None
    if msk is not None and full_bits:
        flat_full = (msk & full_bits).ravel()
    acc = np.zeros(sel.size)
    accv = np.zeros(sel.size)
    mfull = np.zeros(sel.size, dtype=np.int64)
    for b in range(2 * order):
        row = np.zeros(sel.size)
        rowv = np.zeros(sel.size)
        for a in range(2 * order):
            idx = base + (b * nx_s + a)
            row += wx[:, a] * flat_img[idx]
            if flat_var is not None:
                rowv += wx[:, a] ** 2 * flat_var[idx]
            if flat_full is not None:
                mfull |= flat_full[idx]
        acc += wy[:, b] * row
        accv += wy[:, b] ** 2 * rowv
    ksum = wx.sum(axis=1) * wy.sum(axis=1)
    rel = area.ravel()[sel]
    good = np.isfinite(acc)
    value = rel * acc / ksum
    value_var = rel * rel * accv / (ksum * ksum)
    m = mfull
    if msk is not None:
        flat_m = msk.ravel()
        center = iv * nx_s + iu
        m = m | flat_m[center]
        m |= np.where(fu > 0, flat_m[center + 1], 0)
        m |= np.where(fv > 0, flat_m[center + nx_s], 0)
        m |= np.where((fu > 0) & (fv > 0), flat_m[center + nx_s + 1], 0)
    ok = sel[good]
    out_img.ravel()[ok] = value[good]
    out_var.ravel()[ok] = value_var[good]
    out_msk.ravel()[ok] = m[good]
    good_full = np.zeros(shape, dtype=bool)
    good_full.ravel()[ok] = True
    return out_img, out_var, out_msk, good_full


try:  # numba is optional: the numpy path gives the same numbers, ~9x slower
    import numba as _numba
except ImportError:  # pragma: no cover - exercised only without numba
    _numba = None


# The numba loop is specialised for Lanczos-3: with the tap count a compile-time constant
# LLVM unrolls the 6x6 loops (measured 1.5x faster than a runtime order).  Other orders
# use the numpy path.
NUMBA_ORDER = 3
NUMBA_NTAP = 2 * NUMBA_ORDER


def _warp_rows_loop(img, var, msk, win, vx, row_idx, row_w, x_off, y_off, lut, lut2, nodata,
                    out_img, out_var, out_msk, out_good):
    """Per-pixel Lanczos-3 loop, compiled by numba; same arithmetic as :func:`warp_chunk_numpy`.

    ``lut`` holds kernel weights normalised to sum 1 per axis and ``lut2``
    their squares, so ``sum K I / sum K`` and ``sum K^2 V / (sum K)^2`` need
    no per-pixel normalisation.  ``var``, ``msk`` and ``win`` may be None: numba compiles a version per
    combination with the unused branches removed.  ``win`` is the OR of the
    ``grow_full_mask`` bits over each 6x6 window, indexed by the window's
    first pixel.  The transform is interpolated here too: ``vx`` holds (x, y,
    area) interpolated along x at every node row, ``row_idx``/``row_w`` give
    each output row's node rows and weights.  Source pixels are read through
    flat unsigned offsets, which spares LLVM the negative-index handling.
    """
    order = NUMBA_ORDER
    ntap = NUMBA_NTAP
    ny_s, nx_s = img.shape
    h, w = out_img.shape
    nlut = lut.shape[0] - 1
    nk = row_idx.shape[1]
    row_step = np.uintp(nx_s)
    flat = img.ravel()
    flat_v = var.ravel() if var is not None else flat
    flat_m = msk.ravel() if msk is not None else np.zeros(1, np.int32)
    flat_w = win.ravel() if win is not None else np.zeros(1, np.int32)
    for j in range(h):
        for i in range(w):
            u = 0.0
            v = 0.0
            rel = 0.0
            for k in range(nk):
                wk = row_w[j, k]
                r = row_idx[j, k]
                u += wk * vx[0, r, i]
                v += wk * vx[1, r, i]
                rel += wk * vx[2, r, i]
            u -= x_off
            v -= y_off
            # The comparisons are False for NaN, so NaN positions are rejected here too.
            if not (u >= order - 1 and u < nx_s - order and v >= order - 1 and v < ny_s - order):
                out_img[j, i] = np.nan
                if var is not None:
                    out_var[j, i] = np.inf
                out_msk[j, i] = nodata
                out_good[j, i] = False
                continue
            iu = int(u)  # u >= 0 here, so truncation is floor
            iv = int(v)
            fu = u - iu
            fv = v - iv
            lx = np.uintp(fu * nlut + 0.5)
            ly = np.uintp(fv * nlut + 0.5)
            wx = lut[lx]
            wy = lut[ly]
            base = np.uintp((iv - order + 1) * nx_s + (iu - order + 1))
            acc = 0.0
            accv = 0.0
            if var is not None:
                wx2 = lut2[lx]
                wy2 = lut2[ly]
                for b in range(ntap):
                    rb = base + np.uintp(b) * row_step
                    racc = 0.0
                    raccv = 0.0
                    for a in range(ntap):
                        racc += wx[a] * flat[rb + a]
                        raccv += wx2[a] * flat_v[rb + a]
                    acc += wy[b] * racc
                    accv += wy2[b] * raccv
            else:
                for b in range(ntap):
                    rb = base + np.uintp(b) * row_step
                    racc = 0.0
                    for a in range(ntap):
                        racc += wx[a] * flat[rb + a]
                    acc += wy[b] * racc
            if acc != acc:
                out_img[j, i] = np.nan
                if var is not None:
                    out_var[j, i] = np.inf
                out_msk[j, i] = nodata
                out_good[j, i] = False
                continue
            out_img[j, i] = rel * acc
            if var is not None:
                out_var[j, i] = rel * rel * accv
            out_good[j, i] = True
            m = 0
            if win is not None:
                m = flat_w[base]
            if msk is not None:
                c = np.uintp(iv * nx_s + iu)
                m |= flat_m[c]
                if fu > 0.0:
                    m |= flat_m[c + 1]
                if fv > 0.0:
                    m |= flat_m[c + row_step]
                    if fu > 0.0:
                        m |= flat_m[c + row_step + 1]
            out_msk[j, i] = m


warp_rows_numba = (
    _numba.njit(cache=True, nogil=True, fastmath={"contract", "reassoc", "arcp", "nsz"})(
        _warp_rows_loop) if _numba is not None else None)


def window_or(mask: np.ndarray, full_bits: int, n: int) -> np.ndarray:
    """OR of ``mask & full_bits`` over the ``n x n`` window starting at each pixel.

    Done one bit at a time on boolean images (4x less memory traffic than int32).
    """
    out = np.zeros(mask.shape, dtype=np.int32)
    for bit in range(31):
        value = full_bits & (1 << bit)
        if not value:
            continue
        present = (mask & value) != 0
        rows = present.copy()
        for a in range(1, n):
            rows[:, :-a] |= present[:, a:]
        window = rows.copy()
        for b in range(1, n):
            window[:-b, :] |= rows[b:, :]
        out[window] |= value
    return out
