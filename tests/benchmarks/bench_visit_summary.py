"""Benchmark: the Rubin-named SQL tables at DP1 size, against DuckDB reading the Parquet files.

Builds a repository with DP1-like synthetic content (1,800 visits of 9 detectors
over 7 fields: 16,200 ``visit_summary`` rows; a ``source`` table of 10 million
rows in one Parquet file per visit), then times the questions users ask, through
``Repo.sql`` (ADQL translation, search path and read cursor included):

* ``ccdvisit_cone``: CcdVisit in a 1-degree cone with a band and seeing cut;
* ``visit_ccdvisit_per_night``: Visit joined with CcdVisit, grouped per night;
* ``visit_ccdvisit_one_night``: the detector-visits of one night, with visit columns;
* ``source_count_cone``: sources per visit in a 0.5-degree cone;
* ``source_full_scan``: sources per visit above a flux (no spatial pruning possible).

The two Source queries are also run by a bare DuckDB connection over the same
Parquet files (``read_parquet`` of the file list, same translated SQL, same
threads); ``rate_ratio`` is the DuckDB-on-Parquet time over the repository's
(>= 0.8 required: the repository scans at least 80% as fast).  Finally the
cone count is re-timed when the default collection hides some datasets (the
view then semi-joins ``default_dataset``).

Run: ``python tests/benchmarks/bench_visit_summary.py [--smoke] [--keep DIR]``;
prints one JSON document.  Times are medians (and minima) of repeated runs, ms.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from processing.algorithms.summary_fields import ExposureSummaryStats
from processing.visit_summary import DetectorSummary, VisitSummaryCatalog
from store import Repo
from store.adql import translate
from store.exposure import DetectorInfo, VisitInfo
from store.formats.parquet import exclude_from_sql
from store.geom import Box

FIELDS = [(6.02, -72.08), (37.86, 6.98), (40.0, -34.45), (53.13, -28.10), (59.10, -48.73),
          (95.0, -25.0), (106.3, -10.5)]
BANDS = "ugrizy"
DET_DEG = 0.2262  # 4072 px * 0.2 arcsec
MJD0 = 60623.0

QUERIES = {
    "ccdvisit_cone": """
        SELECT ccdVisitId, visitId, detector, seeing, expMidpt, magLim FROM dp1.CcdVisit
        WHERE CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 53.13, -28.10, 1.0)) = 1
          AND band = 'r' AND seeing < 1.2 ORDER BY ccdVisitId""",
    "visit_ccdvisit_per_night": """
        SELECT CAST(floor(v.expMidptMJD - 0.5) AS INTEGER) AS night, count(DISTINCT v.visit) AS
               n_visits, count(*) AS n_detectors, median(c.seeing) AS seeing,
               max(c.magLim) AS depth
        FROM Visit AS v JOIN CcdVisit AS c ON c.visitId = v.visit
        GROUP BY night ORDER BY night""",
    "visit_ccdvisit_one_night": """
        SELECT v.visit, v.band, v.airmass, v.expMidpt, c.detector, c.seeing, c.effTime
        FROM Visit AS v JOIN CcdVisit AS c ON c.visitId = v.visit
        WHERE v.expMidptMJD BETWEEN $night + 0.5 AND $night + 1.5
        ORDER BY v.expMidpt, c.detector""",
    "source_count_cone": """
        SELECT visit, COUNT(*) AS n FROM dp1.Source
        WHERE CONTAINS(POINT('ICRS', coord_ra, coord_dec), CIRCLE('ICRS', 53.13, -28.10, 0.5)) = 1
        GROUP BY visit ORDER BY visit""",
    "source_full_scan": """
        SELECT visit, count(*) AS n FROM Source WHERE psfFlux > 20000 AND NOT pixelFlags_bad
        GROUP BY visit ORDER BY visit""",
}
SOURCE_QUERIES = ("source_count_cone", "source_full_scan")


def _visit_plan(n_visits: int, rng) -> list[dict]:
    visits = []
    per_night = max(1, n_visits // 40)
    for i in range(n_visits):
        ra0, dec0 = FIELDS[i % len(FIELDS)]
        band = BANDS[rng.integers(0, 6)]
        cosd = math.cos(math.radians(dec0))
        ra = (ra0 + rng.uniform(-0.3, 0.3) / cosd) % 360
        dec = dec0 + rng.uniform(-0.3, 0.3)
        mjd = MJD0 + i // per_night + 0.6 + 0.3 * (i % per_night) / per_night
        visits.append({"visit": 2024110800000 + i, "band": band, "ra": ra, "dec": dec,
                       "mjd": mjd, "seeing": rng.lognormal(math.log(1.1), 0.2),
                       "rot": rng.uniform(0, 360)})
    return visits


def _detector_boxes(v: dict, n_det: int):
    """Detector centres and corners (afw order) of a 3x3-ish grid around the boresight."""
    side = math.isqrt(n_det - 1) + 1
    cosd = math.cos(math.radians(v["dec"]))
    out = []
    for d in range(n_det):
        cx = (d % side - (side - 1) / 2) * DET_DEG
        cy = (d // side - (side - 1) / 2) * DET_DEG
        h = DET_DEG / 2
        xs = np.array([cx - h, cx + h, cx + h, cx - h])
        ys = np.array([cy - h, cy - h, cy + h, cy + h])
        out.append(((v["ra"] + cx / cosd, v["dec"] + cy),
                    ((v["ra"] + xs / cosd) % 360, v["dec"] + ys)))
    return out


def _summary_table(v: dict, n_det: int, rng) -> pa.Table:
    vi = VisitInfo(visit=v["visit"], instrument="LSSTComCam", band=v["band"],
                   physical_filter=f"{v['band']}_01", exposure_time=30.0, dark_time=30.5,
                   mjd=v["mjd"], mjd_begin=v["mjd"] - 15 / 86400, boresight_ra=v["ra"],
                   boresight_dec=v["dec"], rotation_angle=v["rot"], airmass=1.2)
    entries = []
    for d, ((ra, dec), (ra_c, dec_c)) in enumerate(_detector_boxes(v, n_det)):
        sigma = v["seeing"] / 0.2 / 2.3548 * rng.normal(1.0, 0.03)
        stats = ExposureSummaryStats(
            psfSigma=sigma, psfArea=4 * math.pi * sigma**2, pixelScale=0.2, ra=ra, dec=dec,
            raCorners=tuple(ra_c), decCorners=tuple(dec_c), expTime=30.0,
            zeroPoint=31.4 + rng.normal(0, 0.05), skyBg=600 + rng.normal(0, 30),
            skyNoise=25.0, meanVar=640.0, nPsfStar=int(rng.integers(20, 200)),
            psfStarDeltaE1Median=rng.normal(0, 0.002), starEMedian=0.03,
            magLim=24.5 - 2.5 * math.log10(v["seeing"]), effTime=25.0, astromOffsetMean=0.02)
        entries.append(DetectorSummary(DetectorInfo(d, f"S{d}"), Box(0, 0, 4072, 4000), stats,
                                       vi))
    table = VisitSummaryCatalog.from_detectors(entries).to_table()
    table = table.append_column("wcsCornerMaxOffset", pa.array([math.nan] * n_det))
    return exclude_from_sql(table, ["psf", "wcs", "ap_corr_map"])


def _source_table(v: dict, n: int, n_det: int, first_id: int, rng) -> pa.Table:
    boxes = _detector_boxes(v, n_det)
    det = rng.integers(0, n_det, n)
    centres = np.array([c for c, _ in boxes])
    cosd = math.cos(math.radians(v["dec"]))
    ra = (centres[det, 0] + rng.uniform(-0.5, 0.5, n) * DET_DEG / cosd) % 360
    dec = centres[det, 1] + rng.uniform(-0.5, 0.5, n) * DET_DEG
    flux = 10 ** rng.uniform(2.5, 5.5, n)
    err = np.sqrt(flux + 400.0)
    return pa.table({
        "coord_ra": ra, "coord_dec": dec, "x": rng.uniform(0, 4072, n),
        "y": rng.uniform(0, 4000, n), "xErr": rng.uniform(0.01, 0.3, n).astype(np.float32),
        "yErr": rng.uniform(0.01, 0.3, n).astype(np.float32), "ra": ra, "dec": dec,
        "calibFlux": flux * 1.02, "calibFluxErr": err, "psfFlux": flux, "psfFluxErr": err,
        "extendedness": (rng.random(n) < 0.3).astype(float),
        "pixelFlags_bad": rng.random(n) < 0.01, "pixelFlags_edge": rng.random(n) < 0.02,
        "pixelFlags_saturated": flux > 3e5, "visit": np.full(n, v["visit"], np.int64),
        "detector": det.astype(np.int32),
        "band": pa.array([v["band"]] * n).dictionary_encode().cast(pa.string()),
        "physical_filter": pa.array([f"{v['band']}_01"] * n),
        "sourceId": np.arange(first_id, first_id + n, dtype=np.int64),
    })


def build(root: Path, n_visits: int, n_det: int, n_sources: int, seed: int = 1) -> dict:
    """Create and fill the repository; returns build timings."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    repo = Repo.create(root)
    repo.insert_dimension_records("instrument", [{"instrument": "LSSTComCam", "pixel_scale": 0.2,
                                                  "n_detectors": n_det}])
    repo.insert_dimension_records("band", [{"band": b} for b in BANDS])
    repo.insert_dimension_records("physical_filter", [
        {"instrument": "LSSTComCam", "physical_filter": f"{b}_01", "band": b} for b in BANDS])
    repo.insert_dimension_records("detector", [
        {"instrument": "LSSTComCam", "detector": d, "name": f"S{d}", "x0": 0, "y0": 0,
         "width": 4072, "height": 4000} for d in range(n_det)])
    plan = _visit_plan(n_visits, rng)
    days = sorted({int(v["visit"]) // 100000 for v in plan})
    repo.insert_dimension_records("day_obs", [{"instrument": "LSSTComCam", "day_obs": d}
                                              for d in days])
    records = []
    for v in plan:
        corners = np.concatenate([np.column_stack(c) for _, c in _detector_boxes(v, n_det)])
        lo, hi = corners.min(axis=0), corners.max(axis=0)
        hull = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])
        records.append({
            "instrument": "LSSTComCam", "visit": v["visit"], "band": v["band"],
            "physical_filter": f"{v['band']}_01", "day_obs": int(v["visit"]) // 100000,
            "ra": v["ra"], "dec": v["dec"], "sky_rotation": v["rot"], "exposure_time": 30.0,
            "dark_time": 30.5, "obs_start_mjd": v["mjd"] - 15 / 86400, "exp_midpt_mjd": v["mjd"],
            "airmass": 1.0 + rng.uniform(0, 0.5), "zenith_distance": rng.uniform(10, 50),
            "azimuth": rng.uniform(0, 360), "altitude": rng.uniform(40, 80), "region": hull})
    repo.insert_dimension_records("visit", records)
    repo.register_dataset_type("visit_summary", ("instrument", "visit"), "ArrowTable")
    repo.register_dataset_type("source", ("instrument", "visit"), "ArrowTable")
    repo.register_run("dp1")
    t_dims = time.perf_counter() - t0
    per_visit = np.full(n_visits, n_sources // n_visits)
    per_visit[: n_sources - per_visit.sum()] += 1
    first = np.concatenate([[0], np.cumsum(per_visit)[:-1]])
    t_put = 0.0
    batch = 100
    for start in range(0, n_visits, batch):
        items = []
        for i in range(start, min(start + batch, n_visits)):
            v = plan[i]
            did = {"instrument": "LSSTComCam", "visit": v["visit"]}
            items.append((_summary_table(v, n_det, rng), "visit_summary", did))
            items.append((_source_table(v, int(per_visit[i]), n_det, int(first[i]), rng),
                          "source", did))
        t1 = time.perf_counter()
        repo.put_many(items, run="dp1", durable=False)
        t_put += time.perf_counter() - t1
    repo.register_chain("DP1", ["dp1"])
    repo.set_default_collection("DP1")
    repo.close()
    return {"dimension_records_s": round(t_dims, 2), "put_many_s": round(t_put, 2),
            "night": math.floor(plan[len(plan) // 2]["mjd"] - 0.5)}


def _time(fn, repeat: int) -> tuple[float, float, object]:
    fn()  # warm up (connection, caches)
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, min(times) * 1e3, result


def measure(root: Path, night: int, repeat: int, threads: int | None) -> dict:
    repo = Repo(root)
    bind = {"night": night}
    out: dict = {}
    files = sorted(str(p) for p in root.glob("dp1/source/**/*.parquet"))
    bare = duckdb.connect()
    if threads:
        bare.execute(f"SET threads = {threads}")
    for name, query in QUERIES.items():
        med, best, table = _time(lambda q=query: repo.sql(q, bind), repeat)
        entry = {"median_ms": round(med, 2), "min_ms": round(best, 2), "rows": table.num_rows}
        if name in SOURCE_QUERIES:
            sql = translate(query) if "dp1." in query else query
            sql = sql.replace("FROM Source", "FROM read_parquet($files)")
            pmed, pbest, ptable = _time(
                lambda s=sql: bare.execute(s, {"files": files}).to_arrow_table(), repeat)
            if ptable.to_pylist() != table.to_pylist():
                raise AssertionError(f"{name}: repository and Parquet answers differ")
            n_rows = repo.sql("SELECT count(*) AS n FROM Source").column("n")[0].as_py()
            entry.update(parquet_median_ms=round(pmed, 2), parquet_min_ms=round(pbest, 2),
                         rate_ratio=round(pmed / med, 3),
                         repo_rows_per_s=round(n_rows / (med / 1e3)),
                         parquet_rows_per_s=round(n_rows / (pmed / 1e3)))
        out[name] = entry
    # The same count when the default collection hides some datasets (semi-join path).
    if repo.register_run("hidden", exist_ok=True):
        one = repo.query_datasets("source", collections="dp1")[0]
        repo.put(repo.get(one), "source", one.data_id, run="hidden")
    repo.register_chain("DP1", ["dp1"])  # 'hidden' exists but is not in the default chain
    repo.set_default_collection("DP1")
    med, best, _ = _time(lambda: repo.sql(QUERIES["source_count_cone"]), repeat)
    out["source_count_cone_semi_join"] = {"median_ms": round(med, 2), "min_ms": round(best, 2)}
    repo.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--keep", type=Path, help="build in (or reuse) this directory")
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (bare side)")
    args = parser.parse_args()
    n_visits, n_det, n_sources = (20, 9, 20_000) if args.smoke else (1800, 9, 10_000_000)
    tmp = None
    root = args.keep
    if root is None:
        tmp = tempfile.mkdtemp(prefix="bench_visit_summary_")
        root = Path(tmp) / "repo"
    build_info: dict = {"reused": True}
    if not (root / "registry.duckdb").exists():
        build_info = build(root, n_visits, n_det, n_sources)
    else:
        rows = Repo(root).sql("SELECT min(expMidptMJD) AS m FROM Visit").column("m")[0].as_py()
        build_info["night"] = math.floor(rows - 0.5) + 20
    try:
        results = measure(root, build_info["night"], args.repeat, args.threads)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    limits_ok = all(results[q]["median_ms"] < 50 for q in QUERIES if q not in SOURCE_QUERIES)
    ratio_ok = all(results[q]["rate_ratio"] >= 0.8 for q in SOURCE_QUERIES)
    print(json.dumps({
        "sizes": {"visits": n_visits, "detector_rows": n_visits * n_det, "sources": n_sources},
        "build": build_info, "queries": results,
        "targets": {"small_queries_under_50_ms": limits_ok, "source_rate_ratio_ge_0.8": ratio_ok},
    }, indent=1))


if __name__ == "__main__":
    main()
