"""Transient artefacts in a stack of warps (Rubin's safe-clip / compare-warp idea).

See ``reference/algorithms.md`` 3.5-3.6.  An artefact (satellite trail, cosmic
ray, ghost) is present in one or two epochs only; a real source is present in
all, even when variable or when the epochs' PSFs differ.  On one block of
aligned warps (a subregion of the patch, all inputs):

1. **PSF matching**: every warp is convolved to one common PSF (CompareWarp
   compares PSF-matched warps for the same reason: a star then differs between
   epochs only by noise).  With the warps' PSF models (the coadd task's case)
   the kernels come from :func:`psf_matching_kernels`: the target is the
   broadest PSF slightly broadened, kernel ``k`` the regularised Fourier ratio
   of the target to PSF ``k``, so non-Gaussian (Moffat) profiles of different
   widths match in the core *and* the wings; the models are evaluated at the
   centre of column tiles ``psf_tile`` pixels wide, as PSFs vary over a patch.
   On the demo survey this leaves 0.2-0.7% (r.m.s., relative) of a bright
   star in each epoch, against 1-5% for a Gaussian matched to adaptive moments
   and 1-12% for one matched to unweighted moments.  With only second moments
   ``C_k``, the kernel is the elliptical Gaussian of covariance ``s^2 I - C_k``
   (exact for Gaussian PSFs), three 1-D passes along x, y and a diagonal.  A
   warp's excluded pixels are filled with the robust mean of the others before
   convolving (pixels whose kernel is less than half on the warp's own data are
   excluded; those with less than ``approx_own`` are *approximate*).
2. **Template**: per pixel, the weighted mean of the matched warps that lie
   within ``template_n_sigma`` of their own noise from the median, which one or
   two deviant epochs cannot move (CompareWarp's template is a 2.5-sigma
   clipped mean, whose inter-quartile first pass two outliers among six
   inflate) and whose residuals stay Gaussian (a median's do not).  Each warp
   is compared with the template of the others (leave-one-out).
3. **Candidates**, per warp, where at least one other warp has data: the
   residual ``(M_k - T) / sqrt(V_k + V_T + (tolerance T)^2)`` (the last term:
   the matching error, proportional to the source's surface brightness, like
   the source term of CompareWarp's empirical template variance) smoothed with
   a box of about the PSF width, thresholded at ``threshold`` times its robust
   (inter-quartile) scatter, both polarities; 8-connected groups of at least
   ``min_pixels``.  The robust scatter absorbs the noise correlation that
   warping and matching introduce; pixels where the warp is alone (residual 0
   by construction) are left out of it, or they would shrink it and noise
   would pass the threshold.
4. **Epoch count**: at every pixel, the number of warps with a candidate there
   (approximate pixels count for their own epoch only).  A candidate of mean
   input count ``N`` is an artefact when more than ``spatial_threshold`` of its
   pixels are candidates in at least one and at most ``int(min(0.4 N, 2 +
   0.03 N))`` epochs (CompareWarp's rule; with ``N < 3`` nothing can be decided
   and nothing is clipped).
5. **Sources are preserved**: inside the template's source footprints (S/N
   above ``preserve_threshold``, grown by ``preserve_grow_sigma`` sigmas) each
   warp's candidate pixels are grouped by their nearest template peak.  A pixel
   is the source's own when its group's |residual|-weighted centroid lies within
   ``max(1, preserve_centroid_sigma * sigma)`` pixels of the peak (PSF-shape
   mismatch and variability are centro-symmetric about the source), or when its
   residual is below ``preserve_relative`` of the template there (matching
   errors scale with the source); a candidate made only of such pixels is kept.
   A candidate lying entirely inside the footprints (``preserve_contained``,
   CompareWarp's doPreserveContainedBySource) is kept when it is mostly
   multi-epoch, mostly approximate, or when its footprint is *persistent*: the
   sources' own residual is found in more than the few-epoch limit of epochs,
   so no epoch subtracts it cleanly and one more residual is not an artefact.
   An artefact on a cleanly subtracted source pulls the centroid off the peak
   and stands out against the source's profile, except within the core of a
   bright source; one on a persistent source is kept (cosmic rays are repaired
   upstream; a trail extends beyond the source and is clipped as a whole).
6. Artefact footprints grow by ``grow_sigma`` matched-PSF sigmas and become the
   warp's CLIPPED pixels.

Decisions: the matched variance is approximated as ``V_k sum(K^2)`` (locally
constant variance); smoothing uses a box filter (``2 int(sigma + 0.5) + 1``
pixels, ~90% of the matched-filter S/N for a point source) because it costs a
few nanoseconds per pixel; all warps of a block are labelled in one
``ndimage.label`` call (no connectivity across warps).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import fft as sp_fft
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
        Convolve the warps to a common PSF before comparing them.
    approx_own : float
        A matched pixel whose kernel has less than this fraction of its weight
        on the warp's own data (the rest on excluded pixels, filled with the
        median of the unmatched warps) is approximate: it does not count as an
        epoch for the others, and a candidate inside a source made mostly of
        such pixels is kept.
    psf_tile : int
        With PSF models: width (pixels) of the column tiles that get their own
        matching kernels.
    match_broadening : tuple of float
        With PSF models: trial sigmas (pixels, increasing) of the Gaussian that
        broadens the broadest PSF into the common target; the first whose
        kernels are nearly positive is used.
    match_max_negative : float
        With PSF models: largest fraction of a matching kernel's sum in
        negative lobes.
    match_regularisation : float
        With PSF models: regularisation of the Fourier division.
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
    tolerance : float
        Fractional PSF-matching error: ``(tolerance x template)^2`` is added to
        the variance of each residual, so the imperfectly matched profile of a
        bright source is not significant while an artefact on faint sky is.
    preserve_contained : bool
        Keep candidates lying entirely inside the template's source footprints
        when they are mostly multi-epoch or the footprint is *persistent* (see
        ``_SourceGroups.persistent``): CompareWarp's doPreserveContainedBySource,
        restricted so that an artefact on a cleanly subtracted source is still
        found.
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
    tolerance: float = 0.05
    preserve_contained: bool = True
    approx_own: float = 0.95
    psf_tile: int = 512
    match_broadening: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0)
    match_max_negative: float = 0.15
    match_regularisation: float = 1e-3

    def __post_init__(self):
        if self.bin < 1:
            raise ValueError(f"bin must be >= 1, got {self.bin}")
        if not self.threshold > 0:
            raise ValueError(f"threshold must be > 0, got {self.threshold}")
        if self.min_pixels < 1:
            raise ValueError(f"min_pixels must be >= 1, got {self.min_pixels}")
        if not 0 <= self.spatial_threshold < 1:
            raise ValueError(f"spatial_threshold must be in [0, 1), got {self.spatial_threshold}")
        if not self.tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")
        if not 0.5 <= self.approx_own <= 1:
            raise ValueError(f"approx_own must be in [0.5, 1], got {self.approx_own}")
        if self.psf_tile < 16:
            raise ValueError(f"psf_tile must be >= 16 pixels, got {self.psf_tile}")
        if not (len(self.match_broadening) and min(self.match_broadening) > 0
                and self.match_regularisation > 0):
            raise ValueError("match_broadening and match_regularisation must be > 0, got "
                             f"{self.match_broadening} and {self.match_regularisation}")


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


class _GaussianMatch:
    """Matching to a common circular Gaussian from the warps' PSF second moments.

    Warp ``k`` with PSF second moments ``C_k`` is convolved with the Gaussian of
    covariance ``s^2 I - C_k``, ``s^2 = max_k(max(C_xx, C_yy) + |C_xy|)``, the
    smallest circular target every warp can reach with three 1-D passes.  Exact
    for Gaussian PSFs only.
    """

    def __init__(self, moments: np.ndarray):
        self.moments = moments
        ixx, iyy, ixy = moments[:, 0], moments[:, 1], moments[:, 2]
        self.target = float(np.max(np.maximum(ixx, iyy) + np.abs(ixy))) * 1.0001
        self.sigma = float(np.sqrt(self.target))

    def _cov(self, k: int):
        ixx, iyy, ixy = self.moments[k]
        return self.target - ixx, self.target - iyy, -ixy

    def needed(self, k: int) -> bool:
        cxx, cyy, _ = self._cov(k)
        return max(cxx, cyy) >= 0.02

    def convolve(self, k: int, images) -> list[np.ndarray]:
        """Each of ``images`` convolved with warp ``k``'s kernel (zeros outside)."""
        return [_gaussian_convolve(im, *self._cov(k)) for im in images]

    def noise_gain(self, k: int, shape) -> np.ndarray | float:
        """``sum(K^2)``: the factor of a white-noise variance after convolving."""
        cxx, cyy, cxy = self._cov(k)
        reach = int(np.ceil(4 * np.sqrt(max(cxx, cyy) + abs(cxy)))) + 1
        delta = np.zeros((2 * reach + 1, 2 * reach + 1), np.float32)
        delta[reach, reach] = 1.0
        return float(np.sum(_gaussian_convolve(delta, cxx, cyy, cxy) ** 2))


