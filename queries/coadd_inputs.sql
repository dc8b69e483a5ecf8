-- Coadd inputs: the (visit, detector) images that go into one coadd (skymap, tract, patch, band).
--
-- One row per selected detector image, from the table visit_summary (one row per
-- visit and detector, the columns of the visit-summary catalog).  A detector image is
-- selected when all of these hold:
--   * its sky polygon (raCorners, decCorners; every corner finite) overlaps the outer
--     polygon of the patch: the rows of table patch_overlap, which the selection runner
--     fills for the patch being selected with an exact spherical convex-polygon test;
--   * it passes the per-detector PSF and calibration cuts of Rubin's
--     PsfWcsSelectImagesTask.  Every cut is written so that a NaN or NULL value FAILS
--     it; a NULL parameter switches that cut off;
--   * its zero point and sky noise are finite;
--   * its visit's mid-exposure MJD lies strictly inside (min_mjd, max_mjd) when given.
-- Optionally only the best-seeing visits are kept (Rubin's BestSeeingSelectVisitsTask
-- and BestSeeingQuantileSelectVisitsTask): visits are ranked by the mean FWHM of all
-- their detectors (NaN skipped), ties broken by visit; best_n keeps the first N;
-- quantile_min / quantile_max keep ranks [lower, upper) with
-- lower = min(round(q_min n), max(0, n - n_visits_min)) and
-- upper = max(round(q_max n), n_visits_min), rounding half to even.
-- Columns: instrument, visit, detector, band, fwhm (this detector's PSF FWHM, arcsec),
-- visit_fwhm (arcsec), visit_rank (1 = best seeing), and the per-detector quantities a
-- weighting scheme may use: psfSigma, pixelScale, zeroPoint, skyNoise, meanVar, skyBg,
-- effTime, magLim, nPsfStar, expMidptMJD.  Rows are in seeing order, then by detector.
-- Tasks need the columns visit and detector; a query of your own may compute others.
-- @param skymap str                                  sky map name
-- @param tract int                                   tract id
-- @param patch int                                   patch id (n_x * y + x)
-- @param band str                                    band (u g r i z y)
-- @param max_psf_fwhm float = 1.7                    per-detector PSF FWHM cut [arcsec]
-- @param max_ellip_residual float = 0.007            |median star - PSF ellipticity| cut
-- @param max_size_scatter float = null               psfStarDeltaSizeScatter cut [pixel]
-- @param max_scaled_size_scatter float = 0.019       psfStarScaledDeltaSizeScatter cut
-- @param max_psf_trace_radius_delta float = 0.7      psfTraceRadiusDelta cut [pixel]
-- @param max_psf_ap_flux_delta float = 0.24          psfApFluxDelta cut
-- @param max_psf_ap_corr_sigma_scaled_delta float = 0.22  psfApCorrSigmaScaledDelta cut
-- @param min_n_psf_star int = 6                      minimum number of PSF stars
-- @param max_star_e float = 0.4                      starEMedian cut
-- @param max_star_unnormalized_e float = 2.8         starUnNormalizedEMedian cut [pixel**2]
-- @param min_mjd float = null                        earliest mid-exposure MJD (exclusive)
-- @param max_mjd float = null                        latest mid-exposure MJD (exclusive)
-- @param best_n int = null                           keep the best-seeing N visits
-- @param quantile_min float = null                   lower seeing quantile kept
-- @param quantile_max float = null                   upper seeing quantile kept
-- @param n_visits_min int = 6                        fewest visits the quantile mode keeps
WITH rows AS (
    SELECT s.*, s.psfSigma * s.pixelScale * sqrt(8.0 * ln(2.0)) AS fwhm
    FROM visit_summary AS s
    WHERE s.band = $band
),
overlapping AS (
    SELECT r.* FROM rows AS r
    JOIN patch_overlap AS o USING (instrument, visit, detector)
    WHERE o.skymap = $skymap AND o.tract = $tract AND o.patch = $patch
),
passing AS (
    SELECT o.* FROM overlapping AS o
    WHERE ($max_psf_fwhm IS NULL OR coalesce(o.fwhm <= $max_psf_fwhm, FALSE))
      AND ($max_ellip_residual IS NULL OR coalesce(
            sqrt(o.psfStarDeltaE1Median ^ 2 + o.psfStarDeltaE2Median ^ 2) <= $max_ellip_residual,
            FALSE))
      AND ($max_size_scatter IS NULL
           OR coalesce(o.psfStarDeltaSizeScatter <= $max_size_scatter, FALSE))
      AND ($max_scaled_size_scatter IS NULL
           OR coalesce(o.psfStarScaledDeltaSizeScatter <= $max_scaled_size_scatter, FALSE))
      AND ($max_psf_trace_radius_delta IS NULL
           OR coalesce(o.psfTraceRadiusDelta <= $max_psf_trace_radius_delta, FALSE))
      AND ($max_psf_ap_flux_delta IS NULL
           OR coalesce(o.psfApFluxDelta <= $max_psf_ap_flux_delta, FALSE))
      AND ($max_psf_ap_corr_sigma_scaled_delta IS NULL
           OR coalesce(o.psfApCorrSigmaScaledDelta <= $max_psf_ap_corr_sigma_scaled_delta, FALSE))
      AND ($min_n_psf_star IS NULL OR coalesce(o.nPsfStar >= $min_n_psf_star, FALSE))
      AND ($max_star_e IS NULL OR coalesce(o.starEMedian <= $max_star_e, FALSE))
      AND ($max_star_unnormalized_e IS NULL
           OR coalesce(o.starUnNormalizedEMedian <= $max_star_unnormalized_e, FALSE))
      AND coalesce(isfinite(o.zeroPoint) AND isfinite(o.skyNoise), FALSE)
      AND ($min_mjd IS NULL OR coalesce(o.expMidptMJD > $min_mjd, FALSE))
      AND ($max_mjd IS NULL OR coalesce(o.expMidptMJD < $max_mjd, FALSE))
),
seeing AS (
    SELECT instrument, visit, avg(fwhm) FILTER (WHERE isfinite(fwhm)) AS visit_fwhm
    FROM rows GROUP BY instrument, visit
),
ranked AS (
    SELECT v.instrument, v.visit, s.visit_fwhm,
           row_number() OVER (ORDER BY s.visit_fwhm ASC NULLS LAST, v.visit, v.instrument)
               AS visit_rank,
           count(*) OVER () AS n_eligible
    FROM (SELECT DISTINCT instrument, visit FROM passing) AS v
    JOIN seeing AS s USING (instrument, visit)
),
kept AS (
    SELECT * FROM ranked
    WHERE ($best_n IS NULL OR visit_rank <= $best_n)
      AND ($quantile_min IS NULL OR visit_rank > least(round_even($quantile_min * n_eligible, 0),
                                                       greatest(0, n_eligible - $n_visits_min)))
      AND ($quantile_max IS NULL OR visit_rank <= greatest(round_even($quantile_max * n_eligible, 0),
                                                           $n_visits_min))
)
SELECT p.instrument, p.visit, p.detector, p.band, p.fwhm, k.visit_fwhm, k.visit_rank,
       p.psfSigma, p.pixelScale, p.zeroPoint, p.skyNoise, p.meanVar, p.skyBg, p.effTime,
       p.magLim, p.nPsfStar, p.expMidptMJD
FROM passing AS p
JOIN kept AS k USING (instrument, visit)
ORDER BY k.visit_rank, p.detector
