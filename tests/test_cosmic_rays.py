"""Tests of processing.algorithms.cosmic_rays: stars kept, injected hits found."""

from __future__ import annotations

import numpy as np
import pytest

from processing.algorithms.cosmic_rays import (
    CosmicRayConfig,
    find_cosmic_rays,
    psf_neighbour_ratios,
    repair_cosmic_rays,
)
from store.masks import bits
from tests._star_scenes import add_gaussian_stars

NOISE = 10.0  # sky noise, ADU
FWHM_TO_SIGMA = 1 / (2 * np.sqrt(2 * np.log(2)))
#: Hit shapes: single pixels, 2-pixel pairs (axis, diagonal), 3-pixel lines and bends.
SHAPES = [[(0, 0)], [(0, 0), (0, 1)], [(0, 0), (1, 0)], [(0, 0), (1, 1)], [(0, 0), (0, 1), (0, 2)],
          [(0, 0), (1, 1), (2, 2)], [(0, 0), (1, 0), (1, 1)], [(0, 0), (1, 0), (2, 1)]]


def _star_field(rng, n=200, size=1024, fwhm=(4.0, 6.0), snr=(20.0, 2000.0)):
    """Gaussian stars on a jittered grid; variance = sky + Poisson (gain 1)."""
    side = int(np.ceil(np.sqrt(n)))
    step = size / side
    gx, gy = np.meshgrid((np.arange(side) + 0.5) * step, (np.arange(side) + 0.5) * step)
    x = gx.ravel()[:n] + rng.uniform(-0.15, 0.15, n) * step
    y = gy.ravel()[:n] + rng.uniform(-0.15, 0.15, n) * step
    sigma = rng.uniform(*fwhm, n) * FWHM_TO_SIGMA
    s2n = 10 ** rng.uniform(*np.log10(snr), n)
    model = np.zeros((size, size), np.float32)
    add_gaussian_stars(model, x, y, s2n * NOISE * np.sqrt(4 * np.pi) * sigma, sigma)
    var = (NOISE**2 + model).astype(np.float32)
    image = (model + rng.normal(size=model.shape) * np.sqrt(var)).astype(np.float32)
    return image, var, x, y


def _inject(rng, image, var, n, x_avoid, y_avoid, amp=(10.0, 1000.0), min_dist=20.0):
    """Add ``n`` hits of 1-3 pixels, each pixel ``amp`` sigma (log-uniform), away from stars."""
    ny, nx = image.shape
    hits = []
    while len(hits) < n:
        cx, cy = int(rng.integers(5, nx - 5)), int(rng.integers(5, ny - 5))
        if np.min(np.hypot(x_avoid - cx, y_avoid - cy)) < min_dist:
            continue
        if any(abs(cx - h[0][1]) < 6 and abs(cy - h[0][0]) < 6 for h in hits):
            continue
        pix = [(cy + dy, cx + dx) for dy, dx in SHAPES[rng.integers(len(SHAPES))]]
        for p in pix:
            image[p] += 10 ** rng.uniform(*np.log10(amp)) * np.sqrt(var[p])
        hits.append(pix)
    return hits


def test_ratios_are_the_pixel_integrated_gaussian():
    p_axis, p_diag = psf_neighbour_ratios(2.0)
    x = np.linspace(-0.5, 0.5, 2001)
    centre = np.trapezoid(np.exp(-x**2 / 8), x)
    side = np.trapezoid(np.exp(-(x + 1) ** 2 / 8), x)
    assert p_axis == pytest.approx(side / centre, rel=1e-6)
    assert p_diag == pytest.approx(p_axis**2)


