"""Figures 1-3: calibrate, the visit summaries and the visit-image photometry, per detector-visit."""

from __future__ import annotations

import numpy as np

from .core import (
    FWHM_PER_SIGMA,
    figure,
    isolated,
    match_nearest,
    null_figure,
    offsets_mas,
    rel_moment_errors,
    robust_sigma,
    snr_limit_magnitude,
    spread,
)

__all__ = ["visit_figures"]

#: Bright-star selection: S/N (true flux over the measured error) above this.
MIN_SNR = 100.0
#: Match radius between measured and true positions (true WCS), pixels.
MATCH_RADIUS = 1.5


#: Sources with any of these set are left out of the bright-star samples.
_FOOTPRINT_FLAGS = ("pixelFlags_saturated", "pixelFlags_bad", "pixelFlags_interpolated",
                    "pixelFlags_cr", "pixelFlags_suspect", "sky_source")


def _col(table, name):
    return table.column(name).to_numpy(zero_copy_only=False)


def _clean(table) -> np.ndarray:
    """Deblended, unflagged, unsaturated, non-sky sources (the pipeline's own flag set)."""
    from processing.tasks.single_frame import usable_sources

    ok = usable_sources(table)
    for name in _FOOTPRINT_FLAGS:
        if name in table.column_names:
            ok &= ~_col(table, name).astype(bool)
    return ok


def _matched_stars(table, truth, idx, tx, ty, band):
    """Rows of ``table`` matched to true objects; returns (rows, truth indices, is_star)."""
    i_src, i_tr = match_nearest(_col(table, "x"), _col(table, "y"), tx, ty, MATCH_RADIUS)
    return i_src, idx[i_tr], truth.is_star[idx[i_tr]]


def _bright_isolated(table, truth, idx, tx, ty, band):
    """Clean, isolated true stars with S/N > MIN_SNR: (source rows, truth indices)."""
    rows, obj, star = _matched_stars(table, truth, idx, tx, ty, band)
    clean = _clean(table)[rows]
    flux = truth.flux(band)[obj]
    snr = flux / _col(table, "psfFluxErr")[rows]
    keep = star & clean & (snr > MIN_SNR)
    rows, obj = rows[keep], obj[keep]
    iso = isolated(truth.objects["ra"], truth.objects["dec"], truth.flux(band),
                   truth.hlr, obj)
    return rows[iso], obj[iso]


def _wcs_offsets(wcs, truth, key, width, height, n: int = 9) -> tuple[float, float]:
    """Largest and median distance (mas) between the fitted and the true WCS on a pixel grid."""
    g = np.linspace(0, 1, n)
    x, y = (a.ravel() for a in np.meshgrid(g * (width - 1), g * (height - 1)))
    ra, dec = wcs.all_pix2world(x, y, 0)
    ra_t, dec_t = truth.wcs(*key).all_pix2world(x, y, 0)
    dist = np.hypot(*offsets_mas(ra, dec, ra_t, dec_t))
    return float(dist.max()), float(np.median(dist))


