"""Source detection: smooth with the PSF, threshold, label, grow, find peaks.

Follows meas_algorithms ``SourceDetectionTask.detectFootprints``
(``reference/algorithms.md`` A.9):

1. The image is correlated with a normalised, sampled Gaussian of the PSF sigma,
   ``(int(sigma * n_sigma_for_kernel + 0.5) // 2) * 2 + 1`` pixels wide, and the
   variance with the square of that kernel.  Pixels closer than the kernel's
   half-width to the image edge get EDGE and are not searched.
2. A pixel is above threshold if ``smoothed > T * sqrt(smoothed_variance)``
   ("pixel_stdev"), ``smoothed > T * STDEVCLIP(smoothed)`` ("stdev") or
   ``smoothed > T`` ("value"); the negative polarity uses ``-smoothed``.
3. Footprints are 8-connected groups of such pixels with at least ``min_pixels``
   pixels, kept only if one pixel exceeds ``include_threshold_multiplier`` times
   the threshold.  Peaks are the local maxima of the smoothed image in them.
4. Footprints grow by ``int(n_sigma_to_grow * sigma + 0.5)`` pixels with a disk;
   grown footprints that touch merge (afw ``isotropicGrow``, ``combinedGrow``).

Decisions: ties between equal neighbouring pixels are broken by the flat pixel
index (the later pixel wins), so plateaus give exactly one peak; non-finite image
or variance pixels count as zero; temporary local backgrounds and background
re-estimation are left to the task layer.  Peak significance is
``smoothed / sqrt(smoothed_variance)`` at the peak for "pixel_stdev" and
"value", and ``smoothed / STDEVCLIP`` for "stdev".
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from store.geom import Box
from store.masks import bits

from ._detection_kernels import (
    correlate_separable,
    footprint_tables,
    grow_runs,
    keep_runs,
    label_runs,
    local_maxima,
    set_bits_on_runs,
    threshold_runs,
)
from .stats import clipped_stats

__all__ = [
    "FOOTPRINT_DTYPE",
    "PEAK_DTYPE",
    "DetectionConfig",
    "DetectionResult",
    "convolve_separable",
    "detect_sources",
    "gaussian_kernel",
    "grow_mask",
]

#: Columns of the peak tables: footprint label, pixel position, smoothed value, S/N.
PEAK_DTYPE = np.dtype([("footprint", np.int32), ("x", np.int32), ("y", np.int32),
                       ("value", np.float32), ("significance", np.float32)])
#: Columns of the footprint tables: label, bounding box (x0, y0, width, height), pixels, peaks.
FOOTPRINT_DTYPE = np.dtype([("id", np.int32), ("x0", np.int32), ("y0", np.int32),
                            ("width", np.int32), ("height", np.int32), ("area", np.int64),
                            ("n_peaks", np.int32)])

_THRESHOLD_TYPES = ("pixel_stdev", "stdev", "value")
_POLARITIES = ("positive", "negative", "both")


@dataclass(frozen=True)
class DetectionConfig:
    """Settings of :func:`detect_sources` (Rubin ``SourceDetectionConfig`` names in brackets).

    Attributes
    ----------
    threshold : float
        Detection threshold ``T`` [thresholdValue]; sigmas for "pixel_stdev" and
        "stdev", image units for "value".
    threshold_type : {"pixel_stdev", "stdev", "value"}
        [thresholdType].
    polarity : {"positive", "negative", "both"}
        [thresholdPolarity].
    min_pixels : int
        Smallest footprint kept, pixels, before growth [minPixels].
    n_sigma_to_grow : float
        Growth radius in PSF sigmas [nSigmaToGrow].
    n_sigma_for_kernel : float
        Smoothing-kernel width in PSF sigmas [nSigmaForKernel].
    include_threshold_multiplier : float
        A footprint is kept only if a pixel exceeds this multiple of the
        threshold [includeThresholdMultiplier].
    smooth : bool
        Smooth with the PSF before thresholding [doSmooth].
    stats_mask_planes : tuple of str
        Planes ignored when measuring the "stdev" threshold [statsMask].
    exclude_mask_planes : tuple of str
        Pixels with these planes are never detected [excludeMaskPlanes].
    """

    threshold: float = 5.0
    threshold_type: str = "pixel_stdev"
    polarity: str = "positive"
    min_pixels: int = 1
    n_sigma_to_grow: float = 2.4
    n_sigma_for_kernel: float = 7.0
    include_threshold_multiplier: float = 1.0
    smooth: bool = True
    stats_mask_planes: tuple[str, ...] = ("BAD", "SAT", "EDGE", "NO_DATA")
    exclude_mask_planes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.threshold_type not in _THRESHOLD_TYPES:
            raise ValueError(f"threshold_type must be one of {_THRESHOLD_TYPES}, "
                             f"got {self.threshold_type!r}")
        if self.polarity not in _POLARITIES:
            raise ValueError(f"polarity must be one of {_POLARITIES}, got {self.polarity!r}")
        if self.min_pixels < 1:
            raise ValueError(f"min_pixels must be >= 1, got {self.min_pixels}")
        if self.include_threshold_multiplier < 1.0:
            raise ValueError("include_threshold_multiplier must be >= 1, "
                             f"got {self.include_threshold_multiplier}")
        bits(self.stats_mask_planes, self.exclude_mask_planes)  # unknown names fail here


@dataclass(eq=False)
class DetectionResult:
    """Footprints and peaks found by :func:`detect_sources`.

    Attributes
    ----------
    labels : numpy.ndarray
        ``(ny, nx)`` int32; grown positive footprints numbered 1..n_positive, 0 elsewhere.
    negative_labels : numpy.ndarray or None
        The same for negative footprints (None unless the polarity asks for them).
    footprints, negative_footprints : numpy.ndarray
        Structured arrays of :data:`FOOTPRINT_DTYPE`, row ``i`` is label ``i + 1``.
    peaks, negative_peaks : numpy.ndarray
        Structured arrays of :data:`PEAK_DTYPE`, grouped by footprint and, within
        one, brightest first (negative peaks carry negative values).
    pixel_index, pixel_offsets : numpy.ndarray
        Flat pixel indices of the positive footprints grouped by label: the pixels
        of label ``i`` are ``pixel_index[pixel_offsets[i - 1]:pixel_offsets[i]]``.
    mask : numpy.ndarray
        Copy of the input mask with EDGE and DETECTED / DETECTED_NEGATIVE set.
    smoothed, smoothed_variance : numpy.ndarray
        ``(ny, nx)`` float32, the images the threshold was applied to (image
        units and their square).
    threshold : float
        Threshold applied: sigmas for "pixel_stdev", image units otherwise.
    kernel_half_width, grow_radius : int
        Pixels.
    """

    labels: np.ndarray
    negative_labels: np.ndarray | None
    footprints: np.ndarray
    negative_footprints: np.ndarray
    peaks: np.ndarray
    negative_peaks: np.ndarray
    pixel_index: np.ndarray
    pixel_offsets: np.ndarray
    mask: np.ndarray
    smoothed: np.ndarray
    smoothed_variance: np.ndarray
    threshold: float
    kernel_half_width: int
    grow_radius: int

    @property
    def n_positive(self) -> int:
        """Number of positive footprints."""
        return len(self.footprints)

    @property
    def n_negative(self) -> int:
        """Number of negative footprints."""
        return len(self.negative_footprints)

    def __repr__(self) -> str:
        return (f"DetectionResult(n_positive={self.n_positive}, n_negative={self.n_negative}, "
                f"n_peaks={len(self.peaks)}, threshold={self.threshold:.4g})")

    def footprint_box(self, label: int) -> Box:
        """Bounding box of positive footprint ``label`` (array coordinates)."""
        row = self.footprints[label - 1]
        return Box(int(row["x0"]), int(row["y0"]), int(row["width"]), int(row["height"]))

    def footprint_pixels(self, label: int) -> tuple[np.ndarray, np.ndarray]:
        """``(y, x)`` pixel coordinates of positive footprint ``label``."""
        flat = self.pixel_index[self.pixel_offsets[label - 1]:self.pixel_offsets[label]]
        return np.divmod(flat, self.labels.shape[1])


def gaussian_kernel(sigma: float, n_sigma_for_kernel: float = 7.0) -> np.ndarray:
    """Normalised 1-D Gaussian sampled at integer offsets, afw's detection kernel.

    Parameters
    ----------
    sigma : float
        Gaussian sigma, pixels.
    n_sigma_for_kernel : float
        Full kernel width in sigmas before rounding to an odd number of pixels.

    Returns
    -------
    numpy.ndarray
        float32, odd length ``(int(sigma * n_sigma_for_kernel + 0.5) // 2) * 2 + 1``.

    Examples
    --------
    >>> len(gaussian_kernel(2.0))
    15
    """
    half = int(sigma * n_sigma_for_kernel + 0.5) // 2
    offsets = np.arange(-half, half + 1, dtype=float)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


def convolve_separable(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate an image with ``kernel`` along x and then y, zeros outside.

    Both passes are float32 shifted adds in one compiled sweep over the rows
    (:func:`~processing.algorithms._detection_kernels.correlate_separable`).

    Parameters
    ----------
    image : numpy.ndarray
        ``(ny, nx)`` array (converted to float32).
    kernel : numpy.ndarray
        Odd-length symmetric 1-D kernel.

    Returns
    -------
    numpy.ndarray
        float32 ``(ny, nx)``.

    Examples
    --------
    >>> out = convolve_separable(np.pad([[1.0]], 2), np.array([0.25, 0.5, 0.25]))
    >>> out[1:4, 1:4].tolist()
    [[0.0625, 0.125, 0.0625], [0.125, 0.25, 0.125], [0.0625, 0.125, 0.0625]]
    """
    return _smooth(image, kernel, 0)


def _smooth(image, kernel, mode):
    """Separable correlation; ``mode`` 1 zeroes non-finite inputs, 2 also negative ones."""
    image = np.asarray(image)
    if image.dtype not in (np.float32, np.float64):
        image = image.astype(np.float32)
    kernel = np.ascontiguousarray(kernel, dtype=np.float32)
    if len(kernel) % 2 != 1:
        raise ValueError(f"kernel length must be odd, got {len(kernel)}")
    out = np.empty(image.shape, dtype=np.float32)
    correlate_separable(image, kernel, mode, out)
    return out


def grow_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilate a boolean image with a disk of ``radius`` pixels.

    The disk is the afw circular stencil: row ``dy`` spans
    ``|dx| <= floor(sqrt(radius^2 - dy^2))``.  Horizontal dilations of growing
    half-width are built by ORing shifted copies, then ORed along y; about
    ``4 * radius`` passes over a byte image (25 ms for radius 5 on 4096^2, 3x
    faster than ndimage's running maximum and 20x faster than binary_dilation).

    Parameters
    ----------
    mask : numpy.ndarray
        ``(ny, nx)`` bool.
    radius : int
        Pixels; 0 returns a copy.

    Returns
    -------
    numpy.ndarray
        bool ``(ny, nx)``.

    Examples
    --------
    >>> m = np.zeros((7, 7), bool); m[3, 3] = True
    >>> grow_mask(m, 2).sum()  # 13 pixels within radius 2
    np.int64(13)
    """
    mask = np.asarray(mask, dtype=bool)
    if radius <= 0:
        return mask.copy()
    ny = mask.shape[0]
    dys = np.arange(-radius, radius + 1)
    widths = np.floor(np.sqrt(radius * radius - dys * dys) + 1e-9).astype(int)
    out = np.zeros_like(mask)
    wide = mask.copy()
    for w in range(radius + 1):
        if w > 0:
            wide[:, w:] |= mask[:, :-w]
            wide[:, :-w] |= mask[:, w:]
        for dy in dys[widths == w]:
            if dy >= 0:
                out[dy:] |= wide[:ny - dy]
            else:
                out[:dy] |= wide[-dy:]
    return out


def detect_sources(image: np.ndarray, variance: np.ndarray | None, mask: np.ndarray | None,
                   psf_sigma: float, config: DetectionConfig | None = None) -> DetectionResult:
    """Detect footprints and peaks above a threshold in a background-subtracted image.

    Parameters
    ----------
    image : numpy.ndarray
        ``(ny, nx)`` background-subtracted image (e.g. ADU).
    variance : numpy.ndarray or None
        ``(ny, nx)`` variance, image units squared; required for "pixel_stdev".
    mask : numpy.ndarray or None
        ``(ny, nx)`` integer mask; not modified (the result holds an updated copy).
    psf_sigma : float
        PSF Gaussian sigma (determinant radius), pixels.
    config : DetectionConfig, optional

    Returns
    -------
    DetectionResult
        Empty tables (and a warning) if nothing is detected.

    Examples
    --------
    >>> img = np.zeros((64, 64), np.float32); img[30:33, 20:23] = 100.0
    >>> res = detect_sources(img, np.ones_like(img), None, psf_sigma=1.5)
    >>> res.n_positive, int(res.peaks["x"][0]), int(res.peaks["y"][0])
    (1, 21, 31)
    """
    config = config or DetectionConfig()
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    for name, arr in (("variance", variance), ("mask", mask)):
        if arr is not None and np.shape(arr) != image.shape:
            raise ValueError(f"{name} shape {np.shape(arr)} differs from image shape {image.shape}")
    if config.threshold_type == "pixel_stdev" and variance is None:
        raise ValueError("threshold_type 'pixel_stdev' needs a variance image")
    if config.smooth and not psf_sigma > 0:
        raise ValueError(f"psf_sigma must be > 0 pixels, got {psf_sigma}")

    if config.smooth:
        # Non-finite pixels (and negative variances) count as 0.
        kernel = gaussian_kernel(psf_sigma, config.n_sigma_for_kernel)
        smoothed = _smooth(image, kernel, 1)
        smoothed_var = (np.zeros(image.shape, np.float32) if variance is None
                        else _smooth(variance, kernel * kernel, 2))
    else:
        kernel = np.ones(1, np.float32)
        img = _finite(image)
        var = np.zeros_like(img) if variance is None else _finite(variance, positive=True)
        smoothed, smoothed_var = img.copy(), var.copy()  # never alias the inputs
    half = len(kernel) // 2

    out_mask = (np.zeros(image.shape, np.int32) if mask is None
                else np.array(mask, dtype=np.int32, copy=True))
    out_mask &= ~np.int32(bits("DETECTED", "DETECTED_NEGATIVE"))
    edge = np.int32(bits("EDGE"))
    for border in _borders(image.shape, half):
        out_mask[border] |= edge
    if config.exclude_mask_planes:
        excluded = (out_mask & bits(config.exclude_mask_planes)) != 0
        smoothed = np.where(excluded, 0, smoothed).astype(np.float32)

    # "pixel_stdev": level sqrt(smoothed_var) * T, evaluated pixel by pixel in the kernels.
    per_pixel = config.threshold_type == "pixel_stdev"
    noise = level = None
    if per_pixel:
        threshold = config.threshold
    else:
        if config.threshold_type == "stdev":
            stats = clipped_stats(smoothed, mask=out_mask, and_mask=bits(config.stats_mask_planes))
            noise = np.float32(stats.stdev)
            threshold = config.threshold * stats.stdev
        else:
            threshold = config.threshold
        level = np.float32(threshold)
    grow_radius = int(config.n_sigma_to_grow * psf_sigma + 0.5) if config.smooth else 0

    signs = {"positive": (1,), "negative": (-1,), "both": (1, -1)}[config.polarity]
    found = {}
    for sign in signs:
        found[sign] = _footprints(smoothed, smoothed_var, per_pixel, sign, config.threshold,
                                  level, noise, half, grow_radius, config)
    empty = _empty_footprints()
    labels, footprints, peaks, pix, offsets, grown = found.get(1, (None, empty, _empty_peaks(),
                                                                   None, None, None))
    if labels is None:
        labels = np.zeros(image.shape, np.int32)
        pix, offsets = np.zeros(0, np.int64), np.zeros(1, np.int64)
    else:
        set_bits_on_runs(out_mask, grown, np.int32(bits("DETECTED")))
    neg_labels, neg_footprints, neg_peaks = None, empty, _empty_peaks()
    if -1 in found:
        neg_labels, neg_footprints, neg_peaks, _, _, neg_grown = found[-1]
        set_bits_on_runs(out_mask, neg_grown, np.int32(bits("DETECTED_NEGATIVE")))
    if len(footprints) == 0 and len(neg_footprints) == 0:
        warnings.warn(f"no sources detected above {config.threshold} ({config.threshold_type}, "
                      f"{config.polarity}); lower the threshold or check the background and "
                      "variance", stacklevel=2)
    return DetectionResult(labels=labels, negative_labels=neg_labels, footprints=footprints,
                           negative_footprints=neg_footprints, peaks=peaks, negative_peaks=neg_peaks,
                           pixel_index=pix, pixel_offsets=offsets, mask=out_mask, smoothed=smoothed,
                           smoothed_variance=smoothed_var, threshold=float(threshold),
                           kernel_half_width=half, grow_radius=grow_radius)


def _footprints(smoothed, smoothed_var, per_pixel, sign, threshold, level, noise, half,
                grow_radius, config):
    """Threshold, filter, find peaks, grow and label one polarity (as runs of pixels).

    The level is ``sqrt(smoothed_var) * threshold`` per pixel when ``per_pixel``,
    else the scalar ``level``.  The noise of the peak significance is the
    scalar ``noise`` if given, else ``sqrt(smoothed_var)``.  Returns the label
    image, the footprint and peak tables, the footprints' pixel lists and the
    grown runs.
    """
    ny, nx = smoothed.shape
    runs = threshold_runs(smoothed, smoothed_var if per_pixel else None, sign, float(threshold),
                          float(level) if level is not None else 0.0, half)
    if config.min_pixels > 1 or config.include_threshold_multiplier > 1:
        # Both cuts act on the un-grown footprints (the defaults need no labels here).
        run_label, n = label_runs(runs, ny)
        lengths = runs[:, 2] - runs[:, 1] + 1
        area = np.bincount(run_label, weights=lengths, minlength=n + 1)
        idx = _run_pixels(runs, nx)
        values = np.float32(sign) * smoothed.ravel()[idx]
        if per_pixel:
            lvl = np.sqrt(smoothed_var.ravel()[idx]) * np.float32(threshold)
        else:
            lvl = np.broadcast_to(np.float32(level), idx.shape)
        with np.errstate(divide="ignore", invalid="ignore"):
            score = values / lvl
        best = np.zeros(n + 1)
        np.maximum.at(best, np.repeat(run_label, lengths), score)
        keep = (area >= config.min_pixels) & (best > config.include_threshold_multiplier)
        runs = keep_runs(runs, keep, run_label)
    peak_idx, peak_val = local_maxima(smoothed, runs, sign, half)

    grown = grow_runs(runs, ny, nx, grow_radius)
    run_label, n = label_runs(grown, ny)
    labels = np.zeros((ny, nx), dtype=np.int32)
    pix, offsets, counts, box = footprint_tables(grown, run_label, n, nx, labels)

    py, px = np.divmod(peak_idx, nx)
    pfoot = labels.ravel()[peak_idx]
    if noise is None:
        noise_at = np.sqrt(smoothed_var.ravel()[peak_idx])
    else:
        noise_at = np.broadcast_to(np.float32(noise), peak_idx.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        significance = np.where(noise_at > 0, peak_val / noise_at, np.nan)
    order = np.lexsort((-peak_val, pfoot))
    peaks = np.zeros(len(order), dtype=PEAK_DTYPE)
    peaks["footprint"] = pfoot[order]
    peaks["x"], peaks["y"] = px[order], py[order]
    peaks["value"] = sign * peak_val[order]
    peaks["significance"] = sign * significance[order]

    footprints = np.zeros(n, dtype=FOOTPRINT_DTYPE)
    footprints["id"] = np.arange(1, n + 1)
    footprints["x0"], footprints["y0"] = box[:, 2], box[:, 0]
    footprints["width"], footprints["height"] = box[:, 3] - box[:, 2], box[:, 1] - box[:, 0]
    footprints["area"] = counts
    footprints["n_peaks"] = np.bincount(pfoot, minlength=n + 1)[1:]
    return labels, footprints, peaks, pix, offsets, grown


def _run_pixels(runs: np.ndarray, nx: int) -> np.ndarray:
    """Flat indices of the pixels of ``(row, first, last)`` runs, in run order."""
    lengths = runs[:, 2] - runs[:, 1] + 1
    starts = runs[:, 0] * nx + runs[:, 1]
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()))


def _finite(values: np.ndarray, positive: bool = False) -> np.ndarray:
    """float32 view (or, if needed, copy) with non-finite (and negative) values set to 0."""
    out = np.asarray(values, dtype=np.float32)
    bad = ~np.isfinite(out)
    if positive:
        bad |= out < 0
    if bad.any():
        out = out.copy()
        out[bad] = 0
    return out


def _borders(shape: tuple[int, int], half: int) -> list[tuple[slice, slice]]:
    """Slices covering the ``half``-pixel frame of an image (empty list if 0)."""
    if half <= 0:
        return []
    return [(slice(0, half), slice(None)), (slice(-half, None), slice(None)),
            (slice(None), slice(0, half)), (slice(None), slice(-half, None))]


def _empty_peaks() -> np.ndarray:
    return np.zeros(0, dtype=PEAK_DTYPE)


def _empty_footprints() -> np.ndarray:
    return np.zeros(0, dtype=FOOTPRINT_DTYPE)
