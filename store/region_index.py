"""In-memory index of one spatial element's regions for repeated spatial queries.

DuckDB scans list columns (the region vertices) in full even when a filter
keeps a handful of rows (measured: 15-20 ms for 300,000 detector regions
whatever the query), so spatial dataset queries load each element's bounding
caps and vertices once, as numpy arrays, and answer from them until the
registry changes (about 1 ms per query afterwards).
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class _SizeGroup:
    """Polygons sharing a vertex count: their rows and ``(m, k, 3)`` vertices."""

    rows: np.ndarray
    vertices: np.ndarray


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
        present = np.asarray(table.column("region_ra").is_valid())
        if table.num_rows:
            present &= np.asarray(pa.compute.list_value_length(
                table.column("region_ra")).fill_null(0)) > 0
        table = table.filter(pa.array(present))
        self.key_columns = [table.column(k).to_numpy(zero_copy_only=False) for k in keys]
        # Separate axes: three multiply-adds beat a BLAS gemv, which on a busy
        # machine spends more on its thread pool than on the 300,000 rows.
        self.centres = [np.ascontiguousarray(table.column(c).to_numpy(zero_copy_only=False),
                                             dtype=float) for c in ("bc_x", "bc_y", "bc_z")]
        radii = np.radians(table.column("bc_radius").to_numpy(zero_copy_only=False))
        self.max_radius = float(radii.max()) if len(radii) else 0.0
        # cos(a + b) expanded, so a query costs one dot product per region, no arccos.
        self.cos_radii, self.sin_radii = np.cos(radii), np.sin(radii)
        self.groups = self._group_vertices(table)
        self.group_of = np.zeros(len(radii), dtype=np.int32)
        self.position = np.zeros(len(radii), dtype=np.int64)
        for g, group in enumerate(self.groups):
            self.group_of[group.rows] = g
            self.position[group.rows] = np.arange(len(group.rows))

    @staticmethod
    def _group_vertices(table: pa.Table) -> list[_SizeGroup]:
        """Vertices grouped by count, unpacked from the list columns without a row loop."""
        if table.num_rows == 0:
            return []
        ra_list = table.column("region_ra").combine_chunks()
        dec_list = table.column("region_dec").combine_chunks()
        sizes = np.asarray(pa.compute.list_value_length(ra_list))
        ra = np.asarray(pa.compute.list_flatten(ra_list))
        dec = np.asarray(pa.compute.list_flatten(dec_list))
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        xyz = radec_to_xyz(ra, dec)
        groups = []
        for k in np.unique(sizes):
            rows = np.flatnonzero(sizes == k)
            take = starts[rows, None] + np.arange(k)[None, :]
            groups.append(_SizeGroup(rows, xyz[take]))
        return groups

    def __len__(self) -> int:
        return len(self.cos_radii)

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
        cap = shape if isinstance(shape, Circle) else shape.bounding_circle()
        centre = radec_to_xyz(cap.ra, cap.dec)
        radius = np.radians(cap.radius)
        x, y, z = self.centres
        cos_sep = x * centre[0] + y * centre[1] + z * centre[2]
        if radius + self.max_radius >= np.pi:
            near = np.ones(len(self), dtype=bool)
        else:
            near = cos_sep >= np.cos(radius) * self.cos_radii - np.sin(radius) * self.sin_radii
        candidates = np.flatnonzero(near)
        keep = []
        if isinstance(shape, Circle) and radius > 0:
            # Caps wholly inside the circle need no exact test: sep + r_i <= R.
            r_i = np.arccos(np.clip(self.cos_radii[candidates], -1, 1))
            inside = (r_i <= radius) & (cos_sep[candidates] >= np.cos(radius - r_i))
            keep.append(candidates[inside])
            candidates = candidates[~inside]
        for g, group in enumerate(self.groups):
            rows = candidates[self.group_of[candidates] == g]
            if not len(rows):
                continue
            vertices = group.vertices[self.position[rows]]
            if isinstance(shape, ConvexPolygon):
                overlap = polygons_overlap_polygon(vertices, shape)
            else:
                overlap = polygons_overlap_circle(vertices, shape)
            keep.append(rows[overlap])
        rows = np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)
        return list(zip(*(col[rows].tolist() for col in self.key_columns), strict=True))
