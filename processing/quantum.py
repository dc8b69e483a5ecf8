"""One quantum: a task applied to one data ID, executed anywhere.

The driver resolves every input to a file path before dispatch, so a worker
(in-process, a local process, or a Dask worker) needs only the repository's
files: it reads inputs, writes outputs under their final datastore paths
(atomically, replacing an unregistered leftover of an interrupted run) and
returns what it wrote.  Only the driver touches the registry.
"""

from __future__ import annotations

import datetime as _dt
import platform
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["InputRef", "Quantum", "QuantumContext", "QuantumOutcome", "execute_quantum"]


@dataclass(frozen=True)
class InputRef:
    """A resolved input dataset: where it is and how to read it."""

    id: str
    dataset_type: str
    data_id: dict[str, Any]
    path: str
    storage_class: str


@dataclass
class Quantum:
    """Everything a worker needs to run one task on one data ID.

    Attributes
    ----------
    task : str
        Task name.
    task_class : type
        The task class (pickled by reference, so workers import it).
    config : object
        The task's config dataclass.
    data_id : dict
        The quantum's data ID (task dimensions).
    inputs : dict of str to list of InputRef
        Resolved inputs per connection.
    outputs : dict of str to list of dict
        Expected output data IDs per connection.
    run : str
        Output RUN collection.
    repo_root : str
        Repository directory (files only; no registry access).
    """

    task: str
    task_class: type
    config: Any
    data_id: dict[str, Any]
    inputs: dict[str, list[InputRef]]
    outputs: dict[str, list[dict[str, Any]]]
    run: str
    repo_root: str
    key: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class QuantumOutcome:
    """What a worker reports back for one quantum."""

    key: str
    task: str
    data_id: dict[str, Any]
    status: str  # "succeeded", "no_work", "failed"
    written: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None
    start: _dt.datetime | None = None
    end: _dt.datetime | None = None
    host: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


class QuantumContext:
    """Reads the inputs and writes the outputs of one quantum (no registry access)."""

    def __init__(self, quantum: Quantum, task_class):
        self.quantum = quantum
        self.task_class = task_class
        self.root = Path(quantum.repo_root)
        self.written: list[dict[str, Any]] = []

    def has(self, name: str) -> bool:
        """Whether the quantum has at least one dataset for input ``name``."""
        return bool(self.quantum.inputs.get(name))

    def refs(self, name: str) -> list[InputRef]:
        """Resolved input refs of a connection."""
        return list(self.quantum.inputs.get(name, []))

    def _read(self, ref: InputRef, **parameters):
        from store.formats import get_storage_class

        path = Path(ref.path)
        path = path if path.is_absolute() else self.root / path
        return get_storage_class(ref.storage_class).read(path, **parameters)

    def get(self, name: str, **parameters):
        """Read input ``name``: one object, or a dict keyed by the extra data-ID values."""
        conn = self.task_class.input(name)
        refs = self.quantum.inputs.get(name, [])
        if not conn.multiple:
            if not refs:
                return None
            return self._read(refs[0], **parameters)
        own = set(self.quantum.data_id)
        out = {}
        for ref in refs:
            extra = tuple(v for k, v in ref.data_id.items() if k not in own)
            out[extra[0] if len(extra) == 1 else extra] = self._read(ref, **parameters)
        return out

    def put(self, obj: Any, name: str, extra: Any = None) -> dict[str, Any]:
        """Write output ``name`` (``extra``: the values of dimensions beyond the quantum's)."""
        from store.datastore import atomic_replace, dataset_relpath
        from store.formats import get_storage_class
        from store.formats.parquet import as_arrow

        conn = self.task_class.output(name)
        data_id = {k: self.quantum.data_id[k] for k in conn.dimensions
                   if k in self.quantum.data_id}
        missing = [k for k in conn.dimensions if k not in data_id]
        if missing:
            values = extra if isinstance(extra, tuple) else (extra,)
            if len(values) != len(missing):
                raise ValueError(f"{name}: need values for {missing}, got {extra!r}")
            data_id.update(dict(zip(missing, values, strict=True)))
        data_id = {k: data_id[k] for k in conn.dimensions}
        sc = get_storage_class(conn.storage_class)
        if sc.is_table:
            obj = as_arrow(obj)
        rel = dataset_relpath(self.quantum.run, conn.dataset_type, data_id, sc.extension)
        # No fsync per file: the driver flushes the filesystem once per registered batch.
        size, checksum = atomic_replace(self.root / rel, lambda f: sc.write(obj, f),
                                        durable=False)
        record = {"dataset_type": conn.dataset_type, "data_id": data_id, "path": rel,
                  "size": size, "checksum": checksum}
        self.written.append(record)
        return record


_CONTROLLER = None


def _single_threaded_blas():
    """A context limiting BLAS/OpenMP pools to one thread (controller built once per process:
    finding the libraries scans the process's memory maps, ~8 ms)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1)


def execute_quantum(quantum: Quantum) -> QuantumOutcome:
    """Run one quantum and report; never raises for a task's own failure."""
    from store.errors import NoWorkFound

    start = _dt.datetime.now(_dt.UTC).replace(tzinfo=None)
    t0 = time.perf_counter()
    outcome = QuantumOutcome(quantum.key, quantum.task, quantum.data_id, "succeeded",
                             start=start, host=platform.node())
    task_class = quantum.task_class
    context = QuantumContext(quantum, task_class)
    caught: list = []
    try:
        # Warnings are recorded with the quantum, not printed by every worker.  BLAS runs
        # single-threaded so results are bit-identical whatever the executor: a
        # two-thread LAPACK least-squares rounds differently from a one-thread one
        # (measured: 1e-11 deg in WCS fits, 1e-6 in PSF fluxes, on Dask vs in-process).
        with _single_threaded_blas(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            task = task_class(quantum.config)
            result = task.run_quantum(context)
        outcome.metadata = dict(getattr(result, "metadata", {}) or {})
    except NoWorkFound as err:
        outcome.status = "no_work"
        outcome.error = str(err)
    except Exception as err:  # a failed quantum is recorded; the run goes on
        outcome.status = "failed"
        did = ", ".join(f"{k}={v}" for k, v in quantum.data_id.items())
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        outcome.error = f"{quantum.task} [{did}]: {type(err).__name__}: {first}"
        outcome.traceback = traceback.format_exc()
        for record in context.written:  # partial outputs are never registered
            (Path(quantum.repo_root) / record["path"]).unlink(missing_ok=True)
        context.written = []
    if caught:
        messages = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
        outcome.metadata["warnings"] = messages[:20]
    outcome.written = context.written
    outcome.end = _dt.datetime.now(_dt.UTC).replace(tzinfo=None)
    outcome.metadata.setdefault("wall_s", time.perf_counter() - t0)
    return outcome
