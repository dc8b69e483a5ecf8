"""ADQL translation: Rubin-tutorial-style queries against a synthetic DuckDB, checked by brute force.

Every query runs through ``prepare_sql`` (auto-detection) on an in-memory DuckDB
holding Visit / CcdVisit / Source / Object tables with the Rubin column names,
and its answer is compared with a numpy computation that uses different
formulas: separations from cross/dot products of unit vectors, polygons by the
gnomonic projection (great circles -> straight lines) and matplotlib's planar
point-in-polygon test.
"""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pytest
from matplotlib.path import Path

from store.adql import looks_like_adql, prepare_sql, translate
from store.errors import InvalidQueryError, UnsupportedConstructError
from store.spherical_sql import install_macros

BANDS = np.array(["u", "g", "r", "i", "z", "y"])
# Fields the synthetic sources cluster around: an ordinary field, RA = 0/360,
# next to the north pole, next to the south pole.
FIELDS = [(62.0, -37.0), (359.9, 2.0), (10.0, 89.8), (200.0, -89.7)]


def _unit(ra, dec):
    ra, dec = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def _sep_deg(ra1, dec1, ra2, dec2):
    a, b = _unit(ra1, dec1), _unit(ra2, dec2)
    a, b = np.broadcast_arrays(a, b)
    return np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), np.sum(a * b, axis=-1)))


def _offset(ra0, dec0, radius_deg, n, rng):
    """Points uniform in a cap of the given radius around (ra0, dec0)."""
    rho = np.radians(radius_deg) * np.sqrt(rng.uniform(0, 1, n))
    phi = rng.uniform(0, 2 * np.pi, n)
    c = _unit(ra0, dec0)
    east = np.array([-np.sin(np.radians(ra0)), np.cos(np.radians(ra0)), 0.0])
    north = np.cross(c, east)
    v = np.cos(rho)[:, None] * c + np.sin(rho)[:, None] * (
        np.cos(phi)[:, None] * east + np.sin(phi)[:, None] * north
    )
    return np.degrees(np.arctan2(v[:, 1], v[:, 0])) % 360.0, np.degrees(np.arcsin(v[:, 2]))


