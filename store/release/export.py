"""Export a collection as a data release: Parquet + HATS catalogs, FITS images, ObsCore.

The release is written into ``<target>.tmp-<uuid>`` beside the target and renamed
into place when complete; any error (or an interrupt) removes the temporary
directory, so an interrupted export never leaves a half-release under the target
name.  See :mod:`store.release.layout` for the files.

Tables are read through :meth:`Repo.sql` by name, so they are the ones the SQL
surface shows (the repository's default collection); the collection exported must
be that collection.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..formats import get_storage_class
from ..formats.parquet import with_units
from .config import ExportConfig, ReleaseError, ReleaseExistsError, TableSpec
from .describe import astropy_metadata, column_entries, known_column_meta
from .layout import (
    CATALOG_DIR,
    DATASETS_DIR,
    HATS_DIR,
    IMAGES_DIR,
    OBSCORE_PARQUET,
    OBSCORE_VOTABLE,
    README,
    SCHEMA,
    readme_text,
    write_manifest,
)

__all__ = ["ExportedTable", "ReleaseSummary", "export_release"]

_POSITION_PAIRS = (("coord_ra", "coord_dec"), ("ra", "dec"), ("s_ra", "s_dec"))
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class ExportedTable:
    """One table of a release (also its entry in the MANIFEST)."""

    name: str
    part: str
    path: str
    n_rows: int
    description: str = ""
    hats: str | None = None
    hats_rows: int = 0
    hats_dropped: int = 0
    hats_partitions: int = 0
    ra_column: str | None = None
    dec_column: str | None = None
    dataset_types: list[str] = field(default_factory=list)


@dataclass
class ReleaseSummary:
    """What :func:`export_release` wrote.

    Attributes
    ----------
    path : Path
        The release directory.
    collection : str
        Collection exported.
    tables : list of ExportedTable
        Tables written.
    images : dict
        Image dataset type -> number of files.
    n_datasets : int
        Datasets copied for re-import.
    n_files, n_bytes : int
        Files and bytes in the release.
    notices : list of str
        What was skipped and why.
    timings : dict
        Seconds per stage (``tables``, ``hats``, ``datasets``, ``images``, ``manifest``...).
    """

    path: Path
    collection: str
    tables: list[ExportedTable]
    images: dict[str, int]
    n_datasets: int
    n_files: int
    n_bytes: int
    notices: list[str]
    timings: dict[str, float]

    def format(self) -> str:
        """A few lines for the command line."""
        lines = [f"exported {self.collection} to {self.path}: {self.n_files} files, "
                 f"{self.n_bytes / 1e6:.1f} MB"]
        for t in self.tables:
            hats = (f", HATS {t.hats_partitions} partition(s)" if t.hats else ", no HATS")
            lines.append(f"  {t.name}: {t.n_rows} rows{hats}")
        for name, n in self.images.items():
            lines.append(f"  {name}: {n} FITS file(s)")
        lines += [f"  notice: {n}" for n in self.notices]
        return "\n".join(lines)


def _check_target(repo, target: Path, overwrite: bool) -> None:
    parent = target.parent
    if target.exists() and not overwrite:
        raise ReleaseExistsError(f"export target {target} already exists "
                                 "(use --overwrite to replace it)")
    if target.exists() and not target.is_dir():
        raise ReleaseError(f"export target {target} exists and is not a directory")
    if target.exists() and any(target.iterdir()) and not (target / "MANIFEST.json").exists():
        raise ReleaseError(f"export target {target} is a non-empty directory that is not a "
                           "release; refusing to replace it")
    if not parent.is_dir():
        raise ReleaseError(f"cannot export to {target}: parent directory {parent} does not exist")
    root = repo.root
    if target == root or target.is_relative_to(root) or root.is_relative_to(target):
        raise ReleaseError(f"cannot export to {target}: it overlaps the repository {root}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ReleaseError(f"cannot export to {target}: {parent} is not writable")


def _check_collection(repo, collection: str | None) -> str:
    """The collection's name, after checking the SQL tables show it."""
    shown = repo.collection_runs(None)
    if collection is None:
        return repo.default_collection or "all runs"
    wanted = repo.collection_runs(collection)
    if wanted != shown:
        raise ReleaseError(
            f"the SQL tables show {repo.default_collection or 'all runs'!r}, not collection "
            f"{collection!r}; make it the default collection first "
            "(Repo.set_default_collection) or export the default collection")
    return collection


def _relations(repo) -> dict[str, str]:
    """Lower-cased name -> name of every table and view the SQL surface has."""
    table = repo.sql("SELECT table_name FROM information_schema.tables", adql=False)
    return {n.lower(): n for n in table.column("table_name").to_pylist()}


