"""Tests of processing.algorithms.deblend on simulated blends, stars and galaxies."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from processing.algorithms.deblend import DeblendConfig, deblend
from processing.algorithms.detection import detect_sources
from tests._star_scenes import add_gaussian_stars, gaussian_psf_flux, sersic_image

SIGMA = 2.0
NOISE = 10.0
FWHM = 2 * np.sqrt(2 * np.log(2)) * SIGMA


def _run(image, config=None):
    var = np.full_like(image, NOISE**2)
    det = detect_sources(image, var, None, SIGMA)
    return det, deblend(det, image, var, SIGMA, config)


def _noise(rng, shape):
    return (rng.normal(size=shape) * NOISE).astype(np.float32)


@pytest.mark.parametrize("ratio", [1.0, 0.2])
def test_two_stars_three_fwhm_apart_are_split(ratio):
    rng = np.random.default_rng(1)
    x = np.array([25.3, 25.3 + 3 * FWHM])
    y = np.array([31.6, 31.9])
    for _ in range(20):
        image = _noise(rng, (64, 64))
        flux = gaussian_psf_flux(100, SIGMA, NOISE) * np.array([1, ratio])
        add_gaussian_stars(image, x, y, flux, SIGMA)
        det, res = _run(image)
        cat = res.catalog
        assert det.n_positive == 1 and res.n_parents == 1
        assert cat["deblend_nChild"][0] == 2 and res.n_children == 2
        kids = cat[cat["parent"] == 1]
        # Each star's pixel lies in a different child's segment ...
        owners = {int(res.segmentation[round(yy), round(xx)]) for xx, yy in zip(x, y, strict=True)}
        assert owners == set(kids["id"].tolist())
        # ... and each child's peak is on its star.
        for kid in kids:
            d = np.hypot(x - kid["peak_x"], y - kid["peak_y"])
            assert d.min() <= 1.5
        # Children tile the parent footprint exactly.
        parent_pixels = det.labels == 1
        np.testing.assert_array_equal(np.isin(res.segmentation, kids["id"]), parent_pixels)
        # Brightest child first; the 1:5 pair puts the bright star first.
        assert kids["peak_value"][0] >= kids["peak_value"][1]
        if ratio < 1:
            assert abs(kids["peak_x"][0] - x[0]) <= 1.5


def test_split_threshold_is_the_prominence_in_sigma():
    # Noiseless pair on one row: the saddle is the minimum of the smoothed image
    # between the peaks, so the faint peak's prominence can be computed by hand.
    image = np.zeros((60, 90), np.float32)
    add_gaussian_stars(image, [35.0, 48.0], [30.0, 30.0], [4000.0, 1500.0], SIGMA)
    var = np.full_like(image, NOISE**2)
    det = detect_sources(image, var, None, SIGMA)
    row = det.smoothed[30]
    prominence = (row[48] - row[35:49].min()) / np.sqrt(det.smoothed_variance[30, 48])
    assert 5 < prominence < 50
    split = deblend(det, image, var, SIGMA, DeblendConfig(min_prominence=0.98 * prominence))
    kept = deblend(det, image, var, SIGMA, DeblendConfig(min_prominence=1.02 * prominence))
    assert split.catalog["deblend_nChild"][0] == 2
    assert kept.catalog["deblend_nChild"][0] == 0
    kids = split.catalog[1:]
    assert kids["peak_x"].tolist() == [35, 48]
    # The border between the children is at the saddle column.
    saddle = 35 + int(np.argmin(row[35:49]))
    assert split.segmentation[30, saddle - 1] == kids["id"][0]
    assert split.segmentation[30, saddle + 1] == kids["id"][1]


def test_single_noisy_star_is_not_split():
    rng = np.random.default_rng(2)
    for snr in np.repeat([20, 100, 1000, 5000], 15):
        image = _noise(rng, (64, 64))
        add_gaussian_stars(image, 32 + rng.uniform(-0.5, 0.5), 31 + rng.uniform(-0.5, 0.5),
                           gaussian_psf_flux(snr, SIGMA, NOISE), SIGMA)
        _, res = _run(image)
        assert res.n_parents == 1 and res.n_children == 0
        assert res.catalog["deblend_nChild"][0] == 0 and res.is_deblended_source.all()


def test_exponential_galaxy_is_not_split():
    rng = np.random.default_rng(3)
    model = gaussian_filter(sersic_image((96, 96), 48.2, 47.6, 1.0, r_e=6.0, n=1.0,
                                         axis_ratio=0.7, theta=0.5), SIGMA)
    model *= 200 / (np.sqrt((model**2).sum()) / NOISE)  # matched-filter S/N 200
    n_real, n_split = 100, 0
    for _ in range(n_real):
        _, res = _run(model.astype(np.float32) + _noise(rng, model.shape))
        assert res.n_parents == 1
        n_split += res.n_children > 0
    assert n_split <= 0.05 * n_real  # measured: 0 of 100


def test_catalog_convention_and_segmentation_of_a_field():
    rng = np.random.default_rng(4)
    image = _noise(rng, (300, 300))
    # An isolated star, a blended pair and a blended triple.
    add_gaussian_stars(image, [50.0], [50.0], [gaussian_psf_flux(50, SIGMA, NOISE)], SIGMA)
    add_gaussian_stars(image, [150.0, 164.0], [200.0, 202.0],
                       [gaussian_psf_flux(80, SIGMA, NOISE)] * 2, SIGMA)
    add_gaussian_stars(image, [230.0, 244.0, 237.0], [80.0, 80.0, 93.0],
                       [gaussian_psf_flux(80, SIGMA, NOISE)] * 3, SIGMA)
    det, res = _run(image)
    cat = res.catalog
    assert res.n_parents == det.n_positive == 3
    parents = cat[cat["parent"] == 0]
    np.testing.assert_array_equal(parents["id"], [1, 2, 3])
    assert sorted(parents["deblend_nChild"].tolist()) == [0, 2, 3]
    kids = cat[cat["parent"] != 0]
    np.testing.assert_array_equal(kids["id"], np.arange(4, 4 + len(kids)))
    for p in parents:
        mine = kids[kids["parent"] == p["id"]]
        assert len(mine) == p["deblend_nChild"]
        assert (mine["footprint"] == p["id"]).all()
        if p["deblend_nChild"] == 0:
            np.testing.assert_array_equal(res.segmentation == p["id"], det.labels == p["id"])
    # detect_isPrimary-style selection: isolated parents and all children.
    assert res.is_deblended_source.sum() == 1 + 5
    assert set(np.unique(res.segmentation)) == {0, *parents["id"][parents["deblend_nChild"] == 0],
                                                *kids["id"]}


def test_too_many_peaks_and_too_big_parents():
    rng = np.random.default_rng(5)
    image = _noise(rng, (120, 200))
    xs = 30.0 + 13.0 * np.arange(6)
    fluxes = gaussian_psf_flux(60, SIGMA, NOISE) * (1 + 0.1 * np.arange(6))
    add_gaussian_stars(image, xs, np.full(6, 60.0), fluxes, SIGMA)
    det, res = _run(image, DeblendConfig(max_peaks=3))
    assert det.n_positive == 1
    parent = res.catalog[0]
    assert parent["deblend_nChild"] == 3 and parent["deblend_tooManyPeaks"]
    kids = res.catalog[1:]
    # The three brightest (rightmost) stars are the children, covering the whole footprint.
    assert all(np.min(np.abs(xs[-3:] - k)) <= 1.5 for k in kids["peak_x"])
    np.testing.assert_array_equal(res.segmentation > 0, det.labels > 0)

    _, big = _run(image, DeblendConfig(max_footprint_area=100))
    parent = big.catalog[0]
    assert parent["deblend_parentTooBig"] and parent["deblend_skipped"]
    assert big.n_children == 0 and parent["deblend_nChild"] == 0
    np.testing.assert_array_equal(big.segmentation, det.labels)


def test_nothing_to_deblend():
    image = np.zeros((50, 50), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, res = _run(image)
    assert len(res.catalog) == 0 and res.segmentation.max() == 0
    with pytest.raises(ValueError, match="min_prominence must be >= 0 sigma, got -1"):
        DeblendConfig(min_prominence=-1)
    with pytest.raises(ValueError, match="max_peaks must be >= 2, got 1"):
        DeblendConfig(max_peaks=1)
