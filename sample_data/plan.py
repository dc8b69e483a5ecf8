"""The survey plan: camera, visits and sky drawn from a seed, before any pixel.

A :class:`SurveyPlan` holds everything true about a simulated survey except
the pixel noise and the cosmic rays of each exposure (drawn when a
detector-visit is rendered).  It is cheap to build (a fraction of a second
for the demo), so tests use it directly as the in-memory truth.

Random streams (``numpy.random.SeedSequence(seed, spawn_key=key)``):

===========================  ======================================
key                          draws
===========================  ======================================
``(1,)``                     camera electronics and defects
``(2, visit_index)``         one visit (pointing, seeing, sky...)
``(3, 0|1|2)``               bright stars, faint stars, galaxies
``(4,)``                     reference-catalog errors
``(5, visit_index, det)``    pixel noise and cosmic rays
``(6, night)``               start of each night
``(7,)``                     the transient
===========================  ======================================

so the order in which detector-visits are rendered never changes a pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .artefacts import Ghost
from .camera import Camera, build_camera
from .config import SurveyConfig
from .observing import Visit, plan_visits, rng_stream
from .optics import distort, field_to_sky, sky_to_field, undistort
from .sky import HEALPIX_ORDER, KIND_STAR, KIND_TRANSIENT, SkyCatalog, make_sky
from .wcs import detector_wcs

__all__ = ["SurveyPlan", "plan_survey"]


@dataclass(frozen=True, eq=False)
class SurveyPlan:
    """A simulated survey, short of its pixels.

    Attributes
    ----------
    config : SurveyConfig
        The configuration it was drawn from.
    seed : int
        The seed.
    camera : Camera
        Detectors with electronics and defects.
    visits : tuple of Visit
        Per-visit truth, in observing order.
    catalog : SkyCatalog
        Every object (stars, galaxies, the transient).
    sky_center : tuple of float
        Centre of the region holding faint stars and galaxies, deg.
    sky_radius : float
        Its radius, deg.
    refcat_pixels : numpy.ndarray
        Nested order-6 HEALPix pixels of the reference catalog.
    """

    config: SurveyConfig
    seed: int
    camera: Camera
    visits: tuple[Visit, ...]
    catalog: SkyCatalog
    sky_center: tuple[float, float]
    sky_radius: float
    refcat_pixels: np.ndarray

    def __repr__(self) -> str:
        return (f"SurveyPlan({self.config.name!r}, seed={self.seed}, {self.camera!r}, "
                f"{len(self.visits)} visits, {self.catalog!r})")

    @property
    def instrument(self) -> str:
        """Instrument name."""
        return self.camera.name

    def visit(self, visit_id: int) -> Visit:
        """The visit with this id."""
        for v in self.visits:
            if v.id == visit_id:
                return v
        raise KeyError(f"no visit {visit_id} in this survey")

    def true_wcs(self, visit: Visit, detector: int):
        """The exact TAN-SIP WCS of a detector in a visit (astropy, 0-based pixels)."""
        return detector_wcs(self.camera, detector, visit.ra, visit.dec, visit.rotation)

    def header_wcs(self, visit: Visit, detector: int):
        """The WCS written in the image header (pointing-model boresight and rotation)."""
        return detector_wcs(self.camera, detector, visit.header_ra, visit.header_dec,
                            visit.header_rotation)

    def sky_to_focal_plane(self, visit: Visit, ra, dec) -> tuple[np.ndarray, np.ndarray]:
        """True focal-plane positions (mm) of sky positions (deg) in a visit."""
        tx, ty = sky_to_field(ra, dec, visit.ra, visit.dec, visit.rotation,
                              self.camera.plate_scale)
        return undistort(tx, ty, self.camera.config.distortion)

    def sky_to_pixel(self, visit: Visit, detector: int, ra, dec) -> tuple[np.ndarray, np.ndarray]:
        """True pixel positions on a detector of sky positions, by the exact optical model."""
        fx, fy = self.sky_to_focal_plane(visit, ra, dec)
        return self.camera.focal_plane_to_pixel(detector, fx, fy)

    def pixel_to_sky(self, visit: Visit, detector: int, x, y) -> tuple[np.ndarray, np.ndarray]:
        """True sky positions (deg) of pixel positions on a detector."""
        fx, fy = self.camera.pixel_to_focal_plane(detector, x, y)
        tx, ty = distort(fx, fy, self.camera.config.distortion)
        return field_to_sky(tx, ty, visit.ra, visit.dec, visit.rotation, self.camera.plate_scale)

    def zero_point(self, visit: Visit, detector: int) -> float:
        """True zero point: AB magnitude of 1 ADU in this detector-visit."""
        det = self.camera.detectors[detector]
        return float(visit.zero_point + 2.5 * np.log10(det.qe / det.gain))


def _healpix():
    from astropy_healpix import HEALPix

    return HEALPix(nside=2**HEALPIX_ORDER, order="nested")


def _sky_region(config: SurveyConfig, camera: Camera) -> tuple[tuple[float, float], float]:
    obs = config.observing
    r_mm = camera.corner_radius
    r_field = r_mm * (1.0 + camera.config.distortion * r_mm**2) * camera.plate_scale
    radius = (obs.dither_radius * 60.0 + r_field + 5.0 * obs.pointing_error
              + config.sky.margin * 60.0) / 3600.0
    return (obs.field_ra, obs.field_dec), radius


def _footprint_points(plan: SurveyPlan, visit: Visit, n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """True sky positions of an n x n grid on every detector of a visit."""
    ras, decs = [], []
    for det in plan.camera.detectors:
        gx = np.linspace(-0.5, det.width - 0.5, n)
        gy = np.linspace(-0.5, det.height - 0.5, n)
        xx, yy = np.meshgrid(gx, gy)
        ra, dec = plan.pixel_to_sky(visit, det.id, xx.ravel(), yy.ravel())
        ras.append(ra)
        decs.append(dec)
    return np.concatenate(ras), np.concatenate(decs)


def _check_coverage(plan: SurveyPlan) -> None:
    import astropy.units as u

    hp = _healpix()
    covered = set(int(p) for p in plan.refcat_pixels)
    for visit in plan.visits:
        ra, dec = _footprint_points(plan, visit)
        pix = hp.lonlat_to_healpix(ra * u.deg, dec * u.deg)
        missing = sorted(set(int(p) for p in np.unique(pix)) - covered)
        if missing:
            raise ValueError(
                f"visit {visit.id} at (ra, dec) = ({visit.ra:.4f}, {visit.dec:.4f}) lies outside "
                f"the reference catalog coverage: HEALPix pixels {missing} are not in "
                f"{sorted(covered)}")


def _add_transient(plan: SurveyPlan) -> SurveyPlan:
    index = plan.config.artefacts.transient_visit
    if index is None or index >= len(plan.visits):
        return plan
    visit = plan.visits[index]
    rng = rng_stream(plan.seed, 7)
    det = plan.camera.detectors[int(rng.integers(len(plan.camera.detectors)))]
    margin = min(100, det.width // 4, det.height // 4)
    x = rng.uniform(margin, det.width - 1 - margin)
    y = rng.uniform(margin, det.height - 1 - margin)
    ra, dec = plan.pixel_to_sky(visit, det.id, x, y)
    cat = plan.catalog
    mags = {b: np.array([np.nan]) for b in cat.mag}
    mags[visit.band] = np.array([plan.config.artefacts.transient_mag])
    nan = np.array([np.nan])
    transient = SkyCatalog(
        id=np.array([int(cat.id.max(initial=0)) + 1]), kind=np.array([KIND_TRANSIENT], np.int8),
        ra=np.atleast_1d(ra), dec=np.atleast_1d(dec), mag=mags, sersic_n=nan,
        half_light_radius=nan, axis_ratio=nan, position_angle=nan,
        visit=np.array([visit.id], np.int64))
    return replace(plan, catalog=SkyCatalog.concatenate([cat, transient]))


def _add_ghost(plan: SurveyPlan) -> SurveyPlan:
    art = plan.config.artefacts
    index = art.ghost_visit
    if index is None or index >= len(plan.visits):
        return plan
    visit = plan.visits[index]
    cat = plan.catalog
    mag = cat.mag[visit.band]
    bright = np.flatnonzero((cat.kind == KIND_STAR) & (mag < 17.0))
    if bright.size == 0:
        return plan
    fx, fy = plan.sky_to_focal_plane(visit, cat.ra[bright], cat.dec[bright])
    hx, hy = plan.camera.half_extent
    inside = (np.abs(fx) < hx) & (np.abs(fy) < hy)
    if not inside.any():
        return plan
    best = np.flatnonzero(inside)[np.argmin(mag[bright][inside])]
    ghost = Ghost(star_id=int(cat.id[bright[best]]), x=float(-0.9 * fx[best]),
                  y=float(-0.9 * fy[best]), fraction=art.ghost_fraction)
    visits = list(plan.visits)
    visits[index] = replace(visit, ghost=ghost)
    return replace(plan, visits=tuple(visits))


def plan_survey(config: SurveyConfig, seed: int) -> SurveyPlan:
    """Draw a survey: camera, visits, sky, transient and ghost.

    Parameters
    ----------
    config : SurveyConfig
        What to simulate (validated here).
    seed : int
        Any non-negative integer; the same seed gives the same survey.

    Returns
    -------
    SurveyPlan

    Raises
    ------
    ValueError
        For an inconsistent configuration, or a field that leaves the
        reference catalog's coverage.
    """
    import astropy.units as u

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    config.validate()
    camera = build_camera(config.camera, rng_stream(seed, 1))
    visits = plan_visits(config, camera, seed)
    center, radius = _sky_region(config, camera)
    hp = _healpix()
    auto = np.asarray(hp.cone_search_lonlat(center[0] * u.deg, center[1] * u.deg,
                                            radius * u.deg), dtype=np.int64)
    chosen = config.refcat.healpix
    refcat_pixels = np.unique(auto if chosen is None else np.asarray(chosen, dtype=np.int64))
    if refcat_pixels.size and (refcat_pixels.min() < 0 or refcat_pixels.max() >= hp.npix):
        raise ValueError(f"refcat.healpix must be order-{HEALPIX_ORDER} pixels in "
                         f"[0, {hp.npix}), got {sorted(refcat_pixels.tolist())}")
    catalog = make_sky(config.sky, center=center, radius_deg=radius,
                       bright_pixels=np.union1d(auto, refcat_pixels),
                       bright_limit=config.refcat.mag_limit,
                       rngs=tuple(rng_stream(seed, 3, k) for k in range(3)))
    plan = SurveyPlan(config=config, seed=seed, camera=camera, visits=visits, catalog=catalog,
                      sky_center=center, sky_radius=radius, refcat_pixels=refcat_pixels)
    _check_coverage(plan)
    return _add_ghost(_add_transient(plan))
