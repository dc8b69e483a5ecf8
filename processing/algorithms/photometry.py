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
* **Circular apertures** with *exact* pixel/circle overlap areas.  The area of
  the circle inside a pixel is an inclusion-exclusion of the primitive
  ``Q(x, y)`` = signed area of the disc between the origin and ``(x, y)``
  (closed form with ``arcsin``); pixels wholly inside get weight 1 without
  evaluating it.  ``flux = sum(a I)``, ``err = sqrt(sum(a^2 V))``.  The
  summation loop is compiled with numba: for 5,000 sources and the ten
  Rubin radii on a 4k x 4k image it takes ~0.3 s, against 3.5 s for the
  best vectorised numpy version (boundary pixels exact, interior from row
  cumulative sums) and 2.7 s for ``sep.sum_circle(subpix=0)``.
* **Gaussian flux** (``base_GaussianFlux``): ``F = 2 sum(w I)`` with ``w`` the
  peak-normalised elliptical Gaussian of the measured moments, which returns
  the total flux of a Gaussian source with those moments; ``err = 2 sqrt(sum w^2 V)``.
* **Local background** (``base_LocalBackground``): sigma-clipped mean of the
  unmasked pixels whose centres lie in an annulus.

Everything is batched over sources; inputs are aligned stamp stacks or (for
apertures) whole images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

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

#: Radii (pixels) of ``base_CircularApertureFlux`` in the Rubin single-frame configuration.
APERTURE_RADII = (3.0, 4.5, 6.0, 9.0, 12.0, 17.0, 25.0, 35.0, 50.0, 70.0)


# ----------------------------------------------------------------------------- exact areas


@numba.njit(cache=True)
def _disc_primitive(t, r):
    """``integral_0^t sqrt(r^2 - s^2) ds`` for ``0 <= t <= r``."""
    return 0.5 * (t * math.sqrt(max(r * r - t * t, 0.0)) + r * r * math.asin(min(t / r, 1.0)))


@numba.njit(cache=True)
def _signed_area(x, y, r):
    """Area of the disc (radius ``r``, centre 0) inside the box spanned by 0 and ``(x, y)``.

    Signed by ``sign(x) sign(y)`` so that the area inside any axis-aligned
    rectangle is ``Q(x1,y1) - Q(x0,y1) - Q(x1,y0) + Q(x0,y0)``.
    """
    if x == 0.0 or y == 0.0:
        return 0.0
    ax = min(abs(x), r)
    ay = min(abs(y), r)
    if ax * ax + ay * ay <= r * r:
        area = ax * ay  # the whole box is inside the disc
    else:
        # Up to t the box edge y = ay is inside the disc; beyond it the arc bounds the area.
        t = math.sqrt(max(r * r - ay * ay, 0.0))
        area = ay * t + _disc_primitive(ax, r) - _disc_primitive(t, r)
    return area if (x > 0) == (y > 0) else -area


@numba.njit(cache=True)
def _strip_area(x, y0, y1, r):
    """Signed area of the disc inside the horizontal strip ``[y0, y1]`` between 0 and ``x``."""
    return _signed_area(x, y1, r) - _signed_area(x, y0, r)


@numba.njit(cache=True)
def _box_area(x0, x1, y0, y1, r):
    return (_signed_area(x1, y1, r) - _signed_area(x0, y1, r)
            - _signed_area(x1, y0, r) + _signed_area(x0, y0, r))


@numba.vectorize(cache=True)
def _pixel_overlap_ufunc(dx, dy, r):
    return _box_area(dx - 0.5, dx + 0.5, dy - 0.5, dy + 0.5, r)


def pixel_circle_overlap(px, py, xc, yc, r):
    """Exact area of the pixel squares ``[px +- 0.5] x [py +- 0.5]`` inside a circle.

    Parameters
    ----------
    px, py : array_like
        Pixel centres (broadcastable).
    xc, yc : array_like
        Circle centres, pixels (broadcastable).
    r : float or array_like
        Circle radii, pixels (> 0).

    Returns
    -------
    numpy.ndarray
        Overlap areas in pixel units (0 to 1).

    Examples
    --------
    >>> round(float(pixel_circle_overlap(0, 0, 0.0, 0.0, 0.5)), 6)  # pi / 4
    0.785398
    """
    dx = np.asarray(px, dtype=float) - np.asarray(xc, dtype=float)
    dy = np.asarray(py, dtype=float) - np.asarray(yc, dtype=float)
    return _pixel_overlap_ufunc(dx, dy, np.asarray(r, dtype=float))