def _gnomonic_inside(ra, dec, verts):
    """Brute-force point-in-spherical-polygon: gnomonic projection + planar test."""
    v = _unit(np.array([p[0] for p in verts]), np.array([p[1] for p in verts]))
    c = v.sum(axis=0)
    c /= np.linalg.norm(c)
    east = np.cross([0.0, 0.0, 1.0], c)
    east = east / np.linalg.norm(east) if np.linalg.norm(east) > 1e-9 else np.array([1.0, 0.0, 0.0])
    north = np.cross(c, east)

    def project(p):
        z = p @ c
        return np.stack([(p @ east) / z, (p @ north) / z], axis=-1), z

    poly_xy, _ = project(v)
    xy, z = project(_unit(ra, dec))
    return (z > 0) & Path(poly_xy).contains_points(np.where(z[:, None] > 0, xy, 0.0))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(20250612)
    n_visit = 120
    field = rng.integers(0, len(FIELDS), n_visit)
    v_ra = np.array([FIELDS[f][0] for f in field])
    v_dec = np.array([FIELDS[f][1] for f in field])
    v_ra, v_dec = _offset_each(v_ra, v_dec, 1.0, rng)
    visit = pl.DataFrame(
        {
            "visit": np.arange(2024110800001, 2024110800001 + n_visit),
            "band": BANDS[rng.integers(0, 6, n_visit)],
            "ra": v_ra,
            "dec": v_dec,
            "expTime": np.full(n_visit, 30.0),
            "airmass": rng.uniform(1.0, 2.0, n_visit),
            "expMidptMJD": 60600.0 + np.sort(rng.uniform(0, 60, n_visit)),
        }
    ).with_columns(physical_filter=pl.col("band") + "_03")

    detectors = np.arange(9)
    ccd = (
        visit.select("visit", "band", "ra", "dec", "expMidptMJD")
        .join(pl.DataFrame({"detector": detectors}), how="cross")
        .rename({"visit": "visitId"})
    )
    n_ccd = ccd.height
    # Detector centres on a 3x3 grid of 0.2 degree around the visit centre;
    # corners 0.1 degree from the detector centre, in lower-left, upper-left,
    # upper-right, lower-right order.
    dx = (ccd["detector"].to_numpy() % 3 - 1) * 0.2
    dy = (ccd["detector"].to_numpy() // 3 - 1) * 0.2
    c_ra, c_dec = _tangent_to_sky(ccd["ra"].to_numpy(), ccd["dec"].to_numpy(), dx, dy)
    corners = {}
    for name, (sx, sy) in {"llc": (-1, -1), "ulc": (-1, 1), "urc": (1, 1), "lrc": (1, -1)}.items():
        corners[f"{name}ra"], corners[f"{name}dec"] = _tangent_to_sky(
            ccd["ra"].to_numpy(), ccd["dec"].to_numpy(), dx + 0.1 * sx, dy + 0.1 * sy
        )
    ccd = ccd.with_columns(
        ccdVisitId=pl.col("visitId") * 1000 + pl.col("detector"),
        ra=pl.Series(c_ra),
        dec=pl.Series(c_dec),
        seeing=pl.Series(rng.uniform(0.6, 1.4, n_ccd)),
        zeroPoint=pl.Series(rng.normal(31.0, 0.1, n_ccd)),
        magLim=pl.Series(rng.normal(24.0, 0.3, n_ccd)),
        **{k: pl.Series(v) for k, v in corners.items()},
    )

    n_src = 6000
    parent = rng.integers(0, n_visit, n_src)
    s_ra, s_dec = _offset_each(visit["ra"].to_numpy()[parent], visit["dec"].to_numpy()[parent], 0.8, rng)
    # A sprinkle of all-sky sources so that far-away rows exist too.
    s_ra[:300] = rng.uniform(0, 360, 300)
    s_dec[:300] = np.degrees(np.arcsin(rng.uniform(-1, 1, 300)))
    flux = 10 ** rng.uniform(1.5, 5.5, n_src)
    flux[::97] = -flux[::97]  # negative fluxes: magnitude is NULL
    source = pl.DataFrame(
        {
            "sourceId": np.arange(n_src) + 10**12,
            "coord_ra": s_ra,
            "coord_dec": s_dec,
            "ra": s_ra,
            "dec": s_dec,
            "visit": visit["visit"].to_numpy()[parent],
            "detector": rng.integers(0, 9, n_src).astype(np.int32),
            "band": visit["band"].to_numpy()[parent],
            "psfFlux": flux,
            "psfFluxErr": np.abs(flux) * rng.uniform(0.01, 0.2, n_src),
            "extendedness": rng.choice([0.0, 1.0], n_src),
            "pixelFlags_bad": rng.uniform(size=n_src) < 0.05,
        }
    )
    n_obj = 2000
    o_field = rng.integers(0, len(FIELDS), n_obj)
    o_ra, o_dec = _offset_each(
        np.array([FIELDS[f][0] for f in o_field]), np.array([FIELDS[f][1] for f in o_field]), 1.0, rng
    )
    obj = pl.DataFrame(
        {
            "objectId": np.arange(n_obj) + 5 * 10**12,
            "coord_ra": o_ra,
            "coord_dec": o_dec,
            "r_psfFlux": 10 ** rng.uniform(1.5, 5.5, n_obj),
            "g_psfFlux": 10 ** rng.uniform(1.5, 5.5, n_obj),
            "refExtendedness": rng.choice([0.0, 1.0], n_obj),
        }
    )
    con = duckdb.connect()
    for name, frame in {"Visit": visit, "CcdVisit": ccd, "Source": source, "Object": obj}.items():
        con.register("frame", frame.to_arrow())
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM frame")
        con.unregister("frame")
    con.execute("CREATE VIEW VisitDetector AS SELECT * FROM CcdVisit")
    yield {"con": con, "Visit": visit, "CcdVisit": ccd, "Source": source, "Object": obj}
    con.close()


def _offset_each(ra, dec, radius, rng):
    out_ra, out_dec = np.empty(len(ra)), np.empty(len(ra))
    for i, (r0, d0) in enumerate(zip(ra, dec, strict=True)):
        out_ra[i], out_dec[i] = (x[0] for x in _offset(r0, d0, radius, 1, rng))
    return out_ra, out_dec


def _tangent_to_sky(ra0, dec0, x_deg, y_deg):
    """Inverse gnomonic projection of tangent-plane offsets (degrees) around (ra0, dec0)."""
    c = _unit(ra0, dec0)
    east = np.stack([-np.sin(np.radians(ra0)), np.cos(np.radians(ra0)), np.zeros_like(ra0)], axis=-1)
    north = np.cross(c, east)
    v = c + np.tan(np.radians(x_deg))[:, None] * east + np.tan(np.radians(y_deg))[:, None] * north
    v /= np.linalg.norm(v, axis=1)[:, None]
    return np.degrees(np.arctan2(v[:, 1], v[:, 0])) % 360.0, np.degrees(np.arcsin(v[:, 2]))


def run(data, adql: str) -> pl.DataFrame:
    sql = prepare_sql(adql)
    assert sql != adql, "expected the query to be recognised as ADQL"
    return data["con"].sql(sql).pl()


def _mag(flux):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(flux > 0, -2.5 * np.log10(np.where(flux > 0, flux, 1.0)) + 31.4, np.nan)


# -- realistic queries --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ra0", "dec0", "radius"),
    [(62.0, -37.0, 0.5), (359.95, 2.0, 0.6), (10.0, 89.8, 0.5), (200.0, -89.7, 0.8)],
)
def test_cone_search_with_magnitudes(data, ra0, dec0, radius):
    out = run(
        data,
        f"""
        SELECT sourceId, coord_ra, coord_dec, scisql_nanojanskyToAbMag(psfFlux) AS psfMag,
               scisql_nanojanskyToAbMagSigma(psfFlux, psfFluxErr) AS psfMagErr
        FROM dp1.Source
        WHERE CONTAINS(POINT('ICRS', coord_ra, coord_dec), CIRCLE('ICRS', {ra0}, {dec0}, {radius})) = 1
    """,
    ).sort("sourceId")
    src = data["Source"]
    inside = _sep_deg(src["coord_ra"].to_numpy(), src["coord_dec"].to_numpy(), ra0, dec0) <= radius
    expected = src.filter(pl.Series(inside)).sort("sourceId")
    assert 20 < expected.height < src.height / 2
    assert out["sourceId"].to_list() == expected["sourceId"].to_list()
    flux = expected["psfFlux"].to_numpy()
    np.testing.assert_allclose(out["psfMag"].to_numpy().astype(float), _mag(flux), rtol=1e-12)
    assert out["psfMag"].null_count() == int(np.sum(flux <= 0)) > 0
    good = flux > 0
    np.testing.assert_allclose(
        out["psfMagErr"].to_numpy()[good],
        2.5 / np.log(10) * expected["psfFluxErr"].to_numpy()[good] / flux[good],
        rtol=1e-12,
    )


