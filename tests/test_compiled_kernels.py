"""The compiled measurement, detection and statistics paths against plain numpy/scipy references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from processing.algorithms._measure_kernels import select_ranks
from processing.algorithms.detection import DetectionConfig, detect_sources, grow_mask
from processing.algorithms.photometry import (
    local_background,
    local_background_image,
    psf_flux_blend,
)
from processing.algorithms.stats import clipped_stats


@pytest.mark.parametrize("n", [1, 2, 7, 300, 2100, 16000])
def test_select_ranks_gives_the_order_statistics(n):
    rng = np.random.default_rng(n)
    values = (rng.normal(size=n) * 10 + 100).astype(np.float32)
    values[rng.random(n) < 0.02] *= 50  # outliers outside the sampled window
    values[: n // 10] = np.round(values[: n // 10])  # ties
    ranks = np.unique(np.clip(np.array([0, n // 4, n // 4 + 1, n // 2, 3 * n // 4, n - 1]),
                              0, n - 1))
    out = np.empty(ranks.size, dtype=np.float32)
    kept = values.copy()
    select_ranks(values, n, ranks, out, np.empty(n, dtype=np.float32))
    np.testing.assert_array_equal(out, np.sort(values)[ranks])
    np.testing.assert_array_equal(values, kept)  # the input is left alone


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clipped_stats_quartiles_are_numpy_percentiles(dtype):
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(300, 211)) * 7 + 40).astype(dtype)
    x[rng.random(x.shape) < 0.01] = 1e5
    x[rng.random(x.shape) < 0.01] = np.nan
    mask = np.where(rng.random(x.shape) < 0.1, 4, 0).astype(np.int32)
    res = clipped_stats(x, n_iter=2, mask=mask, and_mask=4)
    usable = x[np.isfinite(x) & (mask == 0)]
    assert res.median == float(np.percentile(usable, 50.0))
    # The clipping as written in numpy, in the input's precision.
    q1, q3 = np.percentile(usable, [25.0, 75.0])
    keep = np.abs(usable - float(np.median(usable))) <= 3.0 * 0.741301109252802 * (q3 - q1)
    mean = float(usable[keep].mean(dtype=np.float64))
    var = float(usable[keep].var(dtype=np.float64, ddof=1))
    keep = np.abs(usable - mean) <= 3.0 * np.sqrt(var)  # Python floats: the input's precision
    assert res.n_used == keep.sum()
    assert res.mean == pytest.approx(usable[keep].mean(dtype=np.float64), rel=1e-12)
    assert res.variance == pytest.approx(usable[keep].var(dtype=np.float64, ddof=1), rel=1e-9)


def test_footprints_match_scipy_labelling_of_the_grown_mask():
    rng = np.random.default_rng(11)
    image = rng.normal(size=(300, 400)).astype(np.float32)
    yy, xx = np.mgrid[:300, :400]
    for x0, y0, f in zip(rng.uniform(0, 400, 60), rng.uniform(0, 300, 60),
                         rng.uniform(20, 400, 60), strict=True):
        image += f * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 8.0) / (8 * np.pi)
    variance = np.ones_like(image)
    for config in (DetectionConfig(), DetectionConfig(min_pixels=6, polarity="both")):
        res = detect_sources(image, variance, None, 2.0, config)
        half = res.kernel_half_width
        above = res.smoothed > config.threshold * np.sqrt(res.smoothed_variance)
        above[:half], above[-half:], above[:, :half], above[:, -half:] = False, False, False, False
        if config.min_pixels > 1:
            lab, n = ndi.label(above, structure=np.ones((3, 3), bool))
            small = np.bincount(lab.ravel(), minlength=n + 1) < config.min_pixels
            above &= ~small[lab]
        want, n = ndi.label(grow_mask(above, res.grow_radius), structure=np.ones((3, 3), bool))
        np.testing.assert_array_equal(res.labels, want)
        assert res.n_positive == n
        for label in (1, n // 2, n):
            ys, xs = res.footprint_pixels(label)
            np.testing.assert_array_equal(np.flatnonzero(want.ravel() == label), ys * 400 + xs)


def test_local_background_from_the_image_equals_the_stamp_version():
    rng = np.random.default_rng(3)
    image = (5.0 + 2.0 * rng.normal(size=(200, 220))).astype(np.float32)
    image[50:60, 40:45] += 300.0
    mask = np.where(rng.random(image.shape) < 0.05, 2, 0).astype(np.int32)
    labels = np.zeros(image.shape, np.int32)
    labels[90:110, 90:130] = 7
    x, y = np.array([100, 30, 5, 190]), np.array([100, 40, 195, 10])
    got = local_background_image(image, mask, 2, x, y, 8.0, 20.0, labels=labels)
    half = 21
    pad = ((half, half), (half, half))
    good_full = np.pad((mask == 0) & (labels == 0), pad)
    img_full = np.pad(image, pad)
    boxes = [(slice(b, b + 2 * half + 1), slice(a, a + 2 * half + 1))
             for a, b in zip(x, y, strict=True)]
    stamps = np.stack([img_full[box] for box in boxes])
    good = np.stack([good_full[box] for box in boxes])
    want = local_background(stamps, good, 8.0, 20.0)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_joint_psf_fit_equals_dense_least_squares():
    rng = np.random.default_rng(8)
    k, shape = 11, (30, 34)
    yy, xx = np.mgrid[:k, :k] - k // 2
    models = np.stack([np.exp(-(xx**2 + yy**2) / (2 * s * s)) for s in (1.5, 1.8, 2.1)])
    models /= models.sum(axis=(1, 2))[:, None, None]
    x0, y0 = np.array([2, 9, 20]), np.array([3, 12, 16])
    design = np.zeros((3, *shape))
    for c in range(3):
        design[c, y0[c] : y0[c] + k, x0[c] : x0[c] + k] = models[c]
    image = np.tensordot([500.0, 200.0, 900.0], design, axes=1) + rng.normal(size=shape)
    variance = np.full(shape, 1.0) + rng.random(shape)
    good = rng.random(shape) > 0.05
    fit = psf_flux_blend(image, variance, good, models, x0, y0)
    a = design.reshape(3, -1)[:, good.ravel()]
    flux = np.linalg.solve(a @ a.T, a @ image[good])
    inv = np.linalg.inv(a @ a.T)
    err = np.sqrt(np.diag(inv @ (a * variance[good]) @ a.T @ inv))
    np.testing.assert_allclose(fit.flux, flux, rtol=1e-10)
    np.testing.assert_allclose(fit.flux_err, err, rtol=1e-10)
    resid = image - np.tensordot(fit.flux, design, axes=1)
    for c in range(3):
        on = design[c] != 0
        assert fit.chi2[c] == pytest.approx((resid[on] ** 2 / variance[on]).sum(), rel=1e-10)
        assert fit.npixels[c] == on.sum()
