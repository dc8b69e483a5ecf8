"""Crash safety and multi-process access to one repository.

Subprocesses stand in for real users: a writer killed with SIGKILL in the
middle of ``put_many``, and readers running ``drp sql`` while another process
writes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from store import Repo

from .conftest import populate_dimensions

WRITER = textwrap.dedent("""
    import sys, numpy as np
    from store import Repo, Exposure
    repo = Repo(sys.argv[1])
    run, start, n, batch = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    kind = sys.argv[6]
    print("started", flush=True)
    for b in range(start, start + n, batch):
        if kind == "image":
            items = [(Exposure(np.full((256, 256), i, np.float32)), "post_isr_image",
                      {"instrument": "Cam", "visit": i % 6, "detector": i // 6})
                     for i in range(b, b + batch)]
        else:
            items = [({"i": i}, "note", {"instrument": "Cam", "detector": i})
                     for i in range(b, b + batch)]
        repo.put_many(items, run=run)
        print("committed", b + batch, flush=True)
""")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.getcwd() + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def shared_repo(tmp_path):
    repo = Repo.create(tmp_path / "repo")
    populate_dimensions(repo, n_visits=6, n_detectors=1000)
    repo.register_dataset_type("post_isr_image", ("instrument", "visit", "detector"), "Exposure")
    repo.register_dataset_type("note", ("instrument", "detector"), "StructuredData")
    repo.close()
    return repo


def test_sigkill_during_put_many_never_leaves_a_dataset_without_its_file(shared_repo, tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = __import__("random").Random(7)
    for attempt in range(4):
        run = f"crash{attempt}"
        shared_repo.register_run(run)
        shared_repo.close()
        proc = subprocess.Popen([sys.executable, str(script), str(shared_repo.root), run, "0",
                                 "1200", "600", "image"],
                                stdout=subprocess.PIPE, text=True, env=_env())
        assert proc.stdout.readline().strip() == "started"
        time.sleep(rng.uniform(0.3, 2.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        report = shared_repo.verify()
        assert report.missing == [] and report.corrupt == [], report
        n = shared_repo.sql(f"SELECT count(*) AS n FROM dataset WHERE run = '{run}'"
                            ).column("n")[0].as_py()
        assert n in (0, 600, 1200)  # whole batches only
    shared_repo.verify(repair=True)
    assert shared_repo.verify().orphans == []


def test_readers_see_consistent_states_while_a_writer_commits(shared_repo, tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    shared_repo.register_run("busy")
    shared_repo.close()
    writer = subprocess.Popen([sys.executable, str(script), str(shared_repo.root), "busy", "0",
                               "1000", "50", "note"], stdout=subprocess.PIPE, text=True,
                              env=_env())
    assert writer.stdout.readline().strip() == "started"
    counts = []
    while writer.poll() is None:
        out = subprocess.run(
            [sys.executable, "-m", "processing.cli", "sql", str(shared_repo.root),
             "SELECT count(*) AS n, count(DISTINCT data_id_key) AS v FROM dataset", "--format", "json"],
            capture_output=True, text=True, env=_env(), timeout=120)
        assert out.returncode == 0, out.stderr
        row = json.loads(out.stdout)
        assert row["n"] == row["v"]  # every committed row is complete
        counts.append(row["n"])
    assert writer.returncode == 0
    assert counts == sorted(counts)  # never goes backwards
    assert all(c % 50 == 0 for c in counts)  # batches are atomic
    assert len(counts) >= 2
    final = shared_repo.sql("SELECT count(*) AS n FROM dataset").column("n")[0].as_py()
    assert final == 1000 and shared_repo.verify().ok


def test_lock_held_past_budget_is_a_clear_error(shared_repo, tmp_path, monkeypatch):
    holder = tmp_path / "hold.py"
    holder.write_text(textwrap.dedent("""
        import sys, time, duckdb
        con = duckdb.connect(sys.argv[1])
        print("locked", flush=True)
        time.sleep(30)
    """))
    proc = subprocess.Popen([sys.executable, str(holder),
                             str(shared_repo.root / "registry.duckdb")],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        monkeypatch.setenv("DRP_LOCK_TIMEOUT", "1")
        shared_repo.close()
        from store import RegistryLockedError

        t0 = time.monotonic()
        with pytest.raises(RegistryLockedError, match="locked by another process"):
            shared_repo.sql("SELECT 1")
        assert time.monotonic() - t0 < 5
    finally:
        proc.kill()
        proc.wait()
    assert shared_repo.sql("SELECT 1 AS one").column("one")[0].as_py() == 1
