"""The true PSF: an elliptical Moffat whose moments vary smoothly over the focal plane.

Profile
-------
At a focal-plane position the PSF is ``I(d) ∝ (1 + d^T A^-1 d)^-beta`` with
``d`` the offset from the source in pixels, normalised analytically to unit
integral over the plane, ``(beta - 1) / (pi sqrt(det A))``.  ``A`` is set from
the adaptive (Gaussian-weighted, HSM/SdssShape) second moments ``M`` of the
continuous profile: for any elliptical profile the adaptive moments are
proportional to ``A``, ``M = c(beta) A``, with ``c`` computed once by
:func:`moffat_moment_ratio`.  So the PSF is specified by what a pipeline
measures:

* size ``sigma = det(M)^(1/4)`` (pixels); the visit *seeing* is the moments
  FWHM ``2.3548 sigma pixel_scale`` at the optical axis, the DP1 definition;
* ellipticity ``e1 = (Mxx - Myy) / (Mxx + Myy)``, ``e2 = 2 Mxy / (Mxx + Myy)``;
* ``M = sigma^2 / sqrt(1 - e^2) [[1 + e1, e2], [e2, 1 - e1]]``.

Over the focal plane (``rho = r / r_ref``, ``r_ref`` the camera corner radius)::

    sigma(f) = sigma0 (1 + size_variation rho^2)
    e1(f) = e1_0 + e_field (fx^2 - fy^2) / r_ref^2 + g11 fx / r_ref + g12 fy / r_ref
    e2(f) = e2_0 + e_field 2 fx fy / r_ref^2   + g21 fx / r_ref + g22 fy / r_ref

Pixel integration
-----------------
Images record the PSF integrated over each pixel.  :func:`moffat_pixels`
integrates with an ``n x n`` Gauss-Legendre rule per pixel (``n = 4`` by
default; relative error ~1e-7 for FWHM >= 3 pixels), which is how stars are
rendered and how :func:`true_psf_kernel` builds the truth that tests compare
with.  The moments of the pixel-integrated PSF are ~``M + I/12``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from store.psf import Psf

from .camera import Camera

__all__ = [
    "FWHM_PER_SIGMA",
    "PsfField",
    "TruePsf",
    "gauss_legendre_nodes",
    "moffat_moment_ratio",
    "moffat_pixels",
    "true_psf_kernel",
]

#: FWHM of a Gaussian per unit sigma, sqrt(8 ln 2).
FWHM_PER_SIGMA = float(np.sqrt(8.0 * np.log(2.0)))


@lru_cache(maxsize=32)
def moffat_moment_ratio(beta: float) -> float:
    """``c(beta)``: adaptive second moment per unit ``alpha^2`` of a circular Moffat.

    Solves ``s = <r^2>_W`` with the Gaussian weight ``W = exp(-r^2 / 2 s)`` for
    the profile ``(1 + r^2)^-beta`` (the fixed point of adaptive moments), by
    iterating with Simpson's rule on the radius out to 12 weight sigmas
    (relative accuracy ~1e-10; 0.194217 for beta = 3.5).
    """
    s = 0.2
    simpson = np.ones(4001)
    simpson[1:-1:2] = 4.0
    simpson[2:-1:2] = 2.0
    for _ in range(500):
        r = np.linspace(0.0, 12.0 * np.sqrt(s), simpson.size)
        w = simpson * np.exp(-r * r / (2 * s)) * (1 + r * r) ** -beta
        new = float(np.sum(w * r**3) / np.sum(w * r))
        if abs(new - s) <= 1e-14 * s:
            return new
        s = new
    return s


@lru_cache(maxsize=8)
def gauss_legendre_nodes(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes in ``[-0.5, 0.5]`` and weights summing to 1 of the n-point Gauss-Legendre rule."""
    t, w = np.polynomial.legendre.leggauss(n)
    return t / 2.0, w / 2.0


