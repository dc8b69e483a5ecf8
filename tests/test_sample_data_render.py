"""Rendered pixels against truth: fluxes, PSF moments, WCS, noise, sky and artefacts."""

from dataclasses import replace

import numpy as np
import pytest
from astropy.wcs import WCS
from scipy import ndimage

from sample_data import (
    PRESETS,
    SkyConfig,
    adaptive_moments,
    plan_survey,
    render_exposure,
    true_psf_kernel,
)
from sample_data.artefacts import Ghost, SatelliteTrail, bleed, render_ghost, render_satellite
from sample_data.psf import PsfField
from sample_data.render import render_galaxies
from sample_data.sky import KIND_GALAXY, KIND_STAR, SkyCatalog
from sample_data.truth import artefact_table, visit_detector_table
from store.masks import bits

TINY = PRESETS["tiny"]


def _config(**sky):
    return replace(TINY, camera=replace(TINY.camera, width=1024, height=1024),
                   sky=replace(SkyConfig(), **sky))


@pytest.fixture(scope="module")
def starry():
    """Many stars, few galaxies: isolated stars to measure."""
    plan = plan_survey(_config(star_density=4000.0, galaxy_density=7.4e3), seed=7)
    return plan, render_exposure(plan, 0, 0, keep_model=True)


@pytest.fixture(scope="module")
def stars_only():
    """Only stars, rendered without noise, sky, cosmic rays or defects."""
    plan = plan_survey(_config(star_density=2500.0, galaxy_density=0.0), seed=8)
    return plan, render_exposure(plan, 1, 0, noise=False, cosmic=False, defects=False,
                                 sky=False)


def _sky_adu(plan, visit, detector, x, y):
    row = visit_detector_table(plan, visit, [detector]).to_pylist()[0]
    xc, yc = plan.camera.detectors[detector].center
    return row["sky_mean"] + row["sky_grad_x"] * (x - xc) + row["sky_grad_y"] * (y - yc)


def _isolated(plan, rendered, limit=1e-5, reach=8.0):
    """Stars whose neighbours add less than ``limit`` of their flux near them.

    A neighbour's light at distance ``d`` is bounded by its flux times the
    Moffat profile at ``d - reach`` (galaxies reach farther: add 4 r_e).
    """
    cat = plan.catalog
    x, y, flux = rendered.x, rendered.y, np.nan_to_num(rendered.flux_adu)
    d = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    np.fill_diagonal(d, np.inf)
    extent = np.nan_to_num(4 * cat.half_light_radius[rendered.rows] / 0.2)
    alpha = float(rendered.visit.psf.alpha()) * 1.2
    gap = np.maximum(d - reach - extent[None, :], 0.0)
    spill = flux[None, :] * (1 + (gap / alpha) ** 2) ** -rendered.visit.psf.beta
    return spill.sum(axis=1) < limit * np.maximum(flux, 1e-9)


def test_isolated_star_fluxes_equal_truth_within_noise(starry):
    plan, r = starry
    exp, det = r.exposure, plan.camera.detectors[0]
    cat = plan.catalog
    kind = cat.kind[r.rows]
    h = 10
    ok = ((kind == KIND_STAR) & _isolated(plan, r, 1e-4)
          & (r.x > h + 2) & (r.x < det.width - h - 3) & (r.y > h + 2) & (r.y < det.height - h - 3)
          & (r.flux_adu > 300.0))
    cr = np.zeros(exp.image.size, bool)
    cr[r.cosmic_rays.pixels] = True
    cr = cr.reshape(exp.image.shape)
    z = []
    for i in np.flatnonzero(ok):  # a few dozen stars; each is a small stamp
        ix, iy = int(np.floor(r.x[i] + 0.5)), int(np.floor(r.y[i] + 0.5))
        sl = (slice(iy - h, iy + h + 1), slice(ix - h, ix + h + 1))
        if exp.mask[sl].any() or cr[sl].any():
            continue
        yy, xx = np.mgrid[sl]
        data = exp.image[sl] - _sky_adu(plan, r.visit, 0, xx, yy)
        p = true_psf_kernel(r.visit.psf, plan.camera, 0, r.x[i], r.y[i], size=2 * h + 1,
                            offset=(r.x[i] - ix, r.y[i] - iy), normalize=False)
        flux = (p * data).sum() / (p * p).sum()
        sigma = np.sqrt((p * p * exp.variance[sl]).sum()) / (p * p).sum()
        z.append((flux - r.flux_adu[i]) / sigma)
    z = np.array(z)
    assert z.size >= 15
    assert np.abs(z).max() < 5.0
    assert abs(z.mean()) < 3.0 / np.sqrt(z.size) + 0.1
    assert 0.6 < z.std() < 1.5


