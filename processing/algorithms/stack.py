"""Pixel-wise stacking of aligned images (afw ``statisticsStack`` and ``AccumulatorMeanStack``).

See ``reference/algorithms.md`` A.2-A.5 and 3.3-3.4.  Inputs are ``N`` images
already warped onto the same pixel grid, each with one scalar weight (usually
:func:`coadd_weight`, the inverse of its clipped mean variance).  At every pixel
an input is *accepted* when its image and variance are finite and its mask has
none of the ``bad_mask`` bits; then

* MEAN: ``I = sum w I_k / sum w`` and ``V = sum w^2 V_k / (sum w)^2`` over the
  accepted inputs;
* MEANCLIP: the same over the accepted inputs that survive ``n_iter`` rounds of
  clipping at ``n_sigma``, first around the median with a width from the
  inter-quartile range, then around the previous clipped mean with the previous
  clipped standard deviation (exactly the per-pixel form of
  :func:`processing.algorithms.stats.clipped_stats`).

Output mask: OR of the accepted inputs' masks; each plane ``b`` with a
propagation threshold ``t_b`` is set where the weight of rejected inputs carrying
``b`` exceeds the fraction ``t_b`` of the total; the *mask map* (A.4: rejected
bad bits -> REJECTED, EDGE -> SENSOR_EDGE, CLIPPED -> CLIPPED) is applied to the
bits of rejected inputs; CLIPPED where clipping removed an input; NO_DATA (image
and variance NaN) where nothing was accepted; INEXACT_PSF wherever SENSOR_EDGE,
CLIPPED or REJECTED is set (3.4 step 5).

Decisions where the reference implementation is ambiguous or quirky:

* Non-finite image **or variance** values are rejected even without a mask bit
  (afw only tests the image for NaN; the online stack tests nothing).
* ``AccumulatorMeanStack`` feeds the mask map with every rejected bit, like the
  afw path, instead of only the bits that have a propagation threshold (A.3
  caveat): the REJECTED plane must not depend on which assembly path ran.  It
  therefore gives exactly the same result as :func:`stack_mean`.
* ``n_image`` counts accepted inputs (finite and unmasked).

Known property (shared with afw): the MEANCLIP variance ``sum w^2 V / (sum w)^2``
over the surviving inputs underestimates the true scatter by a few per cent
(8% at N = 8, 3.5% at N = 50 for Gaussian noise), because clipping around an
estimated centre amplifies that centre's error.  MEAN's prediction is exact.

Speed (one core): 20 inputs of 1000 x 1000 take ~0.9 s for MEAN, ~1.5 s for
MEANCLIP and ~0.45 s for the online accumulator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from store.masks import bits

from .stats import IQR_TO_SIGMA, clipped_stats

__all__ = [
    "DEFAULT_BAD_MASK_PLANES",
    "DEFAULT_THRESHOLDS",
    "AccumulatorMeanStack",
    "StackResult",
    "coadd_weight",
    "rejected_mask_map",
    "set_coadd_edge_bits",
    "stack_mean",
    "stack_meanclip",
]

#: AssembleCoaddTask's ``badMaskPlanes`` (3.2).
DEFAULT_BAD_MASK_PLANES: tuple[str, ...] = ("NO_DATA", "BAD", "SAT", "EDGE")
#: ``maskPropagationThresholds``: plane name -> rejected-weight fraction.
DEFAULT_THRESHOLDS: Mapping[str, float] = {"SAT": 0.1}

_ELEMENTS_PER_BLOCK = 1 << 22  # N x pixels per block, bounds the temporary memory


def rejected_mask_map(bad_mask: int) -> list[tuple[int, int]]:
    """The (source bits -> destination bit) pairs of ``setRejectedMaskMapping`` (A.4).

    Parameters
    ----------
    bad_mask : int
        Bits that reject an input pixel.

    Returns
    -------
    list of (int, int)
        ``[(bad & ~(NO_DATA|EDGE|CLIPPED), REJECTED), (EDGE, SENSOR_EDGE), (CLIPPED, CLIPPED)]``.
    """
    return [
        (bad_mask & ~bits("NO_DATA", "EDGE", "CLIPPED"), bits("REJECTED")),
        (bits("EDGE"), bits("SENSOR_EDGE")),
        (bits("CLIPPED"), bits("CLIPPED")),
    ]


def coadd_weight(variance: np.ndarray, mask: np.ndarray | None = None, *,
                 bad_mask: int = 0, n_sigma: float = 3.0, n_iter: int = 2) -> float:
    """Weight of one input: ``1 / MEANCLIP(variance)`` (3.3).

    Parameters
    ----------
    variance : numpy.ndarray
        Variance plane of the warp (image units squared).
    mask : numpy.ndarray, optional
        Its mask; pixels with ``bad_mask`` bits are ignored.
    bad_mask : int
        Bits excluding a pixel.
    n_sigma, n_iter : float, int
        Clipping settings (``sigmaClip``, ``clipIter``).

    Returns
    -------
    float
        The weight (inverse image units squared), or NaN when the clipped mean
        variance is not positive and finite (skip the input).
    """
    stats = clipped_stats(variance, n_sigma=n_sigma, n_iter=n_iter, mask=mask, and_mask=bad_mask)
    mean = stats.mean
    return 1.0 / mean if np.isfinite(mean) and mean > 0 else float("nan")


def set_coadd_edge_bits(mask: np.ndarray, variance: np.ndarray) -> None:
    """Set NO_DATA in place wherever ``variance == 0`` (``setCoaddEdgeBits``, A.5)."""
    mask[variance == 0] |= bits("NO_DATA")


class StackResult:
    """Output of a stack: arrays of the output shape ``(ny, nx)``.

    Attributes
    ----------
    image, variance : numpy.ndarray
        float32 coadd image and variance (NaN where no input was accepted).
    mask : numpy.ndarray
        int32 mask.
    n_image : numpy.ndarray
        int32 number of accepted inputs.
    n_clipped : numpy.ndarray
        int32 number of accepted inputs removed by clipping (0 for MEAN).
    """

    __slots__ = ("image", "mask", "n_clipped", "n_image", "variance")

    def __init__(self, image, variance, mask, n_image, n_clipped):
        self.image = image
        self.variance = variance
        self.mask = mask
        self.n_image = n_image
        self.n_clipped = n_clipped

    def __iter__(self):
        return iter((self.image, self.variance, self.mask, self.n_image, self.n_clipped))

    def __repr__(self) -> str:
        return f"StackResult(shape={self.image.shape}, max_n_image={int(self.n_image.max(initial=0))})"


def _threshold_bits(thresholds: Mapping[str, float] | None) -> list[tuple[int, float]]:
    thresholds = DEFAULT_THRESHOLDS if thresholds is None else thresholds
    out = []
    for name, frac in thresholds.items():
        if not 0.0 <= float(frac) <= 1.0:
            raise ValueError(f"mask propagation threshold for {name} must be in [0, 1], got {frac}")
        out.append((bits(name), float(frac)))
    return out


def _final_mask(or_mask, rejected_w, accepted_w, thresholds, masked_bits, mask_map, n_clipped,
                set_inexact_psf):
    """Combine the mask ingredients (shared by the array and online stacks)."""
    out = or_mask.astype(np.int64)
    total = accepted_w
    for (bit, frac), wr in zip(thresholds, rejected_w, strict=True):
        with np.errstate(invalid="ignore", divide="ignore"):
            hit = wr / (total + wr) > frac
        out[hit] |= bit
    for src, dst in mask_map:
        if src:
            out[(masked_bits & src) != 0] |= dst
    if n_clipped is not None:
        out[n_clipped > 0] |= bits("CLIPPED")
    out[~(accepted_w > 0)] |= bits("NO_DATA")
    if set_inexact_psf:
        out[(out & bits("SENSOR_EDGE", "CLIPPED", "REJECTED")) != 0] |= bits("INEXACT_PSF")
    return out.astype(np.int32)


def _quantiles(sorted_x: np.ndarray, n: np.ndarray, qs: Sequence[float]) -> list[np.ndarray]:
    """Linear-interpolation quantiles of the first ``n[p]`` values of each sorted column."""
    out = []
    nm1 = np.maximum(n - 1, 0)
    for q in qs:
        pos = q * nm1
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, nm1)
        frac = pos - lo
        vlo = np.take_along_axis(sorted_x, lo[None, :], axis=0)[0]
        vhi = np.take_along_axis(sorted_x, hi[None, :], axis=0)[0]
        out.append(vlo + frac * (vhi - vlo))
    return out


def _weighted_moments(x, v, w, sel):
    """Weighted mean, de-biased variance and input-variance error over ``sel`` (per column)."""
    ws = np.where(sel, w, 0.0)
    sw = ws.sum(axis=0)
    sw2 = (ws * ws).sum(axis=0)
    xz = np.where(sel, x, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (ws * xz).sum(axis=0) / sw
        spread = (ws * xz * xz).sum(axis=0) / sw - mean * mean
        denom = sw * sw - sw2
        var = np.where(denom > 0, spread * sw * sw / denom, np.nan)
        err_in = (ws * ws * np.where(sel, v, 0.0)).sum(axis=0) / (sw * sw)
    return mean, var, err_in, sw, sw2


def _stack_block(x, v, m, w, bad_mask, thresholds, mask_map, clip, calc_error, set_inexact_psf):
    """Stack one block: ``x, v, m`` are ``(N, P)``, ``w`` is ``(N, 1)``."""
    masked = (m & bad_mask) != 0
    accepted = np.isfinite(x) & np.isfinite(v) & ~masked
    rejected = ~accepted
    n_acc = accepted.sum(axis=0)
    or_mask = np.bitwise_or.reduce(np.where(accepted, m, 0), axis=0)
    masked_bits = np.bitwise_or.reduce(np.where(masked, m, 0), axis=0)
    wb = np.broadcast_to(w, x.shape)
    rejected_w = [np.where(rejected & ((m & bit) != 0), wb, 0.0).sum(axis=0) for bit, _ in thresholds]

    sel = accepted
    n_clipped = None
    if clip is not None:
        n_sigma, n_iter = clip
        xs = np.sort(np.where(accepted, x, np.nan), axis=0)  # NaN sort last
        q1, median, q3 = _quantiles(xs, n_acc, (0.25, 0.5, 0.75))
        center = median
        hwidth = n_sigma * IQR_TO_SIGMA * (q3 - q1)
        mean = var = median  # replaced by the first pass
        for it in range(max(n_iter, 1)):
            if it > 0:
                center = mean
                hwidth = np.where(np.isfinite(var), n_sigma * np.sqrt(np.maximum(var, 0.0)), np.inf)
            with np.errstate(invalid="ignore"):
                sel = accepted & (np.abs(x - center) <= hwidth)
            mean, var, err_in, sw, sw2 = _weighted_moments(x, v, wb, sel)
        n_clipped = n_acc - sel.sum(axis=0)
    else:
        mean, var, err_in, sw, sw2 = _weighted_moments(x, v, wb, sel)
    if calc_error:
        variance = err_in
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            variance = var * sw2 / (sw * sw)
    accepted_w = np.where(accepted, wb, 0.0).sum(axis=0)
    mask = _final_mask(or_mask, rejected_w, accepted_w, thresholds, masked_bits, mask_map,
                       n_clipped, set_inexact_psf)
    empty = n_acc == 0
    mean = np.where(empty, np.nan, mean)
    variance = np.where(empty, np.nan, variance)
    return mean, variance, mask, n_acc, (np.zeros_like(n_acc) if n_clipped is None else n_clipped)


def _run_stack(images, variances, masks, weights, bad_mask, mask_map, thresholds, clip,
               calc_error, set_inexact_psf) -> StackResult:
    images = [np.asarray(a) for a in images]
    n = len(images)
    if n == 0:
        raise ValueError("stack needs at least one input image, got 0")
    shape = images[0].shape
    variances = [np.asarray(a) for a in variances]
    if masks is None:
        masks = [None] * n
    masks = [np.zeros(shape, np.int32) if a is None else np.asarray(a) for a in masks]
    weights = np.asarray(weights, dtype=float).reshape(-1)
    for name, seq in (("variances", variances), ("masks", masks)):
        if len(seq) != n:
            raise ValueError(f"got {n} images but {len(seq)} {name}")
    if weights.size != n:
        raise ValueError(f"got {n} images but {weights.size} weights")
    if not np.all(np.isfinite(weights) & (weights > 0)):
        raise ValueError(f"weights must be finite and > 0, got {weights.tolist()}")
    for arr in (*images, *variances, *masks):
        if arr.shape != shape:
            raise ValueError(f"all planes must have shape {shape}, got {arr.shape}")
    thr = _threshold_bits(thresholds)
    mask_map = rejected_mask_map(bad_mask) if mask_map is None else list(mask_map)
    ny, nx = shape
    image = np.empty(shape, np.float32)
    variance = np.empty(shape, np.float32)
    mask = np.empty(shape, np.int32)
    n_image = np.empty(shape, np.int32)
    n_clipped = np.empty(shape, np.int32)
    rows = max(1, _ELEMENTS_PER_BLOCK // max(n * nx, 1))
    w = weights[:, None]
    for r0 in range(0, ny, rows):
        r1 = min(r0 + rows, ny)
        x = np.stack([a[r0:r1].reshape(-1) for a in images]).astype(float)
        v = np.stack([a[r0:r1].reshape(-1) for a in variances]).astype(float)
        m = np.stack([a[r0:r1].reshape(-1) for a in masks]).astype(np.int64)
        out = _stack_block(x, v, m, w, bad_mask, thr, mask_map, clip, calc_error,
                           set_inexact_psf)
        for dest, val in zip((image, variance, mask, n_image, n_clipped), out, strict=True):
            dest[r0:r1] = val.reshape(r1 - r0, nx)
    return StackResult(image, variance, mask, n_image, n_clipped)


def stack_mean(
    images: Sequence[np.ndarray] | np.ndarray,
    variances: Sequence[np.ndarray] | np.ndarray,
    masks: Sequence[np.ndarray | None] | np.ndarray | None,
    weights: Sequence[float] | np.ndarray,
    *,
    bad_mask: int | None = None,
    mask_map: Sequence[tuple[int, int]] | None = None,
    thresholds: Mapping[str, float] | None = None,
    calc_error_from_input_variance: bool = True,
    set_inexact_psf: bool = True,
) -> StackResult:
    """Weighted mean of aligned images (statistic MEAN, A.2).

    Parameters
    ----------
    images, variances : sequence of numpy.ndarray
        ``N`` arrays of shape ``(ny, nx)`` (or one ``(N, ny, nx)`` array): flux per
        pixel and its variance (e.g. nJy and nJy^2).
    masks : sequence of numpy.ndarray or None
        ``N`` integer masks (None, or None entries = all clear).
    weights : sequence of float
        ``N`` positive weights (inverse image units squared, see :func:`coadd_weight`).
    bad_mask : int, optional
        Bits rejecting an input pixel; default NO_DATA|BAD|SAT|EDGE.
    mask_map : sequence of (int, int), optional
        (source bits, destination bit) applied to rejected inputs; default
        :func:`rejected_mask_map` of ``bad_mask``.
    thresholds : mapping of str to float, optional
        Plane name -> rejected-weight fraction above which the plane is set;
        default ``{"SAT": 0.1}``.
    calc_error_from_input_variance : bool
        Variance from the input variances (True) or from the scatter.
    set_inexact_psf : bool
        Set INEXACT_PSF where SENSOR_EDGE, CLIPPED or REJECTED is set.

    Returns
    -------
    StackResult

    Examples
    --------
    >>> ones = np.ones((2, 2))
    >>> res = stack_mean([ones, 3 * ones], [ones, ones], [None, None], [1.0, 3.0])
    >>> float(res.image[0, 0]), float(res.variance[0, 0])
    (2.5, 0.625)
    """
    bad = bits(DEFAULT_BAD_MASK_PLANES) if bad_mask is None else int(bad_mask)
    return _run_stack(images, variances, masks, weights, bad, mask_map, thresholds, None,
                      calc_error_from_input_variance, set_inexact_psf)


def stack_meanclip(
    images: Sequence[np.ndarray] | np.ndarray,
    variances: Sequence[np.ndarray] | np.ndarray,
    masks: Sequence[np.ndarray | None] | np.ndarray | None,
    weights: Sequence[float] | np.ndarray,
    *,
    n_sigma: float = 3.0,
    n_iter: int = 2,
    bad_mask: int | None = None,
    mask_map: Sequence[tuple[int, int]] | None = None,
    thresholds: Mapping[str, float] | None = None,
    calc_error_from_input_variance: bool = True,
    set_inexact_psf: bool = True,
) -> StackResult:
    """Sigma-clipped weighted mean of aligned images (statistic MEANCLIP, A.1-A.2).

    Parameters are those of :func:`stack_mean`, plus:

    Parameters
    ----------
    n_sigma : float
        Clipping half-width in standard deviations (``sigmaClip``).
    n_iter : int
        Clipping passes (``clipIter``); the first is centred on the median with
        the width from the inter-quartile range.

    Returns
    -------
    StackResult
        With ``n_clipped`` the number of accepted inputs removed by clipping;
        the CLIPPED bit is set where it is positive.
    """
    if n_sigma <= 0:
        raise ValueError(f"n_sigma must be > 0, got {n_sigma}")
    bad = bits(DEFAULT_BAD_MASK_PLANES) if bad_mask is None else int(bad_mask)
    return _run_stack(images, variances, masks, weights, bad, mask_map, thresholds,
                      (float(n_sigma), int(n_iter)), calc_error_from_input_variance,
                      set_inexact_psf)


class AccumulatorMeanStack:
    """Online weighted mean, one input at a time (meas_algorithms ``AccumulatorMeanStack``, A.3).

    Gives the same image, variance and mask as :func:`stack_mean` without holding
    all inputs in memory; used for cell coadds and the online mean coadd.

    Parameters
    ----------
    shape : tuple of int
        Output shape ``(ny, nx)``.
    bit_mask_value : int
        Bits rejecting an input pixel (the bad mask).
    mask_threshold_dict : mapping of str to float, optional
        Plane name -> rejected-weight fraction (default ``{"SAT": 0.1}``).
    mask_map : sequence of (int, int), optional
        Default :func:`rejected_mask_map` of ``bit_mask_value``.
    no_good_pixels_mask : int, optional
        Bits set where no input was accepted (default NO_DATA).
    calc_error_from_input_variance : bool
        Variance from the input variances (True) or from the scatter.
    compute_n_image : bool
        Count accepted inputs per pixel.
    set_inexact_psf : bool
        Set INEXACT_PSF where SENSOR_EDGE, CLIPPED or REJECTED is set.
    """

    def __init__(self, shape: tuple[int, int], *, bit_mask_value: int,
                 mask_threshold_dict: Mapping[str, float] | None = None,
                 mask_map: Sequence[tuple[int, int]] | None = None,
                 no_good_pixels_mask: int | None = None,
                 calc_error_from_input_variance: bool = True, compute_n_image: bool = False,
                 set_inexact_psf: bool = True):
        self.shape = tuple(int(s) for s in shape)
        self.bit_mask_value = int(bit_mask_value)
        self._thresholds = _threshold_bits(mask_threshold_dict)
        self.mask_map = (rejected_mask_map(self.bit_mask_value) if mask_map is None
                         else list(mask_map))
        self.no_good_pixels_mask = (bits("NO_DATA") if no_good_pixels_mask is None
                                    else int(no_good_pixels_mask))
        self.calc_error_from_input_variance = calc_error_from_input_variance
        self.compute_n_image = compute_n_image
        self.set_inexact_psf = set_inexact_psf
        self.reset()

    def __repr__(self) -> str:
        return (f"AccumulatorMeanStack(shape={self.shape}, bit_mask_value={self.bit_mask_value}, "
                f"n_inputs={self.n_inputs})")

    def reset(self) -> None:
        """Forget every input."""
        z = np.zeros(self.shape)
        self.sum_w, self.sum_wx, self.sum_w2v = z.copy(), z.copy(), z.copy()
        self.sum_w2, self.sum_wx2 = z.copy(), z.copy()
        self.or_mask = np.zeros(self.shape, np.int64)
        self.masked_pixels_mask = np.zeros(self.shape, np.int64)
        self.rejected_w = [z.copy() for _ in self._thresholds]
        self.n_image = np.zeros(self.shape, np.int32) if self.compute_n_image else None
        self.n_inputs = 0

    def add_masked_image(self, image: np.ndarray, mask: np.ndarray | None,
                         variance: np.ndarray, weight: float | np.ndarray = 1.0) -> None:
        """Accumulate one input (``weight`` a scalar or an array of the output shape)."""
        image = np.asarray(image, dtype=float)
        variance = np.asarray(variance, dtype=float)
        if image.shape != self.shape or variance.shape != self.shape:
            raise ValueError(f"input planes must have shape {self.shape}, got {image.shape}")
        mask = np.zeros(self.shape, np.int64) if mask is None else np.asarray(mask, np.int64)
        w = np.broadcast_to(np.asarray(weight, dtype=float), self.shape)
        masked = (mask & self.bit_mask_value) != 0
        good = np.isfinite(image) & np.isfinite(variance) & ~masked
        wg = np.where(good, w, 0.0)
        x = np.where(good, image, 0.0)
        self.sum_w += wg
        self.sum_wx += wg * x
        self.sum_w2v += wg * wg * np.where(good, variance, 0.0)
        self.sum_w2 += wg * wg
        self.sum_wx2 += wg * x * x
        self.or_mask |= np.where(good, mask, 0)
        self.masked_pixels_mask |= np.where(masked, mask, 0)
        for acc, (bit, _) in zip(self.rejected_w, self._thresholds, strict=True):
            acc += np.where(~good & ((mask & bit) != 0), w, 0.0)
        if self.n_image is not None:
            self.n_image += good
        self.n_inputs += 1

    def add_image(self, image: np.ndarray, weight: float | np.ndarray = 1.0) -> None:
        """Accumulate an image without any masking (e.g. masked-fraction planes)."""
        image = np.asarray(image, dtype=float)
        if image.shape != self.shape:
            raise ValueError(f"input image must have shape {self.shape}, got {image.shape}")
        w = np.broadcast_to(np.asarray(weight, dtype=float), self.shape)
        self.sum_w += w
        self.sum_wx += w * image
        self.n_inputs += 1

    def fill_stacked_image(self) -> np.ndarray:
        """``sum w x / sum w`` (NaN where nothing was added)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self.sum_wx / self.sum_w).astype(np.float32)

    def fill_stacked_masked_image(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The stacked ``(image, mask, variance)``: float32, int32, float32."""
        sw = self.sum_w
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.sum_wx / sw
            if self.calc_error_from_input_variance:
                var = self.sum_w2v / (sw * sw)
            else:
                spread = self.sum_wx2 / sw - mean * mean
                denom = sw * sw - self.sum_w2
                var = np.where(denom > 0, spread * sw * sw / denom, np.nan) * self.sum_w2 / (sw * sw)
        mask = _final_mask(self.or_mask, self.rejected_w, sw, self._thresholds,
                           self.masked_pixels_mask, self.mask_map, None, self.set_inexact_psf)
        empty = ~(sw > 0)
        if self.no_good_pixels_mask != bits("NO_DATA"):
            mask[empty] = (mask[empty] & ~bits("NO_DATA")) | self.no_good_pixels_mask
        mean[empty] = np.nan
        var[empty] = np.nan
        return mean.astype(np.float32), mask, var.astype(np.float32)
