"""The data-release pipeline end to end on a small simulated survey.

One 768-pixel detector, three r-band visits with a dense star field (so every
detector calibrates), run through every task of the ``drp`` pipeline:
in-process, on a two-process pool and on a Dask LocalCluster (identical
checksums), killed with SIGKILL and resumed (same final state), and with a
corrupted input (that quantum fails, its dependents are blocked, the rest
completes).
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from processing.pipeline import run_pipeline
from processing.pipelines import get_pipeline
from processing.skymap import RingsSkyMap
from processing.skymap.register import register_skymap
from sample_data import PRESETS, simulate_survey
from store import Repo

TASKS_SINGLE_FRAME = ["calibrate", "consolidate_visit_summary", "update_visit_summary",
                      "reprocess_visit_image"]


def e2e_config():
    demo = PRESETS["demo"]
    return dataclasses.replace(
        demo, name="e2e",
        camera=dataclasses.replace(demo.camera, n_x=1, n_y=1, width=768, height=768),
        observing=dataclasses.replace(demo.observing, n_visits=3, bands=("r",)),
        sky=dataclasses.replace(demo.sky, star_density=14000.0),
        artefacts=dataclasses.replace(demo.artefacts, satellite_every=2, satellite_offset=1,
                                      ghost_visit=None, transient_visit=2))


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """A simulated repository (copied per test, never modified)."""
    root = tmp_path_factory.mktemp("e2e") / "repo"
    with Repo.create(root) as repo:
        simulate_survey(repo, preset=e2e_config(), seed=5, n_workers=1, durable=False)
        register_skymap(repo, "lsst_cells_v1", RingsSkyMap(120))
    return root


def copy_repo(survey: Path, tmp_path: Path) -> Repo:
    target = tmp_path / "repo"
    shutil.copytree(survey, target)
    return Repo(target)


def outputs(repo: Repo, run: str) -> list[tuple]:
    rows = repo.sql("SELECT dataset_type, data_id_key, checksum FROM main.dataset "
                    "WHERE run = $r ORDER BY 1, 2", {"r": run}).to_pylist()
    return [(r["dataset_type"], r["data_id_key"], r["checksum"]) for r in rows]


def test_drp_demo_runs_every_task_exports_and_reports(tmp_path):
    """`drp demo` on the small survey: every task, a valid release, a report, a clean verify."""
    from processing.demo import format_result, run_demo
    from store.release import verify_release

    result = run_demo(tmp_path / "demo", preset=e2e_config(), seed=5, jobs=1, echo=None)
    summary = result.summary
    pipeline = get_pipeline("drp")
    assert summary.ok, summary.format()
    assert set(summary.counts) == set(pipeline.task_names())
    for task, counts in summary.counts.items():
        assert counts["succeeded"] > 0, f"{task}: {dict(counts)}"
    repo = Repo(result.repo)
    produced = {t for t, _, _ in outputs(repo, summary.run)}
    expected = {c.dataset_type for step in pipeline.steps for c in step.task_class.outputs}
    assert expected <= produced, expected - produced
    assert repo.verify().ok
    # every output traces back to the quantum that made it
    orphans = repo.sql("SELECT count(*) AS n FROM main.dataset d WHERE d.run = $r "
                       "AND NOT EXISTS (SELECT 1 FROM main.quantum q, unnest(q.outputs) u(o) "
                       "WHERE u.o = d.id)", {"r": summary.run}).column("n")[0].as_py()
    assert orphans == 0
    assert result.release is not None and verify_release(result.release).ok
    assert result.report is not None and result.report.stat().st_size > 10_000
    text = format_result(result)
    assert "datasets produced" in text and "drp sql" in text
    assert [r["band"] for r in result.per_band] == ["r"]


def test_parallel_and_dask_runs_give_identical_outputs(survey, tmp_path):
    from distributed import LocalCluster

    repo = copy_repo(survey, tmp_path)
    pipeline = get_pipeline("drp").subset(TASKS_SINGLE_FRAME[:3])
    run_pipeline(repo, pipeline, inputs=["inputs"], output="one", run="one/run", jobs=1,
                 progress=False)
    run_pipeline(repo, pipeline, inputs=["inputs"], output="two", run="two/run", jobs=2,
                 progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        run_pipeline(repo, pipeline, inputs=["inputs"], output="dask", run="dask/run",
                     dask=cluster.scheduler_address, progress=False)
    one = outputs(repo, "one/run")
    assert one and one == outputs(repo, "two/run") == outputs(repo, "dask/run")


def test_sigkill_and_resume_reach_the_uninterrupted_state(survey, tmp_path):
    repo = copy_repo(survey, tmp_path)
    tasks = "calibrate,consolidate_visit_summary"
    reference = run_pipeline(repo, get_pipeline("drp").subset(tasks.split(",")),
                             inputs=["inputs"], output="ref", run="ref/run", jobs=1,
                             progress=False)
    repo.close()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = [sys.executable, "-m", "processing.cli", "run", str(repo.root), "--input", "inputs",
           "--output", "killed", "--tasks", tasks, "--jobs", "1"]
    rng = random.Random(3)
    resume: list[str] = []
    for _ in range(3):
        proc = subprocess.Popen(cmd + resume, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 6.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        resume = ["--resume"]
    final = subprocess.run(cmd + resume, env=env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stdout + final.stderr
    repo = Repo(repo.root)
    killed_run = repo.collection_runs("killed")[0]
    assert outputs(repo, killed_run) == outputs(repo, reference.run)
    report = repo.verify(repair=True)
    assert report.missing == [] and report.corrupt == []
    assert repo.verify().ok and repo.verify().orphans == []


def test_a_corrupt_input_fails_one_quantum_and_blocks_its_dependents(survey, tmp_path):
    repo = copy_repo(survey, tmp_path)
    refs = list(repo.query_datasets("post_isr_image", collections="raw"))
    victim = refs[1]
    path = repo.path_of(victim)
    path.write_bytes(path.read_bytes()[:5000])  # truncated FITS
    summary = run_pipeline(repo, get_pipeline("drp").subset(TASKS_SINGLE_FRAME),
                           inputs=["inputs"], output="fault", jobs=1, progress=False)
    assert not summary.ok
    assert summary.counts["calibrate"]["failed"] == 1
    assert summary.counts["calibrate"]["succeeded"] == len(refs) - 1
    assert summary.counts["reprocess_visit_image"]["blocked"] == 1
    assert summary.counts["reprocess_visit_image"]["succeeded"] == len(refs) - 1
    _, error = summary.failures[0]
    assert f"visit={victim.data_id['visit']}" in error and "cannot read" in error
    row = repo.sql("SELECT error, traceback FROM main.quantum WHERE status = 'failed'"
                   ).to_pylist()[0]
    assert "Traceback" in row["traceback"]
