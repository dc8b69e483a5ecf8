"""ConsolidateVisitSummaryTask: one preliminary visit summary per visit.

Reads the components (PSF, WCS, calibration, aperture corrections) and the
summary statistics that calibration stored in each ``preliminary_visit_image``
header (not the pixels), and writes them as one ``preliminary_visit_summary``
table per visit, one row per detector, in the visit-summary catalog format of
:mod:`processing.visit_summary`.
"""

from __future__ import annotations

from dataclasses import dataclass

from store.errors import NoWorkFound

from ..algorithms.summary_stats import ExposureSummaryStats
from ..visit_summary import DetectorSummary, VisitSummaryCatalog
from .base import Connection, PipelineTask, TaskResult

__all__ = ["ConsolidateVisitSummaryConfig", "ConsolidateVisitSummaryTask"]

DETECTOR = ("instrument", "visit", "detector")
VISIT = ("instrument", "visit")


@dataclass(frozen=True)
class ConsolidateVisitSummaryConfig:
    """No settings: the summary statistics were computed by calibration."""


class ConsolidateVisitSummaryTask(PipelineTask):
    """Gather the per-detector calibration results of a visit into one table."""

    name = "consolidate_visit_summary"
    config_class = ConsolidateVisitSummaryConfig
    dimensions = VISIT
    inputs = (Connection("exposures", "preliminary_visit_image", DETECTOR, "Exposure",
                         multiple=True, doc="read without pixels"),)
    outputs = (Connection("summary", "preliminary_visit_summary", VISIT, "ArrowTable"),)

    def run_quantum(self, context) -> TaskResult:
        result = self.run(context.get("exposures", components=True))
        self.write_outputs(context, result)
        return result

    def run(self, exposures) -> TaskResult:
        """Build the visit summary.

        Parameters
        ----------
        exposures : dict of int to Exposure or ExposureInfo
            Calibrated exposures of one visit by detector (pixels unused).

        Returns
        -------
        TaskResult
            ``summary``: the visit-summary table (pyarrow).
        """
        if not exposures:
            raise NoWorkFound("no calibrated exposure in this visit")
        entries = []
        for detector in sorted(exposures):
            exp = exposures[detector]
            summary = ExposureSummaryStats.from_header(exp.metadata)
            entries.append(DetectorSummary(
                detector=exp.detector, bbox=exp.bbox, summary=summary, visit_info=exp.visit_info,
                wcs=exp.wcs, psf=exp.psf, photo_calib=exp.photo_calib,
                ap_corr_map=exp.ap_corr_map))
        catalog = VisitSummaryCatalog.from_detectors(entries)
        return TaskResult(summary=catalog.to_table(),
                          metadata={"n_detectors": len(entries)})