def _bin_kernel(kernel: np.ndarray, b: int) -> np.ndarray:
    """A PSF kernel image summed in ``b x b`` blocks, one block starting at its centre pixel.

    Every warp's kernel is binned with the same phase, so the sub-pixel offset
    this leaves is common to all and cancels in the matching kernels.
    """
    half = kernel.shape[0] // 2
    lo = half % b
    n = (kernel.shape[0] - lo) // b * b
    k = kernel[lo:lo + n, lo:lo + n]
    return k.reshape(n // b, b, n // b, b).sum(axis=(1, 3))


def psf_matching_kernels(kernels: np.ndarray, b: int = 1, *,
                         broadening: Sequence[float] = (0.5, 1.0, 1.5, 2.0, 3.0),
                         max_negative: float = 0.15, regularisation: float = 1e-3
                         ) -> tuple[np.ndarray, float]:
    """Kernels that bring PSFs to one common PSF (ModelPsfMatch's role, solved by division).

    The target is the broadest PSF (largest adaptive-moment determinant)
    convolved with a circular Gaussian of sigma ``beta`` (pixels of the input
    kernels).  Kernel ``k`` is ``F^-1[T P_k* / (|P_k|^2 + r^2)]`` (``r``:
    ``regularisation``), cropped to the binned PSF size plus 2 pixels each side
    and normalised to sum 1: unlike a Gaussian matched to second moments, it
    also matches the wings of non-Gaussian (Moffat) PSFs of different widths.
    ``beta`` is the first of ``broadening`` for which no kernel has negative
    lobes holding more than ``max_negative`` of its sum (a narrower target
    asks some kernels to sharpen a PSF, which amplifies noise); the last one
    otherwise.

    Parameters
    ----------
    kernels : numpy.ndarray
        ``(N, k, k)`` PSF kernel images (odd ``k``, centred), at full resolution.
    b : int
        The images to match are ``b x b`` binned: kernels for the binned grid.
    broadening : sequence of float
        Increasing trial sigmas of the target's Gaussian broadening, pixels.
    max_negative, regularisation : float

    Returns
    -------
    kernels : numpy.ndarray
        ``(N, s, s)`` float32 matching kernels (odd ``s``), binned pixels.
    sigma : float
        Gaussian sigma (determinant radius of the adaptive moments) of the
        target PSF, binned pixels.
    """
    from .moments import adaptive_moments

    pb = np.array([_bin_kernel(np.asarray(k, float), b) for k in kernels])
    pb /= pb.sum(axis=(1, 2))[:, None, None]
    n = pb.shape[1]
    centre = (n - 1) / 2.0
    initial = max(1.0, 2.25 / (b * b))
    am = adaptive_moments(pb, centre, centre, initial=initial)
    det = np.where(np.isfinite(am.xx * am.yy), am.xx * am.yy - am.xy ** 2, -np.inf)
    size = 2 * n + 1
    f = np.fft.rfft2(pb, s=(size, size))
    k2 = np.fft.fftfreq(size)[:, None] ** 2 + np.fft.rfftfreq(size)[None, :] ** 2
    widest = f[int(np.argmax(det))]
    c, half = size // 2, n // 2 + 2
    for beta in broadening:
        target = widest * np.exp(-2.0 * np.pi ** 2 * (beta / b) ** 2 * k2)
        ratio = target[None] * np.conj(f) / (np.abs(f) ** 2 + regularisation ** 2)
        full = np.fft.fftshift(np.fft.irfft2(ratio, s=(size, size)), axes=(1, 2))
        out = full[:, c - half:c + half + 1, c - half:c + half + 1]
        out = out / out.sum(axis=(1, 2))[:, None, None]
        if np.max(-np.minimum(out, 0).sum(axis=(1, 2))) <= max_negative:
            break
    # The target sits where the PSFs' centre is in their stamps: move it to the middle.
    shift = c - int(centre)
    t_img = np.roll(np.fft.irfft2(target, s=(size, size)), (shift, shift), axis=(0, 1))
    t_mom = adaptive_moments(t_img[None], centre + shift, centre + shift, initial=initial)
    sigma = float((t_mom.xx[0] * t_mom.yy[0] - t_mom.xy[0] ** 2) ** 0.25)
    if not np.isfinite(sigma) or sigma <= 0:
        sigma = float(np.max(det) ** 0.25 + beta / b)
    return out.astype(np.float32), sigma


class _KernelMatch:
    """Matching with :func:`psf_matching_kernels`, per column tile of the block.

    The PSFs of a warp vary over a patch, so the block is split into tiles
    about ``config.psf_tile`` pixels wide; in each, the kernels come from the
    PSF models at the tile's centre, for the warps with data there.
    """

    def __init__(self, psfs, origin, b: int, valid: np.ndarray, config: ArtifactConfig):
        _, ny, nx = valid.shape
        n_tiles = max(1, round(nx * b / config.psf_tile))
        edges = np.linspace(0, nx, n_tiles + 1).round().astype(int)
        yc = origin[1] + 0.5 * ny * b - 0.5
        self.tiles: list[tuple[int, int, dict[int, np.ndarray]]] = []
        sigmas = []
        for c0, c1 in itertools.pairwise(edges):
            present = np.flatnonzero(valid[:, :, c0:c1].any(axis=(1, 2)))
            if present.size == 0:
                continue
            xc = origin[0] + 0.5 * (c0 + c1) * b - 0.5
            images = [psfs[k].kernel_image(xc, yc) for k in present]
            size = max(im.shape[0] for im in images)
            padded = np.array([np.pad(im, (size - im.shape[0]) // 2) for im in images])
            kern, sigma = psf_matching_kernels(padded, b, broadening=config.match_broadening,
                                               max_negative=config.match_max_negative,
                                               regularisation=config.match_regularisation)
            self.tiles.append((int(c0), int(c1), dict(zip(present.tolist(), kern, strict=True))))
            sigmas.append(sigma)
        self.sigma = float(max(sigmas)) if sigmas else 1.0

    def needed(self, k: int) -> bool:
        return any(k in kern for _, _, kern in self.tiles)

    def convolve(self, k: int, images) -> list[np.ndarray]:
        """Each of ``images`` convolved with warp ``k``'s kernels, tile by tile (zeros outside).

        FFT convolution of each tile and its reach; images equal over a tile's
        reach are transformed once there (the masks of a warp usually are).
        """
        out = [np.zeros_like(im) for im in images]
        ny, nx = images[0].shape
        for c0, c1, kern in self.tiles:
            if k not in kern:
                continue
            half = kern[k].shape[1] // 2
            a, z = max(c0 - half, 0), min(c1 + half, nx)
            shape = (sp_fft.next_fast_len(ny + 2 * half, real=True),
                     sp_fft.next_fast_len(z - a + 2 * half, real=True))
            kf = sp_fft.rfft2(kern[k], s=shape)
            done: list[tuple[np.ndarray, np.ndarray]] = []
            for im, o in zip(images, out, strict=True):
                part = im[:, a:z]
                conv = next((c for p, c in done if np.array_equal(p, part)), None)
                if conv is None:
                    full = sp_fft.irfft2(sp_fft.rfft2(part, s=shape) * kf, s=shape)
                    conv = full[half:half + ny, half:half + z - a]
                    done.append((part, conv))
                o[:, c0:c1] = conv[:, c0 - a:c1 - a]
        return out

    def noise_gain(self, k: int, shape) -> np.ndarray:
        gain = np.ones(shape[1], np.float32)
        for c0, c1, kern in self.tiles:
            if k in kern:
                gain[c0:c1] = np.sum(kern[k].astype(float) ** 2)
        return gain[None, :]


def _match(images, variances, masks, weights, bad_mask, config, matcher):
    """Warps convolved to a common PSF by ``matcher`` (:class:`_KernelMatch` or Gaussian).

    Returns ``(images, variances, masks, approx)``; ``approx`` marks the
    pixels whose kernel met excluded pixels.

    The warp's excluded pixels are first filled with the median of the
    (unmatched) warps, so a source cut by a bad column keeps its matched
    profile up to the small PSF difference of the filled pixels (and an
    artefact of another warp does not leak in); where no warp has data the
    convolution is normalised by the kernel weight on data.
    """
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
        if config.match_psfs and matcher.needed(k):
            support = valid | has_fill
            filled = np.where(valid, images[k], np.where(has_fill, fill, 0.0)).astype(np.float32)
            matched, weight, own = matcher.convolve(
                k, [filled, support.astype(np.float32), valid.astype(np.float32)])
            usable = valid & (own >= 0.5) & (weight > 0.5)
            with np.errstate(invalid="ignore", divide="ignore"):
                x[k][usable] = matched[usable] / weight[usable]
            valid = usable
            approx[k] = usable & (own < config.approx_own)
            # The matched variance: V sum(K^2) for white noise; warped noise is already
            # correlated, so rescale to the measured scatter of the matched pixels.
            v[k] *= np.float32(1.0) * matcher.noise_gain(k, images.shape[1:])
            if valid.sum() > 1000:
                scale = _robust_scale(x[k], valid) ** 2 / float(np.median(v[k][valid]))
                v[k] *= np.float32(np.clip(scale, 0.2, 5.0))
        m[k][~valid] = bad_mask & -bad_mask  # the lowest bad bit marks excluded pixels
    return x, v, m, approx


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
            self.group = self.footprint = None
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
        # Connected footprints (a blend is one), each with its highest-S/N pixel.
        fp_id, self.n_footprints = ndimage.label(footprint, structure=np.ones((3, 3), bool))
        self.footprint = fp_id.ravel()
        self.footprint_peak = np.array(
            ndimage.maximum_position(s, fp_id, np.arange(1, self.n_footprints + 1)),
            dtype=np.intp).reshape(-1, 2)
        self.yy, self.xx = (a.ravel().astype(float) for a in np.indices(peak_id.shape))
        self.relative = config.preserve_relative

    def persistent(self, candidates: np.ndarray, keep: np.ndarray, n_image: np.ndarray,
                   config: ArtifactConfig) -> np.ndarray:
        """Per footprint (index 0: outside every footprint, False): residual in many epochs?

        An epoch counts when most of its candidate pixels in the footprint are
        the sources' own (:meth:`kept`: centred on their peak or small against
        the template; an artefact on a source is neither).  A footprint is
        persistent when more than ``max(1, int(min(low N, max + high N)))`` of
        the ``N`` epochs at its highest-S/N pixel count: no epoch subtracts it
        cleanly (a bright star whose PSF the Gaussian matching cannot
        equalise), so what is left of it in one epoch is not an artefact either.
        """
        n = self.n_footprints + 1 if self.footprint is not None else 1
        out = np.zeros(n, dtype=bool)
        if self.footprint is None:
            return out
        epochs = np.zeros(n, np.int64)
        for cand, kp in zip(candidates, keep, strict=True):
            idx = np.flatnonzero(cand)
            f = self.footprint[idx]
            total = np.bincount(f, minlength=n)
            own = np.bincount(f, weights=kp.ravel()[idx], minlength=n)
            epochs += (total > 0) & (own >= 0.5 * total)
        n_in = n_image[self.footprint_peak[:, 0], self.footprint_peak[:, 1]].astype(float)
        limit = np.floor(np.minimum(config.max_fraction_epochs_low * n_in,
                                    config.max_num_epochs
                                    + config.max_fraction_epochs_high * n_in))
        out[1:] = epochs[1:] > np.maximum(limit, 1)
        return out

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
                   weights, psf_moments=None, *, bad_mask: int,
                   config: ArtifactConfig | None = None, psfs=None,
                   origin: tuple[float, float] = (0.0, 0.0)) -> ArtifactResult:
    """Find the artefacts of each warp in a block of aligned warps.

    Parameters
    ----------
    images, variances : numpy.ndarray
        ``(N, ny, nx)`` float32 warps (nJy) and variances (nJy^2).
    masks : numpy.ndarray
        ``(N, ny, nx)`` int32 masks.
    weights : sequence of float
        ``N`` coadd weights (1/nJy^2); unused by the median template, checked.
    psf_moments : numpy.ndarray, optional
        ``(N, 3)`` PSF second moments ``(Ixx, Iyy, Ixy)`` of the warps, pixels^2:
        Gaussian matching (exact for Gaussian PSFs).  Needed without ``psfs``.
    bad_mask : int
        Bits that exclude a pixel (NO_DATA, BAD, SAT...); must not be 0.
    config : ArtifactConfig, optional
    psfs : sequence of store.psf.Psf, optional
        The ``N`` warps' PSF models: matching by :func:`psf_matching_kernels`
        from the models at the centre of each column tile (preferred).
    origin : tuple of float
        Position of the block's pixel ``[0, 0]`` in the PSF models' pixel frame.

    Returns
    -------
    ArtifactResult
    """
    config = config or ArtifactConfig()
    n_in = images.shape[0]
    if psfs is not None:
        psfs = list(psfs)
        if len(psfs) != n_in or any(p is None for p in psfs):
            raise ValueError(f"need {n_in} PSF models, got {psfs}")
    elif psf_moments is None:
        raise ValueError("need the warps' PSF models (psfs) or their moments (psf_moments)")
    else:
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
    if psfs is not None:
        matcher = _KernelMatch(psfs, origin, b, np.isfinite(bx) & ((bm & bad_mask) == 0), config)
    else:
        matcher = _GaussianMatch(moments / (b * b))
    sigma = matcher.sigma
    x, v, m, approx = _match(bx, bv, bm, w_in, bad_mask, config, matcher)
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
                     float(config.template_n_sigma), float(config.tolerance), resid, diff, other)
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
    # Epochs with a candidate at each pixel.  Pixels whose matched value is approximate
    # (the kernel met the warp's own excluded pixels, filled with the unmatched median)
    # count only for their own epoch: a matching error next to a bad column or a
    # saturated core must not make another epoch's artefact there look multi-epoch.
    exact = candidates & ~approx
    del approx
    own_approx = ~exact.ravel()[index]
    count = exact.sum(axis=0, dtype=np.int32).ravel()[pixel] + own_approx
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
    if config.preserve_contained and sources.footprint is not None:
        # Inside a source's footprint: the residual of a source that no epoch subtracts
        # cleanly, or a mostly multi-epoch residual (CompareWarp keeps every contained one).
        fp = sources.footprint[pixel]
        contained = np.bincount(lab, weights=fp > 0, minlength=n_labels + 1) >= size - 0.5
        persistent = sources.persistent(exact, keep, t_n, config)[fp]
        on_persistent = np.bincount(lab, weights=persistent, minlength=n_labels + 1)
        # Mostly approximate inside a source: the matching error of the filled pixels.
        frac_approx = np.bincount(lab, weights=own_approx, minlength=n_labels + 1) / denom
        preserved |= contained & ((on_persistent >= size - 0.5)
                                  | (frac_few <= config.spatial_threshold)
                                  | (frac_approx >= 0.5))
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
