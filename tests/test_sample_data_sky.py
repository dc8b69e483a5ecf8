"""The simulated sky (counts, colours, shapes) and the visits (seeing, zero points, schedule)."""

from dataclasses import replace

import astropy.units as u
import numpy as np
import pytest
from astropy_healpix import HEALPix
from scipy import stats

from sample_data import PRESETS, SkyConfig, plan_survey
from sample_data.camera import build_camera
from sample_data.observing import airmass, day_obs_of, plan_visits
from sample_data.sky import KIND_GALAXY, KIND_STAR, KIND_TRANSIENT, healpix_area_deg2, make_sky


@pytest.fixture(scope="module")
def sky():
    # 0.5 deg radius: ~0.8 deg^2 of faint stars and galaxies.
    hp = HEALPix(nside=64, order="nested")
    pixels = hp.cone_search_lonlat(53.1 * u.deg, -28.1 * u.deg, 0.5 * u.deg)
    rngs = tuple(np.random.default_rng(k) for k in range(3))
    cfg = SkyConfig(galaxy_mag_range=(18.0, 25.0))
    cat = make_sky(cfg, center=(53.1, -28.1), radius_deg=0.5, bright_pixels=pixels,
                   bright_limit=21.0, rngs=rngs)
    return cat, cfg, np.asarray(pixels)


def _slope(mags, lo, hi):
    counts, edges = np.histogram(mags, bins=np.arange(lo, hi + 0.01, 0.5))
    centres = 0.5 * (edges[1:] + edges[:-1])
    return np.polyfit(centres, np.log10(counts), 1)[0]


def test_number_counts(sky):
    cat, cfg, pixels = sky
    area = 2 * np.pi * (1 - np.cos(np.radians(0.5))) * (180 / np.pi) ** 2
    gal = cat.mag["r"][cat.kind == KIND_GALAXY]
    # ~1e5 galaxies per deg^2 to r = 25, rising by 0.32 dex/mag.
    assert len(gal) / area == pytest.approx(1e5, rel=0.05)
    assert _slope(gal, 20.0, 25.0) == pytest.approx(cfg.galaxy_slope, abs=0.03)
    stars = cat.kind == KIND_STAR
    faint = stars & (cat.mag["r"] >= 21.0)
    # Faint stars live in the circle; 600 / deg^2 / mag at r = 20, 0.22 dex/mag.
    n_expected = area * 600 / (0.22 * np.log(10)) * (10 ** (0.22 * 6) - 10 ** (0.22 * 1))
    assert faint.sum() == pytest.approx(n_expected, rel=0.08)
    assert _slope(cat.mag["r"][faint], 21.0, 26.0) == pytest.approx(0.22, abs=0.05)
    # Bright stars cover whole HEALPix shards, so every shard is complete.
    bright = stars & (cat.mag["r"] < 21.0)
    hp = HEALPix(nside=64, order="nested")
    pix = hp.lonlat_to_healpix(cat.ra[bright] * u.deg, cat.dec[bright] * u.deg)
    assert set(np.unique(pix)) == set(pixels.tolist())
    per_pixel = np.bincount(np.searchsorted(np.sort(pixels), pix))
    expected = 600 / (0.22 * np.log(10)) * (10 ** 0.22 - 10 ** (-2.2)) * healpix_area_deg2()
    assert np.all(np.abs(per_pixel - expected) < 5 * np.sqrt(expected))
    assert cat.mag["r"][stars].min() < 13.0  # bright enough to saturate


def test_colours_and_shapes(sky):
    cat, _, _ = sky
    stars = cat.kind == KIND_STAR
    g_r = cat.mag["g"][stars] - cat.mag["r"][stars]
    r_i = cat.mag["r"][stars] - cat.mag["i"][stars]
    assert 0.05 < g_r.min() and g_r.max() < 1.65
    # The stellar locus: r - i rises with g - r, steeply for M dwarfs.
    assert stats.spearmanr(g_r, r_i).statistic > 0.8
    assert np.median(r_i[g_r > 1.4]) > 0.9 > np.median(r_i[g_r < 0.5]) + 0.5
    assert np.all(cat.mag["u"][stars] > cat.mag["g"][stars])
    gal = cat.kind == KIND_GALAXY
    n = cat.sersic_n[gal]
    assert n.min() >= 0.5 and n.max() <= 4.0
    q = cat.axis_ratio[gal]
    assert q.min() >= 0.2 and q.max() <= 1.0
    r = cat.mag["r"][gal]
    re = cat.half_light_radius[gal]
    near22 = np.abs(r - 22.0) < 0.25
    assert np.median(re[near22]) == pytest.approx(0.55, rel=0.1)
    assert np.median(re[r > 24.5]) < np.median(re[r < 21])
    assert np.all(np.isnan(cat.sersic_n[stars]))
    assert len(np.unique(cat.id)) == len(cat)


@pytest.fixture(scope="module")
def many_visits():
    base = PRESETS["demo"]
    obs = replace(base.observing, n_visits=400, bands=("g", "r"), band_block=1,
                  visits_per_night=20)
    config = replace(base, observing=obs)
    camera = build_camera(config.camera, np.random.default_rng(0))
    return config, plan_visits(config, camera, seed=11)


