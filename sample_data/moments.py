"""Adaptive second moments (HSM / SdssShape definition) of batches of stamps.

The adaptive moments of an image ``I`` are the covariance ``M`` of the
elliptical Gaussian weight ``W_M`` for which ``M = 2 <d d^T>_{W_M I}``: for a
Gaussian image they are its covariance.  They are what pipelines report as
``Ixx, Iyy, Ixy`` of PSF models and stars, so the simulator's PSF truth is
stated in them.  The fixed-point iteration ``M <- 2 <d d^T>_W`` converges by a
factor ~2 per step; it is run on a whole batch of stamps at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AdaptiveMoments", "adaptive_moments"]


@dataclass(frozen=True)
class AdaptiveMoments:
    """Result of :func:`adaptive_moments` (arrays of shape ``(n,)``).

    Attributes
    ----------
    ixx, iyy, ixy : numpy.ndarray
        Adaptive moments, pixels^2.
    x, y : numpy.ndarray
        Centroid in stamp pixel coordinates (input value unless fitted).
    converged : numpy.ndarray
        True where the iteration met the tolerance.
    """

    ixx: np.ndarray
    iyy: np.ndarray
    ixy: np.ndarray
    x: np.ndarray
    y: np.ndarray
    converged: np.ndarray

    @property
    def trace(self) -> np.ndarray:
        """``Ixx + Iyy``, pixels^2."""
        return self.ixx + self.iyy

    @property
    def sigma(self) -> np.ndarray:
        """Determinant radius ``(Ixx Iyy - Ixy^2)^(1/4)``, pixels."""
        return (self.ixx * self.iyy - self.ixy**2) ** 0.25


def adaptive_moments(stamps: np.ndarray, x0, y0, sigma_guess, *, fit_centroid: bool = False,
                     max_iter: int = 200, tol: float = 1e-11) -> AdaptiveMoments:
    """Adaptive second moments of a batch of noiseless (or bright) stamps.

    Parameters
    ----------
    stamps : numpy.ndarray
        ``(n, ny, nx)`` or ``(ny, nx)`` images; pixel ``[j, i]`` is centred at
        ``(x, y) = (i, j)``.
    x0, y0 : array_like
        Source centres in stamp pixel coordinates, shape ``(n,)`` or scalar.
    sigma_guess : array_like
        Starting Gaussian sigma, pixels.
    fit_centroid : bool
        Also iterate the centroid (weighted first moment); otherwise it stays
        at ``(x0, y0)``.
    max_iter : int
        Iteration limit.
    tol : float
        Convergence: largest relative change of the moments in one step.

    Returns
    -------
    AdaptiveMoments
    """
    stamps = np.asarray(stamps, dtype=float)
    if stamps.ndim == 2:
        stamps = stamps[None]
    if stamps.ndim != 3:
        raise ValueError(f"stamps must be (n, ny, nx) or (ny, nx), got shape {stamps.shape}")
    n, ny, nx = stamps.shape
    x = np.broadcast_to(np.asarray(x0, float), (n,)).copy()
    y = np.broadcast_to(np.asarray(y0, float), (n,)).copy()
    s2 = np.broadcast_to(np.asarray(sigma_guess, float) ** 2, (n,))
    mxx, myy, mxy = s2.copy(), s2.copy(), np.zeros(n)
    gx = np.arange(nx, dtype=float)[None, None, :]
    gy = np.arange(ny, dtype=float)[None, :, None]
    converged = np.zeros(n, dtype=bool)
    for _ in range(max_iter):
        det = mxx * myy - mxy * mxy
        dx = gx - x[:, None, None]
        dy = gy - y[:, None, None]
        q = (myy[:, None, None] * dx * dx - 2 * mxy[:, None, None] * dx * dy
             + mxx[:, None, None] * dy * dy) / det[:, None, None]
        wi = np.exp(-0.5 * q) * stamps
        s0 = wi.sum(axis=(1, 2))
        if fit_centroid:
            x = x + (wi * dx).sum(axis=(1, 2)) / s0
            y = y + (wi * dy).sum(axis=(1, 2)) / s0
        new_xx = 2.0 * (wi * dx * dx).sum(axis=(1, 2)) / s0
        new_yy = 2.0 * (wi * dy * dy).sum(axis=(1, 2)) / s0
        new_xy = 2.0 * (wi * dx * dy).sum(axis=(1, 2)) / s0
        scale = new_xx + new_yy
        change = np.maximum.reduce([np.abs(new_xx - mxx), np.abs(new_yy - myy),
                                    np.abs(new_xy - mxy)]) / scale
        mxx, myy, mxy = new_xx, new_yy, new_xy
        converged = change < tol
        if converged.all():
            break
    return AdaptiveMoments(mxx, myy, mxy, x, y, converged)