def test_top_n_with_order_by(data):
    out = run(
        data, "SELECT TOP 15 sourceId, psfFlux FROM dp1.Source WHERE band = 'r' ORDER BY psfFlux DESC"
    )
    src = data["Source"].filter(pl.col("band") == "r").sort("psfFlux", descending=True).head(15)
    assert out["sourceId"].to_list() == src["sourceId"].to_list()


@pytest.mark.parametrize(
    "verts",
    [
        [(359.5, 1.5), (0.3, 1.5), (0.3, 2.6), (359.5, 2.6)],  # across RA = 0, counter-clockwise
        [(359.5, 2.6), (0.3, 2.6), (0.3, 1.5), (359.5, 1.5)],  # the same, clockwise
        [(0.0, 89.5), (120.0, 89.5), (240.0, 89.5)],  # contains the north pole
        [(61.5, -37.5), (62.6, -37.4), (62.3, -36.4), (61.6, -36.6), (61.4, -37.0)],  # pentagon
    ],
)
def test_polygon_search(data, verts):
    coords = ", ".join(f"{ra}, {dec}" for ra, dec in verts)
    out = run(
        data,
        f"""
        SELECT s.sourceId FROM dp1.Source AS s
        WHERE CONTAINS(POINT('ICRS', s.coord_ra, s.coord_dec), POLYGON('ICRS', {coords})) = 1
    """,
    )
    src = data["Source"]
    inside = _gnomonic_inside(src["coord_ra"].to_numpy(), src["coord_dec"].to_numpy(), verts)
    assert inside.sum() > 10
    assert sorted(out["sourceId"].to_list()) == sorted(
        src.filter(pl.Series(inside))["sourceId"].to_list()
    )


def test_box_search_has_great_circle_sides(data):
    ra0, dec0, width, height = 62.0, -37.0, 1.2, 0.8
    out = run(
        data,
        f"""SELECT sourceId FROM dp1.Source
                        WHERE CONTAINS(POINT('ICRS', coord_ra, coord_dec),
                                       BOX('ICRS', {ra0}, {dec0}, {width}, {height})) = 1""",
    )
    src = data["Source"]
    p = _unit(src["coord_ra"].to_numpy(), src["coord_dec"].to_numpy())
    c = _unit(ra0, dec0)
    east = np.array([-np.sin(np.radians(ra0)), np.cos(np.radians(ra0)), 0.0])
    north = np.cross(c, east)
    # In the gnomonic projection at the centre the sides are the lines x, y = +-tan(size / 2).
    z = p @ c
    inside = (
        (z > 0)
        & (np.abs(p @ east) <= np.tan(np.radians(width / 2)) * z)
        & (np.abs(p @ north) <= np.tan(np.radians(height / 2)) * z)
    )
    assert inside.sum() > 20
    assert sorted(out["sourceId"].to_list()) == sorted(
        src.filter(pl.Series(inside))["sourceId"].to_list()
    )


