"""PSFEx-like PSF modelling: star selection and a pixel-basis model varying over the image.

Selection (:func:`select_psf_candidates`, the ``calib_psf_candidate`` flag):
bright (PSF-flux S/N above ``min_snr``), unflagged (no saturation, edge, bad,
interpolated-centre... pixel flags; good centroid, shape and PSF flux),
unblended (not a deblended child, not a parent), isolated (no source brighter
than ``isolation_flux_ratio`` times the star within ``isolation_radius``) and on
the *stellar locus*: stars share the PSF's size, so among the bright sources the
trace radius ``sqrt((Ixx + Iyy) / 2)`` has a sharp mode (galaxies are larger,
cosmic rays smaller).  The mode is the half-sample mode; the locus half-width is
``locus_n_sigma`` robust sigmas of the radii near the mode, with a floor of
``locus_min_width`` times the mode (the PSF size varies over a detector).

Modelling (:func:`determine_psf`): stamps of ``kernel_size`` pixels are cut
around each star, shifted by the sub-pixel centroid offset (quintic B-spline,
the interpolant :meth:`store.psf.Psf.image` uses to go the other way) so every star sits
on its central pixel, and divided by the star's flux.  Masked pixels, and their
8 neighbours (the shift spreads them), get zero weight.  Each kernel pixel is
then an independent weighted linear least-squares fit of a polynomial in the
normalised star position (:func:`store.psf.polynomial_terms`), giving the basis
images of :class:`store.psf.PixelBasisPsf`.  Star fluxes are re-estimated by
PSF photometry with the new model, stars whose reduced chi^2 is a
``reject_n_sigma`` outlier are dropped, and the fit is repeated ``n_iter``
times.  A random ``reserve_fraction`` of candidates (seeded) is held out of the
fit for validation (``calib_psf_reserved``).  The polynomial degree is lowered
when there are fewer than ``min_stars_per_term`` stars per coefficient.

Self-similar wings (``wing_radius``): a free pixel basis takes the wings of
the model, and with them its normalisation (kernels sum to 1 over
``kernel_size``), from the few brightest stars, extrapolated by the polynomial;
the noise, the faint neighbours and the background error under those wings then
scale PSF fluxes by a position-dependent 0.3-1 % that aperture corrections
(low order, measured on the same stars) cannot follow.  Beyond ``wing_radius``
local PSF sigmas the model is therefore one radial profile ``g(u) / sqrt(det M)``
shared by the whole image, where ``u = sqrt(d^T M^-1 d)`` is the elliptical
radius in the core's adaptive moments ``M`` (less the pixel's 1/12) at that
position, and ``g`` a cubic B-spline in ``log u`` fitted to every star's wing
pixels at once.  The wings then follow the core's size and ellipticity
(exact for any profile whose shape varies by a linear transformation, such as
an atmospheric or Moffat PSF), their errors are the same everywhere and end up
in the aperture correction.  The core + wing model is sampled on a grid of
positions and the polynomial basis refitted to it, so the result is still a
:class:`store.psf.PixelBasisPsf`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_dilation
from scipy.spatial import cKDTree

from store.geom import Box
from store.masks import bits
from store.psf import PixelBasisPsf, polynomial_terms

from .centroid import cut_stamps
from .moments import adaptive_moments
from .psf_images import nearest_pixel, shift_stamps

__all__ = ["PsfDeterminationConfig", "PsfResult", "determine_psf", "select_psf_candidates"]

_BAD_FLAG_COLUMNS = (
    "pixelFlags_edge", "pixelFlags_bad", "pixelFlags_saturated", "pixelFlags_saturatedCenter",
    "pixelFlags_interpolatedCenter", "pixelFlags_crCenter", "pixelFlags_suspectCenter",
    "pixelFlags_nodata", "pixelFlags_offimage", "centroid_flag", "shape_flag", "psfFlux_flag",
)

#: Width (PSF sigmas) over which the free pixel core blends into the self-similar wings.
_WING_TAPER = 1.0
#: Positions per axis at which the core + wing model is sampled to refit the basis.
_WING_GRID = 7
#: Half-size of the kernel core used for the adaptive moments of the wing scaling, pixels.
_MOMENT_HALF = 15


@dataclass(frozen=True)
class PsfDeterminationConfig:
    """Settings of PSF star selection and modelling.

    Attributes
    ----------
    kernel_size : int
        Side of the model kernel, pixels (odd).
    degree : int
        Polynomial degree of the spatial variation.
    reserve_fraction : float
        Fraction of candidates held out of the fit.
    seed : int
        Seed of the reserve selection.
    min_snr, max_snr : float
        PSF-flux signal-to-noise range of candidates.
    bad_flag_columns : tuple of str
        Boolean columns that exclude a source when True (missing columns are ignored).
    exclude_blended : bool
        Exclude deblended children and parents.
    isolation_radius : float
        Radius within which a brighter-than-``isolation_flux_ratio`` neighbour excludes a star, pixels.
    isolation_flux_ratio : float
        Neighbour-to-star flux ratio that counts.
    locus_n_sigma, locus_min_width : float
        Stellar-locus half-width in robust sigmas, and its floor as a fraction of the mode.
    bad_mask_planes : tuple of str
        Mask planes whose pixels get no weight in the fit.
    n_iter : int
        Fit / re-photometer / reject iterations.
    reject_n_sigma : float
        Stars with reduced chi^2 above median + this many robust sigmas are rejected.
    min_stars_per_term : float
        Lower the degree until there are this many stars per polynomial coefficient.
        The fit is noise-limited with the few tens of stars of a 2k x 2k detector at
        high latitude: on 24 demo detector-visits (~18 stars each) 4 rather than 3
        (degree 1 instead of 2) took the largest moment error on a 5 x 5 grid from
        2.4 % to 2.2 % (median) and at reserved stars from 0.88 % to 0.75 % (median).
    wing_radius : float
        Beyond this elliptical radius, in units of the local PSF sigma (the
        core's adaptive moments), the model is *self-similar*: one radial
        profile shared by the whole image, stretched by the local moments
        (see the module docstring).  0 fits every kernel pixel freely.
    wing_knots : int
        Knots of the cubic B-spline (uniform in log radius) of the wing profile.
    """

    kernel_size: int = 41
    degree: int = 2
    reserve_fraction: float = 0.1
    seed: int = 0
    min_snr: float = 50.0
    max_snr: float = np.inf
    bad_flag_columns: tuple[str, ...] = _BAD_FLAG_COLUMNS
    exclude_blended: bool = True
    isolation_radius: float = 20.0
    isolation_flux_ratio: float = 0.01
    locus_n_sigma: float = 3.0
    locus_min_width: float = 0.03
    bad_mask_planes: tuple[str, ...] = ("BAD", "SAT", "CR", "INTRP", "NO_DATA", "SUSPECT", "EDGE")
    n_iter: int = 3
    reject_n_sigma: float = 4.0
    min_stars_per_term: float = 4.0
    wing_radius: float = 3.5
    wing_knots: int = 10

    def __post_init__(self):
        if self.kernel_size % 2 == 0 or self.kernel_size < 3:
            raise ValueError(f"kernel_size must be odd and >= 3, got {self.kernel_size}")
        if not 0.0 <= self.reserve_fraction < 1.0:
            raise ValueError(f"reserve_fraction must be in [0, 1), got {self.reserve_fraction}")
        if self.wing_radius < 0 or (self.wing_radius > 0 and self.wing_radius <= _WING_TAPER):
            raise ValueError(f"wing_radius must be 0 or > {_WING_TAPER}, got {self.wing_radius}")
        if self.wing_knots < 2:
            raise ValueError(f"wing_knots must be >= 2, got {self.wing_knots}")


@dataclass(frozen=True)
class PsfResult:
    """Result of :func:`determine_psf`.

    Attributes
    ----------
    psf : store.psf.PixelBasisPsf or None
        The model (None when no star could be used).
    candidate, used, reserved : numpy.ndarray
        ``(n,)`` booleans per input star: given as a candidate, used in the
        final fit, held out for validation.
    chi2 : numpy.ndarray
        ``(n,)`` reduced chi^2 of each star against the final model (reserved
        stars included), over its usable pixels.
    flux : numpy.ndarray
        ``(n,)`` PSF-photometry flux of each star against the final model.
    degree : int
        Polynomial degree actually used.
    """

    psf: PixelBasisPsf | None
    candidate: np.ndarray
    used: np.ndarray
    reserved: np.ndarray
    chi2: np.ndarray
    flux: np.ndarray
    degree: int


def _column(table, name):
    if hasattr(table, "column_names"):
        return table.column(name).to_numpy(zero_copy_only=False) if name in table.column_names \
            else None
    return np.asarray(table[name]) if name in table else None


def _half_sample_mode(values: np.ndarray) -> float:
    """Robust mode: repeatedly keep the half of the sorted sample with the smallest range."""
    v = np.sort(values[np.isfinite(values)])
    while v.size > 3:
        half = (v.size + 1) // 2
        widths = v[half - 1 :] - v[: v.size - half + 1]
        start = int(np.argmin(widths))
        v = v[start : start + half]
    return float(np.mean(v)) if v.size else float("nan")


def select_psf_candidates(table, *, config: PsfDeterminationConfig | None = None) -> np.ndarray:
    """Flag the sources suitable as PSF stars (``calib_psf_candidate``).

    Parameters
    ----------
    table : pyarrow.Table or mapping of str to array
        Measurement table with ``x, y, ixx, iyy, psfFlux_instFlux,
        psfFlux_instFluxErr`` and optionally the flag, ``parentSourceId`` and
        ``deblend_nChild`` columns of :func:`~processing.algorithms.measure.measure_sources`.
    config : PsfDeterminationConfig, optional
        Settings.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` boolean candidate flags (all False, with a warning, when none qualify).
    """
    config = config or PsfDeterminationConfig()
    flux = _column(table, "psfFlux_instFlux").astype(float)
    err = _column(table, "psfFlux_instFluxErr").astype(float)
    x, y = _column(table, "x").astype(float), _column(table, "y").astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = flux / err
        radius = np.sqrt(0.5 * (_column(table, "ixx") + _column(table, "iyy")))
    ok = np.isfinite(snr) & (snr > config.min_snr) & (snr < config.max_snr) & np.isfinite(radius)
    for name in config.bad_flag_columns:
        col = _column(table, name)
        if col is not None:
            ok &= ~col.astype(bool)
    if config.exclude_blended:
        for name in ("parentSourceId", "deblend_nChild"):
            col = _column(table, name)
            if col is not None:
                ok &= col == 0
    if ok.any() and config.isolation_radius > 0:
        finite = np.isfinite(x) & np.isfinite(y)
        tree = cKDTree(np.c_[x[finite], y[finite]])
        idx_all = np.nonzero(finite)[0]
        for i in np.nonzero(ok)[0]:
            near = idx_all[tree.query_ball_point((x[i], y[i]), config.isolation_radius)]
            near = near[near != i]
            if np.any(np.nan_to_num(flux[near], nan=np.inf) > config.isolation_flux_ratio * flux[i]):
                ok[i] = False
    if ok.sum() >= 3:
        mode = _half_sample_mode(radius[ok])
        keep = ok.copy()
        for _ in range(3):
            near = ok & (np.abs(radius - mode) < 0.15 * mode)
            sig = 1.4826 * np.median(np.abs(radius[near] - np.median(radius[near])))
            width = max(config.locus_n_sigma * sig, config.locus_min_width * mode)
            keep = ok & (np.abs(radius - mode) < width)
            if keep.sum() < 3:
                break
            mode = float(np.median(radius[keep]))
        ok = keep
    if not ok.any():
        warnings.warn("no PSF candidates: lower min_snr or isolation_radius, or check the flags",
                      stacklevel=2)
    return ok


def _bbox_tuple(bbox) -> tuple[float, float, float, float]:
    if isinstance(bbox, Box):
        return (float(bbox.x0), float(bbox.y0), float(bbox.x1 - 1), float(bbox.y1 - 1))
    return tuple(float(v) for v in bbox)


def _fit_basis(data, weight, terms):
    """Per-pixel weighted least squares: ``data ~ terms @ coeffs`` for every pixel.

    data, weight: (n, k, k); terms: (n, t).  Returns (t, k, k) coefficients.
    """
    n, k, _ = data.shape
    t = terms.shape[1]
    w = weight.reshape(n, -1)
    d = data.reshape(n, -1)
    mat = np.einsum("np,ni,nj->pij", w, terms, terms)
    rhs = np.einsum("np,ni,np->pi", w, terms, d)
    # A tiny ridge keeps pixels covered by few stars solvable.
    ridge = 1e-10 * np.trace(mat, axis1=1, axis2=2)[:, None, None] / t + 1e-300
    coeffs = np.linalg.solve(mat + ridge * np.eye(t), rhs[..., None])[..., 0]
    return coeffs.T.reshape(t, k, k)


def _scaled_radius(kernels):
    """Elliptical radius ``u = sqrt(d^T M^-1 d)`` of every pixel of centred kernels.

    ``M`` are the kernels' adaptive moments about the central pixel minus the
    pixel response's ``1/12`` (the wings scale with the optical profile, not
    with the pixel).  Returns ``u`` (n, k, k) and ``sqrt(det M)`` (n,), or
    None if a moment fails.
    """
    n, k, _ = kernels.shape
    half = k // 2
    # The moments need only the core (the weight is a few sigma wide): crop for speed.
    cut = max(half - _MOMENT_HALF, 0)
    core = kernels[:, cut : k - cut, cut : k - cut]
    mom = adaptive_moments(core, np.full(n, float(half - cut)), np.full(n, float(half - cut)),
                           initial=4.0, recentre=False)
    xx, yy, xy = mom.xx - 1.0 / 12.0, mom.yy - 1.0 / 12.0, mom.xy
    det = xx * yy - xy * xy
    if np.any(mom.flag) or not np.all(np.isfinite(det) & (det > 0) & (xx > 0)):
        return None
    off = np.arange(-half, half + 1, dtype=float)
    dx, dy = off[None, None, :], off[None, :, None]
    xx, yy, xy = (v[:, None, None] for v in (xx, yy, xy))
    u2 = (yy * dx * dx - 2.0 * xy * dx * dy + xx * dy * dy) / det[:, None, None]
    return np.sqrt(u2), np.sqrt(det)


def _cubic_bspline(v, lo, hi, n_int):
    """Uniform cubic B-splines on ``[lo, hi]`` cut into ``n_int`` intervals.

    Returns, for each value (clipped to the range), the index of its first
    non-zero basis function (of ``n_int + 3``) and the four non-zero values.
    """
    t = np.clip((v - lo) / (hi - lo) * n_int, 0.0, n_int)
    first = np.minimum(np.floor(t).astype(np.int64), n_int - 1)
    f = t - first
    values = np.stack([(1 - f) ** 3, 3 * f**3 - 6 * f**2 + 4, -3 * f**3 + 3 * f**2 + 3 * f + 1,
                       f**3], axis=1) / 6.0
    return first, values


def _self_similar_wings(basis, terms, data, weight, degree, config):
    """Replace the wings of a pixel basis by one radial profile stretched by the local core.

    The core kernel at every star gives its adaptive moments ``M``; wing
    pixels (elliptical radius ``u >= wing_radius - taper``) of all stars'
    flux-normalised stamps ``data`` are fitted, with the basis-fit weights,
    by ``g(u) / sqrt(det M)`` with ``g`` a cubic B-spline in ``log u``.  The
    core + wing model is then sampled on a grid of positions (blended
    linearly over the taper) and the polynomial basis refitted to it (exact
    in the core).  Returns the new basis, or the input (with a warning) if a
    moment fails.
    """
    n_terms, k, _ = basis.shape
    scaled = _scaled_radius(np.einsum("nt,tij->nij", terms, basis))
    axis = np.linspace(-1.0, 1.0, max(_WING_GRID, 2 * degree + 3))
    gx, gy = np.meshgrid(axis, axis)
    grid_terms = polynomial_terms(gx.ravel(), gy.ravel(), degree)
    grid_kernels = np.einsum("nt,tij->nij", grid_terms, basis)
    grid_scaled = _scaled_radius(grid_kernels)
    if scaled is None or grid_scaled is None:
        warnings.warn("PSF core moments failed: wings left as free pixels this iteration",
                      stacklevel=3)
        return basis
    u, sdet = scaled
    u0 = config.wing_radius - _WING_TAPER
    sel = (u >= u0) & (weight > 0)
    if not sel.any():
        return basis
    lo, hi = np.log(u0), np.log(u[sel].max())
    n_int = config.wing_knots - 1
    n_basis = n_int + 3
    # Weighted least squares for the spline coefficients: data ~ g(u) / sqrt(det M).
    star = np.nonzero(sel)[0]
    first, values = _cubic_bspline(np.log(u[sel]), lo, hi, n_int)
    w = weight[sel] / sdet[star] ** 2
    target = data[sel] * sdet[star]
    normal = np.zeros(n_basis * n_basis)
    rhs = np.zeros(n_basis)
    for a in range(4):
        rhs += np.bincount(first + a, w * values[:, a] * target, minlength=n_basis)
        for b in range(4):
            normal += np.bincount((first + a) * n_basis + first + b,
                                  w * values[:, a] * values[:, b], minlength=n_basis**2)
    normal = normal.reshape(n_basis, n_basis)
    # A tiny ridge keeps coefficients without data (beyond the last star pixel) at zero.
    ridge = 1e-12 * np.trace(normal) / n_basis
    coeff = np.linalg.solve(normal + ridge * np.eye(n_basis), rhs)
    ug, sg = grid_scaled
    first, values = _cubic_bspline(np.log(np.maximum(ug, u0)).ravel(), lo, hi, n_int)
    wing = (values * coeff[first[:, None] + np.arange(4)]).sum(axis=1)
    wing = wing.reshape(ug.shape) / sg[:, None, None]
    blend = np.clip((ug - u0) / _WING_TAPER, 0.0, 1.0)
    hybrid = grid_kernels + blend * (wing - grid_kernels)
    new = np.linalg.pinv(grid_terms) @ hybrid.reshape(grid_terms.shape[0], -1)
    return new.reshape(n_terms, k, k)


def _photometry(stamps, variance, good, models):
    """Unweighted PSF fluxes and reduced chi^2 of normalised models against stamps."""
    g = good.astype(float)
    spp = (g * models * models).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        flux = (g * models * stamps).sum(axis=(1, 2)) / spp
        resid = stamps - flux[:, None, None] * models
        chi2 = (g * resid * resid / np.where(good, variance, 1.0)).sum(axis=(1, 2))
        chi2 /= np.maximum(g.sum(axis=(1, 2)) - 1, 1)
    return flux, chi2


def determine_psf(image, variance, mask, x, y, flux, bbox, *,
                  config: PsfDeterminationConfig | None = None) -> PsfResult:
    """Fit a PSFEx-like pixel-basis PSF model to candidate stars.

    Parameters
    ----------
    image, variance : numpy.ndarray
        2-D background-subtracted image (counts) and variance (counts^2).
    mask : numpy.ndarray
        2-D integer mask (:mod:`store.masks` bits).
    x, y : array_like
        ``(n,)`` candidate centroids, array pixel coordinates.
    flux : array_like
        ``(n,)`` first-guess fluxes (e.g. an aperture or preliminary PSF flux), counts.
    bbox : store.geom.Box or tuple of float
        Region the polynomial is normalised on; a tuple is ``(xmin, ymin, xmax, ymax)``.
    config : PsfDeterminationConfig, optional
        Settings.

    Returns
    -------
    PsfResult
    """
    config = config or PsfDeterminationConfig()
    x = np.atleast_1d(np.asarray(x, dtype=float))
    y = np.atleast_1d(np.asarray(y, dtype=float))
    flux0 = np.atleast_1d(np.asarray(flux, dtype=float))
    n = x.size
    bbox = _bbox_tuple(bbox)
    rng = np.random.default_rng(config.seed)
    reserved = np.zeros(n, dtype=bool)
    reserved[rng.choice(n, size=round(config.reserve_fraction * n), replace=False)] = True
    nan = np.full(n, np.nan)
    if n == 0:
        warnings.warn("no PSF candidates given; no PSF model", stacklevel=2)
        return PsfResult(None, np.zeros(0, bool), np.zeros(0, bool), reserved, nan, nan,
                         config.degree)

    half = config.kernel_size // 2
    ix, iy = nearest_pixel(x), nearest_pixel(y)
    img, on = cut_stamps(np.asarray(image, dtype=float), ix, iy, half)
    var, _ = cut_stamps(np.asarray(variance, dtype=float), ix, iy, half)
    msk, _ = cut_stamps(np.asarray(mask), ix, iy, half)
    bad = ~on | ((msk & bits(config.bad_mask_planes)) != 0) | ~np.isfinite(img)
    # Recentre every star on its central pixel; masked pixels are zeroed first and,
    # with their neighbours (which the shift contaminates), excluded afterwards.
    stamps = shift_stamps(np.where(bad, 0.0, img), -(x - ix), -(y - iy))
    bad = binary_dilation(bad, structure=np.ones((1, 3, 3), dtype=bool))
    good = ~bad & (var > 0)
    var = np.where(good, var, 1.0)
    xn, yn = PixelBasisPsf(np.zeros((1, 3, 3)), 0, bbox).normalise_position(x, y)

    degree = config.degree
    use = ~reserved & np.isfinite(flux0) & (flux0 > 0) & (good.sum(axis=(1, 2)) > 0)
    while degree > 0 and use.sum() < config.min_stars_per_term * (degree + 1) * (degree + 2) / 2:
        degree -= 1
    if degree < config.degree:
        warnings.warn(f"only {int(use.sum())} PSF stars: polynomial degree lowered from "
                      f"{config.degree} to {degree}", stacklevel=2)
    if not use.any():
        warnings.warn("no usable PSF star; no PSF model", stacklevel=2)
        return PsfResult(None, np.ones(n, bool), use, reserved, nan, nan, degree)
    terms = polynomial_terms(xn, yn, degree)
    amp = np.where(np.isfinite(flux0) & (flux0 > 0), flux0, 1.0)
    psf, chi2 = None, nan
    for it in range(max(config.n_iter, 1)):
        # Weights of the flux-normalised stamps: inverse variance of stamp / amp.
        weight = np.where(good, amp[:, None, None] ** 2 / var, 0.0) * use[:, None, None]
        basis = _fit_basis(stamps / amp[:, None, None], weight, terms)
        if config.wing_radius > 0:
            basis = _self_similar_wings(basis, terms, stamps / amp[:, None, None], weight, degree,
                                        config)
        psf = PixelBasisPsf(basis, degree, bbox)
        models = np.einsum("nt,tij->nij", terms, basis)
        models /= models.sum(axis=(1, 2))[:, None, None]
        amp_new, chi2 = _photometry(stamps, var, good, models)
        amp = np.where(np.isfinite(amp_new) & (amp_new > 0), amp_new, amp)
        if it < config.n_iter - 1:
            c = chi2[use]
            med = np.median(c)
            sig = 1.4826 * np.median(np.abs(c - med))
            outlier = chi2 > med + config.reject_n_sigma * max(sig, 1e-3 * med)
            still = use & ~outlier
            if still.sum() >= config.min_stars_per_term * terms.shape[1]:
                use = still
    return PsfResult(psf, np.ones(n, dtype=bool), use, reserved, chi2, amp, degree)
