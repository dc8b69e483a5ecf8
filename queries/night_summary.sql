-- Depth and seeing per night and band: what each night of the survey delivered.
--
-- Nights are the observing days (day_obs) of the visit records.  Per night and band:
-- number of visits, median seeing (PSF FWHM, arcsec), median 5-sigma depth (magLim, AB
-- mag), median zero point (AB mag of 1 ADU), median sky (skyBg, ADU) and the summed
-- effective exposure time (effTime, s) of the detectors.
-- @param band str = null    only this band (NULL: every band)
SELECT v.day_obs, c.band, count(DISTINCT c.visitId) AS n_visits,
       median(c.seeing) AS seeing, median(c.magLim) AS magLim,
       median(c.zeroPoint) AS zeroPoint, median(c.skyBg) AS skyBg,
       sum(c.effTime) AS effTime
FROM CcdVisit AS c
JOIN main.visit AS v ON v.visit = c.visitId
WHERE $band IS NULL OR c.band = $band
GROUP BY v.day_obs, c.band
ORDER BY v.day_obs, c.band
