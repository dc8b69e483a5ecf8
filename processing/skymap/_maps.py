"""Sky maps: tracts with their own TAN projection, cut into patches of cells (lsst/skymap).

See ``reference/algorithms.md`` 7 and 4.1.  A sky map tessellates the sphere
into *tracts*; each tract has a WCS (projection centred on the tract, north up,
east left, ``pixel_scale`` arcsec/pixel) whose pixel box starts at (0, 0) and
is a whole number of patches.  Patches are ``patch_inner`` pixels square with an
outer box grown by ``patch_border`` and **not** clipped to the tract (the cell
builder); each patch holds ``(patch_inner // cell_inner + 2 n_b)^2`` cells of
``cell_inner`` pixels (22 x 22 by default), where ``n_b = (patch_border -
cell_border) / cell_inner`` rows of cells lie in the patch border; a cell's
outer box is its inner box grown by ``cell_border``.  The defaults are those of
Rubin's ``lsst_cells_v1``: 120 rings, 0.2 arcsec/pixel, 1 arcmin tract overlap.

* :class:`RingsSkyMap` -- declination rings of tracts plus two polar caps;
  ``find_tract`` uses each tract's RA/Dec "inner region", so every point of the
  sphere belongs to exactly one tract.
* :class:`DiscreteSkyMap` -- tracts at given centres with given radii;
  ``find_tract`` returns the nearest centre.

A tract's pixel box is lsst/skymap's: the four points at distance ``radius +
tract_overlap`` north/east/south/west of the centre, expanded to whole pixels,
then to whole patches (padding split evenly), then shifted to start at (0, 0).
So tract WCSs match Rubin's pixel for pixel.  Safeguard (an addition): near the
poles a ring tract's inner region is a curved wedge whose corners stick out of
that four-point square (by up to ~470 px in the first rings of 120); the
rounding to whole patches absorbs this for the default geometry, but where it
would not, the box is grown to hold the inner region plus the overlap, so every
point always lies inside the pixel box of the tract ``find_tract`` names.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from astropy.wcs import WCS

from store.geom import Box
from store.sphgeom import ConvexPolygon, angular_separation, radec_to_xyz

__all__ = [
    "CellInfo",
    "DiscreteSkyMap",
    "PatchInfo",
    "RaDecBox",
    "RingsSkyMap",
    "SkyMap",
    "SkyMapGeometry",
    "TractInfo",
    "sky_map_from_config",
]

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


class SkyMap:
    """Base of the sky maps: tract access, lookup and (de)serialisation."""

    kind: str = ""

    def __init__(self, geometry: SkyMapGeometry):
        self.geometry = geometry
        self._tracts: dict[int, TractInfo] = {}

    # -- to be provided by subclasses ------------------------------------------------------
    def __len__(self) -> int:
        raise NotImplementedError

    def _build_tract(self, tract_id: int) -> TractInfo:
        raise NotImplementedError

    def _centers(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _circumradius(self) -> np.ndarray:
        raise NotImplementedError

    def find_tract(self, ra, dec) -> np.ndarray:
        """Id of the tract owning each point (degrees; vectorised)."""
        raise NotImplementedError

    @property
    def config(self) -> dict[str, Any]:
        """JSON-serialisable description; :func:`sky_map_from_config` rebuilds the sky map."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------
    def __getitem__(self, tract_id: int) -> TractInfo:
        tract_id = int(tract_id)
        if not 0 <= tract_id < len(self):
            raise IndexError(f"tract id must be in [0, {len(self)}), got {tract_id}")
        tract = self._tracts.get(tract_id)
        if tract is None:
            tract = self._tracts[tract_id] = self._build_tract(tract_id)
        return tract

    def __iter__(self) -> Iterator[TractInfo]:
        for i in range(len(self)):
            yield self[i]

    def __eq__(self, other) -> bool:
        return isinstance(other, SkyMap) and self.config == other.config

    def __hash__(self) -> int:
        return hash(json.dumps(self.config, sort_keys=True))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SkyMap:
        """Rebuild a sky map from :attr:`config`."""
        return sky_map_from_config(config)

    def find_tract_and_patch(self, ra, dec) -> tuple[np.ndarray, np.ndarray]:
        """(tract id, patch id) of each point: the owning tract and its patch (inner box)."""
        ra = np.atleast_1d(np.asarray(ra, dtype=float))
        dec = np.atleast_1d(np.asarray(dec, dtype=float))
        tracts = self.find_tract(ra, dec)
        patches = np.full(tracts.shape, -1, dtype=np.int64)
        for t in np.unique(tracts):
            sel = tracts == t
            patches[sel] = self[int(t)].find_patch(ra[sel], dec[sel])
        return tracts, patches

    def find_tract_patch_list(self, ra, dec) -> list[tuple[TractInfo, list[PatchInfo]]]:
        """Tracts and patches overlapping a set of sky points or a polygon's vertices.

        A tract is a candidate when its centre lies within its circumradius of
        the points' bounding cap; its patches are those whose inner box meets the
        pixel bounding box of the points (so for polygon vertices, the patches
        overlapping the polygon).  Regions wider than 60 deg are refused.

        Parameters
        ----------
        ra, dec : array_like
            Points in degrees.

        Returns
        -------
        list of (TractInfo, list of PatchInfo)
            Only tracts with at least one patch; empty if nothing overlaps.
        """
        ra = np.atleast_1d(np.asarray(ra, dtype=float)).ravel()
        dec = np.atleast_1d(np.asarray(dec, dtype=float)).ravel()
        if ra.size == 0:
            return []
        v = radec_to_xyz(ra, dec)
        c = v.sum(axis=0)
        norm = np.linalg.norm(c)
        if norm < 1e-9:
            raise ValueError("points are spread over the whole sphere; give a region < 60 deg")
        c /= norm
        spread = float(np.degrees(np.max(np.arccos(np.clip(v @ c, -1.0, 1.0)))))
        if spread > 60.0:
            raise ValueError(f"region radius must be < 60 deg, got {spread:.1f}")
        cra, cdec = np.degrees(np.arctan2(c[1], c[0])) % 360.0, np.degrees(np.arcsin(c[2]))
        tra, tdec = self._centers()
        dist = angular_separation(cra, cdec, tra, tdec)
        candidates = np.flatnonzero(dist <= spread + self._circumradius() + 1e-6)
        out = []
        for t in candidates[np.argsort(dist[candidates], kind="stable")]:
            tract = self[int(t)]
            patches = tract.find_patch_list(ra, dec)
            if patches:
                out.append((tract, patches))
        out.sort(key=lambda item: item[0].id)
        return out