def _view_sql(repo) -> dict[str, str]:
    table = repo.sql("SELECT view_name, sql FROM duckdb_views() WHERE NOT internal", adql=False)
    return {n.lower(): s or "" for n, s in zip(table.column("view_name").to_pylist(),
                                               table.column("sql").to_pylist(), strict=True)}


def _backing_types(repo, spec: TableSpec, views: dict[str, str]) -> list[str]:
    """Table dataset types a table's rows come from (declared, and read by its views)."""
    table_types = {dt.name.lower(): dt.name for dt in repo.dataset_types()
                   if get_storage_class(dt.storage_class).is_table}
    found = {table_types[t.lower()] for t in spec.dataset_types if t.lower() in table_types}
    seen: set[str] = set()

    def walk(text: str) -> None:
        for token in {t.lower() for t in _IDENT.findall(text)}:
            if token.startswith("ds_") and token[3:] in table_types:
                found.add(table_types[token[3:]])
            elif token in table_types:
                found.add(table_types[token])
            if token in views and token not in seen:
                seen.add(token)
                walk(views[token])

    walk(spec.query if spec.query is not None else f'"{spec.name}"')
    return sorted(found)


def _read_rows(repo, spec: TableSpec, relation: str | None) -> pa.Table:
    """The table's rows, ordered by its key so a re-export writes identical files.

    Rows usually come out of the registry already in key order (datasets are
    registered in ID order), so the key is checked first and the rows sorted only
    when needed: a DuckDB ``ORDER BY`` costs 30% more than the plain read on 3
    million sources.
    """
    if spec.query is not None:
        return repo.sql(spec.query)
    cols = repo.sql(f'SELECT * FROM "{relation}" LIMIT 0', adql=False).column_names
    if not (spec.order_by and all(c in cols for c in spec.order_by)):
        return repo.sql(f'SELECT * FROM "{relation}" ORDER BY ALL', adql=False)
    rows = repo.sql(f'SELECT * FROM "{relation}"', adql=False)
    if len(spec.order_by) == 1 and rows.num_rows > 1:
        key = rows.column(spec.order_by[0])
        if key.null_count == 0 and (pa.types.is_integer(key.type)
                                    or pa.types.is_floating(key.type)):
            values = key.to_numpy()
            if bool(np.all(values[1:] > values[:-1])):
                return rows
    return rows.sort_by([(c, "ascending") for c in spec.order_by])


