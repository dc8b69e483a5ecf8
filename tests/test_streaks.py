"""Streak masking on simulated exposures whose satellite trails are known exactly."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from processing.algorithms.detection import detect_sources
from processing.algorithms.streaks import StreakConfig, find_streaks, mask_streaks
from sample_data import PRESETS, SkyConfig, plan_survey, render_exposure
from sample_data.artefacts import SatelliteTrail, render_satellite
from sample_data.sky import KIND_STAR
from store.masks import bits

TINY = PRESETS["tiny"]
SIZE = 1024

#: (angle deg, width in PSF sigmas, peak e-/pixel, point it passes through as fractions
#: of the detector): the simulator's range, faint and narrow to bright and wide, steep,
#: shallow and diagonal, through the middle and off centre.
TRAILS = [
    (31.0, 1.0, 100.0, (0.5, 0.5)),
    (77.0, 2.5, 1500.0, (0.3, 0.6)),
    (2.0, 1.5, 250.0, (0.5, 0.7)),
    (91.5, 1.2, 140.0, (0.8, 0.5)),
    (143.0, 2.0, 600.0, (0.6, 0.4)),
]


@pytest.fixture(scope="module")
def plan():
    """One 1024 x 1024 detector, a dense star field (bright saturated stars too), galaxies."""
    config = replace(TINY, camera=replace(TINY.camera, width=SIZE, height=SIZE),
                     sky=replace(SkyConfig(), star_density=8.0e3))
    return plan_survey(config, seed=11)


def _process(plan, trail: SatelliteTrail | None, visit_index: int = 0):
    """Render a visit with ``trail``; background-subtract, detect, find streaks like the pipeline."""
    visit = replace(plan.visits[visit_index], satellite=trail, ghost=None)
    visits = list(plan.visits)
    visits[visit_index] = visit
    p = replace(plan, visits=tuple(visits))
    r = render_exposure(p, visit_index, 0)
    exp = r.exposure
    det = p.camera.detectors[0]
    fx, fy = p.camera.pixel_to_focal_plane(0, np.arange(SIZE), np.arange(SIZE))
    gx, gy = visit.sky_gradient
    sky = visit.sky_level * det.qe * (1.0 + gx * fx[None, :] + gy * fy[:, None]) / det.gain
    image = (exp.image - sky).astype(np.float32)
    sigma = float(visit.psf.sigma)
    found = detect_sources(image, exp.variance, exp.mask, sigma)
    mask = found.mask.copy()
    res = mask_streaks(image, exp.variance, mask, sigma)
    trail_e = np.zeros((SIZE, SIZE))
    if trail is not None:
        origin = p.camera.pixel_to_focal_plane(0, 0.0, 0.0)
        render_satellite(trail_e, trail, origin, p.camera.config.pixel_size, scale=det.qe)
    stars = r.rows[(p.catalog.kind[r.rows] == KIND_STAR) & np.isfinite(r.flux_adu)]
    keep = np.isin(r.rows, stars)
    return r, mask, res, trail_e, (r.x[keep], r.y[keep]), sigma


def _trail(plan, angle, width, peak, where):
    sigma = plan.visits[0].psf.sigma
    x, y = plan.camera.pixel_to_focal_plane(0, where[0] * SIZE, where[1] * SIZE)
    return SatelliteTrail(x=float(x), y=float(y), angle=angle, width=width * sigma, peak=peak)


def _distance(plan, trail: SatelliteTrail) -> np.ndarray:
    """Signed distance of every pixel from the trail's axis, pixels."""
    ox, oy = plan.camera.pixel_to_focal_plane(0, 0.0, 0.0)
    size = plan.camera.config.pixel_size
    px, py = (trail.x - ox) / size, (trail.y - oy) / size
    a = np.radians(trail.angle)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    return (xx - px) * -np.sin(a) + (yy - py) * np.cos(a)


def _near_stars(xy, sigma):
    """Pixels within 2 FWHM of the true stars on the detector."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    out = np.zeros((SIZE, SIZE), bool)
    r = 2 * 2.3548 * sigma
    for x, y in zip(*xy, strict=True):
        if -r < x < SIZE + r and -r < y < SIZE + r:
            ix, iy = round(float(x)), round(float(y))
            ys, xs = slice(max(iy - int(r) - 1, 0), iy + int(r) + 2), \
                slice(max(ix - int(r) - 1, 0), ix + int(r) + 2)
            out[ys, xs] |= (xx[ys, xs] - x) ** 2 + (yy[ys, xs] - y) ** 2 <= r * r
    return out


@pytest.mark.parametrize("angle,width,peak,where", TRAILS)
def test_trail_flux_is_masked_and_stars_are_not(plan, angle, width, peak, where):
    trail = _trail(plan, angle, width, peak, where)
    _, mask, res, trail_e, stars, sigma = _process(plan, trail, TINY.artefacts.satellite_offset)
    streak = (mask & bits("STREAK")) != 0
    assert len(res.streaks) == 1
    assert np.array_equal(streak, res.mask)
    s = res.streaks[0]
    assert abs(s.width / trail.width - 1) < 0.25
    # >= 99% of the trail's flux on the detector falls on STREAK pixels.
    assert trail_e[streak].sum() >= 0.99 * trail_e.sum()
    # Star pixels beyond the trail's reach (4 trail sigmas + 3 pixels) are not STREAK.
    d = np.abs(_distance(plan, trail))
    near = _near_stars(stars, sigma)
    assert near.sum() > 5000
    beyond = near & (d > 4 * trail.width + 3)
    assert streak[beyond].mean() < 0.005
    # The band hugs the trail: nearly all STREAK pixels are within that reach.
    assert (d[streak] <= 4 * trail.width + 3).mean() > 0.99


def test_no_streak_without_a_trail_bright_stars_and_bad_columns_included(plan):
    for visit_index in (0, 1):
        r, mask, res, *_ = _process(plan, None, visit_index)
        assert res.streaks == []
        assert not (mask & bits("STREAK")).any()
        # The scene has what could fool a line search: bad columns and saturated stars.
        assert (r.exposure.mask & bits("BAD")).any() and (r.exposure.mask & bits("SAT")).any()


def test_two_crossing_trails_and_config_checks(plan):
    sigma = plan.visits[0].psf.sigma
    image = np.random.default_rng(3).normal(0.0, 10.0, (600, 700)).astype(np.float32)
    variance = np.full(image.shape, 100.0, np.float32)
    truth = np.zeros(image.shape)
    for angle, pos in ((20.0, (0.004, 0.0)), (110.0, (0.0, 0.0))):
        render_satellite(truth, SatelliteTrail(x=pos[0], y=pos[1], angle=angle,
                                               width=1.5 * sigma, peak=60.0),
                         (-3.5, -3.0), 0.01)
    image += truth.astype(np.float32)
    mask = np.zeros(image.shape, np.int32)
    detected = detect_sources(image, variance, mask, sigma).mask
    res = find_streaks(image, variance, mask, (detected & bits("DETECTED")) != 0, sigma)
    assert len(res.streaks) == 2
    assert truth[res.mask].sum() >= 0.99 * truth.sum()
    with pytest.raises(ValueError, match="min_width_sigma"):
        StreakConfig(min_width_sigma=3.0, max_width_sigma=2.0)
    with pytest.raises(ValueError, match="psf_sigma"):
        find_streaks(image, variance, mask, np.zeros(image.shape, bool), 0.0)
