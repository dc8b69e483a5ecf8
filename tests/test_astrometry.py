"""Tests of TAN-SIP fitting and the astrometric solution (processing.algorithms.astrometry)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.wcs import WCS

from processing.algorithms.astrometry import (
    AstrometryConfig,
    fit_tan_sip,
    fit_tan_sip_detailed,
    solve_astrometry,
)
from processing.algorithms.wcs_fit import _gnomonic, _inverse_gnomonic
from store.geom import Box
from tests._astrometry_scene import (
    make_camera_wcs,
    make_guess_wcs,
    make_header_wcs,
    make_scene,
    make_true_wcs,
    wcs_error_mas,
)

BOX = Box(0, 0, 2048, 2048)


def _grid(box, n=20):
    c = box.corners()
    gx, gy = np.meshgrid(np.linspace(c[0, 0], c[1, 0], n), np.linspace(c[0, 1], c[2, 1], n))
    return gx.ravel(), gy.ravel()


def test_gnomonic_matches_astropy_tan():
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crpix = [1.0, 1.0]
    w.wcs.crval = [359.9, 75.0]            # near RA wrap and a pole
    w.wcs.cd = np.eye(2)
    xi = np.array([0.0, 0.3, -0.7, 1.5])
    eta = np.array([0.0, -0.2, 0.9, 1.1])
    ra, dec = w.all_pix2world(xi, eta, 0)
    gx, ge = _gnomonic(ra, dec, 359.9, 75.0)
    np.testing.assert_allclose(gx, xi, atol=1e-10)
    np.testing.assert_allclose(ge, eta, atol=1e-10)
    r2, d2 = _inverse_gnomonic(xi, eta, 359.9, 75.0)
    np.testing.assert_allclose(((r2 - ra + 180) % 360) - 180, 0, atol=1e-10)
    np.testing.assert_allclose(d2, dec, atol=1e-10)


@pytest.mark.parametrize("crval_error_arcsec", [0.0, 40.0])
def test_noise_free_fit_reproduces_true_wcs(crval_error_arcsec):
    """Pairs drawn from a TAN-SIP truth with CRPIX elsewhere: the fit (CRPIX at the centre) is exact."""
    true_wcs = make_true_wcs(rot_deg=17.0)
    true_wcs.wcs.crpix = [900.0, 1300.0]        # the model is still a cubic about our CRPIX
    true_wcs.wcs.set()
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-0.5, 2047.5, (2, 150))
    ra, dec = true_wcs.all_pix2world(x, y, 0)
    start = true_wcs.all_pix2world([[1023.5, 1023.5]], 0)[0] + crval_error_arcsec / 3600.0
    fit = fit_tan_sip_detailed(x, y, ra, dec, (1023.5, 1023.5), tuple(start), 3, bbox=BOX)
    err = wcs_error_mas(fit.wcs, true_wcs, BOX)
    assert err.max() < 0.01                     # 10 micro-arcsec
    assert fit.rms_arcsec < 1e-5
    assert fit.inverse_max_error_pix < 1e-3
    # the inverse is used consistently by astropy: world -> pixel round trip
    gx, gy = _grid(BOX)
    r, d = fit.wcs.all_pix2world(gx, gy, 0)
    px, py = fit.wcs.all_world2pix(r, d, 0, tolerance=1e-10)
    assert np.hypot(px - gx, py - gy).max() < 1e-6
    foc = fit.wcs.sip_pix2foc(np.column_stack([gx, gy]), 0)
    back = fit.wcs.sip_foc2pix(foc, 0)                  # pure AP/BP polynomial evaluation
    assert np.hypot(*(back - np.column_stack([gx, gy])).T).max() < 1e-3


def test_fitted_wcs_survives_fits_header_round_trip():
    true_wcs = make_true_wcs()
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 2047, (2, 100))
    ra, dec = true_wcs.all_pix2world(x, y, 0)
    w = fit_tan_sip(x, y, ra, dec, BOX.center, (150.0, 2.0), 3, bbox=BOX)
    header = w.to_header(relax=True)
    assert header["CTYPE1"] == "RA---TAN-SIP" and header["A_ORDER"] == 3 and header["AP_ORDER"] == 5
    w2 = WCS(header)
    gx, gy = _grid(BOX)
    r1, d1 = w.all_pix2world(gx, gy, 0)
    r2, d2 = w2.all_pix2world(gx, gy, 0)
    assert np.max(np.hypot((r1 - r2) * np.cos(np.radians(d1)), d1 - d2)) * 3.6e6 < 1e-3


def test_clipping_rejects_bad_pairs():
    true_wcs = make_true_wcs()
    rng = np.random.default_rng(2)
    x, y = rng.uniform(0, 2047, (2, 200))
    ra, dec = true_wcs.all_pix2world(x, y, 0)
    x = x + rng.normal(0, 0.02, 200)
    y = y + rng.normal(0, 0.02, 200)
    bad = rng.choice(200, 12, replace=False)
    x[bad] += rng.choice([-1, 1], 12) * rng.uniform(2, 5, 12)    # mis-matches / blends
    fit = fit_tan_sip_detailed(x, y, ra, dec, BOX.center, (150.0, 2.0), 3, bbox=BOX)
    assert not fit.used[bad].any()
    assert fit.used.sum() >= 180
    err = wcs_error_mas(fit.wcs, true_wcs, BOX)
    assert np.sqrt(np.mean(err**2)) < 5.0


def test_fit_tan_sip_validation():
    with pytest.raises(ValueError, match=r"sip_order must be 1\.\.5, got 7"):
        fit_tan_sip(np.ones(30), np.ones(30), np.ones(30), np.ones(30), (0, 0), (0, 0), 7)
    with pytest.raises(ValueError, match="8 usable pairs cannot constrain a sip_order=3 fit"):
        fit_tan_sip(np.arange(8.0), np.arange(8.0), np.ones(8), np.ones(8), (0, 0), (0, 0), 3)
    with pytest.raises(ValueError, match="weights has length 2, expected 20"):
        fit_tan_sip(np.ones(20), np.ones(20), np.ones(20), np.ones(20), (0, 0), (0, 0), 1,
                    weights=np.ones(2))


def _solve(sc, guess, config=None):
    return solve_astrometry(sc.src_x, sc.src_y, sc.src_flux, sc.ref_ra, sc.ref_dec, sc.ref_mag,
                            guess, sc.bbox, config)


@pytest.mark.parametrize(("seed", "n_common"), [(0, 100), (1, 200), (2, 300)])
def test_solution_accuracy_across_detector(seed, n_common):
    """100-300 stars, 0.02 px centroids, 3 mas references, TAN guess off by 3" and 0.2 deg:
    the fitted WCS matches the truth to < 10 mas RMS over the whole detector, corners included."""
    rng = np.random.default_rng(seed)
    true_wcs = make_true_wcs(rot_deg=rng.uniform(0, 360), distortion_pix=4.0)
    guess = make_guess_wcs(true_wcs, (3.0, 0.0), 0.2)
    sc = make_scene(rng, true_wcs, n_common=n_common, n_ref_only=n_common // 2, n_src_only=2500)
    r = _solve(sc, guess)
    assert r.success, r.reason
    assert r.sip_order == 3
    err = wcs_error_mas(r.wcs, true_wcs, sc.bbox)
    assert np.sqrt(np.mean(err**2)) < 10.0
    assert err.max() < 25.0
    correct = sc.true_src_of_ref[r.matches["ref_index"]] == r.matches["src_index"]
    assert correct.sum() >= 0.98 * n_common and (~correct).sum() <= 1
    # per-axis noise sqrt((0.02 px * 200 mas)^2 + (3 mas)^2) = 5 mas: Rayleigh mean 6.3 mas
    assert 0.004 < r.offset_mean_arcsec < 0.009
    assert 0.002 < r.offset_std_arcsec < 0.006
    assert r.rms_arcsec < 0.012
    assert r.initial_match.offset_arcsec == pytest.approx(3.0, abs=0.3)


def test_thirty_arcsec_offset_succeeds():
    rng = np.random.default_rng(5)
    true_wcs = make_true_wcs(rot_deg=rng.uniform(0, 360))
    guess = make_guess_wcs(true_wcs, (21.0, -21.5), 0.5)
    sc = make_scene(rng, true_wcs, n_common=150, n_ref_only=100, n_src_only=2500)
    r = _solve(sc, guess)
    assert r.success, r.reason
    assert r.initial_match.offset_arcsec == pytest.approx(30.05, abs=0.5)
    err = wcs_error_mas(r.wcs, true_wcs, sc.bbox)
    assert np.sqrt(np.mean(err**2)) < 10.0


def test_one_degree_offset_fails_cleanly():
    rng = np.random.default_rng(6)
    true_wcs = make_true_wcs(rot_deg=rng.uniform(0, 360))
    guess = make_guess_wcs(true_wcs, (0.0, 3600.0), 0.2)
    # the reference catalogue is loaded around the (wrong) guess
    sc = make_scene(rng, true_wcs, n_common=200, n_ref_only=100, n_src_only=2500, ref_wcs=guess)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = _solve(sc, guess)
    assert not r
    assert r.wcs is None and r.n_matches == 0
    assert r.reason.startswith("matching failed: no consistent solution")
    assert np.isnan(r.offset_mean_arcsec)


def test_quality_check_failure_keeps_wcs():
    rng = np.random.default_rng(9)
    true_wcs = make_true_wcs()
    guess = make_guess_wcs(true_wcs)
    sc = make_scene(rng, true_wcs, n_common=120, n_ref_only=20, n_src_only=1000)
    r = _solve(sc, guess, AstrometryConfig(max_mean_distance_arcsec=0.001))
    assert not r and r.wcs is not None
    assert "exceeds max_mean_distance_arcsec=0.001" in r.reason


def test_few_matches_lower_the_sip_order():
    rng = np.random.default_rng(10)
    true_wcs = make_true_wcs(distortion_pix=1.0)
    guess = make_guess_wcs(true_wcs)
    sc = make_scene(rng, true_wcs, n_common=15, n_ref_only=5, n_src_only=300)
    r = _solve(sc, guess)
    assert r.success, r.reason
    # 15 pairs < 2 x 10 cubic terms; the held-out test then prefers order 1 (a quadratic
    # that fits 1-px distortion from 15 stars extrapolates worse to the corners).
    assert r.sip_order <= 2
    err = wcs_error_mas(r.wcs, true_wcs, sc.bbox)
    assert np.sqrt(np.mean(err**2)) < 40.0 and err.max() < 200.0


@pytest.mark.parametrize(("seed", "n_common"), [(20, 12), (21, 25), (22, 100)])
def test_camera_model_header_gets_an_affine_fit(seed, n_common):
    """A header WCS carrying the camera's distortion: only the pointing and rotation are fitted,
    so 12-100 stars give the WCS to < 15 mas at every detector corner (a from-scratch cubic
    from 25 stars was 20-35 mas off there)."""
    rng = np.random.default_rng(seed)
    true_wcs = make_camera_wcs()
    header = make_header_wcs(true_wcs)
    sc = make_scene(rng, true_wcs, n_common=n_common, n_ref_only=5, n_src_only=300)
    r = _solve(sc, header)
    assert r.success, r.reason
    assert r.model.startswith("affine")
    err = wcs_error_mas(r.wcs, true_wcs, sc.bbox)
    assert err.max() < 15.0
    assert np.median(wcs_error_mas(header, true_wcs, sc.bbox)) > 500.0  # the header was off


def test_large_scene_300_refs_3000_sources():
    """The crowded case (timed in the calibrate benchmark, not here: tests are not timed)."""
    rng = np.random.default_rng(11)
    true_wcs = make_true_wcs(rot_deg=rng.uniform(0, 360))
    guess = make_guess_wcs(true_wcs, (3.0, -2.0), 0.3)
    sc = make_scene(rng, true_wcs, n_common=250, n_ref_only=50, n_src_only=2750)
    r = _solve(sc, guess)
    assert r.success
    assert int(r.matches["used"].sum()) >= 200


def test_weights_favour_precise_centroids():
    """Half the stars have 0.3 px centroids: inverse-variance weights beat an unweighted fit
    (clipping off, since the MAD clip alone already sheds many of the noisy stars)."""
    rng = np.random.default_rng(13)
    true_wcs = make_true_wcs(rot_deg=rng.uniform(0, 360))
    guess = make_guess_wcs(true_wcs)
    sc = make_scene(rng, true_wcs, n_common=200, n_ref_only=20, n_src_only=1500)
    sigma = np.where(rng.uniform(size=sc.src_x.size) < 0.5, 0.3, 0.02)
    sc.src_x = sc.src_x + rng.normal(0, 1, sc.src_x.size) * np.sqrt(sigma**2 - 0.02**2)
    sc.src_y = sc.src_y + rng.normal(0, 1, sc.src_y.size) * np.sqrt(sigma**2 - 0.02**2)
    args = (sc.src_x, sc.src_y, sc.src_flux, sc.ref_ra, sc.ref_dec, sc.ref_mag, guess, sc.bbox)
    cfg = AstrometryConfig(n_clip_iter=0)
    plain = solve_astrometry(*args, cfg)
    weighted = solve_astrometry(*args, cfg, weights=1.0 / (sigma**2 + 0.015**2))
    assert plain.success and weighted.success
    err_plain = np.sqrt(np.mean(wcs_error_mas(plain.wcs, true_wcs, sc.bbox) ** 2))
    err_weighted = np.sqrt(np.mean(wcs_error_mas(weighted.wcs, true_wcs, sc.bbox) ** 2))
    assert err_weighted < 0.6 * err_plain
    assert err_weighted < 10.0
