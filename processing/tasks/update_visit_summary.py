"""UpdateVisitSummaryTask: the final visit summary (``reference/algorithms.md`` 1.4).

Starts from the ``preliminary_visit_summary`` of a visit, applies the
override components that later calibration steps produce (PSF, aperture
corrections, WCS, photometric calibration, background), recomputes the
summary statistics that depend on each replaced component, and always
recomputes ``magLim`` and then the ``effTime`` family.  Writes
``visit_summary`` (one Parquet row per detector, the format of
:mod:`processing.visit_summary`, plus ``wcsCornerMaxOffset``) and
``visit_geometry`` (:mod:`processing.visit_geometry`), from which
:meth:`UpdateVisitSummaryTask.after_stage` updates the registry's detector
and visit regions.

Override semantics (Rubin's ``run`` docstring), for each of ``psf_overrides``,
``ap_corr_overrides``, ``photo_calib_overrides`` and ``wcs_overrides``:

* **not given** (None; Rubin's ``*_provider="input_summary"``): the input
  summary's component and the statistics derived from it pass through;
* **given but without a detector**: that detector's component becomes null
  and its statistics are reset (NaN; ``nPsfStar`` 0), which then also makes
  ``magLim`` / ``effTime`` NaN where they depend on it.

An override input is a mapping ``{detector: component}`` (a None value counts
as a missing component) or a
:class:`~processing.visit_summary.VisitSummaryCatalog` whose rows hold the
components (Rubin passes ExposureCatalogs).  ``background_overrides``
(Rubin's ``background_provider="replacement"``) follows 1.4 step 6: a
detector without one keeps its input ``skyBg`` / ``skyNoise`` / ``meanVar``.
Choosing among per-tract or per-HEALPix override catalogs (1.3) is the
caller's job: drp has no such products yet.

In drp's pipeline there is no PSF refit or global calibration, so the
override inputs are not connections.  :meth:`UpdateVisitSummaryTask.run_quantum`
passes each exposure's own PSF and aperture-correction map as the PSF / ApCorr
overrides (Rubin always applies its finalized ones), so the PSF statistics are
recomputed from the full mask and the PSF-star table; WCS, PhotoCalib and
background pass through.  Not done: the pointing refit and the TAN-SIP
approximation fits of Rubin's ``doRefitPointing`` / ``doFitSipApproximations``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from store.calib import PhotoCalib
from store.errors import DatasetTypeError, DrpError, NoWorkFound
from store.formats.parquet import as_arrow, exclude_from_sql, with_units

from ..algorithms.background import BackgroundList
from ..algorithms.summary_stats import (
    SummaryStatsConfig,
    update_background_stats,
    update_effective_time_stats,
    update_magnitude_limit_stats,
    update_masked_image_stats,
    update_photo_calib_stats,
    update_psf_stats,
    update_wcs_stats,
)
from ..visit_geometry import region_records, visit_geometry
from ..visit_summary import VisitSummaryCatalog
from .base import Connection, PipelineTask, TaskResult

__all__ = ["UpdateVisitSummaryConfig", "UpdateVisitSummaryTask", "VisitSummaryInputError"]

DETECTOR = ("instrument", "visit", "detector")
VISIT = ("instrument", "visit")

#: Serialised component columns kept in the Parquet file but out of the SQL copy.
_BLOB_COLUMNS = ("psf", "wcs", "ap_corr_map")


class VisitSummaryInputError(DrpError, ValueError):
    """The inputs of a visit summary disagree or are broken (the message names the data ID)."""


@dataclass(frozen=True)
class UpdateVisitSummaryConfig:
    """Settings of :class:`UpdateVisitSummaryTask`.

    Rubin's ``wcs_provider`` / ``photo_calib_provider`` / ``background_provider``
    (1.2) reduce in drp to whether ``run`` is given the override input
    (``"input_summary"`` = not given).

    Attributes
    ----------
    summary : SummaryStatsConfig
        Settings of the recomputed statistics.
    wcs_consistency_threshold : float or None
        Arcsec.  With WCS overrides, a detector whose override moves a corner
        of the detector by more than this from the input WCS gets no WCS.
        None: no check (ignored without WCS overrides).
    recompute_psf_stats : bool
        In :meth:`~UpdateVisitSummaryTask.run_quantum`: pass each exposure's
        PSF and aperture-correction map as overrides, so the PSF statistics
        are recomputed (reads the pixels for the mask).  False: pass them
        through and read only the exposures' headers.
    """

    summary: SummaryStatsConfig = field(default_factory=SummaryStatsConfig)
    wcs_consistency_threshold: float | None = None
    recompute_psf_stats: bool = True

    def __post_init__(self) -> None:
        t = self.wcs_consistency_threshold
        if t is not None and not (math.isfinite(t) and t > 0):
            raise ValueError(f"wcs_consistency_threshold must be a positive number of arcsec "
                             f"or None, got {t}")


class UpdateVisitSummaryTask(PipelineTask):
    """Final visit summary: overrides applied, statistics recomputed, regions updated."""

    name = "update_visit_summary"
    config_class = UpdateVisitSummaryConfig
    dimensions = VISIT
    inputs = (
        Connection("input_summary_catalog", "preliminary_visit_summary", VISIT, "ArrowTable",
                   doc="one row per detector with components and statistics"),
        Connection("input_exposures", "preliminary_visit_image", DETECTOR, "Exposure",
                   multiple=True, doc="mask for the PSF grid; pixels for a new background"),
        Connection("psf_star_catalog", "single_visit_star", DETECTOR, "ArrowTable",
                   multiple=True, doc="PSF stars (slot_* columns) of each detector"),
        Connection("background_originals", "preliminary_visit_image_background", DETECTOR,
                   "FitsBundle", multiple=True, optional=True,
                   doc="backgrounds already subtracted (used with background_overrides)"),
    )
    outputs = (
        Connection("visit_summary", "visit_summary", VISIT, "ArrowTable"),
        Connection("visit_geometry", "visit_geometry", VISIT, "StructuredData",
                   doc="detector corner polygons and the visit's convex hull"),
    )

    # -- pipeline I/O ------------------------------------------------------------------------
    def run_quantum(self, context) -> TaskResult:
        """Read one visit's inputs (exposures one at a time), run, write."""
        refs = context.refs("input_exposures")
        pixels = self.config.recompute_psf_stats
        exposures = _LazyInputs(context, refs, {} if pixels else {"components": True})
        overrides: dict[str, Any] = {"psf_overrides": None, "ap_corr_overrides": None}
        if pixels:
            headers = _LazyInputs(context, refs, {"components": True})
            overrides = {"psf_overrides": {d: e.psf for d, e in headers.items()},
                         "ap_corr_overrides": {d: e.ap_corr_map for d, e in headers.items()}}
        originals = (context.get("background_originals")
                     if context.has("background_originals") else None)
        result = self.run(context.get("input_summary_catalog"), exposures,
                          psf_star_catalog=context.get("psf_star_catalog"),
                          background_originals=originals, **overrides)
        self.write_outputs(context, result)
        return result

    @classmethod
    def after_stage(cls, repo, run: str) -> None:
        """Set the registry's detector and visit regions from the run's ``visit_geometry``.

        Called by the pipeline after the stage; replaces the
        ``visit_detector_region`` records and the visit regions of every visit
        with a geometry in ``run`` (two registry commits).
        """
        try:
            refs = repo.query_datasets("visit_geometry", collections=run)
        except DatasetTypeError:
            return
        detector_records: list[dict] = []
        visit_records: list[dict] = []
        for ref in refs:
            dets, visits = region_records(repo.get(ref))
            detector_records += dets
            visit_records += visits
        if detector_records:
            repo.insert_dimension_records("visit_detector_region", detector_records,
                                          replace=True)
        if visit_records:
            repo.insert_dimension_records("visit", visit_records, replace=True)

    # -- the algorithm ---------------------------------------------------------------------
    def run(self, input_summary_catalog, input_exposures: Mapping[int, Any], psf_overrides,
            psf_star_catalog, ap_corr_overrides, photo_calib_overrides=None,
            wcs_overrides=None, background_originals=None,
            background_overrides=None) -> TaskResult:
        """Apply the overrides and recompute the statistics of one visit (1.4).

        Parameters
        ----------
        input_summary_catalog : VisitSummaryCatalog or table
            The preliminary visit summary (one row per detector).
        input_exposures : mapping of int to Exposure
            Background-subtracted exposures by detector (ExposureInfo, without
            pixels, is enough when neither PSF/ApCorr nor background overrides
            are given).  Only the mask (PSF grid), image and variance
            (new background) and the metadata are used.
        psf_overrides, ap_corr_overrides, photo_calib_overrides, wcs_overrides
            Override inputs, or None (see the module docstring).  PhotoCalib
            overrides may be :class:`~store.calib.PhotoCalib` objects or
            calibrations in nJy/ADU.
        psf_star_catalog : table, mapping of int to table, or None
            PSF stars: one table with a ``detector`` column, or one table per
            detector; a detector without stars gets NaN star statistics.
        background_originals : mapping of int to BackgroundList or FitsBundle, optional
            Backgrounds already subtracted from the exposures.
        background_overrides : mapping of int to BackgroundList or FitsBundle, optional
            New background layers, subtracted from the image before the
            masked-image statistics are recomputed.

        Returns
        -------
        TaskResult
            ``visit_summary`` (pyarrow table), ``visit_geometry`` (dict).

        Raises
        ------
        VisitSummaryInputError
            A detector in the summary without an exposure or the reverse, a
            bounding-box mismatch, or a photometric calibration that is zero,
            negative or not finite (the message names the data ID).
        """
        catalog = (input_summary_catalog if isinstance(input_summary_catalog, VisitSummaryCatalog)
                   else VisitSummaryCatalog.from_table(input_summary_catalog))
        if len(catalog) == 0:
            raise NoWorkFound("the input visit summary has no detector")
        ident = _Ident(catalog)
        _check_detectors(catalog, input_exposures, ident)
        _check_photo_calibs(catalog, ident)
        stars = _stars_by_detector(psf_star_catalog)
        cfg = self.config.summary
        entries, offsets = [], {}
        for det in catalog.detectors():
            entry = catalog.entry(det)
            exposure = input_exposures[det]
            bbox = exposure.bbox
            if bbox != entry.bbox:
                raise VisitSummaryInputError(f"{ident(det)}: exposure box {bbox} differs from "
                                             f"the summary's {entry.bbox}")
            summary = entry.summary
            if wcs_overrides is not None:
                new_wcs = _find(wcs_overrides, det, VisitSummaryCatalog.wcs)
                entry.wcs, offsets[det] = _finish_wcs(entry.wcs, new_wcs, bbox,
                                                      self.config.wcs_consistency_threshold)
                update_wcs_stats(summary, entry.wcs, bbox, entry.visit_info)
            if psf_overrides is not None or ap_corr_overrides is not None:
                if psf_overrides is not None:
                    entry.psf = _find(psf_overrides, det, VisitSummaryCatalog.psf)
                if ap_corr_overrides is not None:
                    entry.ap_corr_map = _find(ap_corr_overrides, det,
                                              VisitSummaryCatalog.ap_corr_map)
                update_psf_stats(summary, entry.psf, bbox, stars.get(det),
                                 _plane(exposure, "mask", ident(det)), entry.ap_corr_map, cfg)
            if photo_calib_overrides is not None:
                entry.photo_calib = _photo_calib_override(photo_calib_overrides, det, ident)
                update_photo_calib_stats(summary, entry.photo_calib)
            if background_overrides is not None and det in background_overrides:
                _replace_background(summary, exposure, background_overrides[det],
                                    (background_originals or {}).get(det), cfg, ident(det))
            update_magnitude_limit_stats(summary, entry.detector, cfg,
                                         metadata=exposure.metadata)
            band = entry.visit_info.band if entry.visit_info is not None else None
            update_effective_time_stats(summary, band, summary.expTime, cfg)
            entries.append(entry)
            del exposure  # a lazy mapping reads the next one from disk
        table = VisitSummaryCatalog.from_detectors(entries).to_table()
        offset = [offsets.get(d, math.nan) for d in table.column("detector").to_pylist()]
        table = table.append_column("wcsCornerMaxOffset", pa.array(offset, pa.float64()))
        table = with_units(table, {"wcsCornerMaxOffset": "arcsec"},
                           {"wcsCornerMaxOffset": "largest corner shift between the input "
                                                  "and the final WCS"})
        table = exclude_from_sql(table, _BLOB_COLUMNS)
        geometry = visit_geometry(ident.instrument, ident.visit, {
            e.detector.id: (e.summary.raCorners, e.summary.decCorners) for e in entries})
        return TaskResult(visit_summary=table, visit_geometry=geometry,
                          metadata={"n_detectors": len(entries),
                                    "n_with_wcs": len(geometry["detectors"])})


