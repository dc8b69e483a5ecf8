"""Exactness of the spherical SQL (macros and ADQL geometry) against numpy references.

Shapes are placed at random, at the poles and across RA = 0/360, with constant
parameters (prepared in Python) and with parameters read from table columns
(pure SQL path); both must agree with references written differently: angles
from atan2(|a x b|, a.b), polygons through the gnomonic projection and a planar
point-in-polygon test, arc distances through angle sums.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from matplotlib.path import Path

from store.adql import translate
from store.spherical_sql import PreparedPolygon, install_macros

RNG_SEED = 4242


def unit(ra, dec):
    ra, dec = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def radec(v):
    # arctan2 rather than arcsin: accurate next to the poles.
    ra = np.degrees(np.arctan2(v[..., 1], v[..., 0])) % 360.0
    return ra, np.degrees(np.arctan2(v[..., 2], np.hypot(v[..., 0], v[..., 1])))


def angle(a, b):
    return np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), np.sum(a * b, axis=-1)))


def tangent_frame(ra0, dec0):
    c = unit(ra0, dec0)
    east = np.array([-np.sin(np.radians(ra0)), np.cos(np.radians(ra0)), 0.0])
    return c, east, np.cross(c, east)


def cap_points(ra0, dec0, radius, n, rng):
    c, east, north = tangent_frame(ra0, dec0)
    rho = np.radians(radius) * np.sqrt(rng.uniform(0, 1, n))
    phi = rng.uniform(0, 2 * np.pi, n)
    v = np.cos(rho)[:, None] * c + np.sin(rho)[:, None] * (
        np.cos(phi)[:, None] * east + np.sin(phi)[:, None] * north
    )
    return radec(v)


def random_convex_polygon(ra0, dec0, radius, n, rng, clockwise=False):
    """Vertices on a small circle at sorted random position angles: always convex."""
    c, east, north = tangent_frame(ra0, dec0)
    phi = np.sort(rng.uniform(0, 2 * np.pi, n))
    if np.max(np.diff(np.r_[phi, phi[0] + 2 * np.pi])) > np.pi * 0.9:  # keep the centre inside
        phi = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 1)
    rho = np.radians(radius)
    v = np.cos(rho) * c + np.sin(rho) * (np.cos(phi)[:, None] * east + np.sin(phi)[:, None] * north)
    ra, dec = radec(v)
    return (ra[::-1], dec[::-1]) if clockwise else (ra, dec)


def inside_polygon(ra, dec, pra, pdec):
    v = unit(pra, pdec)
    c = v.sum(axis=0)
    c /= np.linalg.norm(c)
    east = np.cross([0.0, 0.0, 1.0], c)
    east = east / np.linalg.norm(east) if np.linalg.norm(east) > 1e-9 else np.array([1.0, 0.0, 0.0])
    north = np.cross(c, east)
    p = unit(ra, dec)
    z = p @ c
    xy = np.stack([p @ east, p @ north], axis=-1) / np.where(z > 0, z, 1.0)[:, None]
    poly = np.stack([v @ east, v @ north], axis=-1) / (v @ c)[:, None]
    return (z > 0) & Path(poly).contains_points(xy)


def arc_distance(p, a, b):
    """Distance (deg) from unit vectors p (n, 3) to the arc a-b, by angle sums."""
    n = np.cross(a, b)
    n /= np.linalg.norm(n)
    q = p - (p @ n)[:, None] * n
    q /= np.linalg.norm(q, axis=1)[:, None]
    on_arc = np.abs(angle(a, q) + angle(q, b) - angle(a, b)) < 1e-9
    return np.where(on_arc, angle(p, q), np.minimum(angle(p, a), angle(p, b)))


def boundary_distance(ra, dec, pra, pdec):
    p, v = unit(ra, dec), unit(pra, pdec)
    return np.min([arc_distance(p, v[i], v[(i + 1) % len(v)]) for i in range(len(v))], axis=0)


@pytest.fixture(scope="module")
def con():
    rng = np.random.default_rng(RNG_SEED)
    ra = [rng.uniform(0, 360, 4000)]
    dec = [np.degrees(np.arcsin(rng.uniform(-1, 1, 4000)))]
    for ra0, dec0 in [(0.0, 89.5), (180.0, -89.5), (0.0, 0.0), (359.9, -45.0), (123.0, 45.0)]:
        r, d = cap_points(ra0, dec0, 2.0, 1500, rng)
        ra.append(r)
        dec.append(d)
    ra, dec = np.concatenate(ra), np.concatenate(dec)
    connection = duckdb.connect()
    _create(connection, "P", id=np.arange(len(ra)), ra=ra, dec=dec)
    yield connection, ra, dec
    connection.close()


def _create(connection, name, **columns):
    connection.register("frame", pa.table(columns))
    connection.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM frame")
    connection.unregister("frame")


def ids(connection, adql):
    return np.sort(np.array([r[0] for r in connection.sql(translate(adql)).fetchall()], dtype=int))


CIRCLES = [
    (0.0, 90.0, 0.7),  # centred on the pole
    (10.0, 89.5, 1.2),  # containing the pole
    (180.0, -89.5, 0.6),
    (359.9, -45.0, 1.5),  # across RA = 0
    (0.05, 0.0, 0.3),
    (123.0, 45.0, 0.15),
    (200.0, 10.0, 35.0),
    (30.0, -20.0, 120.0),  # more than a hemisphere
]


@pytest.mark.parametrize(("ra0", "dec0", "radius"), CIRCLES)
def test_point_in_circle_matches_reference(con, ra0, dec0, radius):
    connection, ra, dec = con
    got = ids(
        connection,
        "SELECT id FROM P WHERE CONTAINS(POINT('ICRS', ra, dec), "
        f"CIRCLE('ICRS', {ra0}, {dec0}, {radius})) = 1",
    )
    expected = np.flatnonzero(angle(unit(ra, dec), unit(ra0, dec0)) <= radius)
    assert len(expected) > 3
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(("ra0", "dec0"), [(0.0, 90.0), (37.0, -89.99), (359.9999, 0.0), (0.0001, 60.0)])
def test_tiny_circles_are_exact_to_a_microarcsecond(ra0, dec0):
    """Points at (1 -+ 1e-6) of a 1 arcsec radius fall on the right side of the boundary."""
    radius = 1.0 / 3600
    c, east, north = tangent_frame(ra0, dec0)
    phi = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    rows = []
    for scale, expected in ((1 - 1e-6, True), (1 + 1e-6, False)):
        rho = np.radians(radius * scale)
        v = np.cos(rho) * c + np.sin(rho) * (np.cos(phi)[:, None] * east + np.sin(phi)[:, None] * north)
        rows += [(float(r), float(d), expected) for r, d in zip(*radec(v), strict=True)]
    # RA stored in (-180, 180] must work as well as [0, 360).
    rows += [(r - 360.0 if r > 180 else r, d, e) for r, d, e in rows]
    connection = duckdb.connect()
    connection.execute("CREATE TABLE T(ra DOUBLE, dec DOUBLE, expected BOOLEAN)")
    connection.executemany("INSERT INTO T VALUES (?, ?, ?)", rows)
    sql = translate(
        "SELECT ra, dec, expected, CONTAINS(POINT('ICRS', ra, dec), "
        f"CIRCLE('ICRS', {ra0}, {dec0}, {radius!r})) AS inside FROM T"
    )
    result = connection.sql(sql).fetchall()
    assert all(bool(inside) == expected for _, _, expected, inside in result)
    seps = connection.sql(
        translate(f"SELECT DISTANCE(POINT('ICRS', ra, dec), POINT('ICRS', {ra0}, {dec0})) FROM T")
    ).fetchall()
    expected = np.repeat([radius * (1 - 1e-6), radius * (1 + 1e-6)], 64)
    np.testing.assert_allclose([s[0] for s in seps], np.tile(expected, 2), rtol=1e-8)


def _polygons(rng):
    shapes = [
        random_convex_polygon(0.0, 89.0, 2.0, 6, rng),  # contains the north pole
        random_convex_polygon(180.0, -89.5, 1.5, 5, rng, clockwise=True),  # contains the south pole
        random_convex_polygon(359.9, -45.0, 1.0, 4, rng, clockwise=True),  # across RA = 0
        random_convex_polygon(0.0, 0.0, 1.5, 7, rng),
        random_convex_polygon(123.0, 45.0, 0.8, 3, rng),
        random_convex_polygon(250.0, 30.0, 40.0, 8, rng, clockwise=True),  # large
    ]
    return shapes


def test_point_in_polygon_constant_and_column_paths(con):
    connection, ra, dec = con
    polygons = _polygons(np.random.default_rng(RNG_SEED + 1))
    for pra, pdec in polygons:
        coords = ", ".join(f"{float(r)!r}, {float(d)!r}" for r, d in zip(pra, pdec, strict=True))
        got = ids(
            connection,
            f"SELECT id FROM P WHERE CONTAINS(POINT('ICRS', ra, dec), POLYGON('ICRS', {coords})) = 1",
        )
        expected = np.flatnonzero(inside_polygon(ra, dec, pra, pdec))
        assert len(expected) > 3
        np.testing.assert_array_equal(got, expected)
    # Column path: the same polygons as rows of a table (5 vertices each).
    five = [
        random_convex_polygon(r0, d0, rad, 5, np.random.default_rng(i), clockwise=bool(i % 2))
        for i, (r0, d0, rad) in enumerate(
            [
                (0.0, 89.0, 2.0),
                (359.9, -45.0, 1.0),
                (0.0, 0.0, 1.5),
                (123.0, 45.0, 0.8),
                (180.0, -89.5, 1.5),
            ]
        )
    ]
    rows = [(g, *np.ravel(np.column_stack(shape))) for g, shape in enumerate(five)]
    cols = ", ".join(f"ra{i} DOUBLE, dec{i} DOUBLE" for i in range(1, 6))
    connection.execute(f"CREATE OR REPLACE TABLE G(gid INTEGER, {cols})")
    connection.executemany(f"INSERT INTO G VALUES ({', '.join(['?'] * 11)})", rows)
    vertices = ", ".join(f"g.ra{i}, g.dec{i}" for i in range(1, 6))
    pairs = connection.sql(
        translate(
            f"SELECT g.gid, p.id FROM P AS p, G AS g "
            f"WHERE CONTAINS(POINT('ICRS', p.ra, p.dec), POLYGON('ICRS', {vertices})) = 1"
        )
    ).fetchall()
    for g, (pra, pdec) in enumerate(five):
        got = np.sort([i for gid, i in pairs if gid == g])
        np.testing.assert_array_equal(got, np.flatnonzero(inside_polygon(ra, dec, pra, pdec)))


def test_circle_polygon_relations(con):
    connection, _, _ = con
    rng = np.random.default_rng(RNG_SEED + 2)
    pra, pdec = random_convex_polygon(359.8, 30.0, 1.0, 5, rng)
    # Circles scattered around and across the polygon, radii 0.02-4 degrees (log-uniform).
    c_ra, c_dec = cap_points(359.8, 30.0, 2.5, 600, rng)
    radius = np.exp(rng.uniform(np.log(0.02), np.log(4.0), 600))
    _create(connection, "C", id=np.arange(600), ra=c_ra, dec=c_dec, r=radius)
    connection.execute(
        "CREATE OR REPLACE TABLE G1 AS SELECT "
        + ", ".join(
            f"{float(r)!r} AS ra{i + 1}, {float(d)!r} AS dec{i + 1}"
            for i, (r, d) in enumerate(zip(pra, pdec, strict=True))
        )
    )
    inside = inside_polygon(c_ra, c_dec, pra, pdec)
    edge = boundary_distance(c_ra, c_dec, pra, pdec)
    dist = np.where(inside, 0.0, edge)
    v = unit(pra, pdec)
    far = np.max(angle(unit(c_ra, c_dec)[:, None, :], v[None, :, :]), axis=1)
    references = {
        "INTERSECTS({c}, {g})": dist <= radius,
        "INTERSECTS({g}, {c})": dist <= radius,
        "CONTAINS({c}, {g})": inside & (edge >= radius),
        "CONTAINS({g}, {c})": far <= radius,
    }
    const_g = (
        "POLYGON('ICRS', "
        + ", ".join(f"{float(r)!r}, {float(d)!r}" for r, d in zip(pra, pdec, strict=True))
        + ")"
    )
    column_g = "POLYGON('ICRS', " + ", ".join(f"g.ra{i}, g.dec{i}" for i in range(1, 6)) + ")"
    circle = "CIRCLE('ICRS', c.ra, c.dec, c.r)"
    for template, expected in references.items():
        assert 20 < expected.sum() < 580, (template, expected.sum())
        for g in (const_g, column_g):
            relation = template.format(c=circle, g=g)
            got = ids(connection, f"SELECT c.id FROM C AS c, G1 AS g WHERE {relation} = 1 ORDER BY c.id")
            np.testing.assert_array_equal(got, np.flatnonzero(expected), err_msg=f"{relation}")


def test_circle_circle_relations(con):
    connection, _, _ = con
    c_ra, c_dec, r = connection.sql("SELECT ra, dec, r FROM C ORDER BY id").fetchnumpy().values()
    sep = angle(unit(c_ra, c_dec), unit(359.8, 30.0))
    for relation, expected in {
        "INTERSECTS(CIRCLE('ICRS', c.ra, c.dec, c.r), CIRCLE('ICRS', 359.8, 30.0, 0.7))": sep <= r + 0.7,
        "CONTAINS(CIRCLE('ICRS', c.ra, c.dec, c.r), CIRCLE('ICRS', 359.8, 30.0, 2.0))": sep + r <= 2.0,
        "CONTAINS(CIRCLE('ICRS', 359.8, 30.0, 0.3), CIRCLE('ICRS', c.ra, c.dec, c.r))": sep + 0.3 <= r,
    }.items():
        assert 5 < expected.sum() < 595
        np.testing.assert_array_equal(
            ids(connection, f"SELECT c.id FROM C AS c WHERE {relation} = 1 ORDER BY c.id"),
            np.flatnonzero(expected),
        )


def test_polygon_in_large_circle_uses_the_antipodal_cap():
    rng = np.random.default_rng(RNG_SEED + 3)
    pra, pdec = random_convex_polygon(80.0, -10.0, 5.0, 6, rng)
    coords = ", ".join(f"{float(r)!r}, {float(d)!r}" for r, d in zip(pra, pdec, strict=True))
    connection = duckdb.connect()
    # The polygon point farthest from (250, 0) is the one nearest its antipode (70, 0), on an edge.
    far = 180.0 - boundary_distance(np.array([70.0]), np.array([0.0]), pra, pdec)[0]
    assert far > 150.0
    for radius, expected in ((far + 0.001, 1), (far - 0.001, 0)):
        sql = translate(
            f"SELECT CONTAINS(POLYGON('ICRS', {coords}), CIRCLE('ICRS', 250.0, 0.0, {float(radius)!r}))"
        )
        assert connection.sql(sql).fetchall()[0][0] == expected


def test_prepared_polygon_area_and_validation():
    octant = PreparedPolygon([0, 90, 0], [0, 0, 90])
    assert octant.area_deg2() == pytest.approx(4 * np.pi / 8 * np.degrees(1) ** 2, rel=1e-13)
    closed = PreparedPolygon([10, 11, 11, 10, 10], [10, 10, 11, 11, 10])  # closing vertex repeated
    assert len(closed.vertices) == 4
    with pytest.raises(Exception, match="not convex"):
        PreparedPolygon([0, 10, 1, 0], [0, 0, 1, 10])
    with pytest.raises(Exception, match="at least 3 distinct vertices"):
        PreparedPolygon([0, 0, 1], [0, 0, 1])


def test_macros_on_a_connection(con):
    connection, ra, dec = con
    install_macros(connection)
    sep = connection.sql("SELECT drp_ang_sep(ra, dec, 359.9, -45.0) FROM P ORDER BY id").fetchnumpy()
    np.testing.assert_allclose(
        next(iter(sep.values())), angle(unit(ra, dec), unit(359.9, -45.0)), atol=1e-11
    )
    box = connection.sql(
        "SELECT id FROM P WHERE scisql_s2PtInBox(ra, dec, 359.0, -46.0, 0.5, -44.0) = 1 ORDER BY id"
    ).fetchnumpy()["id"]
    wrapped = (ra >= 359.0) | (ra <= 0.5)
    np.testing.assert_array_equal(box, np.flatnonzero(wrapped & (dec >= -46.0) & (dec <= -44.0)))
    mags = connection.sql(
        "SELECT scisql_nanojanskyToAbMag(3631e9), scisql_abMagToNanojansky(31.4),"
        " scisql_nanojanskyToAbMag(-1.0), scisql_nanojanskyToAbMag('nan'::DOUBLE)"
    ).fetchall()[0]
    assert mags[0] == pytest.approx(-2.5 * np.log10(3631e9) + 31.4, abs=1e-12)
    assert mags[1] == pytest.approx(1.0, rel=1e-14)
    assert mags[2] is None and mags[3] is None
