"""Registry benchmark: drp's store beside the Rubin butler on the same workload.

Usage::

    python tests/benchmarks/bench_registry.py --n 100 1000 10000 [--butler-python PATH]

Prints one JSON document: per N, the drp figures, the butler figures (run in
its own virtual environment, default ``/work/butler-venv/bin/python`` or
``$DRP_BUTLER_PYTHON``) and the ratios butler/drp (higher is better for drp).
``--smoke`` runs a tiny N without the butler (used by the test suite).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE))

from registry_workload import (  # noqa: E402
    BANDS,
    INSTRUMENT,
    N_FITS,
    N_REPEAT,
    N_TABLES,
    QUERY_CIRCLE,
    QUERY_POINT,
    dataset_data_ids,
    make_workload,
    table_payload,
)

from store import Circle, Exposure, Repo  # noqa: E402
from store.formats.fits import write_exposure  # noqa: E402


def _median_ms(func, repeat: int = N_REPEAT) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _region_column(corners: np.ndarray) -> pa.Array:
    """An Arrow list<fixed_size_list<double, 2>> column from ``(n, k, 2)`` corners."""
    n, k, _ = corners.shape
    points = pa.FixedSizeListArray.from_arrays(pa.array(corners.ravel()), 2)
    return pa.ListArray.from_arrays(pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)), points)


def run_drp(n_visits: int, workdir: Path, n_tables: int = N_TABLES, n_fits: int = N_FITS
            ) -> dict:
    """Run the workload against a fresh drp repository; returns the figures."""
    wl = make_workload(n_visits)
    out: dict = {"n_visits": n_visits}
    fits_dir = workdir / "fits"
    fits_dir.mkdir(parents=True)
    fits_ids = dataset_data_ids(n_visits, n_fits, offset=7)
    for i in range(n_fits):  # untimed: the files exist before ingest
        with open(fits_dir / f"img{i}.fits", "wb") as f:
            write_exposure(Exposure(np.zeros((64, 64), np.float32)), f)
    repo = Repo.create(workdir / "repo")

    t0 = time.perf_counter()
    repo.insert_dimension_records("instrument", [{"instrument": INSTRUMENT, "n_detectors": 30}])
    repo.insert_dimension_records("band", [{"band": b} for b in BANDS])
    repo.insert_dimension_records("physical_filter", [
        {"instrument": INSTRUMENT, "physical_filter": f"{b}_bench", "band": b} for b in BANDS])
    repo.insert_dimension_records("detector", [
        {"instrument": INSTRUMENT, **d} for d in wl.detectors])
    repo.insert_dimension_records("day_obs", [
        {"instrument": INSTRUMENT, "day_obs": d} for d in wl.day_obs])
    # Bulk inserts take columnar input (Arrow here; polars works too).
    visits = {k: [v[k] for v in wl.visits] for k in wl.visits[0] if k != "corners"}
    visits["instrument"] = [INSTRUMENT] * n_visits
    visits["region"] = _region_column(np.stack([v["corners"] for v in wl.visits]))
    repo.insert_dimension_records("visit", pa.table(visits))
    regions = wl.detector_regions
    repo.insert_dimension_records("visit_detector_region", pa.table({
        "instrument": pa.array([INSTRUMENT] * len(regions)),
        "visit": pa.array([r["visit"] for r in regions], pa.int64()),
        "detector": pa.array([r["detector"] for r in regions], pa.int32()),
        "region": _region_column(np.stack([r["corners"] for r in regions]))}))
    out["insert_dimensions_s"] = time.perf_counter() - t0

    repo.register_dataset_type("src", ("instrument", "visit", "detector"), "ArrowTable")
    repo.register_dataset_type("post_isr_image", ("instrument", "visit", "detector"), "Exposure")
    repo.register_run("bench/tables")
    repo.register_run("bench/raw")
    table_ids = dataset_data_ids(n_visits, n_tables)
    # The in-memory tables are built untimed, as on the butler side.
    items = [(pa.table(table_payload(i)), "src",
              {"instrument": INSTRUMENT, "visit": v, "detector": d})
             for i, (v, d) in enumerate(table_ids)]
    t0 = time.perf_counter()
    repo.put_many(items, run="bench/tables")
    out["put_tables_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    repo.ingest([fits_dir / f"img{i}.fits" for i in range(n_fits)], "post_isr_image",
                [{"instrument": INSTRUMENT, "visit": v, "detector": d} for v, d in fits_ids],
                run="bench/raw", transfer="direct")
    out["ingest_fits_s"] = time.perf_counter() - t0

    where = "visit.exposure_time > 20 AND band = 'r'"
    with repo._manager.read():  # hold the shared read connection for the query burst
        out["where_n"] = len(repo.query_datasets("src", where, collections="bench/tables"))
        out["where_query_ms"] = _median_ms(
            lambda: repo.query_datasets("src", where, collections="bench/tables"))
        t0 = time.perf_counter()  # the first spatial query also builds the region index
        out["spatial_point_n"] = len(repo.query_datasets(
            "src", collections="bench/tables", region=QUERY_POINT))
        out["spatial_first_ms"] = (time.perf_counter() - t0) * 1e3
        out["spatial_point_ms"] = _median_ms(lambda: repo.query_datasets(
            "src", collections="bench/tables", region=QUERY_POINT))
        circle = Circle(*QUERY_CIRCLE)
        out["spatial_circle_n"] = len(repo.query_datasets(
            "src", collections="bench/tables", region=circle))
        out["spatial_circle_ms"] = _median_ms(lambda: repo.query_datasets(
            "src", collections="bench/tables", region=circle))
        refs = list(repo.query_datasets("src", collections="bench/tables"))[:100]
        t0 = time.perf_counter()
        for ref in refs:
            repo.get(ref)
        out["get_by_ref_ms"] = (time.perf_counter() - t0) / len(refs) * 1e3
        t0 = time.perf_counter()
        for ref in refs:
            repo.get("src", ref.data_id, collections="bench/tables")
        out["get_by_dataid_ms"] = (time.perf_counter() - t0) / len(refs) * 1e3

    t0 = time.perf_counter()
    subset = repo.query_datasets("src", "band = 'r'", collections="bench/tables")
    repo.export_datasets(subset, workdir / "export")
    with Repo.create(workdir / "imported") as other:
        out["export_n"] = other.import_datasets(workdir / "export")
    out["export_import_s"] = time.perf_counter() - t0
    repo.close()
    return out


def run_butler(python: str, n_visits: int, workdir: Path) -> dict | None:
    script = HERE / "butler_workload.py"
    if not (Path(python).exists() and script.exists()):
        return None
    proc = subprocess.run([python, str(script), "--n-visits", str(n_visits), "--workdir",
                           str(workdir)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    text = proc.stdout.strip()
    return json.loads(text[text.index("{"):])  # the script prints one (indented) JSON object


RATIO_KEYS = ("insert_dimensions_s", "put_tables_s", "ingest_fits_s", "where_query_ms",
              "spatial_point_ms", "spatial_circle_ms", "get_by_ref_ms", "get_by_dataid_ms",
              "export_import_s")


def sql_first_row_s(repo_path: Path) -> float:
    """Wall time of `drp sql` from process start to its first printed row (median of 3)."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "processing.cli", "sql", str(repo_path),
                                 "SELECT visit, band FROM visit LIMIT 1"],
                                stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()
        times.append(time.perf_counter() - t0)
        proc.wait()
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--butler-python", default=os.environ.get(
        "DRP_BUTLER_PYTHON", "/work/butler-venv/bin/python"))
    parser.add_argument("--no-butler", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny run, no butler")
    args = parser.parse_args(argv)
    results = []
    sizes = [20] if args.smoke else args.n
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            kwargs = {"n_tables": 50, "n_fits": 50} if args.smoke else {}
            drp = run_drp(n, tmp / "drp", **kwargs)
            drp["drp_sql_first_row_s"] = sql_first_row_s(tmp / "drp" / "repo")
            entry = {"n_visits": n, "drp": drp}
            if not (args.smoke or args.no_butler):
                butler = run_butler(args.butler_python, n, tmp / "butler")
                entry["butler"] = butler
                if butler and "error" not in butler:
                    entry["ratio_butler_over_drp"] = {
                        k: round(butler[k] / drp[k], 2) for k in RATIO_KEYS
                        if butler.get(k) and drp.get(k)}
        results.append(entry)
        print(json.dumps(entry), file=sys.stderr)
    print(json.dumps({"benchmark": "registry", "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
