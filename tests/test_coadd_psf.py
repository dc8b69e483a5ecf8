"""Tests of processing.algorithms.coadd_psf."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.wcs import WCS

from processing.algorithms.coadd_psf import (
    build_grid_psf,
    combine_psf_kernels,
    psf_grid_centers,
    warped_psf_kernel,
)
from processing.algorithms.warp import local_jacobian, warp_image
from store.geom import Box
from store.psf import GaussianPsf, GridPsf


def moments(kernel):
    h = kernel.shape[0] // 2
    yy, xx = np.mgrid[-h: h + 1, -h: h + 1].astype(float)
    s = kernel.sum()
    cx, cy = (kernel * xx).sum() / s, (kernel * yy).sum() / s
    ixx = (kernel * (xx - cx) ** 2).sum() / s
    iyy = (kernel * (yy - cy) ** 2).sum() / s
    return cx, cy, ixx, iyy


def test_combined_gaussians_have_weighted_second_moments():
    k1 = GaussianPsf(1.5, size=31).kernel_image(0, 0)
    k2 = GaussianPsf(2.5, size=41).kernel_image(0, 0)
    out = combine_psf_kernels([k1, k2], [3.0, 1.0])
    assert out.shape == (41, 41)
    assert out.sum() == pytest.approx(1.0)
    cx, cy, ixx, iyy = moments(out)
    assert abs(cx) < 1e-12 and abs(cy) < 1e-12
    expected = (3 * 1.5**2 + 1 * 2.5**2) / 4
    assert ixx == pytest.approx(expected, rel=2e-3)
    assert iyy == pytest.approx(expected, rel=2e-3)


def test_combine_rejects_bad_input():
    k = np.ones((3, 3))
    with pytest.raises(ValueError, match="got 1 kernels but 2 weights"):
        combine_psf_kernels([k], [1.0, 2.0])
    with pytest.raises(ValueError, match="kernels must be odd square arrays, got shape"):
        combine_psf_kernels([np.ones((4, 4))], [1.0])
    with pytest.raises(ValueError, match="not all 0"):
        combine_psf_kernels([k], [0.0])


def _wcs(ra, dec, crpix, scale_arcsec, rot_deg):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [crpix[0] + 1, crpix[1] + 1]
    s, t = scale_arcsec / 3600, np.radians(rot_deg)
    w.wcs.cd = [[-s * np.cos(t), s * np.sin(t)], [s * np.sin(t), s * np.cos(t)]]
    return w


def test_warped_psf_matches_a_warped_star():
    # A star image warped with warp_image must look like the PSF warped with the
    # local Jacobian: that is what the coadd PSF promises.
    src = _wcs(30.0, 10.0, (100, 100), 0.2, 35.0)
    dst = _wcs(30.0, 10.0, (110, 95), 0.25, 0.0)
    psf = GaussianPsf(2.0, size=31, axis_ratio=0.7, theta=0.4)
    box = Box(0, 0, 200, 200)
    stamp, x0, y0 = psf.image(100.0, 100.0)
    image = np.zeros(box.shape)
    image[y0: y0 + 31, x0: x0 + 31] = stamp
    warped = warp_image(image, None, None, box, src, dst, Box(0, 0, 220, 200))
    # The star lands at the destination position of source pixel (100, 100).
    xd, yd = 110.0, 95.0  # crpix of dst = crval, same as the source's (100, 100)
    jac = local_jacobian(src, dst, xd, yd)
    model = warped_psf_kernel(psf, 100.0, 100.0, jac, size=25)
    cut = warped.image[int(yd) - 12: int(yd) + 13, int(xd) - 12: int(xd) + 13]
    cut = cut / cut.sum()
    assert np.abs(cut - model).max() < 2e-3 * model.max()
    _, _, ixx, iyy = moments(model)
    _, _, jxx, jyy = moments(cut)
    assert ixx == pytest.approx(jxx, rel=1e-3) and iyy == pytest.approx(jyy, rel=1e-3)


def test_grid_psf_over_a_patch():
    bbox = Box(1000, 2000, 3400, 3400)
    xc, yc = psf_grid_centers(bbox, 4, 3)
    assert xc[0] == pytest.approx(1000 - 0.5 + 425)
    assert yc[-1] == pytest.approx(2000 - 0.5 + 3400 * 5 / 6)

    def kernel_at(x, y):  # width growing with x
        return GaussianPsf(1.5 + (x - 1000) / 3400, size=25).kernel_image(x, y)

    grid = build_grid_psf(bbox, kernel_at, n_x=4, n_y=3)
    assert isinstance(grid, GridPsf) and grid.kernel_size == 25
    np.testing.assert_allclose(grid.kernel_image(xc[2], yc[1]), kernel_at(xc[2], yc[1]), atol=1e-12)
    _, _, ixx_lo, _ = moments(grid.kernel_image(xc[0], yc[0]))
    _, _, ixx_hi, _ = moments(grid.kernel_image(xc[3], yc[0]))
    assert ixx_hi > ixx_lo
    piecewise = build_grid_psf(bbox, kernels=grid.images, n_x=4, n_y=3, mode="nearest")
    np.testing.assert_allclose(piecewise.kernel_image(xc[1] + 100, yc[2] - 100), grid.images[2, 1])
    with pytest.raises(ValueError, match="exactly one of kernel_at and kernels"):
        build_grid_psf(bbox)
