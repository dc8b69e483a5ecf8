"""Run a pipeline: build quanta with SQL, execute them anywhere, register the outputs.

Tasks run stage by stage in pipeline order.  Each stage's quanta are built
from what the repository holds when the stage starts (so selections that
depend on earlier outputs, such as the SQL coadd input selection over visit
summaries, see real values), run on the chosen executor, and registered by
this process in batches, each batch in one registry transaction together with
its provenance rows.

Resuming: a quantum with a ``succeeded`` or ``no_work`` provenance row in the
output run is skipped.  Outputs and provenance are committed together, so a
run killed at any moment (even SIGKILL) resumes to exactly the outputs of an
uninterrupted run; files a killed worker wrote but nobody registered are
overwritten when their quantum runs again.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from store.errors import CollectionError, DrpError

from .executors import make_executor
from .graph import build_quanta, quantum_key
from .quantum import Quantum, QuantumOutcome
from .tasks.base import config_hash

__all__ = ["Pipeline", "PipelineStep", "RunSummary", "run_pipeline"]


@dataclass(frozen=True)
class PipelineStep:
    """A task of a pipeline with its config."""

    task_class: type
    config: Any = None

    @property
    def name(self) -> str:
        return self.task_class.name

    def resolved_config(self):
        return self.config if self.config is not None else self.task_class.config_class()


@dataclass(frozen=True)
class Pipeline:
    """An ordered list of tasks."""

    name: str
    steps: tuple[PipelineStep, ...]
    doc: str = ""

    def task_names(self) -> list[str]:
        return [s.name for s in self.steps]

    def subset(self, names: list[str] | None) -> Pipeline:
        """The pipeline restricted to the named tasks (kept in pipeline order)."""
        if not names:
            return self
        unknown = [n for n in names if n not in self.task_names()]
        if unknown:
            raise DrpError(f"unknown task(s) {', '.join(unknown)} in pipeline {self.name!r}; "
                           f"tasks are {', '.join(self.task_names())}")
        return Pipeline(self.name, tuple(s for s in self.steps if s.name in names), self.doc)


@dataclass
class RunSummary:
    """What a pipeline run did."""

    run: str
    output: str | None
    counts: dict[str, Counter] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)
    elapsed_s: float = 0.0
    n_registered: int = 0

    @property
    def ok(self) -> bool:
        """No quantum failed or was blocked."""
        return not any(c["failed"] or c["blocked"] for c in self.counts.values())

    def total(self, status: str) -> int:
        return sum(c[status] for c in self.counts.values())

    def format(self) -> str:
        lines = [f"run {self.run} ({self.elapsed_s:.1f} s, {self.n_registered} datasets "
                 f"registered)"]
        for task, c in self.counts.items():
            parts = [f"{k} {c[k]}" for k in ("succeeded", "skipped", "no_work", "failed",
                                             "blocked") if c[k]]
            lines.append(f"  {task:<24} " + (", ".join(parts) if parts else "nothing to do"))
        for _key, error in self.failures[:20]:
            lines.append(f"  FAILED {error}")
        if len(self.failures) > 20:
            lines.append(f"  ... and {len(self.failures) - 20} more failures")
        return "\n".join(lines)


def _versions() -> str:
    import platform

    import numpy
    import scipy

    try:
        from importlib.metadata import version

        drp = version("drp")
    except Exception:  # pragma: no cover - running from a checkout
        drp = "unknown"
    return json.dumps({"drp": drp, "python": platform.python_version(),
                       "numpy": numpy.__version__, "scipy": scipy.__version__})


def _resolve_collections(repo, inputs: list[str], output: str | None, run: str | None,
                         resume: bool) -> tuple[str, list[str]]:
    """Choose the output run and the search path; create the run and output chain."""
    for name in inputs:
        if repo.registry.collection_type(name) is None:
            raise CollectionError(f"input collection {name!r} does not exist")
    existing_chain: list[str] = []
    if output is not None:
        kind = repo.registry.collection_type(output)
        if kind == "RUN":
            raise CollectionError(f"--output {output!r} is a RUN; give a new or CHAINED name")
        if kind == "CHAINED":
            existing_chain = list(repo.registry._graph()["chains"].get(output, []))
    if run is None:
        if resume and existing_chain and repo.registry.collection_type(existing_chain[0]) == "RUN":
            run = existing_chain[0]
        else:  # nothing to resume (e.g. killed before its first commit): start afresh
            stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
            run = f"{output or 'run'}/{stamp}"
    if repo.registry.collection_type(run) is None:
        repo.register_run(run)
    elif not resume:
        raise CollectionError(f"run {run!r} already exists (use --resume to continue it)")
    if resume and output is None:
        raise CollectionError("--resume needs --output (the chain whose latest run continues)")
    if output is not None:
        chain = [run] + [c for c in existing_chain if c != run]
        for name in inputs:
            if name not in chain:
                chain.append(name)
        repo.register_chain(output, chain)
    search = repo.collection_runs([run, *inputs])
    return run, search


def _done_keys(repo, run: str) -> set[str]:
    rows = repo.registry.query(
        "SELECT task, data_id FROM quantum WHERE run = $run AND status IN "
        "('succeeded', 'no_work')", {"run": run})
    return {quantum_key(t, json.loads(d)) for t, d in zip(
        rows.column("task").to_pylist(), rows.column("data_id").to_pylist(), strict=True)}


class _Progress:
    """A progress bar per task on a terminal, log lines otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self._bar = None
        self._task = None
        self._last = 0.0

    def start(self, name: str, total: int) -> None:
        self.name, self.total, self.done, self.failed = name, total, 0, 0
        self.t0 = time.monotonic()
        if not self.enabled:
            return
        if self.tty:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("{task.description:<24}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[extra]}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(name, total=total, extra="")
        else:
            print(f"[drp] {name}: {total} quanta", file=sys.stderr, flush=True)

    def advance(self, outcome: QuantumOutcome) -> None:
        self.done += 1
        self.failed += outcome.status == "failed"
        if not self.enabled:
            return
        rate = self.done / max(time.monotonic() - self.t0, 1e-9)
        if self._bar is not None:
            self._bar.update(self._task, advance=1,
                             extra=f"failed {self.failed}  {rate:.2f}/s")
        elif time.monotonic() - self._last > 5 or self.done == self.total:
            self._last = time.monotonic()
            print(f"[drp] {self.name}: {self.done}/{self.total} done, {self.failed} failed, "
                  f"{self.total - self.done} remaining, {rate:.2f} quanta/s",
                  file=sys.stderr, flush=True)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def run_pipeline(repo, pipeline: Pipeline, *, inputs: list[str], output: str | None = None,
                 run: str | None = None, where: str | None = None,
                 bind: dict[str, Any] | None = None, tasks: list[str] | None = None,
                 jobs: int | None = None, dask: str | None = None, resume: bool = False,
                 progress: bool = True, batch_seconds: float = 2.0,
                 batch_size: int = 256) -> RunSummary:
    """Run ``pipeline`` on the data in ``inputs``, writing a new RUN collection.

    Parameters
    ----------
    repo : store.Repo
        The repository.
    pipeline : Pipeline
        Tasks in order.
    inputs : list of str
        Input collections (searched after the output run).
    output : str, optional
        CHAINED collection that puts the new run in front of the inputs.
    run : str, optional
        Name of the output RUN (default ``<output>/<timestamp>``).
    where, bind : optional
        SQL restriction of the data IDs processed (``"visit IN (1, 2)"``).
    tasks : list of str, optional
        Run only these tasks of the pipeline.
    jobs : int, optional
        Worker processes (default: number of cores; 1 runs in this process).
    dask : str, optional
        Address of a Dask scheduler (overrides ``jobs``).
    resume : bool
        Continue the output's latest run, skipping finished quanta.
    progress : bool
        Show progress on stderr.

    Returns
    -------
    RunSummary
    """
    t_start = time.monotonic()
    pipeline = pipeline.subset(tasks)
    run, search = _resolve_collections(repo, list(inputs), output, run, resume)
    summary = RunSummary(run, output)
    executor = make_executor(jobs, dask)
    versions = _versions()
    done = _done_keys(repo, run) if resume else set()
    failed_ids: dict[tuple[str, ...], set[tuple]] = {}
    bar = _Progress(progress)
    try:
        for step in pipeline.steps:
            counts = summary.counts.setdefault(step.name, Counter())
            config = step.resolved_config()
            for dt in step.task_class.outputs:
                repo.register_dataset_type(dt.dataset_type, dt.dimensions, dt.storage_class)
            quanta = build_quanta(step.task_class, config, repo, search, run, where=where,
                                  bind=bind)
            dims = tuple(step.task_class.dimensions)
            blocked_ids = failed_ids.get(dims, set())
            todo: list[Quantum] = []
            blocked_rows = []
            for q in quanta:
                if q.key in done:
                    counts["skipped"] += 1
                    continue
                todo.append(q)
            # Quanta on the same data IDs as failed upstream quanta cannot run.
            for ids in blocked_ids:
                did = dict(zip(dims, ids, strict=True))
                key = quantum_key(step.name, did)
                if key in done or any(q.key == key for q in todo):
                    continue
                counts["blocked"] += 1
                blocked_rows.append(_quantum_row(run, step.name, config, did, [], [], "blocked",
                                                 None, None, "", versions,
                                                 "an upstream quantum failed", None))
            if blocked_rows:
                repo.register_files([], run=run, quanta=blocked_rows)
            bar.start(step.name, len(todo))
            pending: list[tuple[Quantum, QuantumOutcome]] = []
            by_key = {q.key: q for q in todo}
            last_flush = time.monotonic()
            for outcome in executor.map(todo):
                quantum = by_key[outcome.key]
                counts[outcome.status] += 1
                if outcome.status == "failed":
                    summary.failures.append((outcome.key, outcome.error or "failed"))
                    failed_ids.setdefault(dims, set()).add(
                        tuple(quantum.data_id[d] for d in dims))
                pending.append((quantum, outcome))
                bar.advance(outcome)
                if (len(pending) >= batch_size
                        or time.monotonic() - last_flush > batch_seconds):
                    summary.n_registered += _register(repo, run, pending, versions)
                    pending, last_flush = [], time.monotonic()
            summary.n_registered += _register(repo, run, pending, versions)
            bar.stop()
            after = getattr(step.task_class, "after_stage", None)
            if after is not None:  # e.g. update visit regions from the new visit summaries
                after(repo, run)
    finally:
        bar.stop()
        executor.close()
    if output is not None and repo.default_collection is None:
        repo.set_default_collection(output)
    summary.elapsed_s = time.monotonic() - t_start
    return summary


def _quantum_row(run, task, config, data_id, inputs, outputs, status, start, end, host,
                 versions, error, tb, metadata=None) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "run": run, "task": task,
            "config_hash": config_hash(config), "data_id": json.dumps(data_id),
            "inputs": inputs, "outputs": outputs, "status": status, "start": start, "end": end,
            "host": host, "versions": versions, "error": error, "traceback": tb,
            "metadata": json.dumps(metadata, default=str) if metadata else None}


def _register(repo, run: str, pending: list[tuple[Quantum, QuantumOutcome]],
              versions: str) -> int:
    """Register a batch of outcomes (files + provenance) in one transaction."""
    from store.datastore import flush_filesystem

    if not pending:
        return 0
    if any(outcome.written for _, outcome in pending):
        flush_filesystem(repo.root)  # the files are durable before any row names them
    files = []
    rows = []
    for quantum, outcome in pending:
        outputs = []
        for record in outcome.written:
            record = dict(record, id=str(uuid.uuid4()))
            files.append(record)
            outputs.append(record["id"])
        inputs = [ref.id for refs in quantum.inputs.values() for ref in refs]
        rows.append(_quantum_row(run, quantum.task, quantum.config, quantum.data_id, inputs,
                                 outputs, outcome.status, outcome.start, outcome.end,
                                 outcome.host, versions, outcome.error, outcome.traceback,
                                 outcome.metadata))
    repo.register_files(files, run=run, quanta=rows)
    return len(files)
