"""`Repo`: the embedded data repository (DuckDB registry + file datastore).

Examples
--------
>>> import tempfile, pyarrow as pa
>>> from store import Repo
>>> with Repo.create(tempfile.mkdtemp() + "/repo") as repo:
...     repo.register_dataset_type("table", ("instrument",), "ArrowTable")
...     repo.insert_dimension_records("instrument", [{"instrument": "Cam"}])
...     repo.register_run("run1")
...     ref = repo.put(pa.table({"a": [1, 2]}), "table", {"instrument": "Cam"}, run="run1")
...     repo.get("table", {"instrument": "Cam"}, collections="run1").num_rows
True
1
True
2
"""

from __future__ import annotations

import datetime as _dt
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .connection import manager_for
from .datastore import (
    TMP_MARKER,
    BatchWriter,
    checksum_file,
    dataset_relpath,
    serialize,
    transfer_file,
    verify_file,
)
from .dimensions import ELEMENTS, KEY_TYPES
from .errors import (
    CollectionError,
    DatasetExistsError,
    DatasetNotFoundError,
    DrpError,
    RepositoryNotFoundError,
)
from .formats import get_storage_class
from .formats.parquet import as_arrow, column_units, sql_excluded_columns
from .refs import DatasetQueryResult, DatasetRef, DatasetType, data_id_key, normalize_data_id
from .registry import Registry, used_params
from .schema import DATA_ID_COLUMNS
from .sphgeom import Circle, ConvexPolygon

__all__ = ["REGISTRY_FILE", "Repo", "VerifyReport"]

REGISTRY_FILE = "registry.duckdb"


#: Arrow types of data-ID columns (typed even for empty tables).
_KEY_ARROW = {"INTEGER": pa.int32(), "BIGINT": pa.int64(), "VARCHAR": pa.string()}


