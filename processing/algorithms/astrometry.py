"""Astrometric calibration: the match-fit-rematch loop of AstrometryTask, with model selection.

``solve_astrometry`` mirrors meas_astrom's ``AstrometryTask`` (algorithms.md 6.2 step 1) with our
own matcher (:mod:`processing.algorithms.matching`): match with the guessed WCS, fit, re-match all
references through the fitted WCS with a radius of 5 sigma of the fit residuals, refit
(``n_rounds`` times).  ``astromOffsetMean/Std`` (algorithms.md 1.5) are the 3-sigma, 3-iteration
clipped mean and standard deviation (A.1) of the on-sky separations of the final matches, as
meas_astrom computes them; the fit fails its quality check when the mean exceeds
``max_mean_distance_arcsec`` (0.5 arcsec, Rubin's ``maxMeanDistanceArcsec``).

Which WCS model is fitted (:mod:`processing.algorithms.wcs_fit` does the fits):

* **header WCS with SIP distortion** (a camera model, as our ``post_isr_image`` headers carry):
  the distortion is kept and only an affine correction (CRVAL shift and CD: 6 parameters) is
  fitted, as Rubin's CalibrateImageTask does with ``FitAffineWcsTask``.  With 10-25 matches a
  from-scratch cubic TAN-SIP fit is unconstrained away from the stars (measured on the demo
  survey: up to 137 mas off the true WCS at a detector corner); the affine fit is exact there
  when the camera model is.  A SIP correction of order 2..``sip_order`` on top is tried only with
  ``refit_min_pairs_per_term`` matches per parameter, and kept only if it lowers the held-out
  (leave-one-out) mean square residual by ``min_held_out_gain``;
* **plain TAN header**: TAN-SIP polynomials of order 1..``sip_order`` are fitted from scratch
  with CRPIX at the detector centre, the order limited by ``min_pairs_per_term`` matches per
  parameter and chosen by the same held-out test (the lowest order that no higher one beats).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from processing.algorithms.matching import (
    MatchConfig,
    MatchResult,
    match_to_reference,
    unique_nearest_pairs,
)
from processing.algorithms.stats import clipped_stats
from processing.algorithms.wcs_fit import (
    TanSipFit,
    _angular_sep_arcsec,
    _terms,
    camera_distortion,
    fit_camera_wcs,
    fit_tan_sip,
    fit_tan_sip_detailed,
)
from store.geom import Box

__all__ = [
    "MATCH_DTYPE",
    "AstrometryConfig",
    "AstrometryResult",
    "TanSipFit",
    "fit_camera_wcs",
    "fit_tan_sip",
    "fit_tan_sip_detailed",
    "solve_astrometry",
]

_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class AstrometryConfig:
    """Settings of :func:`solve_astrometry`.

    Attributes
    ----------
    match : MatchConfig
        Settings of the initial pattern match.
    sip_order : int
        Highest order of a fitted polynomial: of the from-scratch TAN-SIP fit (plain TAN header)
        or of the SIP correction tried on top of a camera model.
    min_pairs_per_term : float
        Matches required per polynomial term (per axis) for a from-scratch fit of a given order.
    use_camera_model : bool
        Keep the header WCS's SIP distortion and fit an affine correction (True), or always fit
        TAN-SIP from scratch (False).
    refit_min_pairs_per_term : float
        Matches required per free parameter (per axis) before a SIP correction on top of the
        camera model is tried at all (an order-3 correction has 10 parameters per axis).
    min_held_out_gain : float
        Fraction by which a richer model must lower the held-out (leave-one-out) mean square
        residual, over the pairs both fits keep, to be chosen over a simpler one.
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
    error_floor_arcsec : float
        Per-axis error added in quadrature to the centroid and reference errors when
        :func:`solve_astrometry` weights pairs by them, arcsec.
    max_mean_distance_arcsec : float
        Largest acceptable ``astromOffsetMean`` (Rubin ``maxMeanDistanceArcsec``).
    """

    match: MatchConfig = field(default_factory=MatchConfig)
    sip_order: int = 3
    min_pairs_per_term: float = 2.0
    use_camera_model: bool = True
    refit_min_pairs_per_term: float = 5.0
    min_held_out_gain: float = 0.1
    n_rounds: int = 3
    n_sigma_clip: float = 3.0
    n_clip_iter: int = 3
    match_radius_sigma: float = 5.0
    min_match_radius_arcsec: float = 0.2
    max_match_radius_arcsec: float = 2.0
    min_matches: int = 6
    error_floor_arcsec: float = 0.002
    max_mean_distance_arcsec: float = 0.5

    def __post_init__(self):
        if self.sip_order not in (1, 2, 3, 4, 5):
            raise ValueError(f"sip_order must be 1..5, got {self.sip_order}")
        if self.n_rounds < 1:
            raise ValueError(f"n_rounds must be >= 1, got {self.n_rounds}")
        if not 0 < self.min_match_radius_arcsec <= self.max_match_radius_arcsec:
            raise ValueError(f"need 0 < min_match_radius_arcsec <= max_match_radius_arcsec, got "
                             f"{self.min_match_radius_arcsec}, {self.max_match_radius_arcsec}")
        if not 0 <= self.min_held_out_gain < 1:
            raise ValueError(f"min_held_out_gain must be in [0, 1), got {self.min_held_out_gain}")


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
        Order of the SIP polynomials of ``wcs`` (1 = plain TAN; 0 when no fit).
    initial_match : MatchResult or None
        The pattern-match result (offset and rotation of the guess).
    model : str
        The model fitted: ``"affine"`` (header distortion kept, CRVAL and CD fitted),
        ``"affine+sip<k>"`` (plus an order-k SIP correction), ``"tan-sip"`` (TAN-SIP of order
        ``sip_order`` from scratch); "" when no fit.
    held_out_rms_arcsec : float
        RMS radial leave-one-out residual of the pairs used by the final fit, arcsec: what the
        WCS does at a star it did not see.
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
    model: str = ""
    held_out_rms_arcsec: float = float("nan")

    @property
    def n_matches(self) -> int:
        """Number of final matches."""
        return int(self.matches.size)

    def __bool__(self) -> bool:
        return bool(self.success)

    def __repr__(self) -> str:
        state = "success" if self.success else f"failed: {self.reason}"
        return (f"AstrometryResult({state}, model={self.model!r}, n_matches={self.n_matches}, "
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


def _candidate_fits(x, y, ra, dec, w, wcs_guess: WCS, crpix, crval, bbox: Box,
                    cfg: AstrometryConfig, camera: bool):
    """Fits of every model the number of pairs allows, simplest first (a generator)."""
    kw = dict(n_sigma=cfg.n_sigma_clip, n_clip_iter=cfg.n_clip_iter, bbox=bbox)
    n = int(np.sum(np.isfinite(x) & np.isfinite(y)))
    if camera:
        yield fit_camera_wcs(x, y, ra, dec, wcs_guess, 1, w, **kw)
        for k in range(2, cfg.sip_order + 1):
            if n < cfg.refit_min_pairs_per_term * (3 + len(_terms(k, 2))):
                break
            yield fit_camera_wcs(x, y, ra, dec, wcs_guess, k, w, **kw)
    else:
        for k in range(1, _choose_order(n, cfg.sip_order, cfg.min_pairs_per_term) + 1):
            yield fit_tan_sip_detailed(x, y, ra, dec, crpix, crval, k, w, **kw)


def _select_fit(candidates, w, gain: float) -> TanSipFit:
    """The simplest fit that no richer one beats by ``gain`` in held-out mean square.

    Each richer candidate is compared with the current choice over the pairs both keep, so a
    pair one of them clipped as an outlier does not decide between them.
    """
    best = None
    for fit in candidates:
        if best is None:
            best = fit
            continue
        common = best.used & fit.used
        if common.sum() < fit.n_params + 2:
            continue
        if fit.held_out_mean_square(common, w) < (1.0 - gain) * best.held_out_mean_square(common, w):
            best = fit
    return best


def _error_variances(centroid_err_pix, ref_err_arcsec, n_src: int, n_ref: int, wcs: WCS,
                     bbox: Box):
    """Per-source and per-reference variances (arcsec^2), or None where no errors were given."""
    out = []
    for name, err, n in (("centroid_err_pix", centroid_err_pix, n_src),
                         ("ref_err_arcsec", ref_err_arcsec, n_ref)):
        if err is None:
            out.append(None)
            continue
        e = np.asarray(err, dtype=float).ravel()
        if e.size != n:
            raise ValueError(f"{name} has length {e.size}, expected {n}")
        ok = np.isfinite(e) & (e >= 0)
        worst = float(e[ok].max()) if ok.any() else 0.0   # unknown: as bad as the worst known
        out.append(np.where(ok, e, worst) ** 2)
    if out[0] is not None:
        c = np.array([bbox.center, (bbox.center[0] + 1.0, bbox.center[1]),
                      (bbox.center[0], bbox.center[1] + 1.0)])
        r, d = wcs.all_pix2world(c[:, 0], c[:, 1], 0)
        scale = np.sqrt(float(np.mean(_angular_sep_arcsec(r[0], d[0], r[1:], d[1:]) ** 2)))
        out[0] = out[0] * scale**2
    return out[0], out[1]


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
    centroid_err_pix: np.ndarray | None = None,
    ref_err_arcsec: np.ndarray | None = None,
) -> AstrometryResult:
    """Match sources to a reference catalogue and fit a WCS (AstrometryTask-like).

    With a TAN-SIP ``wcs_guess`` (a camera model) its distortion is kept and an affine
    correction fitted (see the module docstring for when a SIP correction is added); with a
    plain TAN guess a TAN-SIP WCS is fitted from scratch.

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
        Initial WCS, e.g. the header WCS from the camera and pointing model.
    bbox : store.geom.Box
        Detector box in parent pixels; CRPIX of a from-scratch fit is put at its centre.
    config : AstrometryConfig, optional
    weights : numpy.ndarray, optional
        Per-source relative weights (inverse variances), shape (n_src,).
    centroid_err_pix : numpy.ndarray, optional
        Per-axis 1-sigma centroid errors, pixels, shape (n_src,).
    ref_err_arcsec : numpy.ndarray, optional
        Per-axis 1-sigma reference position errors, arcsec, shape (n_ref,).
        With either error array (not with ``weights``), each pair is weighted by
        ``1 / ((centroid_err * pixel scale)^2 + ref_err^2 + error_floor_arcsec^2)``; a missing
        array counts as 0, a non-finite error as the largest finite one.  Centroid errors
        span 0.002-0.1 pixel between S/N 1500 and 30 (demo survey), so weighting matters
        most with few stars.

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
    var_src, var_ref = _error_variances(centroid_err_pix, ref_err_arcsec, sx.size, ra.size,
                                        wcs_guess, bbox)
    if w_src is not None and (var_src is not None or var_ref is not None):
        raise ValueError("give weights or centroid_err_pix/ref_err_arcsec, not both")
    errors = var_src is not None or var_ref is not None
    initial = match_to_reference(sx, sy, src_flux, ra, dec, ref_mag, wcs_guess, cfg.match, bbox=bbox)
    if not initial:
        return _failed(f"matching failed: {initial.reason}", initial)

    camera = cfg.use_camera_model and camera_distortion(wcs_guess) is not None
    crpix = bbox.center
    start = wcs_guess.all_pix2world(np.array([crpix], dtype=float), 0)[0]
    crval = (float(start[0]), float(start[1]))
    i_src, i_ref = initial.src_index, initial.ref_index
    src_good = np.flatnonzero(np.isfinite(sx) & np.isfinite(sy))
    tree = cKDTree(np.column_stack([sx[src_good], sy[src_good]]))
    ref_good = np.flatnonzero(np.isfinite(ra) & np.isfinite(dec))
    search_box = bbox.grow(int(np.ceil(cfg.match.max_match_radius_pix)) + 2)

    def fit_pairs(i_src, i_ref, crval) -> TanSipFit:
        w = None if w_src is None else w_src[i_src]
        if errors:
            w = 1.0 / (cfg.error_floor_arcsec**2 + (0.0 if var_src is None else var_src[i_src])
                       + (0.0 if var_ref is None else var_ref[i_ref]))
        fits = _candidate_fits(sx[i_src], sy[i_src], ra[i_ref], dec[i_ref], w, wcs_guess, crpix,
                               crval, bbox, cfg, camera)
        return _select_fit(fits, w, cfg.min_held_out_gain)

    for _ in range(cfg.n_rounds):
        try:
            fit = fit_pairs(i_src, i_ref, crval)
        except ValueError as err:
            return _failed(f"WCS fit failed: {err}", initial)
        if not camera:
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

    try:
        fit = fit_pairs(i_src, i_ref, crval)
    except ValueError as err:
        return _failed(f"WCS fit failed: {err}", initial)
    sra, sdec = fit.wcs.all_pix2world(sx[i_src], sy[i_src], 0)
    sep = _angular_sep_arcsec(sra, sdec, ra[i_ref], dec[i_ref])
    matches = np.zeros(i_src.size, dtype=MATCH_DTYPE)
    matches["src_index"], matches["ref_index"] = i_src, i_ref
    matches["separation_arcsec"], matches["used"] = sep, fit.used
    stats = clipped_stats(sep, n_sigma=3.0, n_iter=3)
    ok = stats.mean <= cfg.max_mean_distance_arcsec
    reason = "" if ok else (f"mean match distance {stats.mean:.3f} arcsec exceeds "
                            f"max_mean_distance_arcsec={cfg.max_mean_distance_arcsec}")
    held = np.sum(fit.held_out_arcsec[fit.used] ** 2, axis=1)
    return AstrometryResult(
        wcs=fit.wcs, matches=matches, offset_mean_arcsec=float(stats.mean),
        offset_std_arcsec=float(stats.stdev), offset_median_arcsec=float(np.median(sep)),
        rms_arcsec=fit.rms_arcsec, success=bool(ok), reason=reason, sip_order=fit.sip_order,
        initial_match=initial, model=fit.model,
        held_out_rms_arcsec=float(np.sqrt(np.nanmean(held))) if held.size else float("nan"))
