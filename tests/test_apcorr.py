"""Aperture corrections: fitting the field and correcting Moffat-star PSF fluxes."""

from __future__ import annotations

import numpy as np
import pytest

from processing.algorithms.apcorr import (
    apply_aperture_correction,
    curve_of_growth_correction,
    fit_aperture_correction,
    measure_aperture_corrections,
    scale_aperture_corrections,
)
from processing.algorithms.measure import measure_sources
from store.calib import ApCorrMap
from store.psf import PixelBasisPsf
from tests._moffat_stars import enclosed_fraction, moffat_kernel, render_stars

FWHM, BETA, SIZE = 4.5, 3.0, 1024
BBOX = (0.0, 0.0, SIZE - 1.0, SIZE - 1.0)


@pytest.fixture(scope="module")
def measured():
    rng = np.random.default_rng(8)
    g = np.arange(40, SIZE - 40, 75.0)
    gx, gy = np.meshgrid(g, g)
    x = gx.ravel() + rng.uniform(-10, 10, gx.size)
    y = gy.ravel() + rng.uniform(-10, 10, gx.size)
    flux = 10 ** rng.uniform(4.3, 5.5, x.size)
    truth = render_stars((SIZE, SIZE), x, y, flux, FWHM, BETA, half=36, oversample=5)
    var = 30.0 + truth
    image = truth + rng.normal(size=truth.shape) * np.sqrt(var)
    kernel = moffat_kernel(FWHM, BETA, size=41)
    psf = PixelBasisPsf(kernel[None], 0, BBOX)
    table = measure_sources(image, var, np.zeros(truth.shape, np.int32), psf, np.round(x),
                            np.round(y))
    return table, flux


def test_corrected_psf_flux_matches_aperture_and_total_flux(measured):
    table, flux = measured
    stars = np.ones(table.num_rows, dtype=bool)
    ap_map = measure_aperture_corrections(table, stars, BBOX)
    assert "base_PsfFlux_instFlux" in ap_map and "base_PsfFlux_instFluxErr" in ap_map
    assert "base_GaussianFlux_instFlux" in ap_map
    corrected = apply_aperture_correction(table, ap_map)
    psf = corrected.column("psfFlux_instFlux").to_numpy()
    # Convention: corrected PSF fluxes are on the 12-pixel aperture scale (calibFlux)...
    ee12 = enclosed_fraction(12.0, FWHM, BETA)
    assert np.median(psf / (flux * ee12)) == pytest.approx(1.0, abs=0.005)
    # With the 17-px reference (99.6% enclosed) the corrected flux is the total within 0.5%.
    total = apply_aperture_correction(
        table, measure_aperture_corrections(table, stars, BBOX, reference="apFlux_17_0"))
    assert np.median(total.column("psfFlux_instFlux").to_numpy() / flux) == pytest.approx(
        1.0, abs=0.005)
    # Before correction the PSF flux measured the flux inside the 41-px model box.
    raw = table.column("psfFlux_instFlux").to_numpy()
    assert np.median(raw / flux) > 1.005 * np.median(psf / flux)
    a = corrected.column("psfFlux_apCorr").to_numpy()
    np.testing.assert_allclose(corrected.column("psfFlux_instFluxErr").to_numpy(),
                               table.column("psfFlux_instFluxErr").to_numpy() * a)
    assert (corrected.column("psfFlux_apCorrErr").to_numpy() < 0.002).all()
    assert not corrected.column("psfFlux_flag_apCorr").to_numpy().any()
    gauss = corrected.column("gaussianFlux_instFlux").to_numpy()
    assert np.median(gauss / (flux * ee12)) == pytest.approx(1.0, abs=0.01)