def test_visit_ccdvisit_join(data):
    out = run(
        data,
        """
        SELECT v.visit, v.band, COUNT(*) AS nDetector, AVG(cv.seeing) AS meanSeeing
        FROM dp1.Visit AS v JOIN dp1.CcdVisit AS cv ON cv.visitId = v.visit
        WHERE v.band IN ('g', 'r') AND cv.seeing < 1.0
        GROUP BY v.visit, v.band ORDER BY v.visit
    """,
    )
    ccd = data["CcdVisit"].filter(pl.col("band").is_in(["g", "r"]) & (pl.col("seeing") < 1.0))
    expected = ccd.group_by("visitId").agg(pl.len().alias("n"), pl.col("seeing").mean()).sort("visitId")
    assert out["visit"].to_list() == expected["visitId"].to_list()
    assert out["nDetector"].to_list() == expected["n"].to_list()
    np.testing.assert_allclose(out["meanSeeing"].to_numpy(), expected["seeing"].to_numpy(), rtol=1e-12)


def test_group_by_band_counts_and_medians(data):
    out = run(
        data,
        """
        SELECT band, COUNT(*) AS nSource, MEDIAN(scisql_nanojanskyToAbMag(psfFlux)) AS medianMag
        FROM dp1.Source WHERE psfFlux > 0 AND pixelFlags_bad = FALSE GROUP BY band ORDER BY band
    """,
    )
    src = data["Source"].filter((pl.col("psfFlux") > 0) & ~pl.col("pixelFlags_bad"))
    assert out["band"].to_list() == sorted(set(src["band"].to_list()))
    for band, n, med in out.iter_rows():
        flux = src.filter(pl.col("band") == band)["psfFlux"].to_numpy()
        assert n == len(flux)
        assert med == pytest.approx(np.median(_mag(flux)), rel=1e-12)


def test_distance_query(data):
    ra0, dec0 = 0.05, 2.1
    out = run(
        data,
        f"""
        SELECT sourceId,
               DISTANCE(POINT('ICRS', coord_ra, coord_dec), POINT('ICRS', {ra0}, {dec0})) AS dist
        FROM dp1.Source
        WHERE DISTANCE(POINT('ICRS', coord_ra, coord_dec), POINT('ICRS', {ra0}, {dec0})) < 0.4
        ORDER BY dist
    """,
    )
    src = data["Source"]
    sep = _sep_deg(src["coord_ra"].to_numpy(), src["coord_dec"].to_numpy(), ra0, dec0)
    order = np.argsort(sep)
    order = order[sep[order] < 0.4]
    assert len(order) > 20
    assert out["sourceId"].to_list() == src["sourceId"].to_numpy()[order].tolist()
    # Separations agree to 1e-10 degree (0.4 microarcsec) including across RA = 0.
    np.testing.assert_allclose(out["dist"].to_numpy(), sep[order], rtol=0, atol=1e-10)


def test_schema_prefixes_and_mixed_case_identifiers(data):
    out = run(
        data,
        """
        SELECT S.SOURCEID, s.Coord_RA AS RA, s.BAND
        FROM DP1.Source AS s WHERE S.Band = 'g' AND s.PsfFlux > 1000 ORDER BY s.sourceid
    """,
    )
    src = data["Source"].filter((pl.col("band") == "g") & (pl.col("psfFlux") > 1000)).sort("sourceId")
    # Output names follow DuckDB: the table's spelling unless aliased.
    assert out.columns == ["sourceId", "RA", "band"]
    assert out["sourceId"].to_list() == src["sourceId"].to_list()
    qualified = run(
        data,
        """
        SELECT dp1.Source.sourceId, "dp1"."Source"."coord_ra" FROM "DP1"."SOURCE"
        WHERE dp1.source.BAND = 'g' AND dp1.Source.psfFlux > 1000 ORDER BY dp1.Source.SourceId
    """,
    )
    assert qualified["sourceId"].to_list() == src["sourceId"].to_list()


def test_dp02_object_cone_with_colour(data):
    out = run(
        data,
        """
        SELECT objectId, scisql_nanojanskyToAbMag(g_psfFlux) - scisql_nanojanskyToAbMag(r_psfFlux) AS gr
        FROM dp02_dc2_catalogs.Object
        WHERE CONTAINS(POINT('ICRS', coord_ra, coord_dec), CIRCLE('ICRS', 62.0, -37.0, 0.7)) = 1
              AND refExtendedness = 0
    """,
    ).sort("objectId")
    obj = data["Object"]
    sel = (_sep_deg(obj["coord_ra"].to_numpy(), obj["coord_dec"].to_numpy(), 62.0, -37.0) <= 0.7) & (
        obj["refExtendedness"].to_numpy() == 0
    )
    expected = obj.filter(pl.Series(sel)).sort("objectId")
    assert out["objectId"].to_list() == expected["objectId"].to_list()
    np.testing.assert_allclose(
        out["gr"].to_numpy(),
        _mag(expected["g_psfFlux"].to_numpy()) - _mag(expected["r_psfFlux"].to_numpy()),
        rtol=1e-10,
    )


