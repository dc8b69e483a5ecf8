"""Pipeline executor benchmark: driver overhead per quantum, and scaling with workers.

Usage::

    python tests/benchmarks/bench_pipeline.py [--smoke]

* Driver overhead: a pipeline of trivial quanta (one JSON read and write each)
  run in-process; ``(wall time - time inside the quanta) / n`` is what the
  driver spends per quantum building, dispatching, registering and recording
  provenance.
* Scaling: ``calibrate`` on a small simulated survey (6 detector-visits) with
  ``--jobs 1`` and ``--jobs 2``; the speed-up (target >= 1.8 on 2 cores).

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))


def driver_overhead(root: Path, n: int) -> dict:
    from processing.pipeline import Pipeline, PipelineStep, run_pipeline
    from store import Repo
    from tests._toy_tasks import DoubleTask
    from tests.conftest import populate_dimensions

    repo = Repo.create(root)
    populate_dimensions(repo, n_visits=max(n // 10, 1), n_detectors=10)
    repo.register_dataset_type("toy_input", ("instrument", "visit", "detector"), "StructuredData")
    repo.register_run("inputs")
    repo.put_many([({"v": float(i)}, "toy_input",
                    {"instrument": "Cam", "visit": i // 10, "detector": i % 10})
                   for i in range(n)], run="inputs", durable=False)
    pipeline = Pipeline("toy", (PipelineStep(DoubleTask),))
    t0 = time.perf_counter()
    summary = run_pipeline(repo, pipeline, inputs=["inputs"], output="bench", jobs=1,
                           progress=False)
    wall = time.perf_counter() - t0
    inside = repo.sql("SELECT sum(epoch(end_time) - epoch(start_time)) AS s FROM main.quantum"
                      ).column("s")[0].as_py()
    return {"n_quanta": summary.total("succeeded"), "wall_s": round(wall, 3),
            "inside_quanta_s": round(inside, 3),
            "driver_overhead_ms_per_quantum": round((wall - inside) / n * 1e3, 2)}


def scaling(root: Path, n_visits: int) -> dict:
    from processing.pipeline import run_pipeline
    from processing.pipelines import get_pipeline
    from sample_data import PRESETS, simulate_survey
    from store import Repo

    demo = PRESETS["demo"]
    config = dataclasses.replace(
        demo, name="bench-pipeline",
        camera=dataclasses.replace(demo.camera, n_x=2, n_y=1, width=1024, height=1024),
        observing=dataclasses.replace(demo.observing, n_visits=n_visits, bands=("r",)),
        sky=dataclasses.replace(demo.sky, star_density=8000.0))
    repo = Repo.create(root)
    simulate_survey(repo, preset=config, seed=2, n_workers=1, durable=False)
    pipeline = get_pipeline("drp").subset(["calibrate"])
    out = {}
    for jobs in (1, 2):
        t0 = time.perf_counter()
        summary = run_pipeline(repo, pipeline, inputs=["inputs"], output=f"jobs{jobs}",
                               jobs=jobs, progress=False)
        wall = time.perf_counter() - t0
        n = summary.total("succeeded")
        out[f"jobs{jobs}"] = {"n_quanta": n, "wall_s": round(wall, 2),
                              "quanta_per_s": round(n / wall, 3)}
    out["speedup_2_over_1"] = round(out["jobs1"]["wall_s"] / out["jobs2"]["wall_s"], 2)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("DRP_LOCK_TIMEOUT", "60")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small = driver_overhead(tmp / "toy_small", 20 if args.smoke else 200)
        large = driver_overhead(tmp / "toy_large", 60 if args.smoke else 800)
        marginal = ((large["wall_s"] - large["inside_quanta_s"])
                    - (small["wall_s"] - small["inside_quanta_s"])) / (
                        large["n_quanta"] - small["n_quanta"])
        result = {"benchmark": "pipeline", "cpus": os.cpu_count(),
                  "overhead_small": small, "overhead_large": large,
                  # fixed costs (collections, dataset types, default collection) cancel out
                  "driver_overhead_ms_per_extra_quantum": round(marginal * 1e3, 2)}
        if not args.smoke:
            result["scaling_calibrate"] = scaling(tmp / "survey", 3)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
