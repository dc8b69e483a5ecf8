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
from scipy import ndimage as ndi

from store.geom import Box
from store.masks import bits

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
_EIGHT = np.ones((3, 3), dtype=bool)


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

    Both passes are shifted adds over strips of 32 rows (which stay in cache):
    on 4096^2 with 15 taps this takes 0.08 s per pass, against 0.18 s (x) and
    0.36 s (y) for ``scipy.ndimage.correlate1d``.

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
    image = np.asarray(image, dtype=np.float32)
    kernel = np.asarray(kernel, dtype=np.float32)
    if len(kernel) % 2 != 1:
        raise ValueError(f"kernel length must be odd, got {len(kernel)}")
    return _correlate_y(_correlate_x(image, kernel), kernel)


def _correlate_x(image: np.ndarray, kernel: np.ndarray, strip: int = 32) -> np.ndarray:
    """Symmetric correlation along x by shifted adds, strip by strip."""
    half = len(kernel) // 2
    ny, nx = image.shape
    out = np.empty((ny, nx), dtype=np.float32)
    tmp = np.empty((strip, nx), dtype=np.float32)
    for y0 in range(0, ny, strip):
        y1 = min(ny, y0 + strip)
        a, acc, t = image[y0:y1], out[y0:y1], tmp[:y1 - y0]
        np.multiply(a, kernel[half], out=acc)
        for d in range(1, min(half, nx - 1) + 1):
            t[:, :nx - d] = a[:, d:]  # right neighbour ...
            t[:, nx - d:] = 0
            t[:, d:] += a[:, :nx - d]  # ... plus left neighbour
            t *= kernel[half + d]
            acc += t
    return out


def _correlate_y(image: np.ndarray, kernel: np.ndarray, strip: int = 32) -> np.ndarray:
    """Symmetric correlation along y by shifted adds on strips of rows."""
    half = len(kernel) // 2
    ny, nx = image.shape
    if half == 0:
        return image * kernel[0]
    padded = np.zeros((ny + 2 * half, nx), dtype=np.float32)
    padded[half:half + ny] = image
    out = np.empty((ny, nx), dtype=np.float32)
    tmp = np.empty((strip, nx), dtype=np.float32)
    for y0 in range(0, ny, strip):
        y1 = min(ny, y0 + strip)
        acc, t = out[y0:y1], tmp[:y1 - y0]
        np.multiply(padded[y0 + half:y1 + half], kernel[half], out=acc)
        for d in range(1, half + 1):
            np.add(padded[y0 + half + d:y1 + half + d], padded[y0 + half - d:y1 + half - d], out=t)
            t *= kernel[half + d]
            acc += t
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

    img = _finite(image)
    var = np.zeros_like(img) if variance is None else _finite(variance, positive=True)
    if config.smooth:
        kernel = gaussian_kernel(psf_sigma, config.n_sigma_for_kernel)
        smoothed = convolve_separable(img, kernel)
        smoothed_var = convolve_separable(var, kernel * kernel)
    else:
        kernel = np.ones(1, np.float32)
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

    noise = np.sqrt(smoothed_var)
    if config.threshold_type == "pixel_stdev":
        level = noise * np.float32(config.threshold)
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
        signed = smoothed if sign > 0 else -smoothed
        found[sign] = _footprints(signed, level, noise, half, grow_radius, config, sign)
    empty = _empty_footprints()
    labels, footprints, peaks, pix, offsets, grown = found.get(1, (None, empty, _empty_peaks(),
                                                                   None, None, None))
    if labels is None:
        labels = np.zeros(image.shape, np.int32)
        pix, offsets = np.zeros(0, np.int64), np.zeros(1, np.int64)
    else:
        np.bitwise_or(out_mask, np.int32(bits("DETECTED")), out=out_mask, where=grown)
    neg_labels, neg_footprints, neg_peaks = None, empty, _empty_peaks()
    if -1 in found:
        neg_labels, neg_footprints, neg_peaks, _, _, neg_grown = found[-1]
        np.bitwise_or(out_mask, np.int32(bits("DETECTED_NEGATIVE")), out=out_mask, where=neg_grown)
    if len(footprints) == 0 and len(neg_footprints) == 0:
        warnings.warn(f"no sources detected above {config.threshold} ({config.threshold_type}, "
                      f"{config.polarity}); lower the threshold or check the background and "
                      "variance", stacklevel=2)
    return DetectionResult(labels=labels, negative_labels=neg_labels, footprints=footprints,
                           negative_footprints=neg_footprints, peaks=peaks, negative_peaks=neg_peaks,
                           pixel_index=pix, pixel_offsets=offsets, mask=out_mask, smoothed=smoothed,
                           smoothed_variance=smoothed_var, threshold=float(threshold),
                           kernel_half_width=half, grow_radius=grow_radius)


