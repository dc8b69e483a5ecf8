"""The vectorised spatial index agrees with the one-polygon-at-a-time exact tests."""

import numpy as np
import pyarrow as pa
import pytest

from store import Circle, ConvexPolygon
from store.region_index import RegionIndex
from store.registry import region_columns
from store.sphgeom import polygons_overlap_circle, polygons_overlap_polygon, radec_to_xyz


def _random_polygons(rng, n):
    """Quadrilaterals and pentagons of 0.05-3 degrees anywhere (poles and RA=0 included)."""
    out = []
    for _ in range(n):
        k = int(rng.choice([4, 5]))
        ra0 = rng.uniform(0, 360)
        dec0 = float(np.clip(rng.normal(0, 50), -89, 89))
        size = rng.uniform(0.05, 3.0)
        angles = np.sort(rng.uniform(0, 2 * np.pi, k)) if k == 5 else (
            np.arange(4) * np.pi / 2 + rng.uniform(0, np.pi / 2))
        # Offsets on the tangent plane, mapped to the sphere: stays convex.
        ex = np.array([-np.sin(np.radians(ra0)), np.cos(np.radians(ra0)), 0.0])
        c = radec_to_xyz(ra0, dec0)
        ey = np.cross(c, ex)
        pts = (c[None, :] + np.radians(size) * (np.cos(angles)[:, None] * ex
                                                 + np.sin(angles)[:, None] * ey))
        pts /= np.linalg.norm(pts, axis=1, keepdims=True)
        ra = np.degrees(np.arctan2(pts[:, 1], pts[:, 0])) % 360
        dec = np.degrees(np.arcsin(pts[:, 2]))
        out.append(np.column_stack([ra, dec]))
    return out


@pytest.fixture(scope="module")
def index_and_polygons():
    rng = np.random.default_rng(7)
    polygons = _random_polygons(rng, 800)
    regions = [*polygons, None]  # a record without a region is never a hit
    cols = region_columns(regions, order=None)
    table = pa.table({"visit": np.arange(len(regions)), "detector": np.arange(len(regions)) % 9,
                      **{k: cols[k] for k in ("bc_x", "bc_y", "bc_z", "bc_radius",
                                              "region_ra", "region_dec")}})
    return RegionIndex(table, ["visit", "detector"]), polygons


def test_circles_match_exact_per_polygon_tests(index_and_polygons):
    index, polygons = index_and_polygons
    objects = [ConvexPolygon.from_array(p) for p in polygons]
    rng = np.random.default_rng(11)
    queries = [Circle(float(rng.uniform(0, 360)), float(rng.uniform(-90, 90)),
                      float(rng.choice([0.0, 0.3, 2.0, 15.0]))) for _ in range(25)]
    queries += [Circle(0.0, 90.0, 5.0), Circle(359.99, 0.0, 1.0), Circle(10.0, -20.0, 120.0)]
    total = 0
    for q in queries:
        expected = {(i, i % 9) for i, p in enumerate(objects)
                    if (bool(p.contains(q.ra, q.dec)) if q.radius == 0 else p.overlaps_circle(q))}
        got = set(index.hits(q))
        assert got == expected, q
        total += len(got)
    assert total > 100  # the queries do find regions


def test_polygons_match_exact_per_polygon_tests(index_and_polygons):
    index, polygons = index_and_polygons
    objects = [ConvexPolygon.from_array(p) for p in polygons]
    rng = np.random.default_rng(12)
    queries = [ConvexPolygon.from_array(p) for p in _random_polygons(rng, 15)]
    total = 0
    for q in queries:
        expected = {(i, i % 9) for i, p in enumerate(objects) if p.overlaps(q)}
        got = set(index.hits(q))
        assert got == expected
        total += len(got)
    assert total > 0


def test_vectorised_tests_match_scalar_ones():
    rng = np.random.default_rng(3)
    polys = _random_polygons(rng, 200)
    quads = [p for p in polys if len(p) == 4]
    xyz = radec_to_xyz(np.array([q[:, 0] for q in quads]), np.array([q[:, 1] for q in quads]))
    circle = Circle(float(quads[0][0, 0]), float(quads[0][0, 1]), 40.0)
    other = ConvexPolygon.from_array(quads[1])
    scalar_c = [ConvexPolygon.from_array(q).overlaps_circle(circle) for q in quads]
    scalar_p = [ConvexPolygon.from_array(q).overlaps(other) for q in quads]
    assert polygons_overlap_circle(xyz, circle).tolist() == scalar_c
    assert polygons_overlap_polygon(xyz, other).tolist() == scalar_p
    assert any(scalar_c) and not all(scalar_c)
