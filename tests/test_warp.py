"""Tests of processing.algorithms.warp against analytic and Monte Carlo truth."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.wcs import WCS, Sip

from processing.algorithms.warp import (
    WarpConfig,
    compute_pixel_mapping,
    local_jacobian,
    transform_pixels,
    warp_image,
    warp_psf_kernel,
)
from store.geom import Box
from store.masks import bits


def make_wcs(ra, dec, crpix, scale_arcsec, rot_deg=0.0, sip=False):
    """TAN (optionally TAN-SIP) WCS; ``crpix`` in 0-based pixels."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"] if sip else ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [crpix[0] + 1.0, crpix[1] + 1.0]
    s = scale_arcsec / 3600.0
    t = np.radians(rot_deg)
    w.wcs.cd = np.array([[-s * np.cos(t), s * np.sin(t)], [s * np.sin(t), s * np.cos(t)]])
    if sip:
        a = np.zeros((4, 4))
        b = np.zeros((4, 4))
        a[2, 0], a[1, 1], a[0, 2], a[3, 0] = 3e-6, -2e-6, 1.5e-6, 2e-10
        b[2, 0], b[1, 1], b[0, 2], b[0, 3] = -1e-6, 2.5e-6, 2e-6, -3e-10
        w.sip = Sip(a, b, None, None, w.wcs.crpix)
    return w


SRC_BOX = Box(0, 0, 400, 360)
SRC_WCS = make_wcs(150.0, 2.0, (200.0, 180.0), 0.2, rot_deg=0.0, sip=True)
# Destination: rotated by 30 degrees, 10% coarser pixels, shifted centre.
DST_WCS = make_wcs(150.002, 2.001, (190.0, 170.0), 0.22, rot_deg=30.0)
DST_BOX = Box(0, 0, 380, 340)


def gaussian_stars(shape, xy, flux, sigma):
    """Sum of circular Gaussians sampled at pixel centres, each summing to ``flux``."""
    yy, xx = np.indices(shape, dtype=float)
    img = np.zeros(shape)
    for (x, y), f in zip(xy, flux, strict=True):
        g = np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / sigma**2)
        img += f * g / g.sum()
    return img


def test_pixel_mapping_matches_exact_transform():
    yy, xx = np.indices(DST_BOX.shape, dtype=float)
    xe, ye = transform_pixels(SRC_WCS, DST_WCS, xx, yy)
    # The SIP terms really are large here: tens of pixels at the corners.
    assert np.nanmax(np.abs(SRC_WCS.sip_pix2foc(np.c_[0.0, 0.0], 0) - [[-200, -180]])) > 0.1
    for method in ("bilinear", "cubic"):
        xs, ys = compute_pixel_mapping(SRC_WCS, DST_WCS, DST_BOX, 10, method=method)
        err = np.hypot(xs - xe, ys - ye)
        assert np.nanmax(err) < 1e-3, method


def test_area_is_jacobian_determinant():
    _, _, area = compute_pixel_mapping(SRC_WCS, DST_WCS, DST_BOX, 10, return_area=True)
    jac = local_jacobian(SRC_WCS, DST_WCS, np.array([20.0, 300.0]), np.array([30.0, 250.0]))
    det = np.abs(np.linalg.det(jac))
    np.testing.assert_allclose(area[[30, 250], [20, 300]], det, rtol=1e-5)
    # 10% larger pixels -> 1.21 source pixels per destination pixel (SIP changes it a bit).
    assert np.all(np.abs(area - 1.21) < 0.03)


def test_flat_image_stays_flat():
    image = np.full(SRC_BOX.shape, 5.0, dtype=np.float32)
    out = warp_image(image, None, None, SRC_BOX, SRC_WCS, DST_WCS, DST_BOX)
    _, _, area = compute_pixel_mapping(SRC_WCS, DST_WCS, DST_BOX, 10, return_area=True)
    assert out.good.sum() > 0.5 * DST_BOX.area
    np.testing.assert_allclose(out.image[out.good], 5.0 * area[out.good], rtol=1e-6)
    assert out.variance is None


def _stars():
    rng = np.random.default_rng(42)
    gx, gy = np.meshgrid(np.arange(70, 331, 65.0), np.arange(70, 291, 55.0))
    xy = np.c_[gx.ravel(), gy.ravel()] + rng.uniform(-0.5, 0.5, (gx.size, 2))
    flux = rng.uniform(1e3, 1e4, gx.size)
    return xy, flux


