"""The simulator's true PSF: Moffat moments, pixel integration, focal-plane variation."""

import numpy as np
import pytest
from astropy.io import fits

from sample_data import PRESETS, PsfField, TruePsf, adaptive_moments, true_psf_kernel
from sample_data.camera import build_camera
from sample_data.psf import FWHM_PER_SIGMA, moffat_moment_ratio, moffat_pixels
from store.psf import psf_from_hdu


@pytest.fixture(scope="module")
def camera():
    return build_camera(PRESETS["demo"].camera, np.random.default_rng(0))


def test_adaptive_moments_of_a_gaussian_are_its_covariance():
    yy, xx = np.mgrid[0:61, 0:61].astype(float)
    cov = np.array([[6.0, 1.2], [1.2, 4.0]])
    inv = np.linalg.inv(cov)
    dx, dy = xx - 30.3, yy - 29.6
    img = np.exp(-0.5 * (inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy))
    m = adaptive_moments(img, 30.0, 30.0, 2.0, fit_centroid=True)
    assert m.converged.all()
    np.testing.assert_allclose([m.ixx[0], m.iyy[0], m.ixy[0]], [6.0, 4.0, 1.2], rtol=1e-6)
    np.testing.assert_allclose([m.x[0], m.y[0]], [30.3, 29.6], atol=1e-6)


def test_moffat_moment_ratio_matches_a_finely_sampled_profile():
    beta, alpha = 3.5, 12.0
    g = np.arange(-240, 241, dtype=float)
    img = (1 + (g[None, :] ** 2 + g[:, None] ** 2) / alpha**2) ** -beta
    m = adaptive_moments(img, 240, 240, alpha / 2)
    assert m.ixx[0] / alpha**2 == pytest.approx(moffat_moment_ratio(beta), rel=1e-5)


def test_pixel_integration_is_accurate_and_normalised():
    field = PsfField(sigma=1.3, e1=0.08, e2=-0.05)  # sharpest seeing: hardest case
    mxx, myy, mxy = field.moments(0, 0)
    g = np.arange(-60, 61, dtype=float)
    dx, dy = g[None, :] - 0.31, g[:, None] + 0.17
    fine = moffat_pixels(dx, dy, mxx, myy, mxy, 3.5, n_gauss=12)
    for n in (3, 4):
        coarse = moffat_pixels(dx, dy, mxx, myy, mxy, 3.5, n_gauss=n)
        assert np.abs(coarse - fine).max() < 3e-5 * fine.max()
    # Analytic normalisation: the pixels hold all the flux but the far wings.
    wings = (1 + (60 / np.sqrt(mxx / moffat_moment_ratio(3.5))) ** 2) ** -2.5
    assert fine.sum() == pytest.approx(1.0 - wings, abs=2 * wings)


def test_moments_of_the_continuous_psf_are_as_configured():
    field = PsfField(sigma=2.4, e1=0.05, e2=0.02)
    mxx, myy, mxy = field.moments(0.0, 0.0)
    assert (mxx * myy - mxy**2) ** 0.25 == pytest.approx(2.4)
    assert (mxx - myy) / (mxx + myy) == pytest.approx(0.05)
    assert 2 * mxy / (mxx + myy) == pytest.approx(0.02)
    # A point-sampled fine version has these adaptive moments (scale 4 sub-pixels).
    g = np.arange(-200, 201, dtype=float) / 4.0
    img = moffat_pixels(g[None, :], g[:, None], mxx, myy, mxy, 3.5, n_gauss=1)
    m = adaptive_moments(img, 200, 200, 8.0)
    np.testing.assert_allclose(np.array([m.ixx[0], m.iyy[0], m.ixy[0]]) / 16,
                               [mxx, myy, mxy], rtol=1e-6)


def test_psf_is_not_gaussian():
    # A Moffat with beta = 3.5 has much more light beyond 3 sigma than a Gaussian.
    field = PsfField(sigma=2.4)
    k = true_psf_kernel(field, build_camera(PRESETS["tiny"].camera, np.random.default_rng(0)),
                        0, 255.5, 255.5, size=121, normalize=False)
    g = np.arange(-60, 61)
    r = np.hypot(g[None, :], g[:, None])
    outside = k[r > 3 * 2.4].sum()
    assert outside > 0.05  # a Gaussian has exp(-4.5) = 1.1 %


