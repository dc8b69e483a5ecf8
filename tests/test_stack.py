"""Tests of processing.algorithms.stack on synthetic stacks with known truth."""

from __future__ import annotations

import numpy as np
import pytest

from processing.algorithms.stack import (
    AccumulatorMeanStack,
    coadd_weight,
    rejected_mask_map,
    set_coadd_edge_bits,
    stack_mean,
    stack_meanclip,
)
from processing.algorithms.stats import clipped_stats
from store.masks import bits

BAD = bits("NO_DATA", "BAD", "SAT", "EDGE")


def make_stack(n=10, shape=(120, 150), seed=0, truth=100.0):
    rng = np.random.default_rng(seed)
    sigmas = rng.uniform(1.0, 4.0, n)
    images = np.array([truth + rng.normal(0, s, shape) for s in sigmas], dtype=np.float32)
    variances = np.array([np.full(shape, s * s) for s in sigmas], dtype=np.float32)
    masks = np.zeros((n, *shape), np.int32)
    return images, variances, masks, sigmas


def test_rejected_mask_map_follows_set_rejected_mask_mapping():
    mapping = dict((dst, src) for src, dst in rejected_mask_map(BAD))
    assert mapping[bits("REJECTED")] == bits("BAD", "SAT")
    assert mapping[bits("SENSOR_EDGE")] == bits("EDGE")
    assert mapping[bits("CLIPPED")] == bits("CLIPPED")


def test_mean_is_inverse_variance_weighted_mean():
    images, variances, _, sigmas = make_stack()
    weights = 1.0 / sigmas**2
    res = stack_mean(images, variances, None, weights)
    w = weights[:, None, None]
    expected = (w * images).sum(0) / w.sum()
    np.testing.assert_allclose(res.image, expected, rtol=1e-6)
    np.testing.assert_allclose(res.variance, 1.0 / weights.sum(), rtol=1e-6)
    assert (res.n_image == len(sigmas)).all()
    assert (res.mask == 0).all()


def test_predicted_variance_matches_empirical_scatter():
    # Noise levels differing by a factor 4 between inputs.
    images, variances, masks, sigmas = make_stack(n=8, shape=(200, 200), seed=1)
    weights = np.array([coadd_weight(v) for v in variances])
    np.testing.assert_allclose(weights, 1.0 / sigmas**2, rtol=1e-6)
    res = stack_mean(images, variances, masks, weights)
    assert abs(np.var(res.image - 100.0) / np.mean(res.variance) - 1) < 0.05


def test_meanclip_variance_prediction_with_many_epochs():
    # Clipping around an estimated centre amplifies the centre's error, so the
    # prediction is a few per cent low (8% at N = 8, 3.5% at N = 50: afw behaves alike).
    rng = np.random.default_rng(8)
    n, shape = 50, (200, 200)
    sigmas = rng.uniform(1.0, 1.5, n)
    images = (100.0 + rng.normal(0, 1, (n, *shape)) * sigmas[:, None, None]).astype(np.float32)
    variances = np.broadcast_to((sigmas**2)[:, None, None], images.shape).astype(np.float32)
    res = stack_meanclip(images, variances, [None] * n, 1.0 / sigmas**2)
    ratio = np.var(res.image - 100.0) / np.mean(res.variance)
    assert 0.98 < ratio < 1.05


def test_meanclip_removes_a_single_epoch_streak():
    images, variances, masks, sigmas = make_stack(n=10, seed=2)
    streak = np.zeros(images.shape[1:], bool)
    streak[60:63, 10:140] = True
    images[3][streak] += 50 * sigmas[3]
    weights = 1.0 / sigmas**2
    clipped = stack_meanclip(images, variances, masks, weights)
    mean = stack_mean(images, variances, masks, weights)
    sigma_coadd = np.sqrt(1.0 / weights.sum())
    assert (clipped.n_clipped[streak] >= 1).all()
    assert (clipped.mask[streak] & bits("CLIPPED") != 0).all()
    assert (clipped.mask[streak] & bits("INEXACT_PSF") != 0).all()
    # Clipped result is unbiased on the streak; the plain mean is pulled up.
    assert abs(np.mean(clipped.image[streak]) - 100.0) < 3 * sigma_coadd
    assert np.mean(mean.image[streak]) - 100.0 > 20 * sigma_coadd
    # CLIPPED follows n_clipped exactly; off the streak the clipped mean stays unbiased.
    assert abs(np.mean(clipped.image[~streak]) - 100.0) < 0.05 * sigma_coadd
    np.testing.assert_array_equal(clipped.mask & bits("CLIPPED") != 0, clipped.n_clipped > 0)
    assert (mean.n_clipped == 0).all()


