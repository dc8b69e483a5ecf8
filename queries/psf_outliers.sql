-- PSF quality outliers: detectors whose PSF model or PSF stars fail a quality cut.
--
-- The cuts are those of Rubin's PsfWcsSelectImagesTask (coadd input selection), so the
-- rows are the detector images a coadd would reject for their PSF; a NULL/NaN statistic
-- counts as a failure.  `reason` names the first failed cut.
-- @param max_ellip_residual float = 0.007       |median (star - PSF) ellipticity|
-- @param max_scaled_size_scatter float = 0.019  star-PSF size scatter / star size
-- @param max_trace_radius_delta float = 0.7     PSF size variation over the detector [pixel]
-- @param min_n_psf_star int = 6                 PSF stars used
SELECT visitId AS visit, detector, band, seeing, nPsfStar,
       sqrt(psfStarDeltaE1Median ^ 2 + psfStarDeltaE2Median ^ 2) AS ellip_residual,
       psfStarScaledDeltaSizeScatter, psfTraceRadiusDelta,
       CASE
           WHEN NOT coalesce(nPsfStar >= $min_n_psf_star, false) THEN 'too few PSF stars'
           WHEN NOT coalesce(sqrt(psfStarDeltaE1Median ^ 2 + psfStarDeltaE2Median ^ 2)
                             <= $max_ellip_residual, false) THEN 'ellipticity residual'
           WHEN NOT coalesce(psfStarScaledDeltaSizeScatter <= $max_scaled_size_scatter, false)
               THEN 'size scatter'
           WHEN NOT coalesce(psfTraceRadiusDelta <= $max_trace_radius_delta, false)
               THEN 'PSF size variation'
       END AS reason
FROM CcdVisit
WHERE reason IS NOT NULL
ORDER BY visitId, detector