def _stamps(image, x, y, h):
    ix = np.floor(x + 0.5).astype(int)
    iy = np.floor(y + 0.5).astype(int)
    offs = np.arange(-h, h + 1)
    return image[(iy[:, None] + offs)[:, :, None], (ix[:, None] + offs)[:, None, :]], ix - h, iy - h


def _measurable(plan, r, h):
    det = plan.camera.detectors[0]
    kind = plan.catalog.kind[r.rows]
    return np.flatnonzero((kind == KIND_STAR) & _isolated(plan, r)
                          & (r.x > h) & (r.x < det.width - h - 1) & (r.y > h)
                          & (r.y < det.height - h - 1) & (r.flux_adu * det.gain < 5e5))


def test_psf_moments_on_noiseless_stamps_equal_truth(stars_only):
    plan, r = stars_only
    h = 20
    sel = _measurable(plan, r, h)
    assert sel.size >= 20
    stamps, x0, y0 = _stamps(r.exposure.image.astype(float), r.x[sel], r.y[sel], h)
    got = adaptive_moments(stamps, r.x[sel] - x0, r.y[sel] - y0, 2.5)
    assert got.converged.all()
    for k, i in enumerate(sel):
        ix, iy = int(np.floor(r.x[i] + 0.5)), int(np.floor(r.y[i] + 0.5))
        kern = true_psf_kernel(r.visit.psf, plan.camera, 0, r.x[i], r.y[i], size=2 * h + 1,
                               offset=(r.x[i] - ix, r.y[i] - iy))
        want = adaptive_moments(kern, h + r.x[i] - ix, h + r.y[i] - iy, 2.5)
        trace = want.ixx[0] + want.iyy[0]
        assert got.ixx[k] == pytest.approx(want.ixx[0], rel=1e-3)
        assert got.iyy[k] == pytest.approx(want.iyy[0], rel=1e-3)
        assert abs(got.ixy[k] - want.ixy[0]) < 1e-3 * trace


def test_true_wcs_maps_truth_positions_to_centroids(stars_only):
    plan, r = stars_only
    h = 15
    sel = _measurable(plan, r, h)
    stamps, x0, y0 = _stamps(r.exposure.image.astype(float), r.x[sel], r.y[sel], h)
    m = adaptive_moments(stamps, r.x[sel] - x0 + 0.2, r.y[sel] - y0 - 0.2, 2.5,
                         fit_centroid=True)
    cx, cy = m.x + x0, m.y + y0
    row = visit_detector_table(plan, r.visit, [0]).to_pylist()[0]
    true_wcs = WCS(row["wcs"])
    rows = r.rows[sel]
    wx, wy = true_wcs.all_world2pix(plan.catalog.ra[rows], plan.catalog.dec[rows], 0)
    assert np.hypot(wx - cx, wy - cy).max() < 0.01
    # The header WCS is off by a pixel or more: astrometric fitting has work to do.
    hx, hy = r.exposure.wcs.all_world2pix(plan.catalog.ra[rows], plan.catalog.dec[rows], 0)
    assert np.median(np.hypot(hx - cx, hy - cy)) > 1.0


def test_variance_plane_matches_blank_pixel_scatter(starry):
    plan, r = starry
    exp, det = r.exposure, plan.camera.detectors[0]
    yy, xx = np.mgrid[0:det.height, 0:det.width]
    sky_e = _sky_adu(plan, r.visit, 0, xx, yy) * det.gain
    sources_e = r.model - sky_e
    blank = (sources_e < 0.5) & (exp.mask == 0)
    hit = np.zeros(exp.image.size, bool)
    hit[r.cosmic_rays.pixels] = True
    # Cosmic rays and the charge at the ends of bleed trails are not blank sky.
    spoiled = hit.reshape(exp.image.shape) | (exp.mask & bits("SAT") > 0)
    blank &= ~ndimage.binary_dilation(spoiled, iterations=2)
    assert blank.mean() > 0.2
    resid = exp.image[blank] - r.model[blank] / det.gain
    assert resid.var() == pytest.approx(exp.variance[blank].mean(), rel=0.03)
    assert abs(resid.mean()) < 0.05 * resid.std()
    # The image keeps the sky (ISR does not subtract it).
    assert np.median(exp.image[blank]) == pytest.approx(np.median(sky_e[blank]) / det.gain,
                                                        rel=0.01)


