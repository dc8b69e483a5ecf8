"""Transient artefacts in a stack of warps (Rubin's safe-clip / compare-warp idea).

See ``reference/algorithms.md`` 3.5-3.6.  An artefact (satellite trail, cosmic
ray, ghost) is present in one or two epochs only; a real source is present in
all, even when variable or when the epochs' PSFs differ.  On one block of
aligned warps (a subregion of the patch, all inputs):

1. **PSF matching**: warp ``k`` (PSF second moments ``C_k``) is convolved with
   the elliptical Gaussian of covariance ``s^2 I - C_k``, so all share one
   circular Gaussian core (CompareWarp compares PSF-matched warps for the same
   reason: a star then differs between epochs only by noise).  The kernel is
   three 1-D passes along x, y and a diagonal whose variances add up to the
   covariance exactly.  A warp's excluded pixels are filled with the robust
   mean of the others before convolving (pixels whose kernel is less than half
   on the warp's own data are excluded).
2. **Template**: per pixel, the weighted mean of the matched warps that lie
   within ``template_n_sigma`` of their own noise from the median, which one or
   two deviant epochs cannot move (CompareWarp's template is a 2.5-sigma
   clipped mean, whose inter-quartile first pass two outliers among six
   inflate) and whose residuals stay Gaussian (a median's do not).
3. **Candidates**, per warp: the residual ``(M_k - T) / sqrt(V_k + V_T)``
   smoothed with a box of about the PSF width, thresholded at ``threshold``
   times its robust (inter-quartile) scatter, both polarities; 8-connected
   groups of at least ``min_pixels``.  The robust scatter absorbs the noise
   correlation that warping and matching introduce.
4. **Epoch count**: at every pixel, the number of warps with a candidate there.
   A candidate of mean input count ``N`` is an artefact when more than
   ``spatial_threshold`` of its pixels are candidates in at least one and at
   most ``int(min(0.4 N, 2 + 0.03 N))`` epochs (CompareWarp's rule; with
   ``N < 3`` nothing can be decided and nothing is clipped).
5. **Sources are preserved**: inside the template's source footprints (S/N
   above ``preserve_threshold``, grown by ``preserve_grow_sigma`` sigmas) each
   warp's candidate pixels are grouped by their nearest template peak.  A pixel
   is the source's own when its group's |residual|-weighted centroid lies within
   ``max(1, preserve_centroid_sigma * sigma)`` pixels of the peak (PSF-shape
   mismatch and variability are centro-symmetric about the source), or when its
   residual is below ``preserve_relative`` of the template there (matching
   errors scale with the source); a candidate made only of such pixels is kept.
   An artefact on a source pulls the centroid off the peak and stands out
   against the source's profile, except within the core of a bright source.
6. Artefact footprints grow by ``grow_sigma`` matched-PSF sigmas and become the
   warp's CLIPPED pixels.

Decisions: the matched variance is approximated as ``V_k sum(K^2)`` (locally
constant variance); matching is exact for Gaussian PSFs and leaves the
non-Gaussian wings (Moffat) unmatched, which step 5 absorbs; smoothing uses a box
filter (``2 int(sigma + 0.5) + 1``
pixels, ~90% of the matched-filter S/N for a point source) because it costs a
few nanoseconds per pixel; all warps of a block are labelled in one
``ndimage.label`` call (no connectivity across warps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .detection import grow_mask
from .stack import StackResult
from .stack_kernels import robust_template
from .stats import IQR_TO_SIGMA

__all__ = ["ArtifactConfig", "ArtifactResult", "find_artifacts"]


@dataclass(frozen=True)
class ArtifactConfig:
    """Settings of :func:`find_artifacts` (CompareWarp names in brackets).

    Attributes
    ----------
    template_n_sigma : float
        Inputs further than this many of their own sigmas from the median are
        left out of the template.
    threshold : float
        Candidate threshold on the smoothed residual, in units of its robust
        scatter [detect.thresholdValue, 7.5 there on unsmoothed residuals].
    min_pixels : int
        Smallest candidate, pixels [detect.minPixels].
    max_fraction_epochs_low, max_fraction_epochs_high, max_num_epochs : float, float, int
        ``int(min(low N, max_num_epochs + high N))`` epochs at most
        [maxFractionEpochsLow 0.4, maxFractionEpochsHigh 0.03, maxNumEpochs 2].
    spatial_threshold : float
        Fraction of a candidate's pixels that must be few-epoch [spatialThreshold].
    grow_sigma : float
        Growth of artefact footprints, matched-PSF sigmas.
    match_psfs : bool
        Convolve the warps to a common PSF width before comparing them.
    preserve_threshold : float
        Template S/N (robust units, smoothed) of protected source footprints.
    preserve_grow_sigma : float
        Growth of the protected footprints, PSF sigmas.
    preserve_centroid_sigma : float
        Largest distance (PSF sigmas, at least 1 pixel) of a source residual's
        centroid from its template peak.
    preserve_relative : float
        A candidate pixel inside a source footprint whose residual is below this
        fraction of the template there is the source's own (PSF-shape mismatch
        scales with the source; an artefact on it does not).
    """

    template_n_sigma: float = 3.0
    threshold: float = 5.0
    min_pixels: int = 4
    max_fraction_epochs_low: float = 0.4
    max_fraction_epochs_high: float = 0.03
    max_num_epochs: int = 2
    spatial_threshold: float = 0.5
    grow_sigma: float = 1.0
    match_psfs: bool = True
    preserve_threshold: float = 5.0
    preserve_grow_sigma: float = 2.4
    preserve_centroid_sigma: float = 0.5
    preserve_relative: float = 0.35

    def __post_init__(self):
        if not self.threshold > 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold}")
        if self.min_pixels < 1:
            raise ValueError(f"min_pixels must be >= 1, got {self.min_pixels}")
        if not 0 <= self.spatial_threshold < 1:
            raise ValueError(f"spatial_threshold must be in [0, 1), got {self.spatial_threshold}")


@dataclass(eq=False)
class ArtifactResult:
    """Output of :func:`find_artifacts`.

    Attributes
    ----------
    clipped : numpy.ndarray
        ``(N, ny, nx)`` bool: the artefact pixels of each warp (grown).
    template : StackResult
        The robust-mean template of the matched warps.
    n_candidates, n_artifacts : numpy.ndarray
        Per warp: candidate footprints found and classified as artefacts.
    """

    clipped: np.ndarray
    template: StackResult
    n_candidates: np.ndarray
    n_artifacts: np.ndarray


def _box_size(sigma: float) -> int:
    return 2 * int(sigma + 0.5) + 1


def _smooth(values: np.ndarray, size: int) -> np.ndarray:
    """Box-filter sum normalised to unit noise: ``box_mean * size`` (white noise stays N(0, 1))."""
    out = ndimage.uniform_filter1d(values, size, axis=-1, mode="constant")
    out = ndimage.uniform_filter1d(out, size, axis=-2, mode="constant")
    out *= np.float32(size)
    return out


def _robust_scale(values: np.ndarray, valid: np.ndarray) -> float:
    """0.7413 x IQR of the valid values (every 3rd pixel; 1 when there are too few)."""
    sample = values.ravel()[::3][valid.ravel()[::3]]
    if sample.size < 200:
        return 1.0
    q1, q3 = np.percentile(sample, [25.0, 75.0])
    scale = float(IQR_TO_SIGMA * (q3 - q1))
    return scale if np.isfinite(scale) and scale > 0 else 1.0


def _kernel_1d(var: float) -> np.ndarray | None:
    """A normalised 1-D kernel with the given variance (pixels^2); None when negligible."""
    if var < 0.02:
        return None
    if var <= 0.5:  # three taps reproduce the variance exactly
        return np.array([var / 2, 1.0 - var, var / 2], np.float32)
    sigma = np.sqrt(var)
    half = int(np.ceil(4 * sigma))
    t = np.arange(-half, half + 1, dtype=float)
    k = np.exp(-0.5 * t * t / var)
    return (k / k.sum()).astype(np.float32)


def _shift_add(image: np.ndarray, kernel: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Correlate with a symmetric 1-D kernel laid along the step (dy, dx); zeros outside."""
    half = len(kernel) // 2
    out = image * kernel[half]
    ny, nx = image.shape
    for t in range(1, half + 1):
        oy, ox = t * dy, t * dx
        for sy, sx in ((oy, ox), (-oy, -ox)):
            src = image[max(sy, 0): ny + min(sy, 0), max(sx, 0): nx + min(sx, 0)]
            out[max(-sy, 0): ny + min(-sy, 0), max(-sx, 0): nx + min(-sx, 0)] += \
                kernel[half + t] * src
    return out


