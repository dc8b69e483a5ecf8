"""Registry benchmark, Rubin data butler (lsst-daf-butler) side.

Runs the shared workload of ``registry_workload.py`` against a fresh SQLite
butler repository and prints one JSON object of timings.  It must run with the
butler's own interpreter, never drp's venv::

    /work/butler-venv/bin/python tests/benchmarks/butler_workload.py \
        --n-visits 1000 --workdir /tmp/butler_bench_1000

API choices (kept as close as the butler allows to drp's bulk APIs):

* dimension records: one ``registry.insertDimensionData(element, *records)``
  call per element (all records of the element in one call / transaction);
  regions are ``lsst.sphgeom.ConvexPolygon`` built from the workload corners,
  visit timespans are built from ``exp_midpt_mjd`` +- exposure_time / 2 (TAI).
* tables: storage class ``ArrowAstropy`` (ParquetFormatter); there is no bulk
  put in the butler, so 2,000 ``butler.put`` calls (one registry commit
  each); ``put_tables_txn_s`` repeats them inside one ``butler.transaction()``
  into another RUN, the closest thing to a bulk put.
* FITS: no FITS formatter exists without ``lsst.afw`` / ``lsst.obs.base``, so
  the files are registered with storage class ``NumpyArray`` and a 20-line
  astropy-based ``FormatterV2`` defined here (``AstropyFitsImageFormatter``);
  the ingest is a single ``butler.ingest(*FileDataset, transfer="direct")``.
* queries: ``butler.query_datasets`` (the current query system) with
  ``limit=None, explain=False``; spatial predicates are
  ``visit_detector_region.region OVERLAPS POINT(ra, dec)`` (bind ra, dec) and
  ``... OVERLAPS circle`` with a bound ``sphgeom.Circle``: the where-string
  ``CIRCLE(ra, dec, r)`` of this version makes a circle of radius 2 r, so it is
  only reported on the side (``spatial_circle_string_*``).  The butler never
  runs SQLite ``ANALYZE``; the queries are re-timed after one
  (``*_analyzed``, ``sqlite_analyze_s``) because the planner's choice changes.
* export/import: ``butler.export(transfer="copy")`` + ``saveDatasets`` with
  default elements (all dimension records of the data IDs), then
  ``Butler.makeRepo`` + ``import_(transfer="copy")``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from lsst.daf.butler import (
    Butler,
    DataCoordinate,
    DatasetRef,
    DatasetType,
    FileDataset,
    FormatterV2,
    Timespan,
)
from lsst.sphgeom import Angle, Circle, ConvexPolygon, LonLat, UnitVector3d

sys.path.insert(0, str(Path(__file__).resolve().parent))
from registry_workload import (
    BANDS,
    INSTRUMENT,
    N_DETECTORS,
    N_FITS,
    N_REPEAT,
    N_TABLES,
    QUERY_CIRCLE,
    QUERY_POINT,
    Workload,
    dataset_data_ids,
    make_workload,
    table_payload,
)

__all__ = ["AstropyFitsImageFormatter", "main", "run"]

TABLE_RUN = "bench/tables"
TABLE_TXN_RUN = "bench/tables_txn"
RAW_RUN = "bench/raw"
N_GETS = 100
WHERE = "visit.exposure_time > 20 AND band = 'r'"


class AstropyFitsImageFormatter(FormatterV2):
    """Read the primary HDU of a FITS file into a numpy array (no afw needed)."""

    default_extension = ".fits"
    supported_extensions = frozenset({".fits", ".fit", ".fits.gz"})
    can_read_from_local_file = True

    def read_from_local_file(self, path: str, component: str | None = None,
                             expected_size: int = -1) -> Any:
        from astropy.io import fits

        with fits.open(path, memmap=False) as hdus:
            return np.asarray(hdus[0].data)


def _polygon(corners: np.ndarray) -> ConvexPolygon:
    return ConvexPolygon([UnitVector3d(LonLat.fromDegrees(float(ra), float(dec)))
                          for ra, dec in corners])


def _median_ms(fn) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(N_REPEAT):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, result


def _insert_dimensions(butler: Butler, wl: Workload) -> dict[str, float]:
    """Insert all dimension records; returns timings (s), record building included."""
    from astropy.time import Time

    registry = butler.registry
    start = time.perf_counter()
    n = wl.n_visits
    instrument = {"name": INSTRUMENT, "visit_max": 1 << 30, "exposure_max": 1 << 30,
                  "detector_max": 1000, "visit_system": 0, "class_name": "bench.BenchCam"}
    filters = [{"instrument": INSTRUMENT, "name": f"{b}_bench", "band": b} for b in BANDS]
    detectors = [{"instrument": INSTRUMENT, "id": d["detector"], "full_name": d["name"],
                  "name_in_raft": d["name"][4:], "raft": d["name"][:3], "purpose": "SCIENCE"}
                 for d in wl.detectors]
    days = [{"instrument": INSTRUMENT, "id": day} for day in wl.day_obs]
    mid = np.array([v["exp_midpt_mjd"] for v in wl.visits])
    half = np.array([v["exposure_time"] for v in wl.visits]) / 2 / 86400.0
    t0 = Time(mid - half, format="mjd", scale="tai")
    t1 = Time(mid + half, format="mjd", scale="tai")
    visits = [{"instrument": INSTRUMENT, "id": v["visit"], "name": f"BC_{v['visit']:07d}",
               "physical_filter": v["physical_filter"], "day_obs": v["day_obs"],
               "seq_num": v["visit"] % 100, "exposure_time": v["exposure_time"],
               "target_name": "bench", "observation_reason": "science", "science_program": "bench",
               "azimuth": 0.0, "zenith_angle": float(np.degrees(np.arccos(1.0 / v["airmass"]))),
               "region": _polygon(v["corners"]), "timespan": Timespan(t0[i], t1[i])}
              for i, v in enumerate(wl.visits)]
    vdr = [{"instrument": INSTRUMENT, "visit": r["visit"], "detector": r["detector"],
            "region": _polygon(r["corners"])} for r in wl.detector_regions]
    built = time.perf_counter()
    registry.insertDimensionData("instrument", instrument)
    registry.insertDimensionData("physical_filter", *filters)
    registry.insertDimensionData("detector", *detectors)
    registry.insertDimensionData("day_obs", *days)
    registry.insertDimensionData("visit", *visits)
    visits_done = time.perf_counter()
    registry.insertDimensionData("visit_detector_region", *vdr)
    end = time.perf_counter()
    assert len(vdr) == n * N_DETECTORS
    return {"insert_dimensions_s": end - start, "insert_dimensions_build_s": built - start,
            "insert_visits_s": visits_done - built, "insert_visit_detector_regions_s": end - visits_done}


def _time_queries(butler: Butler, suffix: str = "") -> dict[str, float | int]:
    """Median times (ms) and result counts of the where and spatial queries."""
    out: dict[str, float | int] = {}

    def timed(key: str, where: str, bind: dict[str, Any] | None = None) -> None:
        ms, refs = _median_ms(lambda: butler.query_datasets(
            "src", TABLE_RUN, where=where, bind=bind, limit=None, explain=False))
        out[f"{key}_ms{suffix}"], out[f"{key}_n{suffix}"] = ms, len(refs)

    timed("where_query", WHERE)
    out[f"where_n{suffix}"] = out.pop(f"where_query_n{suffix}")
    ra, dec = QUERY_POINT
    timed("spatial_point", "visit_detector_region.region OVERLAPS POINT(ra, dec)",
          {"ra": ra, "dec": dec})
    cra, cdec, rad = QUERY_CIRCLE
    circle = Circle(UnitVector3d(LonLat.fromDegrees(cra, cdec)), Angle.fromDegrees(rad))
    timed("spatial_circle", "visit_detector_region.region OVERLAPS circle", {"circle": circle})
    # The where-string CIRCLE(ra, dec, r) of this butler version builds
    # sphgeom.Circle(centre, Angle(2 r)), i.e. twice the radius; timed and
    # counted separately so the discrepancy is visible.
    timed("spatial_circle_string", "visit_detector_region.region OVERLAPS CIRCLE(ra, dec, r)",
          {"ra": cra, "dec": cdec, "r": rad})
    return out


def _expected_spatial(wl: Workload, keys: set[tuple[int, int]]) -> tuple[int, int]:
    """Brute-force sphgeom counts of the put datasets hit by the point / circle."""
    point = UnitVector3d(LonLat.fromDegrees(*QUERY_POINT))
    circle = Circle(UnitVector3d(LonLat.fromDegrees(*QUERY_CIRCLE[:2])),
                    Angle.fromDegrees(QUERY_CIRCLE[2]))
    n_point = n_circle = 0
    for r in wl.detector_regions:
        if (r["visit"], r["detector"]) not in keys:
            continue
        poly = _polygon(r["corners"])
        n_point += bool(poly.contains(point))
        n_circle += bool(poly.overlaps(circle))
    return n_point, n_circle


def _set_sqlite_synchronous(mode: str) -> None:
    # Every SQLAlchemy connection the butler opens gets the pragma; the butler
    # itself leaves SQLite at its defaults (rollback journal, synchronous=FULL).
    import sqlalchemy

    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        if "sqlite" in type(dbapi_connection).__module__:
            dbapi_connection.execute(f"PRAGMA synchronous = {mode}")

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", _on_connect)


def run(n_visits: int, workdir: Path, sqlite_synchronous: str | None = None,
        skip_txn: bool = False, skip_analyze: bool = False) -> dict[str, Any]:
    """Run every benchmark step; a failing step gives ``None`` and a note.

    Parameters
    ----------
    n_visits : int
        Number of visits of the workload (30 detector regions each).
    workdir : pathlib.Path
        Scratch directory; deleted and recreated.
    sqlite_synchronous : str, optional
        ``PRAGMA synchronous`` value forced on the registry's SQLite
        connections (``None``: butler default, i.e. SQLite's FULL).
    skip_txn : bool
        Skip the extra timing of the 2,000 puts inside one transaction.
    skip_analyze : bool
        Skip the extra re-timing of the queries after SQLite ``ANALYZE``.

    Returns
    -------
    dict
        Timings (s or ms as named), counts, versions and notes.
    """
    import astropy
    import lsst.daf.butler
    from astropy.io import fits
    from astropy.table import Table

    out: dict[str, Any] = {"butler_version": getattr(lsst.daf.butler, "__version__", None),
                           "astropy_version": astropy.__version__, "n_visits": n_visits,
                           "registry": "sqlite",
                           "sqlite_synchronous": sqlite_synchronous or "default (FULL)", "notes": []}
    if sqlite_synchronous is not None:
        _set_sqlite_synchronous(sqlite_synchronous)
    notes: list[str] = out["notes"]
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    repo = workdir / "repo"
    wl = make_workload(n_visits)
    Butler.makeRepo(str(repo))
    butler = Butler.from_config(str(repo), writeable=True)

    def step(name: str, fn) -> Any:
        try:
            return fn()
        except Exception as exc:  # a broken step must not hide the others
            notes.append(f"{name}: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}")
            return None

    # 1. dimension records
    timings = step("insert_dimensions", lambda: _insert_dimensions(butler, wl))
    out.update(timings or {"insert_dimensions_s": None})
    print(f"[butler] dimensions: {timings}", file=sys.stderr, flush=True)

    # 2. 2,000 small tables put
    table_ids = dataset_data_ids(n_visits, N_TABLES)
    payloads = [Table(table_payload(i)) for i in range(len(table_ids))]  # untimed: in-memory type

    def put_tables() -> list[DatasetRef]:
        start = time.perf_counter()
        butler.registry.registerDatasetType(
            DatasetType("src", ["instrument", "visit", "detector"], "ArrowAstropy",
                        universe=butler.dimensions))
        butler.collections.register(TABLE_RUN)
        refs, each = [], []
        for tab, (v, d) in zip(payloads, table_ids, strict=True):
            t0 = time.perf_counter()
            refs.append(butler.put(tab, "src", instrument=INSTRUMENT, visit=v, detector=d,
                                   run=TABLE_RUN))
            each.append(time.perf_counter() - t0)
        out["put_tables_s"] = time.perf_counter() - start
        # per-put percentiles: less sensitive than the total to bursts of load on a shared machine
        out["put_median_ms"], out["put_p90_ms"] = (float(x) * 1e3 for x in np.percentile(each, [50, 90]))
        return refs

    src_refs = step("put_tables", put_tables) or []
    out.setdefault("put_tables_s", None)

    def put_tables_txn() -> None:
        # Same puts inside one butler transaction (one SQLite commit instead
        # of 2,000): the closest the butler has to a bulk put.
        butler.collections.register(TABLE_TXN_RUN)
        start = time.perf_counter()
        with butler.transaction():
            for tab, (v, d) in zip(payloads, table_ids, strict=True):
                butler.put(tab, "src", instrument=INSTRUMENT, visit=v, detector=d, run=TABLE_TXN_RUN)
        out["put_tables_txn_s"] = time.perf_counter() - start

    if not skip_txn:
        step("put_tables_txn", put_tables_txn)
    out.setdefault("put_tables_txn_s", None)
    print(f"[butler] put: {out['put_tables_s']}", file=sys.stderr, flush=True)

    # 3. 3,000 FITS files ingested in place
    def ingest_fits() -> int:
        fits_dir = workdir / "fits"
        fits_dir.mkdir()
        fits_ids = dataset_data_ids(n_visits, N_FITS, offset=7)
        rng = np.random.default_rng(7)
        paths = []
        for i, (v, d) in enumerate(fits_ids):  # untimed pre-write
            path = fits_dir / f"post_isr_{i:05d}_{v}_{d}.fits"
            fits.PrimaryHDU(rng.normal(0, 1, (64, 64)).astype(np.float32)).writeto(path)
            paths.append(path)
        formatter = _formatter_class()
        start = time.perf_counter()
        dtype = DatasetType("post_isr_image", ["instrument", "visit", "detector"], "NumpyArray",
                            universe=butler.dimensions)
        butler.registry.registerDatasetType(dtype)
        butler.collections.register(RAW_RUN)
        datasets = [
            FileDataset(path=str(p), formatter=formatter, refs=[DatasetRef(
                dtype, DataCoordinate.standardize(instrument=INSTRUMENT, visit=v, detector=d,
                                                  universe=butler.dimensions), run=RAW_RUN)])
            for p, (v, d) in zip(paths, fits_ids, strict=True)]
        butler.ingest(*datasets, transfer="direct")
        out["ingest_fits_s"] = time.perf_counter() - start
        check = butler.get("post_isr_image", instrument=INSTRUMENT, visit=fits_ids[0][0],
                           detector=fits_ids[0][1], collections=RAW_RUN)
        assert check.shape == (64, 64) and check.dtype.kind == "f" and check.dtype.itemsize == 4
        return len(datasets)

    out["ingest_n"] = step("ingest_fits", ingest_fits)
    out.setdefault("ingest_fits_s", None)
    print(f"[butler] ingest: {out['ingest_fits_s']}", file=sys.stderr, flush=True)

    # 4. where query, 5. spatial queries
    def queries() -> None:
        out.update(_time_queries(butler))
        by_visit = {v["visit"]: v for v in wl.visits}
        out["where_n_expected"] = sum(
            1 for v, _ in table_ids if by_visit[v]["exposure_time"] > 20 and by_visit[v]["band"] == "r")
        out["spatial_point_n_expected"], out["spatial_circle_n_expected"] = _expected_spatial(
            wl, set(table_ids))

    step("queries", queries)

    # 6. gets
    def gets() -> None:
        pick = src_refs[:: max(len(src_refs) // N_GETS, 1)][:N_GETS]
        start = time.perf_counter()
        for ref in pick:
            butler.get(ref)
        out["get_by_ref_ms"] = (time.perf_counter() - start) / len(pick) * 1e3
        start = time.perf_counter()
        for ref in pick:
            tab = butler.get("src", instrument=INSTRUMENT, visit=ref.dataId["visit"],
                             detector=ref.dataId["detector"], collections=TABLE_RUN)
        out["get_by_dataid_ms"] = (time.perf_counter() - start) / len(pick) * 1e3
        assert len(tab) == 10
        out["get_n"] = len(pick)

    step("gets", gets)

    # 7. export band-r subset + import into a new repo
    def export_import() -> None:
        export_dir, new_repo = workdir / "export", workdir / "repo_imported"
        export_dir.mkdir()
        start = time.perf_counter()
        refs = butler.query_datasets("src", TABLE_RUN, where="band = 'r'", limit=None,
                                     with_dimension_records=True)
        with butler.export(directory=str(export_dir), filename="export.yaml", transfer="copy") as ex:
            ex.saveDatasets(refs)
        Butler.makeRepo(str(new_repo))
        target = Butler.from_config(str(new_repo), writeable=True)
        target.import_(directory=str(export_dir), filename="export.yaml", transfer="copy")
        out["export_import_s"] = time.perf_counter() - start
        out["export_n"] = len(refs)
        imported = target.query_datasets("src", TABLE_RUN, limit=None)
        assert len(imported) == len(refs)
        target.get(imported[0])

    step("export_import", export_import)

    # Extra: the butler never runs ANALYZE, so SQLite plans the spatial join
    # without statistics (it scans the skypix overlap table).  Re-time the
    # queries after an ANALYZE, with a new Butler so fresh connections load
    # the statistics.
    def analyzed() -> None:
        import sqlite3

        start = time.perf_counter()
        with sqlite3.connect(repo / "gen3.sqlite3") as con:
            con.execute("ANALYZE")
        out["sqlite_analyze_s"] = time.perf_counter() - start
        out.update(_time_queries(Butler.from_config(str(repo)), suffix="_analyzed"))

    if not skip_analyze:
        step("analyzed", analyzed)
    for key in ("where_query_ms", "where_n", "spatial_point_ms", "spatial_point_n", "spatial_circle_ms",
                "spatial_circle_n", "get_by_ref_ms", "get_by_dataid_ms", "export_import_s", "export_n"):
        out.setdefault(key, None)
    return out


def _formatter_class() -> type[FormatterV2]:
    # The datastore records the formatter by import path; "__main__.X" would
    # not resolve in another process, so use the class from the named module.
    if __name__ == "__main__":
        return importlib.import_module("butler_workload").AstropyFitsImageFormatter
    return AstropyFitsImageFormatter


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: print the timings as one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-visits", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--sqlite-synchronous", choices=("FULL", "NORMAL", "OFF"), default=None,
                        help="force PRAGMA synchronous on the registry (default: butler's, i.e. FULL)")
    parser.add_argument("--skip-txn-put", action="store_true",
                        help="skip the extra 2,000 puts inside one transaction")
    parser.add_argument("--skip-analyze", action="store_true",
                        help="skip re-timing the queries after SQLite ANALYZE")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    result = run(args.n_visits, args.workdir, args.sqlite_synchronous, args.skip_txn_put,
                 args.skip_analyze)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