# ---------------------------------------------------------------------------------- helpers


class _Ident:
    """Formats the data ID of a detector of this visit for error messages."""

    def __init__(self, catalog: VisitSummaryCatalog):
        row = catalog.row(catalog.detectors()[0])
        self.instrument = row["instrument"]
        self.visit = catalog.visit

    def __call__(self, detector: int) -> str:
        return f"instrument={self.instrument}, visit={self.visit}, detector={detector}"


class _LazyInputs(Mapping):
    """Input datasets by detector, read from disk on each access (one in memory at a time)."""

    def __init__(self, context, refs, parameters: dict):
        own = set(context.quantum.data_id)
        self._context = context
        self._parameters = parameters
        self._refs = {}
        for ref in refs:
            extra = [v for k, v in ref.data_id.items() if k not in own]
            self._refs[extra[0]] = ref

    def __getitem__(self, key):
        from pathlib import Path

        from store.formats import get_storage_class

        ref = self._refs[key]
        path = Path(ref.path)
        path = path if path.is_absolute() else self._context.root / path
        return get_storage_class(ref.storage_class).read(path, **self._parameters)

    def __iter__(self) -> Iterator:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)


def _check_detectors(catalog: VisitSummaryCatalog, exposures: Mapping, ident: _Ident) -> None:
    in_summary, with_exposure = set(catalog.detectors()), set(exposures)
    missing = sorted(in_summary - with_exposure)
    if missing:
        raise VisitSummaryInputError(f"{ident(missing[0])}: in the input visit summary but no "
                                     f"input exposure ({len(missing)} such detector(s))")
    extra = sorted(with_exposure - in_summary)
    if extra:
        raise VisitSummaryInputError(f"{ident(extra[0])}: has an input exposure but no row in "
                                     f"the input visit summary ({len(extra)} such detector(s))")