def test_meanclip_matches_scalar_clipped_stats():
    rng = np.random.default_rng(5)
    n, shape = 13, (6, 7)
    images = rng.standard_t(3, (n, *shape)).astype(np.float32)  # heavy tails: clipping happens
    variances = rng.uniform(0.5, 2.0, (n, *shape)).astype(np.float32)
    masks = np.where(rng.random((n, *shape)) < 0.15, bits("BAD"), 0).astype(np.int32)
    weights = rng.uniform(0.5, 2.0, n)
    res = stack_meanclip(images, variances, masks, weights, n_sigma=2.0, n_iter=3)
    for j in range(shape[0]):
        for i in range(shape[1]):
            ref = clipped_stats(images[:, j, i], n_sigma=2.0, n_iter=3, weights=weights,
                                variances=variances[:, j, i], mask=masks[:, j, i], and_mask=BAD)
            assert res.image[j, i] == pytest.approx(ref.mean, rel=1e-5)
            assert np.sqrt(res.variance[j, i]) == pytest.approx(ref.error, rel=1e-5)
            assert res.n_clipped[j, i] == ref.n_clipped
    assert res.n_clipped.sum() > 0


def test_nan_and_no_data_inputs_are_ignored():
    images, variances, masks, sigmas = make_stack(n=5, seed=3)
    weights = 1.0 / sigmas**2
    cleans = [stacker(images[1:], variances[1:], masks[1:], weights[1:])
              for stacker in (stack_mean, stack_meanclip)]
    images[0, :40] = np.nan
    images[0, 40:] = 1e6  # garbage under NO_DATA
    masks[0, 40:] = bits("NO_DATA")
    for stacker, clean in zip((stack_mean, stack_meanclip), cleans, strict=True):
        res = stacker(images, variances, masks, weights)
        np.testing.assert_allclose(res.image, clean.image, rtol=1e-6)
        np.testing.assert_allclose(res.variance, clean.variance, rtol=1e-6)
        assert (res.n_image == 4).all()
        # NO_DATA is not a REJECTED cause, and the pixels still have data.
        np.testing.assert_array_equal(res.mask, clean.mask)
        assert (res.mask & bits("REJECTED", "NO_DATA") == 0).all()


def test_all_masked_pixels_are_no_data():
    images, variances, masks, sigmas = make_stack(n=4, seed=4)
    masks[:, 5:8, 5:9] = bits("BAD")
    images[:, 20, 20] = np.nan
    res = stack_meanclip(images, variances, masks, 1.0 / sigmas**2)
    empty = np.zeros(images.shape[1:], bool)
    empty[5:8, 5:9] = True
    empty[20, 20] = True
    assert np.isnan(res.image[empty]).all() and np.isnan(res.variance[empty]).all()
    assert (res.mask[empty] & bits("NO_DATA") != 0).all()
    assert (res.mask[5:8, 5:9] & bits("REJECTED") != 0).all()
    assert (res.n_image[empty] == 0).all()
    assert np.isfinite(res.image[~empty]).all()
    assert (res.mask[~empty] & bits("NO_DATA") == 0).all()