def _gaussian_convolve(image: np.ndarray, cxx: float, cyy: float, cxy: float) -> np.ndarray:
    """Convolve with the Gaussian of covariance [[cxx, cxy], [cxy, cyy]] (pixels^2).

    Done as three 1-D passes, along x, y and the diagonal (1, +-1), whose
    variances add up to the covariance exactly (needs |cxy| <= min(cxx, cyy)).
    """
    c = abs(cxy)
    out = image
    for var, step in ((cxx - c, (0, 1)), (cyy - c, (1, 0)), (c, (1, 1 if cxy >= 0 else -1))):
        kernel = _kernel_1d(var)
        if kernel is not None:
            out = _shift_add(out, kernel, *step)
    return out if out is not image else image.copy()


def _match(images, variances, masks, moments, weights, bad_mask, config):
    """Warps convolved to a common circular Gaussian PSF.

    Returns ``(images, variances, masks, approx, sigma)``; ``approx`` marks the
    pixels whose kernel met excluded pixels.

    Warp ``k`` with PSF second moments ``C_k`` is convolved with the Gaussian of
    covariance ``s^2 I - C_k``, ``s^2 = max_k(max(C_xx, C_yy) + |C_xy|)``, the
    smallest circular target every warp can reach with three 1-D passes.  The
    warp's excluded pixels are first filled with the robust mean of the other
    (unmatched) warps, so a source cut by a bad column keeps its matched
    profile up to the small PSF difference of the filled pixels; where no warp
    has data the convolution is normalised by the kernel weight on data.
    """
    ixx, iyy, ixy = moments[:, 0], moments[:, 1], moments[:, 2]
    target = float(np.max(np.maximum(ixx, iyy) + np.abs(ixy))) * 1.0001
    fill, _, fill_n, _ = robust_template(images, variances, masks, weights, bad_mask=bad_mask,
                                         n_sigma=config.template_n_sigma)
    has_fill = fill_n > 0
    x = np.empty(images.shape, np.float32)
    v = np.empty(images.shape, np.float32)
    m = np.zeros(images.shape, np.int32)
    approx = np.zeros(images.shape, dtype=bool)
    for k in range(images.shape[0]):
        with np.errstate(invalid="ignore"):
            valid = (np.isfinite(images[k]) & np.isfinite(variances[k])
                     & ((masks[k] & bad_mask) == 0))
        x[k] = images[k]
        v[k] = variances[k]
        cxx, cyy, cxy = target - ixx[k], target - iyy[k], -ixy[k]
        if config.match_psfs and max(cxx, cyy) >= 0.02:
            support = valid | has_fill
            filled = np.where(valid, images[k], np.where(has_fill, fill, 0.0)).astype(np.float32)
            matched = _gaussian_convolve(filled, cxx, cyy, cxy)
            weight = _gaussian_convolve(support.astype(np.float32), cxx, cyy, cxy)
            own = _gaussian_convolve(valid.astype(np.float32), cxx, cyy, cxy)
            usable = valid & (own >= 0.5)
            with np.errstate(invalid="ignore", divide="ignore"):
                x[k][usable] = matched[usable] / weight[usable]
            valid = usable
            approx[k] = usable & (own < 0.999)
            # The matched variance: V sum(K^2) for white noise; warped noise is already
            # correlated, so rescale to the measured scatter of the matched pixels.
            reach = int(np.ceil(4 * np.sqrt(max(cxx, cyy) + abs(cxy)))) + 1
            delta = np.zeros((2 * reach + 1, 2 * reach + 1), np.float32)
            delta[reach, reach] = 1.0
            v[k] *= np.float32(np.sum(_gaussian_convolve(delta, cxx, cyy, cxy) ** 2))
            if valid.sum() > 1000:
                scale = _robust_scale(x[k], valid) ** 2 / float(np.median(v[k][valid]))
                v[k] *= np.float32(np.clip(scale, 0.2, 5.0))
        m[k][~valid] = bad_mask & -bad_mask  # the lowest bad bit marks excluded pixels
    return x, v, m, approx, float(np.sqrt(target))


