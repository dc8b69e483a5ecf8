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
