"""The Rubin-named SQL tables (store.rubin_tables): columns as in the schema files, values
equal to a brute-force computation from the datasets, default-collection semantics."""

from __future__ import annotations

import datetime as _dt
import math

import numpy as np
import pyarrow as pa
import pytest

from processing.algorithms.summary_stats import ExposureSummaryStats
from processing.visit_summary import DetectorSummary, VisitSummaryCatalog
from store.exposure import DetectorInfo, VisitInfo
from store.formats.parquet import exclude_from_sql
from store.geom import Box
from store.rubin_tables import EXTRA_STATISTICS

# Copied from reference/schemas/*.csv (outside the repository).
DP1_VISIT = [
    "visit", "physical_filter", "band", "ra", "dec", "skyRotation", "azimuth", "altitude",
    "zenithDistance", "airmass", "expTime", "expMidpt", "expMidptMJD", "obsStart", "obsStartMJD"]
DP1_CCD_VISIT = [
    "physical_filter", "band", "ra", "dec", "pixelScale", "zenithDistance", "expTime", "zeroPoint",
    "psfSigma", "skyBg", "skyNoise", "astromOffsetMean", "astromOffsetStd", "nPsfStar",
    "psfStarDeltaE1Median", "psfStarDeltaE2Median", "psfStarDeltaE1Scatter",
    "psfStarDeltaE2Scatter", "psfStarDeltaSizeMedian", "psfStarDeltaSizeScatter",
    "psfStarScaledDeltaSizeScatter", "psfTraceRadiusDelta", "psfApFluxDelta",
    "psfApCorrSigmaScaledDelta", "maxDistToNearestPsf", "ccdVisitId", "visitId", "detector",
    "seeing", "skyRotation", "expMidpt", "expMidptMJD", "obsStart", "obsStartMJD", "darkTime",
    "xSize", "ySize", "llcra", "llcdec", "ulcra", "ulcdec", "urcra", "urcdec", "lrcra", "lrcdec",
    "effTime", "effTimePsfSigmaScale", "effTimeSkyBgScale", "effTimeZeroPointScale", "magLim"]
DP2_VISIT_DETECTOR = [
    "physical_filter", "band", "ra", "dec", "pixelScale", "zenithDistance", "expTime", "zeroPoint",
    "psfSigma", "skyBg", "skyNoise", "astromOffsetMean", "astromOffsetStd", "nPsfStar",
    "psfStarDeltaE1Median", "psfStarDeltaE2Median", "psfStarDeltaE1Scatter",
    "psfStarDeltaE2Scatter", "psfStarDeltaSizeMedian", "psfStarDeltaSizeScatter",
    "psfStarScaledDeltaSizeScatter", "psfTraceRadiusDelta", "psfApFluxDelta",
    "psfApCorrSigmaScaledDelta", "maxDistToNearestPsf", "starEMedian", "starUnNormalizedEMedian",
    "visitId", "detector", "seeing", "skyRotation", "expMidpt", "expMidptMJD", "obsStart",
    "obsStartMJD", "darkTime", "xSize", "ySize", "llcra", "llcdec", "ulcra", "ulcdec", "urcra",
    "urcdec", "lrcra", "lrcdec", "effTime", "effTimePsfSigmaScale", "effTimeSkyBgScale",
    "effTimeZeroPointScale", "magLim", "wcsCornerMaxOffset", "wcsDetectorPointingResidual",
    "wcsVisitPointingResidual", "wcsPreliminaryDetectorPointingResidual",
    "wcsPreliminaryVisitPointingResidual"]
#: What drp cannot fill (Rubin's pointing refit).
DP2_UNFILLED = {"wcsDetectorPointingResidual", "wcsVisitPointingResidual",
                "wcsPreliminaryDetectorPointingResidual", "wcsPreliminaryVisitPointingResidual"}
DP1_SOURCE_HEAD = ["coord_ra", "coord_dec", "parentSourceId", "x", "y", "xErr", "yErr", "ra",
                   "dec"]
DP1_SOURCE_TAIL = ["visit", "detector", "band", "physical_filter", "sourceId"]
EXTRA = ["psfArea", "psfIxx", "psfIyy", "psfIxy", "meanVar", "starEMedian",
         "starUnNormalizedEMedian", "starComa1Median", "starComa2Median", "starTrefoil1Median",
         "starTrefoil2Median", "starKurtosisMedian", "starE41Median", "starE42Median",
         "wcsCornerMaxOffset"]
