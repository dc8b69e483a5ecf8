"""SdssCentroid-like centroids: bias on noiseless stars, errors against noise scatter, flags."""

from __future__ import annotations

import numpy as np
import pytest

from processing.algorithms.centroid import cut_stamps, sdss_centroid
from tests._moffat_stars import moffat_alpha, render_stars
from tests._star_scenes import add_gaussian_stars

SPACING = 40


def _grid(n_side, rng):
    c = (np.arange(n_side) + 0.5) * SPACING
    x = (c[None, :] + rng.uniform(-0.5, 0.5, (n_side, n_side))).ravel()
    y = (c[:, None] + rng.uniform(-0.5, 0.5, (n_side, n_side))).ravel()
    return x, y


@pytest.mark.parametrize("profile", ["gaussian", "moffat"])
@pytest.mark.parametrize("sigma", [1.3, 2.0, 2.8])
def test_noiseless_bias_below_a_hundredth_of_a_pixel(profile, sigma):
    rng = np.random.default_rng(int(sigma * 10))
    n_side = 6
    x, y = _grid(n_side, rng)
    shape = (n_side * SPACING, n_side * SPACING)
    if profile == "gaussian":
        image = np.zeros(shape)
        add_gaussian_stars(image, x, y, 1e4, sigma)
    else:  # Moffat beta = 3 with the FWHM of a Gaussian of this sigma
        image = render_stars(shape, x, y, np.full(x.size, 1e4), 2.3548 * sigma, 3.0, half=18)
    c = sdss_centroid(image, np.ones(shape), np.round(x), np.round(y), sigma)
    assert not c.flag.any()
    assert np.abs(c.x - x).max() < 0.01
    assert np.abs(c.y - y).max() < 0.01


def test_errors_match_scatter_over_noise_realisations():
    # 400 copies of one star at the same sub-pixel phase = 400 noise realisations.
    rng = np.random.default_rng(7)
    n_side, sigma, flux, sky = 20, 1.8, 3000.0, 100.0
    c = (np.arange(n_side) + 0.5) * SPACING
    dx, dy = 0.27, -0.36
    x = np.repeat(c[None, :], n_side, axis=0).ravel() + dx
    y = np.repeat(c[:, None], n_side, axis=1).ravel() + dy
    shape = (n_side * SPACING, n_side * SPACING)
    model = render_stars(shape, x, y, np.full(x.size, flux), 2.3548 * sigma, 3.5, half=15)
    var = sky + model
    image = model + rng.normal(size=shape) * np.sqrt(var)
    cen = sdss_centroid(image, var, np.round(x), np.round(y), sigma)
    assert not cen.flag.any()
    for est, err, truth in ((cen.x, cen.x_err, x), (cen.y, cen.y_err, y)):
        scatter = np.std(est - truth)
        assert np.median(err) == pytest.approx(scatter, rel=0.2)
        assert abs(np.mean(est - truth)) < 3 * scatter / np.sqrt(x.size) + 0.005


def test_edge_and_failure_flags():
    sigma = 2.0
    image = np.zeros((80, 80))
    add_gaussian_stars(image, [30.2, 1.3], [30.4, 40.0], 1e4, sigma)
    add_gaussian_stars(image, [50.0], [55.0], -1e4, sigma)  # a hole: no maximum anywhere near
    var = np.ones_like(image)
    c = sdss_centroid(image, var, [30, 1, 50], [30, 40, 55], sigma)
    assert not c.flag[0]
    assert c.x[0] == pytest.approx(30.2, abs=1e-3)
    assert c.flag_edge[1] and c.flag[1] and not c.flag_edge[0]
    assert c.flag_reset_to_peak[2] and c.flag[2]
    assert (c.x[2], c.y[2]) == (50, 55) and np.isnan(c.x_err[2])
    # A peak given one pixel off the maximum moves there and says so.
    c = sdss_centroid(image, var, [31], [30], sigma)
    assert c.flag_not_at_maximum[0] and not c.flag[0]
    assert c.x[0] == pytest.approx(30.2, abs=1e-3)


def test_cut_stamps_fills_off_image():
    arr = np.arange(25.0).reshape(5, 5)
    st, on = cut_stamps(arr, [0, 2], [0, 2], 1, fill=-1.0)
    assert st[0, 0, 0] == -1.0 and not on[0, 0, 0]
    np.testing.assert_array_equal(st[1], arr[1:4, 1:4])
    assert on[1].all()


def test_moffat_alpha_helper():
    # The test scenes themselves: a Moffat's half maximum is at FWHM / 2.
    a = moffat_alpha(4.0, 3.0)
    assert (1 + (2.0 / a) ** 2) ** -3.0 == pytest.approx(0.5)
