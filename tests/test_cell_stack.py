"""Cell accumulation kernels: grid geometry, pixel codes, interpolation, coverage, weighted means."""

from __future__ import annotations

import numpy as np
import pytest

from processing.algorithms.cell_stack import (
    BAD,
    EXCLUDED,
    GOOD,
    UNFILLABLE,
    CellGrid,
    CellStack,
    cell_coverage,
    classify_pixels,
    interpolate_runs,
)
from processing.skymap import DiscreteSkyMap
from store.geom import Box
from store.masks import bits


def test_grid_from_sky_map_cells():
    patch = DiscreteSkyMap([[10.0, 0.0]], [0.05])[0].patch(0, 0)
    grid = CellGrid.from_cells(list(patch.cells()))
    assert (grid.nx, grid.ny, grid.size, grid.border) == (22, 22, 150, 50)
    assert grid.outer_box(21, 21) == patch.cell(21, 21).outer_bbox
    assert grid.region(0, 22) == patch.outer_bbox  # outer cells cover the patch outer box
    assert grid.bbox == patch.outer_bbox.grow(-50)
    cx, cy = grid.center_pixel(0, 0)
    inner = patch.cell(0, 0).inner_bbox
    assert (cx, cy) == (inner.x0 + 75, inner.y0 + 75)  # floor(x0 + 74.5 + 0.5)
    cells = list(patch.cells())[:-1]
    with pytest.raises(ValueError, match="do not fill a 22 x 22 grid"):
        CellGrid.from_cells(cells)


def test_classify_codes():
    image = np.array([[1.0, np.nan, 3.0, 4.0, 5.0, 6.0]], np.float32)
    variance = np.array([[1.0, 1.0, 0.0, 1.0, 1.0, 1.0]], np.float32)
    mask = np.array([[0, 0, 0, bits("SAT"), bits("CLIPPED"), bits("BAD")]], np.int32)
    label = np.array([[0, 0, 0, 0, 0, -1]], np.int16)
    codes = classify_pixels(image, variance, mask, label, bad_bits=bits("BAD", "SAT"),
                            exclude_bits=bits("CLIPPED"))
    assert codes.tolist() == [[GOOD, BAD, BAD, BAD, EXCLUDED, GOOD]]


def test_interpolation_stays_within_a_detector():
    image = np.array([[1, 9, 9, 4, 5, 9, 9, 9, 9, 20]], np.float32)
    variance = np.array([[1, 9, 9, 4, 1, 9, 9, 9, 1, 1]], np.float32)
    label = np.array([[0, 0, 0, 0, 0, 0, 1, 1, 1, 1]], np.int16)
    codes = np.array([[0, 1, 1, 0, 0, 1, 1, 1, 0, 0]], np.uint8)
    n = interpolate_runs(image, variance, label, codes)
    # Pixels 1-2: line from 1 to 4; pixel 5: only its left neighbour is of detector 0;
    # pixels 6-7: their right neighbour (detector 1) is 9 at pixel 8.
    assert n == 5
    assert image.tolist() == [[1, 2, 3, 4, 5, 5, 9, 9, 9, 20]]
    assert variance[0, 1:3].tolist() == [2.0, 3.0] and variance[0, 5] == 1
    lone = np.array([[5.0, 9.0]], np.float32)
    codes = np.array([[EXCLUDED, BAD]], np.uint8)
    interpolate_runs(lone, np.ones_like(lone), np.zeros((1, 2), np.int16), codes)
    assert codes.tolist() == [[EXCLUDED, UNFILLABLE]]


def test_interpolation_recovers_a_smooth_image():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    truth = 100 + 0.5 * xx + 0.2 * yy
    image = truth.copy()
    codes = np.zeros(image.shape, np.uint8)
    bad = rng.random(image.shape) < 0.1
    codes[bad] = BAD
    image[bad] = 1e6
    interpolate_runs(image, np.ones_like(image), np.zeros(image.shape, np.int16), codes)
    cols = np.arange(64)
    good_left = np.maximum.accumulate(np.where(~bad, cols, -1), axis=1) >= 0
    good_right = np.minimum.accumulate(np.where(~bad, cols, 64)[:, ::-1], axis=1)[:, ::-1] < 64
    interior = bad & good_left & good_right
    assert interior.sum() > 300
    assert np.allclose(image[interior], truth[interior], atol=1e-3)
    edge = bad & ~interior  # one-sided runs take the nearest good value of the row
    assert np.all(np.abs(image[edge] - truth[edge]) < 0.5 * 8)


def _grid():
    return CellGrid(x0=10, y0=20, size=4, border=2, nx=3, ny=2)