@pytest.mark.parametrize("psf_fwhm", [4.0, 5.0])
def test_star_cores_are_not_flagged_and_hits_are_found(psf_fwhm):
    rng = np.random.default_rng(int(psf_fwhm))
    image, var, x, y = _star_field(rng)
    hits = _inject(rng, image, var, 100, x, y)
    cr = find_cosmic_rays(image, var, None, psf_fwhm * FWHM_TO_SIGMA)
    centres = cr[np.round(y).astype(int), np.round(x).astype(int)]
    # Stars of FWHM 4-6 px with the PSF given as 4 or 5 px: measured 0 of 200 flagged.
    assert centres.mean() < 0.01
    found = np.array([all(cr[p] for p in pix) for pix in hits])
    assert found.mean() >= 0.95  # measured 100 of 100 (every pixel of every hit)
    # Nothing else is flagged: the hits grown by one pixel account for all CR pixels.
    expected = np.zeros_like(cr)
    for pix in hits:
        for yy, xx in pix:
            expected[yy - 1:yy + 2, xx - 1:xx + 2] = True
    assert (cr & ~expected).sum() <= 0.01 * expected.sum()


def test_single_pixel_hit_grow_and_masks():
    rng = np.random.default_rng(9)
    image = (rng.normal(size=(40, 40)) * NOISE).astype(np.float32)
    var = np.full_like(image, NOISE**2)
    image[20, 15] += 40 * NOISE
    image[10, 30] += 500 * NOISE  # on a BAD pixel: ignored
    mask = np.zeros(image.shape, np.int32)
    mask[10, 30] = bits("BAD")
    before = image.copy()
    cr = find_cosmic_rays(image, var, mask, 2.0)
    np.testing.assert_array_equal(image, before)
    expected = np.zeros_like(cr)
    expected[19:22, 14:17] = True
    np.testing.assert_array_equal(cr, expected)
    bare = find_cosmic_rays(image, var, mask, 2.0, CosmicRayConfig(grow=0))
    assert bare.sum() == 1 and bare[20, 15]


def test_repair_sets_bits_and_interpolates():
    rng = np.random.default_rng(12)
    image, var, x, y = _star_field(rng, n=25, size=256)
    clean = image.copy()
    hits = _inject(rng, image, var, 10, x, y)
    mask = np.zeros(image.shape, np.int32)
    mask[5, 5] = bits("BAD")
    n = repair_cosmic_rays(image, var, mask, 5 * FWHM_TO_SIGMA)
    cr = (mask & bits("CR")) != 0
    assert n == cr.sum() > 0
    assert ((mask & bits("INTRP")) != 0)[cr].all() and mask[5, 5] == bits("BAD")
    for pix in hits:  # back to sky level within a few sigma
        for p in pix:
            assert abs(image[p] - clean[p]) < 5 * NOISE
    np.testing.assert_array_equal(image[~cr], clean[~cr])  # nothing else touched


def test_pure_noise_and_saturated_cores_are_left_alone():
    rng = np.random.default_rng(10)
    image = (rng.normal(size=(512, 512)) * NOISE).astype(np.float32)
    var = np.full_like(image, NOISE**2)
    assert not find_cosmic_rays(image, var, None, 2.0).any()
    # A saturated star: flat-topped core flagged SAT, sharp edge where it clips.
    star = np.zeros_like(image)
    add_gaussian_stars(star, 256.0, 256.0, 5e6, 2.0)
    sat = star > 3e4
    image += np.minimum(star, 3e4)
    var += np.minimum(star, 3e4)
    mask = np.where(sat, bits("SAT"), 0).astype(np.int32)
    assert not find_cosmic_rays(image, var, mask, 2.0).any()


def test_bad_inputs_name_the_value():
    with pytest.raises(ValueError, match=r"psf_scale must be in \(0, 1\], got 1.5"):
        CosmicRayConfig(psf_scale=1.5)
    with pytest.raises(ValueError, match="min_sigma must be > 0, got 0"):
        CosmicRayConfig(min_sigma=0)
    img = np.zeros((10, 10), np.float32)
    with pytest.raises(ValueError, match="psf_sigma must be > 0 pixels, got -1"):
        find_cosmic_rays(img, img + 1, None, -1)
    with pytest.raises(ValueError, match=r"variance/mask shapes \(3, 3\)"):
        find_cosmic_rays(img, np.ones((3, 3)), None, 2.0)