@pytest.mark.parametrize("engine", ["auto", "numpy"])
def test_flux_and_centroids_are_conserved(engine):
    xy, flux = _stars()
    image = gaussian_stars(SRC_BOX.shape, xy, flux, sigma=2.0).astype(np.float32)
    out = warp_image(image, None, None, SRC_BOX, SRC_WCS, DST_WCS, DST_BOX,
                     WarpConfig(engine=engine))
    xd, yd = transform_pixels(DST_WCS, SRC_WCS, xy[:, 0], xy[:, 1])
    yy, xx = np.indices(DST_BOX.shape, dtype=float)
    inside = (xd > 15) & (xd < DST_BOX.width - 15) & (yd > 15) & (yd < DST_BOX.height - 15)
    assert inside.sum() >= 10
    for xt, yt, f in zip(xd[inside], yd[inside], flux[inside], strict=True):
        ap = np.hypot(xx - xt, yy - yt) < 12.0
        assert out.good[ap].all()
        stamp = out.image[ap].astype(float)
        total = stamp.sum()
        assert abs(total / f - 1) < 1e-3
        cx, cy = (stamp * xx[ap]).sum() / total, (stamp * yy[ap]).sum() / total
        assert np.hypot(cx - xt, cy - yt) < 0.01


def test_numba_and_numpy_engines_agree():
    rng = np.random.default_rng(3)
    image = rng.normal(10, 2, SRC_BOX.shape).astype(np.float32)
    variance = rng.uniform(1, 4, SRC_BOX.shape).astype(np.float32)
    mask = np.zeros(SRC_BOX.shape, np.int32)
    mask[rng.integers(0, 360, 50), rng.integers(0, 400, 50)] = bits("BAD")
    mask[:, :3] |= bits("EDGE")
    a = warp_image(image, variance, mask, SRC_BOX, SRC_WCS, DST_WCS, DST_BOX)
    b = warp_image(image, variance, mask, SRC_BOX, SRC_WCS, DST_WCS, DST_BOX,
                   WarpConfig(engine="numpy"))
    np.testing.assert_array_equal(a.good, b.good)
    np.testing.assert_array_equal(a.mask, b.mask)
    # The numba path uses tabulated kernel weights (2**14 fractions per pixel).
    np.testing.assert_allclose(a.image[a.good], b.image[b.good], rtol=2e-4)
    np.testing.assert_allclose(a.variance[a.good], b.variance[b.good], rtol=2e-4)


