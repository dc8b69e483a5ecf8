"""Aperture corrections: fit ``apFlux / modelFlux`` over PSF stars, then apply it to every source.

Following meas_algorithms ``MeasureApCorrTask`` and meas_base ``ApplyApCorrTask``
(``reference/algorithms.md`` 6.1 g):

* the **reference** is the 12-pixel circular aperture (``apFlux_12_0``), Rubin's
  ``slot_CalibFlux``.  The corrected PSF (or Gaussian) fluxes are therefore on
  the same scale as the calibration flux: the flux inside 12 pixels, *not* the
  total.  The photometric zero point, fitted with the same 12-pixel fluxes
  against a reference catalogue, carries both to total flux.  (A 17-pixel
  reference would be closer to total, ~99.6% for a Moffat beta=3 PSF of FWHM
  4.5 px, but noisier and more exposed to neighbours.)
* the ratio ``r = apFlux / flux`` of each PSF star is fitted with a 2-D
  Chebyshev series on the image box (:class:`store.calib.ChebyshevField`),
  weighted by ``1 / sigma_r^2``, with ``n_iter`` rounds of clipping of points
  more than ``n_sigma`` robust standard deviations of the residuals away;
* the uncertainty field (the map entry ``<name>_instFluxErr``) is a constant:
  the standard error of the fitted field, ``rms * sqrt(n_terms / n_used)``.
* applying multiplies ``instFlux`` and ``instFluxErr`` by the correction
  (Rubin's naive error scaling; the correction's own error is common to all
  sources and reported separately in ``<prefix>_apCorrErr``).

The reference aperture still misses the PSF's far wings, and by an amount that
grows steeply with the seeing (beyond 17 pixels a Moffat beta = 3.5 PSF holds
0.2 % of its light at 1.1 arcsec FWHM, 1.2 % at 1.45 arcsec).  A zero point
fitted against total reference fluxes absorbs that loss, so it is wrong by the
same amount (measured on the demo survey: -0.005 mag median, -0.012 mag in the
worst seeing).  :func:`curve_of_growth_correction` measures the ratio of a
large aperture to the reference aperture on the brightest PSF stars (the
curve-of-growth or "aperture to total" correction of DAOGROW-style photometry)
and :func:`scale_aperture_corrections` folds it into the map, so corrected
fluxes and the zero point are total.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from numpy.polynomial import chebyshev

from store.calib import ApCorrMap, ChebyshevField

__all__ = [
    "APCORR_FIELDS",
    "ApCorrFit",
    "CurveOfGrowth",
    "apply_aperture_correction",
    "curve_of_growth_correction",
    "fit_aperture_correction",
    "measure_aperture_corrections",
    "scale_aperture_corrections",
]

#: Table column prefix -> ApCorrMap field stem (Rubin algorithm names).
APCORR_FIELDS = {"psfFlux": "base_PsfFlux", "gaussianFlux": "base_GaussianFlux"}


@dataclass(frozen=True)
class ApCorrFit:
    """Result of :func:`fit_aperture_correction`.

    Attributes
    ----------
    value : store.calib.ChebyshevField
        The correction ``apFlux / flux`` as a function of position.
    error : store.calib.ChebyshevField
        Its 1-sigma uncertainty (constant field).
    used : numpy.ndarray
        ``(n,)`` stars kept by the clipping.
    rms : float
        Robust scatter of the ratios about the fit.
    """

    value: ChebyshevField
    error: ChebyshevField
    used: np.ndarray
    rms: float


def _design(xn, yn, order):
    """Chebyshev products T_i(x) T_j(y) with i + j <= order (triangular, as Rubin)."""
    pairs = [(i, j) for j in range(order + 1) for i in range(order + 1) if i + j <= order]
    tx = chebyshev.chebvander(xn, order)
    ty = chebyshev.chebvander(yn, order)
    return np.stack([tx[:, i] * ty[:, j] for i, j in pairs], axis=1), pairs


def fit_aperture_correction(x, y, flux, flux_err, ap_flux, ap_flux_err, bbox, *,
                            order: int = 1, n_sigma: float = 3.0, n_iter: int = 4) -> ApCorrFit:
    """Fit the aperture correction ``ap_flux / flux`` over the image.

    Parameters
    ----------
    x, y : array_like
        ``(n,)`` star positions, pixels.
    flux, flux_err : array_like
        ``(n,)`` fluxes to be corrected (e.g. PSF fluxes) and their errors, counts.
    ap_flux, ap_flux_err : array_like
        ``(n,)`` reference aperture fluxes and errors, counts.
    bbox : tuple of float
        ``(xmin, ymin, xmax, ymax)`` of the field.
    order : int
        Total order of the Chebyshev series (lowered if there are too few stars).
    n_sigma : float
        Clipping threshold in robust standard deviations of the residuals.
    n_iter : int
        Clipping iterations.

    Returns
    -------
    ApCorrFit

    Raises
    ------
    ValueError
        If no star has finite, positive fluxes.
    """
    x, y, flux, flux_err, ap_flux, ap_flux_err = (
        np.asarray(v, dtype=float) for v in (x, y, flux, flux_err, ap_flux, ap_flux_err))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = ap_flux / flux
        err = np.abs(ratio) * np.hypot(ap_flux_err / ap_flux, flux_err / flux)
    ok = np.isfinite(ratio) & np.isfinite(err) & (err > 0) & (flux > 0) & (ap_flux > 0)
    if not ok.any():
        raise ValueError("no star with finite positive fluxes to fit an aperture correction")
    bbox = tuple(float(v) for v in bbox)
    proto = ChebyshevField.constant(0.0, bbox)
    xn, yn = proto.normalise(x, y)
    while order > 0 and ok.sum() < 3 * (order + 1) * (order + 2) // 2:
        order -= 1
    design, pairs = _design(xn, yn, order)
    used = ok.copy()
    coef = np.zeros(len(pairs))
    rms = np.nan
    for _ in range(max(n_iter, 1) + 1):
        w = 1.0 / err[used]
        coef, *_ = np.linalg.lstsq(design[used] * w[:, None], ratio[used] * w, rcond=None)
        resid = ratio - design @ coef
        rms = 1.4826 * np.median(np.abs(resid[used] - np.median(resid[used])))
        keep = ok & (np.abs(resid) <= n_sigma * max(rms, 1e-12))
        if keep.sum() < len(pairs) or np.array_equal(keep, used):
            break
        used = keep
    coefficients = np.zeros((order + 1, order + 1))
    for (i, j), c in zip(pairs, coef, strict=True):
        coefficients[j, i] = c
    error = rms * np.sqrt(len(pairs) / max(used.sum(), 1))
    return ApCorrFit(ChebyshevField(coefficients, bbox), ChebyshevField.constant(error, bbox),
                     used, float(rms))


def measure_aperture_corrections(table, stars, bbox, *, reference: str = "apFlux_12_0",
                                 fields=None, order: int = 1, n_sigma: float = 3.0,
                                 n_iter: int = 4) -> ApCorrMap:
    """Build an :class:`~store.calib.ApCorrMap` from PSF stars of a measurement table.

    Parameters
    ----------
    table : pyarrow.Table
        Output of :func:`~processing.algorithms.measure.measure_sources`.
    stars : array_like
        ``(n,)`` boolean selection of the stars to use (e.g. ``calib_psf_used``).
    bbox : tuple of float
        ``(xmin, ymin, xmax, ymax)`` of the image.
    reference : str
        Column stem of the reference aperture flux.
    fields : dict of str to str, optional
        Column prefix -> map stem; default :data:`APCORR_FIELDS`.
    order, n_sigma, n_iter
        As :func:`fit_aperture_correction`.

    Returns
    -------
    store.calib.ApCorrMap
        Entries ``<stem>_instFlux`` and ``<stem>_instFluxErr``.
    """
    stars = np.asarray(stars, dtype=bool)
    col = {name: table.column(name).to_numpy(zero_copy_only=False)[stars]
           for name in table.column_names}
    out = ApCorrMap()
    for prefix, stem in (fields or APCORR_FIELDS).items():
        if f"{prefix}_instFlux" not in col:
            continue
        fit = fit_aperture_correction(
            col["x"], col["y"], col[f"{prefix}_instFlux"], col[f"{prefix}_instFluxErr"],
            col[f"{reference}_instFlux"], col[f"{reference}_instFluxErr"], bbox,
            order=order, n_sigma=n_sigma, n_iter=n_iter)
        out[f"{stem}_instFlux"] = fit.value
        out[f"{stem}_instFluxErr"] = fit.error
    return out


@dataclass(frozen=True)
class CurveOfGrowth:
    """Result of :func:`curve_of_growth_correction`.

    Attributes
    ----------
    factor : float
        Large-aperture over reference-aperture flux (1.0 when not measured).
    error : float
        Its standard error (0.0 when not measured).
    n_stars : int
        Stars in the final weighted mean (0 when not measured).
    aperture : str or None
        Column stem of the large aperture used.
    """

    factor: float
    error: float
    n_stars: int
    aperture: str | None


def curve_of_growth_correction(table, stars, *, reference: str = "apFlux_17_0",
                               apertures: tuple[str, ...] = ("apFlux_50_0", "apFlux_35_0"),
                               max_error: float = 0.01, min_stars: int = 3,
                               n_sigma: float = 3.0) -> CurveOfGrowth:
    """Measure the flux beyond the reference aperture from large apertures of bright stars.

    For each large aperture in turn, the stars whose ratio ``large / reference``
    is known to better than ``max_error`` are combined by an inverse-variance
    weighted mean, clipped at ``n_sigma`` standard errors about the running
    mean (starting from the median: a neighbour inside the large aperture only
    ever adds light).  The first aperture with ``min_stars`` such stars wins.

    Parameters
    ----------
    table : pyarrow.Table
        Measurement table with ``<stem>_instFlux`` and ``<stem>_instFluxErr`` columns.
    stars : array_like
        ``(n,)`` boolean selection of isolated PSF stars.
    reference : str
        Column stem of the aperture the aperture corrections refer to.
    apertures : tuple of str
        Column stems of the large apertures, preferred first.
    max_error : float
        Largest accepted 1-sigma error of one star's ratio.
    min_stars : int
        Fewest stars for a measurement.
    n_sigma : float
        Clipping threshold, in units of each star's error.

    Returns
    -------
    CurveOfGrowth
        ``factor`` 1.0 with ``n_stars`` 0 when no aperture has enough stars.
    """
    stars = np.asarray(stars, dtype=bool)
    names = set(table.column_names)

    def col(name):
        return table.column(name).to_numpy(zero_copy_only=False).astype(float)[stars]

    if f"{reference}_instFlux" not in names or not stars.any():
        return CurveOfGrowth(1.0, 0.0, 0, None)
    ref = col(f"{reference}_instFlux")
    for stem in apertures:
        if f"{stem}_instFlux" not in names:
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = col(f"{stem}_instFlux") / ref
            err = col(f"{stem}_instFluxErr") / ref
        ok = np.isfinite(ratio) & np.isfinite(err) & (err > 0) & (err < max_error) & (ref > 0)
        if ok.sum() < min_stars:
            continue
        r, e = ratio[ok], err[ok]
        mean, keep = float(np.median(r)), np.ones(r.size, dtype=bool)
        for _ in range(5):
            keep = np.abs(r - mean) < n_sigma * e
            if keep.sum() < min_stars:
                break
            w = 1.0 / e[keep] ** 2
            mean = float(np.sum(w * r[keep]) / w.sum())
        if keep.sum() < min_stars:
            continue
        return CurveOfGrowth(mean, float(1.0 / np.sqrt(np.sum(1.0 / e[keep] ** 2))),
                             int(keep.sum()), stem)
    return CurveOfGrowth(1.0, 0.0, 0, None)


def scale_aperture_corrections(ap_corr_map: ApCorrMap, factor: float) -> ApCorrMap:
    """A copy of ``ap_corr_map`` whose ``*_instFlux`` corrections are multiplied by ``factor``.

    Parameters
    ----------
    ap_corr_map : store.calib.ApCorrMap
        Corrections by Rubin field name.
    factor : float
        Multiplier (e.g. :attr:`CurveOfGrowth.factor`), dimensionless.

    Returns
    -------
    store.calib.ApCorrMap
        The error fields are scaled too (the relative error is unchanged).
    """
    out = ApCorrMap()
    for name in ap_corr_map.names():
        f = ap_corr_map[name]
        out[name] = ChebyshevField(f.coefficients * factor, f.bbox)
    return out


def apply_aperture_correction(table: pa.Table, ap_corr_map: ApCorrMap, *,
                              fields=None) -> pa.Table:
    """Multiply the model fluxes of a table by their aperture corrections.

    For each column prefix (default ``psfFlux`` and ``gaussianFlux``) whose map
    entry exists: ``instFlux *= a`` and ``instFluxErr *= a`` with ``a`` the
    correction at ``(x, y)``; adds ``<prefix>_apCorr``, ``<prefix>_apCorrErr``
    and ``<prefix>_flag_apCorr`` (set, together with ``<prefix>_flag``, when the
    map lacks the entry or ``a`` is not finite and positive; the flux is then
    left uncorrected).

    Parameters
    ----------
    table : pyarrow.Table
        Measurement table with ``x``, ``y`` and the flux columns.
    ap_corr_map : store.calib.ApCorrMap
        Corrections by Rubin field name (``base_PsfFlux_instFlux``...).
    fields : dict of str to str, optional
        Column prefix -> map stem; default :data:`APCORR_FIELDS`.

    Returns
    -------
    pyarrow.Table
        A new table (field metadata kept).
    """
    x = table.column("x").to_numpy(zero_copy_only=False)
    y = table.column("y").to_numpy(zero_copy_only=False)
    for prefix, stem in (fields or APCORR_FIELDS).items():
        if f"{prefix}_instFlux" not in table.column_names:
            continue
        name = f"{stem}_instFlux"
        n = table.num_rows
        if name in ap_corr_map:
            corr = ap_corr_map[name].evaluate(x, y)
            err_name = f"{stem}_instFluxErr"
            corr_err = (ap_corr_map[err_name].evaluate(x, y) if err_name in ap_corr_map
                        else np.zeros(n))
        else:
            corr, corr_err = np.full(n, np.nan), np.full(n, np.nan)
        good = np.isfinite(corr) & (corr > 0)
        scale = np.where(good, corr, 1.0)
        updates = {
            f"{prefix}_instFlux": table.column(f"{prefix}_instFlux").to_numpy(
                zero_copy_only=False) * scale,
            f"{prefix}_instFluxErr": table.column(f"{prefix}_instFluxErr").to_numpy(
                zero_copy_only=False) * scale,
            f"{prefix}_apCorr": corr,
            f"{prefix}_apCorrErr": corr_err,
            f"{prefix}_flag_apCorr": ~good,
        }
        if f"{prefix}_flag" in table.column_names:
            updates[f"{prefix}_flag"] = (table.column(f"{prefix}_flag").to_numpy(
                zero_copy_only=False) | ~good)
        for col_name, values in updates.items():
            array = pa.array(values)
            if col_name in table.column_names:
                i = table.column_names.index(col_name)
                table = table.set_column(i, table.schema.field(i).with_type(array.type), array)
            else:
                table = table.append_column(col_name, array)
    return table
