"""Adaptive moments and batched PSF evaluation against analytic truth."""

from __future__ import annotations

import numpy as np
import pytest

from processing.algorithms.moments import (
    FWHM_PER_SIGMA,
    adaptive_moments,
    determinant_radius,
    moments_to_fwhm,
    psf_moments,
    psf_moments_at,
)
from processing.algorithms.psf_images import kernel_images, model_stamps, shift_stamps
from store.psf import GaussianPsf, PixelBasisPsf
from store.resample import shift_image
from tests._moffat_stars import moffat_kernel, moffat_stamp


def _gaussian_stamp(cov, dx, dy, half=25, flux=1000.0):
    """Gaussian of covariance ``cov`` sampled at pixel centres, centred at (half+dx, half+dy)."""
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(float)
    x, y = xx - dx, yy - dy
    inv = np.linalg.inv(cov)
    q = inv[0, 0] * x * x + 2 * inv[0, 1] * x * y + inv[1, 1] * y * y
    return flux * np.exp(-0.5 * q) / (2 * np.pi * np.sqrt(np.linalg.det(cov)))


def test_gaussian_moments_equal_covariance():
    rng = np.random.default_rng(1)
    covs = [np.array([[4.0, 0.0], [0.0, 4.0]]), np.array([[5.0, 1.2], [1.2, 3.0]]),
            np.array([[2.0, -0.6], [-0.6, 7.5]]), np.array([[12.0, 3.0], [3.0, 9.0]])]
    offsets = rng.uniform(-0.5, 0.5, (len(covs), 2))
    stamps = np.stack([_gaussian_stamp(c, *o) for c, o in zip(covs, offsets, strict=True)])
    res = adaptive_moments(stamps, 25.0, 25.0)
    for k, c in enumerate(covs):
        assert res.xx[k] == pytest.approx(c[0, 0], rel=1e-4)
        assert res.yy[k] == pytest.approx(c[1, 1], rel=1e-4)
        assert res.xy[k] == pytest.approx(c[0, 1], abs=1e-4 * np.trace(c))
    np.testing.assert_allclose(res.x - 25.0, offsets[:, 0], atol=1e-5)
    np.testing.assert_allclose(res.y - 25.0, offsets[:, 1], atol=1e-5)
    np.testing.assert_allclose(res.flux, 1000.0, rtol=1e-4)
    assert not res.flag.any()


def test_fwhm_relation_for_gaussian_psf():
    sigma = 1.9
    psf = GaussianPsf(sigma, size=41)
    ixx, iyy, ixy = psf_moments_at(psf, 100.0, 200.0)
    assert isinstance(ixx, float)
    assert ixx == pytest.approx(sigma**2, rel=1e-4)
    assert iyy == pytest.approx(sigma**2, rel=1e-4)
    assert moments_to_fwhm(ixx, iyy, ixy, 0.2) == pytest.approx(FWHM_PER_SIGMA * sigma * 0.2,
                                                                rel=1e-4)
    assert FWHM_PER_SIGMA == pytest.approx(2.3548, abs=1e-4)


def test_psf_moments_of_elliptical_gaussian_psf():
    psf = GaussianPsf(2.2, size=41, axis_ratio=0.7, theta=0.4)
    ixx, iyy, ixy = psf_moments(psf, [10.0, 500.0], [20.0, 300.0])
    want = psf.moments()
    np.testing.assert_allclose(ixx, want[0], rtol=1e-4)
    np.testing.assert_allclose(iyy, want[1], rtol=1e-4)
    np.testing.assert_allclose(ixy, want[2], atol=1e-4 * (want[0] + want[1]))
    assert determinant_radius(ixx, iyy, ixy)[0] == pytest.approx(
        np.sqrt(2.2 * 2.2 * 0.7), rel=1e-4)


