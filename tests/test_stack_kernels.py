"""The compiled block stack against the numpy reference stack and hand-computed values."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from processing.algorithms.stack import stack_mean, stack_meanclip
from processing.algorithms.stack_kernels import robust_template, stack_block
from store.masks import bits


def random_inputs(n=9, shape=(40, 50), seed=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(100.0, 5.0, (n, *shape)).astype(np.float32)
    v = rng.uniform(20.0, 30.0, (n, *shape)).astype(np.float32)
    m = np.zeros((n, *shape), np.int32)
    planes = ("BAD", "SAT", "EDGE", "NO_DATA", "CLIPPED", "CR", "DETECTED")
    for k in range(n):
        for name in planes:
            sel = rng.random(shape) < 0.04
            m[k][sel] |= bits(name)
    x[rng.random(x.shape) < 0.02] = np.nan
    v[rng.random(v.shape) < 0.02] = np.inf
    x[rng.random(x.shape) < 0.03] += 200.0  # outliers for the clipping
    m[:, :3, :3] = bits("NO_DATA")  # a corner with no accepted input at all
    w = rng.uniform(0.5, 2.0, n)
    return x, v, m, w


def assert_same(ours, ref):
    for name in ("image", "variance"):
        a, b = getattr(ours, name), getattr(ref, name)
        assert np.array_equal(np.isnan(a), np.isnan(b)), name
        ok = ~np.isnan(a)
        np.testing.assert_allclose(a[ok], b[ok], rtol=2e-6, atol=1e-6, err_msg=name)
    for name in ("mask", "n_image", "n_clipped"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(ref, name), err_msg=name)


@pytest.mark.parametrize("calc_error", [True, False])
def test_mean_matches_reference(calc_error):
    x, v, m, w = random_inputs()
    bad = bits("NO_DATA", "BAD", "SAT", "EDGE", "CLIPPED")
    ours = stack_block(x, v, m, w, statistic="MEAN", bad_mask=bad,
                       calc_error_from_input_variance=calc_error)
    ref = stack_mean(list(x), list(v), list(m), w, bad_mask=bad,
                     calc_error_from_input_variance=calc_error)
    assert_same(ours, ref)
    assert np.all(ours.mask[:3, :3] & bits("NO_DATA"))
    assert (ours.mask & bits("REJECTED")).any() and (ours.mask & bits("SENSOR_EDGE")).any()


@pytest.mark.parametrize(("n_sigma", "n_iter", "calc_error"), [(3.0, 2, True), (2.5, 3, False),
                                                              (1.5, 1, True)])
def test_meanclip_matches_reference(n_sigma, n_iter, calc_error):
    x, v, m, w = random_inputs(seed=5)
    ours = stack_block(x, v, m, w, statistic="MEANCLIP", n_sigma=n_sigma, n_iter=n_iter,
                       calc_error_from_input_variance=calc_error, thresholds={"SAT": 0.2, "CR": 0.5})
    ref = stack_meanclip(list(x), list(v), list(m), w, n_sigma=n_sigma, n_iter=n_iter,
                         calc_error_from_input_variance=calc_error,
                         thresholds={"SAT": 0.2, "CR": 0.5})
    assert_same(ours, ref)
    assert ours.n_clipped.sum() > 0 and np.all((ours.mask[ours.n_clipped > 0]
                                                & bits("CLIPPED")) != 0)


def test_hand_computed_pixel():
    # Three inputs at one pixel: 1, 2 and 30 with weights 1, 1, 2; MEANCLIP drops 30.
    x = np.array([1.0, 2.0, 30.0], np.float32).reshape(3, 1, 1)
    v = np.array([1.0, 1.0, 0.5], np.float32).reshape(3, 1, 1)
    w = [1.0, 1.0, 2.0]
    mean = stack_block(x, v, None, w)
    assert mean.image[0, 0] == pytest.approx((1 + 2 + 60) / 4)
    assert mean.variance[0, 0] == pytest.approx((1 + 1 + 4 * 0.5) / 16)
    # median 2, IQR = 15.25 - 1.5 -> width 3 * 0.7413 * 13.75 = 30.6: nothing clipped on pass 1;
    # pass 2 around the mean (15.75) with 3 x the weighted spread keeps everything too.
    clip = stack_block(x, v, None, w, statistic="MEANCLIP", n_sigma=1.0, n_iter=2)
    # n_sigma 1: pass 1 keeps |x - 2| <= 10.19 -> {1, 2}; pass 2 around 1.5 with sigma 0.707.
    assert clip.image[0, 0] == pytest.approx(1.5)
    assert clip.n_clipped[0, 0] == 1 and clip.mask[0, 0] & bits("CLIPPED")
    assert clip.mask[0, 0] & bits("INEXACT_PSF")


def test_misuse_is_reported():
    x = np.ones((2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="statistic must be one of"):
        stack_block(x, x, None, [1, 1], statistic="MODE")
    with pytest.raises(ValueError, match="weights must be finite and > 0"):
        stack_block(x, x, None, [1, -1])
    with pytest.raises(ValueError, match="got 2 images but 3 weights"):
        stack_block(x, x, None, [1, 1, 1])
    with pytest.raises(ValueError, match="variances must have shape"):
        stack_block(x, x[:, :2], None, [1, 1])


def test_median_and_robust_mean_templates():
    x, v, m, w = random_inputs(seed=8)
    bad = bits("NO_DATA", "BAD", "SAT", "EDGE")
    med = stack_block(x, v, m, w, statistic="MEDIAN", bad_mask=bad)
    accepted = np.isfinite(x) & np.isfinite(v) & ((m & bad) == 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
        ref = np.nanmedian(np.where(accepted, x, np.nan), axis=0)
    empty = ~accepted.any(axis=0)
    np.testing.assert_allclose(med.image[~empty], ref[~empty], rtol=1e-6)
    assert np.all(np.isnan(med.image[empty])) and np.all(med.mask[empty] & bits("NO_DATA"))
    np.testing.assert_array_equal(med.n_image, accepted.sum(axis=0))
    # ROBUSTMEAN: the weighted mean of the inputs within 3 of their sigmas of that median.
    img, var, n, wsum, median = robust_template(x, v, m, w, bad_mask=bad, n_sigma=3.0)
    np.testing.assert_array_equal(np.isnan(median), np.isnan(med.image))
    np.testing.assert_allclose(median[~empty], med.image[~empty], rtol=1e-6)
    some_var = np.isfinite(var)
    near = accepted & (np.abs(x - med.image) <= 3 * np.sqrt(v))
    ws = np.where(near, w[:, None, None], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = (ws * np.where(near, x, 0)).sum(0) / ws.sum(0)
    some = near.any(axis=0)
    np.testing.assert_allclose(img[some], expected[some], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(wsum[some], ws.sum(0)[some], rtol=1e-9)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected_var = (ws ** 2 * np.where(near, v, 0)).sum(0) / ws.sum(0) ** 2
    np.testing.assert_allclose(var[some], expected_var[some], rtol=1e-5)
    assert some_var[some].all()
    np.testing.assert_array_equal(n, accepted.sum(axis=0))