def test_mask_propagation_thresholds_and_mapping():
    n, shape = 10, (4, 6)
    images = np.ones((n, *shape), np.float32)
    variances = np.ones((n, *shape), np.float32)
    masks = np.zeros((n, *shape), np.int32)
    masks[0, 0, 0] = bits("SAT")  # 1 of 10 equal weights: fraction 0.1, not > 0.1
    masks[:2, 1, 0] = bits("SAT")  # 2 of 10: set
    masks[0, 2, 0] = bits("EDGE")
    masks[0, 3, 0] = bits("DETECTED")  # accepted input: OR'ed in
    masks[0, 0, 1] = bits("CR")  # not a bad bit: accepted and OR'ed in
    res = stack_mean(images, variances, masks, np.ones(n))
    assert res.mask[0, 0] == bits("REJECTED", "INEXACT_PSF")
    assert res.mask[1, 0] == bits("SAT", "REJECTED", "INEXACT_PSF")
    assert res.mask[2, 0] == bits("SENSOR_EDGE", "INEXACT_PSF")
    assert res.mask[3, 0] == bits("DETECTED")
    assert res.mask[0, 1] == bits("CR")
    assert res.n_image[0, 0] == 9 and res.n_image[3, 0] == 10
    np.testing.assert_allclose(res.image, 1.0)
    no_inexact = stack_mean(images, variances, masks, np.ones(n), set_inexact_psf=False)
    assert no_inexact.mask[0, 0] == bits("REJECTED")


@pytest.mark.parametrize("calc_error", [True, False])
def test_online_accumulator_equals_array_mean(calc_error):
    images, variances, masks, sigmas = make_stack(n=6, seed=6)
    rng = np.random.default_rng(7)
    for k in range(6):
        masks[k][rng.random(masks.shape[1:]) < 0.05] = bits("SAT")
        masks[k][rng.random(masks.shape[1:]) < 0.05] = bits("EDGE")
        masks[k][rng.random(masks.shape[1:]) < 0.05] |= bits("DETECTED")
    images[2, :10] = np.nan
    weights = 1.0 / sigmas**2
    ref = stack_mean(images, variances, masks, weights, calc_error_from_input_variance=calc_error)
    acc = AccumulatorMeanStack(images.shape[1:], bit_mask_value=BAD, compute_n_image=True,
                               calc_error_from_input_variance=calc_error)
    for img, var, msk, w in zip(images, variances, masks, weights, strict=True):
        acc.add_masked_image(img, msk, var, w)
    image, mask, variance = acc.fill_stacked_masked_image()
    np.testing.assert_allclose(image, ref.image, rtol=1e-6)
    np.testing.assert_allclose(variance, ref.variance, rtol=1e-5)
    np.testing.assert_array_equal(mask, ref.mask)
    np.testing.assert_array_equal(acc.n_image, ref.n_image)
    assert (mask & bits("REJECTED") != 0).any() and (mask & bits("SAT") != 0).any()
    acc.reset()
    assert acc.n_inputs == 0 and not acc.sum_w.any()


def test_online_add_image_is_plain_weighted_mean():
    acc = AccumulatorMeanStack((2, 3), bit_mask_value=BAD)
    acc.add_image(np.zeros((2, 3)), 1.0)
    acc.add_image(np.ones((2, 3)), 3.0)
    np.testing.assert_allclose(acc.fill_stacked_image(), 0.75)


def test_coadd_weight_and_edge_bits():
    var = np.full((50, 50), 4.0)
    mask = np.zeros((50, 50), np.int32)
    var[:5] = 1e9
    mask[:5] = bits("SAT")
    assert coadd_weight(var, mask, bad_mask=BAD) == pytest.approx(0.25)
    assert np.isnan(coadd_weight(np.zeros((5, 5))))
    m = np.zeros((2, 2), np.int32)
    set_coadd_edge_bits(m, np.array([[0.0, 1.0], [np.nan, 2.0]]))
    assert m.tolist() == [[bits("NO_DATA"), 0], [0, 0]]


def test_bad_inputs_are_rejected_with_the_value():
    ones = np.ones((2, 2))
    with pytest.raises(ValueError, match="got 2 images but 1 weights"):
        stack_mean([ones, ones], [ones, ones], [None, None], [1.0])
    with pytest.raises(ValueError, match=r"weights must be finite and > 0, got \[1.0, -1.0\]"):
        stack_mean([ones, ones], [ones, ones], [None, None], [1.0, -1.0])
    with pytest.raises(ValueError, match=r"all planes must have shape \(2, 2\), got \(3, 3\)"):
        stack_mean([ones, np.ones((3, 3))], [ones, ones], [None, None], [1.0, 1.0])
    with pytest.raises(ValueError, match="threshold for SAT must be in"):
        stack_mean([ones], [ones], [None], [1.0], thresholds={"SAT": 2.0})
    with pytest.raises(ValueError, match="at least one input image, got 0"):
        stack_mean([], [], [], [])
