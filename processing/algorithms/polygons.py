"""Pixel polygons: which pixel centres of a box lie inside a polygon (scan-line fill).

Used to draw where each detector lands on a warp (the detector map of cell
coadds, ``reference/algorithms.md`` 4.4 step 4): a detector's valid region is
a rectangle in its own pixels, its outline mapped through the WCS pair is a
polygon in tract pixels, and the pixels whose centres fall inside belong to it.

The even-odd rule is applied row by row at the pixel centres (LSST
convention: pixel ``(i, j)`` is centred on ``(i, j)``), so a pixel whose centre
is on the left or bottom edge is inside and one on the right or top edge is
not; a polygon tiled by two others is therefore split without overlap.
"""

from __future__ import annotations

import numpy as np

from store.geom import Box

__all__ = ["box_outline", "fill_spans", "polygon_mask", "polygon_spans"]


def box_outline(x0: float, y0: float, x1: float, y1: float, n_per_side: int = 16
                ) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the rectangle ``[x0, x1] x [y0, y1]``, ``n_per_side`` segments a side.

    Parameters
    ----------
    x0, y0, x1, y1 : float
        Corners, pixels.
    n_per_side : int
        Segments per side (so a mapped outline follows a distortion).

    Returns
    -------
    x, y : numpy.ndarray
        ``(4 n_per_side,)`` vertices, counter-clockwise from ``(x0, y0)``.
    """
    t = np.arange(n_per_side) / n_per_side
    x = np.concatenate([x0 + t * (x1 - x0), np.full(n_per_side, x1), x1 - t * (x1 - x0),
                        np.full(n_per_side, x0)])
    y = np.concatenate([np.full(n_per_side, y0), y0 + t * (y1 - y0), np.full(n_per_side, y1),
                        y1 - t * (y1 - y0)])
    return x, y


def polygon_spans(x: np.ndarray, y: np.ndarray, box: Box
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of pixels of ``box`` whose centres lie inside the polygon ``(x, y)``.

    Parameters
    ----------
    x, y : numpy.ndarray
        ``(n,)`` vertices in the box's pixel coordinates (any orientation,
        closed implicitly; NaN vertices give no span).
    box : Box
        The pixel box.

    Returns
    -------
    rows, starts, stops : numpy.ndarray
        ``(m,)`` int arrays: pixels ``starts[k] <= i < stops[k]`` of row
        ``rows[k]`` are inside, as indices into ``box`` (row ``rows[k]`` of
        the array is pixel row ``box.y0 + rows[k]``).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    empty = np.empty(0, np.intp)
    if x.size < 3 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))) or box.is_empty:
        return empty, empty, empty
    rows = np.arange(max(box.y0, int(np.floor(y.min()))), min(box.y1, int(np.ceil(y.max())) + 1))
    if rows.size == 0:
        return empty, empty, empty
    xa, ya = x, y
    xb, yb = np.roll(x, -1), np.roll(y, -1)
    yc = rows[:, None].astype(float)
    crosses = ((ya <= yc) & (yc < yb)) | ((yb <= yc) & (yc < ya))
    with np.errstate(invalid="ignore", divide="ignore"):
        xc = np.where(crosses, xa + (yc - ya) * (xb - xa) / (yb - ya), np.inf)
    xc.sort(axis=1)
    n_cross = crosses.sum(axis=1)
    out_r, out_a, out_b = [], [], []
    for k in range(0, int(n_cross.max(initial=0)), 2):
        r = np.flatnonzero(n_cross > k + 1)
        start = np.clip(np.ceil(xc[r, k] - box.x0), 0, box.width).astype(np.intp)
        stop = np.clip(np.ceil(xc[r, k + 1] - box.x0), 0, box.width).astype(np.intp)
        keep = stop > start
        out_r.append(rows[r[keep]] - box.y0)
        out_a.append(start[keep])
        out_b.append(stop[keep])
    if not out_r:
        return empty, empty, empty
    return (np.concatenate(out_r).astype(np.intp), np.concatenate(out_a),
            np.concatenate(out_b))


def polygon_mask(x: np.ndarray, y: np.ndarray, box: Box) -> np.ndarray:
    """Pixels of ``box`` whose centres lie inside the polygon ``(x, y)``.

    Parameters
    ----------
    x, y : numpy.ndarray
        ``(n,)`` vertices in the box's pixel coordinates.
    box : Box
        The pixel box.

    Returns
    -------
    numpy.ndarray
        ``box.shape`` boolean array.

    Examples
    --------
    >>> m = polygon_mask(np.array([0.5, 2.5, 2.5, 0.5]), np.array([-0.5, -0.5, 1.5, 1.5]),
    ...                  Box(0, 0, 4, 2))
    >>> m.astype(int).tolist()
    [[0, 1, 1, 0], [0, 1, 1, 0]]
    """
    out = np.zeros(box.shape, dtype=bool)
    fill_spans(out, *polygon_spans(x, y, box), True)
    return out


def fill_spans(array: np.ndarray, rows: np.ndarray, starts: np.ndarray, stops: np.ndarray,
               value) -> None:
    """Set ``array[rows[k], starts[k]:stops[k]] = value`` for every span, in place."""
    for r, a, b in zip(rows.tolist(), starts.tolist(), stops.tolist(), strict=True):
        array[r, a:b] = value
