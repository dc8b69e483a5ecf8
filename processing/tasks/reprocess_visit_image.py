"""ReprocessVisitImageTask: final visit images in nJy and their source catalogs.

Follows ``reference/algorithms.md`` 6.1: from the ``post_isr_image`` (one or
two snaps, combined) and the final calibrations of the ``visit_summary``:

1. combine snaps (sum of the good ones, scaled as Rubin's SnapCombine);
2. subtract the preliminary background (``preliminary_visit_image_background``);
3. attach the visit summary's PSF, WCS, aperture corrections and photometric
   calibration (a detector without all four is refused: no work);
4. repair cosmic rays (CR, INTRP);
5. calibrate the pixels to nJy (image x c, variance x c^2; PhotoCalib 1);
6. detect at 5 sigma (no background re-estimation), mask satellite and meteor
   streaks STREAK among the detections (:mod:`processing.algorithms.streaks`;
   the coadds exclude them), add ``sky_source`` measurements on empty sky,
   deblend, measure, apply aperture corrections;
7. set ``detect_isPrimary`` (deblended, not a sky source) and carry the
   ``calib_*`` flags of the calibration sources matched within
   ``calib_match_radius``;
8. recompute the summary statistics (stored in the image header).

Outputs: ``visit_image`` (FITS, BUNIT nJy), ``source`` (Parquet, dp1 column
names, fluxes in nJy), ``source_footprints`` (the segmentation image) and
``visit_image_background``.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from scipy.spatial import cKDTree

from store.calib import PhotoCalib
from store.errors import NoWorkFound
from store.exposure import Exposure
from store.formats.fits import FitsBundle
from store.masks import bits
from store.sphgeom import radec_to_xyz

from ..algorithms.apcorr import apply_aperture_correction
from ..algorithms.background import BackgroundList
from ..algorithms.cosmic_rays import CosmicRayConfig, repair_cosmic_rays
from ..algorithms.deblend import DeblendConfig, deblend
from ..algorithms.detection import DetectionConfig, detect_sources
from ..algorithms.measure import MeasurementConfig, measure_sources
from ..algorithms.moments import determinant_radius, psf_moments_at
from ..algorithms.sky_sources import place_sky_sources
from ..algorithms.streaks import StreakConfig, mask_streaks
from ..ids import source_ids
from ..visit_summary import VisitSummaryCatalog
from .base import Connection, PipelineTask, TaskResult
from .catalogs import calibrated_source_table
from .single_frame import SingleFrameError, attach_summary, column, prepare_planes

__all__ = ["ReprocessVisitImageConfig", "ReprocessVisitImageTask", "combine_snaps"]

DETECTOR = ("instrument", "visit", "detector")
VISIT = ("instrument", "visit")
_CALIB_FLAGS = ("calib_psf_candidate", "calib_psf_used", "calib_psf_reserved",
                "calib_astrometry_used", "calib_photometry_used")


@dataclass(frozen=True)
class ReprocessVisitImageConfig:
    """Settings of :class:`ReprocessVisitImageTask`."""

    cosmic_rays: CosmicRayConfig = field(default_factory=CosmicRayConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    deblend: DeblendConfig = field(default_factory=DeblendConfig)
    measurement: MeasurementConfig = field(default_factory=MeasurementConfig)
    #: Sky sources: how many, their radius (pixels) and trial positions.
    n_sky_sources: int = 100
    sky_source_radius: int = 8
    sky_source_trials: int = 500
    #: Radius for carrying calibration flags from the calibration sources, arcsec.
    calib_match_radius: float = 0.2
    #: Snaps whose mask has any of these planes do not count (Rubin's default: none).
    snap_bad_mask_planes: tuple[str, ...] = ()
    #: Mask streaks STREAK, and how they are found.
    do_mask_streaks: bool = True
    streaks: StreakConfig = field(default_factory=StreakConfig)


class ReprocessVisitImageTask(PipelineTask):
    """Final single-visit processing with the final calibrations."""

    name = "reprocess_visit_image"
    config_class = ReprocessVisitImageConfig
    dimensions = DETECTOR
    inputs = (
        Connection("exposures", "post_isr_image", DETECTOR, "Exposure",
                   doc="one snap (two snaps would carry an exposure dimension)"),
        Connection("visit_summary", "visit_summary", VISIT, "ArrowTable"),
        Connection("background", "preliminary_visit_image_background", DETECTOR, "FitsBundle"),
        Connection("calib_sources", "src", DETECTOR, "ArrowTable", optional=True,
                   doc="calibration sources whose calib_* flags are carried over"),
    )
    outputs = (
        Connection("exposure", "visit_image", DETECTOR, "Exposure"),
        Connection("sources", "source", DETECTOR, "ArrowTable"),
        Connection("footprints", "source_footprints", DETECTOR, "FitsBundle"),
        Connection("background", "visit_image_background", DETECTOR, "FitsBundle"),
    )

    def run_quantum(self, context) -> TaskResult:
        detector = context.quantum.data_id["detector"]
        result = self.run(exposures=context.get("exposures"),
                          visit_summary=context.get("visit_summary"),
                          background=context.get("background"),
                          calib_sources=context.get("calib_sources"), detector=detector)
        self.write_outputs(context, result)
        return result

    def run(self, exposures, visit_summary, background, calib_sources=None, *,
            detector: int | None = None) -> TaskResult:
        """Reprocess one detector of one visit.

        Parameters
        ----------
        exposures : Exposure or list of Exposure
            The ``post_isr_image`` snap(s), ADU.
        visit_summary : pyarrow.Table or VisitSummaryCatalog
            The final visit summary of the visit.
        background : FitsBundle or BackgroundList
            The preliminary background to subtract.
        calib_sources : pyarrow.Table, optional
            Calibration sources (``src``) with ``calib_*`` flags.
        detector : int, optional
            Detector id (default: from the exposure).

        Returns
        -------
        TaskResult
            ``exposure`` (visit_image, nJy), ``sources``, ``footprints``,
            ``background``.
        """
        cfg = self.config
        exposure = combine_snaps(exposures if isinstance(exposures, list) else [exposures],
                                 bits(cfg.snap_bad_mask_planes) if cfg.snap_bad_mask_planes else 0)
        if detector is None:
            if exposure.detector is None:
                raise SingleFrameError("exposure has no detector id")
            detector = exposure.detector.id
        catalog = (visit_summary if isinstance(visit_summary, VisitSummaryCatalog)
                   else VisitSummaryCatalog.from_table(visit_summary))
        if detector not in catalog:
            raise NoWorkFound(f"visit summary has no row for detector {detector}")
        psf, wcs = catalog.psf(detector), catalog.wcs(detector)
        photo_calib, ap_corr_map = catalog.photo_calib(detector), catalog.ap_corr_map(detector)
        missing = [n for n, v in (("PSF", psf), ("WCS", wcs), ("PhotoCalib", photo_calib),
                                  ("ApCorrMap", ap_corr_map)) if v is None]
        if missing:
            raise NoWorkFound(f"visit summary row of detector {detector} lacks "
                              f"{', '.join(missing)}")
        if not (np.isfinite(photo_calib.calibration_mean) and photo_calib.calibration_mean > 0):
            raise SingleFrameError(f"detector {detector}: photometric calibration "
                                   f"{photo_calib.calibration_mean} is not positive")
        bkg = background if isinstance(background, BackgroundList) else \
            BackgroundList.from_bundle(background)

        image, variance, mask = prepare_planes(exposure)
        if image.shape != tuple(bkg.evaluate().shape):
            raise SingleFrameError(f"detector {detector}: background shape "
                                   f"{bkg.evaluate().shape} differs from the image {image.shape}")
        image = image - bkg.evaluate()
        cx, cy = exposure.bbox.center
        sigma = float(determinant_radius(*psf_moments_at(psf, cx, cy)))
        n_cr = repair_cosmic_rays(image, variance, mask, sigma, cfg.cosmic_rays)
        c = photo_calib.calibration_mean
        image *= c
        variance = variance * np.float32(c * c)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            det = detect_sources(image, variance, mask, sigma, cfg.detection)
            blend = deblend(det, image, variance, sigma, cfg.deblend)
        mask = det.mask
        n_streaks = 0
        if cfg.do_mask_streaks:
            n_streaks = len(mask_streaks(image, variance, mask, sigma, cfg.streaks).streaks)
        cat = blend.catalog
        sky_x, sky_y = place_sky_sources(
            mask, n_sources=cfg.n_sky_sources, radius=cfg.sky_source_radius,
            n_trials=cfg.sky_source_trials, seed=_seed(exposure, detector))
        n_det = len(cat)
        xs = np.concatenate([cat["peak_x"], np.round(sky_x).astype(cat["peak_x"].dtype)])
        ys = np.concatenate([cat["peak_y"], np.round(sky_y).astype(cat["peak_y"].dtype)])
        ids = np.concatenate([cat["id"], cat["id"].max(initial=0) + 1 + np.arange(len(sky_x))])
        parents = np.concatenate([cat["parent"], np.zeros(len(sky_x), cat["parent"].dtype)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            table = measure_sources(image, variance, mask, psf, xs, ys,
                                    segmentation=blend.segmentation, ids=ids, parents=parents,
                                    config=cfg.measurement)
        table = apply_aperture_correction(table, ap_corr_map)
        sky = np.zeros(table.num_rows, dtype=bool)
        sky[n_det:] = True

        x, y = column(table, "x"), column(table, "y")
        finite = np.isfinite(x) & np.isfinite(y)
        ra, dec = wcs.all_pix2world(np.where(finite, x, 0.0), np.where(finite, y, 0.0), 0)
        ra, dec = np.where(finite, ra, np.nan), np.where(finite, dec, np.nan)
        vi = exposure.visit_info
        visit = int(vi.visit) if vi is not None and vi.visit is not None else 0
        source_id = source_ids(visit, detector, table.num_rows)
        measured_parent = column(table, "parentSourceId").astype(np.int64)
        parent_id = np.where(measured_parent > 0, source_id[0] - 1 + measured_parent, 0)
        deblended = column(table, "deblend_nChild") == 0
        flags = {"sky_source": sky, "detect_isDeblendedSource": deblended & ~sky,
                 "detect_isPrimary": deblended & ~sky}
        flags.update(_carry_calib_flags(ra, dec, calib_sources, cfg.calib_match_radius))
        sources = calibrated_source_table(
            table, source_id=source_id, parent_id=parent_id, ra=ra, dec=dec,
            photo_calib=PhotoCalib(1.0), visit=visit, detector=detector,
            band=exposure.band or "", physical_filter=vi.physical_filter if vi else "",
            extra=flags)

        out = Exposure(image=image, mask=mask, variance=variance, wcs=wcs, psf=psf,
                       photo_calib=PhotoCalib(1.0), ap_corr_map=ap_corr_map, visit_info=vi,
                       detector=exposure.detector, units="nJy", xy0=exposure.xy0,
                       metadata=dict(exposure.metadata))
        out.metadata["CALIBMEAN"] = c  # the nJy/ADU factor applied to the pixels
        psf_stars = _psf_star_rows(sources)
        attach_summary(out, psf_stars, bkg)
        footprints = FitsBundle(header={"NSOURCE": int(n_det)},
                                arrays={"segmentation": blend.segmentation.astype(np.int32)})
        metadata = {"n_sources": int(n_det), "n_sky_sources": int(sky.sum()),
                    "n_cosmic_ray_pixels": int(n_cr), "n_streaks": int(n_streaks)}
        return TaskResult(exposure=out, sources=sources, footprints=footprints,
                          background=bkg.to_bundle(), metadata=metadata)


def combine_snaps(snaps: list[Exposure], bad_mask: int = 0) -> Exposure:
    """Rubin's SnapCombine: one snap unchanged; two summed (good ones only).

    ``image = sum(good) / (0.5 n_good)``, ``variance = sum(var) / (0.5 n_good)^2``,
    masks OR'ed, NO_DATA where no snap is good; exposure times add.
    """
    if not snaps:
        raise SingleFrameError("no snap to combine")
    if len(snaps) == 1:
        return snaps[0]
    if len(snaps) != 2:
        raise SingleFrameError(f"expected one or two snaps, got {len(snaps)}")
    a, b = snaps
    if a.image.shape != b.image.shape:
        raise SingleFrameError(f"snap shapes differ: {a.image.shape} and {b.image.shape}")
    good_a = (a.mask & bad_mask) == 0
    good_b = (b.mask & bad_mask) == 0
    n_good = good_a.astype(np.float32) + good_b
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(n_good > 0, 1.0 / (0.5 * n_good), 0.0).astype(np.float32)
        image = (np.where(good_a, a.image, 0) + np.where(good_b, b.image, 0)) * scale
        variance = (np.where(good_a, a.variance, 0) + np.where(good_b, b.variance, 0)) * scale**2
    mask = a.mask | b.mask
    mask[n_good == 0] |= np.int32(bits("NO_DATA"))
    vi = a.visit_info
    if vi is not None and b.visit_info is not None:
        vi = dataclasses.replace(vi, exposure_time=vi.exposure_time + b.visit_info.exposure_time,
                                 mjd=0.5 * (vi.mjd + b.visit_info.mjd))
    return dataclasses.replace(a, image=image, mask=mask, variance=variance, visit_info=vi)


def _seed(exposure: Exposure, detector: int) -> int:
    vi = exposure.visit_info
    visit = int(vi.visit) if vi is not None and vi.visit is not None else 0
    return (visit * 1000 + int(detector)) % (2**32)


def _carry_calib_flags(ra, dec, calib_sources: pa.Table | None, radius_arcsec: float
                       ) -> dict[str, np.ndarray]:
    """``calib_*`` flags of the nearest calibration source within the radius."""
    n = len(ra)
    out = {name: np.zeros(n, dtype=bool) for name in _CALIB_FLAGS}
    if calib_sources is None or calib_sources.num_rows == 0:
        return out
    ok = np.isfinite(ra) & np.isfinite(dec)
    ref = radec_to_xyz(column(calib_sources, "coord_ra"), column(calib_sources, "coord_dec"))
    good_ref = np.all(np.isfinite(ref), axis=1)
    if not good_ref.any() or not ok.any():
        return out
    tree = cKDTree(ref[good_ref])
    chord = 2 * np.sin(np.radians(radius_arcsec / 3600) / 2)
    dist, j = tree.query(radec_to_xyz(ra[ok], dec[ok]), distance_upper_bound=chord)
    hit = np.isfinite(dist)
    rows = np.flatnonzero(good_ref)[j[hit]]
    targets = np.flatnonzero(ok)[hit]
    for name in _CALIB_FLAGS:
        if name in calib_sources.column_names:
            out[name][targets] = column(calib_sources, name)[rows].astype(bool)
    return out


def _psf_star_rows(sources: pa.Table) -> pa.Table:
    """The calibration PSF stars among the final sources, with slot names (for the summary)."""
    from .catalogs import psf_star_table

    detector = int(column(sources, "detector")[0]) if sources.num_rows else 0
    return psf_star_table(sources, column(sources, "calib_psf_candidate"), detector=detector)