def _footprints(signed, level, noise, half, grow_radius, config, sign):
    """Threshold, label, filter, find peaks, grow and relabel one polarity."""
    nx = signed.shape[1]
    above = signed > level
    for border in _borders(signed.shape, half):
        above[border] = False
    idx = np.flatnonzero(above)
    values = signed.ravel()[idx]
    if config.min_pixels > 1 or config.include_threshold_multiplier > 1:
        # Both cuts act on the un-grown footprints (the defaults need no labels here).
        labels, n = ndi.label(above, structure=_EIGHT)
        lab = labels.ravel()[idx]
        area = np.bincount(lab, minlength=n + 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            score = values / np.broadcast_to(level, signed.shape).ravel()[idx]
        best = np.zeros(n + 1)
        np.maximum.at(best, lab, score)
        keep = (area >= config.min_pixels) & (best > config.include_threshold_multiplier)
        good = keep[lab]
        above.ravel()[idx[~good]] = False
        idx, values = idx[good], values[good]
    is_peak = _local_maxima(signed, idx, half)
    peak_idx, peak_val = idx[is_peak], values[is_peak]

    grown = grow_mask(above, grow_radius)
    labels, n = ndi.label(grown, structure=_EIGHT)
    g_idx = np.flatnonzero(grown)
    g_lab = labels.ravel()[g_idx]
    order = np.argsort(g_lab, kind="stable")
    pix = g_idx[order]
    counts = np.bincount(g_lab, minlength=n + 1)[1:]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    slices = ndi.find_objects(labels)
    box = np.array([(sy.start, sy.stop, sx.start, sx.stop) for sy, sx in slices],
                   dtype=np.int64).reshape(-1, 4)

    py, px = np.divmod(peak_idx, nx)
    pfoot = labels.ravel()[peak_idx]
    noise_at = np.broadcast_to(noise, signed.shape).ravel()[peak_idx]
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
    return labels.astype(np.int32, copy=False), footprints, peaks, pix, offsets, grown


def _local_maxima(values: np.ndarray, idx: np.ndarray, half: int) -> np.ndarray:
    """Which of the flat pixels ``idx`` beat all 8 neighbours in (value, flat index) order.

    Only neighbours in the searched region (``half`` pixels in from the edge)
    count, as in afw where the search runs on the "middle" sub-image; so every
    footprint has at least one peak.  Candidates shrink after each neighbour
    (most pixels fail on the first two), which halves the work.
    """
    ny, nx = values.shape
    flat = values.ravel()
    alive = np.arange(len(idx))
    cand, v = idx, flat[idx]
    y, x = np.divmod(cand, nx)
    for dy, dx in ((0, -1), (0, 1), (-1, 0), (1, 0), (-1, -1), (-1, 1), (1, -1), (1, 1)):
        # Clipping to the searched region compares a pixel with itself, which passes.
        j = np.clip(y + dy, half, ny - 1 - half) * nx + np.clip(x + dx, half, nx - 1 - half)
        vj = flat[j]
        ok = (v > vj) | ((v == vj) & (cand >= j))
        alive, cand, v, y, x = alive[ok], cand[ok], v[ok], y[ok], x[ok]
    is_max = np.zeros(len(idx), dtype=bool)
    is_max[alive] = True
    return is_max


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
