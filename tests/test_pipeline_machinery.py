"""The pipeline executor on toy tasks: staging, parallel determinism, failures, resume."""

from __future__ import annotations

import json

import pytest

from processing.pipeline import run_pipeline
from store import CollectionError, DrpError

from ._toy_tasks import TOY
from .conftest import populate_dimensions


@pytest.fixture
def toy_repo(repo):
    populate_dimensions(repo, n_visits=3, n_detectors=4)
    repo.register_dataset_type("toy_input", ("instrument", "visit", "detector"), "StructuredData")
    repo.register_run("inputs")
    repo.put_many([({"v": float(v * 10 + d)}, "toy_input",
                    {"instrument": "Cam", "visit": v, "detector": d})
                   for v in range(3) for d in range(4)], run="inputs")
    return repo


def checksums(repo, run):
    rows = repo.sql("SELECT dataset_type, data_id_key, checksum FROM dataset WHERE run = $r "
                    "ORDER BY 1, 2", {"r": run})
    return rows.to_pylist()


def test_in_process_run_failures_block_dependents(toy_repo):
    summary = run_pipeline(toy_repo, TOY, inputs=["inputs"], output="toy/out", jobs=1,
                           progress=False)
    assert not summary.ok
    assert summary.counts["double"]["succeeded"] == 11 and summary.counts["double"]["failed"] == 1
    assert summary.counts["triple"]["succeeded"] == 11 and summary.counts["triple"]["blocked"] == 1
    assert summary.counts["sum_visit"]["succeeded"] == 3
    rows = toy_repo.sql("SELECT dataset_type, count(*) AS n FROM main.dataset WHERE run = $r "
                        "GROUP BY 1", {"r": summary.run}).to_pylist()
    per_type = {r["dataset_type"]: r["n"] for r in rows}
    assert per_type == {"toy_doubled": 11, "toy_tripled": 11, "toy_summed": 3}
    tripled = toy_repo.get("toy_tripled", {"instrument": "Cam", "visit": 2, "detector": 1},
                           collections=summary.run)
    assert tripled == {"v": 21.0 * 2 * 3}
    assert "unlucky value 13.0" in summary.failures[0][1] and "visit=1" in summary.failures[0][1]
    sums = toy_repo.sql("SELECT visit, sum(v) AS s, count(*) AS n FROM toy_summed "
                        "GROUP BY visit ORDER BY visit").to_pylist()
    assert sums == [{"visit": 0, "s": 12.0, "n": 4}, {"visit": 1, "s": 66.0, "n": 3},
                    {"visit": 2, "s": 172.0, "n": 4}]
    # provenance: every output traces back to its inputs in SQL
    traced = toy_repo.sql("""
        SELECT o.data_id_key AS output, i.data_id_key AS input
        FROM quantum q, unnest(q.outputs) AS u(oid), unnest(q.inputs) AS w(iid),
             dataset o, dataset i
        WHERE q.task = 'double' AND o.id = u.oid AND i.id = w.iid
        ORDER BY 1""").to_pylist()
    assert len(traced) == 11 and all(t["output"] == t["input"] for t in traced)
    failed = toy_repo.sql("SELECT data_id, error, traceback FROM quantum WHERE status = 'failed'"
                          ).to_pylist()
    assert json.loads(failed[0]["data_id"]) == {"instrument": "Cam", "visit": 1, "detector": 3}
    assert "Traceback" in failed[0]["traceback"]
    assert toy_repo.verify().ok


def test_parallel_run_gives_identical_checksums(toy_repo):
    one = run_pipeline(toy_repo, TOY, inputs=["inputs"], output="a", run="a/run", jobs=1,
                       progress=False)
    two = run_pipeline(toy_repo, TOY, inputs=["inputs"], output="b", run="b/run", jobs=2,
                       progress=False)
    assert one.counts == two.counts
    strip = [(r["dataset_type"], r["data_id_key"], r["checksum"]) for r in checksums(
        toy_repo, "a/run")]
    assert strip == [(r["dataset_type"], r["data_id_key"], r["checksum"])
                     for r in checksums(toy_repo, "b/run")]


def test_resume_skips_finished_quanta(toy_repo):
    first = run_pipeline(toy_repo, TOY, inputs=["inputs"], output="r", tasks=["double"],
                         jobs=1, progress=False)
    again = run_pipeline(toy_repo, TOY, inputs=["inputs"], output="r", resume=True, jobs=1,
                         progress=False)
    assert again.run == first.run
    assert again.counts["double"]["skipped"] == 11 and again.counts["double"]["failed"] == 1
    assert again.counts["sum_visit"]["succeeded"] == 3


def test_bad_requests(toy_repo):
    with pytest.raises(CollectionError, match="does not exist"):
        run_pipeline(toy_repo, TOY, inputs=["nope"], output="x", progress=False)
    with pytest.raises(DrpError, match="unknown task"):
        run_pipeline(toy_repo, TOY, inputs=["inputs"], output="x", tasks=["nope"],
                     progress=False)
    fresh = run_pipeline(toy_repo, TOY, inputs=["inputs"], output="fresh", resume=True,
                         jobs=1, progress=False)  # nothing to resume: a new run
    assert fresh.counts["double"]["succeeded"] == 11
    empty = run_pipeline(toy_repo, TOY, inputs=["inputs"], output="y", where="visit = 99",
                         jobs=1, progress=False)
    assert empty.total("succeeded") == 0 and empty.ok
