"""Adaptive second moments (SdssShape-like), batched over a stack of stamps.

The weight is an elliptical Gaussian ``w = exp(-r^T M^-1 r / 2)`` centred at
``c``.  Each iteration measures the central second moments ``Q`` and the mean
offset ``m`` of ``w * I`` and updates the weight by "deweighting": for a
Gaussian object of covariance ``C`` and centre ``mu``, ``w * I`` is a Gaussian
of covariance ``Q = (C^-1 + M^-1)^-1`` centred at ``c + Q C^-1 (mu - c)``, so

    C = (Q^-1 - M^-1)^-1,     mu = c + C Q^-1 m,

and the next weight is ``M = C``, ``c = mu``.  A Gaussian converges in one step,
other profiles in a few; at convergence ``M`` is the object's adaptive moment
matrix (reported ``xx, yy, xy``).  Hence the moments of a 2-D Gaussian of
covariance ``C`` are exactly ``C`` (up to pixel sampling), and

    FWHM = sqrt(8 ln 2) * (Ixx Iyy - Ixy^2)^(1/4) * pixel_scale

is the seeing for a Gaussian PSF (the convention of the whole project).  The
flux normalisation ``2 sum(w I)`` returns the total flux of a Gaussian whose
moments match the weight.

Convergence follows SdssShape: the ellipticity components of successive
estimates differ by less than ``tol1`` and the trace by less than a fraction
``tol2`` (and the centre moved by less than ``tol2`` times the size), at most
``max_iter`` (100) iterations.  Each source iterates on its own in a compiled
loop (``_measure_kernels.adaptive_moments_loop``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from store.psf import GaussianPsf, PixelBasisPsf, Psf

from ._measure_kernels import adaptive_moments_loop
from .psf_images import kernel_images

__all__ = [
    "FWHM_PER_SIGMA",
    "AdaptiveMoments",
    "adaptive_moments",
    "determinant_radius",
    "moments_to_fwhm",
    "psf_moments",
    "psf_moments_at",
    "trace_radius",
]

#: sqrt(8 ln 2): FWHM of a Gaussian per unit sigma.
FWHM_PER_SIGMA = float(np.sqrt(8.0 * np.log(2.0)))

#: Largest centre change per iteration (pixels); keeps noisy sources from running away.
_MAX_STEP = 1.0


@dataclass(frozen=True)
class AdaptiveMoments:
    """Result of :func:`adaptive_moments`; every attribute has shape ``(n,)``.

    Attributes
    ----------
    xx, yy, xy : numpy.ndarray
        Adaptive second moments, pixel^2 (NaN where the shape is bad).
    x, y : numpy.ndarray
        Centre of the final weight in stamp pixel coordinates.
    flux, flux_err : numpy.ndarray
        ``2 sum(w I)`` and its 1-sigma error ``2 sqrt(sum(w^2 V))`` (NaN
        without a variance), in image units.
    n_iter : numpy.ndarray
        Iterations used.
    flag_not_converged : numpy.ndarray
        ``max_iter`` reached without meeting the tolerances.
    flag_bad_shape : numpy.ndarray
        Non-positive weighted flux, a moment matrix that is not positive
        definite, or a weight too large for the stamp.
    flag_shift : numpy.ndarray
        The centre moved more than ``max_shift`` from its start.
    """

    xx: np.ndarray
    yy: np.ndarray
    xy: np.ndarray
    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    n_iter: np.ndarray
    flag_not_converged: np.ndarray
    flag_bad_shape: np.ndarray
    flag_shift: np.ndarray

    @property
    def flag(self) -> np.ndarray:
        """Any failure."""
        return self.flag_not_converged | self.flag_bad_shape | self.flag_shift


def adaptive_moments(
    stamps: np.ndarray,
    x0,
    y0,
    *,
    variance: np.ndarray | None = None,
    good: np.ndarray | None = None,
    initial=None,
    max_iter: int = 100,
    tol1: float = 1e-5,
    tol2: float = 1e-4,
    recentre: bool = True,
    max_shift: float = 2.0,
) -> AdaptiveMoments:
    """Adaptive (elliptical-Gaussian-weighted, iterated) second moments.

    Parameters
    ----------
    stamps : numpy.ndarray
        ``(n, k, k)`` (or ``(k, k)``) background-subtracted images, any units.
        Pixel ``[j, i]`` of a stamp is at stamp coordinates ``(x, y) = (i, j)``.
    x0, y0 : array_like
        ``(n,)`` starting centres in stamp coordinates (pixels).
    variance : numpy.ndarray, optional
        ``(n, k, k)`` per-pixel variance (image units squared), for the flux error.
    good : numpy.ndarray, optional
        ``(n, k, k)`` boolean; False pixels get zero weight (masked, off-image).
    initial : array_like, optional
        Starting weight moments: a scalar variance (round weight, pixel^2),
        ``(n,)`` variances, or ``(n, 3)`` ``(xx, yy, xy)``.  Default: a round
        weight of sigma 1.5 pixels.
    max_iter : int
        Maximum number of iterations (SdssShape: 100).
    tol1 : float
        Convergence tolerance on the ellipticity components.
    tol2 : float
        Convergence tolerance on the fractional change of the trace.
    recentre : bool
        Iterate the centre as well (True), or keep it fixed at ``(x0, y0)``.
    max_shift : float
        Flag (``flag_shift``) sources whose centre moves farther than this, pixels.

    Returns
    -------
    AdaptiveMoments

    Examples
    --------
    >>> yy, xx = np.mgrid[0:41, 0:41] - 20.0
    >>> star = np.exp(-0.5 * (xx**2 / 6.0 + yy**2 / 3.0))
    >>> m = adaptive_moments(star[None], [20.0], [20.0])
    >>> round(float(m.xx[0]), 6), round(float(m.yy[0]), 6)
    (6.0, 3.0)
    """
    stamps = np.asarray(stamps, dtype=float)
    if stamps.ndim == 2:
        stamps = stamps[None]
    if stamps.ndim != 3:
        raise ValueError(f"stamps must have shape (n, k, k), got {stamps.shape}")
    n, ky, kx = stamps.shape
    cx = np.broadcast_to(np.asarray(x0, dtype=float), (n,)).copy()
    cy = np.broadcast_to(np.asarray(y0, dtype=float), (n,)).copy()
    start_x, start_y = cx.copy(), cy.copy()
    if variance is not None:
        variance = np.ascontiguousarray(np.broadcast_to(np.asarray(variance, dtype=float),
                                                        stamps.shape))
    if good is not None:
        good = np.ascontiguousarray(np.broadcast_to(np.asarray(good, dtype=bool), stamps.shape))
        stamps = np.where(good, stamps, 0.0)
    stamps = np.ascontiguousarray(stamps)
    if initial is None:
        initial = 2.25
    init = np.asarray(initial, dtype=float)
    if init.ndim == 2:
        mxx, myy, mxy = (np.broadcast_to(init[:, c], (n,)).copy() for c in range(3))
    else:
        mxx = np.broadcast_to(init, (n,)).copy()
        myy, mxy = mxx.copy(), np.zeros(n)
    # A weight wider than a quarter of the stamp sees the stamp edges.
    max_trace = 2.0 * (min(kx, ky) / 4.0) ** 2

    n_iter = np.zeros(n, dtype=np.int64)
    converged = np.zeros(n, dtype=bool)
    bad = np.zeros(n, dtype=bool)
    flux, sw2v = np.empty(n), np.empty(n)
    adaptive_moments_loop(stamps, good, variance, cx, cy, mxx, myy, mxy, int(max_iter),
                          float(tol1), float(tol2), bool(recentre), _MAX_STEP, max_trace,
                          n_iter, converged, bad, flux, sw2v)
    flux_err = 2.0 * np.sqrt(sw2v) if variance is not None else np.full(n, np.nan)
    shift = np.hypot(cx - start_x, cy - start_y) > max_shift
    bad |= ~np.isfinite(flux) | (flux <= 0)
    nan = np.where(bad, np.nan, 1.0)
    return AdaptiveMoments(
        xx=mxx * nan, yy=myy * nan, xy=mxy * nan, x=cx, y=cy,
        flux=np.where(bad, np.nan, flux), flux_err=np.where(bad, np.nan, flux_err),
        n_iter=n_iter, flag_not_converged=~converged & ~bad, flag_bad_shape=bad,
        flag_shift=shift,
    )


def psf_moments(psf: Psf, x, y, *, max_half: int | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Adaptive moments of the PSF model's kernel image at each position.

    Parameters
    ----------
    psf : store.psf.Psf
        The PSF model.
    x, y : array_like
        ``(n,)`` positions in image pixels.
    max_half : int, optional
        Use only the central ``2 max_half + 1`` square of the kernels (faster;
        harmless when it spans more than ~5 PSF sigmas).

    Returns
    -------
    ixx, iyy, ixy : numpy.ndarray
        ``(n,)`` moments of ``psf.kernel_image(x, y)``, pixel^2.
    """
    x = np.atleast_1d(np.asarray(x, dtype=float))
    y = np.atleast_1d(np.asarray(y, dtype=float))
    if _position_independent(psf) and x.size > 1:
        one = psf_moments(psf, x[:1], y[:1], max_half=max_half)
        return tuple(np.full(x.size, v[0]) for v in one)
    kernels = kernel_images(psf, x, y)
    half = kernels.shape[1] // 2
    if max_half is not None and max_half < half:
        cut = half - max_half
        kernels = kernels[:, cut:-cut, cut:-cut]
        half = max_half
    res = adaptive_moments(kernels, half, half, initial=2.25)
    return res.xx, res.yy, res.xy


