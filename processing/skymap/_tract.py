"""Tracts, patches and cells of a sky map, and the pixel geometry they share.

Part of :mod:`processing.skymap` (see its docstring for the conventions).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.wcs import WCS

from store.geom import Box
from store.sphgeom import ConvexPolygon, angular_separation

__all__ = ["CellInfo", "PatchInfo", "RaDecBox", "SkyMapGeometry", "TractInfo"]

_ZENITHAL = ("TAN", "STG", "SIN", "ARC", "ZEA", "AZP", "SZP", "ZPN", "AIR")


@dataclass(frozen=True)
class SkyMapGeometry:
    """Pixel geometry shared by all tracts of a sky map.

    Parameters
    ----------
    pixel_scale : float
        Arcseconds per pixel.
    tract_overlap : float
        Degrees by which neighbouring tracts overlap.
    projection : str
        Zenithal FITS projection code (``"TAN"``, ``"STG"``...).
    rotation : float
        Rotation of the pixel grid from north-up, degrees.
    patch_inner : int
        Patch inner side, pixels (3000).
    patch_border : int
        Patch outer border, pixels (200).
    cell_inner : int
        Cell inner side, pixels (150).
    cell_border : int
        Cell outer border, pixels (50).
    """

    pixel_scale: float = 0.2
    tract_overlap: float = 1.0 / 60.0
    projection: str = "TAN"
    rotation: float = 0.0
    patch_inner: int = 3000
    patch_border: int = 200
    cell_inner: int = 150
    cell_border: int = 50

    def __post_init__(self):
        if not self.pixel_scale > 0:
            raise ValueError(f"pixel_scale must be > 0 arcsec, got {self.pixel_scale}")
        if not self.tract_overlap >= 0:
            raise ValueError(f"tract_overlap must be >= 0 deg, got {self.tract_overlap}")
        if self.projection not in _ZENITHAL:
            raise ValueError(f"projection must be zenithal {_ZENITHAL}, got {self.projection!r}")
        if self.patch_inner <= 0 or self.cell_inner <= 0 or self.patch_inner % self.cell_inner:
            raise ValueError(f"patch_inner ({self.patch_inner}) must be a positive multiple of "
                             f"cell_inner ({self.cell_inner})")
        if (self.cell_border < 0 or self.patch_border < self.cell_border
                or (self.patch_border - self.cell_border) % self.cell_inner):
            raise ValueError(f"patch_border - cell_border ({self.patch_border} - {self.cell_border})"
                             f" must be a non-negative multiple of cell_inner ({self.cell_inner})")

    @property
    def cells_per_patch(self) -> int:
        """Cells along each side of a patch (inner cells plus border cells on both sides)."""
        border_cells = (self.patch_border - self.cell_border) // self.cell_inner
        return self.patch_inner // self.cell_inner + 2 * border_cells

    def make_wcs(self, ra: float, dec: float, crpix: tuple[float, float] = (0.0, 0.0)) -> WCS:
        """WCS centred on (ra, dec) degrees with the reference at 0-based pixel ``crpix``."""
        w = WCS(naxis=2)
        w.wcs.ctype = [f"RA---{self.projection}", f"DEC--{self.projection}"]
        w.wcs.crval = [float(ra), float(dec)]
        w.wcs.crpix = [crpix[0] + 1.0, crpix[1] + 1.0]  # FITS is 1-based
        s = self.pixel_scale / 3600.0
        t = math.radians(self.rotation)
        w.wcs.cd = [[-s * math.cos(t), s * math.sin(t)], [s * math.sin(t), s * math.cos(t)]]
        w.wcs.set()
        return w


@dataclass(frozen=True)
class RaDecBox:
    """A region bounded by two parallels and two meridians (degrees, RA may wrap)."""

    ra_min: float
    ra_max: float
    dec_min: float
    dec_max: float

    @property
    def full_ra(self) -> bool:
        """True for polar caps (every RA)."""
        return self.ra_max - self.ra_min >= 360.0

    def contains(self, ra, dec) -> np.ndarray:
        """Whether points (degrees) lie in the region (boundaries included)."""
        ra = np.asarray(ra, dtype=float)
        dec = np.asarray(dec, dtype=float)
        inside = (dec >= self.dec_min) & (dec <= self.dec_max)
        if self.full_ra:
            return inside
        width = (self.ra_max - self.ra_min) % 360.0
        offset = (ra - self.ra_min) % 360.0
        return inside & ((offset <= width) | np.isclose(offset, 360.0, atol=1e-12))


@dataclass(frozen=True)
class CellInfo:
    """One cell of a patch: inner box (``cell_inner`` square) and outer box (grown by the border)."""

    tract: int
    patch: int
    index: tuple[int, int]
    id: int
    inner_bbox: Box
    outer_bbox: Box


class PatchInfo:
    """One patch of a tract: boxes in tract pixels, sky polygons and its cells.

    Attributes
    ----------
    tract : int
        Tract id.
    index : tuple of int
        ``(x, y)`` position in the tract's patch grid.
    id : int
        Sequential index ``n_x * y + x``.
    inner_bbox, outer_bbox : Box
        Tract-pixel boxes; the outer box is the inner grown by ``patch_border``
        and may extend beyond the tract box.
    wcs : astropy.wcs.WCS
        The tract WCS.
    """

    def __init__(self, tract: TractInfo, index: tuple[int, int]):
        g = tract.geometry
        self.tract = tract.id
        self.index = (int(index[0]), int(index[1]))
        self.id = tract.num_patches[0] * self.index[1] + self.index[0]
        self.inner_bbox = Box(self.index[0] * g.patch_inner, self.index[1] * g.patch_inner,
                              g.patch_inner, g.patch_inner)
        self.outer_bbox = self.inner_bbox.grow(g.patch_border)
        self.wcs = tract.wcs
        self.geometry = g

    def __repr__(self) -> str:
        return f"PatchInfo(tract={self.tract}, index={self.index}, id={self.id})"

    def _polygon(self, box: Box) -> ConvexPolygon:
        corners = box.corners()
        ra, dec = self.wcs.wcs_pix2world(corners[:, 0], corners[:, 1], 0)
        return ConvexPolygon(ra, dec)

    @functools.cached_property
    def inner_polygon(self) -> ConvexPolygon:
        """Sky polygon of the inner box's outer corners (degrees)."""
        return self._polygon(self.inner_bbox)

    @functools.cached_property
    def outer_polygon(self) -> ConvexPolygon:
        """Sky polygon of the outer box's outer corners (degrees)."""
        return self._polygon(self.outer_bbox)

    @property
    def num_cells(self) -> tuple[int, int]:
        """Cells along x and y (22 x 22 by default)."""
        n = self.geometry.cells_per_patch
        return (n, n)

    def cell(self, ix: int, iy: int | None = None) -> CellInfo:
        """Cell ``(ix, iy)``, or the cell with sequential id ``ix`` if ``iy`` is None."""
        nx, ny = self.num_cells
        if iy is None:
            if not 0 <= ix < nx * ny:
                raise IndexError(f"cell id must be in [0, {nx * ny}), got {ix}")
            ix, iy = ix % nx, ix // nx
        if not (0 <= ix < nx and 0 <= iy < ny):
            raise IndexError(f"cell index must be within {nx} x {ny}, got ({ix}, {iy})")
        g = self.geometry
        n_border = (g.patch_border - g.cell_border) // g.cell_inner
        inner = Box(self.inner_bbox.x0 + (ix - n_border) * g.cell_inner,
                    self.inner_bbox.y0 + (iy - n_border) * g.cell_inner, g.cell_inner, g.cell_inner)
        return CellInfo(self.tract, self.id, (ix, iy), nx * iy + ix, inner,
                        inner.grow(g.cell_border))

    def cells(self) -> Iterator[CellInfo]:
        """All cells, in sequential-id order (x fastest)."""
        nx, ny = self.num_cells
        for iy in range(ny):
            for ix in range(nx):
                yield self.cell(ix, iy)

    def dimension_record(self) -> dict[str, Any]:
        """The columns of the registry's ``patch`` dimension row (plus the outer polygon)."""
        o, i = self.outer_bbox, self.inner_bbox
        return {"tract": self.tract, "patch": self.id, "patch_x": self.index[0],
                "patch_y": self.index[1], "x0": o.x0, "y0": o.y0, "width": o.width,
                "height": o.height, "inner_x0": i.x0, "inner_y0": i.y0,
                "inner_width": i.width, "inner_height": i.height,
                "region": self.outer_polygon.to_array().tolist()}