def test_detectors_covering_a_target(data):
    """POLYGON built from the CcdVisit corner columns (vertices differ per row)."""
    ccd = data["CcdVisit"]
    target = (ccd["ra"][5] + 0.03, ccd["dec"][5] - 0.02)
    out = run(
        data,
        f"""
        SELECT ccdVisitId FROM dp2.VisitDetector
        WHERE CONTAINS(POINT('ICRS', {target[0]}, {target[1]}),
                       POLYGON('ICRS', llcra, llcdec, ulcra, ulcdec, urcra, urcdec, lrcra, lrcdec)) = 1
    """,
    )
    expected = [
        row["ccdVisitId"]
        for row in ccd.iter_rows(named=True)
        if _gnomonic_inside(
            np.array([target[0]]),
            np.array([target[1]]),
            [(row[f"{c}ra"], row[f"{c}dec"]) for c in ("llc", "ulc", "urc", "lrc")],
        )[0]
    ]
    assert len(expected) >= 1
    assert sorted(out["ccdVisitId"].to_list()) == sorted(expected)


def test_source_visit_join_with_cone_and_time_order(data):
    out = run(
        data,
        """
        SELECT TOP 50 s.sourceId, v.expMidptMJD, s.psfFlux
        FROM dp1.Source AS s JOIN dp1.Visit AS v ON v.visit = s.visit
        WHERE CONTAINS(POINT('ICRS', s.coord_ra, s.coord_dec), CIRCLE('ICRS', 10.0, 89.8, 0.6)) = 1
              AND v.band = 'i'
        ORDER BY v.expMidptMJD, s.sourceId
    """,
    )
    joined = data["Source"].join(
        data["Visit"].select("visit", "expMidptMJD", pl.col("band").alias("vb")), on="visit"
    )
    sel = (
        _sep_deg(joined["coord_ra"].to_numpy(), joined["coord_dec"].to_numpy(), 10.0, 89.8) <= 0.6
    ) & (joined["vb"].to_numpy() == "i")
    expected = joined.filter(pl.Series(sel)).sort(["expMidptMJD", "sourceId"]).head(50)
    assert expected.height > 5
    assert out["sourceId"].to_list() == expected["sourceId"].to_list()


def test_scisql_point_in_circle_and_ang_sep(data):
    out = run(
        data,
        """
        SELECT visit, scisql_angSep(ra, dec, 62.0, -37.0) AS sep FROM dp1.Visit
        WHERE scisql_s2PtInCircle(ra, dec, 62.0, -37.0, 1.0) = 1 ORDER BY visit
    """,
    )
    vis = data["Visit"]
    sep = _sep_deg(vis["ra"].to_numpy(), vis["dec"].to_numpy(), 62.0, -37.0)
    assert out["visit"].to_list() == vis.filter(pl.Series(sep <= 1.0))["visit"].to_list()
    np.testing.assert_allclose(out["sep"].to_numpy(), sep[sep <= 1.0], atol=1e-10)


def test_subquery_top_and_visit_cone(data):
    out = run(
        data,
        """
        SELECT COUNT(*) AS n FROM dp1.Source
        WHERE visit IN (SELECT TOP 5 visit FROM dp1.Visit
                        WHERE CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 359.9, 2.0, 1.5)) = 1
                        ORDER BY expMidptMJD)
    """,
    )
    vis = data["Visit"]
    sel = _sep_deg(vis["ra"].to_numpy(), vis["dec"].to_numpy(), 359.9, 2.0) <= 1.5
    first = vis.filter(pl.Series(sel)).sort("expMidptMJD").head(5)["visit"].to_list()
    assert out["n"][0] == data["Source"].filter(pl.col("visit").is_in(first)).height > 0


