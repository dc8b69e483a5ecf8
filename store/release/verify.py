"""Check a release directory: files against the MANIFEST, schema, HATS catalogs, index.

Checks, each reported as a one-line problem:

* every file in ``MANIFEST.json`` exists with its size and BLAKE2b checksum, and no
  file is unlisted;
* every table's Parquet file has the rows the MANIFEST states and the columns and
  types ``schema.json`` describes;
* every HATS catalog passes ``hats.io.validation.is_valid_catalog(strict=True)`` and
  holds the rows the MANIFEST states;
* every ObsCore ``access_url`` names a file of the release;
* the dataset bundle's own checksums agree with the MANIFEST.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from ..datastore import checksum_file
from .describe import arrow_type_name
from .layout import DATASETS_DIR, OBSCORE_PARQUET, SCHEMA, list_files, read_manifest

__all__ = ["ReleaseVerifyReport", "verify_release"]


@dataclass
class ReleaseVerifyReport:
    """What :func:`verify_release` found."""

    n_checked: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is missing, corrupt, unlisted or inconsistent."""
        return not (self.missing or self.corrupt or self.extra or self.problems)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage().splitlines()[0])


def _check_files(root: Path, manifest: dict, report: ReleaseVerifyReport, checksums: bool
                 ) -> dict[str, dict]:
    listed = {f["path"]: f for f in manifest["files"]}
    for rel, entry in listed.items():
        path = root / rel
        report.n_checked += 1
        if not path.is_file():
            report.missing.append(rel)
            continue
        if not checksums:
            if path.stat().st_size != entry["size"]:
                report.corrupt.append(rel)
            continue
        size, checksum = checksum_file(path)
        if size != entry["size"] or checksum != entry["checksum"]:
            report.corrupt.append(rel)
    report.extra.extend(sorted(set(list_files(root)) - set(listed)))
    return listed


def _check_tables(root: Path, manifest: dict, listed: dict, report: ReleaseVerifyReport
                  ) -> None:
    try:
        schema = json.loads((root / SCHEMA).read_text())
        described = {t["name"]: t for t in schema["tables"]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        report.problems.append(f"{SCHEMA}: unreadable ({err})")
        described = {}
    for table in manifest["release"].get("tables", []):
        name, rel = table["name"], table["path"]
        if rel not in listed or not (root / rel).is_file():
            continue  # already reported as missing
        meta = pq.read_metadata(root / rel)
        if meta.num_rows != table["n_rows"]:
            report.problems.append(f"{rel}: {meta.num_rows} rows, MANIFEST says "
                                   f"{table['n_rows']}")
        desc = described.get(name)
        if desc is None:
            report.problems.append(f"{SCHEMA}: table {name} is not described")
        else:
            arrow = meta.schema.to_arrow_schema()
            have = [(f.name, arrow_type_name(f.type)) for f in arrow]
            want = [(c["name"], c["type"]) for c in desc["columns"]]
            if have != want:
                diff = sorted(set(have) ^ set(want)) or ["column order"]
                report.problems.append(f"{rel}: columns differ from {SCHEMA} ({diff[0]})")
        if table.get("hats"):
            _check_hats(root, table, report)


def _check_hats(root: Path, table: dict, report: ReleaseVerifyReport) -> None:
    from hats.catalog import TableProperties
    from hats.io.validation import is_valid_catalog

    path = root / table["hats"]
    handler = _Collect()
    root_logger = logging.getLogger()
    root_logger.addHandler(handler)
    try:
        valid = is_valid_catalog(path, strict=True)
    finally:
        root_logger.removeHandler(handler)
    if not valid:
        why = handler.messages[0] if handler.messages else "invalid"
        report.problems.append(f"{table['hats']}: not a valid HATS catalog ({why})")
        return
    rows = TableProperties.read_from_dir(path).total_rows
    if rows != table["hats_rows"]:
        report.problems.append(f"{table['hats']}: {rows} rows, MANIFEST says "
                               f"{table['hats_rows']}")


def _check_index(root: Path, listed: dict, report: ReleaseVerifyReport) -> None:
    if OBSCORE_PARQUET not in listed or not (root / OBSCORE_PARQUET).is_file():
        return
    index = pq.read_table(root / OBSCORE_PARQUET, columns=["access_url", "checksum"])
    for url, checksum in zip(*(index.column(c).to_pylist() for c in ("access_url", "checksum")),
                             strict=True):
        entry = listed.get(url)
        if entry is None:
            report.problems.append(f"{OBSCORE_PARQUET}: access_url {url} is not in the release")
        elif entry["checksum"] != checksum:
            report.problems.append(f"{OBSCORE_PARQUET}: checksum of {url} differs from MANIFEST")


def _check_bundle(root: Path, listed: dict, report: ReleaseVerifyReport) -> None:
    rows_path = root / DATASETS_DIR / "datasets.parquet"
    if not rows_path.is_file():
        return
    rows = pq.read_table(rows_path, columns=["path", "external", "checksum"])
    for rel, external, checksum in zip(*(rows.column(c).to_pylist() for c in (
            "path", "external", "checksum")), strict=True):
        inner = f"{DATASETS_DIR}/files/{Path(rel).name if external else rel}"
        entry = listed.get(inner)
        if entry is None:
            report.problems.append(f"{DATASETS_DIR}: dataset file {inner} is not in the MANIFEST")
        elif entry["checksum"] != checksum:
            report.problems.append(f"{DATASETS_DIR}: checksum of {inner} differs between "
                                   "datasets.parquet and the MANIFEST")


def verify_release(directory: str | Path, *, checksums: bool = True, hats: bool = True
                   ) -> ReleaseVerifyReport:
    """Check a release directory written by :func:`store.release.export_release`.

    Parameters
    ----------
    directory : path-like
        The release.
    checksums : bool
        Recompute every file's checksum (else sizes only).
    hats : bool
        Validate the HATS catalogs (strict).

    Returns
    -------
    ReleaseVerifyReport
    """
    root = Path(directory)
    manifest = read_manifest(root)
    report = ReleaseVerifyReport()
    listed = _check_files(root, manifest, report, checksums)
    if not hats:
        manifest = {**manifest, "release": {**manifest["release"], "tables": [
            {**t, "hats": None} for t in manifest["release"].get("tables", [])]}}
    _check_tables(root, manifest, listed, report)
    _check_index(root, listed, report)
    _check_bundle(root, listed, report)
    return report