# "reassoc" lets LLVM vectorise the interior-run sums (summation order only).
@numba.njit(cache=True, fastmath={"reassoc"})
def _aperture_kernel(image, variance, bad, index, xc, yc, radii, flux, var, nbad):
    """Exact-overlap sums over circles; loops only over the rows and columns each circle spans.

    ``image``/``variance``/``bad`` are stacks ``(m, h, w)``; source ``s`` uses
    entry ``index[s]``.  Results go to ``flux``/``var``/``nbad`` of shape ``(n, n_radii)``.
    """
    _, height, width = image.shape
    for s in range(xc.size):
        k = index[s]
        x, y = xc[s], yc[s]
        for q in range(radii.size):
            r = radii[q]
            f = 0.0
            v = 0.0
            nb = 0
            jlo = max(math.floor(y - r - 0.5) + 1, 0)
            jhi = min(math.ceil(y + r + 0.5) - 1, height - 1)
            for j in range(jlo, jhi + 1):
                yb0 = j - 0.5 - y
                yb1 = yb0 + 1.0
                ymin = 0.0 if (yb0 < 0.0 < yb1) else min(abs(yb0), abs(yb1))
                if ymin >= r:
                    continue
                inner2 = r * r - max(yb0 * yb0, yb1 * yb1)
                w_out = math.sqrt(r * r - ymin * ymin)
                ilo = max(math.floor(x - w_out - 0.5) + 1, 0)
                ihi = min(math.ceil(x + w_out + 0.5) - 1, width - 1)
                # Pixels wholly inside the circle for this row: [flo, fhi], weight 1.
                flo, fhi = ihi + 1, ihi
                if inner2 > 0.0:
                    w_in = math.sqrt(inner2)
                    flo = max(math.ceil(x - w_in + 0.5), ilo)
                    fhi = min(math.floor(x + w_in - 0.5), ihi)
                    if fhi < flo:
                        flo, fhi = ihi + 1, ihi
                for i in range(flo, fhi + 1):  # branch-free so that it vectorises
                    f += image[k, j, i]
                    v += variance[k, j, i]
                    nb += bad[k, j, i]
                # Boundary pixels, left and right of the run, get exact areas.
                for lo, hi in ((ilo, flo - 1), (fhi + 1, ihi)):
                    if hi < lo:
                        continue
                    # The area is a difference of the strip primitive at the two x
                    # edges; each right edge is the next pixel's left edge.
                    left = _strip_area(lo - 0.5 - x, yb0, yb1, r)
                    for i in range(lo, hi + 1):
                        right = _strip_area(i + 0.5 - x, yb0, yb1, r)
                        a = right - left
                        left = right
                        if a > 0.0:
                            f += a * image[k, j, i]
                            v += a * a * variance[k, j, i]
                            nb += bad[k, j, i]
            flux[s, q] = f
            var[s, q] = v
            nbad[s, q] = nb


# ------------------------------------------------------------------------ circular apertures


@dataclass(frozen=True)
class ApertureFlux:
    """Aperture photometry for one radius; attributes have shape ``(n,)``.

    Attributes
    ----------
    radius : float
        Aperture radius, pixels.
    flux, flux_err : numpy.ndarray
        ``sum(a I)`` and ``sqrt(sum(a^2 V))``, image units.
    flag_truncated : numpy.ndarray
        The circle leaves the image (``_flag_apertureTruncated``).
    flag_masked : numpy.ndarray
        The circle overlaps a pixel with a bad mask bit.
    """

    radius: float
    flux: np.ndarray
    flux_err: np.ndarray
    flag_truncated: np.ndarray
    flag_masked: np.ndarray

    @property
    def flag(self) -> np.ndarray:
        """General flag: truncated or masked."""
        return self.flag_truncated | self.flag_masked


def _run_apertures(image, variance, bad, index, x, y, radii):
    n = x.size
    radii = np.asarray(radii, dtype=float)
    flux = np.zeros((n, radii.size))
    var = np.zeros((n, radii.size))
    nbad = np.zeros((n, radii.size), dtype=np.int64)
    if bad is None:
        bad = np.zeros((1, 1, 1), dtype=np.uint8)
        bad = np.broadcast_to(bad, image.shape)
    _aperture_kernel(image, variance, np.ascontiguousarray(bad, dtype=np.uint8),
                     np.asarray(index, dtype=np.int64), x, y, radii, flux, var, nbad)
    return flux, var, nbad


def aperture_flux_stamps(stamps, variance, bad, x, y, radii=APERTURE_RADII, *,
                         off_image=None) -> list[ApertureFlux]:
    """Exact circular-aperture fluxes on a stack of stamps.

    Parameters
    ----------
    stamps, variance : numpy.ndarray
        ``(n, h, w)`` image and variance stamps.
    bad : numpy.ndarray or None
        ``(n, h, w)`` boolean, True where a pixel must not be used (sets ``flag_masked``).
    x, y : array_like
        ``(n,)`` aperture centres in stamp pixel coordinates.
    radii : sequence of float
        Aperture radii, pixels.
    off_image : numpy.ndarray, optional
        ``(n, h, w)`` boolean, True for stamp pixels that lie off the image
        (sets ``flag_truncated``, as does a circle leaving the stamp).

    Returns
    -------
    list of ApertureFlux
        One entry per radius.
    """
    stamps = np.ascontiguousarray(stamps, dtype=float)
    variance = np.ascontiguousarray(variance, dtype=float)
    n, h, w = stamps.shape
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    index = np.arange(n)
    flux, var, nbad = _run_apertures(stamps, variance, bad, index, x, y, radii)
    if off_image is not None:
        _, _, noff = _run_apertures(np.zeros_like(stamps), stamps, off_image, index, x, y, radii)
    else:
        noff = np.zeros_like(nbad)
    out = []
    for q, r in enumerate(radii):
        leaves = (x - r < -0.5) | (x + r > w - 0.5) | (y - r < -0.5) | (y + r > h - 0.5)
        out.append(ApertureFlux(float(r), flux[:, q], np.sqrt(var[:, q]),
                                (noff[:, q] > 0) | leaves, nbad[:, q] > 0))
    return out


