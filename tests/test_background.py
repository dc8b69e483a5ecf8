"""Tests of processing.algorithms.background against simulated truth."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

from processing.algorithms.background import (
    BackgroundConfig,
    BackgroundList,
    BackgroundModel,
    estimate_background,
    subtract_background,
)
from processing.algorithms.stats import clipped_stats
from store.formats.fits import read_bundle, write_bundle
from store.masks import bits

NOISE = 10.0  # ADU per pixel


def _sky(shape):
    """Plane + gradient + broad Gaussian bump, ADU."""
    y, x = np.mgrid[: shape[0], : shape[1]].astype(float)
    return 1000 + 0.02 * x - 0.015 * y + 40 * np.exp(-((x - 600) ** 2 + (y - 400) ** 2) / (2 * 250**2))


def _scene(seed=2, shape=(1024, 1024), n_stars=300):
    rng = np.random.default_rng(seed)
    sky = _sky(shape)
    y, x = np.mgrid[: shape[0], : shape[1]].astype(float)
    stars = np.zeros(shape)
    sx, sy = rng.uniform(0, shape[1], n_stars), rng.uniform(0, shape[0], n_stars)
    flux = 10 ** rng.uniform(3, 5, n_stars)
    for i in range(n_stars):  # test scene only; 300 small stamps
        sl = (slice(max(0, int(sy[i]) - 15), int(sy[i]) + 16),
              slice(max(0, int(sx[i]) - 15), int(sx[i]) + 16))
        stars[sl] += flux[i] / (8 * np.pi) * np.exp(-((x[sl] - sx[i]) ** 2 + (y[sl] - sy[i]) ** 2) / 8)
    image = (sky + stars + rng.normal(size=shape) * NOISE).astype(np.float32)
    detected = np.where(stars > 0.5 * NOISE, bits("DETECTED"), 0).astype(np.int32)
    return image, detected, sky


def test_recovers_smooth_sky_under_stars_well_below_noise():
    image, detected, sky = _scene()
    resid = estimate_background(image, detected).evaluate() - sky
    # Measured: rms 0.033 sigma, max 0.17 sigma (bin 128 on a 1024^2 image).
    assert np.sqrt(np.mean(resid**2)) < 0.05 * NOISE
    assert np.abs(resid).max() < 0.25 * NOISE
    # Without the DETECTED mask, clipping alone keeps the bias small.
    resid_unmasked = estimate_background(image).evaluate() - sky
    assert abs(resid_unmasked.mean()) < 0.03 * NOISE
    assert np.sqrt(np.mean(resid_unmasked**2)) < 0.06 * NOISE


def test_bin_statistic_is_afw_meanclip():
    image, detected, _ = _scene(seed=3, shape=(512, 512), n_stars=100)
    model = estimate_background(image, detected)
    ignored = bits(BackgroundConfig().ignored_mask_planes)
    for by, bx in [(0, 0), (1, 2), (3, 3)]:
        sl = (slice(128 * by, 128 * by + 128), slice(128 * bx, 128 * bx + 128))
        ref = clipped_stats(image[sl], mask=detected[sl], and_mask=ignored)
        assert model.stats_image[by, bx] == pytest.approx(ref.mean, abs=1e-3)
        assert model.n_good[by, bx] == ref.n_used


def test_masked_and_nan_pixels_are_ignored():
    image, detected, sky = _scene(seed=4)
    clean = estimate_background(image, detected).evaluate()
    dirty = image.copy()
    mask = detected.copy()
    dirty[100:180, 200:700] = 1e6  # a bleed trail, flagged SAT
    mask[100:180, 200:700] |= bits("SAT")
    dirty[500:520, :] = np.nan  # unflagged NaN rows
    dirty[700:1024, 0:400] = -5e4  # a dead corner, flagged BAD: whole bins empty
    mask[700:1024, 0:400] |= bits("BAD")
    with pytest.warns(UserWarning, match="filled from their neighbours"):
        model = estimate_background(dirty, mask)
    est = model.evaluate()
    assert np.isfinite(est).all()
    resid = est - sky
    # Measured: rms 0.08 sigma, max 0.53 sigma.  The largest errors are where the
    # bleed trail masks half of a bin on the slope of the bump: as in afw, a bin's
    # clipped mean describes the centroid of its good pixels but is placed at the
    # bin centre.
    assert np.sqrt(np.mean(resid**2)) < 0.1 * NOISE
    assert np.abs(resid).max() < 0.7 * NOISE
    corner = resid[700:, :400]  # whole bins with no data, filled along rows/columns
    assert np.abs(corner).max() < 0.3 * NOISE
    # Unflagged NaN rows alone cost only the lost pixels.
    holed = image.copy()
    holed[500:520, :] = np.nan
    assert np.abs(estimate_background(holed, detected).evaluate() - clean).max() < 0.05 * NOISE


@pytest.mark.parametrize("shape, bin_size", [((100, 100), 64), ((300, 200), 64), ((130, 700), 128),
                                             ((1000, 999), 128)])
def test_plane_is_exact_for_any_number_of_bins(shape, bin_size):
    # Linear data is reproduced by every interpolation order (Akima for >= 5
    # bins, natural cubic for 3-4, linear for 2) and by the linear extension
    # beyond the outer bin centres.
    y, x = np.mgrid[: shape[0], : shape[1]].astype(float)
    plane = 500 + 0.3 * x - 0.2 * y
    model = estimate_background(plane.astype(np.float32), config=BackgroundConfig(bin_size=bin_size))
    assert np.abs(model.evaluate() - plane).max() < 2e-3


def test_single_bin_direction_is_constant():
    y, x = np.mgrid[:50, :700].astype(float)
    plane = 500 + 0.3 * x - 0.2 * y
    model = estimate_background(plane.astype(np.float32))
    assert model.stats_image.shape == (1, 6)
    est = model.evaluate()
    assert np.abs(est - est[:1]).max() < 1e-4  # no y structure with one bin row
    np.testing.assert_allclose(est[0], plane.mean(axis=0), atol=2e-3)


def test_sub_box_evaluation_matches_full_image():
    image, detected, _ = _scene(seed=5, shape=(600, 800), n_stars=50)
    model = estimate_background(image, detected)
    full = model.evaluate()
    part = model.evaluate(x0=130, y0=250, width=300, height=200)
    np.testing.assert_array_equal(part, full[250:450, 130:430])


def test_bundle_round_trip_and_background_list():
    image, detected, _ = _scene(seed=6, shape=(512, 640), n_stars=50)
    first = estimate_background(image, detected)
    second = estimate_background(image - first.evaluate(), detected, BackgroundConfig(bin_size=64))
    buf = io.BytesIO()
    write_bundle(first.to_bundle(), buf)
    buf.seek(0)
    back = BackgroundModel.from_bundle(read_bundle(buf))
    np.testing.assert_array_equal(back.evaluate(), first.evaluate())
    assert back.shape == (512, 640)

    bg = BackgroundList([first])
    bg.append(second)
    np.testing.assert_allclose(bg.evaluate(), first.evaluate() + second.evaluate(), atol=1e-3)
    expected_sky = np.median(first.stats_image) + np.median(second.stats_image)
    assert bg.sky_level() == pytest.approx(expected_sky)
    buf = io.BytesIO()
    write_bundle(bg.to_bundle(), buf)
    buf.seek(0)
    back_list = BackgroundList.from_bundle(read_bundle(buf))
    assert len(back_list) == 2 and back_list[1].bin_width == 64
    np.testing.assert_array_equal(back_list.evaluate(), bg.evaluate())
    with pytest.raises(ValueError, match="differs from"):
        bg.append(estimate_background(image[:256]))


def test_subtract_background_leaves_input_untouched():
    image, detected, _ = _scene(seed=7, shape=(512, 512), n_stars=20)
    before = image.copy()
    subtracted, model = subtract_background(image, detected)
    np.testing.assert_array_equal(image, before)
    assert subtracted.dtype == np.float32
    np.testing.assert_allclose(subtracted, image - model.evaluate())


def test_bad_inputs_are_rejected_with_the_value():
    with pytest.raises(ValueError, match="bin_size must be >= 1 pixel, got 0"):
        BackgroundConfig(bin_size=0)
    with pytest.raises(KeyError, match="NOPE"):
        BackgroundConfig(ignored_mask_planes=("NOPE",))
    with pytest.raises(ValueError, match="image must be 2-D"):
        estimate_background(np.zeros(10))
    with pytest.raises(ValueError, match=r"mask shape \(5, 5\)"):
        estimate_background(np.zeros((10, 10)), np.zeros((5, 5), np.int32))
    with warnings.catch_warnings(), pytest.raises(ValueError, match="no background bin"):
        estimate_background(np.full((100, 100), np.nan), config=BackgroundConfig(bin_size=32))