def test_seeing_follows_the_configured_quartiles(many_visits):
    config, visits = many_visits
    for band in ("g", "r"):
        seeing = np.array([v.seeing for v in visits if v.band == band])
        assert seeing.size == 200
        q25, q50, q75 = config.observing.seeing_quartiles[band]
        got = np.percentile(seeing, [25, 50, 75])
        # Sampling error of a quartile of 200 draws is ~0.015 arcsec.
        np.testing.assert_allclose(got, [q25, q50, q75], atol=0.05)
        sigma = (np.log(q75) - np.log(q25)) / (2 * 0.67449)
        ks = stats.kstest(np.log(seeing), "norm", args=(np.log(q50), sigma))
        assert ks.pvalue > 0.01
        assert seeing.min() >= config.observing.min_seeing


def test_visits_look_like_a_real_schedule(many_visits):
    config, visits = many_visits
    obs = config.observing
    ids = [v.id for v in visits]
    assert len(set(ids)) == len(ids)
    mjd = np.array([v.mjd for v in visits])
    assert np.all(np.diff(mjd) > 0)
    assert np.all(np.array([v.airmass for v in visits]) >= 1.0)
    for v in visits[:40]:
        assert v.airmass == pytest.approx(float(airmass(v.altitude)))
        assert v.day_obs == day_obs_of(v.mjd_begin) and v.id // 100000 == v.day_obs
        assert abs(v.hour_angle) < 4.0
        assert v.mjd - v.mjd_begin == pytest.approx(v.exposure_time / 2 / 86400)
        dist = np.hypot((v.ra - obs.field_ra) * np.cos(np.radians(v.dec)), v.dec - obs.field_dec)
        assert dist * 60 <= obs.dither_radius * 1.001
        assert abs(v.rotation) <= obs.rotation_range
    assert len({v.day_obs for v in visits}) == 20  # 20 visits a night
    # Transparency varies by a few per cent, so zero points differ per visit.
    transparency = np.array([v.transparency for v in visits])
    assert 0.005 < transparency.std() < 0.05 and transparency.max() <= 1.0
    zp_r = np.array([v.zero_point for v in visits if v.band == "r"])
    assert 0.01 < zp_r.std() < 0.1
    assert np.mean(zp_r) == pytest.approx(28.1 + 2.5 * np.log10(30) - 0.03, abs=0.05)
    # The sky is brighter (more electrons) in r than in g.
    sky_g = np.median([v.sky_level for v in visits if v.band == "g"])
    sky_r = np.median([v.sky_level for v in visits if v.band == "r"])
    assert 1.8 < sky_r / sky_g < 3.0
    assert sum(v.satellite is not None for v in visits) == 400 // config.artefacts.satellite_every


def test_first_visits_do_not_change_with_more_visits():
    short = plan_survey(PRESETS["tiny"], seed=3)
    longer = plan_survey(PRESETS["tiny"].with_visits(9), seed=3)
    for a, b in zip(short.visits, longer.visits, strict=False):
        assert (a.id, a.ra, a.dec, a.seeing, a.zero_point) == (b.id, b.ra, b.dec, b.seeing,
                                                              b.zero_point)
    np.testing.assert_array_equal(short.catalog.ra[:100], longer.catalog.ra[:100])


def test_psf_statistics_match_dp1(many_visits):
    config, visits = many_visits
    camera = build_camera(config.camera, np.random.default_rng(0))
    hx, hy = camera.half_extent
    fx, fy = np.meshgrid(np.linspace(-hx, hx, 7), np.linspace(-hy, hy, 7))
    e, trace = [], []
    for v in visits:
        _, e1, e2 = v.psf.shape(fx, fy)
        mxx, myy, _ = v.psf.moments(fx, fy)
        e.append(np.hypot(e1, e2).mean())
        trace.append((mxx + myy).mean())
    # DP1: mean |e| about 0.09, mean T = Ixx + Iyy about 11.4 pixel^2 (all bands).
    assert 0.07 < np.mean(e) < 0.11
    assert 10.0 < np.mean(trace) < 14.0


def test_demo_plan_has_a_ghost_and_a_transient():
    plan = plan_survey(PRESETS["demo"], seed=1)
    art = PRESETS["demo"].artefacts
    ghost = plan.visits[art.ghost_visit].ghost
    assert ghost is not None
    star = np.flatnonzero(plan.catalog.id == ghost.star_id)[0]
    assert plan.catalog.kind[star] == KIND_STAR
    # The ghost sits opposite its star through the optical axis.
    fx, fy = plan.sky_to_focal_plane(plan.visits[art.ghost_visit], plan.catalog.ra[star],
                                     plan.catalog.dec[star])
    np.testing.assert_allclose([ghost.x, ghost.y], [-0.9 * fx, -0.9 * fy], atol=1e-9)
    assert sum(v.ghost is not None for v in plan.visits) == 1
    transient = plan.catalog.kind == KIND_TRANSIENT
    assert transient.sum() == 1
    assert plan.catalog.visit[transient][0] == plan.visits[art.transient_visit].id