def _valid_calibration(value, where: str) -> PhotoCalib | None:
    """A PhotoCalib from a PhotoCalib, a number (nJy/ADU) or None; 0/NaN/negative raise."""
    if value is None or isinstance(value, PhotoCalib):
        return value
    mean = float(value)
    if not (math.isfinite(mean) and mean > 0):
        raise VisitSummaryInputError(f"{where}: photometric calibration {mean} nJy/ADU is not "
                                     "finite and positive")
    return PhotoCalib(mean)


def _check_photo_calibs(catalog: VisitSummaryCatalog, ident: _Ident) -> None:
    """Null calibrations are allowed (no PhotoCalib); zero, negative or NaN ones are not."""
    means = catalog.to_table().column("calibration_mean").to_pylist()
    for det, mean in zip(catalog.detectors(), means, strict=True):
        if mean is not None:
            _valid_calibration(mean, f"{ident(det)} (input visit summary)")


def _find(overrides, detector: int, getter):
    """An override component for a detector, or None when the input lacks it."""
    if isinstance(overrides, VisitSummaryCatalog):
        return getter(overrides, detector) if detector in overrides else None
    if not isinstance(overrides, Mapping):
        raise TypeError(f"override inputs are mappings by detector or VisitSummaryCatalogs, "
                        f"got {type(overrides).__name__}")
    return overrides.get(detector)


