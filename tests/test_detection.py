"""Tests of processing.algorithms.detection against simulated and analytic truth."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.special import erfc

from processing.algorithms.detection import (
    DetectionConfig,
    convolve_separable,
    detect_sources,
    gaussian_kernel,
    grow_mask,
)
from store.masks import bits
from tests._star_scenes import add_gaussian_stars, gaussian_psf_flux

SIGMA = 2.0  # PSF sigma, pixels
NOISE = 10.0


def _grid_scene(rng, snr, n_side=15, spacing=64, sign=1.0):
    size = n_side * spacing
    image = (rng.normal(size=(size, size)) * NOISE).astype(np.float32)
    centres = (np.arange(n_side) + 0.5) * spacing
    x = (centres[None, :] + rng.uniform(-0.5, 0.5, (n_side, n_side))).ravel()
    y = (centres[:, None] + rng.uniform(-0.5, 0.5, (n_side, n_side))).ravel()
    add_gaussian_stars(image, x, y, sign * gaussian_psf_flux(snr, SIGMA, NOISE), SIGMA)
    return image, np.full_like(image, NOISE**2), x, y


def _matched(peaks, x, y, radius=2.5):
    d = np.hypot(peaks["x"][None, :] - x[:, None], peaks["y"][None, :] - y[:, None])
    return d.min(axis=1) < radius if len(peaks) else np.zeros(len(x), bool)


def test_kernel_follows_afw_width_rule():
    for sigma, width in [(2.0, 15), (1.0, 7), (1.5, 11), (3.3, 23)]:
        k = gaussian_kernel(sigma)
        assert len(k) == width == (int(sigma * 7 + 0.5) // 2) * 2 + 1
        assert k.sum() == pytest.approx(1.0, abs=1e-6)
        assert np.argmax(k) == width // 2


@pytest.mark.parametrize("shape", [(300, 257), (5, 3), (1, 20), (20, 1), (70, 33)])
def test_separable_convolution_matches_ndimage(shape):
    rng = np.random.default_rng(0)
    img = rng.normal(size=shape).astype(np.float32)
    k = gaussian_kernel(1.7)
    ref = ndi.correlate(img.astype(float), np.outer(k, k).astype(float), mode="constant")
    np.testing.assert_allclose(convolve_separable(img, k), ref, atol=2e-6)


def test_grow_mask_is_a_disk_dilation():
    rng = np.random.default_rng(1)
    m = rng.random((200, 230)) > 0.995
    for r in (1, 3, 5, 8):
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        disk = xx**2 + yy**2 <= r * r
        np.testing.assert_array_equal(grow_mask(m, r), ndi.binary_dilation(m, disk))


def test_complete_at_snr_10_and_half_complete_at_threshold():
    rng = np.random.default_rng(3)
    image, var, x, y = _grid_scene(rng, snr=10)
    res = detect_sources(image, var, None, SIGMA)
    assert _matched(res.peaks, x, y).mean() == 1.0  # 225 of 225
    assert res.n_positive == 225 and len(res.peaks) == 225  # no spurious peaks or splits
    # A matched filter gives the optimal S/N: median peak significance ~ 10.
    assert np.median(res.peaks["significance"]) == pytest.approx(10.0, abs=0.4)
    # At S/N equal to the threshold about half are found.
    image, var, x, y = _grid_scene(rng, snr=5)
    frac = _matched(detect_sources(image, var, None, SIGMA).peaks, x, y).mean()
    assert 0.35 < frac < 0.65


def test_false_detections_on_pure_noise_follow_the_gaussian_tail():
    rng = np.random.default_rng(5)
    counts = {4.0: 0, 5.0: 0}
    n_pix, chi = 0, []
    for _ in range(4):
        image = rng.normal(size=(2048, 2048)).astype(np.float32)
        var = np.ones_like(image)
        for u in counts:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = detect_sources(image, var, None, SIGMA, DetectionConfig(threshold=u))
            counts[u] += len(res.peaks)
        h = res.kernel_half_width
        n_pix += (2048 - 2 * h) ** 2
        chi.append((res.smoothed / np.sqrt(res.smoothed_variance))[h:-h, h:-h])
    # The smoothed variance (kernel^2) normalises the smoothed noise to unit variance.
    chi = np.concatenate([c.ravel() for c in chi])
    assert chi.std() == pytest.approx(1.0, abs=0.01)
    assert (chi > 3).mean() == pytest.approx(0.5 * erfc(3 / np.sqrt(2)), rel=0.1)
    # Expected number of peaks above u of a Gaussian field smoothed by a Gaussian
    # of sigma s (Euler characteristic density, Adler 1981):
    # n = A * lambda2 / (2 pi)^1.5 * u * exp(-u^2 / 2), lambda2 = 1 / (2 s^2).
    expect = {u: n_pix / (2 * SIGMA**2) / (2 * np.pi) ** 1.5 * u * np.exp(-u * u / 2) for u in counts}
    # 4 sigma: expected 176, measured 167 (the pixel lattice loses a few maxima).
    assert counts[4.0] == pytest.approx(expect[4.0], rel=0.2)
    # 5 sigma: expected 2.4 over 16.7 Mpix; 9 is the Poisson 99.97% point.
    assert expect[5.0] == pytest.approx(2.45, abs=0.05)
    assert counts[5.0] <= 9


def test_negative_and_both_polarities():
    rng = np.random.default_rng(7)
    image, var, x, y = _grid_scene(rng, snr=20, n_side=6)
    add_gaussian_stars(image, x + 20, y + 20, -gaussian_psf_flux(20, SIGMA, NOISE), SIGMA)
    both = detect_sources(image, var, None, SIGMA, DetectionConfig(polarity="both"))
    assert _matched(both.peaks, x, y).all() and both.n_positive == 36
    assert _matched(both.negative_peaks, x + 20, y + 20).all() and both.n_negative == 36
    assert (both.negative_peaks["value"] < 0).all() and (both.negative_peaks["significance"] < -5).all()
    assert ((both.mask & bits("DETECTED_NEGATIVE")) != 0).sum() == (both.negative_labels > 0).sum()
    neg = detect_sources(image, var, None, SIGMA, DetectionConfig(polarity="negative"))
    assert neg.n_positive == 0 and neg.n_negative == 36 and neg.labels.max() == 0
    assert not (neg.mask & bits("DETECTED")).any()


def test_edge_growth_and_mask_bits():
    image = np.zeros((100, 120), np.float32)
    add_gaussian_stars(image, [50.0, 3.0], [40.0, 60.0], [5000.0, 5000.0], SIGMA)
    var = np.ones_like(image)
    mask = np.zeros(image.shape, np.int32)
    mask[0:5, 0:5] = bits("DETECTED") | bits("BAD")  # stale DETECTED is cleared
    before = mask.copy()
    res = detect_sources(image, var, mask, SIGMA)
    np.testing.assert_array_equal(mask, before)  # input untouched
    h = res.kernel_half_width
    assert h == 7
    edge = (res.mask & bits("EDGE")) != 0
    assert edge[:h].all() and edge[:, -h:].all() and not edge[h:-h, h:-h].any()
    assert (res.mask[0:5, 0:5] & bits("BAD")).all()
    # The star 3 px from the edge is centred in the EDGE frame; as in afw its wing
    # is detected, with its peak on the first searchable column.
    assert res.n_positive == 2
    assert sorted(zip(res.peaks["x"].tolist(), res.peaks["y"].tolist(), strict=True)) == [
        (7, 60), (50, 40)]
    # Footprint = above-threshold pixels grown by int(2.4 * sigma + 0.5) = 5 px.
    assert res.grow_radius == 5
    above = res.smoothed > 5 * np.sqrt(res.smoothed_variance)
    above[:h] = above[-h:] = False
    above[:, :h] = above[:, -h:] = False
    np.testing.assert_array_equal(res.labels > 0, grow_mask(above, 5))
    assert ((res.mask & bits("DETECTED")) != 0).sum() == res.footprints["area"].sum()
    for label in (1, 2):
        ys, xs = res.footprint_pixels(label)
        box = res.footprint_box(label)
        assert len(ys) == res.footprints["area"][label - 1]
        assert (res.labels[ys, xs] == label).all()
        assert (xs.min(), ys.min(), xs.max(), ys.max()) == (box.x0, box.y0, box.x1 - 1, box.y1 - 1)


def test_growth_merges_neighbours_and_peaks_are_sorted():
    image = np.zeros((80, 100), np.float32)
    add_gaussian_stars(image, [40.0, 52.0, 80.0], [40.0, 40.0, 40.0], [3000.0, 9000.0, 4000.0], SIGMA)
    res = detect_sources(image, np.full_like(image, NOISE**2), None, SIGMA)
    assert res.n_positive == 2
    first = res.peaks[res.peaks["footprint"] == res.labels[40, 40]]
    assert list(first["x"]) == [52, 40]  # brightest first
    assert res.footprints["n_peaks"][res.labels[40, 40] - 1] == 2


def test_min_pixels_multiplier_and_other_threshold_types():
    rng = np.random.default_rng(11)
    image = (rng.normal(size=(400, 400)) * NOISE).astype(np.float32)
    add_gaussian_stars(image, [100.0, 300.0], [100.0, 300.0],
                       [gaussian_psf_flux(8, SIGMA, NOISE), gaussian_psf_flux(40, SIGMA, NOISE)], SIGMA)
    var = np.full_like(image, NOISE**2)
    plain = detect_sources(image, var, None, SIGMA)
    assert plain.n_positive == 2
    strict = detect_sources(image, var, None, SIGMA, DetectionConfig(include_threshold_multiplier=3.0))
    assert strict.n_positive == 1 and strict.peaks["x"][0] == 300
    big = detect_sources(image, var, None, SIGMA, DetectionConfig(min_pixels=60))
    assert big.n_positive == 1
    # "stdev": the clipped stdev of the smoothed image ~ the pixel-stdev noise here.
    stdev = detect_sources(image, None, None, SIGMA, DetectionConfig(threshold_type="stdev"))
    # Smoothed white noise: NOISE * sqrt(sum of the 2-D kernel^2) = NOISE * sum(k_1d^2).
    noise_s = NOISE * (gaussian_kernel(SIGMA).astype(float) ** 2).sum()
    assert stdev.threshold == pytest.approx(5 * noise_s, rel=0.05)
    assert stdev.n_positive == 2
    value = detect_sources(image, var, None, SIGMA,
                           DetectionConfig(threshold_type="value", threshold=5 * noise_s))
    assert value.n_positive == 2
    np.testing.assert_allclose(value.peaks["significance"], plain.peaks["significance"])


def test_nothing_detected_warns_and_returns_empty_tables():
    image = np.zeros((64, 64), np.float32)
    with pytest.warns(UserWarning, match="no sources detected above 5.0"):
        res = detect_sources(image, np.ones_like(image), None, SIGMA)
    assert res.n_positive == 0 and len(res.peaks) == 0 and res.labels.max() == 0
    assert res.pixel_offsets.tolist() == [0]


def test_nan_pixels_do_not_spread():
    image = np.zeros((64, 64), np.float32)
    add_gaussian_stars(image, 30.0, 30.0, 3000.0, SIGMA)
    image[10, 10] = np.nan
    var = np.ones_like(image)
    var[50, 50] = np.inf
    res = detect_sources(image, var, None, SIGMA)
    assert np.isfinite(res.smoothed).all() and np.isfinite(res.smoothed_variance).all()
    assert res.n_positive == 1


def test_bad_inputs_name_the_value():
    with pytest.raises(ValueError, match=r"threshold_type must be one of .* got 'sigma'"):
        DetectionConfig(threshold_type="sigma")
    with pytest.raises(ValueError, match=r"polarity .* got 'up'"):
        DetectionConfig(polarity="up")
    with pytest.raises(ValueError, match="min_pixels must be >= 1, got 0"):
        DetectionConfig(min_pixels=0)
    img = np.zeros((10, 10), np.float32)
    with pytest.raises(ValueError, match="needs a variance image"):
        detect_sources(img, None, None, SIGMA)
    with pytest.raises(ValueError, match=r"variance shape \(3, 3\)"):
        detect_sources(img, np.ones((3, 3)), None, SIGMA)
    with pytest.raises(ValueError, match="psf_sigma must be > 0 pixels, got 0"):
        detect_sources(img, img, None, 0.0)