def test_intersects_circles_and_polygon(data):
    out = run(
        data,
        """
        SELECT ccdVisitId FROM dp1.CcdVisit
        WHERE INTERSECTS(CIRCLE('ICRS', ra, dec, 0.15),
                         POLYGON('ICRS', 61.5, -37.5, 62.5, -37.5, 62.0, -36.6)) = 1
    """,
    )
    ccd = data["CcdVisit"]
    verts = [(61.5, -37.5), (62.5, -37.5), (62.0, -36.6)]
    ra, dec = ccd["ra"].to_numpy(), ccd["dec"].to_numpy()
    # Brute force: densely sample each cap's boundary and interior against the polygon.
    rng = np.random.default_rng(1)
    hit = np.zeros(len(ra), bool)
    for i in range(len(ra)):
        if _sep_deg(ra[i], dec[i], 62.0, -37.2) > 2.0:
            continue
        s_ra, s_dec = _offset(ra[i], dec[i], 0.15, 4000, rng)
        ring_phi = np.linspace(0, 2 * np.pi, 720)
        c = _unit(ra[i], dec[i])
        east = np.array([-np.sin(np.radians(ra[i])), np.cos(np.radians(ra[i])), 0.0])
        north = np.cross(c, east)
        rho = np.radians(0.15)
        ring = np.cos(rho) * c + np.sin(rho) * (
            np.cos(ring_phi)[:, None] * east + np.sin(ring_phi)[:, None] * north
        )
        r_ra = np.degrees(np.arctan2(ring[:, 1], ring[:, 0])) % 360
        r_dec = np.degrees(np.arcsin(ring[:, 2]))
        hit[i] = _gnomonic_inside(np.r_[s_ra, r_ra, ra[i]], np.r_[s_dec, r_dec, dec[i]], verts).any()
    assert hit.sum() > 3
    assert sorted(out["ccdVisitId"].to_list()) == sorted(
        ccd.filter(pl.Series(hit))["ccdVisitId"].to_list()
    )

    circles = run(
        data,
        """SELECT visit FROM dp1.Visit
                           WHERE INTERSECTS(CIRCLE('ICRS', ra, dec, 1.0),
                                            CIRCLE('ICRS', 10.0, 89.9, 0.3)) = 1""",
    )
    vis = data["Visit"]
    sep = _sep_deg(vis["ra"].to_numpy(), vis["dec"].to_numpy(), 10.0, 89.9)
    assert sorted(circles["visit"].to_list()) == sorted(
        vis.filter(pl.Series(sep <= 1.3))["visit"].to_list()
    )


def test_geometry_scalars_and_adql_math(data):
    out = run(
        data,
        """
        SELECT COORD1(POINT('ICRS', 12.5, -3.25)) AS c1, COORD2(POINT('ICRS', 12.5, -3.25)) AS c2,
               AREA(CIRCLE('ICRS', 0, 90, 1.0)) AS cap,
               AREA(POLYGON('ICRS', 0, 0, 90, 0, 0, 90)) AS octant,
               AREA(BOX('ICRS', 0, 0, 10, 10)) AS box,
               LOG(100.0) AS ln100, LOG10(100.0) AS lg100, TRUNCATE(2.789, 1) AS tr, MOD(7, 3) AS m
        FROM dp1.Visit WHERE visit = 2024110800001
    """,
    )
    row = out.row(0, named=True)
    assert (row["c1"], row["c2"]) == (12.5, -3.25)
    assert row["cap"] == pytest.approx(
        2 * np.pi * (1 - np.cos(np.radians(1.0))) * np.degrees(1) ** 2, rel=1e-12
    )
    assert row["octant"] == pytest.approx(4 * np.pi / 8 * np.degrees(1) ** 2, rel=1e-12)
    # A 10x10 degree BOX with great-circle sides: 4 * asin(sin^2(5 deg)) steradians.
    assert row["box"] == pytest.approx(
        4 * np.arcsin(np.sin(np.radians(5.0)) ** 2) * np.degrees(1) ** 2, rel=1e-10
    )
    assert row["ln100"] == pytest.approx(np.log(100.0), rel=1e-14)
    assert row["lg100"] == pytest.approx(2.0, rel=1e-14)
    assert float(row["tr"]) == pytest.approx(2.7)
    assert row["m"] == 1


def test_contains_as_value_and_negated(data):
    out = run(
        data,
        """
        SELECT visit, CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 62.0, -37.0, 1.0)) AS inField
        FROM dp1.Visit ORDER BY visit
    """,
    )
    outside = run(
        data,
        """SELECT COUNT(*) AS n FROM dp1.Visit
                           WHERE CONTAINS(POINT('ICRS', ra, dec),
                                          CIRCLE('ICRS', 62.0, -37.0, 1.0)) = 0""",
    )
    vis = data["Visit"]
    inside = _sep_deg(vis["ra"].to_numpy(), vis["dec"].to_numpy(), 62.0, -37.0) <= 1.0
    assert out["inField"].to_list() == inside.astype(int).tolist()
    assert outside["n"][0] == int((~inside).sum())