def _photo_calib_override(overrides, detector: int, ident: _Ident) -> PhotoCalib | None:
    where = f"{ident(detector)} (photo_calib_overrides)"
    if isinstance(overrides, VisitSummaryCatalog):
        if detector not in overrides:
            return None
        mean = overrides.row(detector)["calibration_mean"]
        return None if mean is None else _valid_calibration(mean, where)
    return _valid_calibration(_find(overrides, detector, None), where)


def _finish_wcs(old_wcs, new_wcs, bbox, threshold: float | None):
    """Rubin's ``_finish_wcs_assignment``: the final WCS and the largest corner shift (arcsec)."""
    if old_wcs is None:
        return (None if threshold is not None else new_wcs), math.nan
    if new_wcs is None:
        return None, math.nan
    from store.sphgeom import angular_separation

    corners = bbox.corners()
    ra0, dec0 = old_wcs.all_pix2world(corners[:, 0], corners[:, 1], 0)
    ra1, dec1 = new_wcs.all_pix2world(corners[:, 0], corners[:, 1], 0)
    offset = float(np.max(angular_separation(ra0, dec0, ra1, dec1))) * 3600.0
    if threshold is not None and offset > threshold:
        return None, offset
    return new_wcs, offset


def _plane(exposure, name: str, where: str) -> np.ndarray:
    value = getattr(exposure, name, None)
    if value is None:
        raise VisitSummaryInputError(f"{where}: the exposure was read without pixels, but the "
                                     f"{name} plane is needed")
    return value


