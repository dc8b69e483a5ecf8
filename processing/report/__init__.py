"""The data-release QA report (``drp report``): one self-contained HTML file of figures.

Modules, one per figure family:

* :mod:`.visits`: seeing, zero point, sky and depth of every visit against time;
* :mod:`.psf`: focal-plane PSF size/ellipticity map of a visit, reserved-star residuals;
* :mod:`.calibration`: astrometric and photometric residuals against the reference catalog;
* :mod:`.coadds`: coadd images with n_image and CLIPPED pixels, the cell-coadd PSF map;
* :mod:`.truth`: completeness, flux accuracy and conditions against the simulated truth;

and the plumbing: :mod:`.data` (collection-scoped reads), :mod:`.render` (figures,
notes, PNG), :mod:`.html` (the page), :mod:`.report` (:func:`write_report`).
"""

from .report import Report, ReportError, build_report, write_report

__all__ = ["Report", "ReportError", "build_report", "write_report"]
