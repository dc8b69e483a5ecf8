"""Compiled pixel-wise stacking of a block of aligned images (MEAN and MEANCLIP).

The same statistics, weights, mask propagation and outputs as
:func:`processing.algorithms.stack.stack_mean` and
:func:`~processing.algorithms.stack.stack_meanclip` (``reference/algorithms.md``
A.1-A.4), computed by numba loops over an ``(N, ny, nx)`` block instead of
numpy passes over ``(N, pixels)`` temporaries.  The coadd assembly calls this on
each subregion; ``stack.py`` remains the readable reference and the tests check
that both agree pixel for pixel.

* MEAN streams through the inputs row by row (each input row read once,
  contiguously) into per-row sums, so it runs near memory speed.
* MEANCLIP gathers the ``N`` values of each pixel into a small buffer, sorts it
  (by ranks, branch-free, up to 32 values; insertion sort beyond) for the median
  and quartiles, then makes ``n_iter`` clipping passes.  Each row of every input
  is first gathered pixel-major, so the per-pixel loops read contiguous memory.
* MEDIAN and ROBUSTMEAN (not afw statistics; templates for the artefact
  finder) sort the same way; ROBUSTMEAN then averages the inputs within
  ``n_sigma`` input standard deviations of the median, which one or two deviant
  inputs cannot move and whose errors stay Gaussian (residuals from a median are
  not: they pile up near zero and have heavy tails relative to their IQR).

Rows are spread over numba's threads (``numba.set_num_threads`` or
``NUMBA_NUM_THREADS`` choose how many).  Measured (CPU time, one thread, shared
2-core machine) on 20 inputs of 1000 x 1000 float32: MEAN 0.09-0.10 s
(~5 ns per input pixel; the numpy reference of ``stack.py`` 2.6 s), MEANCLIP
3 sigma x 2 iterations 0.36 s (~18 ns per input pixel; numpy 2.1 s).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numba
import numpy as np

from store.masks import bits

from .stack import DEFAULT_BAD_MASK_PLANES, StackResult, rejected_mask_map
from .stats import IQR_TO_SIGMA

__all__ = ["STATISTICS", "robust_template", "stack_block"]

#: Statistics :func:`stack_block` computes.
STATISTICS = ("MEAN", "MEANCLIP", "MEDIAN", "ROBUSTMEAN")

_NOGIL = {"cache": True, "nogil": True, "parallel": True}


@numba.njit(inline="always")
def _final_mask(or_mask, masked_bits, acc_w, rej_w, thr_bits, thr_frac, map_src, map_dst,
                n_clipped, clipped_bit, nodata_bit, inexact_src, inexact_bit):
    out = or_mask
    for t in range(thr_bits.size):
        wr = rej_w[t]
        total = acc_w + wr
        if total > 0 and wr / total > thr_frac[t]:
            out |= thr_bits[t]
    for p in range(map_src.size):
        if map_src[p] != 0 and (masked_bits & map_src[p]) != 0:
            out |= map_dst[p]
    if n_clipped > 0:
        out |= clipped_bit
    if not acc_w > 0:
        out |= nodata_bit
    if inexact_bit != 0 and (out & inexact_src) != 0:
        out |= inexact_bit
    return out


@numba.njit(**_NOGIL)
def _mean_rows(x, v, m, w, bad, thr_bits, thr_frac, map_src, map_dst, calc_error, clipped_bit,
               nodata_bit, inexact_src, inexact_bit, out_img, out_var, out_msk, out_n):
    n_in, ny, nx = x.shape
    n_thr = thr_bits.size
    for j in numba.prange(ny):
        sw = np.zeros(nx)
        sw2 = np.zeros(nx)
        swx = np.zeros(nx)
        swx2 = np.zeros(nx)
        sw2v = np.zeros(nx)
        orm = np.zeros(nx, np.int64)
        mbits = np.zeros(nx, np.int64)
        nacc = np.zeros(nx, np.int32)
        rej = np.zeros((nx, max(n_thr, 1)))
        for k in range(n_in):
            wk = w[k]
            wk2 = wk * wk
            for i in range(nx):
                xk = np.float64(x[k, j, i])
                vk = np.float64(v[k, j, i])
                mk = np.int64(m[k, j, i])
                masked = (mk & bad) != 0
                if masked:
                    mbits[i] |= mk
                if np.isfinite(xk) and np.isfinite(vk) and not masked:
                    sw[i] += wk
                    swx[i] += wk * xk
                    sw2v[i] += wk2 * vk
                    if not calc_error:  # loop-invariant: compiled out of the common path
                        sw2[i] += wk2
                        swx2[i] += wk * xk * xk
                    orm[i] |= mk
                    nacc[i] += 1
                else:
                    for t in range(n_thr):
                        if (mk & thr_bits[t]) != 0:
                            rej[i, t] += wk
        for i in range(nx):
            s = sw[i]
            if nacc[i] == 0:
                out_img[j, i] = np.nan
                out_var[j, i] = np.nan
            else:
                mean = swx[i] / s
                out_img[j, i] = mean
                if calc_error:
                    out_var[j, i] = sw2v[i] / (s * s)
                else:
                    denom = s * s - sw2[i]
                    spread = swx2[i] / s - mean * mean
                    var = spread * s * s / denom if denom > 0 else np.nan
                    out_var[j, i] = var * sw2[i] / (s * s)
            out_msk[j, i] = _final_mask(orm[i], mbits[i], s, rej[i], thr_bits, thr_frac, map_src,
                                        map_dst, 0, clipped_bit, nodata_bit, inexact_src,
                                        inexact_bit)
            out_n[j, i] = nacc[i]


@numba.njit(inline="always")
def _quantile(sorted_x, n, q):
    nm1 = max(n - 1, 0)
    pos = q * nm1
    lo = int(np.floor(pos))
    hi = min(lo + 1, nm1)
    frac = pos - lo
    return sorted_x[lo] + frac * (sorted_x[hi] - sorted_x[lo])


@numba.njit(inline="always")
def _sort_into(values, n, out):
    """Sort ``values[:n]`` into ``out[:n]``.

    For n <= 32 by ranks (each value counts the smaller ones, ties broken by
    position): branch-free and vectorised, 3-4x faster than an insertion sort
    whose data-dependent branches mispredict; insertion sort beyond.
    """
    if n <= 32:
        for a in range(n):
            xa = values[a]
            r = 0
            for c in range(n):
                r += (values[c] < xa) | ((values[c] == xa) & (c < a))
            out[r] = xa
    else:
        for a in range(n):
            val = values[a]
            b = a - 1
            while b >= 0 and out[b] > val:
                out[b + 1] = out[b]
                b -= 1
            out[b + 1] = val


@numba.njit(**_NOGIL)
def _clip_rows(x, v, m, w, bad, thr_bits, thr_frac, map_src, map_dst, calc_error, n_sigma,
               n_iter, iqr_to_sigma, clipped_bit, nodata_bit, inexact_src, inexact_bit,
               out_img, out_var, out_msk, out_n, out_nclip):
    n_in, ny, nx = x.shape
    n_thr = thr_bits.size
    for j in numba.prange(ny):
        bx = np.empty(n_in)
        bv = np.empty(n_in)
        bw = np.empty(n_in)
        srt = np.empty(n_in)
        rej = np.zeros(max(n_thr, 1))
        # Gather this row of every input pixel-major once: the per-pixel loops then
        # read contiguous memory instead of 3 N strided streams (2-3x faster).
        tx = np.empty((nx, n_in), np.float32)
        tv = np.empty((nx, n_in), np.float32)
        tm = np.empty((nx, n_in), np.int64)
        for k in range(n_in):
            for i in range(nx):
                tx[i, k] = x[k, j, i]
                tv[i, k] = v[k, j, i]
                tm[i, k] = m[k, j, i]
        for i in range(nx):
            n = 0
            orm = np.int64(0)
            mbits = np.int64(0)
            acc_w = 0.0
            for t in range(n_thr):
                rej[t] = 0.0
            for k in range(n_in):
                xk = np.float64(tx[i, k])
                vk = np.float64(tv[i, k])
                mk = tm[i, k]
                masked = (mk & bad) != 0
                if masked:
                    mbits |= mk
                if np.isfinite(xk) and np.isfinite(vk) and not masked:
                    bx[n] = xk
                    bv[n] = vk
                    bw[n] = w[k]
                    n += 1
                    orm |= mk
                    acc_w += w[k]
                else:
                    for t in range(n_thr):
                        if (mk & thr_bits[t]) != 0:
                            rej[t] += w[k]
            n_sel = 0
            mean = np.nan
            var = np.nan
            err_in = np.nan
            s = 0.0
            s2 = 0.0
            if n > 0:
                _sort_into(bx, n, srt)
                center = _quantile(srt, n, 0.5)
                hwidth = n_sigma * iqr_to_sigma * (_quantile(srt, n, 0.75) - _quantile(srt, n, 0.25))
                for it in range(max(n_iter, 1)):
                    if it > 0:
                        center = mean
                        hwidth = n_sigma * np.sqrt(max(var, 0.0)) if np.isfinite(var) else np.inf
                    s = 0.0
                    s2 = 0.0
                    sx = 0.0
                    sx2 = 0.0
                    s2v = 0.0
                    n_sel = 0
                    for a in range(n):
                        if abs(bx[a] - center) <= hwidth:
                            wa = bw[a]
                            s += wa
                            s2 += wa * wa
                            sx += wa * bx[a]
                            sx2 += wa * bx[a] * bx[a]
                            s2v += wa * wa * bv[a]
                            n_sel += 1
                    mean = sx / s if s != 0 else np.nan
                    denom = s * s - s2
                    var = (sx2 / s - mean * mean) * s * s / denom if denom > 0 else np.nan
                    err_in = s2v / (s * s) if s != 0 else np.nan
            n_clip = n - n_sel
            if n == 0:
                out_img[j, i] = np.nan
                out_var[j, i] = np.nan
            else:
                out_img[j, i] = mean
                if calc_error:
                    out_var[j, i] = err_in
                else:
                    out_var[j, i] = var * s2 / (s * s) if s != 0 else np.nan
            out_msk[j, i] = _final_mask(orm, mbits, acc_w, rej, thr_bits, thr_frac, map_src,
                                        map_dst, n_clip, clipped_bit, nodata_bit, inexact_src,
                                        inexact_bit)
            out_n[j, i] = n
            out_nclip[j, i] = n_clip


@numba.njit(**_NOGIL)
def _robust_rows(x, v, m, w, bad, n_sigma, median_only, nodata_bit, out_img, out_var, out_msk,
                 out_n, out_nclip, out_sumw, out_median):
    n_in, ny, nx = x.shape
    for j in numba.prange(ny):
        srt = np.empty(n_in)
        bx = np.empty(n_in)
        bv = np.empty(n_in)
        bw = np.empty(n_in)
        # Gather this row of every input pixel-major once: the per-pixel loops then
        # read contiguous memory instead of 3 N strided streams (2-3x faster).
        tx = np.empty((nx, n_in), np.float32)
        tv = np.empty((nx, n_in), np.float32)
        tm = np.empty((nx, n_in), np.int64)
        for k in range(n_in):
            for i in range(nx):
                tx[i, k] = x[k, j, i]
                tv[i, k] = v[k, j, i]
                tm[i, k] = m[k, j, i]
        for i in range(nx):
            n = 0
            orm = np.int64(0)
            for k in range(n_in):
                xk = np.float64(tx[i, k])
                vk = np.float64(tv[i, k])
                mk = tm[i, k]
                if np.isfinite(xk) and np.isfinite(vk) and (mk & bad) == 0:
                    bx[n] = xk
                    bv[n] = vk
                    bw[n] = w[k]
                    n += 1
                    orm |= mk
            out_n[j, i] = n
            out_nclip[j, i] = 0
            out_sumw[j, i] = 0.0
            if n == 0:
                out_img[j, i] = np.nan
                out_var[j, i] = np.nan
                out_msk[j, i] = orm | nodata_bit
                out_median[j, i] = np.nan
                continue
            out_msk[j, i] = orm
            _sort_into(bx, n, srt)
            median = _quantile(srt, n, 0.5)
            out_median[j, i] = median
            if median_only:
                out_img[j, i] = median
                sv = 0.0
                for a in range(n):
                    sv += bv[a]
                # Variance of the median of n Gaussian values ~ (pi / 2) x that of their mean.
                out_var[j, i] = (0.5 * np.pi if n > 2 else 1.0) * sv / (n * n)
                continue
            s = 0.0
            sx = 0.0
            s2v = 0.0
            kept = 0
            for a in range(n):
                if abs(bx[a] - median) <= n_sigma * np.sqrt(bv[a]):
                    s += bw[a]
                    sx += bw[a] * bx[a]
                    s2v += bw[a] * bw[a] * bv[a]
                    kept += 1
            if kept == 0:  # every input disagrees with the median: fall back to it
                out_img[j, i] = median
                out_var[j, i] = s2v
                for a in range(n):
                    s2v += bv[a]
                out_var[j, i] = (0.5 * np.pi if n > 2 else 1.0) * s2v / (n * n)
            else:
                out_img[j, i] = sx / s
                out_var[j, i] = s2v / (s * s)
                out_sumw[j, i] = s
            out_nclip[j, i] = n - kept


def _as_block(planes, dtype, name: str, shape=None) -> np.ndarray:
    if isinstance(planes, np.ndarray) and planes.ndim == 3:
        arr = planes
    else:
        arr = np.stack([np.asarray(p) for p in planes]) if len(planes) else np.zeros((0, 0, 0))
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=dtype) if arr.dtype != dtype else arr


def stack_block(
    images: np.ndarray | Sequence[np.ndarray],
    variances: np.ndarray | Sequence[np.ndarray],
    masks: np.ndarray | Sequence[np.ndarray] | None,
    weights: Sequence[float] | np.ndarray,
    *,
    statistic: str = "MEAN",
    n_sigma: float = 3.0,
    n_iter: int = 2,
    bad_mask: int | None = None,
    mask_map: Sequence[tuple[int, int]] | None = None,
    thresholds: Mapping[str, float] | None = None,
    calc_error_from_input_variance: bool = True,
    set_inexact_psf: bool = True,
) -> StackResult:
    """Stack ``N`` aligned images with a MEAN or MEANCLIP statistic (compiled).

    Parameters
    ----------
    images, variances : numpy.ndarray
        ``(N, ny, nx)`` (or ``N`` arrays of ``(ny, nx)``): flux per pixel (nJy)
        and its variance (nJy^2); float32 arrays are used without copying.
    masks : numpy.ndarray or None
        ``(N, ny, nx)`` int32 masks (None = all clear).
    weights : sequence of float
        ``N`` positive weights (1/nJy^2).
    statistic : {"MEAN", "MEANCLIP", "MEDIAN"}
        MEANCLIP clips ``n_iter`` times at ``n_sigma`` (first around the median
        with the IQR width), as :func:`~processing.algorithms.stack.stack_meanclip`.
        MEDIAN is the unweighted median of the accepted inputs (variance
        ``pi / 2`` times that of the unweighted mean); ROBUSTMEAN the weighted
        mean of the accepted inputs within ``n_sigma`` of their own standard
        deviation from that median (``n_clipped`` counts the others).  Both are
        templates, not afw statistics: mask = OR of the accepted inputs' masks,
        NO_DATA where none; no mask map or thresholds.
    n_sigma, n_iter : float, int
        Clipping settings (MEANCLIP only).
    bad_mask, mask_map, thresholds, calc_error_from_input_variance, set_inexact_psf
        As in :func:`~processing.algorithms.stack.stack_mean`.

    Returns
    -------
    StackResult
        float32 image and variance (NaN where no input was accepted), int32
        mask, ``n_image`` and ``n_clipped``.

    Examples
    --------
    >>> ones = np.ones((2, 2, 2), np.float32)
    >>> res = stack_block(ones * [[[1]], [[3]]], ones, None, [1.0, 3.0])
    >>> float(res.image[0, 0]), float(res.variance[0, 0])
    (2.5, 0.625)
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    x = _as_block(images, np.float32, "images")
    if x.ndim != 3 or x.shape[0] == 0:
        raise ValueError(f"stack needs at least one input image, got shape {x.shape}")
    v = _as_block(variances, np.float32, "variances", x.shape)
    m = (np.zeros(x.shape, np.int32) if masks is None
         else _as_block(masks, np.int32, "masks", x.shape))
    w = np.asarray(weights, dtype=float).reshape(-1)
    if w.size != x.shape[0]:
        raise ValueError(f"got {x.shape[0]} images but {w.size} weights")
    if not np.all(np.isfinite(w) & (w > 0)):
        raise ValueError(f"weights must be finite and > 0, got {w.tolist()}")
    if statistic == "MEANCLIP" and not n_sigma > 0:
        raise ValueError(f"n_sigma must be > 0, got {n_sigma}")
    bad = bits(DEFAULT_BAD_MASK_PLANES) if bad_mask is None else int(bad_mask)
    thr = {"SAT": 0.1} if thresholds is None else dict(thresholds)
    for name, frac in thr.items():
        if not 0.0 <= float(frac) <= 1.0:
            raise ValueError(f"mask propagation threshold for {name} must be in [0, 1], got {frac}")
    thr_bits = np.array([bits(n) for n in thr], dtype=np.int64)
    thr_frac = np.array([float(f) for f in thr.values()], dtype=float)
    pairs = rejected_mask_map(bad) if mask_map is None else list(mask_map)
    map_src = np.array([s for s, _ in pairs], dtype=np.int64)
    map_dst = np.array([d for _, d in pairs], dtype=np.int64)
    inexact_src = bits("SENSOR_EDGE", "CLIPPED", "REJECTED")
    inexact_bit = bits("INEXACT_PSF") if set_inexact_psf else 0
    _, ny, nx = x.shape
    image = np.empty((ny, nx), np.float32)
    variance = np.empty((ny, nx), np.float32)
    mask = np.empty((ny, nx), np.int32)
    n_image = np.empty((ny, nx), np.int32)
    n_clipped = np.zeros((ny, nx), np.int32)
    common = (bad, thr_bits, thr_frac, map_src, map_dst, bool(calc_error_from_input_variance))
    flags = (bits("CLIPPED"), bits("NO_DATA"), inexact_src, inexact_bit)
    if statistic in ("MEDIAN", "ROBUSTMEAN"):
        _robust_rows(x, v, m, w, bad, float(n_sigma), statistic == "MEDIAN", bits("NO_DATA"),
                     image, variance, mask, n_image, n_clipped, np.empty((ny, nx)),
                     np.empty((ny, nx), np.float32))
    elif statistic == "MEAN":
        _mean_rows(x, v, m, w, *common, *flags, image, variance, mask, n_image)
    else:
        _clip_rows(x, v, m, w, *common, float(n_sigma), int(n_iter), IQR_TO_SIGMA, *flags,
                   image, variance, mask, n_image, n_clipped)
    return StackResult(image, variance, mask, n_image, n_clipped)