# -- detection, pass-through, errors ------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM Visit WHERE band = 'r' ORDER BY visit LIMIT 5",
        "SELECT contains('POINT(1 2)', 'POINT') AS has_point, 'SELECT TOP 3' AS s FROM range(3)",
        "FROM Source SELECT band, count(*) GROUP BY ALL",
        "SELECT list_transform([1, 2], lambda x: x + 1) -- CIRCLE('ICRS', 1, 2, 3)",
        "SELECT s.coord_ra::DECIMAL(9, 5) FROM Source s "
        "QUALIFY row_number() OVER (PARTITION BY band) = 1",
    ],
)
def test_duckdb_sql_passes_through_untouched(data, sql):
    assert not looks_like_adql(sql)
    assert prepare_sql(sql) is sql
    data["con"].sql(sql).fetchall()  # and it is valid DuckDB SQL as written


def test_plain_sql_forced_through_translator_keeps_meaning(data):
    sql = "SELECT band, COUNT(*) AS n FROM Source WHERE psfFlux > 100 GROUP BY band ORDER BY band"
    assert data["con"].sql(translate(sql)).fetchall() == data["con"].sql(sql).fetchall()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT TOP 5 * FROM Visit",
        "select distinct top 5 band from Visit",
        "SELECT * FROM dp1.Visit",
        "SELECT scisql_angSep(ra, dec, 0, 0) FROM Visit",
        "SELECT * FROM Source "
        "WHERE CONTAINS(POINT('ICRS', coord_ra, coord_dec), CIRCLE('ICRS', 1, 2, 3)) = 1",
    ],
)
def test_adql_is_detected(sql):
    assert looks_like_adql(sql)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        (
            "SELECT * FROM Source WHERE CONTAINS(POINT('ICRS', coord_ra, coord_dec), s_region) = 1",
            "s_region",
        ),
        ("SELECT REGION('Circle ICRS 1 2 3') FROM Visit", "REGION"),
        ("SELECT scisql_s2PtInEllipse(ra, dec, 1, 2, 3, 4, 5) FROM Visit", "scisql_s2PtInEllipse"),
        (
            "SELECT * FROM Visit "
            "WHERE INTERSECTS(POLYGON('ICRS', 1, 1, 2, 1, 2, 2), BOX('ICRS', 1, 1, 1, 1)) = 1",
            "INTERSECTS of two POLYGON",
        ),
        ("SELECT POINT('ICRS', ra, dec) FROM dp1.Visit", "POINT as a value"),
        (
            "SELECT * FROM Visit "
            "WHERE CONTAINS(POINT('GALACTIC', ra, dec), CIRCLE('ICRS', 1, 2, 3)) = 1",
            "GALACTIC",
        ),
        ("SELECT * FROM tap_schema.tables", "TAP_SCHEMA"),
        ("SELECT ivo_healpix_index(10, ra, dec) FROM Visit", "ivo_healpix_index"),
        (
            "SELECT * FROM Visit WHERE CONTAINS(POINT('ICRS', ra, dec), "
            "POLYGON('ICRS', 0, 0, 10, 0, 1, 1, 0, 10)) = 1",
            "not convex",
        ),
    ],
)
def test_unsupported_constructs_are_named(sql, message):
    with pytest.raises(UnsupportedConstructError, match=message):
        translate(sql)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        (
            "SELECT * FROM Source "
            "WHERE CONTAINS(POINT('ICRS', coord_ra, coord_dec), CIRCLE('ICRS', 1, 2, -0.1)) = 1",
            r"CIRCLE radius must be >= 0 degrees, got -0\.1",
        ),
        ("SELECT * FROM Visit WHERE scisql_s2PtInCircle(ra, dec, 1, 2, -1) = 1", "radius must be >= 0"),
        (
            "SELECT * FROM Visit WHERE CONTAINS(POINT('ICRS', ra, dec), BOX('ICRS', 1, 2, -1, 1)) = 1",
            "BOX width must be >= 0",
        ),
        (
            "SELECT * FROM Visit "
            "WHERE CONTAINS(POINT('ICRS', ra, dec), POLYGON('ICRS', 1, 2, 3, 4)) = 1",
            "POLYGON needs an even number",
        ),
        (
            "SELECT * FROM Visit WHERE CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 1, 95, 1)) = 1",
            r"declination must be within \[-90, 90\]",
        ),
    ],
)
def test_invalid_shapes_are_one_line_errors(sql, message):
    with pytest.raises(InvalidQueryError, match=message) as info:
        translate(sql)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT TOP 5 ra, FROM WHERE Visit",
        "SELECT TOP 5 ra FROM Visit WHERE (band = 'r'",
        "SELECT x FROM t WHERE 1 = 2 AND",
    ],
)
def test_malformed_sql_reports_the_parser_reason(sql):
    with pytest.raises(InvalidQueryError, match=r"malformed ADQL: .+ \(line 1, column \d+\)") as info:
        translate(sql)
    assert "\n" not in str(info.value)


