"""Fluxes of many sources at once: PSF, circular-aperture, Gaussian and local background.

* **PSF flux** (meas_base ``base_PsfFlux``): linear least squares amplitude of
  the PSF model ``P`` realised at the centroid, over the unmasked pixels of the
  PSF stamp, in Rubin's *unweighted* form

      F = sum(P I) / sum(P^2),   var(F) = sum(P^2 V) / (sum(P^2))^2,
      area = (sum P)^2 / sum(P^2),   chi2 = sum((I - F P)^2 / V).

  The unweighted form is chosen over the inverse-variance one because it does
  not correlate the estimate with the noise of the variance plane (which holds
  the source's own photon noise estimated from the data): it is unbiased for
  any variance model, at the cost of a slightly larger error for bright stars.
  Children of one blend are fitted jointly (:func:`psf_flux_blend`): their
  amplitudes solve ``A F = b`` with ``A_ab = sum(P_a P_b)``, ``b_a = sum(P_a I)``
  and covariance ``A^-1 (sum P_a P_b V) A^-1``.
* **Circular apertures** with exact pixel/circle overlap areas: see
  :mod:`processing.algorithms.apertures` (re-exported here).
* **Gaussian flux** (``base_GaussianFlux``): ``F = 2 sum(w I)`` with ``w`` the
  peak-normalised elliptical Gaussian of the measured moments, which returns
  the total flux of a Gaussian source with those moments; ``err = 2 sqrt(sum w^2 V)``.
* **Local background** (``base_LocalBackground``): sigma-clipped mean of the
  unmasked pixels whose centres lie in an annulus.

Everything is batched over sources; inputs are aligned stamp stacks or (for
apertures) whole images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._measure_kernels import (
    blend_normal_equations,
    blend_residual_sums,
    gaussian_flux_loop,
    local_background_loop,
    psf_flux_sums,
)
from .apertures import (
    APERTURE_RADII,
    ApertureFlux,
    aperture_flux,
    aperture_flux_stamps,
    pixel_circle_overlap,
)

__all__ = [
    "APERTURE_RADII",
    "ApertureFlux",
    "PsfFlux",
    "aperture_flux",
    "aperture_flux_stamps",
    "gaussian_flux",
    "local_background",
    "local_background_image",
    "pixel_circle_overlap",
    "psf_flux",
    "psf_flux_blend",
]

# ---------------------------------------------------------------------------------- PSF flux


@dataclass(frozen=True)
class PsfFlux:
    """PSF-fit fluxes; attributes have shape ``(n,)``.

    Attributes
    ----------
    flux, flux_err : numpy.ndarray
        Amplitude of the (unit-sum) PSF model and its 1-sigma error, image units.
    area : numpy.ndarray
        Effective area ``(sum P)^2 / sum(P^2)`` over the used pixels, pixels.
    chi2 : numpy.ndarray
        ``sum((I - F P)^2 / V)`` over the used pixels.
    npixels : numpy.ndarray
        Number of pixels used.
    flag_no_good_pixels, flag_edge : numpy.ndarray
        No usable pixel; the PSF stamp is partly off the image.
    """

    flux: np.ndarray
    flux_err: np.ndarray
    area: np.ndarray
    chi2: np.ndarray
    npixels: np.ndarray
    flag_no_good_pixels: np.ndarray
    flag_edge: np.ndarray

    @property
    def flag(self) -> np.ndarray:
        """General failure flag."""
        return self.flag_no_good_pixels | self.flag_edge | ~np.isfinite(self.flux)


def psf_flux(stamps, variance, good, models, *, off_image=None) -> PsfFlux:
    """Unweighted linear least-squares PSF fluxes of isolated sources.

    Parameters
    ----------
    stamps, variance : numpy.ndarray
        ``(n, k, k)`` image and variance, aligned pixel for pixel with ``models``.
    good : numpy.ndarray
        ``(n, k, k)`` boolean, pixels usable in the fit.
    models : numpy.ndarray
        ``(n, k, k)`` PSF models realised at each centroid (unit sum).
    off_image : numpy.ndarray, optional
        ``(n, k, k)`` boolean, True where the stamp is off the image (``flag_edge``).

    Returns
    -------
    PsfFlux
    """
    stamps = np.ascontiguousarray(stamps, dtype=np.float64)
    n = stamps.shape[0]
    good = np.ascontiguousarray(np.broadcast_to(np.asarray(good, dtype=bool), stamps.shape))
    variance = np.ascontiguousarray(np.broadcast_to(np.asarray(variance, dtype=np.float64),
                                                    stamps.shape))
    models = np.ascontiguousarray(np.broadcast_to(np.asarray(models, dtype=np.float64),
                                                  stamps.shape))
    if off_image is not None:
        off_image = np.ascontiguousarray(np.broadcast_to(np.asarray(off_image, dtype=bool),
                                                         stamps.shape))
    sums = np.empty((n, 5))
    npix = np.empty(n, dtype=np.int64)
    edge = np.zeros(n, dtype=bool)
    psf_flux_sums(stamps, variance, good, models, off_image, sums, npix, edge)
    flux, err, area, chi2, spp = sums.T
    no_good = (npix == 0) | (spp <= 0)
    nan = np.where(no_good, np.nan, 1.0)
    return PsfFlux(flux * nan, err * nan, area * nan, chi2 * nan, npix, no_good, edge)


def psf_flux_blend(image, variance, good, models, x0, y0) -> PsfFlux:
    """Joint PSF fluxes of the children of one blend.

    Parameters
    ----------
    image, variance : numpy.ndarray
        2-D region containing the blend (array coordinates).
    good : numpy.ndarray
        2-D boolean, pixels usable in the fit.
    models : numpy.ndarray
        ``(m, k, k)`` unit-sum PSF models of the ``m`` children.
    x0, y0 : array_like
        ``(m,)`` integer positions of ``models[:, 0, 0]`` in the region's array coordinates.

    Returns
    -------
    PsfFlux
        ``(m,)`` amplitudes, errors from the joint covariance, and per-child
        ``area``/``chi2``/``npixels`` over each child's own PSF stamp: ``area``
        over its good pixels, ``chi2`` and ``npixels`` (as in the sparse-matrix
        version this replaces) over every region pixel where its model is
        non-zero, masked ones included.  The normal equations are built from the
        stamps' overlaps (compiled loops), O(m^2 k^2).
    """
    m, k, _ = models.shape
    height, width = image.shape
    x0 = np.ascontiguousarray(x0, dtype=np.int64)
    y0 = np.ascontiguousarray(y0, dtype=np.int64)
    edge = ((x0 < 0) | (y0 < 0) | (x0 + k > width) | (y0 + k > height))
    values = np.ascontiguousarray(models, dtype=np.float64)
    g = np.ascontiguousarray(good, dtype=np.float64)
    img = np.ascontiguousarray(image, dtype=np.float64)
    var = np.ascontiguousarray(variance, dtype=np.float64)
    # Normal equations from the stamps' overlaps: O(m^2 k^2), never O(m H W).
    mat, cov, rhs = np.empty((m, m)), np.empty((m, m)), np.empty(m)
    blend_normal_equations(img, g, g * var, values, x0, y0, mat, rhs, cov)
    try:
        inv = np.linalg.inv(mat)
        ok = np.all(np.isfinite(inv)) and np.linalg.cond(mat) < 1e12
    except np.linalg.LinAlgError:
        ok = False
    if not ok:
        nan = np.full(m, np.nan)
        return PsfFlux(nan, nan, nan, nan, np.zeros(m, dtype=np.int64),
                       np.ones(m, dtype=bool), edge)
    flux = inv @ rhs
    err = np.sqrt(np.diag(inv @ cov @ inv))
    chi2, sp, spp = np.empty(m), np.empty(m), np.empty(m)
    npix = np.empty(m, dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        blend_residual_sums(img, var, g != 0, values, x0, y0, flux, chi2, sp, spp, npix)
        area = sp * sp / spp
    return PsfFlux(flux, err, area, chi2, npix, npix == 0, edge)


# --------------------------------------------------------------- Gaussian flux, local background


def gaussian_flux(stamps, variance, good, x, y, ixx, iyy, ixy) -> tuple[np.ndarray, np.ndarray]:
    """Flux through an elliptical Gaussian weight of the given moments.

    Parameters
    ----------
    stamps, variance : numpy.ndarray
        ``(n, h, w)`` image and variance stamps.
    good : numpy.ndarray or None
        ``(n, h, w)`` boolean usable pixels.
    x, y : array_like
        ``(n,)`` weight centres in stamp coordinates, pixels.
    ixx, iyy, ixy : array_like
        ``(n,)`` weight moments, pixel^2.

    Returns
    -------
    flux, flux_err : numpy.ndarray
        ``2 sum(w I)`` and ``2 sqrt(sum(w^2 V))``: the total flux of a Gaussian
        source whose moments equal the weight's.
    """
    stamps = np.ascontiguousarray(stamps, dtype=np.float64)
    n = stamps.shape[0]
    ixx, iyy, ixy, x, y = (np.ascontiguousarray(np.broadcast_to(np.asarray(v, dtype=float), (n,)))
                           for v in (ixx, iyy, ixy, x, y))
    variance = np.ascontiguousarray(np.broadcast_to(np.asarray(variance, dtype=np.float64),
                                                    stamps.shape))
    if good is not None:
        good = np.ascontiguousarray(np.broadcast_to(np.asarray(good, dtype=bool), stamps.shape))
    flux, err = np.empty(n), np.empty(n)
    gaussian_flux_loop(stamps, variance, good, x, y, ixx, iyy, ixy, flux, err)
    return flux, err


def local_background(stamps, good, inner: float, outer: float, *, n_sigma: float = 3.0,
                     n_iter: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sigma-clipped mean of the pixels in an annulus around each stamp's central pixel.

    Parameters
    ----------
    stamps : numpy.ndarray
        ``(n, h, w)`` image stamps centred on the sources (the annulus is centred
        on the central pixel; a sub-pixel offset is immaterial at these radii).
    good : numpy.ndarray
        ``(n, h, w)`` boolean, pixels that may be used (not masked, not a source).
    inner, outer : float
        Annulus radii, pixels (pixel centres with ``inner <= r < outer`` are used).
    n_sigma : float
        Clipping threshold in standard deviations.
    n_iter : int
        Clipping passes; the first is centred on the median with a width from
        the inter-quartile range (as afw MEANCLIP).

    Returns
    -------
    value : numpy.ndarray
        ``(n,)`` clipped mean per pixel, image units (NaN if no pixel).
    stdev : numpy.ndarray
        ``(n,)`` clipped standard deviation of the pixels.
    n_used : numpy.ndarray
        ``(n,)`` pixels kept by the last pass.
    """
    n, h, w = stamps.shape
    planes = np.ascontiguousarray(stamps, dtype=np.float32)
    bad = np.ascontiguousarray(~np.broadcast_to(np.asarray(good, dtype=bool), stamps.shape),
                               dtype=np.uint8)
    dx, dy = annulus_offsets(inner, outer)
    index = np.arange(n, dtype=np.int64)
    return _local_background(planes, bad, None, 1, index, np.full(n, w // 2), np.full(n, h // 2),
                             dx, dy, n_sigma, n_iter)


def local_background_image(image, mask, bad_bits: int, x, y, inner: float, outer: float, *,
                           labels=None, n_sigma: float = 3.0, n_iter: int = 3,
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`local_background` read straight from full-frame planes (no stamps cut).

    Parameters
    ----------
    image : numpy.ndarray
        2-D image.
    mask : numpy.ndarray
        2-D integer mask; pixels with any of ``bad_bits`` are not used.
    bad_bits : int
        Mask bits that exclude a pixel.
    x, y : array_like
        ``(n,)`` integer annulus centres, array coordinates.
    inner, outer : float
        Annulus radii, pixels (pixel centres with ``inner <= r < outer``).
    labels : numpy.ndarray, optional
        2-D integer labels; pixels with a non-zero label (sources) are not used.
    n_sigma, n_iter
        As for :func:`local_background`.

    Returns
    -------
    value, stdev, n_used : numpy.ndarray
        As for :func:`local_background`.
    """
    image = np.asarray(image)
    if image.dtype not in (np.float32, np.float64):
        image = image.astype(np.float32)
    dx, dy = annulus_offsets(inner, outer)
    x = np.ascontiguousarray(x, dtype=np.int64)
    y = np.ascontiguousarray(y, dtype=np.int64)
    mask = np.ascontiguousarray(mask)
    return _local_background(np.ascontiguousarray(image)[None], mask[None],
                             None if labels is None else np.ascontiguousarray(labels)[None],
                             bad_bits, np.zeros(x.size, dtype=np.int64), x, y, dx, dy,
                             n_sigma, n_iter)


def annulus_offsets(inner: float, outer: float) -> tuple[np.ndarray, np.ndarray]:
    """``(dx, dy)`` of the pixels whose centres lie in ``inner <= r < outer``, row by row."""
    half = int(np.ceil(outer)) + 1
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    r2 = xx * xx + yy * yy
    ys, xs = np.nonzero((r2 >= inner * inner) & (r2 < outer * outer))
    return (np.ascontiguousarray(xs - half, dtype=np.int64),
            np.ascontiguousarray(ys - half, dtype=np.int64))


def _local_background(planes, mask, labels, bad_bits, index, ix, iy, dx, dy, n_sigma, n_iter):
    n = ix.size
    value, stdev = np.empty(n), np.empty(n)
    n_used = np.empty(n, dtype=np.int64)
    local_background_loop(planes, mask, labels, int(bad_bits), index,
                          np.ascontiguousarray(ix, dtype=np.int64),
                          np.ascontiguousarray(iy, dtype=np.int64), dx, dy, float(n_sigma),
                          int(n_iter), value, stdev, n_used)
    return value, stdev, n_used