def _inverse_shape(mxx, myy, mxy, beta: float):
    """Entries of ``A^-1`` and the normalisation, from the adaptive moments ``M``."""
    c = moffat_moment_ratio(beta)
    axx, ayy, axy = (np.asarray(m, float) / c for m in (mxx, myy, mxy))
    det = axx * ayy - axy * axy
    norm = (beta - 1.0) / (np.pi * np.sqrt(det))
    return ayy / det, axx / det, -axy / det, norm


def moffat_pixels(dx, dy, mxx, myy, mxy, beta: float, n_gauss: int = 4) -> np.ndarray:
    """The Moffat PSF integrated over pixels (fraction of the source flux per pixel).

    Parameters
    ----------
    dx, dy : array_like
        Offsets of pixel centres from the source, pixels; broadcast together
        with the moments.
    mxx, myy, mxy : array_like
        Adaptive second moments of the continuous PSF, pixels^2.
    beta : float
        Moffat index.
    n_gauss : int
        Gauss-Legendre points per axis per pixel (1 gives point sampling).

    Returns
    -------
    numpy.ndarray
        Broadcast shape of the inputs.
    """
    ixx, iyy, ixy, norm = _inverse_shape(mxx, myy, mxy, beta)
    dx = np.asarray(dx, float)
    dy = np.asarray(dy, float)
    if n_gauss == 1:
        q = ixx * dx * dx + 2.0 * ixy * dx * dy + iyy * dy * dy
        return norm * (1.0 + q) ** -beta
    nodes, weights = gauss_legendre_nodes(n_gauss)
    out = None
    # A short loop over quadrature nodes, each step vectorised over all pixels.
    for ty, wy in zip(nodes, weights, strict=True):
        ey = dy + ty
        for tx, wx in zip(nodes, weights, strict=True):
            ex = dx + tx
            term = (wx * wy) * (1.0 + (ixx * ex * ex + 2.0 * ixy * ex * ey + iyy * ey * ey)) ** -beta
            out = term if out is None else out + term
    return norm * out