def test_variance_propagation_matches_monte_carlo():
    box = Box(0, 0, 48, 40)
    src = make_wcs(10.0, -5.0, (24.0, 20.0), 0.2, sip=False)
    dst = make_wcs(10.0, -5.0, (21.3, 17.8), 0.23, rot_deg=17.0)
    dbox = Box(0, 0, 36, 30)
    xx = np.indices(box.shape, dtype=float)[1]
    variance = (1.0 + xx / 20.0).astype(np.float32)  # spatially varying
    rng = np.random.default_rng(11)
    n_real = 600
    outs = []
    predicted = None
    for _ in range(n_real):
        noise = (rng.normal(size=box.shape) * np.sqrt(variance)).astype(np.float32)
        res = warp_image(noise, variance, None, box, src, dst, dbox)
        outs.append(res.image)
        predicted = res.variance
    stack = np.array(outs, dtype=float)
    good = res.good
    empirical = stack[:, good].var(axis=0)
    ratio = empirical / predicted[good]
    assert good.sum() > 300
    assert abs(ratio.mean() - 1) < 0.02
    # The prediction follows the sub-pixel phase: high- and low-variance pixels both agree.
    order = np.argsort(predicted[good])
    low, high = order[: order.size // 3], order[-order.size // 3:]
    assert predicted[good][high].mean() > 1.3 * predicted[good][low].mean()
    assert abs(ratio[low].mean() - 1) < 0.05
    assert abs(ratio[high].mean() - 1) < 0.05


def test_masks_spread_like_the_kernels():
    mask = np.zeros(SRC_BOX.shape, np.int32)
    bx, by = 200, 150
    mask[by, bx] = bits("BAD")
    ex, ey = 120, 100
    mask[ey, ex] = bits("EDGE")
    image = np.ones(SRC_BOX.shape, np.float32)
    out = warp_image(image, None, mask, SRC_BOX, SRC_WCS, DST_WCS, DST_BOX)
    xs, ys = compute_pixel_mapping(SRC_WCS, DST_WCS, DST_BOX, 10)
    iu, iv = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fu, fv = xs - iu, ys - iv
    bilinear_hit = (((iu == bx) | ((iu == bx - 1) & (fu > 0)))
                    & ((iv == by) | ((iv == by - 1) & (fv > 0))))
    np.testing.assert_array_equal((out.mask & bits("BAD")) != 0, bilinear_hit)
    footprint_hit = (iu - 2 <= ex) & (ex <= iu + 3) & (iv - 2 <= ey) & (ey <= iv + 3)
    np.testing.assert_array_equal((out.mask & bits("EDGE")) != 0, footprint_hit)
    assert 3 <= bilinear_hit.sum() <= 6
    assert 25 <= footprint_hit.sum() <= 40


def test_pixels_off_the_source_or_on_nan_are_no_data():
    image = np.ones(SRC_BOX.shape, np.float32)
    image[150, 200] = np.nan
    variance = np.ones(SRC_BOX.shape, np.float32)
    big = Box(-200, -200, 800, 800)
    out = warp_image(image, variance, np.zeros(SRC_BOX.shape, np.int32), SRC_BOX, SRC_WCS,
                     DST_WCS, big)
    xs, ys = compute_pixel_mapping(SRC_WCS, DST_WCS, big, 10)
    inside = (xs >= 2) & (xs < SRC_BOX.width - 3) & (ys >= 2) & (ys < SRC_BOX.height - 3)
    iu, iv = np.floor(xs), np.floor(ys)
    on_nan = (iu - 2 <= 200) & (200 <= iu + 3) & (iv - 2 <= 150) & (150 <= iv + 3)
    np.testing.assert_array_equal(out.good, inside & ~on_nan)
    bad = ~out.good
    assert np.isnan(out.image[bad]).all()
    assert np.isinf(out.variance[bad]).all()
    assert (out.mask[bad] == bits("NO_DATA")).all()
    assert (out.mask[out.good] == 0).all()
    assert on_nan.sum() > 20


def test_disjoint_boxes_give_all_no_data():
    out = warp_image(np.ones(SRC_BOX.shape), None, None, SRC_BOX, SRC_WCS, DST_WCS,
                     Box(5000, 5000, 20, 10))
    assert not out.good.any()
    assert (out.mask == bits("NO_DATA")).all()


def test_warped_psf_kernel_has_transformed_moments():
    sigma = 2.0
    half = 12
    yy, xx = np.mgrid[-half: half + 1, -half: half + 1].astype(float)
    kernel = np.exp(-0.5 * (xx**2 + yy**2) / sigma**2)
    kernel /= kernel.sum()
    t = np.radians(25.0)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    jac = rot @ np.diag([1.1, 0.9]) + np.array([[0.0, 0.05], [0.0, 0.0]])  # d src / d dst
    out = warp_psf_kernel(kernel, jac, size=31)
    assert out.shape == (31, 31)
    assert abs(out.sum() - 1) < 1e-12
    h = 15
    dy, dx = np.mgrid[-h: h + 1, -h: h + 1].astype(float)
    assert abs((out * dx).sum()) < 1e-3 and abs((out * dy).sum()) < 1e-3
    cov = np.array([[(out * dx * dx).sum(), (out * dx * dy).sum()],
                    [(out * dx * dy).sum(), (out * dy * dy).sum()]])
    jinv = np.linalg.inv(jac)
    expected = jinv @ (sigma**2 * np.eye(2)) @ jinv.T
    np.testing.assert_allclose(cov, expected, atol=0.01 * sigma**2)
    # Identity Jacobian returns the kernel itself.
    np.testing.assert_allclose(warp_psf_kernel(kernel, np.eye(2)), kernel, atol=1e-12)


def test_bad_settings_are_rejected_with_the_value():
    with pytest.raises(ValueError, match="kernel_order must be >= 1, got 0"):
        WarpConfig(kernel_order=0)
    with pytest.raises(ValueError, match="mask_kernel must be 'bilinear'"):
        WarpConfig(mask_kernel="lanczos3")
    with pytest.raises(KeyError, match="NOPE"):
        WarpConfig(grow_full_mask=("NOPE",))
    with pytest.raises(ValueError, match=r"image shape \(3, 3\) does not match"):
        warp_image(np.zeros((3, 3)), None, None, SRC_BOX, SRC_WCS, DST_WCS, DST_BOX)
    with pytest.raises(ValueError, match="kernel must be an odd square array"):
        warp_psf_kernel(np.ones((4, 4)), np.eye(2))


def test_cutouts_warp_like_the_full_image():
    rng = np.random.default_rng(9)
    image = rng.normal(0, 1, SRC_BOX.shape).astype(np.float32)
    full = warp_image(image, None, None, SRC_BOX, SRC_WCS, DST_WCS, DST_BOX)
    sub = Box(100, 80, 200, 150)
    rows, cols = sub.slices_in(SRC_BOX)
    dsub = Box(93, 61, 150, 120)  # transform nodes not aligned with the full warp's
    part = warp_image(image[rows, cols], None, None, sub, SRC_WCS, DST_WCS, dsub)
    drows, dcols = dsub.slices_in(DST_BOX)
    assert part.good.sum() > 1000
    np.testing.assert_allclose(part.image[part.good], full.image[drows, dcols][part.good],
                               atol=2e-3)
    # The cutout loses only pixels whose footprint leaves it.
    assert (full.good[drows, dcols] | ~part.good).all()
