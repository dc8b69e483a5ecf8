"""The data-release pipeline: single-frame calibration to cell-based coadds.

Stages, in order (each a Rubin task of the same name):

1. ``calibrate`` (instrument, visit, detector): PSF, astrometry, photometry.
2. ``consolidate_visit_summary`` (instrument, visit): the preliminary visit summary.
3. ``update_visit_summary`` (instrument, visit): final visit summary.
4. ``reprocess_visit_image`` (instrument, visit, detector): final images and sources.
5. ``make_warp`` (skymap, tract, patch, visit): warps of the SQL-selected inputs.
6. ``assemble_coadd`` (skymap, tract, patch, band): mean / clipped / safe-clip coadds.
7. ``assemble_cell_coadd`` (skymap, tract, patch, band): cell coadds with a PSF per cell.

Stages whose task module is not importable yet are left out.
"""

from __future__ import annotations

import importlib

from processing.pipeline import Pipeline, PipelineStep

_STAGES = (
    ("processing.tasks.calibrate", "CalibrateTask"),
    ("processing.tasks.consolidate", "ConsolidateVisitSummaryTask"),
    ("processing.tasks.update_visit_summary", "UpdateVisitSummaryTask"),
    ("processing.tasks.reprocess_visit_image", "ReprocessVisitImageTask"),
    ("processing.tasks.make_warp", "MakeWarpTask"),
    ("processing.tasks.assemble_coadd", "AssembleCoaddTask"),
    ("processing.tasks.assemble_cell_coadd", "AssembleCellCoaddTask"),
)


def _steps() -> tuple[PipelineStep, ...]:
    steps = []
    for module_name, class_name in _STAGES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:
                continue
            raise
        steps.append(PipelineStep(getattr(module, class_name)))
    return tuple(steps)


PIPELINE = Pipeline("drp", _steps(), __doc__.splitlines()[0])
