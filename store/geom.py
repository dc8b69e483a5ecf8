"""Integer pixel boxes, following the LSST conventions.

Integer pixel coordinates are pixel *centres*; the pixel (x, y) covers
[x - 0.5, x + 0.5] x [y - 0.5, y + 0.5].  Arrays are indexed ``[y, x]``.  A
:class:`Box` starts at ``(x0, y0)`` and spans ``width`` x ``height`` pixels, so
its last pixel is ``(x0 + width - 1, y0 + height - 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Box"]


@dataclass(frozen=True, slots=True)
class Box:
    """An integer pixel box (origin and size, in pixels).

    Examples
    --------
    >>> b = Box(10, 20, 100, 50)
    >>> b.x1, b.y1
    (110, 70)
    >>> b.slices_in(Box(0, 0, 200, 200))
    (slice(20, 70, None), slice(10, 110, None))
    """

    x0: int
    y0: int
    width: int
    height: int

    @classmethod
    def from_shape(cls, shape: tuple[int, int], x0: int = 0, y0: int = 0) -> Box:
        """Box of an array of ``shape = (ny, nx)`` whose first pixel is ``(x0, y0)``."""
        return cls(int(x0), int(y0), int(shape[1]), int(shape[0]))

    @classmethod
    def from_minmax(cls, xmin: int, ymin: int, xmax: int, ymax: int) -> Box:
        """Box spanning the inclusive pixel range ``[xmin, xmax] x [ymin, ymax]``."""
        return cls(int(xmin), int(ymin), int(xmax - xmin + 1), int(ymax - ymin + 1))

    @property
    def x1(self) -> int:
        """One past the last column."""
        return self.x0 + self.width

    @property
    def y1(self) -> int:
        """One past the last row."""
        return self.y0 + self.height

    @property
    def shape(self) -> tuple[int, int]:
        """Array shape ``(ny, nx)``."""
        return (self.height, self.width)

    @property
    def area(self) -> int:
        """Number of pixels."""
        return max(self.width, 0) * max(self.height, 0)

    @property
    def is_empty(self) -> bool:
        """True when the box holds no pixel."""
        return self.width <= 0 or self.height <= 0

    @property
    def center(self) -> tuple[float, float]:
        """Centre ``(x, y)`` in pixel coordinates (pixel centres are integers)."""
        return (self.x0 + (self.width - 1) / 2.0, self.y0 + (self.height - 1) / 2.0)

    def corners(self) -> np.ndarray:
        """Outer corners of the box as floats, shape (4, 2).

        Order as afw's ``Box2D.getCorners()``: (xmin, ymin), (xmax, ymin),
        (xmax, ymax), (xmin, ymax), where the box edges lie half a pixel
        outside the first and last pixel centres.
        """
        xa, ya = self.x0 - 0.5, self.y0 - 0.5
        xb, yb = self.x1 - 0.5, self.y1 - 0.5
        return np.array([[xa, ya], [xb, ya], [xb, yb], [xa, yb]], dtype=float)

    def contains(self, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray | bool:
        """Whether positions fall on a pixel of the box (pixel edges at half-integers)."""
        x = np.asarray(x)
        y = np.asarray(y)
        return (
            (x >= self.x0 - 0.5) & (x < self.x1 - 0.5) & (y >= self.y0 - 0.5) & (y < self.y1 - 0.5)
        )

    def contains_box(self, other: Box) -> bool:
        """Whether ``other`` lies entirely inside this box."""
        return (
            other.x0 >= self.x0 and other.y0 >= self.y0 and other.x1 <= self.x1 and other.y1 <= self.y1
        )

    def intersection(self, other: Box) -> Box:
        """The overlap of two boxes (possibly empty, with zero size)."""
        x0, y0 = max(self.x0, other.x0), max(self.y0, other.y0)
        x1, y1 = min(self.x1, other.x1), min(self.y1, other.y1)
        return Box(x0, y0, max(x1 - x0, 0), max(y1 - y0, 0))

    def grow(self, n: int) -> Box:
        """The box grown by ``n`` pixels on every side (shrunk if negative)."""
        return Box(self.x0 - n, self.y0 - n, self.width + 2 * n, self.height + 2 * n)

    def shift(self, dx: int, dy: int) -> Box:
        """The box moved by ``(dx, dy)`` pixels."""
        return Box(self.x0 + dx, self.y0 + dy, self.width, self.height)

    def slices_in(self, parent: Box) -> tuple[slice, slice]:
        """Array slices ``(rows, cols)`` selecting this box inside an array covering ``parent``."""
        if not parent.contains_box(self):
            raise ValueError(f"{self} does not lie inside {parent}")
        return (
            slice(self.y0 - parent.y0, self.y1 - parent.y0),
            slice(self.x0 - parent.x0, self.x1 - parent.x0),
        )

    def to_tuple(self) -> tuple[int, int, int, int]:
        """``(x0, y0, width, height)`` as plain ints, for headers and tables."""
        return (self.x0, self.y0, self.width, self.height)
