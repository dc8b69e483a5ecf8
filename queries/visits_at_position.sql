-- Visits (and detectors) covering a sky position: which images contain my target?
--
-- A detector covers the position when the point lies inside its sky polygon (the four
-- corners llc, lrc, urc, ulc of CcdVisit; exact on the sphere, great-circle edges).
-- Columns: visit, detector, band, observation mid-time (MJD), seeing (arcsec), depth
-- (magLim, AB mag), ordered by time.
-- @param ra float           right ascension of the target [deg]
-- @param dec float          declination of the target [deg]
-- @param band str = null    only this band (NULL: every band)
SELECT visitId AS visit, detector, band, expMidptMJD, seeing, magLim
FROM CcdVisit
WHERE ($band IS NULL OR band = $band)
  AND llcra IS NOT NULL
  AND drp_pt_in_cpoly($ra, $dec, [llcra, llcdec, lrcra, lrcdec, urcra, urcdec, ulcra, ulcdec])
ORDER BY expMidptMJD, detector
