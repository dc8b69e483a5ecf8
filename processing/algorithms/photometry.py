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
    good = np.asarray(good, dtype=bool)
    # Sums of products with einsum: no (n, k, k) temporaries beyond two masked copies.
    pg = np.where(good, models, 0.0)
    spp = np.einsum("nij,nij->n", pg, models)
    sp = pg.sum(axis=(1, 2))
    npix = good.sum(axis=(1, 2)).astype(np.int64)
    no_good = (npix == 0) | (spp <= 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        flux = np.einsum("nij,nij->n", pg, stamps) / spp
        err = np.sqrt(np.einsum("nij,nij,nij->n", pg, pg, variance)) / spp
        # chi2 = sum g (I - F P)^2 / V, expanded into three sums.
        iv = np.where(good & (variance > 0), 1.0 / np.where(variance > 0, variance, 1.0), 0.0)
        chi2 = (np.einsum("nij,nij,nij->n", iv, stamps, stamps)
                - 2 * flux * np.einsum("nij,nij,nij->n", iv, stamps, models)
                + flux * flux * np.einsum("nij,nij,nij->n", iv, models, models))
        area = sp * sp / spp
    edge = np.zeros(len(flux), dtype=bool) if off_image is None else off_image.any(axis=(1, 2))
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
        ``area``/``chi2``/``npixels`` over each child's own PSF stamp.
    """
    from scipy import sparse

    m, k, _ = models.shape
    height, width = image.shape
    x0 = np.asarray(x0, dtype=np.int64)
    y0 = np.asarray(y0, dtype=np.int64)
    # Each child's model as a sparse column over the region's pixels (clipped at
    # its edges): the normal equations then cost O(m k^2), not O(m H W).
    offs = np.arange(k)
    rows = (y0[:, None] + offs[None, :])[:, :, None]          # (m, k, 1)
    cols = (x0[:, None] + offs[None, :])[:, None, :]          # (m, 1, k)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    edge = ~inside.all(axis=(1, 2))
    child = np.broadcast_to(np.arange(m)[:, None, None], inside.shape)
    pix = (np.broadcast_to(rows, inside.shape) * width + np.broadcast_to(cols, inside.shape))
    values = np.asarray(models, dtype=float)
    sel = inside & (values != 0)
    design = sparse.csc_matrix((values[sel], (pix[sel], child[sel])), shape=(height * width, m))
    g = np.asarray(good, dtype=float).ravel()
    img = np.asarray(image, dtype=float).ravel()
    var = np.asarray(variance, dtype=float).ravel()
    weighted = design.multiply(g[:, None]).tocsc()
    mat = (design.T @ weighted).toarray()
    rhs = weighted.T @ img
    cov_pix = (design.T @ design.multiply((g * var)[:, None])).toarray()
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
    err = np.sqrt(np.diag(inv @ cov_pix @ inv))
    resid = img - design @ flux
    own = design.multiply(g[:, None] > 0).tocsc()            # model values on good pixels
    own_mask = own.copy()
    own_mask.data = np.ones_like(own_mask.data)
    with np.errstate(divide="ignore", invalid="ignore"):
        chi2 = np.asarray(own_mask.T @ (resid**2 / var)).ravel()
        sp = np.asarray(own.sum(axis=0)).ravel()
        spp = np.asarray(own.multiply(own).sum(axis=0)).ravel()
    npix = np.asarray(own_mask.sum(axis=0)).ravel().astype(np.int64)
    return PsfFlux(flux, err, sp * sp / spp, chi2, npix, npix == 0, edge)


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
    _, h, w = stamps.shape
    ixx, iyy, ixy = (np.asarray(v, dtype=float) for v in (ixx, iyy, ixy))
    det = ixx * iyy - ixy * ixy
    dx = np.arange(w)[None, :] - np.asarray(x, dtype=float)[:, None]
    dy = np.arange(h)[None, :] - np.asarray(y, dtype=float)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        axx, ayy, axy = iyy / det, ixx / det, -ixy / det
    q = (axx[:, None] * dx * dx)[:, None, :] + (ayy[:, None] * dy * dy)[:, :, None]
    q += (2.0 * axy[:, None] * dy)[:, :, None] * dx[:, None, :]
    wt = np.exp(-0.5 * q)
    if good is not None:
        wt *= good
    flux = 2.0 * (wt * stamps).sum(axis=(1, 2))
    err = 2.0 * np.sqrt((wt * wt * variance).sum(axis=(1, 2)))
    bad = ~(det > 0)
    return np.where(bad, np.nan, flux), np.where(bad, np.nan, err)


def _row_quantile(sorted_vals, count, p):
    """Linearly interpolated quantile ``p`` of the first ``count`` values of each sorted row."""
    pos = np.maximum(count - 1, 0) * p
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(count - 1, 0))
    rows = np.arange(sorted_vals.shape[0])
    frac = pos - lo
    return sorted_vals[rows, lo] * (1 - frac) + sorted_vals[rows, hi] * frac


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
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = (xx - w // 2) ** 2 + (yy - h // 2) ** 2
    ys, xs = np.nonzero((r2 >= inner * inner) & (r2 < outer * outer))
    use = good[:, ys, xs]
    # float32 halves the cost of the sort; the statistics are accumulated in float64.
    vals = np.where(use, stamps[:, ys, xs], np.nan).astype(np.float32)
    count = use.sum(axis=1)
    ordered = np.sort(vals, axis=1)  # NaNs (unusable pixels) sort last
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = _row_quantile(ordered, count, 0.5)
        iqr = _row_quantile(ordered, count, 0.75) - _row_quantile(ordered, count, 0.25)
        half = n_sigma * 0.741301109252802 * iqr
        mean = var = np.full(n, np.nan)
        keep = use
        for _ in range(max(n_iter, 1)):
            keep = use & (np.abs(vals - centre[:, None]) <= half[:, None])
            cnt = keep.sum(axis=1)
            mean = np.where(keep, vals, 0.0).sum(axis=1, dtype=np.float64) / cnt
            dev = np.where(keep, vals - mean[:, None].astype(np.float32), 0.0)
            var = np.einsum("ij,ij->i", dev, dev, dtype=np.float64) / (cnt - 1)
            centre, half = mean, n_sigma * np.sqrt(var)
    n_used = keep.sum(axis=1)
    return np.where(n_used > 0, mean, np.nan), np.where(n_used > 1, np.sqrt(var), np.nan), n_used
