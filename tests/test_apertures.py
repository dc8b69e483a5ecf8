"""Exact-overlap circular apertures against analytic areas, brute force, quadrature and sep."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import quad

from processing.algorithms.apertures import (
    APERTURE_RADII,
    aperture_flux,
    aperture_flux_stamps,
    pixel_circle_overlap,
)


def _quad_area(px, py, xc, yc, r):
    """Pixel/circle overlap by 1-D quadrature of the chord length (independent of the code)."""
    y0, y1 = py - 0.5 - yc, py + 0.5 - yc

    def height(x):
        s = np.sqrt(max(r * r - x * x, 0.0))
        return max(0.0, min(y1, s) - max(y0, -s))

    lo, hi = max(px - 0.5 - xc, -r), min(px + 0.5 - xc, r)
    if hi <= lo:
        return 0.0
    pts = [p for p in (-np.sqrt(max(r * r - y0 * y0, 0)), np.sqrt(max(r * r - y0 * y0, 0)),
                       -np.sqrt(max(r * r - y1 * y1, 0)), np.sqrt(max(r * r - y1 * y1, 0)))
           if lo < p < hi]
    return quad(height, lo, hi, points=pts or None, epsabs=1e-13, epsrel=1e-13, limit=200)[0]


@pytest.mark.parametrize("r", [0.3, 0.5, 0.71, 1.0, 2.5, 4.5, 12.0, 70.0])
def test_overlaps_sum_to_disc_area(r):
    rng = np.random.default_rng(int(r * 100))
    for xc, yc in rng.uniform(-0.5, 0.5, (5, 2)):
        h = int(np.ceil(r)) + 2
        py, px = np.mgrid[-h : h + 1, -h : h + 1]
        a = pixel_circle_overlap(px, py, xc, yc, r)
        assert a.sum() == pytest.approx(np.pi * r * r, abs=1e-9 * max(r * r, 1))
        assert a.min() >= 0.0 and a.max() <= 1.0


def test_overlap_matches_quadrature_to_1e8():
    rng = np.random.default_rng(3)
    for _ in range(200):
        r = rng.uniform(0.2, 20.0)
        xc, yc = rng.uniform(-0.5, 0.5, 2)
        # a pixel near the rim, where the area is fractional
        ang = rng.uniform(0, 2 * np.pi)
        px = round(xc + r * np.cos(ang) + rng.uniform(-1, 1))
        py = round(yc + r * np.sin(ang) + rng.uniform(-1, 1))
        assert float(pixel_circle_overlap(px, py, xc, yc, r)) == pytest.approx(
            _quad_area(px, py, xc, yc, r), abs=1e-8)


def test_overlap_matches_supersampling():
    xc, yc, r = 0.23, -0.41, 4.5
    py, px = np.mgrid[-6:7, -6:7]
    n = 200
    o = (np.arange(n) + 0.5) / n - 0.5
    sx = px[:, :, None, None] + o[None, None, None, :] - xc
    sy = py[:, :, None, None] + o[None, None, :, None] - yc
    brute = (sx * sx + sy * sy <= r * r).mean(axis=(2, 3))
    np.testing.assert_allclose(pixel_circle_overlap(px, py, xc, yc, r), brute, atol=2e-3)


def test_fluxes_errors_and_flags_on_an_image():
    rng = np.random.default_rng(5)
    shape = (300, 320)
    image = rng.normal(size=shape)
    var = rng.uniform(0.5, 2.0, shape)
    bad = np.zeros(shape, dtype=bool)
    bad[150, 160] = True
    x = np.array([160.3, 100.2, 5.0, 160.0])
    y = np.array([149.6, 100.7, 100.0, 150.0])
    res = aperture_flux(image, var, bad, x, y, radii=[3.0, 12.0])
    for ap in res:
        r = ap.radius
        for k in range(x.size):
            w = pixel_circle_overlap(np.arange(shape[1])[None, :], np.arange(shape[0])[:, None],
                                     x[k], y[k], r)
            assert ap.flux[k] == pytest.approx((w * image).sum(), abs=1e-9)
            assert ap.flux_err[k] == pytest.approx(np.sqrt((w * w * var).sum()), rel=1e-12)
    assert res[0].flag_masked[[0, 3]].all() and not res[0].flag_masked[1]
    assert not res[0].flag_truncated[2] and res[1].flag_truncated[2]  # x - 12 < -0.5
    flat = aperture_flux(np.ones(shape), np.ones(shape), None, [160.4], [150.1],
                         radii=APERTURE_RADII)
    for ap in flat:
        if ap.radius < 140:
            assert ap.flux[0] == pytest.approx(np.pi * ap.radius**2, rel=1e-12)


def test_numba_and_numpy_engines_agree():
    rng = np.random.default_rng(11)
    image = rng.normal(size=(200, 200))
    var = rng.uniform(0.5, 2, image.shape)
    bad = rng.uniform(size=image.shape) < 0.002
    x, y = rng.uniform(-5, 205, 40), rng.uniform(-5, 205, 40)
    radii = [3.0, 4.5, 17.0, 50.0]
    a = aperture_flux(image, var, bad, x, y, radii=radii, engine="auto")
    b = aperture_flux(image, var, bad, x, y, radii=radii, engine="numpy")
    for p, q in zip(a, b, strict=True):
        np.testing.assert_allclose(p.flux, q.flux, atol=1e-9)
        np.testing.assert_allclose(p.flux_err, q.flux_err, rtol=1e-12)
        np.testing.assert_array_equal(p.flag, q.flag)
    with pytest.raises(ValueError, match="engine must be"):
        aperture_flux(image, var, bad, x, y, engine="cuda")


def test_stamps_match_whole_image_and_sep():
    sep = pytest.importorskip("sep")
    rng = np.random.default_rng(2)
    image = rng.normal(size=(400, 400)).astype(np.float32)  # sep works in float32
    var = np.ones_like(image)
    x, y = rng.uniform(40, 360, 60), rng.uniform(40, 360, 60)
    whole = aperture_flux(image, var, None, x, y, radii=[3.0, 9.0, 17.0])
    half = 20
    ix, iy = np.floor(x + 0.5).astype(int), np.floor(y + 0.5).astype(int)
    stamps = np.stack([image[b - half : b + half + 1, a - half : a + half + 1]
                       for a, b in zip(ix, iy, strict=True)])
    stamped = aperture_flux_stamps(stamps, np.ones_like(stamps), None, x - ix + half,
                                   y - iy + half, radii=[3.0, 9.0, 17.0])
    for w, s in zip(whole, stamped, strict=True):
        np.testing.assert_allclose(w.flux, s.flux, atol=1e-9)
        flux, _, _ = sep.sum_circle(image.astype(float), x, y, w.radius, subpix=0)
        np.testing.assert_allclose(w.flux, flux, atol=1e-4)
