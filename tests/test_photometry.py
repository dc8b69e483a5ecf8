"""PSF, blend, Gaussian and local-background photometry against analytic and simulated truth."""

from __future__ import annotations

import numpy as np
import pytest

from processing.algorithms.centroid import cut_stamps
from processing.algorithms.photometry import (
    gaussian_flux,
    local_background,
    psf_flux,
    psf_flux_blend,
)
from processing.algorithms.psf_images import model_stamps
from store.psf import PixelBasisPsf
from tests._moffat_stars import moffat_kernel, render_stars
from tests._star_scenes import add_gaussian_stars

FWHM, BETA = 4.5, 3.0


def _moffat_psf(size=41):
    kernel = moffat_kernel(FWHM, BETA, size=size)
    return PixelBasisPsf(kernel[None], 0, (0.0, 0.0, 1000.0, 1000.0)), kernel.sum()


def _gaussian_psf(sigma, size=41):
    kernel = np.zeros((size, size))
    add_gaussian_stars(kernel, [size // 2], [size // 2], 1.0, sigma, half=size // 2)
    return PixelBasisPsf(kernel[None], 0, (0.0, 0.0, 1000.0, 1000.0)), kernel.sum()


def _stamps_at(image, psf, x, y):
    models, x0, y0 = model_stamps(psf, x, y)
    h = models.shape[1] // 2
    img, on = cut_stamps(image, x0 + h, y0 + h, h)
    return img, on, models


@pytest.mark.parametrize("profile", ["gaussian", "moffat"])
def test_psf_flux_unbiased_on_noiseless_stars(profile):
    rng = np.random.default_rng(4)
    n = 30
    x = 60.0 + 80.0 * (np.arange(n) % 6) + rng.uniform(-0.5, 0.5, n)
    y = 60.0 + 80.0 * (np.arange(n) // 6) + rng.uniform(-0.5, 0.5, n)
    flux = rng.uniform(1e3, 1e5, n)
    image = np.zeros((480, 520))
    if profile == "moffat":
        psf, inside = _moffat_psf()
        image += render_stars(image.shape, x, y, flux, FWHM, BETA, half=30, oversample=8)
    else:
        psf, inside = _gaussian_psf(1.8)
        add_gaussian_stars(image, x, y, flux, 1.8, half=30)
    img, on, models = _stamps_at(image, psf, x, y)
    res = psf_flux(img, np.ones_like(img), on, models)
    # The model is normalised inside its 41-pixel box: the fit returns the flux in the box.
    np.testing.assert_allclose(res.flux / (flux * inside), 1.0, atol=1e-3)
    assert not res.flag.any()
    k = models[0]
    assert res.area[0] == pytest.approx(k.sum() ** 2 / (k * k).sum(), rel=1e-12)


def test_psf_flux_error_matches_scatter_of_500_realisations():
    rng = np.random.default_rng(9)
    psf, _ = _moffat_psf()
    n, flux, sky = 500, 5000.0, 80.0
    models, _, _ = model_stamps(psf, np.full(n, 100.3), np.full(n, 200.8))
    truth = flux * models[0]
    var = np.broadcast_to(sky + truth, models.shape)
    images = truth + rng.normal(size=models.shape) * np.sqrt(var)
    good = np.ones(models.shape, dtype=bool)
    good[:, 3, 5] = False  # a masked pixel is simply left out
    res = psf_flux(images, var, good, models)
    scatter = np.std(res.flux)
    assert np.median(res.flux_err) == pytest.approx(scatter, rel=0.1)
    assert abs(np.mean(res.flux) - flux) < 3 * scatter / np.sqrt(n)
    # chi^2 per pixel is ~1 when the model is right.
    assert np.median(res.chi2 / (res.npixels - 1)) == pytest.approx(1.0, abs=0.05)


def test_joint_fit_of_two_stars_three_fwhm_apart():
    psf, inside = _moffat_psf()
    x = np.array([100.3, 100.3 + 3 * FWHM])
    y = np.array([100.2, 100.9])
    flux = np.array([2e4, 5e3])
    image = render_stars((200, 220), x, y, flux, FWHM, BETA, half=40, oversample=8)
    var = np.full(image.shape, 30.0)
    models, x0, y0 = model_stamps(psf, x, y)
    joint = psf_flux_blend(image, var, np.ones(image.shape, bool), models, x0, y0)
    np.testing.assert_allclose(joint.flux / (flux * inside), 1.0, atol=2e-3)
    img, on, _ = _stamps_at(image, psf, x, y)
    single = psf_flux(img, np.full(img.shape, 30.0), on, models)
    assert single.flux[1] / (flux[1] * inside) - 1 > 0.01  # independent fits are biased
    # Joint errors exceed the independent ones (the amplitudes are anti-correlated).
    assert (joint.flux_err > single.flux_err).all()
    assert not joint.flag.any()


def test_blend_fit_reports_degenerate_children():
    psf, _ = _moffat_psf()
    models, x0, y0 = model_stamps(psf, [50.0, 50.0], [50.0, 50.0])
    image = np.zeros((100, 100))
    res = psf_flux_blend(image, np.ones_like(image), np.ones(image.shape, bool), models, x0, y0)
    assert res.flag_no_good_pixels.all() and np.isnan(res.flux).all()


def test_gaussian_flux_returns_total_flux_of_matching_gaussian():
    cov = np.array([[6.0, 1.5], [1.5, 4.0]])
    yy, xx = np.mgrid[0:61, 0:61] - 30.0
    x, y = xx - 0.3, yy + 0.2
    inv = np.linalg.inv(cov)
    img = 777.0 * np.exp(-0.5 * (inv[0, 0] * x * x + 2 * inv[0, 1] * x * y + inv[1, 1] * y * y))
    img /= 2 * np.pi * np.sqrt(np.linalg.det(cov))
    flux, err = gaussian_flux(img[None], np.ones((1, 61, 61)), None, [30.3], [29.8],
                              [6.0], [4.0], [1.5])
    assert flux[0] == pytest.approx(777.0, rel=1e-6)
    # err = 2 sqrt(sum w^2) for unit variance = 2 sqrt(pi sqrt(det C)).
    assert err[0] == pytest.approx(2 * np.sqrt(np.pi * np.sqrt(np.linalg.det(cov))), rel=1e-6)


def test_local_background_is_clipped_mean_of_annulus():
    rng = np.random.default_rng(1)
    n, h = 200, 31
    stamps = 7.0 + 2.0 * rng.normal(size=(n, 2 * h + 1, 2 * h + 1))
    stamps[:, 5, 5:15] += 500.0  # a neighbour's bright pixels in the annulus: clipped
    good = np.ones(stamps.shape, dtype=bool)
    good[:, :, :10] = False  # a masked strip
    value, stdev, used = local_background(stamps, good, 14.0, 30.0)
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1]
    r2 = xx * xx + yy * yy
    n_ann = ((r2 >= 14**2) & (r2 < 30**2) & (np.arange(2 * h + 1) >= 10)[None, :]).sum()
    assert (used <= n_ann).all() and (used > 0.95 * n_ann).all()
    assert abs(np.mean(value) - 7.0) < 3 * 2.0 / np.sqrt(n * n_ann)
    assert np.median(stdev) == pytest.approx(2.0, rel=0.05)
    none = local_background(stamps[:1], np.zeros_like(good[:1]), 14.0, 30.0)
    assert np.isnan(none[0][0]) and none[2][0] == 0
