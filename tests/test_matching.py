"""Tests of source / reference matching with a poor initial WCS (processing.algorithms.matching)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.wcs import WCS

from processing.algorithms.matching import MatchConfig, match_to_reference, unique_nearest_pairs
from store.geom import Box
from tests._astrometry_scene import make_guess_wcs, make_scene, make_true_wcs


def _tan(crval=(10.0, -5.0), size=2048):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval)
    w.wcs.crpix = [(size - 1) / 2 + 1, (size - 1) / 2 + 1]
    w.wcs.cd = np.diag([-0.2, 0.2]) / 3600
    return w


def _check_truth(scene, m, min_found=0.95):
    """All matches correct (at most one chance pair) and nearly all true pairs found."""
    correct = scene.true_src_of_ref[m.ref_index] == m.src_index
    n_true = int((scene.true_src_of_ref >= 0).sum())
    assert (~correct).sum() <= 1
    assert correct.sum() >= min_found * n_true


@pytest.mark.parametrize("angle_deg", [-0.9, 0.0, 0.4])
def test_pixel_space_rotation_and_shift_recovered(angle_deg):
    """Sources = references rotated by a known angle about the centre and shifted 100 px."""
    rng = np.random.default_rng(4)
    w = _tan()
    x, y = rng.uniform(0, 2047, (2, 200))
    ra, dec = w.all_pix2world(x, y, 0)
    c = 1023.5
    th = np.radians(angle_deg)
    sx = np.cos(th) * (x - c) - np.sin(th) * (y - c) + c + 100.0
    sy = np.sin(th) * (x - c) + np.cos(th) * (y - c) + c - 60.0
    m = match_to_reference(sx, sy, rng.uniform(1, 2, 200), ra, dec, rng.uniform(15, 20, 200), w,
                           bbox=Box(0, 0, 2048, 2048))
    assert m.success and m.n_matches >= 180          # a few rotate off the detector edge
    assert m.rotation_deg == pytest.approx(angle_deg, abs=1e-6)
    assert m.offset_x_pix == pytest.approx(100.0, abs=1e-6)
    assert m.offset_y_pix == pytest.approx(-60.0, abs=1e-6)
    assert m.offset_arcsec == pytest.approx(0.2 * np.hypot(100, 60), rel=1e-4)
    assert m.scale == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_array_equal(m.src_index, m.ref_index)   # same order by construction


@pytest.mark.parametrize(("offset", "rot"), [((3.0, 0.0), 0.2), ((21.0, -21.0), 0.5),
                                             ((-25.0, 15.0), -1.0)])
def test_distorted_field_with_unmatched_objects(offset, rot):
    """TAN guess vs TAN-SIP truth (4 px at corners), 50 % refs and most sources unmatched."""
    rng = np.random.default_rng(7)
    true_wcs = make_true_wcs(rot_deg=rng.uniform(0, 360))
    guess = make_guess_wcs(true_wcs, offset, rot)
    sc = make_scene(rng, true_wcs, n_common=150, n_ref_only=150, n_src_only=2500)
    m = match_to_reference(sc.src_x, sc.src_y, sc.src_flux, sc.ref_ra, sc.ref_dec, sc.ref_mag, guess,
                           bbox=sc.bbox)
    assert m.success, m.reason
    _check_truth(sc, m)
    assert m.transform_order == 3 and m.flags == ()
    assert m.offset_arcsec == pytest.approx(np.hypot(*offset), abs=0.5)
    assert abs(abs(m.rotation_deg) - abs(rot)) < 0.01
    assert m.rms_pix < 0.1


def test_large_detector_strong_distortion():
    rng = np.random.default_rng(12)
    true_wcs = make_true_wcs(4072, 4000, distortion_pix=8.0, rot_deg=rng.uniform(0, 360))
    guess = make_guess_wcs(true_wcs, (4.0, -3.0), 0.3)
    sc = make_scene(rng, true_wcs, width=4072, height=4000, n_common=300, n_ref_only=200,
                    n_src_only=3000, centroid_sigma_pix=0.1)
    m = match_to_reference(sc.src_x, sc.src_y, sc.src_flux, sc.ref_ra, sc.ref_dec, sc.ref_mag, guess,
                           bbox=sc.bbox)
    assert m.success, m.reason
    _check_truth(sc, m)


def test_few_common_stars_still_matched():
    """Only 40 of 160 references are detected, among 1500 other sources."""
    rng = np.random.default_rng(21)
    true_wcs = make_true_wcs(rot_deg=rng.uniform(0, 360))
    guess = make_guess_wcs(true_wcs, (10.0, 5.0), -0.6)
    sc = make_scene(rng, true_wcs, n_common=40, n_ref_only=120, n_src_only=1500)
    m = match_to_reference(sc.src_x, sc.src_y, sc.src_flux, sc.ref_ra, sc.ref_dec, sc.ref_mag, guess,
                           bbox=sc.bbox)
    assert m.success, m.reason
    _check_truth(sc, m)


@pytest.mark.parametrize("seed", range(4))
def test_no_overlap_fails_cleanly(seed):
    """References around a guess 1 degree away from where the sources really are."""
    rng = np.random.default_rng(seed)
    true_wcs = make_true_wcs(rot_deg=rng.uniform(0, 360))
    guess = make_guess_wcs(true_wcs, (3600.0, 0.0), 0.2)
    sc = make_scene(rng, true_wcs, n_common=300, n_ref_only=100, n_src_only=3000, ref_wcs=guess)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = match_to_reference(sc.src_x, sc.src_y, sc.src_flux, sc.ref_ra, sc.ref_dec, sc.ref_mag,
                               guess, bbox=sc.bbox)
    assert not m
    assert m.reason.startswith("no consistent solution")
    assert "\n" not in m.reason
    assert m.n_matches == 0 and m.match_significance < MatchConfig().min_match_significance


def test_degenerate_inputs_are_failed_results():
    w = _tan()
    box = Box(0, 0, 2048, 2048)
    m = match_to_reference(np.array([1.0, np.nan]), np.array([1.0, 2.0]), np.ones(2),
                           np.array([10.0]), np.array([-5.0]), np.array([15.0]), w, bbox=box)
    assert not m and "only 1 sources with finite centroids" in m.reason
    x = np.arange(10.0) * 100
    m = match_to_reference(x, x, np.ones(10), np.array([200.0]), np.array([40.0]), np.array([15.0]),
                           w, bbox=box)
    assert not m and "only 0 reference stars fall within" in m.reason
    assert "success=False" in repr(m)


def testunique_nearest_pairs_is_one_to_one():
    from scipy.spatial import cKDTree

    src = np.array([[0.0, 0.0], [10.0, 0.0]])
    refs_x = np.array([0.5, 0.2, 9.0, 30.0])
    refs_y = np.zeros(4)
    i_ref, i_src, d = unique_nearest_pairs(cKDTree(src), refs_x, refs_y, 2.0)
    # refs 0 and 1 both want source 0: the closer (ref 1) wins; ref 3 is out of range
    np.testing.assert_array_equal(i_ref, [1, 2])
    np.testing.assert_array_equal(i_src, [0, 1])
    np.testing.assert_allclose(d, [0.2, 1.0])


def test_config_validation():
    with pytest.raises(ValueError, match="min_matches must be >= 3, got 2"):
        MatchConfig(min_matches=2)
    with pytest.raises(ValueError, match="max_rotation_deg must be >= 0, got -1"):
        MatchConfig(max_rotation_deg=-1)
    with pytest.raises(ValueError, match="differ in length"):
        match_to_reference(np.ones(3), np.ones(2), np.ones(3), np.ones(1), np.ones(1), np.ones(1),
                           _tan())
