"""Photometric zero point from matched reference stars (Rubin ``PhotoCalTask.getZeroPoint``).

Method: the semantics of algorithms.md 6.2, reproduced step by step because downstream numbers
(``zeroPoint`` in the visit summary, ``MAGZERO_*``) are compared with Rubin's.

* ``srcMag = -2.5 log10(instFlux)``, ``refMag`` = AB magnitude of the reference flux (nJy),
  ``dmag = refMag - srcMag`` (the AB magnitude of one instrumental count), ``magErr =
  (2.5 / ln 10) instFluxErr / instFlux`` (reference errors are not used, as in Rubin), optionally
  ``sqrt(magErr^2 + magErrFloor^2)``.  Pairs with non-finite or non-positive flux, flux error or
  reference flux are unusable (Rubin drops the NaN magnitudes these produce; we also drop zero
  errors, which would get infinite weight).
* ``dmag`` is sorted.  Iteration 0 takes a crude mode: a 20-bin histogram; if the most populated
  bins are contiguous, the centre is the midpoint of that modal range and sigma = (q3 - q1) / 2.3,
  where q1 / q3 are the first values of the bins where the histogram drops to half the peak
  height on either side (falling back to the 25 % / 75 % order statistics when they coincide);
  otherwise the centre is the median and sigma the order-statistic quartile range / 2.3.
  Later iterations: centre = median of the kept values (``use_median``), sigma = 0.741301 x their
  inter-quartile range (order statistics at ``int(0.25 n + 0.5)`` / ``int(0.75 n + 0.5)``).
  Keep ``|dmag - centre| < n_sigma * min(sigma, sigma_max)`` (over *all* values each time); stop
  when the kept count does not change, after at most ``n_iter`` iterations.
* Zero point = inverse-variance weighted mean of the kept ``dmag``, error ``1 / sqrt(sum 1/err^2)``.
* If a clipping pass keeps nothing, Rubin returns the current centre (on the first pass, a mean
  of all values) with all stars counted; we do the same and flag ``CLIP_REJECTED_ALL``.

Deviations, both in code paths Rubin's defaults never take or that are plainly unintended:
the first-pass fallback mean and the ``use_median=False`` centre are weighted by ``1/err^2``
(Rubin's code passes the errors themselves as weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from store.calib import AB_ZERO_NJY, PhotoCalib

__all__ = ["PhotoCalConfig", "ZeroPointResult", "fit_zero_point"]

#: Gaussian sigma per unit inter-quartile range.
_IQR_TO_SIGMA = 0.741301109252802
#: 2.5 / ln(10): magnitude error per unit fractional flux error.
_MAG_PER_FRAC = 2.5 / np.log(10.0)
_N_HIST = 20


@dataclass(frozen=True)
class PhotoCalConfig:
    """Settings of :func:`fit_zero_point` (Rubin ``PhotoCalConfig`` defaults).

    Attributes
    ----------
    n_sigma : float
        Clipping half-width in units of the (capped) sigma.
    sigma_max : float or None
        Cap on the sigma used for clipping, mag; None derives it from the first pass as Rubin does.
    n_iter : int
        Maximum clipping iterations.
    use_median : bool
        Centre later iterations on the median (else the weighted mean) of the kept values.
    mag_err_floor : float
        Added in quadrature to every magnitude error, mag.
    """

    n_sigma: float = 3.0
    sigma_max: float | None = 0.25
    n_iter: int = 20
    use_median: bool = True
    mag_err_floor: float = 0.0

    def __post_init__(self):
        if not self.n_sigma > 0:
            raise ValueError(f"n_sigma must be positive, got {self.n_sigma}")
        if self.sigma_max is not None and not self.sigma_max > 0:
            raise ValueError(f"sigma_max must be positive or None, got {self.sigma_max}")
        if self.n_iter < 1:
            raise ValueError(f"n_iter must be >= 1, got {self.n_iter}")
        if self.mag_err_floor < 0:
            raise ValueError(f"mag_err_floor must be >= 0, got {self.mag_err_floor}")


@dataclass(frozen=True)
class ZeroPointResult:
    """Outcome of :func:`fit_zero_point`; falsy when no zero point could be computed.

    Attributes
    ----------
    zero_point : float
        AB magnitude of one instrumental count, mag (NaN on failure).
    zero_point_err : float
        Its uncertainty, ``1/sqrt(sum 1/magErr^2)`` over the kept stars, mag (Rubin's returned
        ``sigma``, stored as ``MAGZERO_RMS``).
    n_used : int
        Stars kept by the clipping (``MAGZERO_NOBJ``).
    used : numpy.ndarray
        Bool mask over the input arrays: the stars that entered the final mean.
    sigma : float
        Robust width of the ``dmag`` distribution from the last pass, mag (before the
        ``sigma_max`` cap).
    photo_calib : store.calib.PhotoCalib or None
        ``PhotoCalib.from_zero_point(zero_point, zero_point_err)``; None on failure.
    dmag : numpy.ndarray
        ``refMag - srcMag`` of every input pair, mag (NaN where unusable).
    n_iter : int
        Clipping iterations performed.
    success : bool
        Whether a zero point was computed.
    reason : str
        One line saying why not ("" on success).
    flags : tuple of str
        ``CLIP_REJECTED_ALL`` when a clipping pass kept nothing (see module notes).
    """

    zero_point: float
    zero_point_err: float
    n_used: int
    used: np.ndarray
    sigma: float
    photo_calib: PhotoCalib | None
    dmag: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_iter: int = 0
    success: bool = True
    reason: str = ""
    flags: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.success)

    def __repr__(self) -> str:
        if not self.success:
            return f"ZeroPointResult(success=False, reason={self.reason!r})"
        return (f"ZeroPointResult(zero_point={self.zero_point:.4f} +- {self.zero_point_err:.4f} mag, "
                f"n_used={self.n_used}, sigma={self.sigma:.4f}, flags={self.flags})")


def _first_pass(dmag: np.ndarray, sigma_max: float | None):
    """Crude-mode start (iteration 0): returns (centre, sigma, sigma_max)."""
    npt = dmag.size
    hist, edges = np.histogram(dmag, _N_HIST)
    imode = np.flatnonzero(hist == hist.max())
    if imode[-1] - imode[0] + 1 == imode.size:  # modal bins contiguous
        center = 0.5 * (edges[imode[0]] + edges[imode[-1] + 1])
        peak = hist[imode].sum() / imode.size
        j = imode[0]
        while j >= 0 and hist[j] > 0.5 * peak:  # walk down to half maximum (<= 20 bins)
            j -= 1
        j = max(j, 0)
        q1 = dmag[hist[:j].sum()]
        j = imode[-1]
        while j < _N_HIST and hist[j] > 0.5 * peak:
            j += 1
        j = min(j, _N_HIST - 1)
        q3 = dmag[min(hist[:j].sum(), npt - 1)]
        if q1 == q3:
            q1, q3 = dmag[int(0.25 * npt)], dmag[int(0.75 * npt)]
        sig = (q3 - q1) / 2.3  # FWHM-based sigma (2.355 for a Gaussian)
        if sigma_max is None:
            sigma_max = 2.0 * sig
    else:
        if sigma_max is None:
            sigma_max = dmag[-1] - dmag[0]
        center = np.median(dmag)
        sig = (dmag[int(0.75 * npt)] - dmag[int(0.25 * npt)]) / 2.3
    return float(center), float(sig), float(sigma_max)


def _clip_iterations(dmag: np.ndarray, err: np.ndarray, cfg: PhotoCalConfig):
    """Rubin's clipping loop on sorted ``dmag``; returns (good, centre, sigma, n_iter, all_rejected)."""
    sigma_max = cfg.sigma_max
    weights = 1.0 / err**2
    npt = ngood = dmag.size
    good = np.ones(dmag.size, dtype=bool)
    center = sig = float("nan")
    n_done = 0
    for i in range(cfg.n_iter):
        n_done = i + 1
        if i == 0:
            center, sig, sigma_max = _first_pass(dmag, sigma_max)
        else:
            npt = int(good.sum())
            kept = dmag[good]  # still sorted
            if cfg.use_median:
                center = float(np.median(kept))
            else:
                center = float(np.average(kept, weights=weights[good]))
            q3 = kept[min(int(0.75 * npt + 0.5), npt - 1)]
            q1 = kept[min(int(0.25 * npt + 0.5), npt - 1)]
            sig = float(_IQR_TO_SIGMA * (q3 - q1))
        good = np.abs(dmag - center) < cfg.n_sigma * min(sig, sigma_max)
        old, ngood = ngood, int(good.sum())
        if ngood == 0:
            if i == 0:  # everything in one bin, typically: fall back on the mean of all
                center = float(np.average(dmag, weights=weights))
            return np.ones(dmag.size, dtype=bool), center, sig, n_done, True
        if ngood == old:
            break
    return good, center, sig, n_done, False