def _as_background(value) -> BackgroundList:
    if value is None:
        return BackgroundList()
    if isinstance(value, BackgroundList):
        return value
    return BackgroundList.from_bundle(value)


def _replace_background(summary, exposure, override, original, cfg: SummaryStatsConfig,
                        where: str) -> None:
    """1.4 step 6: subtract the new layers, recompute skyBg, skyNoise and meanVar."""
    new = _as_background(override)
    full = BackgroundList(list(_as_background(original)) + list(new))
    image = _plane(exposure, "image", where)
    if len(new):
        model = new.evaluate()
        if model.shape != image.shape:
            raise VisitSummaryInputError(f"{where}: background override shape {model.shape} "
                                         f"differs from the image shape {image.shape}")
        image = image - model
    update_background_stats(summary, full)
    update_masked_image_stats(summary, image, exposure.mask, exposure.variance, cfg)


def _stars_by_detector(psf_star_catalog) -> dict[int, pa.Table]:
    """PSF-star rows per detector (detectors without rows are absent)."""
    if psf_star_catalog is None:
        return {}
    if isinstance(psf_star_catalog, Mapping):
        tables = {int(d): as_arrow(t) for d, t in psf_star_catalog.items() if t is not None}
        return {d: t for d, t in tables.items() if t.num_rows}
    table = as_arrow(psf_star_catalog)
    if table.num_rows == 0:
        return {}
    if "detector" not in table.column_names:
        raise KeyError("PSF-star table has no column 'detector'")
    detectors = np.asarray(table.column("detector").to_numpy(zero_copy_only=False))
    order = np.argsort(detectors, kind="stable")
    values, starts = np.unique(detectors[order], return_index=True)
    bounds = [*starts[1:], len(order)]
    return {int(v): table.take(pa.array(order[s:e]))
            for v, s, e in zip(values, starts, bounds, strict=True)}