def test_masks_cosmic_rays_and_defects(starry):
    plan, r = starry
    exp, det = r.exposure, plan.camera.detectors[0]
    assert np.array_equal(exp.mask & bits("BAD") > 0, det.defect_mask())
    assert len(r.cosmic_rays) > 0
    # Cosmic rays are in the pixels but not in the mask.
    charge = np.bincount(r.cosmic_rays.pixels, r.cosmic_rays.values, minlength=exp.image.size)
    pix = np.flatnonzero(charge > 400.0)
    flat_img, flat_model = exp.image.reshape(-1), r.model.reshape(-1) / det.gain
    flat_mask = exp.mask.reshape(-1)
    excess = flat_img[pix] - flat_model[pix]
    assert np.median(excess) > 100.0
    assert not np.any(flat_mask[pix] & ~bits("BAD", "SAT"))


def test_saturated_star_bleeds_along_its_column():
    plan = plan_survey(_config(), seed=9)
    visit = plan.visits[0]
    ra, dec = plan.pixel_to_sky(visit, 0, 500.3, 480.7)
    mags = {b: np.array([11.0]) for b in plan.catalog.mag}
    nan = np.array([np.nan])
    star = SkyCatalog(id=np.array([10**9]), kind=np.array([KIND_STAR], np.int8),
                      ra=np.atleast_1d(ra), dec=np.atleast_1d(dec), mag=mags, sersic_n=nan,
                      half_light_radius=nan, axis_ratio=nan, position_angle=nan,
                      visit=np.array([-1]))
    plan = replace(plan, catalog=SkyCatalog.concatenate([plan.catalog, star]))
    r = render_exposure(plan, 0, 0, cosmic=False, keep_model=True)
    exp, det = r.exposure, plan.camera.detectors[0]
    sat = (exp.mask & bits("SAT")) > 0
    assert np.all(exp.image[sat] == np.float32(det.saturation))
    ys, xs = np.nonzero(sat[:, 450:550])
    assert np.ptp(ys) > 5 * np.ptp(xs)  # a vertical trail much longer than the star is wide
    assert ys.min() < 480 - 40 and ys.max() > 480 + 40
    # Bleeding moves charge, it does not destroy it.
    box = (slice(0, det.height), slice(470, 531))
    got = (exp.image[box] * det.gain).sum()
    want = r.model[box].sum()
    assert got == pytest.approx(want, rel=0.01)


def test_satellite_trail_transient_and_their_truth():
    plan = plan_survey(_config(), seed=4)
    sat_visit = TINY.artefacts.satellite_offset
    r = render_exposure(plan, sat_visit, 0, cosmic=False)
    art = artefact_table(plan, r).to_pylist()
    trail = [a for a in art if a["kind"] == "satellite"]
    assert plan.visits[sat_visit].satellite is not None and len(trail) == 1
    t = trail[0]
    mid_x, mid_y = 0.5 * (t["x0"] + t["x1"]), 0.5 * (t["y0"] + t["y1"])
    det = plan.camera.detectors[0]
    ix, iy = round(mid_x), round(mid_y)
    sky = _sky_adu(plan, r.visit, 0, ix, iy)
    assert r.exposure.image[iy, ix] - sky > 0.5 * t["value"] / det.gain
    # The transient is in its own visit only.
    tv = TINY.artefacts.transient_visit
    rt = render_exposure(plan, tv, 0, cosmic=False)
    rows = [a for a in artefact_table(plan, rt).to_pylist() if a["kind"] == "transient"]
    assert len(rows) == 1 and rows[0]["object_id"] == plan.catalog.id.max()
    other = render_exposure(plan, 0, 0, cosmic=False)
    assert plan.catalog.id.max() not in plan.catalog.id[other.rows]
    assert plan.catalog.id.max() in plan.catalog.id[rt.rows]


def test_same_seed_same_pixels_different_seed_different_pixels():
    plan = plan_survey(TINY, seed=1)
    a = render_exposure(plan, 1, 0).exposure
    render_exposure(plan, 0, 0)  # rendering something else first changes nothing
    b = render_exposure(plan, 1, 0).exposure
    np.testing.assert_array_equal(a.image, b.image)
    c = render_exposure(plan_survey(TINY, seed=2), 1, 0).exposure
    assert not np.array_equal(a.image, c.image)


