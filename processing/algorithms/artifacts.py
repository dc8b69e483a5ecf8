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
   inflate) and whose residuals stay Gaussian (a median's do not).  Each warp
   is compared with the template of the others (leave-one-out).
3. **Candidates**, per warp, where at least one other warp has data: the
   residual ``(M_k - T) / sqrt(V_k + V_T)`` smoothed with a box of about the
   PSF width, thresholded at ``threshold`` times its robust (inter-quartile)
   scatter, both polarities; 8-connected groups of at least ``min_pixels``.
   The robust scatter absorbs the noise correlation that warping and matching
   introduce; pixels where the warp is alone (residual 0 by construction) are
   left out of it, or they would shrink it and noise would pass the threshold.
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

from ._artifact_kernels import bin_block, loo_residual
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
    bin : int
        The search runs on ``bin x bin`` binned warps (4x less work for 2; cosmic
        rays and trails stay far above the binned noise); the artefact masks
        are brought back to full resolution.
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

    bin: int = 2
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
        if self.bin < 1:
            raise ValueError(f"bin must be >= 1, got {self.bin}")
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
    """0.7413 x IQR of the valid values (every 5th pixel; 1 when there are too few)."""
    sample = values.ravel()[::5][valid.ravel()[::5]]
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
    warp's excluded pixels are first filled with the median of the (unmatched)
    warps, so a source cut by a bad column keeps its matched profile up to the
    small PSF difference of the filled pixels (and an artefact of another warp
    does not leak in); where no warp has data the convolution is normalised by
    the kernel weight on data.
    """
    ixx, iyy, ixy = moments[:, 0], moments[:, 1], moments[:, 2]
    target = float(np.max(np.maximum(ixx, iyy) + np.abs(ixy))) * 1.0001
    _, _, fill_n, _, fill = robust_template(images, variances, masks, weights,
                                            bad_mask=bad_mask)
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

    def kept(self, index: np.ndarray, residual, template, strength) -> np.ndarray:
        """For the candidate pixels ``index`` (flat) of one warp: the source's own residual?

        Inside a source footprint, a pixel is kept when the warp's candidates
        of that source have their |residual|-weighted centroid within
        ``radius`` of its peak (centro-symmetric: PSF mismatch, a variable
        star), or when its residual is below ``relative`` times the template.
        ``residual``, ``template`` and ``strength`` are the values at ``index``.
        """
        if self.group is None or index.size == 0:
            return np.zeros(index.size, dtype=bool)
        g = self.group[index]
        n = self.n_peaks + 1
        sw = np.bincount(g, weights=strength, minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            cy = np.bincount(g, weights=strength * self.yy[index], minlength=n) / sw
            cx = np.bincount(g, weights=strength * self.xx[index], minlength=n) / sw
        centred = np.zeros(n, dtype=bool)
        centred[1:] = np.hypot(cy[1:] - self.py, cx[1:] - self.px) <= self.radius
        small = np.abs(residual) <= self.relative * np.maximum(template, 0.0)
        return (g > 0) & (centred[g] | small)


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
    b = int(config.bin)
    bx, bv, bm = _binned(images, variances, masks, bad_mask, b)
    x, v, m, _, sigma = _match(bx, bv, bm, moments / (b * b), w_in, bad_mask, config)
    del bx, bv, bm
    t_img, t_var, t_n, t_w, t_med = robust_template(x, v, m, w_in, bad_mask=bad_mask,
                                                    n_sigma=config.template_n_sigma)
    template = StackResult(t_img, t_var, np.zeros(t_img.shape, np.int32), t_n,
                           np.zeros(t_img.shape, np.int32))
    if t_n.max(initial=0) < 3:
        return ArtifactResult(clipped, template, n_cand, n_art)
    t_valid = np.isfinite(t_img) & (t_var > 0)
    # Sources are found on the median, which the faint wings of an artefact in one or
    # two epochs do not reach (the robust mean keeps wings within 3 sigma).
    med_var = np.where(t_n > 2, np.pi / 2, 1.0) * t_var
    sources = _SourceGroups(StackResult(t_med, med_var, template.mask, t_n, template.n_clipped),
                            sigma, config)
    bshape = x.shape
    plane = bshape[1] * bshape[2]
    candidates = np.zeros(bshape, dtype=bool)
    keep = np.zeros(bshape, dtype=bool)
    box = _box_size(sigma)
    resid = np.empty(bshape[1:], np.float32)
    diff = np.empty(bshape[1:], np.float32)
    other = np.empty(bshape[1:], np.float32)
    for k in range(n_in):
        # Only where another input can be compared with warp k: where warp k is alone,
        # its residual against itself is 0, and those zeros would shrink the robust
        # scale below the noise (threshold at ~1.5 sigma: blobs of noise clipped).
        valid = t_valid & ((m[k] & bad_mask) == 0) & (t_n >= 2)
        # Leave-one-out: warp k against the template of the others, so the residual's
        # variance is V_k + V_others wherever warp k was averaged into the template.
        loo_residual(x[k], v[k], valid, t_img, t_var, t_w, float(w_in[k]),
                     float(config.template_n_sigma), resid, diff, other)
        s = _smooth(resid, box)
        level = config.threshold * _robust_scale(s, valid)
        np.abs(s, out=s)
        cand = valid & (s > level)
        candidates[k] = cand
        index = np.flatnonzero(cand)
        keep[k].ravel()[index] = sources.kept(index, diff.ravel()[index], other.ravel()[index],
                                              s.ravel()[index])
    del x, v
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connected within a warp, never across warps
    labels, n_labels = ndimage.label(candidates, structure=structure)
    if n_labels == 0:
        return ArtifactResult(clipped, template, n_cand, n_art)
    # Bookkeeping on the candidate pixels only (a few per cent of the block).
    index = np.flatnonzero(labels)
    lab = labels.ravel()[index]
    warp_of = index // plane
    pixel = index % plane
    count = candidates.sum(axis=0, dtype=np.int32).ravel()[pixel]
    kept = keep.ravel()[index]
    size = np.bincount(lab, minlength=n_labels + 1).astype(float)
    denom = np.maximum(size, 1)
    mean_n = np.bincount(lab, weights=t_n.ravel()[pixel], minlength=n_labels + 1) / denom
    eff_max = np.floor(np.minimum(config.max_fraction_epochs_low * mean_n,
                                  config.max_num_epochs
                                  + config.max_fraction_epochs_high * mean_n)).astype(np.int64)
    few = (count > 0) & (count <= eff_max[lab])
    frac_few = np.bincount(lab, weights=few, minlength=n_labels + 1) / denom
    preserved = np.bincount(lab, weights=kept, minlength=n_labels + 1) >= size - 0.5
    real = size >= config.min_pixels
    real[0] = False
    # Mostly few-epoch candidates are artefacts as a whole (CompareWarp); in a candidate
    # merged with a source's multi-epoch residual, its few-epoch pixels outside the
    # source's own residual are.
    whole = real & ~preserved & (frac_few > config.spatial_threshold)
    partial = real & ~preserved & ~whole
    hit = whole[lab] | (partial[lab] & few & ~kept)
    first = np.unique(lab, return_index=True)[1]
    owner = warp_of[first]
    labels_present = lab[first]
    n_cand[:] = np.bincount(owner[real[labels_present]], minlength=n_in)
    hit_labels = np.unique(lab[hit])
    n_art[:] = np.bincount(warp_of[first][np.isin(labels_present, hit_labels)], minlength=n_in)
    grow = int(config.grow_sigma * sigma * b + 0.5)
    for k in np.flatnonzero(n_art):
        mask_b = np.zeros(plane, dtype=bool)
        mask_b[pixel[hit & (warp_of == k)]] = True
        full = np.repeat(np.repeat(mask_b.reshape(bshape[1:]), b, axis=0), b, axis=1)
        clipped[k] = grow_mask(full[:shape[1], :shape[2]], grow)
    return ArtifactResult(clipped, template, n_cand, n_art)


def _binned(images, variances, masks, bad_mask: int, b: int):
    """``b x b`` binned planes; the binned mask is ``bad_mask``'s lowest bit where unusable."""
    if b == 1:
        return images, variances, masks
    n_in, ny, nx = images.shape
    shape = (n_in, -(-ny // b), -(-nx // b))
    bx = np.empty(shape, np.float32)
    bv = np.empty(shape, np.float32)
    bm = np.empty(shape, np.int32)
    bin_block(images, variances, masks, int(bad_mask), b, bx, bv, bm)
    return bx, bv, bm
