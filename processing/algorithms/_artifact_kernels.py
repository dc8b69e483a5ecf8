"""Compiled per-pixel steps of :mod:`processing.algorithms.artifacts` (numba).

Kept apart from the public module so the orchestration stays readable.  Each
kernel fuses what would otherwise be a dozen numpy passes (and temporaries)
over a block of warps.
"""

from __future__ import annotations

import numba
import numpy as np

__all__: list[str] = []  # private helpers of processing.algorithms.artifacts

_OPTS = {"cache": True, "nogil": True, "parallel": True}


@numba.njit(**_OPTS)
def bin_block(x, v, m, bad, b, out_x, out_v, out_m):
    """Mean of the valid pixels of each ``b x b`` block (valid: finite, no ``bad`` bit).

    A block is usable when at least half of its pixels are valid; its
    variance is ``sum V / n^2`` over them; ``out_m`` is 0 for usable blocks and
    the lowest ``bad`` bit otherwise.  Partial blocks at the far edges count
    only the pixels that exist.  Each input row is streamed once into per-block
    sums (2-3 ns per pixel; a loop over blocks is 5x slower).
    """
    n_in, ny, nx = x.shape
    _, hb, wb = out_x.shape
    flag = bad & -bad
    block_of = np.arange(nx) // b
    for jb in numba.prange(hb):
        s = np.empty(wb)
        sv = np.empty(wb)
        n = np.empty(wb, np.int32)
        rows = min(b, ny - jb * b)
        for k in range(n_in):
            s[:] = 0.0
            sv[:] = 0.0
            n[:] = 0
            for dy in range(rows):
                xr = x[k, jb * b + dy]
                vr = v[k, jb * b + dy]
                mr = m[k, jb * b + dy]
                for i in range(nx):
                    xv = xr[i]
                    vv = vr[i]
                    # x == x is False for NaN; v < inf is False for inf and NaN.
                    if xv == xv and vv < np.inf and (mr[i] & bad) == 0:
                        ib = block_of[i]
                        s[ib] += xv
                        sv[ib] += vv
                        n[ib] += 1
            for ib in range(wb):
                total = rows * min(b, nx - ib * b)
                if n[ib] > 0 and 2 * n[ib] >= total:
                    out_x[k, jb, ib] = s[ib] / n[ib]
                    out_v[k, jb, ib] = sv[ib] / (n[ib] * n[ib])
                    out_m[k, jb, ib] = 0
                else:
                    out_x[k, jb, ib] = np.nan
                    out_v[k, jb, ib] = np.nan
                    out_m[k, jb, ib] = flag


@numba.njit(cache=True, nogil=True)
def loo_residual(x, v, valid, t_img, t_var, t_w, wk, n_sigma, tolerance, resid, diff, other):
    """Residual of one warp against the template of the *other* warps.

    Where the warp was averaged into the template (within ``n_sigma`` of its
    own sigma, and not alone), its contribution is taken out:
    ``other = (W T - w_k x) / (W - w_k)``; elsewhere ``other = T``.  Writes
    ``diff = x - other`` (image units),
    ``resid = diff / sqrt(V_k + V_other + (tolerance * max(other, 0))^2)`` (the
    last term is the PSF-matching error, proportional to the source's
    surface brightness) and ``other``; all three are 0 where ``valid`` is False.
    """
    ny, nx = x.shape
    for j in range(ny):
        for i in range(nx):
            if not valid[j, i]:
                resid[j, i] = 0.0
                diff[j, i] = 0.0
                other[j, i] = 0.0
                continue
            xi = np.float64(x[j, i])
            vi = np.float64(v[j, i])
            t = np.float64(t_img[j, i])
            tv = np.float64(t_var[j, i])
            tw = t_w[j, i]
            o = t
            ov = tv
            if tw > wk and abs(xi - t) <= n_sigma * np.sqrt(vi):
                rest = tw - wk
                o = (tw * t - wk * xi) / rest
                ov = max((tw * tw * tv - wk * wk * vi) / (rest * rest), 0.0)
            d = xi - o
            diff[j, i] = d
            other[j, i] = o
            tol = tolerance * max(o, 0.0)
            total = vi + ov + tol * tol
            resid[j, i] = d / np.sqrt(total) if total > 0 else 0.0
