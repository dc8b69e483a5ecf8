"""Clipped statistics (afw ``makeStatistics`` MEANCLIP / STDEVCLIP semantics).

See ``reference/algorithms.md`` A.1.  The first clipping pass is centred on
the median with a half-width from the inter-quartile range; later passes are
centred on the previous clipped mean with the previous clipped standard
deviation.  Quantiles use numpy's linear interpolation, an acceptable
approximation of afw's own rank interpolation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._stats_kernels import clipped_sums, order_statistics, usable_count

__all__ = ["IQR_TO_SIGMA", "ClippedStats", "clipped_stats"]

#: Standard deviation of a Gaussian per unit inter-quartile range.
IQR_TO_SIGMA = 0.741301109252802


@dataclass(frozen=True)
class ClippedStats:
    """Result of :func:`clipped_stats`.

    Attributes
    ----------
    mean : float
        Weighted clipped mean (MEANCLIP); NaN if nothing survived.
    variance : float
        De-biased weighted variance of the kept values (VARIANCECLIP).
    n_used : int
        Values kept by the last pass.
    n_clipped : int
        Values rejected by the last pass (of the finite, unmasked ones).
    error : float
        Standard error of the mean: from the input variances when given,
        otherwise from the scatter.
    median : float
        Median of the finite, unmasked values.
    """

    mean: float
    variance: float
    n_used: int
    n_clipped: int
    error: float
    median: float

    @property
    def stdev(self) -> float:
        """STDEVCLIP: square root of the clipped variance."""
        return float(np.sqrt(self.variance)) if self.variance >= 0 else float("nan")


def clipped_stats(
    values: np.ndarray,
    *,
    n_sigma: float = 3.0,
    n_iter: int = 3,
    weights: np.ndarray | None = None,
    variances: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    and_mask: int = 0,
) -> ClippedStats:
    """Iteratively sigma-clipped weighted mean and variance.

    Parameters
    ----------
    values : numpy.ndarray
        Data values, any shape (flattened).
    n_sigma : float
        Clipping half-width in standard deviations.
    n_iter : int
        Number of clipping passes (afw default 3; ``ComputeExposureSummaryStats``
        and coadd weights use 2).
    weights : numpy.ndarray, optional
        Multiplicative weights, same shape as ``values``.
    variances : numpy.ndarray, optional
        Per-value variances; when given the error of the mean is
        ``sqrt(sum w^2 v) / sum w`` over the kept values.
    mask : numpy.ndarray, optional
        Integer mask; values with ``mask & and_mask`` set are ignored.
    and_mask : int
        Bits that exclude a value.

    Returns
    -------
    ClippedStats

    Examples
    --------
    >>> x = np.r_[np.zeros(99), 1000.0]
    >>> clipped_stats(x).mean
    0.0
    """
    # Keep float32 inputs in float32 (the copies of a 16-Mpixel plane dominate the
    # cost); sums are accumulated in float64.
    x = np.asarray(values)
    if x.dtype.kind != "f":
        x = x.astype(float)
    if weights is None and variances is None and x.dtype in (np.float32, np.float64):
        return _clipped_stats_compiled(x, n_sigma, n_iter, mask, and_mask)
    x = x.ravel()
    keep = np.isfinite(x)
    if mask is not None and and_mask:
        keep &= (np.asarray(mask).ravel() & and_mask) == 0
    w = None if weights is None else np.asarray(weights, dtype=float).ravel()[keep]
    v = None if variances is None else np.asarray(variances, dtype=float).ravel()[keep]
    x = x[keep]
    n = x.size
    nan = float("nan")
    if n == 0:
        return ClippedStats(nan, nan, 0, 0, nan, nan)
    q1, median, q3 = (float(q) for q in np.percentile(x, [25.0, 50.0, 75.0]))
    center = median
    hwidth = n_sigma * IQR_TO_SIGMA * (q3 - q1)
    mean, var, selected = nan, nan, np.ones(n, dtype=bool)
    for i in range(max(n_iter, 1)):
        if i > 0:
            center = mean
            hwidth = n_sigma * np.sqrt(max(var, 0.0)) if np.isfinite(var) else np.inf
        selected = np.abs(x - center) <= hwidth if n > 1 else np.ones(n, dtype=bool)
        n_sel = int(selected.sum())
        if n_sel == 0:
            return ClippedStats(nan, nan, 0, n, nan, median)
        xs = x[selected]
        if w is None:
            mean = float(xs.mean(dtype=np.float64))
            var = float(xs.var(dtype=np.float64, ddof=1)) if n_sel > 1 else nan
        else:
            ws = w[selected]
            sw = ws.sum()
            sw2 = (ws * ws).sum()
            mean = float((ws * xs).sum() / sw)
            denom = sw * sw - sw2
            spread = (ws * xs * xs).sum() / sw - mean * mean
            var = float(spread * sw * sw / denom) if denom > 0 else nan
    n_sel = int(selected.sum())
    if w is None:
        sw, sw2 = float(n_sel), float(n_sel)
        if v is not None:
            error = float(np.sqrt(v[selected].sum()) / sw)
        else:
            error = float(np.sqrt(var * sw2) / sw) if np.isfinite(var) else nan
    else:
        ws = w[selected]
        sw = ws.sum()
        if v is not None:
            error = float(np.sqrt((ws**2 * v[selected]).sum()) / sw)
        else:
            error = float(np.sqrt(var * (ws**2).sum()) / sw) if np.isfinite(var) else nan
    return ClippedStats(mean, var, n_sel, n - n_sel, error, median)


def _clipped_stats_compiled(x, n_sigma, n_iter, mask, and_mask) -> ClippedStats:
    """Unweighted :func:`clipped_stats` by passes over the plane (no copies).

    Quartiles are numpy's linear-interpolation percentiles of the usable
    values (same order statistics and interpolation arithmetic, hence the same
    numbers); each clipping pass compares in the input's precision, as numpy
    does, and sums in float64 about the current centre.
    """
    x = np.ascontiguousarray(x).ravel()
    m = None
    if mask is not None and and_mask:
        m = np.ascontiguousarray(mask).ravel()
        if m.size != x.size:
            raise ValueError(f"mask has {m.size} values, values have {x.size}")
    bits = int(and_mask)
    # Histogram of the top 16 bits of the (sign-adjusted) bit patterns: see _stats_kernels.
    width = x.dtype.itemsize * 8
    keys = x.view(np.uint32 if width == 32 else np.uint64)
    hist = (keys, keys.dtype.type(1 << (width - 1)), width - 16, np.zeros(1 << 16, np.int64))
    n = usable_count(x, hist[0], m, bits, *hist[1:])
    nan = float("nan")
    if n == 0:
        return ClippedStats(nan, nan, 0, 0, nan, nan)
    q1, median, q3 = _percentiles(x, m, bits, n, hist, np.array([0.25, 0.5, 0.75]))
    dtype = x.dtype.type
    center = median
    hwidth = n_sigma * IQR_TO_SIGMA * (q3 - q1)
    mean, var, n_sel = nan, nan, n
    for i in range(max(n_iter, 1)):
        if i > 0:
            center = mean
            hwidth = n_sigma * np.sqrt(max(var, 0.0)) if np.isfinite(var) else np.inf
        if n > 1:
            n_sel, s1, s2 = clipped_sums(x, m, bits, dtype(center), dtype(hwidth), float(center))
        else:
            n_sel, s1, s2 = clipped_sums(x, m, bits, dtype(0), dtype(np.inf), float(center))
        if n_sel == 0:
            return ClippedStats(nan, nan, 0, n, nan, median)
        mean = float(center + s1 / n_sel)
        var = float((s2 - s1 * s1 / n_sel) / (n_sel - 1)) if n_sel > 1 else nan
    error = float(np.sqrt(var * n_sel) / n_sel) if np.isfinite(var) else nan
    return ClippedStats(mean, var, n_sel, n - n_sel, error, median)


def _percentiles(x, m, bits, n, hist, q):
    """numpy's ``percentile(usable values, 100 q)`` (method "linear"), as Python floats."""
    virtual = n * q + (1.0 + q * (1.0 - 1.0 - 1.0)) - 1.0  # alpha = beta = 1
    prev = np.floor(virtual)
    nxt = prev + 1
    above, below = virtual >= n - 1, virtual < 0
    prev[above], nxt[above] = n - 1, n - 1
    prev[below], nxt[below] = 0, 0
    prev, nxt = prev.astype(np.int64), nxt.astype(np.int64)
    ranks = np.unique(np.concatenate([prev, nxt]))
    values = np.empty(ranks.size, dtype=x.dtype)
    order_statistics(x, hist[0], m, bits, *hist[1:], ranks, values)
    a = values[np.searchsorted(ranks, prev)]
    b = values[np.searchsorted(ranks, nxt)]
    gamma = virtual - np.floor(virtual)
    diff = b - a  # in the values' precision, as numpy's _lerp
    out = np.add(a, diff * gamma)
    np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5)
    return [float(v) for v in out]
