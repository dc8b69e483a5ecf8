"""Spherical geometry on unit vectors: points, circles and convex polygons.

Exact on the sphere (no planar approximation), so regions near the poles or
straddling RA = 0/360 behave.  Used for dimension regions (visits, detectors,
patches) and spatial dataset queries; the SQL side has matching DuckDB macros.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Circle",
    "ConvexPolygon",
    "angular_separation",
    "polygons_overlap_circle",
    "polygons_overlap_polygon",
    "radec_to_xyz",
    "xyz_to_radec",
]


def radec_to_xyz(ra, dec) -> np.ndarray:
    """Unit vectors of positions in degrees; shape ``S + (3,)``."""
    ra = np.radians(np.asarray(ra, dtype=float))
    dec = np.radians(np.asarray(dec, dtype=float))
    cd = np.cos(dec)
    return np.stack([cd * np.cos(ra), cd * np.sin(ra), np.sin(dec)], axis=-1)


def xyz_to_radec(xyz) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) in degrees of (not necessarily unit) vectors; ra in [0, 360)."""
    xyz = np.asarray(xyz, dtype=float)
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    ra = np.degrees(np.arctan2(y, x)) % 360.0
    ra = np.where(ra >= 360.0, 0.0, ra)  # -0.0 % 360 rounds up to 360
    dec = np.degrees(np.arctan2(z, np.hypot(x, y)))
    return ra, dec