def _calibrate_unit(src, stars, psf, summary_zp, truth, key, band, idx, tx, ty) -> dict:
    from processing.algorithms.moments import psf_moments

    out: dict = {"psf_degree": getattr(psf, "degree", None)}
    row = truth.visit_detector[key]
    rows, obj = _bright_isolated(src, truth, idx, tx, ty, band)
    tflux = truth.flux(band)[obj]
    ratio = _col(src, "psfFlux")[rows] / tflux
    ratio_inst = _col(src, "psfFlux_instFlux")[rows] * row["calibration_mean"] / tflux
    pull = (_col(src, "psfFlux")[rows] - tflux) / _col(src, "psfFluxErr")[rows]
    east, north = offsets_mas(_col(src, "coord_ra")[rows], _col(src, "coord_dec")[rows],
                              truth.objects["ra"][obj], truth.objects["dec"][obj])
    out["n_stars"] = rows.size
    if rows.size:
        out["ratio"] = float(np.median(ratio))
        out["ratio_inst"] = float(np.median(ratio_inst))
        out["pull"] = robust_sigma(pull) if rows.size >= 5 else np.nan
        out["astrom_rms"] = float(np.sqrt(np.mean(east ** 2 + north ** 2)))
        out["astrom_robust"] = float(np.hypot(robust_sigma(east), robust_sigma(north)))
        out["astrom_mean"] = float(np.hypot(east.mean(), north.mean()))
    field = truth.psf_field(*key)
    if psf is not None and field is not None:
        reserved = (_col(stars, "calib_psf_reserved").astype(bool) if stars is not None
                    else np.zeros(0, bool))
        x = _col(stars, "slot_Centroid_x")[reserved] if reserved.size else np.zeros(0)
        y = _col(stars, "slot_Centroid_y")[reserved] if reserved.size else np.zeros(0)
        if x.size:
            model = np.column_stack(psf_moments(psf, x, y))
            out["psf_reserved"] = np.abs(rel_moment_errors(model, field(x, y)[:, :3])).max(0)
            out["n_reserved"] = x.size
        g = truth.psf_grid(*key)
        gx, gy = g["x"].to_numpy(), g["y"].to_numpy()
        model = np.column_stack(psf_moments(psf, gx, gy))
        out["psf_grid"] = np.abs(rel_moment_errors(model, g[["ixx", "iyy", "ixy"]].to_numpy())
                                 ).max(0)
        out["n_grid"] = gx.size
        out["grid_fit_residual"] = float(field.max_residual[:3].max())
    out["zp"] = summary_zp - row["zero_point"]
    return out


def _source_unit(source, truth, key, band, idx, tx, ty) -> dict:
    out: dict = {}
    rows, obj = _bright_isolated(source, truth, idx, tx, ty, band)
    out["n_stars"] = rows.size
    if rows.size:
        out["ratio"] = float(np.median(_col(source, "psfFlux")[rows] / truth.flux(band)[obj]))
    # S/N of every clean matched star against its true magnitude, for the depth.
    m_rows, m_obj, star = _matched_stars(source, truth, idx, tx, ty, band)
    keep = star & _clean(source)[m_rows]
    m_rows, m_obj = m_rows[keep], m_obj[keep]
    snr = _col(source, "psfFlux")[m_rows] / _col(source, "psfFluxErr")[m_rows]
    snr_true = truth.flux(band)[m_obj] / _col(source, "psfFluxErr")[m_rows]
    mag = truth.mag(band)[m_obj]
    out["maglim"], out["maglim_slope"], out["n_maglim"] = snr_limit_magnitude(
        mag, snr_true, snr_min=3.0, snr_max=20.0)
    out["maglim_measured_snr"], _, _ = snr_limit_magnitude(mag, snr, snr_min=5.0, snr_max=50.0)
    sky = _col(source, "sky_source").astype(bool)
    out["sky_psf"] = _col(source, "psfFlux")[sky]
    out["sky_psf_err"] = _col(source, "psfFluxErr")[sky]
    out["sky_ap"] = _col(source, "ap09Flux")[sky] if "ap09Flux" in source.column_names else None
    return out


def _ccd_visit(repo, collection):
    """CcdVisit rows keyed by (visit, detector), when the SQL table is this collection's."""
    try:
        if repo.default_collection not in (None, collection):
            return None, f"the SQL tables follow {repo.default_collection!r}"
        t = repo.sql("SELECT visitId, detector, seeing, zeroPoint, skyBg, magLim FROM CcdVisit")
    except Exception as err:  # no SQL table: fall back to the visit summaries
        return None, f"CcdVisit unavailable ({str(err).splitlines()[0]})"
    return {(int(r["visitId"]), int(r["detector"])): r for r in t.to_pylist()}, None