def _tract_layout(geometry: SkyMapGeometry, dec: float, radius: float,
                  inner: RaDecBox | None) -> tuple[tuple[int, int], tuple[int, int]]:
    """Patch grid and 0-based CRPIX of a tract centred at declination ``dec`` (degrees).

    The layout depends on the centre's declination only (rotating about the pole
    changes nothing), so tracts of a ring share it.
    """
    r = radius + geometry.tract_overlap
    # Four points at distance r north, east, south and west of the centre.  In a zenithal
    # projection their pixel offsets do not depend on where the centre is, so they are
    # computed at (0, 0), which also avoids the undefined bearings at a pole.
    equator = geometry.make_wcs(0.0, 0.0)
    pts = [_offset(0.0, 0.0, b, r) for b in (0.0, 90.0, 180.0, 270.0)]
    x, y = equator.wcs_world2pix([p[0] for p in pts], [p[1] for p in pts], 0)
    layout = _grid_for(geometry, x.min(), x.max(), y.min(), y.max())
    if inner is None or inner.full_ra:
        return layout
    # The inner region grown by the overlap must fit in the box (lsst/skymap's rounding
    # to whole patches usually guarantees it); if it does not, grow the float box.
    aux = geometry.make_wcs(0.0, dec)
    t = np.linspace(0.0, 1.0, 65)
    half = ((inner.ra_max - inner.ra_min) % 360.0) / 2.0
    ras = np.concatenate([-half + 2 * half * t, -half + 2 * half * t,
                          np.full(t.size, -half), np.full(t.size, half)])
    span = inner.dec_min + (inner.dec_max - inner.dec_min) * t
    decs = np.concatenate([np.full(t.size, inner.dec_min), np.full(t.size, inner.dec_max),
                           span, span])
    bx, by = aux.wcs_world2pix(ras % 360.0, decs, 0)
    grow = geometry.tract_overlap * 3600.0 / geometry.pixel_scale
    bx0, bx1, by0, by1 = bx.min() - grow, bx.max() + grow, by.min() - grow, by.max() + grow
    (nx, ny), (cx, cy) = layout
    p = geometry.patch_inner
    if -cx - 0.5 <= bx0 and bx1 <= nx * p - cx - 0.5 and -cy - 0.5 <= by0 and by1 <= ny * p - cy - 0.5:
        return layout
    return _grid_for(geometry, min(x.min(), bx0), max(x.max(), bx1), min(y.min(), by0),
                     max(y.max(), by1))


