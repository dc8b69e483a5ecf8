"""PSF star selection and PSFEx-like modelling on a detector with a spatially varying PSF."""

from __future__ import annotations

import numpy as np
import pytest

from processing.algorithms.centroid import cut_stamps
from processing.algorithms.measure import measure_sources
from processing.algorithms.moments import adaptive_moments, psf_moments
from processing.algorithms.photometry import psf_flux
from processing.algorithms.psf_determination import (
    PsfDeterminationConfig,
    determine_psf,
    select_psf_candidates,
)
from processing.algorithms.psf_images import kernel_images, model_stamps
from store.geom import Box
from store.masks import bits
from store.psf import GaussianPsf
from tests._moffat_stars import moffat_kernel, render_stars
from tests._star_scenes import sersic_image

N, BETA, SKY = 2048, 3.0, 200.0


def fwhm_at(x, y):
    """True FWHM (pixels): grows linearly across the detector."""
    return 4.0 + 1.0 * x / N + 0.5 * y / N


def e_at(x, y):
    """True ellipticity components, linear in position."""
    return 0.02 + 0.06 * x / N, -0.03 + 0.05 * y / N


@pytest.fixture(scope="module")
def detector():
    rng = np.random.default_rng(17)
    n = 320
    # Stars on a jittered grid (isolated), fluxes spanning two decades.
    g = np.linspace(40, N - 40, 18)
    gx, gy = np.meshgrid(g, g)
    pick = rng.choice(gx.size, n, replace=False)
    x = gx.ravel()[pick] + rng.uniform(-20, 20, n)
    y = gy.ravel()[pick] + rng.uniform(-20, 20, n)
    flux = 10 ** rng.uniform(4.0, 5.7, n)
    e1, e2 = e_at(x, y)
    truth = render_stars((N, N), x, y, flux, fwhm_at(x, y), BETA, e1, e2, half=20, oversample=5)
    # Galaxies between the grid points: extended, must not be selected.
    free = np.setdiff1d(np.arange(gx.size), pick)
    inner = (gx.ravel()[free] > 100) & (gx.ravel()[free] < N - 100)
    inner &= (gy.ravel()[free] > 100) & (gy.ravel()[free] < N - 100)
    free = free[inner][:12]
    gal_x, gal_y = gx.ravel()[free] + 3.3, gy.ravel()[free] + 2.7
    for a, b in zip(gal_x, gal_y, strict=True):
        sl = (slice(int(b) - 40, int(b) + 41), slice(int(a) - 40, int(a) + 41))
        truth[sl] += sersic_image((81, 81), a - (int(a) - 40), b - (int(b) - 40), 3e5, 5.0,
                                  n=1.0, axis_ratio=0.7, oversample=2)
    var = SKY + truth
    image = truth + rng.normal(size=truth.shape) * np.sqrt(var)
    mask = np.zeros(truth.shape, dtype=np.int32)
    saturated = np.argsort(flux)[-3:]  # the three brightest stars are "saturated"
    for k in saturated:
        mask[round(y[k]) - 1 : round(y[k]) + 2,
             round(x[k]) - 1 : round(x[k]) + 2] |= bits("SAT")
    px, py = np.r_[np.round(x), np.round(gal_x)], np.r_[np.round(y), np.round(gal_y)]
    # A first-guess PSF as CalibrateImage installs one: round Gaussian, 4.5 px FWHM.
    table = measure_sources(image, var, mask, GaussianPsf(4.5 / 2.3548, size=31), px, py)
    return dict(image=image, var=var, mask=mask, table=table, x=x, y=y, flux=flux, n=n,
                saturated=saturated)


def test_candidate_selection(detector):
    table, n = detector["table"], detector["n"]
    cand = select_psf_candidates(table)
    assert not cand[n:].any()  # no galaxy on the stellar locus
    assert not cand[detector["saturated"]].any()
    snr = (table.column("psfFlux_instFlux").to_numpy()
           / table.column("psfFlux_instFluxErr").to_numpy())
    good_stars = np.ones(n, dtype=bool)
    good_stars[detector["saturated"]] = False
    good_stars &= snr[:n] > 50
    assert cand[:n][good_stars].mean() > 0.9


def test_model_moments_and_residuals_at_reserved_stars(detector):
    table = detector["table"]
    cand = select_psf_candidates(table)
    x = table.column("x").to_numpy()[cand]
    y = table.column("y").to_numpy()[cand]
    f = table.column("psfFlux_instFlux").to_numpy()[cand]
    res = determine_psf(detector["image"], detector["var"], detector["mask"], x, y, f,
                        Box(0, 0, N, N))
    assert res.psf is not None and res.degree == 2
    assert res.reserved.sum() == round(0.1 * cand.sum())
    assert not (res.used & res.reserved).any() and res.used.sum() > 200
    xr, yr = x[res.reserved], y[res.reserved]
    mxx, myy, mxy = psf_moments(res.psf, xr, yr)
    e1, e2 = e_at(xr, yr)
    true_kernels = np.stack([moffat_kernel(fwhm_at(a, b), BETA, 41, c, d)
                             for a, b, c, d in zip(xr, yr, e1, e2, strict=True)])
    true = adaptive_moments(true_kernels, 20.0, 20.0)
    np.testing.assert_allclose(mxx, true.xx, rtol=0.01)
    np.testing.assert_allclose(myy, true.yy, rtol=0.01)
    assert (np.abs(mxy - true.xy) < 0.01 * (true.xx + true.yy)).all()
    # Residuals in the original (unshifted) pixels: chi^2 per pixel ~ 1.
    models, x0, y0 = model_stamps(res.psf, xr, yr)
    h = models.shape[1] // 2
    img, on = cut_stamps(detector["image"], x0 + h, y0 + h, h)
    var, _ = cut_stamps(detector["var"], x0 + h, y0 + h, h)
    phot = psf_flux(img, var, on, models)
    red = phot.chi2 / (phot.npixels - 1)
    assert np.median(red) == pytest.approx(1.0, abs=0.15)
    assert np.percentile(red, 90) < 1.5


