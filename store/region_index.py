"""In-memory index of one spatial element's regions for repeated spatial queries.

DuckDB scans list columns (the region vertices) in full even when a filter
keeps a handful of rows (measured: 15-20 ms for 300,000 detector regions
whatever the query), so spatial dataset queries load each element's bounding
caps and vertices once, as numpy arrays, and answer from them until the
registry changes.

The regions are kept sorted by the declination of their cap centres, so a
query only tests the band of rows whose caps can reach it (a binary search),
and vertices are turned into unit vectors only for the few regions whose
caps straddle the query's edge.  Building the index copies no Python objects
(key columns stay Arrow arrays), so the first spatial query stays cheap.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from .sphgeom import (
    Circle,
    ConvexPolygon,
    polygons_overlap_circle,
    polygons_overlap_polygon,
    radec_to_xyz,
)

__all__ = ["RegionIndex"]


def _list_parts(column) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, sizes, flat values) of an Arrow list<double> column, without copies."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = np.asarray(array.offsets)  # absolute into .values, slice offset applied
    values = array.values.to_numpy(zero_copy_only=False)
    sizes = np.diff(offsets)
    if array.null_count:
        sizes = np.where(np.asarray(array.is_valid()), sizes, 0)
    return offsets[:-1].astype(np.int64), sizes, np.asarray(values, dtype=float)


class RegionIndex:
    """Bounding caps and vertices of every region of an element.

    Parameters
    ----------
    table : pyarrow.Table
        The element's primary-key columns, ``bc_x, bc_y, bc_z`` (cap centre),
        ``bc_radius`` (degrees) and ``region_ra``/``region_dec`` vertex lists
        (degrees); rows without a region are ignored.
    keys : list of str
        The primary-key column names.
    """

    def __init__(self, table: pa.Table, keys: list[str]):
        self.keys = list(keys)
        starts, sizes, ra = _list_parts(table.column("region_ra"))
        dec_starts, dec_sizes, dec = _list_parts(table.column("region_dec"))
        present = np.flatnonzero((sizes > 0) & (dec_sizes == sizes))
        z = np.asarray(table.column("bc_z").to_numpy(zero_copy_only=False)[present], dtype=float)
        # Sorted by declination zone (a radix sort of small integers: a few ms for
        # 300,000 regions, where sorting the floats themselves costs ten times more).
        zones = self._zone(z)
        order = np.argsort(zones, kind="stable")
        rows = present[order]
        self.rows = rows                       # original table row of each sorted entry
        self.zones = zones[order]
        self.z = z[order]
        # Separate axes: three multiply-adds beat a BLAS gemv, which on a busy
        # machine spends more on its thread pool than on the rows.
        self.x = np.ascontiguousarray(
            table.column("bc_x").to_numpy(zero_copy_only=False)[rows], dtype=float)
        self.y = np.ascontiguousarray(
            table.column("bc_y").to_numpy(zero_copy_only=False)[rows], dtype=float)
        radii = np.radians(np.asarray(
            table.column("bc_radius").to_numpy(zero_copy_only=False)[rows], dtype=float))
        self.radii = radii
        self.max_radius = float(radii.max()) if len(radii) else 0.0
        # cos(a + b) expanded, so a query costs one dot product per region, no arccos.
        self.cos_radii, self.sin_radii = np.cos(radii), np.sin(radii)
        self.starts, self.sizes = starts[rows], sizes[rows]
        self.dec_starts = dec_starts[rows]
        self.ra_values, self.dec_values = ra, dec
        self.key_arrays = [table.column(k).combine_chunks() for k in self.keys]
        self._key_types = [table.schema.field(k).type for k in self.keys]

    def __len__(self) -> int:
        return len(self.rows)

    #: Declination zones of the sort (equal steps in z = sin(dec)).
    N_ZONES = 4096

    @classmethod
    def _zone(cls, z) -> np.ndarray:
        zone = np.floor((np.asarray(z, dtype=float) + 1.0) * (cls.N_ZONES / 2))
        return np.clip(zone, 0, cls.N_ZONES - 1).astype(np.int16)

    def _band(self, centre: np.ndarray, radius: float) -> slice:
        """Sorted entries whose cap centre lies in the declination band a query can reach."""
        dec = np.arcsin(np.clip(centre[2], -1.0, 1.0))
        reach = radius + self.max_radius
        lo = -1.0 if dec - reach <= -np.pi / 2 else np.sin(dec - reach) - 1e-12
        hi = 1.0 if dec + reach >= np.pi / 2 else np.sin(dec + reach) + 1e-12
        return slice(int(np.searchsorted(self.zones, self._zone(lo), side="left")),
                     int(np.searchsorted(self.zones, self._zone(hi), side="right")))

    def _vertices(self, entries: np.ndarray, k: int) -> np.ndarray:
        """``(m, k, 3)`` unit-vector vertices of sorted entries that all have ``k``."""
        step = np.arange(k)
        ra = self.ra_values[self.starts[entries, None] + step]
        dec = self.dec_values[self.dec_starts[entries, None] + step]
        return radec_to_xyz(ra, dec)

    def hit_rows(self, shape: Circle | ConvexPolygon) -> np.ndarray:
        """Table rows (sorted) of the regions overlapping ``shape`` (exact on the sphere)."""
        cap = shape if isinstance(shape, Circle) else shape.bounding_circle()
        centre = radec_to_xyz(cap.ra, cap.dec)
        radius = np.radians(cap.radius)
        if radius + self.max_radius >= np.pi:
            band = slice(0, len(self))
        else:
            band = self._band(centre, radius)
        cos_sep = (self.x[band] * centre[0] + self.y[band] * centre[1]
                   + self.z[band] * centre[2])
        near = cos_sep >= (np.cos(radius) * self.cos_radii[band]
                           - np.sin(radius) * self.sin_radii[band])
        candidates = np.flatnonzero(near)
        cos_sep = cos_sep[candidates]
        candidates += band.start
        keep = []
        if isinstance(shape, Circle) and radius > 0:
            # Caps wholly inside the circle need no exact test: sep + r_i <= R.
            r_i = self.radii[candidates]
            inside = (r_i <= radius) & (cos_sep >= np.cos(radius - r_i))
            keep.append(candidates[inside])
            candidates = candidates[~inside]
        if len(candidates):
            sizes = self.sizes[candidates]
            for k in np.unique(sizes):
                entries = candidates[sizes == k]
                vertices = self._vertices(entries, int(k))
                if isinstance(shape, ConvexPolygon):
                    keep.append(entries[polygons_overlap_polygon(vertices, shape)])
                    continue
                if radius > 0:
                    # A vertex inside the circle settles most edge cases cheaply.
                    corner_in = np.any(vertices @ centre >= np.cos(radius), axis=1)
                    keep.append(entries[corner_in])
                    entries, vertices = entries[~corner_in], vertices[~corner_in]
                if len(entries):
                    keep.append(entries[polygons_overlap_circle(vertices, shape)])
        if not keep:
            return np.zeros(0, dtype=np.int64)
        return np.sort(self.rows[np.concatenate(keep)])

    def hit_table(self, shape: Circle | ConvexPolygon) -> pa.Table:
        """The primary keys of the overlapping regions as an Arrow table (key columns)."""
        rows = pa.array(self.hit_rows(shape), type=pa.int64())
        return pa.table({k: a.take(rows) for k, a in zip(self.keys, self.key_arrays,
                                                          strict=True)})

    def hits(self, shape: Circle | ConvexPolygon) -> list[tuple]:
        """Primary keys of the regions overlapping ``shape`` (exact on the sphere).

        Parameters
        ----------
        shape : Circle or ConvexPolygon
            Query region (a zero-radius circle is a point).

        Returns
        -------
        list of tuple
            One key tuple per overlapping region, in table order.
        """
        table = self.hit_table(shape)
        return list(zip(*(table.column(k).to_pylist() for k in self.keys), strict=True))
