"""Tests of processing.algorithms.sky_sources against a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest

from processing.algorithms.detection import grow_mask
from processing.algorithms.sky_sources import DEFAULT_AVOID, place_sky_sources
from store.masks import bits


def _field_mask(seed=0, shape=(400, 500)):
    rng = np.random.default_rng(seed)
    blobs = np.zeros(shape, bool)
    blobs[rng.integers(0, shape[0], 150), rng.integers(0, shape[1], 150)] = True
    mask = np.where(grow_mask(blobs, 6), bits("DETECTED"), 0).astype(np.int32)
    mask[:, 200:203] |= bits("BAD")
    mask[300:, 400:] |= bits("SAT")  # not avoided
    return mask


def _stencil(x, y, r, shape):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - x) ** 2 + (yy - y) ** 2 <= r * r


def _reference(mask, n_sources, radius, n_trials, seed, avoid, grow=0):
    """Trial-by-trial pixel-set version of the same rules, same random draws."""
    rng = np.random.default_rng(seed)
    ny, nx = mask.shape
    tx = rng.integers(radius, nx - radius, size=n_trials)
    ty = rng.integers(radius, ny - radius, size=n_trials)
    blocked = (mask & avoid) != 0
    if grow:
        blocked = grow_mask(blocked, grow)
    out = []
    for x, y in zip(tx, ty, strict=True):
        if len(out) >= n_sources:
            break
        circle = _stencil(x, y, radius, mask.shape)
        if (circle & blocked).any():
            continue
        blocked = blocked | circle
        out.append((x, y))
    return out


def test_matches_brute_force_and_avoids_masked_pixels():
    mask = _field_mask()
    x, y = place_sky_sources(mask, n_sources=60, radius=8, n_trials=300, seed=42)
    ref = _reference(mask, 60, 8, 300, 42, DEFAULT_AVOID)
    assert list(zip(x.astype(int).tolist(), y.astype(int).tolist(), strict=True)) == [
        (int(a), int(b)) for a, b in ref]
    union = np.zeros(mask.shape, int)
    for xi, yi in zip(x, y, strict=True):
        circle = _stencil(xi, yi, 8, mask.shape)
        assert circle.sum() == 197  # the full circle lies inside the image
        assert not (mask[circle] & DEFAULT_AVOID).any()
        union += circle
    assert union.max() == 1  # circles do not overlap
    # SAT is not in the avoid list, so circles may land on it.
    assert ((mask & bits("SAT")) != 0)[union > 0].any()


def test_seed_and_grow():
    mask = _field_mask(seed=1)
    a = place_sky_sources(mask, seed=7)
    b = place_sky_sources(mask, seed=7)
    c = place_sky_sources(mask, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0][:10], c[0][:10])
    x, y = place_sky_sources(mask, n_sources=30, radius=5, seed=3, grow=4)
    ref = _reference(mask, 30, 5, 500, 3, DEFAULT_AVOID, grow=4)
    assert len(x) == len(ref) == 30
    dist = np.sqrt(np.array([[(xi - xx) ** 2 + (yi - yy) ** 2 for yy, xx in zip(*np.nonzero(
        (mask & DEFAULT_AVOID) != 0), strict=True)] for xi, yi in zip(x[:5], y[:5], strict=True)]))
    assert dist.min() > 5 + 4 - 1e-9


def test_crowded_image_returns_fewer_with_a_warning():
    mask = np.full((100, 100), bits("DETECTED"), np.int32)
    mask[40:60, 40:60] = 0  # room for one r=8 circle at most
    with pytest.warns(UserWarning, match="placed 1 of 100 sky sources"):
        x, y = place_sky_sources(mask, n_trials=5000, seed=0)
    assert len(x) == 1 and 48 <= x[0] <= 51 and 48 <= y[0] <= 51
    with pytest.raises(ValueError, match="image 10x10 is too small for circles of radius 8"):
        place_sky_sources(np.zeros((10, 10), np.int32))