def visit_figures(repo, collection: str, truth) -> dict:
    """Figures 1 (calibrate), 2 (visit summary) and 3 (visit_image photometry)."""
    from processing.visit_summary import VisitSummaryCatalog

    cols_src = ["x", "y", "coord_ra", "coord_dec", "psfFlux", "psfFluxErr", "psfFlux_instFlux",
                "psfFlux_instFluxErr", "deblend_nChild", *_FOOTPRINT_FLAGS, "pixelFlags_edge",
                "pixelFlags_saturatedCenter", "pixelFlags_interpolatedCenter",
                "pixelFlags_crCenter", "pixelFlags_nodata", "centroid_flag", "psfFlux_flag"]
    ccd, ccd_reason = _ccd_visit(repo, collection)
    summaries: dict = {}
    cal, fin = {}, {}
    for ref in repo.query_datasets("src", collections=collection):
        v, d = int(ref.data_id["visit"]), int(ref.data_id["detector"])
        key = (v, d)
        if key not in truth.visit_detector:
            continue
        band = truth.visit_detector[key]["band"]
        for name in ("preliminary_visit_summary", "visit_summary"):
            if (name, v) not in summaries:
                r = repo.find_dataset(name, {"instrument": truth.instrument, "visit": v},
                                      collections=collection)
                summaries[(name, v)] = (VisitSummaryCatalog.from_table(repo.get(r))
                                        if r is not None else None)
        pre, final = summaries[("preliminary_visit_summary", v)], summaries[("visit_summary", v)]
        if not any(c is not None and d in c for c in (pre, final)):
            continue  # no detector geometry
        geo = (pre if pre is not None and d in pre else final).row(d)
        idx, tx, ty = truth.on_detector(v, d, int(geo["width"]), int(geo["height"]))
        src = repo.get(ref, parameters={"columns": cols_src})
        sref = repo.find_dataset("single_visit_star", ref.data_id, collections=collection)
        stars = repo.get(sref) if sref is not None else None
        pvi = repo.find_dataset("preliminary_visit_image", ref.data_id, collections=collection)
        psf = (repo.get(pvi, parameters={"components": True}).psf if pvi is not None
               else (pre.psf(d) if pre is not None else None))
        zp = pre.row(d)["zeroPoint"] if pre is not None else np.nan
        cal[key] = _calibrate_unit(src, stars, psf, zp, truth, key, band, idx, tx, ty)
        if pre is not None:
            cal[key]["wcs_max"], cal[key]["wcs_median"] = _wcs_offsets(
                pre.wcs(d), truth, key, int(geo["width"]), int(geo["height"]))
        fref = repo.find_dataset("source", ref.data_id, collections=collection)
        if final is not None and d in final and fref is not None:
            source = repo.get(fref, parameters={"columns": [*cols_src, "ap09Flux"]})
            unit = _source_unit(source, truth, key, band, idx, tx, ty)
            row, t = final.row(d), truth.visit_detector[key]
            sql = ccd.get(key) if ccd else None
            seeing = (sql["seeing"] if sql else
                      row["psfSigma"] * row["pixelScale"] * FWHM_PER_SIGMA)
            scale = truth.pixel_scale(v, d, (geo["width"] - 1) / 2, (geo["height"] - 1) / 2)
            det_radius = (t["psf_ixx"] * t["psf_iyy"] - t["psf_ixy"] ** 2) ** 0.25
            unit.update(
                seeing=seeing / (det_radius * scale * FWHM_PER_SIGMA) - 1,
                seeing_cont=seeing / (t["psf_sigma"] * scale * FWHM_PER_SIGMA) - 1,
                zp=(sql["zeroPoint"] if sql else row["zeroPoint"]) - t["zero_point"],
                sky=(sql["skyBg"] if sql else row["skyBg"]) / t["sky_mean"] - 1,
                maglim_diff=(sql["magLim"] if sql else row["magLim"]) - unit["maglim"],
                maglim_diff_measured=(sql["magLim"] if sql else row["magLim"])
                - unit["maglim_measured_snr"])
            fin[key] = unit
    return {"n_detector_visits": len(cal), **_summarise_calibrate(cal),
            "visit_summary": _summarise_summary(fin, ccd_reason),
            "visit_image": _summarise_photometry(fin)}


def _gather(units: dict, name: str) -> np.ndarray:
    return np.array([u.get(name, np.nan) for u in units.values()], float)


def _per_unit(units, name, target, limit, transform=lambda a: a, **extra) -> dict:
    vals = transform(_gather(units, name))
    s = spread(vals)
    if s["n_units"] == 0:
        return null_figure(f"no detector-visit has a {name} figure", target)
    return figure(s["max"], s["n_units"], target, s["max"] < limit, median=s["median"],
                  **extra)