def test_few_stars_lower_the_degree_and_none_is_a_result(detector):
    table = detector["table"]
    cand = np.nonzero(select_psf_candidates(table))[0][:8]
    x, y = table.column("x").to_numpy()[cand], table.column("y").to_numpy()[cand]
    f = table.column("psfFlux_instFlux").to_numpy()[cand]
    cfg = PsfDeterminationConfig(reserve_fraction=0.0)
    with pytest.warns(UserWarning, match="degree lowered from 2 to 0"):
        res = determine_psf(detector["image"], detector["var"], detector["mask"], x, y, f,
                            (0, 0, N - 1, N - 1), config=cfg)
    assert res.degree == 0 and res.psf.kernel_image(100, 100).sum() == pytest.approx(1.0)
    with pytest.warns(UserWarning, match="no PSF candidates"):
        empty = determine_psf(detector["image"], detector["var"], detector["mask"], [], [], [],
                              (0, 0, N - 1, N - 1))
    assert empty.psf is None


def _crowded_field(seed):
    """A 1024-pixel field like a dense calibrate detector: few bright PSF stars among many
    faint ones (power-law counts), a crowd of faint neighbours, background 1 ADU too low."""
    rng = np.random.default_rng(seed)
    size, beta, sky = 1024, 3.5, 300.0

    def fwhm(x, y):
        return 5.5 * (1 + 0.05 * ((x - 512) ** 2 + (y - 512) ** 2) / 512**2)

    def ell(x, y):
        return 0.04 + 0.03 * x / size, 0.06 - 0.04 * y / size

    n = 60
    x, y = rng.uniform(30, size - 30, n), rng.uniform(30, size - 30, n)
    flux = np.minimum(2e4 * rng.uniform(0, 1, n) ** (-1 / 0.55), 3e6)
    truth = render_stars((size, size), x, y, flux, fwhm(x, y), beta, *ell(x, y), half=20,
                         oversample=4)
    fx, fy = rng.uniform(0, size, 3000), rng.uniform(0, size, 3000)
    truth += render_stars((size, size), fx, fy, 10 ** rng.uniform(2.0, 3.3, fx.size),
                          fwhm(fx, fy), beta, *ell(fx, fy), half=12, oversample=2)
    var = sky + truth
    image = truth + rng.normal(size=truth.shape) * np.sqrt(var) - 1.0
    g = np.linspace(40, size - 40, 5)
    gx, gy = (v.ravel() for v in np.meshgrid(g, g))
    true = np.stack([moffat_kernel(fwhm(a, b), beta, 41, c, d)
                     for a, b, (c, d) in zip(gx, gy, zip(*ell(gx, gy), strict=True),
                                             strict=True)])
    return image, var, x, y, flux, gx, gy, true / true.sum(axis=(1, 2))[:, None, None]


def test_psf_flux_normalisation_is_uniform_in_a_crowded_field():
    # The PSF flux of a star is sum(P I) / sum(P^2): its scale error is
    # sum(P T) / sum(P^2) - 1 for a true kernel T.  Position-dependent errors of
    # that scale are what aperture corrections cannot remove.  A free pixel basis
    # gets its wings (and so its normalisation) from a handful of bright stars,
    # neighbours and the background error: 0.76% r.m.s., 1.6% at worst here.
    image, var, x, y, flux, gx, gy, true = _crowded_field(1)
    res = determine_psf(image, var, np.zeros(image.shape, np.int32), x, y, flux,
                        (0, 0, 1023, 1023), config=PsfDeterminationConfig(reserve_fraction=0))
    model = kernel_images(res.psf, gx, gy)
    scale = (model * true).sum(axis=(1, 2)) / (model * model).sum(axis=(1, 2))
    assert np.std(scale) < 0.003
    assert np.abs(scale - np.median(scale)).max() < 0.008
    assert abs(np.median(scale) - 1) < 0.005  # the rest is the aperture correction's job


def test_config_validation():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        PsfDeterminationConfig(kernel_size=40)
    with pytest.raises(ValueError, match="reserve_fraction"):
        PsfDeterminationConfig(reserve_fraction=1.5)
    with pytest.raises(ValueError, match="wing_radius"):
        PsfDeterminationConfig(wing_radius=0.5)