@dataclass
class VerifyReport:
    """What :meth:`Repo.verify` found."""

    n_checked: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every registered file exists and matches its checksum."""
        return not self.missing and not self.corrupt


class Repo:
    """A drp repository on disk.

    Parameters
    ----------
    path : str or path-like
        Directory holding ``registry.duckdb`` and the dataset files.

    Notes
    -----
    Opening is cheap: no connection is held between calls except a shared
    read connection that is released after a second of idleness, so several
    processes can use the same repository (one writes at a time).
    """

    def __init__(self, path: str | os.PathLike):
        self.root = Path(path).expanduser().resolve()
        registry_path = self.root / REGISTRY_FILE
        if not registry_path.exists():
            raise RepositoryNotFoundError(
                f"no drp repository at {self.root} (missing {REGISTRY_FILE}); "
                "create one with `drp init`"
            )
        self._manager = manager_for(registry_path)
        self.registry = Registry(registry_path, self._manager)
        self.registry.check_version()

    @classmethod
    def create(cls, path: str | os.PathLike) -> Repo:
        """Create a new, empty repository at ``path`` (the directory may exist if empty)."""
        root = Path(path).expanduser().resolve()
        if (root / REGISTRY_FILE).exists():
            raise DrpError(f"a drp repository already exists at {root}")
        if root.exists() and any(root.iterdir()):
            raise DrpError(f"{root} exists and is not empty; choose a new directory")
        root.mkdir(parents=True, exist_ok=True)
        registry = Registry(root / REGISTRY_FILE, manager_for(root / REGISTRY_FILE))
        registry.initialize()
        return cls(root)

    def __enter__(self) -> Repo:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the shared read connection now."""
        self._manager.release()

    def __repr__(self) -> str:
        return f"Repo({str(self.root)!r})"

    # -- dimensions -----------------------------------------------------------------------
    def insert_dimension_records(self, element: str, records: Any, *,
                                 skip_existing: bool = False, replace: bool = False) -> int:
        """Insert dimension records in bulk.

        Parameters
        ----------
        element : str
            Dimension element name (``instrument``, ``visit``, ``patch``...).
        records : list of dict, dict, pyarrow.Table or polars.DataFrame
            Rows with the element's key columns and metadata; spatial elements
            accept a ``region`` value: an ``(N, 2)`` array of (ra, dec) degrees
            or a :class:`~store.sphgeom.ConvexPolygon`.
        skip_existing : bool
            Silently keep records that already exist.
        replace : bool
            Overwrite the metadata of records that already exist.

        Returns
        -------
        int
            Number of records written.
        """
        return self.registry.insert_records(element, records, skip_existing=skip_existing,
                                            replace=replace)

    def insert_dimension_record(self, element: str, record: Mapping[str, Any], **kwargs) -> int:
        """Insert one dimension record (see :meth:`insert_dimension_records`)."""
        return self.insert_dimension_records(element, [dict(record)], **kwargs)

    def dimension_records(self, element: str, where: str | None = None,
                          bind: Mapping[str, Any] | None = None) -> pa.Table:
        """Records of a dimension element, optionally filtered by a SQL ``where``."""
        return self.registry.records(element, where, bind)

    # -- dataset types and collections ----------------------------------------------------
    def register_dataset_type(self, name: str, dimensions: Sequence[str],
                              storage_class: str) -> DatasetType:
        """Register a dataset type (idempotent; a different definition is an error)."""
        get_storage_class(storage_class)
        dataset_type = DatasetType(name, tuple(dimensions), storage_class)
        self.registry.register_dataset_type(dataset_type)
        return dataset_type

    def get_dataset_type(self, name: str) -> DatasetType:
        """The registered dataset type called ``name``."""
        return self.registry.get_dataset_type(name)

    def dataset_types(self) -> list[DatasetType]:
        """All registered dataset types."""
        return sorted(self.registry.dataset_types().values(), key=lambda t: t.name)

    def register_run(self, name: str, doc: str = "", *, exist_ok: bool = False) -> bool:
        """Create a RUN collection (the only kind that holds datasets)."""
        return self.registry.register_run(name, doc, exist_ok=exist_ok)

    def register_chain(self, name: str, children: Sequence[str], doc: str = "") -> None:
        """Create or redefine a CHAINED collection searched in the given order."""
        self.registry.set_chain(name, list(children), doc)

    def collections(self) -> pa.Table:
        """Every collection: name, type, doc, created."""
        return self.registry.collections()

    def collection_runs(self, collections: str | Sequence[str] | None = None) -> list[str]:
        """The ordered RUN collections that a collection search expands to."""
        return self.registry.flatten(collections)

    @property
    def default_collection(self) -> str | None:
        """Collection shown by the SQL tables (None: every run, newest first)."""
        return self.registry.default_collection()

    def set_default_collection(self, name: str | None) -> None:
        """Choose the collection the SQL tables show."""
        self.registry.set_default_collection(name)

    # -- writing datasets -----------------------------------------------------------------
    def put(self, obj: Any, dataset_type: str, data_id: Mapping[str, Any] | None = None, *,
            run: str, **kwargs: Any) -> DatasetRef:
        """Store one object as a dataset and register it.

        Parameters
        ----------
        obj : object
            An :class:`~store.exposure.Exposure`, a table, an array, a dict...
            matching the dataset type's storage class.
        dataset_type : str
            Registered dataset type name.
        data_id : mapping
            Values of the dataset type's dimensions (keyword arguments work too).
        run : str
            Existing RUN collection.

        Returns
        -------
        DatasetRef
        """
        merged = dict(data_id or {})
        merged.update(kwargs)
        return self.put_many([(obj, dataset_type, merged)], run=run)[0]

    def _check_run(self, run: str) -> None:
        kind = self.registry.collection_type(run)
        if kind is None:
            raise CollectionError(f"unknown run {run!r}; create it with register_run")
        if kind != "RUN":
            raise CollectionError(f"{run!r} is a {kind} collection; datasets go into RUNs")

    def _prepare(self, entries: list[tuple[str, dict]], run: str
                 ) -> tuple[list[DatasetType], list[dict], pa.Table]:
        """Validate (type, data ID) pairs; returns types, data IDs, expanded data-ID rows."""
        self._check_run(run)
        types = [self.get_dataset_type(t) for t, _ in entries]
        ids = [normalize_data_id(dt, did) for dt, (_, did) in zip(types, entries, strict=True)]
        keys = [data_id_key(d) for d in ids]
        seen: set[tuple[str, str]] = set()
        for dt, key in zip(types, keys, strict=True):
            if (dt.name, key) in seen:
                raise DatasetExistsError(f"{dt.name} {{{key}}} appears twice in one put_many")
            seen.add((dt.name, key))
        by_type: dict[str, list[int]] = {}
        for i, dt in enumerate(types):
            by_type.setdefault(dt.name, []).append(i)
        parts = []
        order = []
        for name, idx in by_type.items():
            dup = self.registry.existing(name, run, [keys[i] for i in idx])
            if dup:
                raise DatasetExistsError(
                    f"{name} {{{dup[0]}}} already exists in run {run!r}")
            parts.append(self.registry.expand_data_ids(types[idx[0]], [ids[i] for i in idx]))
            order.extend(idx)
        table = pa.concat_tables(parts) if parts else pa.table({})
        # restore input order
        if order:
            inverse = np.argsort(np.asarray(order))
            table = table.take(pa.array(inverse))
        return types, ids, table

    def put_many(self, items: Iterable[tuple[Any, str, Mapping[str, Any]]], *, run: str,
                 durable: bool = True) -> list[DatasetRef]:
        """Store and register many datasets with one registry commit.

        Files are written first (each to a temporary name, renamed when
        complete; for dozens of files by a writer process, in parallel with
        the serialisation); the registry rows are committed afterwards in one
        transaction, once the files are durable, so an interruption leaves at
        worst orphan files, never a registered dataset without its file.

        Parameters
        ----------
        items : iterable of (object, dataset type name, data ID)
            What to store.
        run : str
            Existing RUN collection.
        durable : bool
            Flush the files to disk (one ``syncfs`` for the batch) before
            registering them.

        Returns
        -------
        list of DatasetRef
            In the order of ``items``.
        """
        items = list(items)
        if not items:
            return []
        n = len(items)
        # Dozens of files: a writer process places them while this one serialises
        # (started first, so its start-up overlaps the validation).
        batch = BatchWriter(self.root, durable=durable, process=n >= 64)
        batch.start()
        try:
            types, ids, expanded = self._prepare([(t, dict(d)) for _, t, d in items], run)
        except BaseException:
            batch.abort()
            raise
        root = str(self.root)
        ref_ids = [uuid.uuid4() for _ in range(n)]
        rels: list[str] = []
        sizes: list[int] = []
        checksums: list[str] = []
        table_rows: dict[str, list] = {}
        units: dict[str, dict[str, str]] = {}
        classes = {dt.name: get_storage_class(dt.storage_class) for dt in types}
        try:
            for (obj, _, _), dt, did, ref_id in zip(items, types, ids, ref_ids, strict=True):
                sc = classes[dt.name]
                if sc.is_table:
                    obj = as_arrow(obj)
                    table_rows.setdefault(dt.name, []).append((obj, did, ref_id))
                    units.setdefault(dt.name, {}).update(column_units(obj))
                data = serialize(lambda f, o=obj, w=sc.write: w(o, f), arrow_sink=sc.is_table)
                rel = dataset_relpath(run, dt.name, did, sc.extension)
                size, checksum = batch.write_bytes(f"{root}/{rel}", data)
                rels.append(rel)
                sizes.append(size)
                checksums.append(checksum)
            # The registry rows are built while the writer process finishes.
            now = _dt.datetime.now(_dt.UTC).replace(tzinfo=None)
            rows = {"id": ref_ids, "dataset_type": [dt.name for dt in types],
                    "run": [run] * n, "data_id_key": [data_id_key(d) for d in ids],
                    "path": rels, "size": sizes, "checksum": checksums, "created": [now] * n,
                    "external": [False] * n}
            dataset_rows = self._dataset_rows(rows, expanded)
            sql_rows = {k: self._sql_rows_batch(v, self.get_dataset_type(k), run)
                        for k, v in table_rows.items()}
            batch.commit()  # files durable under their final names before any row exists
            self.registry.insert_datasets(dataset_rows, sql_rows, units)
        except BaseException:
            batch.abort()  # nothing was registered: the files would be orphans
            raise
        return [DatasetRef(ref_id, dt.name, did, run, rel, size, checksum)
                for ref_id, dt, did, rel, size, checksum
                in zip(ref_ids, types, ids, rels, sizes, checksums, strict=True)]

    @staticmethod
    def _dataset_rows(rows: dict[str, list], expanded: pa.Table) -> pa.Table:
        table = pa.table({
            "id": pa.array([str(u) for u in rows["id"]]),  # DuckDB casts text to UUID
            "dataset_type": rows["dataset_type"], "run": rows["run"],
            "data_id_key": rows["data_id_key"], "path": rows["path"],
            "size": pa.array(rows["size"], type=pa.int64()), "checksum": rows["checksum"],
            "created": pa.array(rows["created"], type=pa.timestamp("us")),
            "external": pa.array(rows["external"], type=pa.bool_()),
        })
        for name, _ in DATA_ID_COLUMNS:
            table = table.append_column(name, expanded.column(name))
        return table

    @staticmethod
    def _sql_rows_batch(entries: list[tuple[pa.Table, dict, uuid.UUID]], dt: DatasetType,
                        run: str) -> pa.Table:
        """The SQL-table copy of many tables of one type: rows + data-ID columns + ids.

        Returned as one contiguous chunk: DuckDB scans an Arrow table chunk by
        chunk, and 2,000 ten-row chunks cost 40 times more than one.
        """
        # Columns marked by exclude_from_sql (large blobs) stay in the files only.
        tables = []
        for t, _, _ in entries:
            excluded = sql_excluded_columns(t)
            tables.append(t.drop_columns(excluded) if excluded else t)
        lengths = np.array([t.num_rows for t in tables], dtype=np.int64)
        out = pa.concat_tables(tables, promote_options="permissive").combine_chunks()
        take = np.repeat(np.arange(len(entries)), lengths)
        for key in dt.dimensions:
            if key not in out.column_names:
                values = pa.array([did[key] for _, did, _ in entries],
                                  type=_KEY_ARROW[KEY_TYPES[key]])
                out = out.append_column(key, values.take(take))
        ids = pa.array([str(i) for _, _, i in entries], pa.string()).take(take)
        out = out.append_column("_dataset_id", ids)
        return out.append_column("_run", pa.array([run] * out.num_rows, pa.string()))

    @staticmethod
    def _sql_rows(table: pa.Table, dt: DatasetType, did: dict, ref_id: uuid.UUID,
                  run: str) -> pa.Table:
        n = table.num_rows
        out = table.drop_columns(sql_excluded_columns(table))  # large blobs stay in the file
        for key, value in did.items():
            if key not in out.column_names:
                out = out.append_column(key, pa.array([value] * n,
                                                      type=_KEY_ARROW[KEY_TYPES[key]]))
        out = out.append_column("_dataset_id", pa.array([str(ref_id)] * n, pa.string()))
        return out.append_column("_run", pa.array([run] * n, pa.string()))

    def ingest(self, paths: Sequence[str | os.PathLike], dataset_type: str,
               data_ids: Sequence[Mapping[str, Any]], *, run: str, transfer: str = "copy"
               ) -> list[DatasetRef]:
        """Register existing files as datasets.

        Parameters
        ----------
        paths : sequence of path-like
            Files to ingest, one per data ID.
        dataset_type : str
            Registered dataset type.
        data_ids : sequence of mapping
            Data IDs, in the order of ``paths``.
        run : str
            Existing RUN collection.
        transfer : {"copy", "move", "hardlink", "symlink", "direct"}
            How the file enters the repository; ``direct`` records its
            absolute path in place (marked external when outside the root).
        """
        paths = [Path(p).expanduser().resolve() for p in paths]
        if len(paths) != len(data_ids):
            raise DrpError(f"ingest got {len(paths)} paths but {len(data_ids)} data IDs")
        for p in paths:
            if not p.is_file():
                raise DrpError(f"cannot ingest {p}: no such file")
        types, ids, expanded = self._prepare([(dataset_type, dict(d)) for d in data_ids], run)
        dt = types[0]
        sc = get_storage_class(dt.storage_class)
        rows: dict[str, list] = {k: [] for k in ("id", "dataset_type", "run", "data_id_key",
                                                 "path", "size", "checksum", "created",
                                                 "external")}
        placed: list[Path] = []
        table_rows: list[pa.Table] = []
        units: dict[str, str] = {}
        refs = []
        now = _dt.datetime.now(_dt.UTC).replace(tzinfo=None)
        try:
            for src, did in zip(paths, ids, strict=True):
                size, checksum = checksum_file(src)
                if transfer == "direct":
                    inside = src.is_relative_to(self.root)
                    rel = str(src.relative_to(self.root)) if inside else str(src)
                    external = not inside
                else:
                    rel = dataset_relpath(run, dt.name, did, sc.extension)
                    transfer_file(src, self.root / rel, transfer)
                    placed.append(self.root / rel)
                    external = False
                ref_id = uuid.uuid4()
                for k, v in (("id", ref_id), ("dataset_type", dt.name), ("run", run),
                             ("data_id_key", data_id_key(did)), ("path", rel), ("size", size),
                             ("checksum", checksum), ("created", now), ("external", external)):
                    rows[k].append(v)
                if sc.is_table:
                    tbl = sc.read(src if transfer in ("direct", "symlink") else self.root / rel)
                    table_rows.append(self._sql_rows(tbl, dt, did, ref_id, run))
                    units.update(column_units(tbl))
                refs.append(DatasetRef(ref_id, dt.name, did, run, rel, size, checksum, external))
            self.registry.insert_datasets(
                self._dataset_rows(rows, expanded),
                {dt.name: pa.concat_tables(table_rows, promote_options="permissive")}
                if table_rows else None, {dt.name: units})
        except BaseException:
            if transfer == "move":  # put moved files back where they came from
                for src, dst in zip(paths, placed, strict=False):
                    if dst.exists() and not src.exists():
                        os.replace(dst, src)
            else:
                for dst in placed:
                    dst.unlink(missing_ok=True)
            raise
        return refs

    def register_files(self, files: Sequence[Mapping[str, Any]], *, run: str,
                       read_tables: bool = True,
                       quanta: Sequence[Mapping[str, Any]] | None = None) -> list[DatasetRef]:
        """Register files that a worker already wrote in place (the pipeline's path).

        Parameters
        ----------
        files : sequence of mapping
            Each with ``dataset_type``, ``data_id``, ``path`` (relative to the
            repository), ``size`` and ``checksum``, and optionally ``id``.
        run : str
            Existing RUN collection the files belong to.
        read_tables : bool
            Read table datasets to fill their SQL tables.
        quanta : sequence of mapping, optional
            Provenance rows (``quantum`` table columns) committed in the same
            transaction; their ``outputs`` may name file ``id`` values.

        Returns
        -------
        list of DatasetRef
        """
        if not files:
            if quanta:
                self.registry.insert_datasets(None, quanta=list(quanta))
            return []
        types, ids, expanded = self._prepare(
            [(f["dataset_type"], dict(f["data_id"])) for f in files], run)
        rows: dict[str, list] = {k: [] for k in ("id", "dataset_type", "run", "data_id_key",
                                                 "path", "size", "checksum", "created",
                                                 "external")}
        table_rows: dict[str, list[pa.Table]] = {}
        units: dict[str, dict[str, str]] = {}
        refs = []
        now = _dt.datetime.now(_dt.UTC).replace(tzinfo=None)
        for f, dt, did in zip(files, types, ids, strict=True):
            path = self.root / f["path"]
            if not path.exists():
                raise DrpError(f"cannot register {f['path']}: the file does not exist")
            ref_id = uuid.UUID(str(f["id"])) if f.get("id") else uuid.uuid4()
            for k, v in (("id", ref_id), ("dataset_type", dt.name), ("run", run),
                         ("data_id_key", data_id_key(did)), ("path", f["path"]),
                         ("size", f["size"]), ("checksum", f["checksum"]), ("created", now),
                         ("external", False)):
                rows[k].append(v)
            sc = get_storage_class(dt.storage_class)
            if sc.is_table and read_tables:
                table = sc.read(path)
                table_rows.setdefault(dt.name, []).append(
                    self._sql_rows(table, dt, did, ref_id, run))
                units.setdefault(dt.name, {}).update(column_units(table))
            refs.append(DatasetRef(ref_id, dt.name, did, run, f["path"], f["size"],
                                   f["checksum"]))
        self.registry.insert_datasets(
            self._dataset_rows(rows, expanded),
            {k: pa.concat_tables(v, promote_options="permissive") for k, v in table_rows.items()},
            units, quanta=list(quanta or []))
        return refs

    def remove_run(self, run: str) -> int:
        """Delete a RUN collection, its registry rows, then its files; returns the file count.

        The registry is updated first, so an interruption leaves only orphan
        files (removed by ``verify(repair=True)``), never dangling rows.
        External (``direct``) files are left in place.
        """
        files = self.registry.remove_run(run)
        for rel, external in files:
            if not external:
                (self.root / rel).unlink(missing_ok=True)
        return len(files)

    # -- reading datasets -----------------------------------------------------------------
    def _ref_from_row(self, row: Mapping[str, Any]) -> DatasetRef:
        dt = self.get_dataset_type(row["dataset_type"])
        rid = row["id"] if isinstance(row["id"], uuid.UUID) else uuid.UUID(str(row["id"]))
        return DatasetRef(rid, dt.name, {k: row[k] for k in dt.dimensions}, row["run"],
                          row["path"], row["size"], row["checksum"], bool(row["external"]))

    def find_dataset(self, dataset_type: str, data_id: Mapping[str, Any] | None = None, *,
                     collections: str | Sequence[str] | None = None,
                     **kwargs: Any) -> DatasetRef | None:
        """The first dataset matching the type and data ID in the collections, or None."""
        dt = self.get_dataset_type(dataset_type)
        did = normalize_data_id(dt, data_id, **kwargs)
        runs = self.registry.flatten(collections)
        row = self.registry.find(dt.name, data_id_key(did), runs)
        return None if row is None else self._ref_from_row(row)

    def path_of(self, ref: DatasetRef) -> Path:
        """Absolute path of a dataset's file."""
        p = Path(ref.path)
        return p if p.is_absolute() else self.root / p

    def get(self, ref_or_type: DatasetRef | str, data_id: Mapping[str, Any] | None = None, *,
            collections: str | Sequence[str] | None = None, verify: bool = False,
            parameters: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """Read a dataset.

        Parameters
        ----------
        ref_or_type : DatasetRef or str
            A reference, or a dataset type name together with ``data_id``.
        data_id : mapping, optional
            Data ID when a type name is given.
        collections : str or sequence, optional
            Where to search (default: the default collection).
        verify : bool
            Check the file's checksum first.
        parameters : mapping, optional
            Passed to the reader (``bbox`` for exposures, ``columns`` for tables).
        """
        if isinstance(ref_or_type, DatasetRef):
            ref = ref_or_type
        else:
            ref = self.find_dataset(ref_or_type, data_id, collections=collections, **kwargs)
            if ref is None:
                did = dict(data_id or {}) | kwargs
                where = collections if collections is not None else self.collection_runs(None)
                raise DatasetNotFoundError(
                    f"no {ref_or_type} dataset with data ID {did} in {where}")
        path = self.path_of(ref)
        if verify:
            verify_file(path, ref.size, ref.checksum)
        elif not path.exists():
            raise DatasetNotFoundError(f"{ref!r}: registered file {path} is missing")
        sc = get_storage_class(self.get_dataset_type(ref.dataset_type).storage_class)
        return sc.read(path, **dict(parameters or {}))

    def query_datasets(self, dataset_type: str, where: str | None = None, *,
                       bind: Mapping[str, Any] | None = None,
                       collections: str | Sequence[str] | None = None,
                       find_first: bool = True,
                       region: Circle | ConvexPolygon | tuple[float, float] | None = None,
                       ) -> DatasetQueryResult:
        """Datasets of one type matching a SQL condition on data IDs and dimension records.

        Parameters
        ----------
        dataset_type : str
            Registered dataset type.
        where : str, optional
            SQL boolean expression over data-ID columns (``band``, ``visit``...)
            and dimension record columns (``visit.exposure_time``,
            ``detector.name``; unqualified when unambiguous). Use ``$name``
            placeholders with ``bind``.
        bind : mapping, optional
            Values of the placeholders (bound by DuckDB, never formatted in).
        collections : str or sequence, optional
            Where to search (default: the default collection).
        find_first : bool
            Keep only the first dataset per data ID along the collection order.
        region : Circle, ConvexPolygon or (ra, dec), optional
            Keep datasets whose sky region (detector in visit, visit, patch or
            tract, the most specific one the dataset has) overlaps the circle
            or polygon, or contains the point.

        Returns
        -------
        DatasetQueryResult
        """
        dt = self.get_dataset_type(dataset_type)
        runs = self.registry.flatten(collections)
        if not runs:
            return DatasetQueryResult(pa.table({"id": []}), {})
        joins = self._joins(dt, where or "")
        run_params = {f"_r{i}": r for i, r in enumerate(runs)}
        params = {"_type": dt.name, **run_params, **used_params(where or "", bind)}
        tables = None
        if region is not None:
            # Regions first: the exact sphere test keeps few keys, and joining on
            # them (an Arrow table, not list parameters) is cheaper than fetching
            # every dataset and filtering after.
            element = self._spatial_element(dt)
            hits = self._region_hits(region, element)
            keys = hits.column_names
            tables = {"_hits": hits.rename_columns([f"_h_{k}" for k in keys])}
            on = " AND ".join(f"d.{k} = _hits._h_{k}" for k in keys)
            joins = f"JOIN _hits ON {on} {joins}"
        ranked = find_first and len(runs) > 1
        rank = " ".join(f"WHEN ${k} THEN {i}" for i, k in enumerate(run_params))
        sql = ("SELECT d.*" + (f", CASE d.run {rank} END AS _rank" if ranked else "")
               + f" FROM dataset d {joins} WHERE d.dataset_type = $_type AND d.run "
               + (f"IN ({', '.join('$' + k for k in run_params)})" if len(runs) > 1
                  else "= $_r0"))
        if where:
            sql += f" AND ({where})"
        if ranked:
            sql = (f"SELECT * EXCLUDE (_rn) FROM (SELECT *, row_number() OVER (PARTITION BY "
                   f"data_id_key ORDER BY _rank) AS _rn FROM ({sql})) WHERE _rn = 1")
        try:
            table = self.registry.query(sql, params, tables=tables)
        except DrpError:
            raise
        except Exception as err:
            from .errors import InvalidQueryError

            raise InvalidQueryError(
                f"bad where clause {where!r}: {str(err).strip().splitlines()[0]}") from None
        hidden = [c for c in table.column_names if c.startswith("_")]
        if hidden:
            table = table.drop_columns(hidden)
        if table.num_rows > 1:  # sorting the few rows here is cheaper than an ORDER BY
            import pyarrow.compute as pc

            table = table.take(pc.sort_indices(table.column("data_id_key")))
        return DatasetQueryResult(table, {dt.name: dt.dimensions})

    def _spatial_element(self, dt: DatasetType) -> str:
        """The most specific spatial element of a dataset type that has records.

        A dataset with visit and detector uses its detector region when the
        registry holds detector regions, else its visit's region.
        """
        dims = set(dt.dimensions)
        options = []
        if {"visit", "detector"} <= dims:
            options.append("visit_detector_region")
        options += [e for e in ("visit", "patch", "tract") if e in dims]
        if not options:
            raise DrpError(f"dataset type {dt.name} has no spatial dimension for a region")
        for element in options:
            if self._element_stats(element)["n"] > 0:
                return element
        return options[-1]

    def _element_stats(self, element: str) -> dict[str, float]:
        """Row count and largest region radius of a spatial element (cached per commit)."""
        stamp = self.registry._stamp()
        cache = getattr(self, "_stats_cache", {})
        hit = cache.get(element)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        row = self.registry.query(
            f"SELECT count(*) AS n, max(bc_radius) AS r FROM {element}").to_pylist()[0]
        stats = {"n": row["n"], "max_radius": row["r"] or 0.0}
        cache[element] = (stamp, stats)
        self._stats_cache = cache
        return stats

    @staticmethod
    def _joins(dt: DatasetType, where: str) -> str:
        """LEFT JOINs exposing the dimension-record columns the query uses.

        Only elements whose name or columns appear in ``where`` are joined:
        the joins cost more than the rest of a typical query.
        """
        import re

        words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", where))
        dims = set(dt.dimensions)
        candidates = [e for n, e in ELEMENTS.items() if e.has_table and e.is_dimension
                      and n in dims and n not in ("instrument",)]
        if {"visit", "detector"} <= dims:
            candidates.append(ELEMENTS["visit_detector_region"])
        elements = [e for e in candidates
                    if e.name in words or any(c.name in words for c in e.columns)]
        joins = []
        for element in elements:
            own = set(element.primary_key) | set(element.implied)
            # Only the columns the condition names (binding the others costs time).
            cols = [c.name for c in element.columns if c.name not in own and c.name in words]
            alias = element.name
            keysel = ", ".join(f"{k} AS _k_{k}" for k in element.primary_key)
            colsel = ", ".join(cols)
            inner = f"SELECT {keysel}{', ' if colsel else ''}{colsel} FROM {element.name}"
            cond = " AND ".join(f"{alias}._k_{k} = d.{k}" for k in element.primary_key)
            joins.append(f"LEFT JOIN ({inner}) AS {alias} ON {cond}")
        return " ".join(joins)

    def _region_hits(self, region, element: str) -> pa.Table:
        """Primary keys (Arrow table) of the ``element`` records whose region meets ``region``.

        Answered from a :class:`~store.region_index.RegionIndex` of the element,
        loaded once and kept until the registry changes.
        """
        from .dimensions import ELEMENTS
        from .region_index import RegionIndex

        keys = list(ELEMENTS[element].primary_key)
        if isinstance(region, tuple):
            shape: Circle | ConvexPolygon = Circle(float(region[0]), float(region[1]), 0.0)
        else:
            shape = region
        stamp = self.registry._stamp()
        cache = self.__dict__.setdefault("_region_cache", {})
        hit = cache.get(element)
        if hit is None or hit[0] != stamp:
            table = self.registry.query(
                f"SELECT {', '.join(keys)}, bc_x, bc_y, bc_z, bc_radius, region_ra, region_dec"
                f" FROM {element}", bulk=True)
            hit = (stamp, RegionIndex(table, keys))
            cache[element] = hit
        return hit[1].hit_table(shape)

    # -- SQL ------------------------------------------------------------------------------
    def sql(self, query: str, bind: Mapping[str, Any] | None = None, *,
            adql: bool | None = None) -> pa.Table:
        """Run a read-only SQL (or ADQL) query over the registry and the dataset tables.

        Parameters
        ----------
        query : str
            One SELECT statement (DuckDB SQL, or ADQL when detected or ``adql=True``).
        bind : mapping, optional
            Values of ``$name`` parameters.
        adql : bool, optional
            Force (True) or forbid (False) ADQL translation; default auto-detect.

        Returns
        -------
        pyarrow.Table
        """
        from .sql import run_query

        with self._manager.read() as con:
            return run_query(con, query, bind, adql=adql)

    # -- moving datasets between repositories ----------------------------------------------
    def export_datasets(self, refs: Iterable[DatasetRef], directory: str | os.PathLike, *,
                        transfer: str = "copy") -> Path:
        """Export datasets with their dimension records and files to a directory.

        See :mod:`store.transfer`; :meth:`import_datasets` reads it back.
        """
        from .transfer import export_datasets

        return export_datasets(self, refs, directory, transfer=transfer)

    def import_datasets(self, directory: str | os.PathLike, *, transfer: str = "copy") -> int:
        """Import a directory written by :meth:`export_datasets`; returns the dataset count."""
        from .transfer import import_datasets

        return import_datasets(self, directory, transfer=transfer)

    # -- integrity ------------------------------------------------------------------------
    def verify(self, *, repair: bool = False, checksums: bool = True) -> VerifyReport:
        """Check that every registered file exists and matches its checksum.

        Also lists orphan files (in the repository but not registered, e.g.
        left by an interrupted write); ``repair=True`` removes them.
        """
        report = VerifyReport()
        table = self.registry.query(
            "SELECT path, size, checksum, external FROM dataset ORDER BY path")
        registered = set()
        for rel, size, checksum, external in zip(*(table.column(c).to_pylist() for c in (
                "path", "size", "checksum", "external")), strict=True):
            path = Path(rel) if external or Path(rel).is_absolute() else self.root / rel
            registered.add(path)
            report.n_checked += 1
            if not path.exists():
                report.missing.append(str(path))
            elif checksums:
                try:
                    verify_file(path, size, checksum)
                except DrpError:
                    report.corrupt.append(str(path))
        for dirpath, _, filenames in os.walk(self.root):
            for name in filenames:
                path = Path(dirpath) / name
                if path.parent == self.root and name.startswith(REGISTRY_FILE):
                    continue
                if path not in registered:
                    report.orphans.append(str(path))
        if repair:
            for orphan in report.orphans:
                Path(orphan).unlink(missing_ok=True)
                report.removed.append(orphan)
        return report


def is_temporary(path: str | Path) -> bool:
    """Whether a path is an interrupted write's temporary file."""
    return TMP_MARKER in Path(path).name