def test_fit_recovers_a_gradient_and_clips_outliers():
    rng = np.random.default_rng(3)
    n = 300
    x, y = rng.uniform(0, 2000, n), rng.uniform(0, 4000, n)
    xn, yn = 2 * x / 2000 - 1, 2 * y / 4000 - 1
    ratio = 1.02 + 0.01 * xn - 0.005 * yn
    psf_flux = rng.uniform(1e4, 1e5, n)
    psf_err = ap_err = np.sqrt(psf_flux) * 0.5  # ratio errors 0.2-0.7%, as drawn below
    ap = psf_flux * ratio + ap_err * rng.normal(size=n)
    psf_obs = psf_flux + psf_err * rng.normal(size=n)
    outliers = rng.choice(n, 25, replace=False)
    ap[outliers] *= 1.2  # neighbours in the aperture
    fit = fit_aperture_correction(x, y, psf_obs, psf_err, ap, ap_err, (0, 0, 2000, 4000),
                                  order=1)
    assert not fit.used[outliers].any() and fit.used.sum() > 0.95 * (n - 25)
    tx, ty = rng.uniform(0, 2000, 50), rng.uniform(0, 4000, 50)
    want = 1.02 + 0.01 * (2 * tx / 2000 - 1) - 0.005 * (2 * ty / 4000 - 1)
    np.testing.assert_allclose(fit.value.evaluate(tx, ty), want, atol=1e-3)
    assert 0.002 < fit.rms < 0.008
    assert fit.error.evaluate(0, 0) == pytest.approx(fit.rms * np.sqrt(3 / fit.used.sum()))


def test_missing_entry_flags_and_leaves_flux(measured):
    table, _ = measured
    out = apply_aperture_correction(table, ApCorrMap())
    assert out.column("psfFlux_flag_apCorr").to_numpy().all()
    assert out.column("psfFlux_flag").to_numpy().all()
    np.testing.assert_array_equal(out.column("psfFlux_instFlux").to_numpy(),
                                  table.column("psfFlux_instFlux").to_numpy())
    assert out.schema.field("psfFlux_instFlux").metadata[b"unit"] == b"count"


def test_fit_without_valid_stars_raises():
    with pytest.raises(ValueError, match="no star with finite positive fluxes"):
        fit_aperture_correction([1.0], [1.0], [-5.0], [1.0], [3.0], [1.0], (0, 0, 10, 10))


def test_curve_of_growth_carries_corrected_fluxes_to_total(measured):
    table, flux = measured
    stars = np.ones(table.num_rows, dtype=bool)
    growth = curve_of_growth_correction(table, stars, reference="apFlux_17_0")
    assert growth.aperture == "apFlux_50_0" and growth.n_stars >= 5
    # The stars are rendered out to 36 px: the 50-px aperture holds their whole flux.
    want = 1.0 / enclosed_fraction(17.0, FWHM, BETA)
    assert abs(growth.factor - want) < max(3 * growth.error, 5e-4)
    ap_map = measure_aperture_corrections(table, stars, BBOX, reference="apFlux_17_0")
    total = apply_aperture_correction(table, scale_aperture_corrections(ap_map, growth.factor))
    ratio = np.median(total.column("psfFlux_instFlux").to_numpy() / flux)
    assert abs(ratio - 1.0) < 0.0015
    # the error field keeps its relative size
    scaled = scale_aperture_corrections(ap_map, 2.0)
    assert scaled["base_PsfFlux_instFluxErr"].evaluate(5, 5) == pytest.approx(
        2 * ap_map["base_PsfFlux_instFluxErr"].evaluate(5, 5))


def test_curve_of_growth_clips_neighbours_and_falls_back():
    import pyarrow as pa

    rng = np.random.default_rng(4)
    n = 40
    ref = rng.uniform(1e5, 1e6, n)
    err = 0.002 * ref
    big = ref * 1.01 + err * rng.normal(size=n)
    big[:6] *= 1.05  # a neighbour inside the large aperture only adds light
    table = pa.table({"apFlux_17_0_instFlux": ref, "apFlux_50_0_instFlux": big,
                      "apFlux_50_0_instFluxErr": err})
    growth = curve_of_growth_correction(table, np.ones(n, bool))
    assert growth.n_stars <= n - 6
    assert growth.factor == pytest.approx(1.01, abs=3 * growth.error + 1e-4)
    # too noisy, or no star selected: no correction, and it says so
    noisy = table.set_column(2, "apFlux_50_0_instFluxErr", pa.array(0.05 * ref))
    for t, sel in ((noisy, np.ones(n, bool)), (table, np.zeros(n, bool))):
        none = curve_of_growth_correction(t, sel)
        assert (none.factor, none.n_stars, none.aperture) == (1.0, 0, None)