def robust_template(images: np.ndarray, variances: np.ndarray, masks: np.ndarray,
                    weights, *, bad_mask: int, n_sigma: float = 3.0):
    """The ROBUSTMEAN statistic with the weight sum of the inputs it kept.

    Parameters
    ----------
    images, variances, masks : numpy.ndarray
        ``(N, ny, nx)`` float32, float32 and int32 planes.
    weights : sequence of float
        ``N`` positive weights.
    bad_mask : int
        Bits excluding an input pixel.
    n_sigma : float
        Inputs further than ``n_sigma`` of their own sigma from the median are left out.

    Returns
    -------
    image, variance : numpy.ndarray
        float32 template and its variance (NaN where nothing was accepted).
    n_image : numpy.ndarray
        int32 accepted inputs per pixel.
    weight_sum : numpy.ndarray
        float64 sum of the weights averaged (0 where the median was used).
    median : numpy.ndarray
        float32 median of the accepted inputs.
    """
    x = _as_block(images, np.float32, "images")
    v = _as_block(variances, np.float32, "variances", x.shape)
    m = _as_block(masks, np.int32, "masks", x.shape)
    w = np.asarray(weights, dtype=float).reshape(-1)
    _, ny, nx = x.shape
    out = (np.empty((ny, nx), np.float32), np.empty((ny, nx), np.float32),
           np.empty((ny, nx), np.int32), np.empty((ny, nx), np.int32),
           np.empty((ny, nx), np.int32), np.empty((ny, nx)), np.empty((ny, nx), np.float32))
    _robust_rows(x, v, m, w, int(bad_mask), float(n_sigma), False, bits("NO_DATA"), *out)
    return out[0], out[1], out[3], out[5], out[6]
