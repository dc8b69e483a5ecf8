-- Best-seeing visits per band: the N visits of each band with the smallest median PSF FWHM.
--
-- Seeing is the median over a visit's detectors of CcdVisit.seeing (PSF FWHM, arcsec);
-- depth is the median 5-sigma point-source limit (magLim, AB mag).  Visits whose
-- detectors have no PSF model (NULL seeing) are left out.
-- @param n int = 5          visits kept per band
-- @param band str = null    only this band (NULL: every band)
SELECT band, visit, seeing, magLim, n_detectors, rank
FROM (
    SELECT band, visitId AS visit, median(seeing) AS seeing, median(magLim) AS magLim,
           count(*) AS n_detectors,
           row_number() OVER (PARTITION BY band ORDER BY median(seeing), visitId) AS rank
    FROM CcdVisit
    WHERE seeing IS NOT NULL AND ($band IS NULL OR band = $band)
    GROUP BY band, visitId
)
WHERE rank <= $n
ORDER BY band, rank
