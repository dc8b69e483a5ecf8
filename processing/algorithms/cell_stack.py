"""Accumulating warps into the cells of a patch (drp_tasks ``AssembleCellCoaddTask``, 4.4).

A cell coadd keeps, for every cell of a patch, its own online weighted mean
(A.3) over the *outer* cell (inner box grown by the cell border), fed only by
the inputs (a detector of a visit) that cover the whole *inner* cell.  The
pieces here work on one warp at a time, on a *region*: a band of whole cell
rows of the patch, read once per warp.

Per warp, every region pixel gets a detector *label* (``-1``: no detector;
built by the caller from the detector polygons) and a *code* from its mask
and values (:func:`classify_pixels`):

* ``GOOD`` (0): used as it is;
* ``BAD`` (1): a bad-mask bit, or a non-finite image or variance value, on a
  pixel of a detector: replaced by interpolation (:func:`interpolate_runs`);
* ``EXCLUDED`` (2): an exclude-mask bit (CLIPPED artefacts): left out;
* ``UNFILLABLE`` (3): a BAD pixel that no good pixel of its own detector can
  fill along its row: left out.

:func:`cell_coverage` counts, per cell and detector, the inner-cell pixels of
that detector and the good ones among them (the overlap and unmasked
fractions of 4.4 step 5).  :class:`CellStack` holds the accumulators of the
region's cells and adds one (cell, detector) input at a time: pixels of other
detectors (or none) never enter a cell's mean, so each outer-cell pixel is the
weighted mean of exactly the inputs that cover it with data of their own.

Interpolation (decision): bad pixels are filled along rows by the straight
line between the nearest good pixels of the *same detector* on either side
(one side only: that pixel's value; pixels of another detector, of no
detector, excluded pixels and the region's edge are barriers), and the
variance likewise.  So every input contributes at every pixel it covers and
the cell PSF holds at interpolated pixels too, up to the interpolation error;
those pixels are flagged (INTRP, INEXACT_PSF).  ``interpolate=False`` rejects
BAD pixels per pixel instead (Rubin's current code).

Outputs of :meth:`CellStack.finish`: ``image = sum w x / sum w``,
``variance = sum w^2 v / (sum w)^2``; mask = OR of the masks of the pixels used
as they are, plus INTRP where an input was interpolated, REJECTED where a BAD
pixel was left out, the excluded pixels' bits (CLIPPED), each plane with a
propagation threshold (SAT: 0.1) where it was interpolated and the
interpolated weight fraction exceeds the threshold, NO_DATA where no input
contributed, and INEXACT_PSF wherever any of INTRP, REJECTED, CLIPPED or NO_DATA
is set or some input of the cell is missing; ``maskfrac = 1 - (weight of the
original pixels used) / (total weight of the cell's inputs)``.

The loops are numba-compiled.  Measured on the shared 2-core machine (one
thread, load ~6): adding one 3400 x 3400 warp into the 415 cells of a patch
it covers (26 million outer-cell pixels) takes 0.13 s, the same sums as numpy
array operations per cell 3.6 s.  The accumulation is bound by memory
traffic (the cells' sums do not fit in any cache), so a good pixel with an
empty mask touches only two float32 sums; the others record exceptions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numba
import numpy as np

from store.geom import Box
from store.masks import bits

__all__ = [
    "BAD",
    "EXCLUDED",
    "GOOD",
    "UNFILLABLE",
    "CellGrid",
    "CellStack",
    "cell_coverage",
    "classify_pixels",
    "interpolate_runs",
]

GOOD, BAD, EXCLUDED, UNFILLABLE = 0, 1, 2, 3

_JIT = {"cache": True, "nogil": True}


@dataclass(frozen=True)
class CellGrid:
    """A regular grid of square cells (tract pixels).

    Attributes
    ----------
    x0, y0 : int
        Lower-left pixel of the inner box of cell (0, 0).
    size : int
        Inner cell side, pixels.
    border : int
        Outer border of a cell, pixels (outer side ``size + 2 border``).
    nx, ny : int
        Cells along x and y.
    """

    x0: int
    y0: int
    size: int
    border: int
    nx: int
    ny: int

    def __post_init__(self):
        if self.size < 1 or self.border < 0 or self.nx < 1 or self.ny < 1:
            raise ValueError(f"invalid cell grid {self}")

    @classmethod
    def from_cells(cls, cells: Sequence) -> CellGrid:
        """The grid of cells with ``index``, ``inner_bbox`` and ``outer_bbox`` (``CellInfo``)."""
        cells = list(cells)
        if not cells:
            raise ValueError("no cells to make a grid of")
        first = next(c for c in cells if tuple(c.index) == min(tuple(c.index) for c in cells))
        size = first.inner_bbox.width
        border = first.inner_bbox.x0 - first.outer_bbox.x0
        nx = 1 + max(c.index[0] for c in cells)
        ny = 1 + max(c.index[1] for c in cells)
        grid = cls(first.inner_bbox.x0 - first.index[0] * size,
                   first.inner_bbox.y0 - first.index[1] * size, size, border, nx, ny)
        for c in cells:
            if (c.inner_bbox != grid.inner_box(*c.index)
                    or c.outer_bbox != grid.outer_box(*c.index)):
                raise ValueError(f"cells do not form a regular grid: cell {c.index} has inner box "
                                 f"{c.inner_bbox}, expected {grid.inner_box(*c.index)}")
        if len(cells) != nx * ny:
            raise ValueError(f"cells do not fill a {nx} x {ny} grid: got {len(cells)}")
        return grid

    @property
    def outer_size(self) -> int:
        """Side of an outer cell, pixels."""
        return self.size + 2 * self.border

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return self.nx * self.ny

    @property
    def bbox(self) -> Box:
        """Union of the inner cells (the stitched image's box)."""
        return Box(self.x0, self.y0, self.nx * self.size, self.ny * self.size)

    def inner_box(self, ix: int, iy: int) -> Box:
        """Inner box of cell ``(ix, iy)`` (tract pixels)."""
        return Box(self.x0 + ix * self.size, self.y0 + iy * self.size, self.size, self.size)

    def outer_box(self, ix: int, iy: int) -> Box:
        """Outer box of cell ``(ix, iy)``: the inner box grown by the border."""
        return self.inner_box(ix, iy).grow(self.border)

    def center_pixel(self, ix, iy) -> tuple[np.ndarray, np.ndarray]:
        """Integer pixel nearest the centre of each inner cell (``floor(c + 0.5)``)."""
        half = (self.size - 1) / 2.0
        cx = np.floor(self.x0 + np.asarray(ix) * self.size + half + 0.5).astype(np.int64)
        cy = np.floor(self.y0 + np.asarray(iy) * self.size + half + 0.5).astype(np.int64)
        return cx, cy

    def region(self, row0: int, row1: int) -> Box:
        """Box of the outer cells of rows ``row0 <= iy < row1``."""
        return Box(self.x0 - self.border, self.y0 + row0 * self.size - self.border,
                   self.nx * self.size + 2 * self.border,
                   (row1 - row0) * self.size + 2 * self.border)


# ------------------------------------------------------------------------ per-warp pixel codes


@numba.njit(**_JIT)
def _classify(image, variance, mask, label, bad_bits, exclude_bits, out):
    ny, nx = image.shape
    for j in range(ny):
        for i in range(nx):
            code = GOOD
            if label[j, i] >= 0:
                m = mask[j, i]
                if (m & exclude_bits) != 0:
                    code = EXCLUDED
                elif ((m & bad_bits) != 0 or not np.isfinite(image[j, i])
                      or not (variance[j, i] > 0 and np.isfinite(variance[j, i]))):
                    code = BAD
            out[j, i] = code


def classify_pixels(image: np.ndarray, variance: np.ndarray, mask: np.ndarray,
                    label: np.ndarray, *, bad_bits: int, exclude_bits: int) -> np.ndarray:
    """Code every pixel GOOD, BAD or EXCLUDED (see the module notes).

    Parameters
    ----------
    image, variance : numpy.ndarray
        ``(ny, nx)`` float32 planes of the warp region (nJy, nJy^2).
    mask : numpy.ndarray
        ``(ny, nx)`` int32 mask.
    label : numpy.ndarray
        ``(ny, nx)`` integer detector label (``-1``: none; such pixels are GOOD
        but belong to no input).
    bad_bits, exclude_bits : int
        Mask bits making a pixel BAD (interpolated) or EXCLUDED.

    Returns
    -------
    numpy.ndarray
        ``(ny, nx)`` uint8 codes.
    """
    out = np.empty(image.shape, np.uint8)
    _classify(image, variance, mask, label, np.int32(bad_bits), np.int32(exclude_bits), out)
    return out


@numba.njit(parallel=True, **_JIT)
def _fill_runs(image, variance, label, codes, filled):
    ny, nx = image.shape
    for j in numba.prange(ny):
        n_filled = 0
        i = 0
        while i < nx:
            lab = label[j, i]
            if codes[j, i] != BAD or lab < 0:
                i += 1
                continue
            start = i
            while i < nx and codes[j, i] == BAD and label[j, i] == lab:
                i += 1
            end = i
            left = start > 0 and label[j, start - 1] == lab and codes[j, start - 1] == GOOD
            right = end < nx and label[j, end] == lab and codes[j, end] == GOOD
            if left or right:
                n_filled += end - start
            if left and right:
                a, b = start - 1, end
                for k in range(start, end):
                    t = (k - a) / (b - a)
                    image[j, k] = image[j, a] + t * (image[j, b] - image[j, a])
                    variance[j, k] = variance[j, a] + t * (variance[j, b] - variance[j, a])
            elif left or right:
                src = start - 1 if left else end
                for k in range(start, end):
                    image[j, k] = image[j, src]
                    variance[j, k] = variance[j, src]
            else:
                for k in range(start, end):
                    codes[j, k] = UNFILLABLE
        filled[j] = n_filled


def interpolate_runs(image: np.ndarray, variance: np.ndarray, label: np.ndarray,
                     codes: np.ndarray) -> int:
    """Fill BAD pixels in place from good pixels of the same detector along each row.

    Parameters
    ----------
    image, variance : numpy.ndarray
        ``(ny, nx)`` float32 planes, modified in place.
    label : numpy.ndarray
        ``(ny, nx)`` integer detector labels.
    codes : numpy.ndarray
        ``(ny, nx)`` uint8 codes from :func:`classify_pixels`; BAD runs with no
        usable neighbour become UNFILLABLE.

    Returns
    -------
    int
        Number of BAD pixels filled.

    Examples
    --------
    >>> img = np.array([[1.0, 9.0, 9.0, 4.0]], np.float32)
    >>> var = np.ones_like(img)
    >>> lab = np.zeros(img.shape, np.int16)
    >>> codes = np.array([[0, 1, 1, 0]], np.uint8)
    >>> interpolate_runs(img, var, lab, codes), img.tolist()
    (2, [[1.0, 2.0, 3.0, 4.0]])
    """
    filled = np.zeros(image.shape[0], np.int64)
    _fill_runs(image, variance, label, codes, filled)
    return int(filled.sum())


@numba.njit(**_JIT)
def _coverage(label, codes, size, rows, cols, centre_y, centre_x, own, good, centre):
    for c in range(rows.size):
        y0 = rows[c] * size
        x0 = cols[c] * size
        for y in range(y0, y0 + size):
            for x in range(x0, x0 + size):
                lab = label[y, x]
                if lab >= 0:
                    own[c, lab] += 1
                    if codes[y, x] == GOOD:
                        good[c, lab] += 1
        centre[c] = label[y0 + centre_y, x0 + centre_x]


def cell_coverage(label: np.ndarray, codes: np.ndarray, grid: CellGrid,
                  n_labels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inner-cell pixel counts per (cell, detector label) over a region of cell rows.

    Parameters
    ----------
    label, codes : numpy.ndarray
        Labels and codes on a region ``grid.region(row0, row1)``.
    grid : CellGrid
        The cells.
    n_labels : int
        Labels are ``0 .. n_labels - 1``.

    Returns
    -------
    own : numpy.ndarray
        ``(n_cells, n_labels)`` int64: inner pixels of each detector (cells of
        the region in row-major order).
    good : numpy.ndarray
        The same, GOOD pixels only.
    centre : numpy.ndarray
        ``(n_cells,)`` label at each cell's centre pixel.
    """
    n_rows = (label.shape[0] - 2 * grid.border) // grid.size
    iy, ix = np.divmod(np.arange(n_rows * grid.nx), grid.nx)
    cx, cy = grid.center_pixel(0, 0)
    own = np.zeros((iy.size, max(n_labels, 1)), np.int64)
    good = np.zeros_like(own)
    centre = np.empty(iy.size, np.int32)
    # Region coordinates: the inner box of cell (ix, row0 + iy) starts at border + (iy, ix) size.
    sub_label = label[grid.border:, grid.border:]
    sub_codes = codes[grid.border:, grid.border:]
    _coverage(sub_label, sub_codes, grid.size, iy, ix, int(cy - grid.y0), int(cx - grid.x0),
              own, good, centre)
    return own, good, centre


# ------------------------------------------------------------------------------ accumulation


@numba.njit(parallel=True, **_JIT)
def _add(image, variance, mask, label, codes, oy, ox, slots, labels, weights, interp,
         group_start, sum_wx, sum_w2v, miss_w, interp_w, or_mask, rej_mask, intrp_bit,
         rejected_bit):
    # Inputs are sorted by cell; each cell's inputs run in one thread (cells never share
    # accumulator memory), one parallel region per warp.  A good pixel with an empty mask
    # touches only sum_wx and sum_w2v: the other sums record the exceptions, which keeps
    # the memory traffic (the cost of this loop) at 16 bytes per pixel and input.
    n_out = sum_wx.shape[1]
    for grp in numba.prange(group_start.size - 1):
        for p in range(group_start[grp], group_start[grp + 1]):
            s = slots[p]
            lab = labels[p]
            w = np.float32(weights[p])
            w2 = w * w
            use_bad = interp[p]
            y0 = oy[p]
            x0 = ox[p]
            for yy in range(n_out):
                y = y0 + yy
                for xx in range(n_out):
                    x = x0 + xx
                    if label[y, x] != lab:
                        miss_w[s, yy, xx] += w
                        continue
                    code = codes[y, x]
                    if code == GOOD or (code == BAD and use_bad):
                        sum_wx[s, yy, xx] += w * image[y, x]
                        sum_w2v[s, yy, xx] += w2 * variance[y, x]
                        m = mask[y, x]
                        if code == GOOD:
                            if m != 0:
                                or_mask[s, yy, xx] |= m
                        else:
                            interp_w[s, yy, xx] += w
                            rej_mask[s, yy, xx] |= m | intrp_bit
                    else:
                        miss_w[s, yy, xx] += w
                        if code == EXCLUDED:
                            rej_mask[s, yy, xx] |= mask[y, x]
                        else:
                            rej_mask[s, yy, xx] |= mask[y, x] | rejected_bit


class CellStack:
    """Online weighted means of the outer cells of some cells (A.3, per cell).

    Parameters
    ----------
    n_cells : int
        Number of cells (slots).
    outer_size : int
        Outer cell side, pixels.
    mask_propagation_thresholds : mapping of str to float, optional
        Plane -> interpolated-weight fraction above which the plane is set
        (default ``{"SAT": 0.1}``).

    Notes
    -----
    Weights should be of order 1 (e.g. divided by a typical weight): the
    sums are float32.  Memory: 24 bytes per outer-cell pixel: ``sum_wx``,
    ``sum_w2v``, ``miss_w`` (weight of the cell's inputs that gave no pixel
    here), ``interp_w`` (weight of interpolated pixels), ``or_mask`` (OR of
    the masks of pixels used as they are) and ``rej_mask`` (OR of the others,
    with INTRP / REJECTED markers).
    """

    def __init__(self, n_cells: int, outer_size: int, *,
                 mask_propagation_thresholds: Mapping[str, float] | None = None):
        shape = (int(n_cells), int(outer_size), int(outer_size))
        self.shape = shape
        self.thresholds = dict({"SAT": 0.1} if mask_propagation_thresholds is None
                               else mask_propagation_thresholds)
        bits(list(self.thresholds))
        self.sum_wx = np.zeros(shape, np.float32)
        self.sum_w2v = np.zeros(shape, np.float32)
        self.miss_w = np.zeros(shape, np.float32)
        self.interp_w = np.zeros(shape, np.float32)
        self.or_mask = np.zeros(shape, np.int32)
        self.rej_mask = np.zeros(shape, np.int32)

    def __repr__(self) -> str:
        return f"CellStack(n_cells={self.shape[0]}, outer_size={self.shape[1]})"

    @property
    def nbytes(self) -> int:
        """Memory held by the sums, bytes."""
        return 24 * int(np.prod(self.shape))

    def reset(self, slot: int) -> None:
        """Forget every input of one cell (fallback inputs replaced by good ones)."""
        for a in (self.sum_wx, self.sum_w2v, self.miss_w, self.interp_w, self.or_mask,
                  self.rej_mask):
            a[slot] = 0

    def add(self, image: np.ndarray, variance: np.ndarray, mask: np.ndarray, label: np.ndarray,
            codes: np.ndarray, *, slots, origins_y, origins_x, labels, weights,
            interpolate) -> None:
        """Accumulate (cell, detector) inputs from one warp region.

        Parameters
        ----------
        image, variance, mask, label, codes : numpy.ndarray
            The warp region (BAD pixels already filled by
            :func:`interpolate_runs` where they are to be used).
        slots : array_like of int
            ``(n,)`` cell slot of each input.
        origins_y, origins_x : array_like of int
            ``(n,)`` region coordinates of each cell's outer-box corner.
        labels : array_like of int
            ``(n,)`` detector label of each input.
        weights : array_like of float
            ``(n,)`` weights (normalised, ~1).
        interpolate : array_like of bool
            ``(n,)`` use the interpolated BAD pixels (False: leave them out).
        """
        n = self.shape[1]
        slots = np.asarray(slots, np.int64)
        order = np.argsort(slots, kind="stable")  # keep each cell's inputs in input order
        slots = slots[order]
        oy = np.asarray(origins_y, np.int64)[order]
        ox = np.asarray(origins_x, np.int64)[order]
        if oy.size and (oy.min() < 0 or ox.min() < 0 or oy.max() + n > image.shape[0]
                        or ox.max() + n > image.shape[1]):
            raise ValueError(f"outer cells leave the region of shape {image.shape}")
        group_start = np.flatnonzero(np.r_[True, slots[1:] != slots[:-1], True]) \
            if slots.size else np.zeros(1, np.int64)
        _add(image, variance, mask, label, codes, oy, ox, slots,
             np.asarray(labels, np.int32)[order], np.asarray(weights, np.float64)[order],
             np.asarray(interpolate, np.bool_)[order], group_start.astype(np.int64),
             self.sum_wx, self.sum_w2v, self.miss_w, self.interp_w, self.or_mask,
             self.rej_mask, np.int32(bits("INTRP")), np.int32(bits("REJECTED")))

    def finish(self, slot: int, total_weight: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The stacked planes of one cell (overwrites its accumulators).

        Parameters
        ----------
        slot : int
            The cell.
        total_weight : float
            Sum of the (normalised) weights of the cell's inputs.

        Returns
        -------
        image, variance : numpy.ndarray
            float32 (NaN where no input contributed).
        mask : numpy.ndarray
            int32.
        maskfrac : numpy.ndarray
            float32 fraction of the input weight not contributing an original pixel.
        """
        w_total = np.float32(total_weight)
        image, variance = self.sum_wx[slot], self.sum_w2v[slot]
        mask, rej = self.or_mask[slot], self.rej_mask[slot]
        miss, interp = self.miss_w[slot], self.interp_w[slot]
        sw = w_total - miss
        empty = ~(sw > w_total * np.float32(1e-6))
        with np.errstate(invalid="ignore", divide="ignore"):
            np.divide(image, sw, out=image)
            np.divide(variance, sw * sw, out=variance)
            interp_frac = interp / sw
        image[empty] = np.nan
        variance[empty] = np.nan
        flagged = bits("INTRP", "REJECTED", "CLIPPED")
        mask |= rej & np.int32(flagged)
        for plane, limit in self.thresholds.items():
            b = np.int32(bits(plane))
            mask[((rej & b) != 0) & (interp_frac > limit)] |= b
        mask[empty] |= np.int32(bits("NO_DATA"))
        partial = miss > w_total * np.float32(1e-5)
        inexact = partial | ((mask & np.int32(flagged | bits("NO_DATA"))) != 0)
        mask[inexact] |= np.int32(bits("INEXACT_PSF"))
        np.add(interp, miss, out=interp)
        np.divide(interp, w_total, out=interp)
        np.clip(interp, 0.0, 1.0, out=interp)
        return image, variance, mask, interp
