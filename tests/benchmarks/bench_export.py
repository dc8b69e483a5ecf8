"""Benchmark: data-release export of a DP1-sized catalog set (synthetic sources).

Run: ``python tests/benchmarks/bench_export.py [--sources N] [--per-dataset M] [--smoke]``.

Builds a repository with N sources (default 10 million, in datasets of M rows, one per
detector-visit, DP1-like columns), 1.5% of them as PSF stars, and the visit records;
then times

* ``sql_read_s``: ``Repo.sql("SELECT * FROM Source ORDER BY sourceId")`` to Arrow;
* ``pyarrow_write_s`` / ``pyarrow_write_zstd_s``: ``pyarrow.parquet.write_table`` of
  that table with pyarrow's defaults (snappy) and with the export's codec (zstd);
* ``export_s``: ``export_release`` of the catalogs and visits (Source, PsfStar, Visit):
  SQL read, plain Parquet, HATS partitioning and metadata, schema, MANIFEST checksums,
  with its stage timings; and ``export_with_datasets_s`` (plus the copy of the
  datasets behind the release, for ``drp import``);

and prints one JSON object with rows per second and the ratios
``export_over_pyarrow`` (export time / (SQL read + pyarrow zstd write): the same
job done with plain pyarrow; target <= 2) and ``export_over_pyarrow_write_only``.
Every stage also reports its CPU time (``*_cpu_s``, all threads of the process) and
``export_over_pyarrow_cpu`` compares those: on a shared machine wall times vary with
the load, CPU times much less.
``--smoke`` runs 60,000 sources (the test suite's size).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from store import Repo
from store.formats.parquet import with_units
from store.release import ExportConfig, export_release

_FLUXES = ("psfFlux", "calibFlux", "ap03Flux", "ap06Flux", "ap09Flux", "ap12Flux",
           "gaussianFlux")


def _source_table(rng, n: int, first_id: int, ra0: float, dec0: float) -> pa.Table:
    """DP1-like Source columns for one detector-visit (0.22 deg square)."""
    cols: dict[str, np.ndarray] = {"sourceId": np.arange(first_id, first_id + n, dtype=np.int64)}
    ra = ra0 + rng.uniform(-0.11, 0.11, n) / np.cos(np.radians(dec0))
    dec = dec0 + rng.uniform(-0.11, 0.11, n)
    cols |= {"coord_ra": ra, "coord_dec": dec, "ra": ra, "dec": dec,
             "raErr": rng.gamma(2, 1e-5, n).astype(np.float32),
             "decErr": rng.gamma(2, 1e-5, n).astype(np.float32),
             "x": rng.uniform(0, 4072, n), "y": rng.uniform(0, 4000, n),
             "xErr": rng.gamma(2, 0.05, n).astype(np.float32),
             "yErr": rng.gamma(2, 0.05, n).astype(np.float32)}
    base = rng.lognormal(7, 1.5, n)
    for name in _FLUXES:
        flux = base * rng.normal(1, 0.05, n)
        cols[name] = flux
        cols[name + "Err"] = np.sqrt(np.abs(flux) + 400.0)
        cols[name + "_flag"] = rng.random(n) < 0.02
    for name in ("ixx", "iyy"):
        cols[name] = rng.gamma(6, 1, n)
    cols["ixy"] = rng.normal(0, 0.5, n)
    cols["extendedness"] = (rng.random(n) < 0.4).astype(np.float64)
    for flag in ("pixelFlags_bad", "pixelFlags_cr", "pixelFlags_edge", "pixelFlags_saturated",
                 "calib_psf_used"):
        cols[flag] = rng.random(n) < (0.015 if flag == "calib_psf_used" else 0.01)
    units = {c: "nJy" for c in cols if c.endswith(("Flux", "FluxErr"))}
    units |= {"coord_ra": "deg", "coord_dec": "deg", "ra": "deg", "dec": "deg",
              "x": "pixel", "y": "pixel", "ixx": "pixel**2", "iyy": "pixel**2",
              "ixy": "pixel**2"}
    return with_units(pa.table(cols), units)


def build_repo(path: Path, n_sources: int, per_dataset: int, seed: int = 0) -> dict:
    """A repository with ``n_sources`` sources in detector-visit datasets; returns counts."""
    rng = np.random.default_rng(seed)
    repo = Repo.create(path)
    n_datasets = max(1, n_sources // per_dataset)
    n_det = 9
    n_visits = -(-n_datasets // n_det)
    repo.insert_dimension_records("instrument", [{"instrument": "Cam", "pixel_scale": 0.2,
                                                  "n_detectors": n_det}])
    repo.insert_dimension_records("band", [{"band": b} for b in "ugrizy"])
    repo.insert_dimension_records("physical_filter", [
        {"instrument": "Cam", "physical_filter": f"{b}_01", "band": b} for b in "ugrizy"])
    repo.insert_dimension_records("day_obs", [{"instrument": "Cam", "day_obs": 20241125}])
    repo.insert_dimension_records("detector", [
        {"instrument": "Cam", "detector": d, "name": f"R22_S{d // 3}{d % 3}", "x0": 0, "y0": 0,
         "width": 4072, "height": 4000} for d in range(n_det)])
    pointings = rng.uniform([52.0, -29.0], [54.0, -27.0], (n_visits, 2))
    repo.insert_dimension_records("visit", [
        {"instrument": "Cam", "visit": v, "band": "ugrizy"[v % 6],
         "physical_filter": f"{'ugrizy'[v % 6]}_01", "day_obs": 20241125,
         "ra": float(pointings[v, 0]), "dec": float(pointings[v, 1]), "exposure_time": 30.0,
         "exp_midpt_mjd": 60640.0 + v * 1e-3} for v in range(n_visits)])
    dims = ("instrument", "visit", "detector")
    repo.register_dataset_type("source", dims, "ArrowTable")
    repo.register_dataset_type("single_visit_star", dims, "ArrowTable")
    repo.register_run("DR1/run")
    batch: list = []
    made = 0
    for i in range(n_datasets):
        v, d = divmod(i, n_det)
        ra0 = pointings[v, 0] + 0.23 * (d % 3 - 1)
        dec0 = pointings[v, 1] + 0.23 * (d // 3 - 1)
        n = per_dataset if i < n_datasets - 1 else n_sources - per_dataset * (n_datasets - 1)
        table = _source_table(rng, n, made, ra0, dec0)
        made += n
        did = {"instrument": "Cam", "visit": v, "detector": d}
        batch.append((table, "source", did))
        batch.append((table.filter(table.column("calib_psf_used")), "single_visit_star", did))
        if len(batch) >= 200 or i == n_datasets - 1:
            repo.put_many(batch, run="DR1/run", durable=False)
            batch = []
    repo.register_chain("DR1", ["DR1/run"])
    repo.set_default_collection("DR1")
    repo.close()
    return {"n_sources": made, "n_datasets": n_datasets, "n_visits": n_visits}


def _timed(func, *args, **kwargs):
    """(result, wall seconds, CPU seconds of this process, all threads)."""
    t0, c0 = time.perf_counter(), time.process_time()
    result = func(*args, **kwargs)
    return result, round(time.perf_counter() - t0, 3), round(time.process_time() - c0, 3)


def run(n_sources: int, per_dataset: int, hats_max_rows: int, workdir: Path) -> dict:
    t0 = time.perf_counter()
    facts = build_repo(workdir / "repo", n_sources, per_dataset)
    out = {"setup_s": round(time.perf_counter() - t0, 2), **facts,
           "per_dataset": per_dataset, "hats_max_rows": hats_max_rows}
    # First imports of hats and astropy.table (about 1.5 s, once per process) are not timed.
    import astropy.table  # noqa: F401
    import hats.catalog
    import hats.io.parquet_metadata
    import hats.pixel_math.spatial_index  # noqa: F401

    with Repo(workdir / "repo") as repo:
        table, out["sql_read_s"], out["sql_read_cpu_s"] = _timed(
            repo.sql, 'SELECT * FROM "Source" ORDER BY "sourceId"', adql=False)
        out["n_columns"] = table.num_columns
        out["arrow_mb"] = round(table.nbytes / 1e6, 1)
        for key, codec in (("pyarrow_write", "snappy"), ("pyarrow_write_zstd", "zstd")):
            _, out[f"{key}_s"], out[f"{key}_cpu_s"] = _timed(
                pq.write_table, table, workdir / f"plain_{codec}.parquet", compression=codec)
        del table
        for key, with_datasets in (("export_s", False), ("export_with_datasets_s", True)):
            config = ExportConfig(what=("catalogs", "visits"), hats_max_rows=hats_max_rows,
                                  include_datasets=with_datasets, durable=False)
            target = workdir / f"release_{with_datasets}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # notices: CcdVisit, CoaddCells absent
                summary, out[key], out[key.replace("_s", "_cpu_s")] = _timed(
                    export_release, repo, target, collection="DR1", config=config)
            if not with_datasets:
                out["stages_s"] = {k: round(v, 3) for k, v in summary.timings.items()}
                out["tables"] = {t.name: {"rows": t.n_rows, "hats_partitions": t.hats_partitions}
                                 for t in summary.tables}
                out["release_mb"] = round(summary.n_bytes / 1e6, 1)
            shutil.rmtree(target)
    n = out["n_sources"]
    pyarrow_job = out["sql_read_s"] + out["pyarrow_write_zstd_s"]
    out["export_rows_per_s"] = round(n / out["export_s"])
    out["pyarrow_rows_per_s"] = round(n / out["pyarrow_write_zstd_s"])
    out["pyarrow_snappy_rows_per_s"] = round(n / out["pyarrow_write_s"])
    out["export_over_pyarrow"] = round(out["export_s"] / pyarrow_job, 2)
    out["export_over_pyarrow_write_only"] = round(out["export_s"] / out["pyarrow_write_zstd_s"],
                                                  2)
    out["export_over_pyarrow_cpu"] = round(
        out["export_cpu_s"] / (out["sql_read_cpu_s"] + out["pyarrow_write_zstd_cpu_s"]), 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=10_000_000)
    parser.add_argument("--per-dataset", type=int, default=10_000,
                        help="sources per detector-visit dataset (DP1: ~2,900)")
    parser.add_argument("--hats-max-rows", type=int, default=1_000_000)
    parser.add_argument("--smoke", action="store_true", help="60,000 sources")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="scratch directory (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sources, args.per_dataset, args.hats_max_rows = 60_000, 2_000, 20_000
    scratch = Path(tempfile.mkdtemp(dir=args.workdir))
    try:
        result = run(args.sources, args.per_dataset, args.hats_max_rows, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