def _position_independent(psf: Psf) -> bool:
    return isinstance(psf, GaussianPsf) or (isinstance(psf, PixelBasisPsf) and psf.degree == 0)


def psf_moments_at(psf: Psf, x: float, y: float) -> tuple[float, float, float]:
    """Scalar convenience for :func:`psf_moments`: ``(Ixx, Iyy, Ixy)`` at one position, pixel^2."""
    ixx, iyy, ixy = psf_moments(psf, [float(x)], [float(y)])
    return float(ixx[0]), float(iyy[0]), float(ixy[0])


def determinant_radius(ixx, iyy, ixy):
    """``(Ixx Iyy - Ixy^2)^(1/4)``: the Gaussian sigma of the moments, pixels."""
    return np.sqrt(np.sqrt(np.asarray(ixx) * iyy - np.asarray(ixy) ** 2))


def trace_radius(ixx, iyy):
    """``sqrt((Ixx + Iyy) / 2)``, pixels."""
    return np.sqrt(0.5 * (np.asarray(ixx) + iyy))


def moments_to_fwhm(ixx, iyy, ixy, pixel_scale: float = 1.0):
    """FWHM = sqrt(8 ln 2) * determinant radius * pixel_scale (arcsec if the scale is arcsec/pixel)."""
    return FWHM_PER_SIGMA * determinant_radius(ixx, iyy, ixy) * pixel_scale