def test_galaxy_stamps_hold_their_flux_and_are_psf_convolved():
    psf = PsfField(sigma=2.2)
    image = np.zeros((200, 200))
    x, y = np.array([60.3, 140.0]), np.array([100.6, 99.2])
    flux = np.array([1e4, 5e4])
    render_galaxies(image, x, y, flux, np.array([1.0, 4.0]), np.array([3.0, 2.0]),
                    np.array([0.5, 0.8]), np.array([0.3, 1.2]), psf, np.zeros(2), np.zeros(2))
    assert image[:, :100].sum() == pytest.approx(1e4, rel=1e-5)
    assert image[:, 100:].sum() == pytest.approx(5e4, rel=1e-5)
    m = adaptive_moments(np.stack([image[60:141, 20:101], image[60:141, 100:181]]),
                         np.array([40.3, 40.0]), np.array([40.6, 39.2]), 3.0)
    assert np.all(m.trace > 2 * 2.2**2)  # wider than the PSF
    # The elongated disc (q = 0.5, 0.3 rad from +x) stays elongated along its axis.
    assert m.ixx[0] > m.iyy[0] and m.ixy[0] > 0


def test_bleed_conserves_charge_and_ghost_and_trail_profiles():
    img = np.full((300, 20), 100.0)
    img[148:152, 10] = [3e5, 5e5, 5e5, 3e5]
    before = img.sum()
    sat = bleed(img, 1e5)
    assert img.sum() == pytest.approx(before)
    assert sat[:, 10].sum() == 16 and not sat[:, :10].any()
    ghost_img = np.zeros((400, 400))
    render_ghost(ghost_img, Ghost(star_id=1, x=2.0, y=2.0), 1e8, (0.0, 0.0), 0.01)
    assert ghost_img.sum() == pytest.approx(3e-3 * 1e8, rel=0.02)
    assert ghost_img[200, 200] < ghost_img[200, 100]  # a ring, not a disc
    trail_img = np.zeros((100, 100))
    render_satellite(trail_img, SatelliteTrail(x=0.5, y=0.5, angle=0.0, width=3.0, peak=800.0),
                     (0.0, 0.0), 0.01)
    assert trail_img[50, :].min() == pytest.approx(800.0)
    assert trail_img[53, 20] == pytest.approx(800.0 * np.exp(-0.5), rel=1e-6)


def test_galaxies_are_in_the_image(starry):
    plan, r = starry
    kind = plan.catalog.kind[r.rows]
    assert np.sum(kind == KIND_GALAXY) > 10


def test_galaxy_position_angle_is_east_of_north_on_the_sky():
    plan = plan_survey(replace(TINY, sky=SkyConfig(star_density=0.0, galaxy_density=0.0)),
                       seed=1)
    for vi in (0, 2):
        v = plan.visits[vi]
        ra, dec = plan.pixel_to_sky(v, 0, 256.0, 256.0)
        for pa in (30.0, 120.0):
            gal = SkyCatalog(id=np.array([1]), kind=np.array([KIND_GALAXY], np.int8),
                             ra=np.atleast_1d(ra), dec=np.atleast_1d(dec),
                             mag={b: np.array([18.0]) for b in plan.catalog.mag},
                             sersic_n=np.array([1.0]), half_light_radius=np.array([3.0]),
                             axis_ratio=np.array([0.3]), position_angle=np.array([pa]),
                             visit=np.array([-1]))
            r = render_exposure(replace(plan, catalog=gal), vi, 0, noise=False, cosmic=False,
                                defects=False, sky=False)
            m = adaptive_moments(r.exposure.image[156:357, 156:357].astype(float), 100, 100, 5.0)
            phi = 0.5 * np.arctan2(2 * m.ixy[0], m.ixx[0] - m.iyy[0])
            (ra0, ra1), (dec0, dec1) = plan.true_wcs(v, 0).all_pix2world(
                [256.0, 256.0 + 10 * np.cos(phi)], [256.0, 256.0 + 10 * np.sin(phi)], 0)
            got = np.degrees(np.arctan2((ra1 - ra0) * np.cos(np.radians(dec0)), dec1 - dec0))
            assert abs((got - pa + 90) % 180 - 90) < 1.0  # the PSF tilts it a little