def angular_separation(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Great-circle distance in degrees (atan2 form: accurate at all separations)."""
    a = radec_to_xyz(ra1, dec1)
    b = radec_to_xyz(ra2, dec2)
    cross = np.linalg.norm(np.cross(a, b), axis=-1)
    dot = np.sum(a * b, axis=-1)
    return np.degrees(np.arctan2(cross, dot))


@dataclass(frozen=True)
class Circle:
    """A spherical cap: centre (ra, dec) and radius, all in degrees."""

    ra: float
    dec: float
    radius: float

    def __post_init__(self):
        if not (self.radius >= 0):
            raise ValueError(f"circle radius must be >= 0 degrees, got {self.radius}")
        if not -90.0 <= self.dec <= 90.0:
            raise ValueError(f"circle dec must be within [-90, 90] degrees, got {self.dec}")

    def contains(self, ra, dec) -> np.ndarray:
        """Whether points (degrees) lie inside the cap (boundary included)."""
        return angular_separation(self.ra, self.dec, ra, dec) <= self.radius


class ConvexPolygon:
    """A spherical convex polygon with great-circle edges.

    Parameters
    ----------
    ra, dec : array-like
        Vertices in degrees, in either winding order (the constructor orients
        them counter-clockwise seen from outside the sphere).

    Examples
    --------
    >>> poly = ConvexPolygon([359.9, 0.1, 0.1, 359.9], [-0.1, -0.1, 0.1, 0.1])
    >>> bool(poly.contains(0.0, 0.0)), bool(poly.contains(1.0, 0.0))
    (True, False)
    """

    def __init__(self, ra, dec):
        ra = np.asarray(ra, dtype=float).ravel()
        dec = np.asarray(dec, dtype=float).ravel()
        if ra.size < 3 or ra.size != dec.size:
            raise ValueError(f"a polygon needs >= 3 vertices with ra and dec each, got {ra.size}")
        if not (np.all(np.isfinite(ra)) and np.all(np.isfinite(dec))):
            raise ValueError("polygon vertices must be finite")
        v = radec_to_xyz(ra, dec)
        centroid = v.sum(axis=0)
        # Counter-clockwise around the outward centroid direction means the edge
        # normals v_i x v_{i+1} point towards the interior.
        normals = np.cross(v, np.roll(v, -1, axis=0))
        if np.sum(normals @ centroid) < 0:
            v = v[::-1]
            ra, dec = ra[::-1], dec[::-1]
            normals = np.cross(v, np.roll(v, -1, axis=0))
        self.vertices = v
        self.ra = ra
        self.dec = dec
        self.normals = normals / np.linalg.norm(normals, axis=1, keepdims=True)

    @classmethod
    def from_array(cls, radec) -> ConvexPolygon:
        """Build from an ``(N, 2)`` array of (ra, dec) in degrees."""
        radec = np.asarray(radec, dtype=float)
        return cls(radec[:, 0], radec[:, 1])

    def __repr__(self) -> str:
        pts = ", ".join(f"({r:.5f}, {d:.5f})" for r, d in zip(self.ra, self.dec, strict=True))
        return f"ConvexPolygon([{pts}])"

    def to_array(self) -> np.ndarray:
        """``(N, 2)`` array of (ra, dec) vertices in degrees."""
        return np.column_stack([self.ra, self.dec])

    def contains(self, ra, dec) -> np.ndarray:
        """Whether points (degrees) lie inside or on the polygon."""
        p = radec_to_xyz(ra, dec)
        return np.all(p @ self.normals.T >= -1e-15, axis=-1)

    def bounding_circle(self) -> Circle:
        """A cap containing the polygon (centred on the normalised vertex mean)."""
        c = self.vertices.sum(axis=0)
        c /= np.linalg.norm(c)
        ra, dec = xyz_to_radec(c)
        radius = np.degrees(np.max(np.arccos(np.clip(self.vertices @ c, -1.0, 1.0))))
        return Circle(float(ra), float(dec), float(radius) * (1 + 1e-9) + 1e-12)

    def _edge_distance(self, point: np.ndarray) -> float:
        """Smallest angle (radians) from a unit vector to the polygon's edges."""
        best = np.pi
        v = self.vertices
        w = np.roll(v, -1, axis=0)
        for a, b, n in zip(v, w, self.normals, strict=True):
            # Project onto the edge's great circle; inside the arc if between a and b.
            proj = point - (point @ n) * n
            norm = np.linalg.norm(proj)
            if norm > 0:
                proj /= norm
                if np.cross(a, proj) @ n >= 0 and np.cross(proj, b) @ n >= 0:
                    best = min(best, abs(np.arcsin(np.clip(point @ n, -1, 1))))
                    continue
            best = min(best, np.arccos(np.clip(point @ a, -1, 1)),
                       np.arccos(np.clip(point @ b, -1, 1)))
        return best

    def overlaps_circle(self, circle: Circle) -> bool:
        """Exact test: does the polygon intersect the cap?"""
        if bool(self.contains(circle.ra, circle.dec)):
            return True
        centre = radec_to_xyz(circle.ra, circle.dec)
        return self._edge_distance(centre) <= np.radians(circle.radius)

    def overlaps(self, other: ConvexPolygon) -> bool:
        """Exact test: do two convex polygons intersect (containment included)?

        Two convex spherical polygons are disjoint iff a great circle through one
        of their edges separates them; otherwise they overlap.
        """
        for a, b in ((self, other), (other, self)):
            side = b.vertices @ a.normals.T  # (n_b, n_a)
            if np.any(np.all(side < -1e-15, axis=0)):
                return False
        return True


def _oriented_stack(vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counter-clockwise vertices and unit inward edge normals of ``(m, k, 3)`` polygons."""
    v = np.asarray(vertices, dtype=float)
    normals = np.cross(v, np.roll(v, -1, axis=1))
    flip = np.einsum("mkj,mj->m", normals, v.sum(axis=1)) < 0
    if np.any(flip):
        v = v.copy()
        v[flip] = v[flip, ::-1]
        normals = np.cross(v, np.roll(v, -1, axis=1))
    normals /= np.linalg.norm(normals, axis=2, keepdims=True)
    return v, normals


def polygons_overlap_circle(vertices: np.ndarray, circle: Circle) -> np.ndarray:
    """Exact overlap test of many convex polygons with one cap, vectorised.

    Parameters
    ----------
    vertices : numpy.ndarray
        ``(m, k, 3)`` unit-vector vertices of ``m`` polygons with ``k`` vertices
        each (either winding).
    circle : Circle
        The cap (degrees).

    Returns
    -------
    numpy.ndarray
        ``(m,)`` booleans, as :meth:`ConvexPolygon.overlaps_circle` for each polygon.
    """
    v, n = _oriented_stack(vertices)
    w = np.roll(v, -1, axis=1)
    p = radec_to_xyz(circle.ra, circle.dec)
    s = n @ p                                                        # (m, k)
    inside = np.all(s >= -1e-15, axis=1)
    # Distance to each edge arc: to its great circle when the foot of the
    # perpendicular falls between the end points, else to the nearer end point.
    foot = p - s[..., None] * n
    norm = np.linalg.norm(foot, axis=2, keepdims=True)
    foot = np.divide(foot, norm, out=np.zeros_like(foot), where=norm > 0)
    in_arc = ((norm[..., 0] > 0)
              & (np.einsum("mkj,mkj->mk", np.cross(v, foot), n) >= 0)
              & (np.einsum("mkj,mkj->mk", np.cross(foot, w), n) >= 0))
    to_ends = np.minimum(np.arccos(np.clip(v @ p, -1, 1)), np.arccos(np.clip(w @ p, -1, 1)))
    dist = np.where(in_arc, np.abs(np.arcsin(np.clip(s, -1, 1))), to_ends).min(axis=1)
    return inside | (dist <= np.radians(circle.radius))


def polygons_overlap_polygon(vertices: np.ndarray, polygon: ConvexPolygon) -> np.ndarray:
    """Exact overlap test of many convex polygons with one, vectorised.

    Parameters
    ----------
    vertices : numpy.ndarray
        ``(m, k, 3)`` unit-vector vertices of ``m`` polygons (either winding).
    polygon : ConvexPolygon
        The other polygon.

    Returns
    -------
    numpy.ndarray
        ``(m,)`` booleans, as :meth:`ConvexPolygon.overlaps` for each polygon.
    """
    v, n = _oriented_stack(vertices)
    # Separated iff all of one polygon's vertices lie outside an edge of the other.
    by_query_edge = np.einsum("mkj,qj->mqk", v, polygon.normals) < -1e-15
    by_own_edge = np.einsum("mkj,qj->mkq", n, polygon.vertices) < -1e-15
    separated = np.any(np.all(by_query_edge, axis=2), axis=1) | np.any(
        np.all(by_own_edge, axis=2), axis=1)
    return ~separated
