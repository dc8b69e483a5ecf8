"""The named queries of queries/: documented, typed, and right on a small repository."""

from __future__ import annotations

import math

import numpy as np
from click.testing import CliRunner

import queries
from processing.cli import main

from .test_rubin_tables import DETECTORS, VISITS, rubin_repo  # noqa: F401  (fixture)

SHIPPED = {"coadd_inputs", "best_seeing_visits", "night_summary", "visits_at_position",
           "psf_outliers"}


def run(repo, name, **params):
    q = queries.load(name)
    return repo.sql(q.sql, q.bind(params), adql=False).to_pylist()


def test_every_shipped_query_is_documented():
    found = {q.name: q for q in queries.list_queries()}
    assert SHIPPED <= set(found)
    for name in SHIPPED:
        q = found[name]
        assert q.summary and len(q.doc.splitlines()) >= 2, name
        assert all(p.doc for p in q.params.values()), name
    out = CliRunner().invoke(main, ["query", "--list"])
    assert out.exit_code == 0
    assert all(name in out.output for name in SHIPPED)


def _seeing(summary_rows):
    return [r["psfSigma"] * r["pixelScale"] * math.sqrt(8 * math.log(2)) for r in summary_rows]


def test_best_seeing_visits_matches_brute_force(rubin_repo):  # noqa: F811
    repo = rubin_repo["repo"]
    summaries = rubin_repo["summaries"]
    current = {v: summaries[("r2", 1)] if v == 1 else summaries[("r1", v)] for v in VISITS}
    expected = {}
    for v, table in current.items():
        band = "r" if v % 2 else "g"
        expected.setdefault(band, []).append((float(np.median(_seeing(table.to_pylist()))), v))
    rows = run(repo, "best_seeing_visits", n=1)
    got = {r["band"]: (r["visit"], r["seeing"]) for r in rows}
    for band, items in expected.items():
        seeing, visit = min(items)
        assert got[band][0] == visit
        assert math.isclose(got[band][1], seeing, rel_tol=1e-5)
    assert {r["band"] for r in run(repo, "best_seeing_visits", n=3, band="g")} == {"g"}


def test_night_summary_counts_visits(rubin_repo):  # noqa: F811
    rows = run(rubin_repo["repo"], "night_summary")
    assert sum(r["n_visits"] for r in rows) == len(VISITS)
    assert {r["day_obs"] for r in rows} == {20261121}


def test_visits_at_position_finds_the_covering_detector(rubin_repo):  # noqa: F811
    # each detector of visit v is a 0.04-degree square centred on (10 + v + 0.05 d, -5)
    det = DETECTORS[1]
    rows = run(rubin_repo["repo"], "visits_at_position", ra=12.0 + 0.05 * det, dec=-5.0)
    assert [(r["visit"], r["detector"]) for r in rows] == [(2, det)]
    assert run(rubin_repo["repo"], "visits_at_position", ra=200.0, dec=40.0) == []


def test_psf_outliers_use_the_selection_cuts(rubin_repo):  # noqa: F811
    repo = rubin_repo["repo"]
    rows = run(repo, "psf_outliers", min_n_psf_star=6)
    ccd = repo.sql("SELECT visitId, detector, nPsfStar FROM CcdVisit").to_pylist()
    # the synthetic summaries have no PSF-star residuals (NULL): every detector fails a cut,
    # and those with too few stars say so first
    assert len(rows) == len(ccd) == len(VISITS) * len(DETECTORS)
    few = {(c["visitId"], c["detector"]) for c in ccd if c["nPsfStar"] < 6}
    assert {(r["visit"], r["detector"]) for r in rows if r["reason"] == "too few PSF stars"} == few
