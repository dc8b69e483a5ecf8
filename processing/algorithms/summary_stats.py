"""Summary statistics of a detector image (``ComputeExposureSummaryStatsTask``, 1.5).

One function per group of ``reference/algorithms.md`` 1.5, each resetting its
fields before computing them, so a task can recompute one group when one
component changes (as ``UpdateVisitSummaryTask`` does):

====  ===================================  ===========================================
A     :func:`update_psf_stats`             PSF model, PSF-star table, PSF grid
B     :func:`update_wcs_stats`             corners, centre, pixel scale, zenith distance
C     :func:`update_photo_calib_stats`     zero point
D     :func:`update_background_stats`      sky level
E     :func:`update_masked_image_stats`    clipped noise and mean variance
F     :func:`update_magnitude_limit_stats` 5-sigma point-source depth
G     :func:`update_effective_time_stats`  effective exposure time and its factors
====  ===================================  ===========================================

:func:`compute_summary_stats` runs them in Rubin's order (``expTime`` from the
visit info, then A-G, then ``astromOffsetMean/Std`` and the newer optional
fields from the exposure metadata).  The record and config live in
:mod:`~processing.algorithms.summary_fields` (fiducials and their provenance
documented there) and group A in :mod:`~processing.algorithms.summary_psf`;
both are re-exported here.

Decisions:

* ``pixelScale`` is the square root of the sky area of a pixel at the centre,
  from the WCS's local Jacobian (central differences of +-0.5 pixel on the
  unit sphere), as afw's ``getPixelScale``.
* ``zenithDistance``: astropy ``AltAz`` at the detector centre, no refraction,
  observing time ``VisitInfo.mjd`` read as **TAI** (drp's convention).  Rubin
  passes its TAI MJD to astropy as UTC, i.e. 37 s off (up to ~0.15 deg).
* ``magLim`` uses the single ``DetectorInfo.gain`` / ``read_noise`` (drp keeps
  one amplifier's worth of electronics per detector).
* ``effTime`` follows 1.5.G: ``10^(0.8 (magLim - fiducialMagLim)) *
  fiducialExpTime``; the three factors are reported alongside.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from store.calib import PhotoCalib
from store.exposure import DetectorInfo, Exposure, VisitInfo
from store.geom import Box
from store.masks import bits

from .stats import clipped_stats
from .summary_fields import (
    SUMMARY_FIELDS,
    ExposureSummaryStats,
    SummaryStatsConfig,
    summary_descriptions,
    summary_units,
)
from .summary_psf import PSF_STAT_FIELDS, psf_grid_values, update_psf_stats

__all__ = [
    "PSF_STAT_FIELDS",
    "SUMMARY_FIELDS",
    "ExposureSummaryStats",
    "SummaryStatsConfig",
    "compute_magnitude_limit",
    "compute_summary_stats",
    "psf_grid_values",
    "summary_descriptions",
    "summary_units",
    "update_background_stats",
    "update_effective_time_stats",
    "update_magnitude_limit_stats",
    "update_masked_image_stats",
    "update_photo_calib_stats",
    "update_psf_stats",
    "update_wcs_stats",
]

_log = logging.getLogger(__name__)
_NAN = float("nan")

#: Exposure metadata key -> summary field, copied by :func:`compute_summary_stats`.
_METADATA_FIELDS = {
    "SFM_ASTROM_OFFSET_MEAN": "astromOffsetMean",
    "SFM_ASTROM_OFFSET_STD": "astromOffsetStd",
    "PSFADAPTIVETHRESHOLDVALUE": "psfAdaptiveThresholdValue",
    "PSFADAPTIVEINCLUDETHRESHOLDMULTIPLIER": "psfAdaptiveIncludeThresholdMultiplier",
    "REFCATSOURCEDENSITY": "refCatSourceDensity",
}


# ---------------------------------------------------------------------------------- B: WCS


def _unit_vectors(wcs, x, y) -> np.ndarray:
    ra, dec = wcs.all_pix2world(np.asarray(x, float), np.asarray(y, float), 0)
    ra, dec = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def _pixel_scale_arcsec(wcs, x: float, y: float) -> float:
    """Square root of the sky area of one pixel at ``(x, y)``, arcsec."""
    h = 0.5
    v = _unit_vectors(wcs, [x + h, x - h, x, x], [y, y, y + h, y - h])
    dx = (v[0] - v[1]) / (2 * h)
    dy = (v[2] - v[3]) / (2 * h)
    area_sr = float(np.linalg.norm(np.cross(dx, dy)))
    return math.degrees(math.sqrt(area_sr)) * 3600.0


def _zenith_distance(ra: float, dec: float, visit_info: VisitInfo) -> float:
    from astropy import units as u
    from astropy.coordinates import AltAz, EarthLocation, SkyCoord
    from astropy.time import Time
    from astropy.utils import iers

    # Never reach for the network (closed machines, CI): the bundled IERS
    # tables cover the survey's dates, and a stale-table warning is harmless.
    iers.conf.auto_download = False
    lon, lat, elevation = visit_info.observatory
    location = EarthLocation(lon=lon * u.deg, lat=lat * u.deg, height=elevation * u.m)
    time = Time(visit_info.mjd, format="mjd", scale="tai")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # IERS / ERFA "dubious year" chatter
        altaz = SkyCoord(ra * u.deg, dec * u.deg).transform_to(
            AltAz(obstime=time, location=location))
    return float(90.0 - altaz.alt.deg)


def update_wcs_stats(summary: ExposureSummaryStats, wcs, bbox: Box,
                     visit_info: VisitInfo | None) -> None:
    """Recompute the WCS group in place (1.5.B): corners, centre, pixel scale, zenith distance.

    Parameters
    ----------
    summary : ExposureSummaryStats
        Updated in place; ``raCorners``, ``decCorners``, ``ra``, ``dec``,
        ``pixelScale``, ``zenithDistance`` are reset to NaN first.
    wcs : astropy.wcs.WCS or None
        Maps parent pixel coordinates (0-based) to ICRS degrees.
    bbox : store.geom.Box
        Pixel box of the image; corners are its outer pixel edges, in afw order
        (xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax).
    visit_info : store.exposure.VisitInfo or None
        Mid-exposure MJD (TAI) and observatory location for ``zenithDistance``
        (deg); NaN when missing or the MJD is not finite.
    """
    summary.reset("raCorners", "decCorners", "ra", "dec", "pixelScale", "zenithDistance")
    if wcs is None:
        return
    corners = bbox.corners()
    ra_c, dec_c = wcs.all_pix2world(corners[:, 0], corners[:, 1], 0)
    summary.raCorners = tuple(float(v) for v in ra_c)
    summary.decCorners = tuple(float(v) for v in dec_c)
    cx, cy = bbox.center
    ra, dec = wcs.all_pix2world([cx], [cy], 0)
    summary.ra, summary.dec = float(ra[0]), float(dec[0])
    summary.pixelScale = _pixel_scale_arcsec(wcs, cx, cy)
    if visit_info is not None and math.isfinite(visit_info.mjd):
        summary.zenithDistance = _zenith_distance(summary.ra, summary.dec, visit_info)


# ---------------------------------------------------------------------- C, D, E: calibrations


def update_photo_calib_stats(summary: ExposureSummaryStats,
                             photo_calib: PhotoCalib | None) -> None:
    """Set ``zeroPoint = 2.5 log10(3631e9 nJy / calibrationMean)`` (mag; NaN without calibration).

    The zero point is the AB magnitude of one instrumental count for the whole
    exposure (it includes the exposure time).
    """
    summary.zeroPoint = _NAN if photo_calib is None else float(photo_calib.zero_point)


def update_background_stats(summary: ExposureSummaryStats, background) -> None:
    """Set ``skyBg`` = sum over background layers of the median finite bin value (ADU).

    Parameters
    ----------
    summary : ExposureSummaryStats
        Updated in place.
    background : processing.algorithms.background.BackgroundList or None
        Anything with ``sky_level()``; None gives NaN.
    """
    summary.skyBg = _NAN if background is None else float(background.sky_level())


def update_masked_image_stats(summary: ExposureSummaryStats, image: np.ndarray | None,
                              mask: np.ndarray | None = None,
                              variance: np.ndarray | None = None,
                              config: SummaryStatsConfig | None = None) -> None:
    """Set ``skyNoise`` (STDEVCLIP of the image) and ``meanVar`` (MEANCLIP of the variance).

    Parameters
    ----------
    summary : ExposureSummaryStats
        Updated in place (both reset to NaN first).
    image, variance : numpy.ndarray or None
        Same-shape planes (image units, units squared); a None image resets
        both, a None variance leaves ``meanVar`` NaN.
    mask : numpy.ndarray, optional
        Integer mask; pixels with ``config.bad_mask_planes`` are ignored.
    config : SummaryStatsConfig, optional
        ``sigma_clip``, ``clip_iter`` and ``bad_mask_planes``.
    """
    config = config or SummaryStatsConfig()
    summary.reset("skyNoise", "meanVar")
    if image is None:
        return
    kwargs: dict[str, Any] = {"n_sigma": config.sigma_clip, "n_iter": config.clip_iter,
                              "mask": mask, "and_mask": bits(config.bad_mask_planes)}
    summary.skyNoise = float(clipped_stats(image, **kwargs).stdev)
    if variance is not None:
        summary.meanVar = float(clipped_stats(variance, **kwargs).mean)


# ------------------------------------------------------------------------- F, G: depth


def compute_magnitude_limit(psf_area: float, sky_bg: float, zero_point: float,
                            read_noise: float, gain: float, snr: float) -> float:
    """Magnitude of a point source detected at ``snr`` (LSE-40 / SMTN-002 model).

    Solves ``snr = C / sqrt(C / g + (B / g + sigma^2) N_eff)`` for the source
    counts ``C`` and returns ``zero_point - 2.5 log10(C)``.

    Parameters
    ----------
    psf_area : float
        Effective PSF area ``N_eff``, pixels.
    sky_bg : float
        Sky per pixel ``B``, image units (ADU, or e- with ``gain`` 1).
    zero_point : float
        Magnitude of one count in the whole exposure.
    read_noise : float
        Read noise ``sigma`` per pixel, image units.
    gain : float
        e- per image unit.
    snr : float
        Required signal-to-noise ratio.

    Returns
    -------
    float
        The magnitude limit (NaN if any input is NaN).

    Examples
    --------
    >>> round(compute_magnitude_limit(30.6, 598.0, 31.50, 5.5, 1.6, 5.0), 2)
    24.62
    """
    background = (sky_bg / gain + read_noise**2) * psf_area
    counts = snr**2 / (2.0 * gain) + math.sqrt(snr**4 / (4.0 * gain**2) + snr**2 * background)
    return float(zero_point - 2.5 * math.log10(counts))


def update_magnitude_limit_stats(summary: ExposureSummaryStats,
                                 detector_info: DetectorInfo | None,
                                 config: SummaryStatsConfig | None = None, *,
                                 metadata: Mapping[str, Any] | None = None) -> None:
    """Set ``magLim`` from ``psfArea``, ``skyBg``, ``zeroPoint`` and the detector electronics (1.5.F).

    Run after groups A, C and D.

    Parameters
    ----------
    summary : ExposureSummaryStats
        Updated in place.
    detector_info : store.exposure.DetectorInfo or None
        ``gain`` (e-/ADU) and ``read_noise`` (e-); None gives NaN.  A NaN read
        noise counts as 0 (with a warning); a NaN gain gives NaN.
    config : SummaryStatsConfig, optional
        ``mag_lim_snr`` (default 5).
    metadata : mapping, optional
        Exposure metadata; ``LSST ISR UNITS == "electron"`` sets the gain to 1.
    """
    config = config or SummaryStatsConfig()
    summary.magLim = _NAN
    if detector_info is None:
        return
    read_noise = float(detector_info.read_noise)
    if math.isnan(read_noise):
        _log.warning("detector %s has no read noise; magLim uses 0", detector_info.id)
        read_noise = 0.0
    gain = float(detector_info.gain)
    if math.isnan(gain):
        _log.warning("detector %s has no gain; magLim is NaN", detector_info.id)
        return
    if _lookup(metadata or {}, "LSST ISR UNITS") == "electron":
        gain = 1.0
    values = (summary.psfArea, summary.skyBg, summary.zeroPoint)
    if any(math.isnan(v) for v in values):
        return
    summary.magLim = compute_magnitude_limit(*values, read_noise / gain, gain,
                                             config.mag_lim_snr)


def update_effective_time_stats(summary: ExposureSummaryStats, band: str | None,
                                exp_time: float,
                                config: SummaryStatsConfig | None = None) -> None:
    """Set ``effTime`` and its three factors (1.5.G); run after :func:`update_magnitude_limit_stats`.

    * ``effTimePsfSigmaScale = (psfSigma / fiducial_psf_sigma)^-2``
    * ``effTimeZeroPointScale = min(10^(-0.8 (fiducial_zero_point - (zeroPoint -
      2.5 log10 t))), max_effective_transparency)``
    * ``effTimeSkyBgScale = fiducial_sky_background / (skyBg / t)``
    * ``effTime = 10^(0.8 (magLim - fiducial_mag_lim)) * fiducial_exp_time`` (s)

    Each is NaN when an input is NaN or the band has no fiducial.

    Parameters
    ----------
    summary : ExposureSummaryStats
        Updated in place (the four fields are reset first).
    band : str or None
        Band of the exposure; None leaves everything NaN.
    exp_time : float
        Exposure time ``t``, seconds.
    config : SummaryStatsConfig, optional
        The per-band fiducials.
    """
    config = config or SummaryStatsConfig()
    summary.reset("effTime", "effTimePsfSigmaScale", "effTimeSkyBgScale",
                  "effTimeZeroPointScale")
    if band is None:
        _log.warning("exposure has no band; effTime not computed")
        return
    t = float(exp_time)
    with np.errstate(divide="ignore", invalid="ignore"):
        if band in config.fiducial_psf_sigma:
            summary.effTimePsfSigmaScale = float(
                (summary.psfSigma / config.fiducial_psf_sigma[band]) ** -2)
        if band in config.fiducial_zero_point and t > 0:
            diff = config.fiducial_zero_point[band] - (summary.zeroPoint - 2.5 * math.log10(t))
            summary.effTimeZeroPointScale = float(
                min(10 ** (-0.8 * diff), config.max_effective_transparency)
                if not math.isnan(diff) else _NAN)
        if band in config.fiducial_sky_background:
            summary.effTimeSkyBgScale = float(
                np.float64(config.fiducial_sky_background[band]) / (summary.skyBg / t))
        if band in config.fiducial_mag_lim and band in config.fiducial_exp_time:
            summary.effTime = float(10 ** (0.8 * (summary.magLim - config.fiducial_mag_lim[band]))
                                    * config.fiducial_exp_time[band])


# ------------------------------------------------------------------------------- the driver


def _lookup(metadata: Mapping[str, Any], key: str):
    """Case-insensitive metadata lookup, with or without a ``HIERARCH`` prefix."""
    key = key.upper()
    for k, v in metadata.items():
        k = str(k).upper()
        if k == key or k == f"HIERARCH {key}":
            return v
    return None


def compute_summary_stats(exposure: Exposure, psf_stars: Any = None, background=None,
                          config: SummaryStatsConfig | None = None) -> ExposureSummaryStats:
    """All summary statistics of one detector image (``ComputeExposureSummaryStatsTask.run``).

    Parameters
    ----------
    exposure : store.exposure.Exposure
        Background-subtracted image with its mask, variance, PSF, WCS,
        PhotoCalib, aperture corrections, visit and detector info (each may be
        None; the statistics depending on it are then NaN).
    psf_stars : table-like, optional
        PSF-star table of this detector (see :func:`update_psf_stats`).
    background : BackgroundList, optional
        The subtracted background (for ``skyBg``).
    config : SummaryStatsConfig, optional
        Settings.

    Returns
    -------
    ExposureSummaryStats
    """
    config = config or SummaryStatsConfig()
    summary = ExposureSummaryStats()
    vi = exposure.visit_info
    summary.expTime = _NAN if vi is None else float(vi.exposure_time)
    bbox = exposure.bbox
    update_psf_stats(summary, exposure.psf, bbox, psf_stars, exposure.mask,
                     exposure.ap_corr_map, config)
    update_wcs_stats(summary, exposure.wcs, bbox, vi)
    update_photo_calib_stats(summary, exposure.photo_calib)
    update_background_stats(summary, background)
    update_masked_image_stats(summary, exposure.image, exposure.mask, exposure.variance, config)
    update_magnitude_limit_stats(summary, exposure.detector, config, metadata=exposure.metadata)
    update_effective_time_stats(summary, exposure.band, summary.expTime, config)
    for key, name in _METADATA_FIELDS.items():
        value = _lookup(exposure.metadata, key)
        if value is not None:
            setattr(summary, name, float(value))
    return summary