def fit_zero_point(
    src_instflux: np.ndarray,
    src_instflux_err: np.ndarray,
    ref_flux_njy: np.ndarray,
    config: PhotoCalConfig | None = None,
) -> ZeroPointResult:
    """Zero point (AB mag of one count) from matched source / reference fluxes.

    Parameters
    ----------
    src_instflux : numpy.ndarray
        Instrumental fluxes of the matched sources (e.g. ADU, calib flux slot), shape (n,).
    src_instflux_err : numpy.ndarray
        Their 1-sigma errors, same unit, shape (n,).
    ref_flux_njy : numpy.ndarray
        Reference fluxes in the exposure's band, nJy, shape (n,).
    config : PhotoCalConfig, optional

    Returns
    -------
    ZeroPointResult
        ``success=False`` with a reason when no pair is usable.

    Examples
    --------
    >>> inst = np.array([1000.0, 2000.0, 4000.0, 8000.0])
    >>> ref = inst * 3631e9 * 10 ** (-0.4 * 31.0)      # zero point 31 mag
    >>> r = fit_zero_point(inst, inst / 100, ref)
    >>> round(r.zero_point, 6), r.n_used
    (31.0, 4)
    """
    cfg = config or PhotoCalConfig()
    flux = np.asarray(src_instflux, dtype=float).ravel()
    ferr = np.asarray(src_instflux_err, dtype=float).ravel()
    ref = np.asarray(ref_flux_njy, dtype=float).ravel()
    if not (flux.size == ferr.size == ref.size):
        raise ValueError(f"src_instflux, src_instflux_err, ref_flux_njy differ in length: "
                         f"{flux.size}, {ferr.size}, {ref.size}")
    n = flux.size
    with np.errstate(divide="ignore", invalid="ignore"):
        usable = (np.isfinite(flux) & (flux > 0) & np.isfinite(ferr) & (ferr > 0)
                  & np.isfinite(ref) & (ref > 0))
        dmag_all = np.where(usable, -2.5 * np.log10(ref / AB_ZERO_NJY) + 2.5 * np.log10(flux), np.nan)
        err_all = np.where(usable, _MAG_PER_FRAC * ferr / flux, np.nan)
    if cfg.mag_err_floor > 0:
        err_all = np.hypot(err_all, cfg.mag_err_floor)
    nan = float("nan")
    if not usable.any():
        return ZeroPointResult(nan, nan, 0, np.zeros(n, dtype=bool), nan, None, dmag_all, 0, False,
                               f"no usable calibration stars among {n} (need finite positive "
                               f"instFlux, instFluxErr and reference flux)")
    idx = np.flatnonzero(usable)
    order = idx[np.argsort(dmag_all[idx], kind="stable")]
    dmag, err = dmag_all[order], err_all[order]
    good, center, sig, n_iter, all_rejected = _clip_iterations(dmag, err, cfg)
    used = np.zeros(n, dtype=bool)
    used[order[good]] = True
    if all_rejected:
        zp = center
        zp_err = sig  # what Rubin reports in this case
    else:
        w = 1.0 / err[good] ** 2
        zp = float(np.sum(w * dmag[good]) / np.sum(w))
        zp_err = float(1.0 / np.sqrt(np.sum(w)))
    photo_calib = PhotoCalib.from_zero_point(zp, zp_err if np.isfinite(zp_err) else 0.0)
    return ZeroPointResult(
        zero_point=float(zp), zero_point_err=float(zp_err), n_used=int(used.sum()), used=used,
        sigma=float(sig), photo_calib=photo_calib, dmag=dmag_all, n_iter=n_iter, success=True,
        flags=("CLIP_REJECTED_ALL",) if all_rejected else (),
    )
