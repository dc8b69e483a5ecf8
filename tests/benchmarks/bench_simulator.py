"""Benchmark: time and peak memory of the survey simulator.

Run: ``python tests/benchmarks/bench_simulator.py detector [preset ...]`` or
``python tests/benchmarks/bench_simulator.py survey [preset] [n_workers] [n_visits]``.

``detector`` (default) renders one detector-visit of each preset in a fresh
subprocess and prints its wall time (render only, and render + FITS write to
memory) and the subprocess's peak resident memory.  ``survey`` simulates a
whole survey of the preset (default ``demo``) into a scratch repository and
prints the wall time, the peak memory of the parent and of the largest
worker, and the repository size.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = """
import io, json, resource, sys, time
from sample_data import PRESETS, plan_survey, render_exposure
from store.formats.fits import write_exposure
preset = sys.argv[1]
t0 = time.perf_counter()
plan = plan_survey(PRESETS[preset], seed=1)
t1 = time.perf_counter()
render_exposure(plan, 0, 0)  # warm-up: caches and imports
t2 = time.perf_counter()
r = render_exposure(plan, 1, 1)
t3 = time.perf_counter()
write_exposure(r.exposure, io.BytesIO())
t4 = time.perf_counter()
print(json.dumps({"preset": preset, "plan_s": t1 - t0, "first_render_s": t2 - t1,
                  "render_s": t3 - t2, "fits_write_s": t4 - t3,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def detector(presets=("demo", "comcam")) -> None:
    for preset in presets:
        out = subprocess.run([sys.executable, "-c", _CHILD, preset], capture_output=True,
                             text=True, check=True)
        print(out.stdout.strip())


def survey(preset: str = "demo", n_workers: int = 2, n_visits: int | None = None) -> None:
    from sample_data import simulate_survey
    from store import Repo

    tmp = Path(tempfile.mkdtemp())
    try:
        repo = Repo.create(tmp / "repo")
        t0 = time.perf_counter()
        result = simulate_survey(repo, preset, seed=1, n_workers=n_workers, n_visits=n_visits)
        wall = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in (tmp / "repo").rglob("*") if p.is_file())
        print(json.dumps({
            "preset": preset, "n_workers": n_workers, "images": result.n_images,
            "wall_s": wall, "seconds": result.seconds, "max_rss_mb": result.max_rss_mb,
            "self_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "repo_gb": size / 1e9,
        }))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "detector"
    if mode == "survey":
        survey(sys.argv[2] if len(sys.argv) > 2 else "demo",
               int(sys.argv[3]) if len(sys.argv) > 3 else 2,
               int(sys.argv[4]) if len(sys.argv) > 4 else None)
    else:
        detector(tuple(sys.argv[2:]) or ("demo", "comcam"))
