"""Tests of processing.algorithms.interpolate with analytic planes."""

from __future__ import annotations

import numpy as np
import pytest

from processing.algorithms.interpolate import interpolate_masked
from store.masks import bits

NO_DATA = bits("NO_DATA")


def plane(shape=(60, 80), a=50.0, b=0.3, c=-0.2):
    yy, xx = np.indices(shape, dtype=float)
    return a + b * xx + c * yy


def test_interior_holes_and_bad_columns_are_exact_on_a_plane():
    truth = plane()
    image = truth.astype(np.float32)
    mask = np.zeros(truth.shape, np.int32)
    mask[10:20, 30:45] = NO_DATA  # a block
    mask[:, 60] = bits("BAD")  # a bad column: vertical run
    image[mask != 0] = -999.0
    n = interpolate_masked(image, mask, bits("NO_DATA", "BAD"))
    assert n == 10 * 15 + 60
    np.testing.assert_allclose(image, truth, rtol=1e-6)
    filled = np.zeros(truth.shape, bool)
    filled[10:20, 30:45] = True
    filled[:, 60] = True
    np.testing.assert_array_equal(mask & bits("INTRP") != 0, filled)
    # Other bits are kept.
    assert (mask[10:20, 30:45] & NO_DATA != 0).all()


def test_edge_runs_take_the_fallback():
    truth = plane()
    image = truth.copy()
    mask = np.zeros(truth.shape, np.int32)
    mask[5, :7] = NO_DATA  # touches the left edge
    mask[6, -3:] = NO_DATA  # touches the right edge
    mask[7, :] = NO_DATA  # whole row
    interpolate_masked(image, mask, NO_DATA, fallback=12.5)
    assert (image[5, :7] == 12.5).all() and (image[6, -3:] == 12.5).all()
    assert (image[7] == 12.5).all()
    np.testing.assert_allclose(image[5, 7:], truth[5, 7:])
    # Default fallback: the median of the good pixels, not below zero.
    image2, mask2 = truth.copy(), np.zeros(truth.shape, np.int32)
    mask2[0, :4] = NO_DATA
    interpolate_masked(image2, mask2, NO_DATA)
    good = np.ones(truth.shape, bool)
    good[0, :4] = False
    assert image2[0, 0] == pytest.approx(np.median(truth[good]))
    negative, mask3 = -truth, np.zeros(truth.shape, np.int32)
    mask3[0, :4] = NO_DATA
    interpolate_masked(negative, mask3, NO_DATA)
    assert (negative[0, :4] == 0).all()


def test_nan_pixels_and_variance_fix():
    truth = plane(shape=(10, 12))
    image = truth.copy()
    image[4, 5] = np.nan
    mask = np.zeros(truth.shape, np.int32)
    variance = np.ones(truth.shape)
    variance[0, 0] = 0.0
    variance[1, 1] = np.nan
    variance[2, 2] = -1.0
    assert interpolate_masked(image, mask, NO_DATA, variance=variance) == 1
    assert image[4, 5] == pytest.approx(truth[4, 5])
    assert mask[4, 5] == bits("INTRP")
    assert np.isinf(variance[[0, 1, 2], [0, 1, 2]]).all()
    assert (variance[3:] == 1).all()
    # include_nan=False leaves unflagged NaNs alone.
    image[4, 5] = np.nan
    assert interpolate_masked(image, np.zeros(truth.shape, np.int32), NO_DATA,
                              include_nan=False) == 0
    assert np.isnan(image[4, 5])


def test_nothing_to_do_returns_zero():
    image = plane(shape=(5, 5))
    before = image.copy()
    mask = np.zeros((5, 5), np.int32)
    assert interpolate_masked(image, mask, NO_DATA) == 0
    np.testing.assert_array_equal(image, before)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match=r"got \(3, 3\) and \(2, 2\)"):
        interpolate_masked(np.zeros((3, 3)), np.zeros((2, 2), np.int32), NO_DATA)