def aperture_flux(image, variance, bad, x, y, radii=APERTURE_RADII) -> list[ApertureFlux]:
    """Exact circular-aperture fluxes on a whole image.

    Parameters
    ----------
    image, variance : numpy.ndarray
        2-D image and variance, indexed ``[y, x]``.
    bad : numpy.ndarray or None
        2-D boolean, True for pixels with a bad mask bit (sets ``flag_masked``).
    x, y : array_like
        ``(n,)`` aperture centres, array pixel coordinates.
    radii : sequence of float
        Aperture radii, pixels.

    Returns
    -------
    list of ApertureFlux
        One entry per radius.

    Examples
    --------
    >>> img = np.ones((50, 50))
    >>> res = aperture_flux(img, img, None, [25.0], [25.0], radii=[10.0])
    >>> round(float(res[0].flux[0] / np.pi), 6)
    100.0
    """
    image = np.asarray(image)
    height, width = image.shape
    x = np.atleast_1d(np.asarray(x, dtype=float))
    y = np.atleast_1d(np.asarray(y, dtype=float))
    stack = np.asarray(image, dtype=float)[None]
    var = np.asarray(variance, dtype=float)[None]
    bad3 = None if bad is None else np.asarray(bad)[None]
    flux, v, nbad = _run_apertures(stack, var, bad3, np.zeros(x.size, dtype=np.int64), x, y, radii)
    out = []
    for q, r in enumerate(radii):
        leaves = (x - r < -0.5) | (x + r > width - 0.5) | (y - r < -0.5) | (y + r > height - 0.5)
        out.append(ApertureFlux(float(r), flux[:, q], np.sqrt(v[:, q]), leaves, nbad[:, q] > 0))
    return out


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
    g = np.asarray(good, dtype=float)
    pg = models * g
    spp = (pg * models).sum(axis=(1, 2))
    sp = pg.sum(axis=(1, 2))
    npix = g.sum(axis=(1, 2)).astype(np.int64)
    no_good = (npix == 0) | (spp <= 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        flux = (pg * stamps).sum(axis=(1, 2)) / spp
        err = np.sqrt((pg * models * variance).sum(axis=(1, 2))) / spp
        resid = stamps - flux[:, None, None] * models
        chi2 = (g * resid * resid / np.where(g > 0, variance, 1.0)).sum(axis=(1, 2))
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
    m, k, _ = models.shape
    height, width = image.shape
    x0 = np.asarray(x0, dtype=np.int64)
    y0 = np.asarray(y0, dtype=np.int64)
    # Place every child's model on the region's grid (clipped at its edges).
    placed = np.zeros((m, height, width))
    edge = np.zeros(m, dtype=bool)
    for c in range(m):
        ya, xa = max(y0[c], 0), max(x0[c], 0)
        yb, xb = min(y0[c] + k, height), min(x0[c] + k, width)
        edge[c] = (ya, xa, yb, xb) != (y0[c], x0[c], y0[c] + k, x0[c] + k)
        if yb > ya and xb > xa:
            placed[c, ya:yb, xa:xb] = models[c, ya - y0[c] : yb - y0[c], xa - x0[c] : xb - x0[c]]
    g = np.asarray(good, dtype=float)
    flat = placed.reshape(m, -1)
    gw = g.ravel()
    mat = (flat * gw) @ flat.T
    rhs = (flat * gw) @ image.ravel()
    cov_pix = (flat * (gw * variance.ravel())) @ flat.T
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
    resid = image - np.tensordot(flux, placed, axes=1)
    own = (placed != 0) & (g > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        chi2 = np.array([(resid[o] ** 2 / variance[o]).sum() for o in own])
        sp = (placed * own).sum(axis=(1, 2))
        spp = (placed * placed * own).sum(axis=(1, 2))
    npix = own.sum(axis=(1, 2)).astype(np.int64)
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
    vals = np.where(use, stamps[:, ys, xs], np.nan)
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
            mean = np.where(keep, vals, 0.0).sum(axis=1) / cnt
            var = np.where(keep, (vals - mean[:, None]) ** 2, 0.0).sum(axis=1) / (cnt - 1)
            centre, half = mean, n_sigma * np.sqrt(var)
    n_used = keep.sum(axis=1)
    return np.where(n_used > 0, mean, np.nan), np.where(n_used > 1, np.sqrt(var), np.nan), n_used
