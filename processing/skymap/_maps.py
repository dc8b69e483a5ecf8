"""The sky maps: rings of tracts, explicit tracts, and rebuilding from a config.

Part of :mod:`processing.skymap` (see its docstring for the conventions).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from store.sphgeom import Circle, angular_separation, radec_to_xyz

from ._tract import PatchInfo, RaDecBox, SkyMapGeometry, TractInfo

__all__ = ["DiscreteSkyMap", "RingsSkyMap", "SkyMap", "sky_map_from_config"]


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

    def dimension_record(self, name: str) -> dict[str, Any]:
        """The registry's ``skymap`` dimension row for this sky map saved as ``name``."""
        return {"skymap": name, "config": json.dumps(self.config, sort_keys=True),
                "n_tracts": len(self)}

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
