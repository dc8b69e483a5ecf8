"""Building quanta from the repository with SQL.

For a task with dimensions ``D``, every required input dataset type is
queried in the input collections (plus the output run); each is projected
onto ``D``; a quantum exists for every data ID of ``D`` that all required
inputs reach.  Inputs whose dimensions are finer than ``D`` (every detector of
a visit) are gathered as ``multiple`` connections.  Tasks with their own
selection rules (spatial reference-catalog shards, the SQL coadd input
selection) override :func:`build_quanta` through a ``build_quanta``
classmethod.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from store.dimensions import ELEMENTS
from store.errors import InvalidQueryError

from .quantum import InputRef, Quantum

__all__ = ["applicable_where", "build_quanta", "input_ref", "quantum_key"]


def quantum_key(task: str, data_id: dict[str, Any]) -> str:
    """Stable identity of a quantum (task + data ID)."""
    return task + ":" + ",".join(f"{k}={v}" for k, v in data_id.items())


def input_ref(repo, ref) -> InputRef:
    """An :class:`InputRef` for a registry :class:`~store.refs.DatasetRef`."""
    dt = repo.get_dataset_type(ref.dataset_type)
    return InputRef(str(ref.id), ref.dataset_type, dict(ref.data_id), ref.path,
                    dt.storage_class)


def _known_columns(dimensions: Sequence[str]) -> set[str]:
    cols = set(dimensions)
    for d in dimensions:
        element = ELEMENTS[d]
        cols |= set(element.implied) | {c.name for c in element.columns}
        cols.add(d)
    if {"visit", "detector"} <= set(dimensions):
        cols.add("visit_detector_region")
    return cols


def applicable_where(where: str | None, dimensions: Sequence[str]) -> str | None:
    """``where`` if every dimension it names belongs to ``dimensions``, else None.

    A ``--where "visit = 12"`` restricts per-visit tasks directly; tasks on
    other dimensions (coadds) are restricted through their inputs instead.
    """
    if not where:
        return None
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", where))
    dimension_words = words & set(ELEMENTS)
    return where if dimension_words <= _known_columns(dimensions) else None


def build_quanta(task_class, config, repo, collections: list[str], run: str, *,
                 where: str | None = None, bind: dict | None = None) -> list[Quantum]:
    """Quanta of one task from the datasets present in ``collections``.

    Parameters
    ----------
    task_class : type
        A :class:`~processing.tasks.base.PipelineTask` subclass.
    config : object
        Its config.
    repo : store.Repo
        The repository (read only here).
    collections : list of str
        Where inputs are searched, in order (the output run first).
    run : str
        Output RUN collection.
    where, bind : optional
        Data-ID restriction (applied when it concerns the task's dimensions).
    """
    custom = getattr(task_class, "build_quanta", None)
    if custom is not None:
        return custom(config, repo, collections, run, where=where, bind=bind)
    dims = tuple(task_class.dimensions)
    groups: dict[str, dict[tuple, list]] = {}
    key_dims: dict[str, tuple[str, ...]] = {}
    required = [c for c in task_class.inputs if not c.optional and not c.lookup]
    if not required:
        raise ValueError(f"{task_class.name} has no required input to build quanta from")
    for conn in task_class.inputs:
        if conn.lookup:
            continue
        # An input keys the quanta by the task dimensions it has: all of them (the
        # same or finer dimensions), or a subset (a per-visit summary for a
        # per-detector task), matched by projecting each quantum's data ID.
        key_dims[conn.name] = tuple(d for d in dims if d in conn.dimensions)
        clause = applicable_where(where, conn.dimensions)
        try:
            refs = repo.query_datasets(conn.dataset_type, clause, bind=bind,
                                       collections=collections)
        except InvalidQueryError:
            if clause is None:
                raise
            refs = repo.query_datasets(conn.dataset_type, collections=collections)
        by_key: dict[tuple, list] = {}
        for ref in refs:
            key = tuple(ref.data_id[d] for d in key_dims[conn.name])
            by_key.setdefault(key, []).append(ref)
        groups[conn.name] = by_key
    full = [c for c in required if key_dims[c.name] == dims]
    if not full:
        raise ValueError(f"{task_class.name}: no required input spans its dimensions {dims}; "
                         "give the task a build_quanta")
    keys = None
    for conn in full:
        ks = set(groups[conn.name])
        keys = ks if keys is None else keys & ks
    quanta = []
    for key in sorted(keys or []):
        data_id = dict(zip(dims, key, strict=True))
        inputs = {}
        complete = True
        for conn in task_class.inputs:
            if conn.lookup:
                continue
            sub = tuple(data_id[d] for d in key_dims[conn.name])
            refs = groups[conn.name].get(sub, [])
            if not refs:
                complete = complete and conn.optional
                continue
            chosen = refs if conn.multiple else refs[:1]
            inputs[conn.name] = [input_ref(repo, r) for r in chosen]
        if not complete:
            continue
        outputs = {c.name: [] for c in task_class.outputs}
        quanta.append(Quantum(task_class.name, task_class, config, data_id, inputs, outputs, run,
                              str(repo.root), key=quantum_key(task_class.name, data_id)))
    lookup = getattr(task_class, "lookup_inputs", None)
    if lookup is not None and quanta:
        lookup(quanta, repo, collections, config)
    return quanta