def test_coverage_counts_inner_pixels():
    grid = _grid()
    region = grid.region(0, 2)
    label = np.full(region.shape, -1, np.int16)
    codes = np.zeros(region.shape, np.uint8)
    # Detector 0 covers the inner box of cell (0, 0); detector 1 three quarters of cell
    # (1, 0) with its centre pixel (region x = 6 + 2).
    label[2:6, 2:6] = 0
    label[2:6, 7:10] = 1
    codes[2, 2] = BAD
    own, good, centre = cell_coverage(label, codes, grid, 2)
    assert own.shape == (6, 2)
    assert own[0].tolist() == [16, 0] and good[0].tolist() == [15, 0]
    assert own[1].tolist() == [0, 12] and centre[0] == 0 and centre[1] == 1
    assert centre[2] == -1


def test_stack_matches_the_weighted_mean():
    rng = np.random.default_rng(5)
    grid = _grid()
    region = grid.region(0, 2)
    n_in = 4
    images = rng.normal(10, 3, (n_in, *region.shape)).astype(np.float32)
    variances = rng.uniform(1, 4, (n_in, *region.shape)).astype(np.float32)
    weights = rng.uniform(0.5, 2, n_in)
    stack = CellStack(6, grid.outer_size)
    label = np.zeros(region.shape, np.int16)
    codes = np.zeros(region.shape, np.uint8)
    mask = np.zeros(region.shape, np.int32)
    slot = 4  # cell (1, 1)
    oy, ox = 1 * grid.size, 1 * grid.size
    for k in range(n_in):
        m = mask.copy()
        if k == 1:
            m[oy + 3, ox + 3] = bits("DETECTED")
        stack.add(images[k], variances[k], m, label, codes, slots=[slot], origins_y=[oy],
                  origins_x=[ox], labels=[0], weights=[weights[k]], interpolate=[True])
    img, var, msk, frac = stack.finish(slot, weights.sum())
    sl = (slice(oy, oy + grid.outer_size), slice(ox, ox + grid.outer_size))
    w = weights[:, None, None]
    expected = (w * images[:, sl[0], sl[1]]).sum(0) / weights.sum()
    expected_var = (w * w * variances[:, sl[0], sl[1]]).sum(0) / weights.sum() ** 2
    assert np.allclose(img, expected, rtol=1e-5)
    assert np.allclose(var, expected_var, rtol=1e-5)
    assert msk[3, 3] == bits("DETECTED") and (msk[msk != msk[3, 3]] == 0).all()
    assert np.all(frac == 0)


def test_stack_exceptions_are_flagged():
    grid = _grid()
    region = grid.region(0, 1)
    shape = region.shape
    image = np.full(shape, 5.0, np.float32)
    variance = np.ones(shape, np.float32)
    mask = np.zeros(shape, np.int32)
    label = np.zeros(shape, np.int16)
    codes = np.zeros(shape, np.uint8)
    label[:, 0] = 1  # another detector: this input has no pixel there
    codes[0, 1] = BAD
    mask[0, 1] = bits("SAT")
    codes[0, 2] = EXCLUDED
    mask[0, 2] = bits("CLIPPED")
    codes[0, 3] = UNFILLABLE
    mask[0, 3] = bits("BAD")
    stack = CellStack(3, grid.outer_size)
    args = dict(slots=[0, 0], origins_y=[0, 0], origins_x=[0, 0], labels=[0, 0])
    stack.add(image, variance, mask, label, codes, weights=[1.0, 1.0],
              interpolate=[True, False], **args)
    img, var, msk, frac = stack.finish(0, 2.0)
    assert np.isnan(img[0, 0]) and msk[0, 0] & bits("NO_DATA") and frac[0, 0] == 1
    # Interpolated in one input (weight 1/2 > SAT threshold 0.1), left out in the other.
    assert img[0, 1] == 5 and var[0, 1] == 1
    assert msk[0, 1] & bits("INTRP") and msk[0, 1] & bits("REJECTED") and msk[0, 1] & bits("SAT")
    assert frac[0, 1] == 1
    assert msk[0, 2] & bits("CLIPPED") and msk[0, 3] & bits("REJECTED")
    assert all(msk[0, i] & bits("INEXACT_PSF") for i in range(4))
    assert msk[1, 1] == 0 and img[1, 1] == 5 and var[1, 1] == 0.5 and frac[1, 1] == 0
    stack.reset(0)
    assert not stack.sum_wx[0].any() and not stack.rej_mask[0].any()
    with pytest.raises(ValueError, match="leave the region"):
        stack.add(image, variance, mask, label, codes, slots=[2], origins_y=[0],
                  origins_x=[grid.size * 3], labels=[0], weights=[1.0], interpolate=[True])


def test_box_of_region_rows():
    grid = _grid()
    assert grid.region(1, 2) == Box(8, 22, 16, 8)
