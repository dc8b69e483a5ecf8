"""Astrometric calibration: TAN-SIP WCS fitting and the match-fit-rematch loop of AstrometryTask.

Method.  The WCS model is FITS TAN-SIP (what DESIGN.md stores in image headers and what astropy
evaluates natively).  Writing ``(u, v)`` for pixel offsets from CRPIX and ``(xi, eta)`` for the
gnomonic (intermediate world) coordinates of the reference stars about CRVAL, the model
``(xi, eta) = CD (u + A(u, v), v + B(u, v))`` is a plain polynomial of total order ``sip_order``
in ``(u, v)``, so it is fitted *linearly*: one least-squares solve per axis for all monomials,
``CD`` is the linear part and the SIP coefficients are ``CD^-1`` times the higher-order parts.
A fitted constant term means the tangent point is off; CRVAL is moved there and the projection
redone (2-3 passes reach 1e-10 deg).  Outliers are rejected at ``n_sigma`` times a MAD-based
sigma per axis and the fit repeated.  The inverse polynomials AP/BP (needed by FITS readers such
as DS9, and used by astropy's ``sip_foc2pix``; astropy's ``all_world2pix`` itself iterates on the
forward polynomials and is exact regardless) are fitted on a 48x48 grid over the detector, two
orders higher than the forward ones, and their worst error on that grid is reported.

``solve_astrometry`` mirrors meas_astrom's ``AstrometryTask`` (algorithms.md 6.2 step 1) with our
own matcher (:mod:`processing.algorithms.matching`): match with the guessed WCS, fit, re-match all
references through the fitted WCS with a radius of 5 sigma of the fit residuals, refit
(``n_rounds`` times).  ``astromOffsetMean/Std`` (algorithms.md 1.5) are the 3-sigma, 3-iteration
clipped mean and standard deviation (A.1) of the on-sky separations of the final matches, as
meas_astrom computes them; the fit fails its quality check when the mean exceeds
``max_mean_distance_arcsec`` (0.5 arcsec, Rubin's ``maxMeanDistanceArcsec``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from astropy.wcs import WCS, Sip
from scipy.spatial import cKDTree

from processing.algorithms.matching import (
    MatchConfig,
    MatchResult,
    match_to_reference,
    unique_nearest_pairs,
)
from processing.algorithms.stats import clipped_stats
from store.geom import Box

__all__ = [
    "MATCH_DTYPE",
    "AstrometryConfig",
    "AstrometryResult",
    "TanSipFit",
    "fit_tan_sip",
    "fit_tan_sip_detailed",
    "solve_astrometry",
]

_MAD_TO_SIGMA = 1.4826


def _unit_vectors(ra0: float, dec0: float):
    """Tangent-plane basis at (ra0, dec0): radial, east and north unit vectors."""
    a, d = np.radians(ra0), np.radians(dec0)
    er = np.array([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)])
    ee = np.array([-np.sin(a), np.cos(a), 0.0])
    en = np.array([-np.sin(d) * np.cos(a), -np.sin(d) * np.sin(a), np.cos(d)])
    return er, ee, en


def _radec_to_vec(ra, dec) -> np.ndarray:
    a, d = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)], axis=-1)


def _gnomonic(ra, dec, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic projection about (ra0, dec0): (xi, eta) in degrees, xi towards +RA."""
    er, ee, en = _unit_vectors(ra0, dec0)
    p = _radec_to_vec(ra, dec)
    z = p @ er
    return np.degrees(p @ ee / z), np.degrees(p @ en / z)