MJD0 = _dt.datetime(1858, 11, 17)
VISITS = (0, 1, 2, 3)
DETECTORS = (0, 1, 5)
SIGMA_TO_FWHM = math.sqrt(8 * math.log(2))


def _visit_records():
    rows = []
    for v in VISITS:
        band = "r" if v % 2 else "g"
        rows.append({
            "instrument": "Cam", "visit": v, "band": band, "physical_filter": f"{band}_01",
            "day_obs": 20261121, "ra": 10.0 + v, "dec": -5.0 + 0.1 * v, "sky_rotation": 12.0 * v,
            "exposure_time": 30.0, "dark_time": 31.0, "obs_start_mjd": 61000.1 + 0.01 * v,
            "exp_midpt_mjd": 61000.1 + 0.01 * v + 15 / 86400, "airmass": 1.1 + 0.01 * v,
            "zenith_distance": 25.0 + v, "azimuth": 100.0 + v,
            "altitude": math.nan if v == 2 else 65.0 - v,
            "region": np.array([[9.9 + v, -5.1], [10.1 + v, -5.1], [10.1 + v, -4.9],
                                [9.9 + v, -4.9]])})
    return rows


def _summary(visit: int, psf_shift: float, rng) -> pa.Table:
    band = "r" if visit % 2 else "g"
    vi = VisitInfo(visit=visit, instrument="Cam", band=band, physical_filter=f"{band}_01",
                   exposure_time=30.0, dark_time=31.0, mjd=61000.1 + 0.01 * visit,
                   mjd_begin=61000.1 + 0.01 * visit - 15 / 86400, rotation_angle=12.0 * visit)
    entries = []
    for det in DETECTORS:
        ra0, dec0 = 10.0 + visit + 0.05 * det, -5.0
        stats = ExposureSummaryStats(
            psfSigma=2.0 + psf_shift + 0.1 * det, pixelScale=0.2, ra=ra0, dec=dec0,
            raCorners=(ra0 - 0.02, ra0 + 0.02, ra0 + 0.02, ra0 - 0.02),
            decCorners=(dec0 - 0.02, dec0 - 0.02, dec0 + 0.02, dec0 + 0.02),
            zeroPoint=31.0 + rng.normal(0, 0.1), skyBg=600.0, skyNoise=25.0,
            nPsfStar=int(rng.integers(0, 50)), psfArea=50.0, psfIxx=4.0, meanVar=620.0,
            starEMedian=0.02, magLim=math.nan if det == 5 else 24.5, effTime=27.0,
            astromOffsetMean=0.03, expTime=30.0)
        entries.append(DetectorSummary(DetectorInfo(det, f"S{det}"), Box(0, 0, 4072, 4000),
                                       stats, vi))
    table = VisitSummaryCatalog.from_detectors(entries).to_table()
    table = table.append_column("wcsCornerMaxOffset", pa.array([0.01 * visit] * len(DETECTORS)))
    return exclude_from_sql(table, ["psf", "wcs", "ap_corr_map"])


def _sources(visit: int, rng, n: int = 50) -> pa.Table:
    ra = 10.0 + visit + rng.uniform(-0.1, 0.1, n)
    dec = -5.0 + rng.uniform(-0.1, 0.1, n)
    band = "r" if visit % 2 else "g"
    return pa.table({
        "sourceId": np.arange(n, dtype=np.int64) + 1000 * visit, "coord_ra": ra,
        "coord_dec": dec, "ra": ra, "dec": dec, "x": rng.uniform(0, 4000, n),
        "xErr": rng.uniform(0.01, 0.1, n),  # float64 stored, FLOAT in the schema
        "psfFlux": rng.uniform(1e3, 1e5, n), "psfFluxErr": rng.uniform(10, 100, n),
        "pixelFlags_bad": rng.random(n) < 0.1, "visit": np.full(n, visit, np.int64),
        "detector": pa.array(np.full(n, 1), pa.int32()), "band": [band] * n,
        "not_in_rubin": np.ones(n),
    })