def _summarise_calibrate(cal: dict) -> dict:
    if not cal:
        return {"reason": "no src dataset of a detector-visit with truth"}
    n_stars = int(np.nansum(_gather(cal, "n_stars")))
    out = {
        "psf_flux_ratio": _per_unit(
            cal, "ratio", "< 0.005 (|median ratio - 1| per detector-visit; value = max)", 0.005,
            lambda a: a - 1, n_stars=n_stars,
            median_ratio=float(np.nanmedian(_gather(cal, "ratio"))),
            note="src psfFlux (calibrate's zero point) / true flux; isolated, unsaturated, "
                 "S/N > 100 stars"),
        "psf_flux_ratio_true_calibration": _per_unit(
            cal, "ratio_inst", "< 0.005", 0.005, lambda a: a - 1, n_stars=n_stars,
            median_ratio=float(np.nanmedian(_gather(cal, "ratio_inst"))),
            note="psfFlux_instFlux x true calibration / true flux: the PSF photometry alone"),
        "psf_flux_pull_scatter": _per_unit(
            cal, "pull", "<= 1.3 (robust sigma of (psfFlux - true) / psfFluxErr)", 1.3 + 1e-12,
            n_stars=n_stars),
        "astrometry_rms_mas": _per_unit(
            cal, "astrom_rms", "< 10 mas (rms 2-D offset from the true position)", 10.0,
            n_stars=n_stars, median_mean_offset_mas=float(np.nanmedian(
                _gather(cal, "astrom_mean"))),
            robust=spread(_gather(cal, "astrom_robust")),
            note="robust = quadrature sum of the per-axis 1.4826 MAD, per detector-visit"),
        "wcs_vs_true_wcs_max_mas": _per_unit(
            cal, "wcs_max", "< 10 mas (largest fitted-minus-true WCS offset on a 9 x 9 "
            "pixel grid, corners included)", 10.0,
            median_over_grid=spread(_gather(cal, "wcs_median"))),
        "zero_point_minus_truth": _per_unit(cal, "zp", "|dZP| < 0.01 mag", 0.01,
                                            signed_median=float(np.nanmedian(_gather(cal, "zp")))),
    }
    for where, ncol in (("reserved", "n_reserved"), ("grid", "n_grid")):
        per = np.array([u.get(f"psf_{where}", [np.nan] * 3) for u in cal.values()], float)
        n = int(np.nansum(_gather(cal, ncol)))
        if np.isfinite(per).any():
            worst = np.where(np.isfinite(per).any(axis=1),
                             np.max(np.where(np.isfinite(per), per, -np.inf), axis=1), np.nan)
            out[f"psf_moments_at_{where}"] = figure(
                np.nanmax(worst), n, "< 0.01 (max |rel. error| of Ixx, Iyy, Ixy/(trace/2))",
                np.nanmax(worst) < 0.01, median=float(np.nanmedian(worst)),
                max_by_component=dict(zip(("ixx", "iyy", "ixy"), np.nanmax(per, 0).tolist(),
                                          strict=True)),
                n_detector_visits=int(np.isfinite(worst).sum()))
        else:
            out[f"psf_moments_at_{where}"] = null_figure(f"no {where} points", "< 0.01")
    degree = _gather(cal, "psf_degree")
    per = np.array([np.max(u.get("psf_grid", [np.nan])) for u in cal.values()], float)
    out["psf_moments_at_grid"]["by_model_degree"] = {
        str(int(k)): {"n_detector_visits": int((degree == k).sum()),
                      "median": float(np.nanmedian(per[degree == k])),
                      "max": float(np.nanmax(per[degree == k]))}
        for k in np.unique(degree[np.isfinite(degree)])}
    out["psf_moments_at_reserved"]["truth"] = (
        "truth_psf_grid interpolated by a cubic tensor polynomial per detector; "
        f"max node residual {np.nanmax(_gather(cal, 'grid_fit_residual')):.2e} pixel^2")
    return out