def _inverse_gnomonic(xi, eta, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`_gnomonic`: (ra, dec) in degrees."""
    er, ee, en = _unit_vectors(ra0, dec0)
    p = er + np.radians(xi)[..., None] * ee + np.radians(eta)[..., None] * en
    p /= np.linalg.norm(p, axis=-1, keepdims=True)
    return np.degrees(np.arctan2(p[..., 1], p[..., 0])) % 360.0, np.degrees(np.arcsin(p[..., 2]))


def _angular_sep_arcsec(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Great-circle separation, arcsec (stable for tiny angles)."""
    p, q = _radec_to_vec(ra1, dec1), _radec_to_vec(ra2, dec2)
    return np.degrees(2.0 * np.arcsin(0.5 * np.linalg.norm(p - q, axis=-1))) * 3600.0


def _terms(order: int, min_total: int = 0) -> list[tuple[int, int]]:
    return [(p, n - p) for n in range(min_total, order + 1) for p in range(n, -1, -1)]


def _design(u, v, terms, norm: float) -> np.ndarray:
    un, vn = u / norm, v / norm
    return np.stack([un**p * vn**q for p, q in terms], axis=-1)


@dataclass(frozen=True)
class TanSipFit:
    """Result of :func:`fit_tan_sip_detailed`.

    Attributes
    ----------
    wcs : astropy.wcs.WCS
        The fitted TAN (order 1) or TAN-SIP WCS, 0-based pixel convention.
    used : numpy.ndarray
        Bool mask of the input pairs kept by the sigma clipping, shape (n,).
    residual_arcsec : numpy.ndarray
        (xi, eta) residuals "model - reference" of every input pair, arcsec, shape (n, 2).
    rms_arcsec : float
        RMS on-sky residual (radial) of the used pairs, arcsec.
    sip_order : int
        Order of the forward polynomial.
    inverse_max_error_pix : float
        Worst round-trip error of the AP/BP inverse polynomials on the fitting grid, pixels.
    """

    wcs: WCS
    used: np.ndarray
    residual_arcsec: np.ndarray
    rms_arcsec: float
    sip_order: int
    inverse_max_error_pix: float

    def __repr__(self) -> str:
        return (f"TanSipFit(sip_order={self.sip_order}, n_used={int(self.used.sum())}/"
                f"{self.used.size}, rms={self.rms_arcsec * 1e3:.1f} mas, "
                f"inverse_err={self.inverse_max_error_pix:.1e} px)")


def _solve_poly(u, v, xi, eta, sw, terms, norm):
    """Weighted linear least squares of (xi, eta) on the monomials; coefficients (n_terms, 2)."""
    a = _design(u, v, terms, norm) * sw[:, None]
    b = np.stack([xi, eta], axis=-1) * sw[:, None]
    coef = np.linalg.lstsq(a, b, rcond=None)[0]
    scale = np.array([norm ** -(p + q) for p, q in terms])
    return coef * scale[:, None]   # coefficients of the unnormalised monomials


def _fit_inverse(cd_inv_hi, fwd_terms, order_inv, grid_u, grid_v, norm):
    """Fit AP, BP on a grid; returns (ap, bp, max_error_pix)."""
    # forward distortion (A, B) at the grid: f = sum A_pq u^p v^q
    fwd = _design(grid_u, grid_v, fwd_terms, 1.0) @ cd_inv_hi if fwd_terms else 0.0
    big_u = grid_u + (fwd[:, 0] if fwd_terms else 0.0)
    big_v = grid_v + (fwd[:, 1] if fwd_terms else 0.0)
    inv_terms = _terms(order_inv, 0)
    coef = _solve_poly(big_u, big_v, grid_u - big_u, grid_v - big_v, np.ones(big_u.size),
                       inv_terms, norm)
    pred = _design(big_u, big_v, inv_terms, 1.0) @ coef
    err = np.hypot(big_u + pred[:, 0] - grid_u, big_v + pred[:, 1] - grid_v)
    ap = np.zeros((order_inv + 1, order_inv + 1))
    bp = np.zeros_like(ap)
    for k, (p, q) in enumerate(inv_terms):
        ap[p, q], bp[p, q] = coef[k]
    return ap, bp, float(err.max())


def fit_tan_sip_detailed(
    src_x: np.ndarray,
    src_y: np.ndarray,
    ref_ra: np.ndarray,
    ref_dec: np.ndarray,
    crpix: tuple[float, float],
    crval: tuple[float, float],
    sip_order: int = 3,
    weights: np.ndarray | None = None,
    *,
    n_sigma: float = 3.0,
    n_clip_iter: int = 3,
    bbox: Box | None = None,
    inverse_order: int | None = None,
) -> TanSipFit:
    """Fit a TAN-SIP WCS to matched (pixel, sky) pairs, with sigma clipping.

    Parameters
    ----------
    src_x, src_y : numpy.ndarray
        Matched source centroids, 0-based parent pixels, shape (n,).
    ref_ra, ref_dec : numpy.ndarray
        Matching reference positions, degrees, shape (n,).
    crpix : tuple of float
        Reference pixel, **0-based** (x, y) (the FITS header gets ``crpix + 1``); kept fixed.
    crval : tuple of float
        Starting (ra, dec) of the reference pixel, degrees; refined by the fit.
    sip_order : int
        Total polynomial order (1 = plain TAN with a free CD matrix, 2-5 = TAN-SIP).
    weights : numpy.ndarray, optional
        Relative weights (inverse variances) of the pairs, shape (n,).
    n_sigma : float
        Rejection threshold, in MAD-based sigma of the per-axis residuals.
    n_clip_iter : int
        Maximum fit-and-clip passes (0 = no clipping).
    bbox : store.geom.Box, optional
        Detector box over which the inverse polynomials are fitted; defaults to the source extent.
    inverse_order : int, optional
        Order of AP/BP; defaults to ``sip_order + 2`` (``+ 1`` leaves ~0.01 px errors at the
        corners for a few pixels of cubic distortion; ``+ 2`` reaches ~1e-4 px).

    Returns
    -------
    TanSipFit

    Raises
    ------
    ValueError
        If the arrays differ in length, ``sip_order`` is out of range, or there are fewer
        finite pairs than free parameters per axis.
    """
    x = np.asarray(src_x, dtype=float).ravel()
    y = np.asarray(src_y, dtype=float).ravel()
    ra = np.asarray(ref_ra, dtype=float).ravel()
    dec = np.asarray(ref_dec, dtype=float).ravel()
    if not (x.size == y.size == ra.size == dec.size):
        raise ValueError(f"src_x, src_y, ref_ra, ref_dec differ in length: "
                         f"{x.size}, {y.size}, {ra.size}, {dec.size}")
    if sip_order not in (1, 2, 3, 4, 5):
        raise ValueError(f"sip_order must be 1..5, got {sip_order}")
    w = np.ones(x.size) if weights is None else np.asarray(weights, dtype=float).ravel()
    if w.size != x.size:
        raise ValueError(f"weights has length {w.size}, expected {x.size}")
    finite = np.isfinite(x) & np.isfinite(y) & np.isfinite(ra) & np.isfinite(dec) & (w > 0)
    terms = _terms(sip_order, 0)
    if finite.sum() < len(terms):
        raise ValueError(f"{int(finite.sum())} usable pairs cannot constrain a sip_order={sip_order} "
                         f"fit ({len(terms)} parameters per axis)")
    crpix = (float(crpix[0]), float(crpix[1]))
    u, v = x - crpix[0], y - crpix[1]
    norm = max(float(np.max(np.hypot(u[finite], v[finite]))), 1.0)
    sw = np.sqrt(w / np.mean(w[finite]))
    ra0, dec0 = float(crval[0]), float(crval[1])
    used = finite.copy()
    i_const, i_u, i_v = terms.index((0, 0)), terms.index((1, 0)), terms.index((0, 1))
    n_pass = max(n_clip_iter, 0) + 1
    for i_pass in range(n_pass):
        for _ in range(6):  # tangent-point refinement
            xi, eta = _gnomonic(ra, dec, ra0, dec0)
            coef = _solve_poly(u[used], v[used], xi[used], eta[used], sw[used], terms, norm)
            shift = coef[i_const]
            ra0, dec0 = _inverse_gnomonic(shift[0], shift[1], ra0, dec0)
            ra0, dec0 = float(ra0), float(dec0)
            if np.hypot(*shift) < 1e-11:
                break
        xi, eta = _gnomonic(ra, dec, ra0, dec0)
        coef[i_const] = 0.0
        model = _design(u, v, terms, 1.0) @ coef
        resid = (model - np.stack([xi, eta], axis=-1)) * 3600.0
        if i_pass == n_pass - 1:
            break  # the last fit stands: no clipping the fit has not seen
        z = resid * sw[:, None]
        zu = z[used]
        sigma = _MAD_TO_SIGMA * np.median(np.abs(zu - np.median(zu, axis=0)), axis=0)
        sigma = np.maximum(sigma, 1e-9)
        new_used = finite & np.all(np.abs(z - np.median(zu, axis=0)) <= n_sigma * sigma, axis=1)
        if new_used.sum() < len(terms) or np.array_equal(new_used, used):
            break
        used = new_used

    cd = np.array([[coef[i_u, 0], coef[i_v, 0]], [coef[i_u, 1], coef[i_v, 1]]])
    cd_inv = np.linalg.inv(cd)
    hi_terms = _terms(sip_order, 2)
    hi_idx = [terms.index(t) for t in hi_terms]
    cd_inv_hi = (cd_inv @ coef[hi_idx].T).T if hi_terms else np.zeros((0, 2))  # (n_hi, 2)

    wcs = WCS(naxis=2)
    wcs.wcs.crpix = [crpix[0] + 1.0, crpix[1] + 1.0]
    wcs.wcs.crval = [ra0, dec0]
    wcs.wcs.cd = cd
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.radesys = "ICRS"
    inverse_err = 0.0
    if sip_order >= 2:
        wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
        a = np.zeros((sip_order + 1, sip_order + 1))
        b = np.zeros_like(a)
        for k, (p, q) in enumerate(hi_terms):
            a[p, q], b[p, q] = cd_inv_hi[k]
        if bbox is None:
            bbox = Box.from_minmax(int(np.floor(x[finite].min())), int(np.floor(y[finite].min())),
                                   int(np.ceil(x[finite].max())), int(np.ceil(y[finite].max())))
        corners = bbox.grow(max(2, int(0.02 * max(bbox.width, bbox.height)))).corners()
        gx, gy = np.meshgrid(np.linspace(corners[0, 0], corners[1, 0], 48),
                             np.linspace(corners[0, 1], corners[2, 1], 48))
        inv_order = inverse_order if inverse_order is not None else sip_order + 2
        ap, bp, inverse_err = _fit_inverse(cd_inv_hi, hi_terms, inv_order,
                                           gx.ravel() - crpix[0], gy.ravel() - crpix[1], norm)
        wcs.sip = Sip(a, b, ap, bp, wcs.wcs.crpix)
    else:
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.set()
    radial = np.hypot(resid[used, 0], resid[used, 1])
    return TanSipFit(wcs=wcs, used=used, residual_arcsec=resid,
                     rms_arcsec=float(np.sqrt(np.mean(radial**2))), sip_order=sip_order,
                     inverse_max_error_pix=inverse_err)


def fit_tan_sip(
    src_x: np.ndarray,
    src_y: np.ndarray,
    ref_ra: np.ndarray,
    ref_dec: np.ndarray,
    crpix: tuple[float, float],
    crval: tuple[float, float],
    sip_order: int = 3,
    weights: np.ndarray | None = None,
    **kwargs,
) -> WCS:
    """Fit a TAN-SIP WCS to matched pairs; the WCS of :func:`fit_tan_sip_detailed` (same parameters).

    Examples
    --------
    >>> w = WCS(naxis=2); w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    >>> w.wcs.crval = [30.0, 10.0]; w.wcs.crpix = [100.5, 100.5]
    >>> w.wcs.cd = [[-5e-5, 1e-6], [1e-6, 5e-5]]
    >>> x, y = np.meshgrid(np.arange(0, 200, 20.0), np.arange(0, 200, 25.0))
    >>> ra, dec = w.all_pix2world(x.ravel(), y.ravel(), 0)
    >>> fit = fit_tan_sip(x.ravel(), y.ravel(), ra, dec, (99.5, 99.5), (30.001, 9.999), sip_order=1)
    >>> bool(np.allclose(fit.wcs.crval, [30.0, 10.0]) and np.allclose(fit.wcs.cd, w.wcs.cd))
    True
    """
    return fit_tan_sip_detailed(src_x, src_y, ref_ra, ref_dec, crpix, crval, sip_order, weights,
                                **kwargs).wcs


@dataclass(frozen=True)
class AstrometryConfig:
    """Settings of :func:`solve_astrometry`.

    Attributes
    ----------
    match : MatchConfig
        Settings of the initial pattern match.
    sip_order : int
        Highest SIP order; lowered automatically when there are fewer than
        ``min_pairs_per_term`` matches per free parameter.
    min_pairs_per_term : float
        Matches required per polynomial term (per axis) to use a given order.
    n_rounds : int
        Fit / re-match rounds after the initial match.
    n_sigma_clip : float
        Outlier rejection threshold of the WCS fit.
    n_clip_iter : int
        Fit-and-clip passes per fit.
    match_radius_sigma : float
        Re-match radius in units of the per-axis fit scatter.
    min_match_radius_arcsec, max_match_radius_arcsec : float
        Bounds of the re-match radius, arcsec.
    min_matches : int
        Fewest final matches for a successful solution.
    max_mean_distance_arcsec : float
        Largest acceptable ``astromOffsetMean`` (Rubin ``maxMeanDistanceArcsec``).
    """

    match: MatchConfig = field(default_factory=MatchConfig)
    sip_order: int = 3
    min_pairs_per_term: float = 2.0
    n_rounds: int = 3
    n_sigma_clip: float = 3.0
    n_clip_iter: int = 3
    match_radius_sigma: float = 5.0
    min_match_radius_arcsec: float = 0.2
    max_match_radius_arcsec: float = 2.0
    min_matches: int = 6
    max_mean_distance_arcsec: float = 0.5

    def __post_init__(self):
        if self.sip_order not in (1, 2, 3, 4, 5):
            raise ValueError(f"sip_order must be 1..5, got {self.sip_order}")
        if self.n_rounds < 1:
            raise ValueError(f"n_rounds must be >= 1, got {self.n_rounds}")
        if not 0 < self.min_match_radius_arcsec <= self.max_match_radius_arcsec:
            raise ValueError(f"need 0 < min_match_radius_arcsec <= max_match_radius_arcsec, got "
                             f"{self.min_match_radius_arcsec}, {self.max_match_radius_arcsec}")


#: dtype of :attr:`AstrometryResult.matches`.
MATCH_DTYPE = np.dtype([("src_index", np.int64), ("ref_index", np.int64),
                        ("separation_arcsec", np.float64), ("used", np.bool_)])


@dataclass(frozen=True)
class AstrometryResult:
    """Outcome of :func:`solve_astrometry`; falsy when the solution failed.

    Attributes
    ----------
    wcs : astropy.wcs.WCS or None
        The fitted WCS (also returned when only the quality check failed); None when no fit.
    matches : numpy.ndarray
        Structured array (:data:`MATCH_DTYPE`): source index, reference index, final on-sky
        separation (arcsec) and whether the fit kept the pair.
    offset_mean_arcsec, offset_std_arcsec : float
        Clipped mean / standard deviation of the final separations (Rubin astromOffsetMean/Std).
    offset_median_arcsec : float
        Median final separation, arcsec.
    rms_arcsec : float
        RMS on-sky residual of the pairs used by the final fit, arcsec.
    success : bool
        Whether a WCS was fitted and passed the quality check.
    reason : str
        One line saying why it failed ("" on success).
    sip_order : int
        Order actually fitted.
    initial_match : MatchResult or None
        The pattern-match result (offset and rotation of the guess).
    """

    wcs: WCS | None
    matches: np.ndarray
    offset_mean_arcsec: float
    offset_std_arcsec: float
    offset_median_arcsec: float
    rms_arcsec: float
    success: bool
    reason: str = ""
    sip_order: int = 0
    initial_match: MatchResult | None = None

    @property
    def n_matches(self) -> int:
        """Number of final matches."""
        return int(self.matches.size)

    def __bool__(self) -> bool:
        return bool(self.success)

    def __repr__(self) -> str:
        state = "success" if self.success else f"failed: {self.reason}"
        return (f"AstrometryResult({state}, n_matches={self.n_matches}, "
                f"offset_mean={self.offset_mean_arcsec:.4f}\", rms={self.rms_arcsec:.4f}\", "
                f"sip_order={self.sip_order})")


def _failed(reason: str, initial: MatchResult | None = None) -> AstrometryResult:
    nan = float("nan")
    return AstrometryResult(None, np.zeros(0, dtype=MATCH_DTYPE), nan, nan, nan, nan, False, reason,
                            0, initial)


def _choose_order(n: int, max_order: int, per_term: float) -> int:
    for order in range(max_order, 0, -1):
        if n >= per_term * len(_terms(order, 0)):
            return order
    return 1


def solve_astrometry(
    src_x: np.ndarray,
    src_y: np.ndarray,
    src_flux: np.ndarray,
    ref_ra: np.ndarray,
    ref_dec: np.ndarray,
    ref_mag: np.ndarray,
    wcs_guess: WCS,
    bbox: Box,
    config: AstrometryConfig | None = None,
    *,
    weights: np.ndarray | None = None,
) -> AstrometryResult:
    """Match sources to a reference catalogue and fit a TAN-SIP WCS (AstrometryTask-like).

    Parameters
    ----------
    src_x, src_y : numpy.ndarray
        Source centroids, 0-based parent pixels, shape (n_src,).
    src_flux : numpy.ndarray
        Source instrumental fluxes, shape (n_src,) (ranking only).
    ref_ra, ref_dec : numpy.ndarray
        Reference positions, degrees, shape (n_ref,).
    ref_mag : numpy.ndarray
        Reference magnitudes, shape (n_ref,) (ranking only).
    wcs_guess : astropy.wcs.WCS
        Initial WCS, e.g. from the pointing model.
    bbox : store.geom.Box
        Detector box in parent pixels; CRPIX is put at its centre.
    config : AstrometryConfig, optional
    weights : numpy.ndarray, optional
        Per-source relative weights (inverse variances), shape (n_src,).

    Returns
    -------
    AstrometryResult
        ``success=False`` with a one-line reason when matching fails, too few matches remain, or
        the mean separation exceeds ``max_mean_distance_arcsec`` (then the WCS is still given).
    """
    cfg = config or AstrometryConfig()
    sx = np.asarray(src_x, dtype=float).ravel()
    sy = np.asarray(src_y, dtype=float).ravel()
    ra = np.asarray(ref_ra, dtype=float).ravel()
    dec = np.asarray(ref_dec, dtype=float).ravel()
    w_src = None if weights is None else np.asarray(weights, dtype=float).ravel()
    if w_src is not None and w_src.size != sx.size:
        raise ValueError(f"weights has length {w_src.size}, expected {sx.size}")
    initial = match_to_reference(sx, sy, src_flux, ra, dec, ref_mag, wcs_guess, cfg.match, bbox=bbox)
    if not initial:
        return _failed(f"matching failed: {initial.reason}", initial)

    crpix = bbox.center
    start = wcs_guess.all_pix2world(np.array([crpix], dtype=float), 0)[0]
    crval = (float(start[0]), float(start[1]))
    i_src, i_ref = initial.src_index, initial.ref_index
    src_good = np.flatnonzero(np.isfinite(sx) & np.isfinite(sy))
    tree = cKDTree(np.column_stack([sx[src_good], sy[src_good]]))
    ref_good = np.flatnonzero(np.isfinite(ra) & np.isfinite(dec))
    search_box = bbox.grow(int(np.ceil(cfg.match.max_match_radius_pix)) + 2)
    fit = None
    for _ in range(cfg.n_rounds):
        order = _choose_order(i_src.size, cfg.sip_order, cfg.min_pairs_per_term)
        w = None if w_src is None else w_src[i_src]
        try:
            fit = fit_tan_sip_detailed(sx[i_src], sy[i_src], ra[i_ref], dec[i_ref], crpix, crval,
                                       order, w, n_sigma=cfg.n_sigma_clip,
                                       n_clip_iter=cfg.n_clip_iter, bbox=bbox)
        except ValueError as err:
            return _failed(f"WCS fit failed: {err}", initial)
        crval = tuple(float(c) for c in fit.wcs.wcs.crval)
        scale = np.sqrt(abs(np.linalg.det(fit.wcs.wcs.cd))) * 3600.0
        resid = fit.residual_arcsec[fit.used]
        sigma_1d = _MAD_TO_SIGMA * np.median(np.abs(resid - np.median(resid, axis=0)))
        radius_arcsec = float(np.clip(cfg.match_radius_sigma * sigma_1d, cfg.min_match_radius_arcsec,
                                      cfg.max_match_radius_arcsec))
        px, py = fit.wcs.all_world2pix(ra[ref_good], dec[ref_good], 0, tolerance=1e-6, maxiter=30,
                                       quiet=True)
        with np.errstate(invalid="ignore"):
            inside = np.flatnonzero(search_box.contains(px, py))
        j_ref, j_src, _ = unique_nearest_pairs(tree, px[inside], py[inside], radius_arcsec / scale)
        if j_ref.size < cfg.min_matches:
            return _failed(f"only {j_ref.size} matches within {radius_arcsec:.2f} arcsec of the "
                           f"fitted WCS (need >= {cfg.min_matches})", initial)
        i_ref, i_src = ref_good[inside[j_ref]], src_good[j_src]

    order = _choose_order(i_src.size, cfg.sip_order, cfg.min_pairs_per_term)
    w = None if w_src is None else w_src[i_src]
    fit = fit_tan_sip_detailed(sx[i_src], sy[i_src], ra[i_ref], dec[i_ref], crpix, crval, order, w,
                               n_sigma=cfg.n_sigma_clip, n_clip_iter=cfg.n_clip_iter, bbox=bbox)
    sra, sdec = fit.wcs.all_pix2world(sx[i_src], sy[i_src], 0)
    sep = _angular_sep_arcsec(sra, sdec, ra[i_ref], dec[i_ref])
    matches = np.zeros(i_src.size, dtype=MATCH_DTYPE)
    matches["src_index"], matches["ref_index"] = i_src, i_ref
    matches["separation_arcsec"], matches["used"] = sep, fit.used
    stats = clipped_stats(sep, n_sigma=3.0, n_iter=3)
    ok = stats.mean <= cfg.max_mean_distance_arcsec
    reason = "" if ok else (f"mean match distance {stats.mean:.3f} arcsec exceeds "
                            f"max_mean_distance_arcsec={cfg.max_mean_distance_arcsec}")
    return AstrometryResult(
        wcs=fit.wcs, matches=matches, offset_mean_arcsec=float(stats.mean),
        offset_std_arcsec=float(stats.stdev), offset_median_arcsec=float(np.median(sep)),
        rms_arcsec=fit.rms_arcsec, success=bool(ok), reason=reason, sip_order=fit.sip_order,
        initial_match=initial)
