"""What every pipeline task is: a config, declared connections, ``run`` and ``run_quantum``.

A task's ``run(**inputs)`` is pure: it takes Python objects (exposures,
tables) and returns a :class:`TaskResult`, so it can be called from a
notebook without a repository.  ``run_quantum(context)`` reads the inputs of
one data ID through a :class:`~processing.quantum.QuantumContext`, calls
``run`` and writes the outputs back; the pipeline executor builds the
contexts on workers, which never touch the registry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["Connection", "PipelineTask", "TaskResult", "config_hash"]


@dataclass(frozen=True)
class Connection:
    """A dataset a task reads or writes.

    Attributes
    ----------
    name : str
        Argument name in ``run`` (inputs) or key of the result (outputs).
    dataset_type : str
        Registered dataset type name.
    dimensions : tuple of str
        Dimensions of the dataset type.
    storage_class : str
        Storage class of the dataset type.
    multiple : bool
        Many datasets per quantum (e.g. every detector of a visit); ``run``
        receives / returns a dict keyed by the extra data-ID values.
    optional : bool
        The quantum can run without it.
    lookup : bool
        Found by the task's ``lookup_inputs`` hook (e.g. reference-catalog
        shards overlapping a detector) instead of by data-ID projection.
    doc : str
        What it is.
    """

    name: str
    dataset_type: str
    dimensions: tuple[str, ...]
    storage_class: str
    multiple: bool = False
    optional: bool = False
    lookup: bool = False
    doc: str = ""


class TaskResult(dict):
    """Outputs of ``run`` by connection name, plus free-form ``metadata``."""

    def __init__(self, *args, metadata: Mapping[str, Any] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.metadata = dict(metadata or {})

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def config_hash(config: Any) -> str:
    """Stable short hash of a dataclass config (provenance)."""
    payload = json.dumps(dataclasses.asdict(config) if dataclasses.is_dataclass(config)
                         else config, sort_keys=True, default=str)
    return hashlib.blake2b(payload.encode(), digest_size=8).hexdigest()


class PipelineTask:
    """Base class of drp's pipeline tasks.

    Subclasses set the class attributes and implement :meth:`run`; most
    inherit :meth:`run_quantum`.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    dimensions: ClassVar[tuple[str, ...]]
    inputs: ClassVar[tuple[Connection, ...]] = ()
    outputs: ClassVar[tuple[Connection, ...]] = ()

    def __init__(self, config: Any = None, **overrides: Any):
        if config is None:
            config = self.config_class(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    def run(self, **inputs: Any) -> TaskResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def run_quantum(self, context) -> TaskResult:
        """Read this quantum's inputs, run, and write the outputs."""
        inputs = {c.name: context.get(c.name) for c in self.inputs if context.has(c.name)}
        result = self.run(**inputs)
        self.write_outputs(context, result)
        return result

    def write_outputs(self, context, result: Mapping[str, Any]) -> None:
        """Write every declared output present in ``result``."""
        for conn in self.outputs:
            value = result.get(conn.name)
            if value is None:
                continue
            if conn.multiple:
                for extra, obj in value.items():
                    context.put(obj, conn.name, extra)
            else:
                context.put(value, conn.name)

    @classmethod
    def input(cls, name: str) -> Connection:
        """The input connection called ``name``."""
        for conn in cls.inputs:
            if conn.name == name:
                return conn
        raise KeyError(f"{cls.name} has no input {name!r}")

    @classmethod
    def output(cls, name: str) -> Connection:
        """The output connection called ``name`` (inputs and outputs may share names)."""
        for conn in cls.outputs:
            if conn.name == name:
                return conn
        raise KeyError(f"{cls.name} has no output {name!r}")