@pytest.fixture(scope="module")
def rubin_repo(tmp_path_factory):
    """Visits 0-3 in run r1, a newer summary of visit 1 in r2, default collection [r2, r1]."""
    from store import Repo

    repo = Repo.create(tmp_path_factory.mktemp("rubin") / "repo")
    rng = np.random.default_rng(11)
    repo.insert_dimension_records("instrument", [{"instrument": "Cam"}])
    repo.insert_dimension_records("band", [{"band": "g"}, {"band": "r"}])
    repo.insert_dimension_records("physical_filter", [
        {"instrument": "Cam", "physical_filter": f"{b}_01", "band": b} for b in "gr"])
    repo.insert_dimension_records("day_obs", [{"instrument": "Cam", "day_obs": 20261121}])
    repo.insert_dimension_records("detector", [{"instrument": "Cam", "detector": d}
                                               for d in DETECTORS])
    repo.insert_dimension_records("visit", _visit_records())
    repo.register_dataset_type("visit_summary", ("instrument", "visit"), "ArrowTable")
    repo.register_dataset_type("source", ("instrument", "visit"), "ArrowTable")
    repo.register_dataset_type("single_visit_star", ("instrument", "visit", "detector"),
                               "ArrowTable")
    repo.register_run("r1")
    repo.register_run("r2")
    summaries = {("r1", v): _summary(v, 0.0, rng) for v in VISITS}
    summaries["r2", 1] = _summary(1, 0.5, rng)  # a newer summary of visit 1
    sources = {v: _sources(v, rng) for v in VISITS}
    stars = pa.table({"slot_Centroid_x": [1.0, 2.0], "calib_psf_used": [True, False],
                      "detector": pa.array([0, 0], pa.int32())})
    repo.put_many([(t, "visit_summary", {"instrument": "Cam", "visit": v})
                   for (run, v), t in summaries.items() if run == "r1"]
                  + [(t, "source", {"instrument": "Cam", "visit": v}) for v, t in sources.items()]
                  + [(stars, "single_visit_star", {"instrument": "Cam", "visit": 0, "detector": 0})],
                  run="r1")
    repo.put(summaries["r2", 1], "visit_summary", {"instrument": "Cam", "visit": 1}, run="r2")
    repo.register_chain("out", ["r2", "r1"])
    repo.set_default_collection("out")
    return {"repo": repo, "summaries": summaries, "sources": sources, "stars": stars}