def _grid_for(geometry: SkyMapGeometry, xmin: float, xmax: float, ymin: float,
              ymax: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """Whole-patch grid around a float pixel box (relative to the centre), as lsst/skymap."""
    p = geometry.patch_inner
    crpix = []
    counts = []
    for lo, hi in ((xmin, xmax), (ymin, ymax)):
        i0 = math.floor(lo + 0.5)  # pixels touched by the float box
        i1 = math.ceil(hi - 0.5)
        width = i1 - i0 + 1
        n = -(-width // p)
        i0 -= (n * p - width) // 2  # pad evenly to whole patches
        counts.append(int(n))
        crpix.append(int(-i0))
    return (counts[0], counts[1]), (crpix[0], crpix[1])


def _offset(ra: float, dec: float, bearing: float, dist: float) -> tuple[float, float]:
    """Point at angular distance ``dist`` and bearing (from north through east), degrees."""
    ra1, dec1, b, d = map(math.radians, (ra, dec, bearing, dist))
    dec2 = math.asin(math.sin(dec1) * math.cos(d) + math.cos(dec1) * math.sin(d) * math.cos(b))
    ra2 = ra1 + math.atan2(math.sin(b) * math.sin(d) * math.cos(dec1),
                           math.cos(d) - math.sin(dec1) * math.sin(dec2))
    return math.degrees(ra2) % 360.0, math.degrees(dec2)


class RingsSkyMap(SkyMap):
    """Tracts in declination rings plus two polar caps (lsst/skymap ``RingsSkyMap``, version 1).

    Parameters
    ----------
    num_rings : int
        Rings between the caps; ring height ``h = 180 / (num_rings + 1)`` deg.
    ra_start : float
        RA of the first tract of every ring, degrees.
    pixel_scale : float
        Arcseconds per pixel (0.2).
    tract_overlap : float
        Degrees (1/60).
    projection : str
        Zenithal FITS code ("TAN").
    rotation : float
        Degrees (0).
    patch_inner, patch_border, cell_inner, cell_border : int
        Pixels (3000, 200, 150, 50).

    Examples
    --------
    >>> sm = RingsSkyMap(num_rings=120)
    >>> len(sm), int(sm.find_tract(0.0, -90.0)), sm[9000].num_patches
    (18938, 0, (10, 10))
    """

    kind = "rings"

    def __init__(self, num_rings: int = 120, *, ra_start: float = 0.0, pixel_scale: float = 0.2,
                 tract_overlap: float = 1.0 / 60.0, projection: str = "TAN",
                 rotation: float = 0.0, patch_inner: int = 3000, patch_border: int = 200,
                 cell_inner: int = 150, cell_border: int = 50):
        super().__init__(SkyMapGeometry(pixel_scale, tract_overlap, projection, rotation,
                                        patch_inner, patch_border, cell_inner, cell_border))
        if int(num_rings) < 1:
            raise ValueError(f"num_rings must be >= 1, got {num_rings}")
        self.num_rings = int(num_rings)
        self.ra_start = float(ra_start) % 360.0
        self.ring_height = 180.0 / (self.num_rings + 1)  # degrees
        h = math.pi / (self.num_rings + 1)
        sizes = []
        for i in range(self.num_rings):
            lo, hi = h * (i + 0.5) - math.pi / 2, h * (i + 1.5) - math.pi / 2
            d = 0.0 if lo < 0 < hi else min(abs(lo), abs(hi))
            sizes.append(int(2 * math.pi * math.cos(d) / h) + 1)
        self.ring_sizes = np.array(sizes, dtype=np.int64)
        self._ring_offsets = np.concatenate([[0], np.cumsum(self.ring_sizes)[:-1]])
        self._n_tracts = int(self.ring_sizes.sum()) + 2
        self._layouts: dict[int, tuple[tuple[int, int], tuple[int, int]]] = {}

    def __repr__(self) -> str:
        return f"RingsSkyMap(num_rings={self.num_rings}, n_tracts={len(self)}, {self.geometry})"

    def __len__(self) -> int:
        return self._n_tracts

    @property
    def config(self) -> dict[str, Any]:
        return {"type": self.kind, "num_rings": self.num_rings, "ra_start": self.ra_start,
                **asdict(self.geometry)}

    def ring_of(self, tract_id: int) -> tuple[int, int]:
        """(ring, index within ring) of a tract; ring -1 / ``num_rings`` for the caps."""
        if tract_id == 0:
            return -1, 0
        if tract_id == len(self) - 1:
            return self.num_rings, 0
        ring = int(np.searchsorted(self._ring_offsets, tract_id - 1, side="right") - 1)
        return ring, int(tract_id - 1 - self._ring_offsets[ring])

    def _inner_region(self, ring: int, k: int) -> RaDecBox:
        h = self.ring_height
        if ring < 0:
            return RaDecBox(0.0, 360.0, -90.0, -90.0 + 0.5 * h)
        if ring >= self.num_rings:
            return RaDecBox(0.0, 360.0, 90.0 - 0.5 * h, 90.0)
        step = 360.0 / self.ring_sizes[ring]
        ra0 = float((self.ra_start + (k - 0.5) * step) % 360.0)
        ra1 = float((self.ra_start + (k + 0.5) * step) % 360.0)
        return RaDecBox(ra0, ra1, -90.0 + (ring + 0.5) * h, -90.0 + (ring + 1.5) * h)

    def _center(self, ring: int, k: int) -> tuple[float, float]:
        if ring < 0:
            return 0.0, -90.0
        if ring >= self.num_rings:
            return 0.0, 90.0
        ra = float((self.ra_start + 360.0 * k / self.ring_sizes[ring]) % 360.0)
        return ra, -90.0 + self.ring_height * (ring + 1)

    def _ring_layout(self, ring: int):
        layout = self._layouts.get(ring)
        if layout is None:
            _, dec = self._center(ring, 0)
            layout = _tract_layout(self.geometry, dec, self.ring_height / 2.0,
                                   self._inner_region(ring, 0))
            self._layouts[ring] = layout
        return layout

    def _build_tract(self, tract_id: int) -> TractInfo:
        ring, k = self.ring_of(tract_id)
        ra, dec = self._center(ring, k)
        num_patches, crpix = self._ring_layout(ring)
        return TractInfo(tract_id, ra, dec, self.geometry, crpix, num_patches,
                         self._inner_region(ring, k))

    @functools.cached_property
    def _center_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        ra = np.empty(len(self))
        dec = np.empty(len(self))
        ra[0], dec[0] = self._center(-1, 0)
        ra[-1], dec[-1] = self._center(self.num_rings, 0)
        for ring in range(self.num_rings):
            n = self.ring_sizes[ring]
            sl = slice(1 + self._ring_offsets[ring], 1 + self._ring_offsets[ring] + n)
            ra[sl] = (self.ra_start + 360.0 * np.arange(n) / n) % 360.0
            dec[sl] = -90.0 + self.ring_height * (ring + 1)
        return ra, dec

    def _centers(self) -> tuple[np.ndarray, np.ndarray]:
        return self._center_arrays

    @functools.cached_property
    def _circumradius_value(self) -> float:
        # Largest centre-to-corner distance over the ring layouts (caps and ring 0 are the
        # largest boxes; check them all, it is cheap).
        best = 0.0
        for ring in range(-1, self.num_rings + 1):
            tract = self[1 + int(self._ring_offsets[ring]) if 0 <= ring < self.num_rings
                         else (0 if ring < 0 else len(self) - 1)]
            d = angular_separation(tract.ra, tract.dec, tract.vertices[:, 0], tract.vertices[:, 1])
            best = max(best, float(d.max()))
        return best

    def _circumradius(self) -> float:
        return self._circumradius_value

    def find_tract(self, ra, dec) -> np.ndarray:
        """Tract owning each point: the one whose inner RA/Dec region contains it.

        Parameters
        ----------
        ra, dec : array_like
            Degrees, any common shape.

        Returns
        -------
        numpy.ndarray
            int64 tract ids, same shape.
        """
        ra = np.asarray(ra, dtype=float)
        dec = np.asarray(dec, dtype=float)
        h = math.radians(self.ring_height)
        d = np.radians(dec)
        first = h / 2 - math.pi / 2
        ring = np.floor((d - first) / h).astype(np.int64)
        ring = np.clip(ring, 0, self.num_rings - 1)
        n = self.ring_sizes[ring]
        offset = np.radians(ra - self.ra_start) % (2 * math.pi)
        k = np.floor(offset / (2 * math.pi / n) + 0.5).astype(np.int64) % n
        ids = 1 + self._ring_offsets[ring] + k
        ids = np.where(d < first, 0, ids)
        ids = np.where(d > math.pi / 2 - h / 2, len(self) - 1, ids)
        return ids.astype(np.int64)


class DiscreteSkyMap(SkyMap):
    """Tracts at explicit centres (lsst/skymap ``DiscreteSkyMap``).

    Parameters
    ----------
    centers : sequence of (float, float)
        Tract centres (ra, dec), degrees.
    radii : sequence of float
        Tract radii, degrees (the tract box covers ``radius + tract_overlap``).
    **geometry
        ``pixel_scale``, ``tract_overlap``, ``projection``, ``rotation``,
        ``patch_inner``, ``patch_border``, ``cell_inner``, ``cell_border`` as in
        :class:`RingsSkyMap`.

    ``find_tract`` returns the tract with the nearest centre; a tract's
    ``inner_region`` is its cap of radius ``radius``.
    """

    kind = "discrete"

    def __init__(self, centers: Sequence[Sequence[float]], radii: Sequence[float], **geometry):
        super().__init__(SkyMapGeometry(**geometry))
        centers = np.asarray(centers, dtype=float).reshape(-1, 2)
        radii = np.asarray(radii, dtype=float).reshape(-1)
        if centers.shape[0] != radii.size or radii.size == 0:
            raise ValueError(f"need one radius per centre (and >= 1), got {centers.shape[0]} "
                             f"centres and {radii.size} radii")
        if np.any(~(radii > 0)) or np.any(radii >= 45):
            raise ValueError(f"radii must be in (0, 45) deg, got {radii.tolist()}")
        self.centers = centers
        self.radii = radii

    def __repr__(self) -> str:
        return f"DiscreteSkyMap(n_tracts={len(self)}, {self.geometry})"

    def __len__(self) -> int:
        return self.radii.size

    @property
    def config(self) -> dict[str, Any]:
        return {"type": self.kind, "centers": self.centers.tolist(), "radii": self.radii.tolist(),
                **asdict(self.geometry)}

    def _build_tract(self, tract_id: int) -> TractInfo:
        from store.sphgeom import Circle

        ra, dec = self.centers[tract_id]
        num_patches, crpix = _tract_layout(self.geometry, dec, self.radii[tract_id], None)
        return TractInfo(tract_id, ra, dec, self.geometry, crpix, num_patches,
                         Circle(float(ra), float(dec), float(self.radii[tract_id])))

    def _centers(self) -> tuple[np.ndarray, np.ndarray]:
        return self.centers[:, 0], self.centers[:, 1]

    def _circumradius(self) -> np.ndarray:
        return np.array([float(angular_separation(t.ra, t.dec, t.vertices[:, 0],
                                                  t.vertices[:, 1]).max()) for t in self])

    def find_tract(self, ra, dec) -> np.ndarray:
        """Tract with the nearest centre for each point (degrees; any shape)."""
        ra = np.asarray(ra, dtype=float)
        dec = np.asarray(dec, dtype=float)
        p = radec_to_xyz(ra, dec)
        c = radec_to_xyz(self.centers[:, 0], self.centers[:, 1])
        return np.argmax(p @ c.T, axis=-1).astype(np.int64)


def sky_map_from_config(config: dict[str, Any] | str) -> SkyMap:
    """Rebuild a sky map from its :attr:`SkyMap.config` (a dict or its JSON text)."""
    if isinstance(config, str):
        config = json.loads(config)
    config = dict(config)
    kind = config.pop("type", None)
    if kind == RingsSkyMap.kind:
        return RingsSkyMap(**config)
    if kind == DiscreteSkyMap.kind:
        return DiscreteSkyMap(**config)
    raise ValueError(f"unknown sky map type {kind!r}; expected 'rings' or 'discrete'")
