"""Tests of the PhotoCalTask-style zero point (processing.algorithms.photocal)."""

from __future__ import annotations

import numpy as np
import pytest

from processing.algorithms.photocal import PhotoCalConfig, fit_zero_point
from store.calib import AB_ZERO_NJY


def _stars(rng, n=50, zp=31.2, snr=(50.0, 500.0), ref_noise=0.002, outlier_frac=0.1):
    """Matched stars with true zero point ``zp``; returns (inst, err, ref_njy, outlier index)."""
    ref_true = AB_ZERO_NJY * 10 ** (-0.4 * rng.uniform(17.0, 21.0, n))
    inst_true = ref_true / (AB_ZERO_NJY * 10 ** (-0.4 * zp))
    err = inst_true / rng.uniform(*snr, n)
    inst = inst_true + rng.normal(0.0, 1.0, n) * err
    ref = ref_true * (1.0 + rng.normal(0.0, ref_noise, n))
    n_out = round(outlier_frac * n)
    out = rng.choice(n, n_out, replace=False)
    # variables, blends, mis-matches: 0.1-1 mag either way
    inst[out] *= 10 ** (0.4 * rng.choice([-1.0, 1.0], n_out) * rng.uniform(0.1, 1.0, n_out))
    return inst, err, ref, out


@pytest.mark.parametrize("seed", range(6))
def test_zero_point_recovered_with_outliers(seed):
    rng = np.random.default_rng(seed)
    inst, err, ref, out = _stars(rng)
    r = fit_zero_point(inst, err, ref)
    assert r.success and r.flags == ()
    assert abs(r.zero_point - 31.2) < 0.003
    assert not r.used[out].any()               # every outlier rejected
    assert 35 <= r.n_used <= 45
    assert 0.0 < r.zero_point_err < 0.002
    # the PhotoCalib carries the same zero point and calibrates good stars onto the reference
    assert r.photo_calib.zero_point == pytest.approx(r.zero_point, abs=1e-12)
    good = r.used
    ratio = r.photo_calib.instflux_to_njy(inst[good]) / ref[good]
    assert np.median(np.abs(ratio - 1.0)) < 0.01


def test_zero_point_error_is_inverse_variance_error():
    rng = np.random.default_rng(11)
    inst, err, ref, _ = _stars(rng, outlier_frac=0.0, ref_noise=0.0)
    r = fit_zero_point(inst, err, ref)
    mag_err = 2.5 / np.log(10) * err[r.used] / inst[r.used]
    assert r.zero_point_err == pytest.approx(1.0 / np.sqrt(np.sum(mag_err**-2)), rel=1e-12)
    dmag = -2.5 * np.log10(ref / AB_ZERO_NJY) + 2.5 * np.log10(inst)
    np.testing.assert_allclose(r.dmag, dmag, rtol=0, atol=1e-12)


def test_mode_start_resists_majority_one_sided_outliers():
    """A tight core of 30 stars plus 35 broad one-sided outliers: the median is biased, the mode not."""
    rng = np.random.default_rng(3)
    inst, err, ref, _ = _stars(rng, n=65, outlier_frac=0.0, snr=(200.0, 500.0))
    bad = np.arange(30, 65)
    inst[bad] *= 10 ** (0.4 * rng.uniform(0.1, 1.0, bad.size))   # all brighter (blends)
    dmag = -2.5 * np.log10(ref / AB_ZERO_NJY) + 2.5 * np.log10(inst)
    assert np.median(dmag) - 31.2 > 0.05      # a median start would begin in the outliers
    r = fit_zero_point(inst, err, ref)
    assert abs(r.zero_point - 31.2) < 0.003
    assert not r.used[bad].any()


def test_hand_computed_degenerate_case():
    """dmag = [0, 1, 1, 1, 2]: 20 bins of 0.1 mag; mode bin [1.0, 1.1) -> centre 1.05,
    half-max walk gives q1 = 1, q3 = 2, sigma = 1/2.3, clip at 3 x min(0.435, 0.25) keeps the
    three 1s; pass 2: centre 1, IQR 0 -> nothing kept -> Rubin returns the centre (1.0) with all
    stars counted."""
    dmag = np.array([0.0, 1.0, 1.0, 1.0, 2.0])
    inst = np.full(5, 1000.0)
    ref = inst * AB_ZERO_NJY * 10 ** (-0.4 * dmag)
    r = fit_zero_point(inst, inst / 100.0, ref)
    assert r.success
    assert r.flags == ("CLIP_REJECTED_ALL",)
    assert r.zero_point == pytest.approx(1.0, abs=1e-12)
    assert r.n_used == 5 and r.n_iter == 2
    assert r.sigma == 0.0


def test_sigma_max_none_derives_cap_from_first_pass():
    rng = np.random.default_rng(5)
    inst, err, ref, out = _stars(rng)
    r = fit_zero_point(inst, err, ref, PhotoCalConfig(sigma_max=None))
    assert abs(r.zero_point - 31.2) < 0.003
    assert not r.used[out].any()


def test_unusable_pairs_are_skipped():
    rng = np.random.default_rng(8)
    inst, err, ref, _ = _stars(rng, outlier_frac=0.0)
    inst[0] = -5.0
    err[1] = 0.0
    ref[2] = np.nan
    inst[3] = np.inf
    r = fit_zero_point(inst, err, ref)
    assert not r.used[:4].any()
    assert np.isnan(r.dmag[:4]).all()
    assert abs(r.zero_point - 31.2) < 0.003


@pytest.mark.parametrize("n", [0, 3])
def test_no_usable_stars_is_a_failed_result(n):
    r = fit_zero_point(np.full(n, -1.0), np.ones(n), np.ones(n))
    assert not r
    assert r.photo_calib is None and np.isnan(r.zero_point) and r.n_used == 0
    assert "no usable calibration stars" in r.reason


def test_single_star_gives_its_own_zero_point():
    r = fit_zero_point(np.array([1000.0]), np.array([10.0]), np.array([AB_ZERO_NJY * 1e-10]))
    assert r.success
    assert r.zero_point == pytest.approx(25.0 + 2.5 * np.log10(1000.0), abs=1e-9)


def test_mag_err_floor_changes_weights_not_zero_point_much():
    rng = np.random.default_rng(2)
    inst, err, ref, _ = _stars(rng)
    r0 = fit_zero_point(inst, err, ref)
    r1 = fit_zero_point(inst, err, ref, PhotoCalConfig(mag_err_floor=0.01))
    assert r1.zero_point_err > r0.zero_point_err
    assert abs(r1.zero_point - 31.2) < 0.003


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="differ in length: 2, 2, 3"):
        fit_zero_point(np.ones(2), np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match="n_iter must be >= 1, got 0"):
        PhotoCalConfig(n_iter=0)
    with pytest.raises(ValueError, match="sigma_max must be positive or None, got -1"):
        PhotoCalConfig(sigma_max=-1)