def test_psf_varies_smoothly_over_the_focal_plane(camera):
    field = PsfField(sigma=2.4, e1=0.02, e2=-0.01, size_variation=0.05, e_field=0.03,
                     e_gradient=(0.01, 0.0, 0.0, -0.01), r_ref=camera.corner_radius)
    r = camera.corner_radius
    s_c, e1_c, e2_c = field.shape(0.0, 0.0)
    s_e, e1_e, e2_e = field.shape(r / np.sqrt(2), r / np.sqrt(2))
    assert s_e / s_c == pytest.approx(1.05)
    assert e1_e - e1_c == pytest.approx(0.01 / np.sqrt(2))
    assert e2_e - e2_c == pytest.approx(0.03 - 0.01 / np.sqrt(2))
    # Neighbouring pixels differ by very little (smooth), far ones visibly.
    a = np.array(field.moments(10.0, 10.0))
    b = np.array(field.moments(10.01, 10.0))
    c = np.array(field.moments(-25.0, 20.0))
    assert np.abs(a - b).max() < 1e-3
    assert np.abs(a - c).max() > 5e-2


def test_true_psf_kernel_moments_and_centring(camera):
    field = PsfField(sigma=2.3, e1=0.06, e2=-0.03, size_variation=0.05,
                     r_ref=camera.corner_radius)
    kernel = true_psf_kernel(field, camera, 1, 1500.0, 300.0)
    assert kernel.shape[0] % 2 == 1 and kernel.sum() == pytest.approx(1.0)
    half = kernel.shape[0] // 2
    m = adaptive_moments(kernel, half, half, 2.3, fit_centroid=True)
    assert m.x[0] == pytest.approx(half, abs=1e-9) and m.y[0] == pytest.approx(half, abs=1e-9)
    fx, fy = camera.pixel_to_focal_plane(1, 1500.0, 300.0)
    mxx, myy, mxy = field.moments(fx, fy)
    # Pixel integration adds 1/12 pixel^2 to a Gaussian; a little more to a Moffat.
    assert 0.07 < m.ixx[0] - mxx < 0.15
    assert 0.07 < m.iyy[0] - myy < 0.15
    assert m.ixy[0] == pytest.approx(mxy, rel=0.02)
    # Sub-pixel offsets move the kernel without changing its moments.
    shifted = true_psf_kernel(field, camera, 1, 1500.0, 300.0, offset=(0.3, -0.4))
    ms = adaptive_moments(shifted, half + 0.3, half - 0.4, 2.3)
    np.testing.assert_allclose([ms.ixx[0], ms.iyy[0], ms.ixy[0]], [m.ixx[0], m.iyy[0], m.ixy[0]],
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="must be odd"):
        true_psf_kernel(field, camera, 1, 0.0, 0.0, size=40)


def test_true_psf_as_a_store_psf_round_trips(camera):
    field = PsfField(sigma=2.0, e1=0.03, e2=0.01, size_variation=0.05, e_field=0.02,
                     e_gradient=(0.01, -0.02, 0.0, 0.01), r_ref=camera.corner_radius)
    psf = TruePsf.for_detector(field, camera, 2)
    k = psf.kernel_image(100.0, 1800.0)
    np.testing.assert_allclose(k, true_psf_kernel(field, camera, 2, 100.0, 1800.0,
                                                  size=psf.kernel_size))
    hdul = fits.HDUList([fits.PrimaryHDU(), psf.to_hdu()])
    back = psf_from_hdu(fits.HDUList.fromstring(_to_bytes(hdul))["PSF"])
    assert isinstance(back, TruePsf)
    np.testing.assert_allclose(back.kernel_image(100.0, 1800.0), k)
    stamp, x0, y0 = psf.image(100.3, 1800.6)
    assert (x0, y0) == (100 - psf.kernel_size // 2, 1801 - psf.kernel_size // 2)
    m = adaptive_moments(stamp, 100.3 - x0, 1800.6 - y0, 2.0, fit_centroid=True)
    assert m.x[0] + x0 == pytest.approx(100.3, abs=1e-6)


def _to_bytes(hdul) -> bytes:
    import io

    buf = io.BytesIO()
    hdul.writeto(buf)
    return buf.getvalue()


def test_seeing_is_the_moments_fwhm_at_the_optical_axis():
    from sample_data import plan_survey

    plan = plan_survey(PRESETS["tiny"], seed=2)
    for v in plan.visits:
        mxx, myy, mxy = v.psf.moments(0.0, 0.0)
        fwhm = (mxx * myy - mxy**2) ** 0.25 * FWHM_PER_SIGMA * 0.2
        assert fwhm == pytest.approx(v.seeing, rel=1e-12)
