"""Moving datasets between repositories: export a subset to a directory, import it.

An export directory holds ``export.json`` (dataset types, runs), one Parquet
file per dimension element with the records the datasets need, ``datasets
.parquet`` (ids, types, runs, data IDs, checksums) and the files under their
repository-relative paths.  Import re-creates the same dataset IDs, so a
round trip keeps refs and checksums identical.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .datastore import checksum_file, transfer_file
from .dimensions import ELEMENTS
from .errors import ChecksumMismatchError, DrpError
from .refs import DatasetRef
from .schema import DATA_ID_COLUMNS

__all__ = ["export_datasets", "import_datasets"]

_MANIFEST = "export.json"


def export_datasets(repo, refs: Iterable[DatasetRef], directory: str | Path, *,
                    transfer: str = "copy") -> Path:
    """Write datasets, their dimension records and files into ``directory``.

    Parameters
    ----------
    repo : store.Repo
        Source repository.
    refs : iterable of DatasetRef
        Datasets to export.
    directory : path-like
        New (or empty) directory.
    transfer : {"copy", "hardlink", "symlink"}
        How files are placed in the export.
    """
    out = Path(directory)
    if out.exists() and any(out.iterdir()):
        raise DrpError(f"export directory {out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    ids = [str(r.id) for r in refs]
    if not ids:
        raise DrpError("nothing to export: no datasets given")
    with repo._manager.read() as con:
        con.register("_ids", pa.table({"id": ids}))
        rows = con.sql("SELECT d.* FROM dataset d JOIN _ids ON d.id = _ids.id::UUID"
                       ).to_arrow_table()
        con.unregister("_ids")
    rows = rows.set_column(0, "id", pa.array([str(u) for u in rows.column("id").to_pylist()]))
    pq.write_table(rows, out / "datasets.parquet")
    types = sorted(set(rows.column("dataset_type").to_pylist()))
    runs = sorted(set(rows.column("run").to_pylist()))
    manifest = {
        "dataset_types": [{"name": t, "dimensions": list(repo.get_dataset_type(t).dimensions),
                           "storage_class": repo.get_dataset_type(t).storage_class}
                          for t in types],
        "runs": runs,
        "elements": [],
    }
    with repo._manager.read() as con:
        con.register("_rows", rows)
        for name, element in ELEMENTS.items():
            if not element.has_table:
                continue
            keys = [k for k in element.primary_key if k in dict(DATA_ID_COLUMNS)]
            if not keys or any(k not in rows.column_names for k in keys):
                continue
            cond = " AND ".join(f"e.{k} = r.{k}" for k in keys)
            # A fixed row order keeps the exported files byte-identical from run to run.
            order = ", ".join(f"e.{k}" for k in element.primary_key)
            records = con.sql(f"SELECT DISTINCT e.* FROM {name} e JOIN _rows r ON {cond} "
                              f"ORDER BY {order}").to_arrow_table()
            if records.num_rows:
                pq.write_table(records, out / f"dimension_{name}.parquet")
                manifest["elements"].append(name)
        con.unregister("_rows")
    for rel, external in zip(rows.column("path").to_pylist(),
                             rows.column("external").to_pylist(), strict=True):
        src = Path(rel) if external else repo.root / rel
        dest = out / "files" / (Path(rel).name if external else rel)
        transfer_file(src, dest, transfer)
    (out / _MANIFEST).write_text(json.dumps(manifest, indent=1))
    return out


def _dependency_order(names: list[str]) -> list[str]:
    order = []
    remaining = list(names)
    while remaining:
        for name in list(remaining):
            deps = set(ELEMENTS[name].required + ELEMENTS[name].implied)
            if not (deps & set(remaining)):
                order.append(name)
                remaining.remove(name)
    return order


def import_datasets(repo, directory: str | Path, *, transfer: str = "copy") -> int:
    """Import an export directory into ``repo``; returns the number of datasets.

    Dimension records that already exist are kept; datasets keep their IDs,
    runs and checksums (each file is checked before it is registered).
    """
    src = Path(directory)
    manifest_path = src / _MANIFEST
    if not manifest_path.exists():
        raise DrpError(f"{src} is not a drp export (missing {_MANIFEST})")
    manifest = json.loads(manifest_path.read_text())
    for name in _dependency_order(manifest["elements"]):
        table = pq.read_table(src / f"dimension_{name}.parquet")
        repo.insert_dimension_records(name, table, skip_existing=True)
    for dt in manifest["dataset_types"]:
        repo.register_dataset_type(dt["name"], dt["dimensions"], dt["storage_class"])
    for run in manifest["runs"]:
        repo.register_run(run, exist_ok=True)
    rows = pq.read_table(src / "datasets.parquet")
    placed: list[Path] = []
    new_paths = []
    try:
        for rel, external, size, checksum in zip(*(rows.column(c).to_pylist() for c in (
                "path", "external", "size", "checksum")), strict=True):
            file = src / "files" / (Path(rel).name if external else rel)
            actual_size, actual = checksum_file(file)
            if actual != checksum or actual_size != size:
                raise ChecksumMismatchError(f"{file}: checksum differs from the export manifest")
            target_rel = rel if not external else f"imported/{Path(rel).name}"
            transfer_file(file, repo.root / target_rel, transfer)
            placed.append(repo.root / target_rel)
            new_paths.append(target_rel)
        rows = rows.set_column(rows.column_names.index("path"), "path", pa.array(new_paths))
        rows = rows.set_column(rows.column_names.index("external"), "external",
                               pa.array([False] * rows.num_rows))
        table_rows = _table_rows(repo, rows)
        repo.registry.insert_datasets(rows, table_rows)
    except BaseException:
        for path in placed:
            path.unlink(missing_ok=True)
        raise
    return rows.num_rows


def _table_rows(repo, rows: pa.Table) -> dict[str, pa.Table]:
    """SQL-table copies of the imported table datasets."""
    from .formats import get_storage_class

    out: dict[str, list[pa.Table]] = {}
    for row in rows.to_pylist():
        dt = repo.get_dataset_type(row["dataset_type"])
        sc = get_storage_class(dt.storage_class)
        if not sc.is_table:
            continue
        table = sc.read(repo.root / row["path"])
        did = {k: row[k] for k in dt.dimensions}
        out.setdefault(dt.name, []).append(
            repo._sql_rows(table, dt, did, uuid.UUID(row["id"]), row["run"]))
    return {k: pa.concat_tables(v, promote_options="permissive") for k, v in out.items()}

