"""One detector-visit from plan to ``post_isr_image``: sources, sky, artefacts, noise.

Order of operations (electrons until the last step):

1. expected signal: sky (linear over the focal plane) + stars + galaxies +
   the transient (its visit only) + satellite trail + ghost, all scaled by
   the detector's throughput;
2. Poisson noise on the expected signal;
3. defects (hot pixels and columns gain charge, dead columns lose 80 %);
4. cosmic rays;
5. bleeding of charge beyond the full well along columns;
6. Gaussian read noise; division by the gain gives ADU (float32), the
   background is *not* subtracted (ISR does not subtract sky);
7. pixels at the full well or at/above the saturation level are set to the
   saturation level and masked SAT; defects are masked BAD; cosmic rays are
   not masked.

The variance plane follows Rubin's ISR: it is computed from the *image*,
``max(image, 0) / gain + (read_noise / gain)^2`` ADU^2, so it includes the
noise of the sources, of the cosmic rays and of the defects, as in real data.

Every random draw comes from the stream ``(5, visit_index, detector)``, so
the pixels do not depend on which other detector-visits were rendered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from store.exposure import DetectorInfo, Exposure, VisitInfo
from store.geom import Box
from store.masks import bits

from .artefacts import CosmicRays, bleed, cosmic_rays, render_ghost, render_satellite
from .observing import RUBIN_SITE, Visit, rng_stream
from .plan import SurveyPlan
from .render import render_galaxies, render_point_sources
from .sky import KIND_GALAXY, KIND_STAR, KIND_TRANSIENT

__all__ = ["RenderedExposure", "render_exposure", "visit_info"]

# Objects whose centre is farther than this outside a detector are not rendered
# on it (the largest stamps are ~180 pixels).
_SELECT_MARGIN = 200.0


@dataclass(frozen=True, eq=False)
class RenderedExposure:
    """A rendered detector-visit and what went into it.

    Attributes
    ----------
    exposure : Exposure
        The ``post_isr_image``: image (ADU), mask, variance, header WCS.
    visit : Visit
        The visit's truth.
    detector : int
        Detector id.
    rows : numpy.ndarray
        Catalog row indices of the objects rendered (centre within 200 pixels).
    x, y : numpy.ndarray
        Their true pixel positions.
    flux_adu : numpy.ndarray
        Their true total fluxes, ADU (NaN if absent in the band).
    cosmic_rays : CosmicRays
        The cosmic rays added.
    model : numpy.ndarray or None
        Expected signal before noise, e- (only with ``keep_model=True``).
    """

    exposure: Exposure
    visit: Visit
    detector: int
    rows: np.ndarray
    x: np.ndarray
    y: np.ndarray
    flux_adu: np.ndarray
    cosmic_rays: CosmicRays
    model: np.ndarray | None = None


def visit_info(plan: SurveyPlan, visit: Visit) -> VisitInfo:
    """The :class:`store.exposure.VisitInfo` of a visit, as the telescope reports it."""
    return VisitInfo(
        visit=visit.id, instrument=plan.instrument, band=visit.band,
        physical_filter=visit.physical_filter, exposure_time=visit.exposure_time,
        dark_time=visit.dark_time, mjd=visit.mjd, mjd_begin=visit.mjd_begin,
        boresight_ra=visit.header_ra, boresight_dec=visit.header_dec,
        rotation_angle=visit.header_rotation, airmass=visit.airmass, azimuth=visit.azimuth,
        altitude=visit.altitude, day_obs=visit.day_obs, observatory=RUBIN_SITE,
    )


def _sky_image(plan: SurveyPlan, visit: Visit, detector: int) -> np.ndarray:
    det = plan.camera.detectors[detector]
    fx, fy = plan.camera.pixel_to_focal_plane(detector, np.arange(det.width), np.arange(det.height))
    gx, gy = visit.sky_gradient
    level = visit.sky_level * det.qe
    return level * (1.0 + gx * fx[None, :] + gy * fy[:, None])


def render_exposure(plan: SurveyPlan, visit_index: int, detector: int, *, noise: bool = True,
                    cosmic: bool = True, defects: bool = True, sky: bool = True,
                    keep_model: bool = False, n_gauss: int = 3) -> RenderedExposure:
    """Render one detector of one visit.

    Parameters
    ----------
    plan : SurveyPlan
        The survey.
    visit_index : int
        Index of the visit in ``plan.visits``.
    detector : int
        Detector id.
    noise : bool
        Poisson and read noise (off: the image is the expected signal).
    cosmic : bool
        Add cosmic rays.
    defects : bool
        Spoil (and mask) bad columns and hot pixels.
    sky : bool
        Include the sky background.
    keep_model : bool
        Return the expected signal (e-) too.
    n_gauss : int
        Gauss-Legendre points per pixel axis for stars.

    Returns
    -------
    RenderedExposure
    """
    visit = plan.visits[visit_index]
    cam = plan.camera
    det = cam.detectors[detector]
    cat = plan.catalog
    pixel_size = cam.config.pixel_size

    x, y = plan.sky_to_pixel(visit, detector, cat.ra, cat.dec)
    near = ((x > -_SELECT_MARGIN) & (x < det.width + _SELECT_MARGIN)
            & (y > -_SELECT_MARGIN) & (y < det.height + _SELECT_MARGIN))
    near &= (cat.kind != KIND_TRANSIENT) | (cat.visit == visit.id)
    rows = np.flatnonzero(near)
    x, y = x[rows], y[rows]
    zp_e = visit.zero_point + 2.5 * np.log10(det.qe)
    flux_e = 10 ** (-0.4 * (cat.mag[visit.band][rows] - zp_e))
    fx, fy = cam.pixel_to_focal_plane(detector, x, y)
    kind = cat.kind[rows]
    present = np.isfinite(flux_e)

    model = _sky_image(plan, visit, detector) if sky else np.zeros((det.height, det.width))
    point = present & ((kind == KIND_STAR) | (kind == KIND_TRANSIENT))
    render_point_sources(model, x[point], y[point], flux_e[point], visit.psf, fx[point],
                         fy[point], n_gauss=n_gauss)
    gal = present & (kind == KIND_GALAXY)
    g = rows[gal]
    theta = np.radians(90.0 + cat.position_angle[g] - visit.rotation)
    render_galaxies(model, x[gal], y[gal], flux_e[gal], cat.sersic_n[g],
                    cat.half_light_radius[g] / cam.config.pixel_scale, cat.axis_ratio[g], theta,
                    visit.psf, fx[gal], fy[gal], truncation=plan.config.sky.galaxy_truncation)
    origin = cam.pixel_to_focal_plane(detector, 0.0, 0.0)
    if visit.satellite is not None:
        render_satellite(model, visit.satellite, origin, pixel_size, scale=det.qe)
    if visit.ghost is not None:
        star = np.flatnonzero(cat.id == visit.ghost.star_id)[0]
        star_flux = 10 ** (-0.4 * (cat.mag[visit.band][star] - zp_e))
        render_ghost(model, visit.ghost, star_flux, origin, pixel_size)

    rng = rng_stream(plan.seed, 5, visit_index, detector)
    image_e = rng.poisson(model).astype(np.float64) if noise else model.copy()
    if defects:
        det.apply_defects(image_e)
    crs = cosmic_rays(rng, image_e.shape, exposure_time=visit.exposure_time,
                      pixel_size_mm=pixel_size,
                      rate=plan.config.artefacts.cosmic_ray_rate if cosmic else 0.0)
    np.add.at(image_e.reshape(-1), crs.pixels, crs.values)
    saturated = bleed(image_e, det.full_well)
    if noise:
        image_e += det.read_noise * rng.standard_normal(image_e.shape)
    image = (image_e / det.gain).astype(np.float32)
    del image_e
    saturated |= image >= det.saturation
    image[saturated] = det.saturation

    mask = np.zeros(image.shape, dtype=np.int32)
    if defects:
        mask[det.defect_mask()] |= bits("BAD")
    mask[saturated] |= bits("SAT")
    variance = np.maximum(image, 0.0) / np.float32(det.gain)
    variance += np.float32((det.read_noise / det.gain) ** 2)

    exposure = Exposure(
        image=image, mask=mask, variance=variance, wcs=plan.header_wcs(visit, detector),
        visit_info=visit_info(plan, visit),
        detector=DetectorInfo(id=det.id, name=det.name, bbox=Box(0, 0, det.width, det.height),
                              gain=det.gain, read_noise=det.read_noise,
                              saturation=det.saturation),
        units="adu",
        metadata={"ORIGIN": "drp sample_data", "SIMPRSET": plan.config.name},
    )
    return RenderedExposure(exposure=exposure, visit=visit, detector=detector, rows=rows, x=x,
                            y=y, flux_adu=flux_e / det.gain, cosmic_rays=crs,
                            model=model if keep_model else None)