class TractInfo:
    """One tract: centre, WCS, pixel box, patch grid and inner sky region.

    Attributes
    ----------
    id : int
        Tract number.
    ra, dec : float
        Centre, degrees.
    wcs : astropy.wcs.WCS
        Projection centred on the tract, 0-based pixels, bbox starting at (0, 0).
    bbox : Box
        ``Box(0, 0, n_x * patch_inner, n_y * patch_inner)``.
    num_patches : tuple of int
        ``(n_x, n_y)``.
    inner_region : RaDecBox or store.sphgeom.Circle
        The part of the sky this tract owns (see the sky map's ``find_tract``).
    """

    def __init__(self, id: int, ra: float, dec: float, geometry: SkyMapGeometry,
                 crpix: tuple[int, int], num_patches: tuple[int, int], inner_region):
        self.id = int(id)
        self.ra = float(ra)
        self.dec = float(dec)
        self.geometry = geometry
        self.wcs = geometry.make_wcs(ra, dec, (float(crpix[0]), float(crpix[1])))
        self.num_patches = (int(num_patches[0]), int(num_patches[1]))
        self.bbox = Box(0, 0, self.num_patches[0] * geometry.patch_inner,
                        self.num_patches[1] * geometry.patch_inner)
        self.inner_region = inner_region

    def __repr__(self) -> str:
        return (f"TractInfo(id={self.id}, ra={self.ra:.5f}, dec={self.dec:.5f}, "
                f"bbox={self.bbox.width}x{self.bbox.height}, patches={self.num_patches})")

    @functools.cached_property
    def vertices(self) -> np.ndarray:
        """``(4, 2)`` (ra, dec) of the bbox outer corners shrunk by 0.001 px, degrees."""
        c = self.bbox.corners() + np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]]) * 0.001
        ra, dec = self.wcs.wcs_pix2world(c[:, 0], c[:, 1], 0)
        return np.column_stack([ra, dec])

    @property
    def polygon(self) -> ConvexPolygon:
        """Sky polygon of :attr:`vertices`."""
        return ConvexPolygon.from_array(self.vertices)

    def dimension_record(self) -> dict[str, Any]:
        """The columns of the registry's ``tract`` dimension row (plus its polygon)."""
        return {"tract": self.id, "ra": self.ra, "dec": self.dec,
                "region": self.vertices.tolist()}

    def pixel_to_sky(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """(ra, dec) degrees of tract pixel positions."""
        ra, dec = self.wcs.wcs_pix2world(np.asarray(x, float), np.asarray(y, float), 0)
        return np.asarray(ra), np.asarray(dec)

    def sky_to_pixel(self, ra, dec) -> tuple[np.ndarray, np.ndarray]:
        """Tract pixel positions of (ra, dec) degrees; NaN more than 80 deg from the centre."""
        ra = np.asarray(ra, dtype=float)
        dec = np.asarray(dec, dtype=float)
        far = angular_separation(self.ra, self.dec, ra, dec) > 80.0
        x, y = self.wcs.wcs_world2pix(np.where(far, self.ra, ra), np.where(far, self.dec, dec), 0)
        return np.where(far, np.nan, x), np.where(far, np.nan, y)

    def contains(self, ra, dec) -> np.ndarray:
        """Whether sky points fall on a pixel of the tract box."""
        x, y = self.sky_to_pixel(ra, dec)
        return self.bbox.contains(x, y)

    def patch(self, x: int, y: int | None = None) -> PatchInfo:
        """Patch ``(x, y)``, or the patch with sequential id ``x`` if ``y`` is None."""
        nx, ny = self.num_patches
        if y is None:
            if not 0 <= x < nx * ny:
                raise IndexError(f"patch id must be in [0, {nx * ny}), got {x}")
            x, y = x % nx, x // nx
        if not (0 <= x < nx and 0 <= y < ny):
            raise IndexError(f"patch index must be within {nx} x {ny}, got ({x}, {y})")
        return PatchInfo(self, (x, y))

    def patches(self) -> Iterator[PatchInfo]:
        """All patches in sequential-id order."""
        nx, ny = self.num_patches
        for y in range(ny):
            for x in range(nx):
                yield PatchInfo(self, (x, y))

    def find_patch(self, ra, dec) -> np.ndarray:
        """Sequential id of the patch whose inner box holds each point (-1 off the tract)."""
        x, y = self.sky_to_pixel(ra, dec)
        p = self.geometry.patch_inner
        nx, ny = self.num_patches
        with np.errstate(invalid="ignore"):
            ix = np.floor((x + 0.5) / p)
            iy = np.floor((y + 0.5) / p)
            ok = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        return np.where(ok, np.nan_to_num(iy) * nx + np.nan_to_num(ix), -1).astype(np.int64)

    def find_patch_list(self, ra, dec) -> list[PatchInfo]:
        """Patches whose inner box meets the pixel bounding box of the points (lsst ``findPatchList``).

        For a polygon given by its vertices this covers the polygon exactly
        (great circles are straight lines in a TAN projection).
        """
        x, y = self.sky_to_pixel(ra, dec)
        if x.size == 0 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            return []
        p = self.geometry.patch_inner
        nx, ny = self.num_patches
        ix0, ix1 = int(np.floor((x.min() + 0.5) / p)), int(np.floor((x.max() + 0.5) / p))
        iy0, iy1 = int(np.floor((y.min() + 0.5) / p)), int(np.floor((y.max() + 0.5) / p))
        if ix1 < 0 or iy1 < 0 or ix0 >= nx or iy0 >= ny:
            return []
        return [PatchInfo(self, (i, j)) for j in range(max(iy0, 0), min(iy1, ny - 1) + 1)
                for i in range(max(ix0, 0), min(ix1, nx - 1) + 1)]