@dataclass(frozen=True)
class PsfField:
    """A visit's PSF over the whole focal plane.

    Attributes
    ----------
    sigma : float
        ``det(M)^(1/4)`` at the optical axis, pixels.
    beta : float
        Moffat index.
    e1, e2 : float
        Visit-wide ellipticity.
    size_variation : float
        Fractional size increase at ``r_ref``.
    e_field : float
        Astigmatism-like pattern amplitude at ``r_ref``.
    e_gradient : tuple of float
        ``(g11, g12, g21, g22)``: linear ellipticity gradient, per ``r_ref``.
    r_ref : float
        Reference radius (the camera corner), mm.
    """

    sigma: float
    beta: float = 3.5
    e1: float = 0.0
    e2: float = 0.0
    size_variation: float = 0.0
    e_field: float = 0.0
    e_gradient: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    r_ref: float = 1.0

    def shape(self, fx, fy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(sigma, e1, e2)`` at focal-plane positions (mm)."""
        u = np.asarray(fx, float) / self.r_ref
        v = np.asarray(fy, float) / self.r_ref
        g11, g12, g21, g22 = self.e_gradient
        sigma = self.sigma * (1.0 + self.size_variation * (u * u + v * v))
        e1 = self.e1 + self.e_field * (u * u - v * v) + g11 * u + g12 * v
        e2 = self.e2 + self.e_field * 2.0 * u * v + g21 * u + g22 * v
        return sigma, e1, e2

    def moments(self, fx, fy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Adaptive moments ``(Mxx, Myy, Mxy)`` (pixels^2) of the continuous PSF at ``(fx, fy)`` mm."""
        sigma, e1, e2 = self.shape(fx, fy)
        s2 = sigma * sigma / np.sqrt(1.0 - e1 * e1 - e2 * e2)
        return s2 * (1.0 + e1), s2 * (1.0 - e1), s2 * e2

    def alpha(self, fx=0.0, fy=0.0) -> np.ndarray:
        """Moffat core radius (geometric mean of the axes), pixels."""
        sigma, _, _ = self.shape(fx, fy)
        return sigma / np.sqrt(moffat_moment_ratio(self.beta))

    def profile_fwhm(self, fx=0.0, fy=0.0) -> np.ndarray:
        """FWHM of the radial profile (geometric mean of the axes), pixels."""
        return 2.0 * self.alpha(fx, fy) * np.sqrt(2.0 ** (1.0 / self.beta) - 1.0)

    def stamp_radius(self, flux_e, fx=0.0, fy=0.0) -> np.ndarray:
        """Stamp half-width (pixels) for a point source of ``flux_e`` electrons.

        The flux outside radius ``R`` of a Moffat is ``(1 + (R/alpha)^2)^(1 - beta)``;
        the radius keeps the flux lost beyond the stamp below
        ``min(0.1 sqrt(flux), 0.003 flux)``: a tenth of the photon noise, and
        never more than 0.3 % (using the major-axis core radius).
        """
        flux = np.maximum(np.asarray(flux_e, float), 1.0)
        sigma, e1, e2 = self.shape(fx, fy)
        e = np.minimum(np.hypot(e1, e2), 0.9)
        alpha_major = sigma / np.sqrt(moffat_moment_ratio(self.beta)) * ((1 + e) / (1 - e)) ** 0.25
        lost = np.minimum(0.1 / np.sqrt(flux), 3e-3)
        return alpha_major * np.sqrt(lost ** (-1.0 / (self.beta - 1.0)) - 1.0)


def _default_size(sigma: float) -> int:
    return 2 * int(np.ceil(8.0 * sigma)) + 1


def true_psf_kernel(psf: PsfField, camera: Camera, detector: int, x: float, y: float, *,
                    size: int | None = None, offset: tuple[float, float] = (0.0, 0.0),
                    normalize: bool = True, n_gauss: int = 4) -> np.ndarray:
    """The pixel-integrated true PSF at a detector position.

    Parameters
    ----------
    psf : PsfField
        The visit's PSF (``Visit.psf``).
    camera : Camera
        Gives the focal-plane position of the pixel.
    detector : int
        Detector id.
    x, y : float
        Pixel position on the detector (sets the PSF shape).
    size : int, optional
        Odd side of the kernel, pixels (default ``2 ceil(8 sigma) + 1``).
    offset : tuple of float
        Sub-pixel position of the source relative to the central pixel's
        centre, pixels (``(0, 0)``: centred, as :meth:`store.psf.Psf.kernel_image`).
    normalize : bool
        Scale to sum 1 (the store convention); otherwise values are the
        fraction of the total flux in each pixel.
    n_gauss : int
        Gauss-Legendre points per pixel axis.

    Returns
    -------
    numpy.ndarray
        ``(size, size)`` float64 array.
    """
    fx, fy = camera.pixel_to_focal_plane(detector, x, y)
    mxx, myy, mxy = psf.moments(fx, fy)
    if size is None:
        size = _default_size(float(np.sqrt(max(mxx, myy))))
    if size % 2 == 0:
        raise ValueError(f"kernel size must be odd, got {size}")
    half = size // 2
    grid = np.arange(-half, half + 1, dtype=float)
    kernel = moffat_pixels(grid[None, :] - offset[0], grid[:, None] - offset[1],
                           mxx, myy, mxy, psf.beta, n_gauss)
    return kernel / kernel.sum() if normalize else kernel


class TruePsf(Psf):
    """The true PSF of one detector-visit as a :class:`store.psf.Psf`.

    Lets pipeline code run with a perfect PSF model.  Serialises to a FITS HDU
    of parameter cards (``PSFTYPE = 'SIMMOFFAT'``).

    Parameters
    ----------
    field : PsfField
        The visit's PSF.
    fp_center : tuple of float
        Focal-plane position of the detector centre, mm.
    pixel_center : tuple of float
        Pixel coordinates of the detector centre.
    pixel_size : float
        mm per pixel.
    size : int, optional
        Kernel side, pixels.
    """

    psf_type = "SIMMOFFAT"

    def __init__(self, field: PsfField, fp_center: tuple[float, float],
                 pixel_center: tuple[float, float], pixel_size: float, size: int | None = None):
        self.field = field
        self.fp_center = (float(fp_center[0]), float(fp_center[1]))
        self.pixel_center = (float(pixel_center[0]), float(pixel_center[1]))
        self.pixel_size = float(pixel_size)
        sigma_max = field.sigma * (1.0 + max(field.size_variation, 0.0)) * 1.2
        self._size = int(size) if size is not None else _default_size(sigma_max)

    def __repr__(self) -> str:
        return (f"TruePsf(sigma={self.field.sigma:.3f}, beta={self.field.beta}, "
                f"size={self._size})")

    @classmethod
    def for_detector(cls, field: PsfField, camera: Camera, detector: int) -> TruePsf:
        """The true PSF of ``detector`` for the visit whose PSF is ``field``."""
        det = camera.detectors[detector]
        return cls(field, (det.fp_x, det.fp_y), det.center, camera.config.pixel_size)

    @property
    def kernel_size(self) -> int:
        return self._size

    def _moments(self, x: float, y: float):
        fx = self.fp_center[0] + (x - self.pixel_center[0]) * self.pixel_size
        fy = self.fp_center[1] + (y - self.pixel_center[1]) * self.pixel_size
        return self.field.moments(fx, fy)

    def moments(self, x: float, y: float) -> tuple[float, float, float]:
        """Adaptive moments ``(Ixx, Iyy, Ixy)`` of the continuous PSF at ``(x, y)``, pixels^2."""
        return tuple(float(m) for m in self._moments(x, y))

    def _kernel(self, x: float, y: float, dx: float, dy: float) -> np.ndarray:
        mxx, myy, mxy = self._moments(x, y)
        half = self._size // 2
        grid = np.arange(-half, half + 1, dtype=float)
        k = moffat_pixels(grid[None, :] - dx, grid[:, None] - dy, mxx, myy, mxy, self.field.beta)
        return k / k.sum()

    def kernel_image(self, x: float, y: float) -> np.ndarray:
        return self._kernel(x, y, 0.0, 0.0)

    def image(self, x: float, y: float) -> tuple[np.ndarray, int, int]:
        # Exact sub-pixel evaluation instead of the base class's Lanczos shift.
        ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        half = self._size // 2
        return self._kernel(x, y, x - ix, y - iy), ix - half, iy - half

    def to_hdu(self):
        from astropy.io import fits

        hdu = fits.ImageHDU(self.kernel_image(*self.pixel_center).astype(np.float32), name="PSF")
        h = hdu.header
        h["PSFTYPE"] = self.psf_type
        f = self.field
        for key, value in (("SIGMA", f.sigma), ("BETA", f.beta), ("E1", f.e1), ("E2", f.e2),
                           ("SIZEVAR", f.size_variation), ("EFIELD", f.e_field),
                           ("G11", f.e_gradient[0]), ("G12", f.e_gradient[1]),
                           ("G21", f.e_gradient[2]), ("G22", f.e_gradient[3]),
                           ("RREF", f.r_ref), ("FPX", self.fp_center[0]),
                           ("FPY", self.fp_center[1]), ("PIXXC", self.pixel_center[0]),
                           ("PIXYC", self.pixel_center[1]), ("PIXSIZE", self.pixel_size)):
            h[key] = float(value)
        return hdu

    @classmethod
    def _from_hdu(cls, hdu) -> TruePsf:
        h = hdu.header
        field = PsfField(sigma=h["SIGMA"], beta=h["BETA"], e1=h["E1"], e2=h["E2"],
                         size_variation=h["SIZEVAR"], e_field=h["EFIELD"],
                         e_gradient=(h["G11"], h["G12"], h["G21"], h["G22"]), r_ref=h["RREF"])
        return cls(field, (h["FPX"], h["FPY"]), (h["PIXXC"], h["PIXYC"]), h["PIXSIZE"],
                   size=h["NAXIS1"])