class _SourceGroups:
    """Template source footprints, split between their peaks (nearest peak wins)."""

    def __init__(self, template: StackResult, sigma: float, config: ArtifactConfig):
        with np.errstate(invalid="ignore", divide="ignore"):
            snr = template.image / np.sqrt(template.variance)
        valid = np.isfinite(snr)
        s = _smooth(np.where(valid, snr, 0.0).astype(np.float32), _box_size(sigma))
        s /= np.float32(_robust_scale(s, valid))  # robust S/N units
        above = s > config.preserve_threshold
        peaks = above & (ndimage.maximum_filter(s, size=3, mode="constant") == s)
        peak_id, self.n_peaks = ndimage.label(peaks)
        self.radius = max(1.0, config.preserve_centroid_sigma * sigma)
        if self.n_peaks == 0:
            self.group = None
            self.inside = np.zeros(s.shape, dtype=bool)
            return
        centres = ndimage.center_of_mass(peaks, peak_id, np.arange(1, self.n_peaks + 1))
        self.py = np.array([c[0] for c in centres])
        self.px = np.array([c[1] for c in centres])
        footprint = grow_mask(above, int(config.preserve_grow_sigma * sigma + 0.5))
        iy, ix = ndimage.distance_transform_edt(peak_id == 0, return_distances=False,
                                                return_indices=True)
        self.group = np.where(footprint, peak_id[iy, ix], 0).ravel()
        self.inside = footprint
        self.yy, self.xx = (a.ravel().astype(float) for a in np.indices(peak_id.shape))
        self.relative = config.preserve_relative

    def kept(self, residual, template, strength, candidates) -> np.ndarray | None:
        """Pixels of one warp whose residual looks like the source's own.

        Inside a source footprint, a pixel is kept when its group's candidates
        have their |residual|-weighted centroid within ``radius`` of the peak
        (centro-symmetric: PSF mismatch, a variable star), or when its residual
        is below ``relative`` times the template there.
        """
        if self.group is None:
            return None
        g, n = self.group, self.n_peaks + 1
        w = np.where(candidates, strength, 0.0).ravel()
        sw = np.bincount(g, weights=w, minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            cy = np.bincount(g, weights=w * self.yy, minlength=n) / sw
            cx = np.bincount(g, weights=w * self.xx, minlength=n) / sw
        centred = np.zeros(n, dtype=bool)
        centred[1:] = np.hypot(cy[1:] - self.py, cx[1:] - self.px) <= self.radius
        small = np.abs(residual.ravel()) <= self.relative * np.maximum(template.ravel(), 0.0)
        return ((g > 0) & (centred[g] | small)).reshape(residual.shape)


def find_artifacts(images: np.ndarray, variances: np.ndarray, masks: np.ndarray,
                   weights, psf_moments, *, bad_mask: int,
                   config: ArtifactConfig | None = None) -> ArtifactResult:
    """Find the artefacts of each warp in a block of aligned warps.

    Parameters
    ----------
    images, variances : numpy.ndarray
        ``(N, ny, nx)`` float32 warps (nJy) and variances (nJy^2).
    masks : numpy.ndarray
        ``(N, ny, nx)`` int32 masks.
    weights : sequence of float
        ``N`` coadd weights (1/nJy^2); unused by the median template, checked.
    psf_moments : numpy.ndarray
        ``(N, 3)`` PSF second moments ``(Ixx, Iyy, Ixy)`` of the warps, pixels^2.
    bad_mask : int
        Bits that exclude a pixel (NO_DATA, BAD, SAT...); must not be 0.
    config : ArtifactConfig, optional

    Returns
    -------
    ArtifactResult
    """
    config = config or ArtifactConfig()
    n_in = images.shape[0]
    moments = np.asarray(psf_moments, dtype=float).reshape(-1, 3)
    if moments.shape[0] != n_in or not np.all(moments[:, :2] > 0):
        raise ValueError(f"need {n_in} rows of PSF moments (Ixx > 0, Iyy > 0, Ixy), got "
                         f"{moments.tolist()}")
    if len(np.asarray(weights).reshape(-1)) != n_in:
        raise ValueError(f"need {n_in} weights, got {len(np.asarray(weights).reshape(-1))}")
    if not bad_mask:
        raise ValueError("bad_mask must name at least one plane")
    shape = images.shape
    clipped = np.zeros(shape, dtype=bool)
    n_cand = np.zeros(n_in, np.int64)
    n_art = np.zeros(n_in, np.int64)
    w_in = np.asarray(weights, dtype=float).reshape(-1)
    x, v, m, approx, sigma = _match(images, variances, masks, moments, w_in, bad_mask,
                                    config)
    t_img, t_var, t_n, t_w = robust_template(x, v, m, w_in, bad_mask=bad_mask,
                                             n_sigma=config.template_n_sigma)
    template = StackResult(t_img, t_var, np.zeros(t_img.shape, np.int32), t_n,
                           np.zeros(t_img.shape, np.int32))
    if t_n.max(initial=0) < 3:
        return ArtifactResult(clipped, template, n_cand, n_art)
    t_valid = np.isfinite(t_img) & (t_var > 0)
    sources = _SourceGroups(template, sigma, config)
    candidates = np.zeros(shape, dtype=bool)
    keep = np.zeros(shape, dtype=bool)
    box = _box_size(sigma)
    for k in range(n_in):
        with np.errstate(invalid="ignore", divide="ignore"):
            valid = t_valid & ((m[k] & bad_mask) == 0)
            # Leave-one-out: compare warp k with the template of the others, so the
            # residual's variance is exactly V_k + V_others wherever warp k was averaged.
            wk = w_in[k]
            inside = valid & (t_w > wk) & (np.abs(x[k] - t_img) <= config.template_n_sigma
                                           * np.sqrt(v[k]))
            rest_w = np.where(inside, t_w - wk, 1.0)
            other = np.where(inside, (t_w * t_img - wk * x[k]) / rest_w, t_img)
            other_var = np.where(inside, (t_w * t_w * t_var - wk * wk * v[k]) / rest_w ** 2,
                                 t_var)
            diff = np.where(valid, x[k] - other, 0.0)
            resid = diff / np.sqrt(np.where(valid, v[k] + np.maximum(other_var, 0.0), 1.0))
        s = _smooth(resid.astype(np.float32), box)
        level = config.threshold * _robust_scale(s, valid)
        np.abs(s, out=s)
        candidates[k] = valid & (s > level)
        kept = sources.kept(diff, np.where(valid, other, 0.0), s, candidates[k])
        if kept is not None:
            keep[k] = kept
    del x, v, approx
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connected within a warp, never across warps
    labels, n_labels = ndimage.label(candidates, structure=structure)
    if n_labels == 0:
        return ArtifactResult(clipped, template, n_cand, n_art)
    count = candidates.sum(axis=0, dtype=np.int32)
    size = np.zeros(n_labels + 1)
    sum_n = np.zeros(n_labels + 1)
    sum_keep = np.zeros(n_labels + 1)
    n_img = template.n_image.ravel()
    for k in range(n_in):  # per warp: temporaries of one plane only
        lab = labels[k].ravel()
        size += np.bincount(lab, minlength=n_labels + 1)
        sum_n += np.bincount(lab, weights=n_img, minlength=n_labels + 1)
        sum_keep += np.bincount(lab, weights=keep[k].ravel(), minlength=n_labels + 1)
    denom = np.maximum(size, 1)
    mean_n = sum_n / denom
    eff_max = np.floor(np.minimum(config.max_fraction_epochs_low * mean_n,
                                  config.max_num_epochs
                                  + config.max_fraction_epochs_high * mean_n)).astype(np.int64)
    flat_count = count.ravel()
    few = np.zeros(shape, dtype=bool)
    sum_few = np.zeros(n_labels + 1)
    for k in range(n_in):
        lab = labels[k].ravel()
        few_k = (flat_count > 0) & (flat_count <= eff_max[lab]) & (lab > 0)
        few[k] = few_k.reshape(count.shape)
        sum_few += np.bincount(lab, weights=few_k, minlength=n_labels + 1)
    real = size >= config.min_pixels
    real[0] = False
    preserved = sum_keep >= size - 0.5
    # Mostly few-epoch candidates are artefacts as a whole (CompareWarp); in a candidate
    # merged with a source's multi-epoch residual, its few-epoch pixels outside the
    # source's own residual are.
    whole = real & ~preserved & (sum_few / denom > config.spatial_threshold)
    partial = real & ~preserved & ~whole
    grow = int(config.grow_sigma * sigma + 0.5)
    for k in range(n_in):
        lab = labels[k]
        hit = whole[lab] | (partial[lab] & few[k] & ~keep[k])
        present = np.unique(lab[lab > 0])
        n_cand[k] = int(real[present].sum())
        n_art[k] = int((whole[present]).sum() + np.unique(lab[partial[lab] & hit]).size)
        if hit.sum() >= config.min_pixels or whole[present].any():
            clipped[k] = grow_mask(hit, grow)
    return ArtifactResult(clipped, template, n_cand, n_art)