def _summarise_summary(fin: dict, ccd_reason) -> dict:
    if not fin:
        return {"reason": "no visit_summary / source datasets"}
    src = "visit_summary" if ccd_reason else "CcdVisit (SQL)"
    out = {
        "source": src, "reason_not_sql": ccd_reason,
        "seeing": _per_unit(fin, "seeing", "< 0.02 relative", 0.02, signed_median=float(
            np.nanmedian(_gather(fin, "seeing"))),
            truth="2.3548 x pixel scale x (Ixx Iyy - Ixy^2)^(1/4) of the pixel-integrated "
                  "PSF at the detector centre (truth psf_ixx...)"),
        "seeing_vs_continuous_sigma": _per_unit(
            fin, "seeing_cont", "< 0.02 relative", 0.02,
            signed_median=float(np.nanmedian(_gather(fin, "seeing_cont"))),
            truth="2.3548 x pixel scale x psf_sigma (continuous profile, no pixel integration)"),
        "zero_point": _per_unit(fin, "zp", "< 0.01 mag", 0.01,
                                signed_median=float(np.nanmedian(_gather(fin, "zp")))),
        "sky_background": _per_unit(fin, "sky", "< 0.01 relative (skyBg / sky_mean - 1)", 0.01,
                                    signed_median=float(np.nanmedian(_gather(fin, "sky")))),
        "mag_lim": _per_unit(
            fin, "maglim_diff", "< 0.1 mag (magLim - S/N=5 magnitude of matched true stars)",
            0.1, signed_median=float(np.nanmedian(_gather(fin, "maglim_diff"))),
            n_stars=int(np.nansum(_gather(fin, "n_maglim"))),
            median_slope=float(np.nanmedian(_gather(fin, "maglim_slope"))),
            method="per detector-visit, straight-line fit of log10(true flux / psfFluxErr) "
                   "against true mag for the clean true stars matched in the final source "
                   "table with 3 <= S/N <= 20, evaluated at S/N 5",
            measured_snr_variant=_per_unit(
                fin, "maglim_diff_measured", "< 0.1 mag", 0.1, signed_median=float(
                    np.nanmedian(_gather(fin, "maglim_diff_measured"))),
                note="magLim minus the same fit of the measured S/N (psfFlux/psfFluxErr, "
                     "5 <= S/N <= 50): biased faint by the detection threshold (near S/N 5 "
                     "only upward fluctuations are recovered) and by the fit's curvature")),
    }
    return out


def _summarise_photometry(fin: dict) -> dict:
    if not fin:
        return {"reason": "no source datasets"}
    out = {"psf_flux_ratio": _per_unit(
        fin, "ratio", "< 0.005 (|median ratio - 1| per detector-visit; value = max)", 0.005,
        lambda a: a - 1, n_stars=int(np.nansum(_gather(fin, "n_stars"))),
        median_ratio=float(np.nanmedian(_gather(fin, "ratio"))),
        note="source psfFlux / true flux; isolated, unsaturated, S/N > 100 stars")}
    flux = np.concatenate([u["sky_psf"] for u in fin.values()])
    err = np.concatenate([u["sky_psf_err"] for u in fin.values()])
    ok = np.isfinite(flux) & np.isfinite(err) & (err > 0)
    sky: dict = {"n": int(ok.sum())}
    if ok.sum() > 1:
        flux, err = flux[ok], err[ok]
        mean, se = float(flux.mean()), float(flux.std(ddof=1) / np.sqrt(flux.size))
        pulls = flux / err
        sky.update(psf_flux_mean_njy=mean, psf_flux_standard_error_njy=se,
                   mean_over_standard_error=mean / se,
                   pull_mean=float(pulls.mean()), pull_std=float(pulls.std(ddof=1)),
                   consistent_with_zero=bool(abs(mean / se) < 3),
                   target="|mean| < 3 standard errors; pull std ~ 1")
        ap = [u["sky_ap"] for u in fin.values() if u["sky_ap"] is not None]
        if ap:
            a = np.concatenate(ap)
            a = a[np.isfinite(a)]
            if a.size > 1:
                sky.update(ap09_flux_mean_njy=float(a.mean()),
                           ap09_flux_standard_error_njy=float(a.std(ddof=1) / np.sqrt(a.size)))
    else:
        sky["reason"] = "no sky sources in the source tables"
    out["sky_sources"] = sky
    return out
