"""Batched PSF warping, cell PSF sizes and depths; polygon rasterisation."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.path import Path

from processing.algorithms.cell_psf import point_source_depth, psf_fwhm, warp_psf_kernels
from processing.algorithms.polygons import box_outline, polygon_mask, polygon_spans
from processing.algorithms.warp import warp_psf_kernel
from store.geom import Box
from store.psf import GaussianPsf


def _rotation(angle, scale=1.0):
    c, s = np.cos(angle), np.sin(angle)
    return scale * np.array([[c, -s], [s, c]])


def test_batched_warp_matches_the_single_kernel_routine():
    rng = np.random.default_rng(2)
    kernel = GaussianPsf(1.8, size=31, axis_ratio=0.7, theta=0.4).kernel_image(0, 0)
    jac = np.array([_rotation(a, s) for a, s in zip(rng.uniform(-1, 1, 6),
                                                      rng.uniform(0.9, 1.1, 6), strict=True)])
    out = warp_psf_kernels(np.broadcast_to(kernel, (6, 31, 31)), jac, size=35)
    for k in range(6):
        ref = warp_psf_kernel(kernel, jac[k], size=35, normalize=False)
        assert np.abs(out[k] - ref).max() < 3e-5 * kernel.max()  # tabulated weights


def test_warped_gaussian_has_the_mapped_covariance():
    psf = GaussianPsf(2.0, size=41, axis_ratio=0.6, theta=0.3)
    ixx, iyy, ixy = psf.moments()
    cov = np.array([[ixx, ixy], [ixy, iyy]])
    jac = _rotation(0.7, 1.05)  # d src / d dst
    out = warp_psf_kernels(psf.kernel_image(0, 0)[None], jac[None], size=35)[0]
    a = np.linalg.inv(jac)
    expected = a @ cov @ a.T
    h = 17
    yy, xx = np.mgrid[-h:h + 1, -h:h + 1]
    k = out / out.sum()
    got = np.array([[(k * xx * xx).sum(), (k * xx * yy).sum()],
                    [(k * xx * yy).sum(), (k * yy * yy).sum()]])
    assert np.allclose(got, expected, rtol=2e-3, atol=2e-3)
    assert out.sum() == pytest.approx(1.0, abs=2e-3)  # |det J| keeps the flux


def test_fwhm_and_depth():
    sigma = 2.0
    stamps = GaussianPsf(sigma, size=35).kernel_image(0, 0)[None]
    fwhm, ixx, iyy, ixy = psf_fwhm(stamps, 0.2)
    assert ixx[0] == pytest.approx(iyy[0], rel=1e-6)
    assert fwhm[0] == pytest.approx(2.3548 * sigma * 0.2, rel=2e-3)
    assert ixy[0] == pytest.approx(0.0, abs=1e-6)
    # Gaussian: noise-equivalent area 4 pi sigma^2; 5 sigma flux = 5 sqrt(V 4 pi sigma^2).
    flux = 5 * np.sqrt(100.0 * 4 * np.pi * sigma ** 2)
    assert point_source_depth(stamps[0], 100.0) == pytest.approx(
        -2.5 * np.log10(flux / 3631e9), abs=2e-3)
    assert np.isnan(point_source_depth(stamps[0], np.inf))


def test_polygon_mask_matches_a_point_in_polygon_test():
    x, y = box_outline(10.3, 5.7, 90.2, 70.9, n_per_side=4)
    t = np.radians(25)
    xr = 50 + (x - 50) * np.cos(t) - (y - 40) * np.sin(t)
    yr = 40 + (x - 50) * np.sin(t) + (y - 40) * np.cos(t)
    box = Box(-5, -5, 110, 100)
    mask = polygon_mask(xr, yr, box)
    yy, xx = np.mgrid[box.y0:box.y1, box.x0:box.x1]
    ref = Path(np.c_[xr, yr]).contains_points(np.c_[xx.ravel(), yy.ravel()]).reshape(box.shape)
    assert np.array_equal(mask, ref)
    # Two halves of a box share their edge without overlap or gap.
    left = polygon_mask(*box_outline(0, 0, 5, 10), Box(-2, -2, 14, 14))
    right = polygon_mask(*box_outline(5, 0, 10, 10), Box(-2, -2, 14, 14))
    whole = polygon_mask(*box_outline(0, 0, 10, 10), Box(-2, -2, 14, 14))
    assert not (left & right).any() and np.array_equal(left | right, whole)
    spans = polygon_spans(np.array([0.0, np.nan, 1.0]), np.zeros(3), box)
    assert all(s.size == 0 for s in spans)