def _descriptions(repo, refs_by_type: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Units and descriptions in the field metadata of one file of each backing type."""
    out: dict[str, tuple[str, str]] = {}
    for result in refs_by_type.values():
        if len(result) == 0:
            continue
        try:
            schema = pq.read_schema(repo.path_of(result[0]))
        except (OSError, pa.ArrowInvalid):
            continue
        for f in schema:
            meta = f.metadata or {}
            out.setdefault(f.name, (meta.get(b"unit", b"").decode(),
                                    meta.get(b"description", b"").decode()))
    return out


def _positions(spec: TableSpec, columns: list[str]) -> tuple[str, str] | None:
    if spec.ra_column is not None:
        missing = [c for c in (spec.ra_column, spec.dec_column) if c not in columns]
        if missing:
            raise ReleaseError(f"table {spec.name}: no column {missing[0]!r} for positions")
        return spec.ra_column, spec.dec_column
    for ra, dec in _POSITION_PAIRS:
        if ra in columns and dec in columns:
            return ra, dec
    return None


def _any_position(rows: pa.Table, pos: tuple[str, str]) -> bool:
    import pyarrow.compute as pc

    ok = [pc.is_finite(rows.column(c).cast(pa.float64())) for c in pos]
    return bool(pc.any(pc.and_(ok[0], ok[1])).as_py())


def _notice(notices: list[str], text: str) -> None:
    notices.append(text)
    warnings.warn(text, stacklevel=3)


def _export_tables(repo, config: ExportConfig, tmp: Path, search: str | None,
                   notices: list[str], timings: dict[str, float]
                   ) -> tuple[list[ExportedTable], list[dict], dict[str, Any]]:
    from .hats_writer import parquet_options, write_hats_catalog

    relations = _relations(repo)
    views = _view_sql(repo)
    tables: list[ExportedTable] = []
    schemas: list[dict] = []
    backing: dict[str, Any] = {}
    for spec in config.selected_tables():
        relation = relations.get(spec.name.lower())
        if spec.query is None and relation is None:
            _notice(notices, f"table {spec.name} is not in the repository; skipped")
            continue
        t0 = time.perf_counter()
        types = _backing_types(repo, spec, views)
        refs = {t: repo.query_datasets(t, collections=search) for t in types}
        backing.update(refs)
        rows = _read_rows(repo, spec, relation)
        entries = column_entries(rows.schema, known_column_meta(repo, [spec.name, *types]),
                                 _descriptions(repo, refs))
        rows = with_units(rows, {e["name"]: e["unit"] for e in entries},
                          {e["name"]: e["description"] for e in entries})
        timings["tables_read"] = timings.get("tables_read", 0.0) + time.perf_counter() - t0
        rel = f"{CATALOG_DIR}/{spec.name}.parquet"
        (tmp / CATALOG_DIR).mkdir(exist_ok=True)
        exported = ExportedTable(spec.name, spec.part, rel, rows.num_rows, spec.description,
                                 dataset_types=types)
        pos = _positions(spec, rows.column_names)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=1) as pool:
            # The plain file and the HATS partitions are written at once (2 cores).
            meta = {**(rows.schema.metadata or {}),
                    **{k.encode(): v.encode() for k, v in astropy_metadata(rows, entries).items()}}
            plain = pool.submit(pq.write_table, rows.replace_schema_metadata(meta), tmp / rel,
                                **parquet_options(rows.schema, config.compression))
            if pos is None:
                _notice(notices, f"table {spec.name} has no sky position columns; "
                                 "no HATS catalog")
            elif rows.num_rows == 0:
                _notice(notices, f"table {spec.name} is empty; no HATS catalog")
            elif not _any_position(rows, pos):
                _notice(notices, f"table {spec.name} has no finite {pos[0]}/{pos[1]}; "
                                 "no HATS catalog")
            else:
                hats_rel = f"{HATS_DIR}/{spec.name}"
                result = write_hats_catalog(
                    rows, tmp / hats_rel, catalog_name=spec.name, ra_column=pos[0],
                    dec_column=pos[1], catalog_type=spec.hats_type,
                    max_rows=config.hats_max_rows, lowest_order=config.hats_lowest_order,
                    highest_order=config.hats_highest_order, compression=config.compression,
                    threads=1)
                exported.hats, exported.hats_rows = hats_rel, result.n_rows
                exported.hats_dropped, exported.hats_partitions = (result.n_dropped,
                                                                   result.n_partitions)
                exported.ra_column, exported.dec_column = pos
                if result.n_dropped:
                    _notice(notices, f"table {spec.name}: {result.n_dropped} row(s) without a "
                                     "finite position are left out of the HATS catalog")
            plain.result()
        timings["tables_write"] = timings.get("tables_write", 0.0) + time.perf_counter() - t0
        tables.append(exported)
        schemas.append({"name": spec.name, "path": rel, "hats": exported.hats,
                        "description": spec.description, "n_rows": rows.num_rows,
                        "columns": entries})
    return tables, schemas, backing


def _export_images(repo, config: ExportConfig, search: str | None, notices: list[str]
                   ) -> list[tuple[Any, Any]]:
    found = []
    registered = {dt.name: dt for dt in repo.dataset_types()}
    for spec in config.images:
        dt = registered.get(spec.dataset_type)
        if dt is None:
            _notice(notices, f"image dataset type {spec.dataset_type} is not registered; skipped")
            continue
        if get_storage_class(dt.storage_class).extension != ".fits":
            _notice(notices, f"dataset type {spec.dataset_type} is stored as "
                             f"{dt.storage_class}, not FITS; skipped")
            continue
        result = repo.query_datasets(spec.dataset_type, collections=search)
        if len(result) == 0:
            _notice(notices, f"no {spec.dataset_type} datasets in "
                             f"{search or 'the default collection'}; skipped")
            continue
        found.append((spec, result))
    return found


def _copy_images(repo, images, tmp: Path, transfer: str) -> dict[str, str]:
    """Place image files under ``images/`` (when no dataset bundle is written)."""
    from ..datastore import transfer_file

    paths = {}
    for _, result in images:
        for ref in result:
            rel = f"{IMAGES_DIR}/{ref.dataset_type}/{Path(ref.path).name}"
            transfer_file(repo.path_of(ref), tmp / rel, transfer)
            paths[str(ref.id)] = rel
    return paths


def _bundle_paths(results) -> dict[str, str]:
    """Where ``store.transfer`` puts each dataset's file inside ``datasets/``."""
    paths = {}
    for result in results:
        for ref in result:
            rel = Path(ref.path).name if ref.external else ref.path
            paths[str(ref.id)] = f"{DATASETS_DIR}/files/{rel}"
    return paths


def _place(tmp: Path, target: Path, overwrite: bool) -> None:
    """Rename the finished release into place (replacing an old one if allowed)."""
    old = None
    if target.exists():
        if not overwrite:
            raise ReleaseExistsError(f"export target {target} appeared during the export; "
                                     "the new release is discarded")
        old = target.with_name(f"{target.name}.old-{uuid.uuid4().hex[:12]}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_release(repo, target: str | os.PathLike, *, collection: str | None = None,
                   config: ExportConfig | None = None, overwrite: bool = False
                   ) -> ReleaseSummary:
    """Export a collection of ``repo`` as a data release directory.

    Parameters
    ----------
    repo : store.Repo
        Source repository.
    target : path-like
        Release directory to create (its parent must exist and be writable).
    collection : str, optional
        Collection to export; it must be the one the SQL tables show (the default
        collection).  Default: the default collection.
    config : ExportConfig, optional
        Parts, tables, images and HATS settings.
    overwrite : bool
        Replace an existing release at ``target``.

    Returns
    -------
    ReleaseSummary

    Raises
    ------
    ReleaseExistsError
        ``target`` exists and ``overwrite`` is False.
    ReleaseError
        Unwritable target, a collection the SQL tables do not show, bad settings.
    ReadOnlyError
        A table query that tries to write.
    """
    config = config or ExportConfig()
    if not isinstance(config, ExportConfig):
        raise ReleaseError(f"config must be an ExportConfig, got {type(config).__name__}")
    if not isinstance(overwrite, bool):
        raise ReleaseError(f"overwrite must be True or False, got {overwrite!r}")
    target = Path(target).expanduser().absolute()
    _check_target(repo, target, overwrite)
    if collection is not None:
        repo.collection_runs(collection)  # unknown collection: one-line CollectionError
    name = (_check_collection(repo, collection) if set(config.what) & {"catalogs", "visits"}
            else collection or repo.default_collection or "all runs")
    tmp = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:12]}")
    notices: list[str] = []
    timings: dict[str, float] = {}
    start = time.perf_counter()
    try:
        tmp.mkdir()
    except OSError as err:
        raise ReleaseError(f"cannot export to {target}: {err.strerror or err}") from None
    try:
        tables, schemas, backing = _export_tables(repo, config, tmp, collection, notices,
                                                  timings)
        t0 = time.perf_counter()
        images = (_export_images(repo, config, collection, notices)
                  if "images" in config.what else [])
        results = list(backing.values()) + [r for _, r in images]
        refs = {str(ref.id): ref for result in results for ref in result}
        if config.include_datasets and refs:
            from ..transfer import export_datasets

            export_datasets(repo, list(refs.values()), tmp / DATASETS_DIR,
                            transfer=config.transfer)
            access = _bundle_paths(r for _, r in images)
        else:
            access = _copy_images(repo, images, tmp, config.transfer)
        timings["datasets"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        image_counts = {spec.dataset_type: len(result) for spec, result in images}
        if images:
            from .obscore import OBSCORE_COLUMNS, obscore_table, write_obscore_votable

            index = obscore_table(repo, images, collection=name, access_paths=access,
                                  release_root=tmp)
            (tmp / IMAGES_DIR).mkdir(exist_ok=True)
            described = [{"name": c.name, "type": str(c.type), "unit": c.unit,
                          "description": c.description, "ucd": c.ucd, "utype": c.utype}
                         for c in OBSCORE_COLUMNS]
            meta = {k.encode(): v.encode() for k, v in astropy_metadata(index, described).items()}
            pq.write_table(index.replace_schema_metadata(meta), tmp / OBSCORE_PARQUET)
            write_obscore_votable(index, tmp / OBSCORE_VOTABLE)
            schemas.append({"name": "ObsCore", "path": OBSCORE_PARQUET,
                            "votable": OBSCORE_VOTABLE, "hats": None,
                            "description": "ObsCore index of the image files",
                            "n_rows": index.num_rows,
                            "columns": described})
        timings["images"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        release = _release_facts(repo, name, collection, tables, image_counts,
                                 len(refs) if config.include_datasets else 0, notices)
        (tmp / SCHEMA).write_text(json.dumps({"tables": schemas}, indent=1) + "\n")
        (tmp / README).write_text(readme_text(release))
        manifest = write_manifest(tmp, release)
        if config.durable:
            os.sync()  # every file on disk before the rename makes the release visible
        timings["manifest"] = time.perf_counter() - t0
        _place(tmp, target, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    timings["total"] = time.perf_counter() - start
    return ReleaseSummary(target, name, tables, image_counts,
                          release["n_datasets"], manifest["n_files"], manifest["total_bytes"],
                          notices, timings)


def _release_facts(repo, name: str, search: str | None, tables: list[ExportedTable],
                   images: dict[str, int], n_datasets: int, notices: list[str]
                   ) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        drp_version = version("drp")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        drp_version = "unknown"
    kind = repo.registry.collection_type(name)  # None when no default collection is set
    return {
        "collection": name, "collection_type": kind, "runs": repo.collection_runs(search),
        "created": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "drp_version": drp_version, "tables": [asdict(t) for t in tables],
        "images": images, "n_datasets": n_datasets, "notices": list(notices),
    }