def test_runtime_negative_radius_from_a_column_raises(data):
    con = data["con"]
    sql = translate(
        "SELECT COUNT(*) FROM dp1.Visit WHERE CONTAINS(POINT('ICRS', ra, dec), "
        "CIRCLE('ICRS', ra, dec, airmass - 3.0)) = 1"
    )
    with pytest.raises(duckdb.Error, match="CIRCLE radius must be >= 0 degrees"):
        con.sql(sql).fetchall()


def test_table_map_renames_and_keeps_the_tap_name_as_alias(data):
    sql = translate(
        "SELECT VisitDetector.ccdVisitId FROM dp2.VisitDetector WHERE VisitDetector.detector = 4",
        table_map={"dp2.VisitDetector": "CcdVisit"},
    )
    assert "FROM CcdVisit AS VisitDetector" in sql
    assert len(data["con"].sql(sql).fetchall()) == data["Visit"].height


def test_macros_match_translation(data):
    con = data["con"]
    install_macros(con)
    direct = con.sql("""SELECT sourceId FROM Source
                        WHERE drp_pt_in_circle(coord_ra, coord_dec, 10.0, 89.8, 0.5)
                        ORDER BY sourceId""").fetchall()
    adql = con.sql(
        prepare_sql("""SELECT sourceId FROM dp1.Source WHERE CONTAINS(POINT('ICRS', coord_ra,
        coord_dec), CIRCLE('ICRS', 10.0, 89.8, 0.5)) = 1 ORDER BY sourceId""")
    ).fetchall()
    assert direct == adql and len(direct) > 10
    poly = con.sql("""SELECT count(*) FROM Source WHERE drp_pt_in_cpoly(coord_ra, coord_dec,
                      [359.5, 2.6, 0.3, 2.6, 0.3, 1.5, 359.5, 1.5])""").fetchall()[0][0]
    src = data["Source"]
    verts = [(359.5, 2.6), (0.3, 2.6), (0.3, 1.5), (359.5, 1.5)]
    assert poly == int(
        _gnomonic_inside(src["coord_ra"].to_numpy(), src["coord_dec"].to_numpy(), verts).sum()
    )


def test_lowercase_adql_with_duckdb_parameters(data):
    sql = prepare_sql(
        "select top 5 sourceid from dp1.source where contains(point('icrs', coord_ra, coord_dec), "
        "circle('icrs', 62, -37, 0.5)) = 1 and band = $band order by sourceid"
    )
    got = [r[0] for r in data["con"].execute(sql, {"band": "g"}).fetchall()]
    src = data["Source"]
    sel = (_sep_deg(src["coord_ra"].to_numpy(), src["coord_dec"].to_numpy(), 62, -37) <= 0.5) & (
        src["band"].to_numpy() == "g"
    )
    assert got == sorted(src.filter(pl.Series(sel))["sourceId"].to_list())[:5]
    assert len(got) == 5


def test_column_names_equal_to_macro_parameters():
    """Columns called like the macros' parameters (ra, dec, radius...), even swapped, stay distinct."""
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE T AS SELECT * FROM (VALUES (10.0, 20.0, 10.3, 20.0, 0.5),"
        " (10.0, 20.0, 11.0, 20.0, 0.5)) v(ra0, dec0, ra, dec, radius)"
    )
    sql = translate(
        "SELECT CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', ra0, dec0, radius)) AS a, "
        "CONTAINS(POINT('ICRS', ra0, dec0), CIRCLE('ICRS', ra, dec, radius)) AS b, "
        "DISTANCE(POINT('ICRS', dec, ra), POINT('ICRS', dec0, ra0)) AS swapped FROM T"
    )
    rows = con.sql(sql).fetchall()
    assert [(a, b) for a, b, _ in rows] == [(1, 1), (0, 0)]
    np.testing.assert_allclose([s for *_, s in rows], _sep_deg(20.0, 10.0, 20.0, np.array([10.3, 11.0])))


@pytest.mark.parametrize("prefix", ["EXPLAIN ", "explain analyze ", "DESCRIBE "])
def test_explain_and_describe_wrap_adql(data, prefix):
    adql = (
        prefix + "SELECT TOP 3 visit FROM dp1.Visit WHERE CONTAINS(POINT('ICRS', ra, dec), "
        "CIRCLE('ICRS', 62, -37, 2)) = 1"
    )
    assert looks_like_adql(adql)
    sql = prepare_sql(adql)
    assert sql.upper().startswith(prefix.strip().upper()) and "TOP" not in sql
    assert data["con"].sql(sql).fetchall()