def test_batch_equals_single_and_moffat_converges():
    rng = np.random.default_rng(2)
    stamps = []
    for k in range(6):
        st, _, _ = moffat_stamp(rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5),
                                4.0 + 0.3 * k, 3.0, 0.05 * (k - 3), 0.02 * k, half=15)
        stamps.append(st * 1e4)
    stamps.append(_gaussian_stamp(np.diag([4.0, 3.0]), 0.2, -0.1, half=15))  # converges at once
    stamps = np.stack(stamps)
    batch = adaptive_moments(stamps, 15.0, 15.0, initial=4.0)
    assert not batch.flag.any()
    assert batch.n_iter.max() > batch.n_iter[-1]  # the Gaussian left the active set early
    for k in range(len(stamps)):
        one = adaptive_moments(stamps[k], 15.0, 15.0, initial=4.0)
        assert one.xx[0] == pytest.approx(batch.xx[k], rel=1e-12)
        assert one.xy[0] == pytest.approx(batch.xy[k], rel=1e-9, abs=1e-12)
    # A Moffat's adaptive moments lie below its (divergent for beta <= 2) unweighted ones
    # and above the Gaussian of the same FWHM.
    sigma_fwhm = (4.0 / FWHM_PER_SIGMA) ** 2
    assert 0.5 * (batch.xx[3] + batch.yy[3]) > sigma_fwhm


def test_bad_shapes_are_flagged():
    stamps = np.zeros((3, 21, 21))
    stamps[1] = -_gaussian_stamp(np.eye(2) * 4.0, 0, 0, half=10)
    stamps[2] = _gaussian_stamp(np.eye(2) * 4.0, 0, 0, half=10)
    res = adaptive_moments(stamps, 10.0, 10.0)
    assert res.flag_bad_shape[:2].all() and np.isnan(res.xx[:2]).all()
    assert not res.flag[2]


def test_masked_pixels_are_ignored():
    st = _gaussian_stamp(np.diag([5.0, 3.0]), 0.1, 0.2, half=20)
    good = np.ones(st.shape, dtype=bool)
    corrupted = st.copy()
    corrupted[18, 25] = 1e6  # a cosmic ray, masked
    good[18, 25] = False
    res = adaptive_moments(corrupted[None], 20.0, 20.0, good=good[None])
    clean = adaptive_moments(st[None], 20.0, 20.0, good=good[None])
    assert res.xx[0] == pytest.approx(clean.xx[0], rel=1e-12)
    # Losing one pixel of the star itself biases the moments only slightly.
    assert res.xx[0] == pytest.approx(5.0, rel=5e-3)
    assert res.yy[0] == pytest.approx(3.0, rel=5e-3)


def test_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"stamps must have shape \(n, k, k\)"):
        adaptive_moments(np.zeros(5), 0.0, 0.0)


def test_batched_psf_evaluation_matches_single_calls():
    k0 = moffat_kernel(4.5, 3.0, size=31)
    k1 = moffat_kernel(5.5, 3.0, size=31, e1=0.08)
    basis = np.stack([k0, k1 - k0, 0.3 * (k1 - k0)])
    psf = PixelBasisPsf(basis, 1, (0.0, 0.0, 2000.0, 2000.0))
    x = np.array([10.3, 1500.7, 999.5, 2000.0])
    y = np.array([20.6, 100.2, 1750.49, 0.0])
    kernels = kernel_images(psf, x, y)
    stamps, x0, y0 = model_stamps(psf, x, y)
    for i in range(x.size):
        np.testing.assert_allclose(kernels[i], psf.kernel_image(x[i], y[i]), atol=1e-15)
        want, wx0, wy0 = psf.image(x[i], y[i])
        np.testing.assert_allclose(stamps[i], want, atol=1e-13)
        assert (x0[i], y0[i]) == (wx0, wy0)
    shifted = shift_stamps(kernels[:2], [0.3, -0.2], [-0.45, 0.1])
    np.testing.assert_allclose(shifted[1], shift_image(kernels[1], -0.2, 0.1), atol=1e-13)