def _nan_to_none(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def _close(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(a, _dt.datetime):
        return abs((a - b).total_seconds()) < 1e-5
    return a == b


def _mjd(value):
    return None if value is None or math.isnan(value) else MJD0 + _dt.timedelta(days=value)


def test_visit_columns_and_values(rubin_repo):
    repo = rubin_repo["repo"]
    table = repo.sql("SELECT * FROM Visit ORDER BY visit")
    assert table.column_names == DP1_VISIT
    assert table.schema.field("expMidpt").type == pa.timestamp("us")
    for got, rec in zip(table.to_pylist(), _visit_records(), strict=True):
        expected = {
            "visit": rec["visit"], "physical_filter": rec["physical_filter"],
            "band": rec["band"], "ra": rec["ra"], "dec": rec["dec"],
            "skyRotation": rec["sky_rotation"], "azimuth": rec["azimuth"],
            "altitude": _nan_to_none(rec["altitude"]), "zenithDistance": rec["zenith_distance"],
            "airmass": rec["airmass"], "expTime": rec["exposure_time"],
            "expMidpt": _mjd(rec["exp_midpt_mjd"]), "expMidptMJD": rec["exp_midpt_mjd"],
            "obsStart": _mjd(rec["obs_start_mjd"]), "obsStartMJD": rec["obs_start_mjd"]}
        for name in DP1_VISIT:
            assert _close(got[name], expected[name]), name
    # The registry's own dimension table is still there under main.
    assert "exposure_time" in repo.sql("SELECT * FROM main.visit LIMIT 1").column_names


def _expected_ccd_rows(summaries):
    """Brute force: the default collection (r2 before r1) row by row from the Parquet tables."""
    chosen = {v: summaries.get(("r2", v), summaries["r1", v]) for v in VISITS}
    out = {}
    for v, table in chosen.items():
        for row in table.to_pylist():
            r = {k: _nan_to_none(x) for k, x in row.items()}
            ra_c, dec_c = row["raCorners"], row["decCorners"]
            fwhm = (None if r["psfSigma"] is None or r["pixelScale"] is None
                    else row["psfSigma"] * row["pixelScale"] * SIGMA_TO_FWHM)
            r.update(ccdVisitId=v * 1000 + row["detector"], visitId=v, seeing=fwhm,
                     skyRotation=row["boresightRotAngle"], expMidpt=_mjd(row["expMidptMJD"]),
                     obsStart=_mjd(row["obsStartMJD"]), xSize=row["width"], ySize=row["height"],
                     llcra=ra_c[0], llcdec=dec_c[0], lrcra=ra_c[1], lrcdec=dec_c[1],
                     urcra=ra_c[2], urcdec=dec_c[2], ulcra=ra_c[3], ulcdec=dec_c[3])
            out[v, row["detector"]] = r
    return out


@pytest.mark.parametrize("view", ["CcdVisit", "VisitDetector"])
def test_ccd_visit_columns_and_values(rubin_repo, view):
    repo = rubin_repo["repo"]
    table = repo.sql(f"SELECT * FROM {view} ORDER BY visitId, detector")
    if view == "CcdVisit":
        schema = DP1_CCD_VISIT
    else:
        schema = [c for c in DP2_VISIT_DETECTOR if c not in DP2_UNFILLED]
    extras = [c for c in EXTRA if c not in schema]
    assert table.column_names == schema + extras
    assert list(EXTRA_STATISTICS) == EXTRA
    assert table.schema.field("pixelScale").type == pa.float32()        # schema "float"
    assert table.schema.field("nPsfStar").type == pa.int32()            # schema "int"
    assert table.schema.field("detector").type == pa.int64()            # schema "long"
    expected = _expected_ccd_rows(rubin_repo["summaries"])
    rows = table.to_pylist()
    assert [(r["visitId"], r["detector"]) for r in rows] == sorted(expected)
    for got in rows:
        exp = expected[got["visitId"], got["detector"]]
        for name in table.column_names:
            want = exp[name]
            if table.schema.field(name).type == pa.float32() and want is not None:
                want = float(np.float32(want))
            assert _close(got[name], want), (got["visitId"], got["detector"], name)
    # The newer run wins for visit 1; magLim NaN shows as NULL.
    by_key = {(r["visitId"], r["detector"]): r for r in rows}
    assert by_key[1, 0]["psfSigma"] == pytest.approx(2.5)
    assert by_key[0, 0]["psfSigma"] == pytest.approx(2.0)
    assert by_key[0, 5]["magLim"] is None and by_key[0, 0]["magLim"] == 24.5
    assert rows[0]["seeing"] == pytest.approx(2.0 * 0.2 * 2.35482, rel=1e-5)


def test_rubin_tutorial_queries(rubin_repo):
    repo = rubin_repo["repo"]
    expected = _expected_ccd_rows(rubin_repo["summaries"])
    # A cone search on CcdVisit with a band and seeing cut, as ADQL.
    got = repo.sql("""SELECT ccdVisitId, seeing FROM dp1.CcdVisit
        WHERE CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 13.03, -5.0, 0.05)) = 1
          AND band = 'r' AND seeing < 1.0 ORDER BY ccdVisitId""").column("ccdVisitId")
    want = sorted(r["ccdVisitId"] for r in expected.values()
                  if r["band"] == "r" and r["seeing"] < 1.0
                  and math.hypot((r["ra"] - 13.03) * math.cos(math.radians(5.0)),
                                 r["dec"] + 5.0) < 0.05)
    assert got.to_pylist() == want and want
    # Visit joined with CcdVisit per night, plain SQL with Rubin names.
    per_night = repo.sql("""SELECT CAST(floor(v.expMidptMJD) AS INTEGER) AS night,
                                   count(*) AS n, max(c.seeing) AS worst
                            FROM Visit AS v JOIN CcdVisit AS c ON c.visitId = v.visit
                            GROUP BY night""").to_pylist()
    assert per_night == [{"night": 61000, "n": len(expected),
                          "worst": pytest.approx(max(r["seeing"] for r in expected.values()))}]
    # Sources per visit in a cone.
    counts = {r["visit"]: r["n"] for r in repo.sql("""SELECT visit, COUNT(*) AS n FROM dp1.Source
        WHERE CONTAINS(POINT('ICRS', coord_ra, coord_dec), CIRCLE('ICRS', 12.0, -5.0, 0.05)) = 1
        GROUP BY visit""").to_pylist()}
    src = rubin_repo["sources"][2].to_pydict()
    sep = np.degrees(np.arccos(np.clip(
        np.sin(np.radians(src["coord_dec"])) * np.sin(np.radians(-5.0))
        + np.cos(np.radians(src["coord_dec"])) * np.cos(np.radians(-5.0))
        * np.cos(np.radians(np.asarray(src["coord_ra"]) - 12.0)), -1, 1)))
    assert counts == {2: int(np.sum(sep < 0.05))}


def test_source_and_psf_star_tables(rubin_repo):
    repo = rubin_repo["repo"]
    table = repo.sql("SELECT * FROM Source ORDER BY sourceId")
    present = set(rubin_repo["sources"][0].column_names)
    head = [c for c in DP1_SOURCE_HEAD if c in present]
    tail = [c for c in DP1_SOURCE_TAIL if c in present]
    assert table.column_names[:len(head)] == head
    assert table.column_names[-len(tail):] == tail
    assert "not_in_rubin" not in table.column_names and "instrument" not in table.column_names
    assert table.schema.field("xErr").type == pa.float32()  # cast to the schema type
    assert table.schema.field("psfFlux").type == pa.float64()
    all_rows = pa.concat_tables(rubin_repo["sources"].values()).sort_by("sourceId")
    for name in table.column_names:
        got, want = table.column(name).to_pylist(), all_rows.column(name).to_pylist()
        if name == "xErr":
            want = [float(np.float32(x)) for x in want]
        assert got == want, name
    # units recorded for the SQL surface: fluxes in nJy
    flux_unit = repo.sql("SELECT unit FROM column_meta WHERE sql_table = 'Source' AND "
                         "column_name = 'psfFlux'").column("unit").to_pylist()
    assert flux_unit == ["nJy"]
    stars = repo.sql("SELECT * FROM PsfStar").to_pylist()
    assert stars == [{**r, "instrument": "Cam", "visit": 0}
                     for r in rubin_repo["stars"].to_pylist()]
    # the registry's own dataset view is still reachable
    assert "not_in_rubin" in repo.sql("SELECT * FROM main.source LIMIT 0").column_names


def test_serialised_models_are_not_copied_into_sql(rubin_repo):
    repo = rubin_repo["repo"]
    cols = repo.sql("SELECT * FROM main.ds_visit_summary LIMIT 0").column_names
    assert "psfSigma" in cols and not {"psf", "wcs", "ap_corr_map"} & set(cols)
    table = repo.get("visit_summary", instrument="Cam", visit=0)
    assert {"psf", "wcs", "ap_corr_map"} <= set(table.column_names)


def test_drp_sql_command_speaks_rubin(rubin_repo):
    import json

    from click.testing import CliRunner

    from processing.cli import main

    root = str(rubin_repo["repo"].root)
    rubin_repo["repo"].close()
    out = CliRunner().invoke(main, ["sql", root, "SELECT TOP 2 ccdVisitId, seeing FROM "
                                    "dp1.CcdVisit ORDER BY ccdVisitId", "--format", "json"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.output.splitlines()]
    assert [r["ccdVisitId"] for r in rows] == [0, 1]


def test_views_exist_in_a_new_repository(repo):
    assert repo.sql("SELECT * FROM Visit").num_rows == 0
    with pytest.raises(Exception, match="CcdVisit"):
        repo.sql("SELECT * FROM CcdVisit")
    # Visit is a live view: dimension records inserted later show at once.
    repo.insert_dimension_records("instrument", [{"instrument": "Cam"}])
    repo.insert_dimension_records("visit", [{"instrument": "Cam", "visit": 9,
                                             "exp_midpt_mjd": 51544.5}])
    row = repo.sql("SELECT visit, expMidpt, expTime FROM Visit").to_pylist()
    assert row == [{"visit": 9, "expMidpt": _dt.datetime(2000, 1, 1, 12), "expTime": None}]
