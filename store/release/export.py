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
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ..formats import get_storage_class
from .config import ExportConfig, ReleaseError, ReleaseExistsError
from .describe import astropy_metadata
from .layout import (
    DATASETS_DIR,
    IMAGES_DIR,
    OBSCORE_PARQUET,
    OBSCORE_VOTABLE,
    README,
    SCHEMA,
    readme_text,
    write_manifest,
)
from .tables import ExportedTable, export_tables, notice

__all__ = ["ExportedTable", "ReleaseSummary", "export_release"]


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


def _export_images(repo, config: ExportConfig, search: str | None, notices: list[str]
                   ) -> list[tuple[Any, Any]]:
    found = []
    registered = {dt.name: dt for dt in repo.dataset_types()}
    for spec in config.images:
        dt = registered.get(spec.dataset_type)
        if dt is None:
            notice(notices, f"image dataset type {spec.dataset_type} is not registered; skipped")
            continue
        if get_storage_class(dt.storage_class).extension != ".fits":
            notice(notices, f"dataset type {spec.dataset_type} is stored as "
                             f"{dt.storage_class}, not FITS; skipped")
            continue
        result = repo.query_datasets(spec.dataset_type, collections=search)
        if len(result) == 0:
            notice(notices, f"no {spec.dataset_type} datasets in "
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
        tables, schemas, backing = export_tables(repo, config, tmp, collection, notices,
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
            placed = _bundle_paths(results)
        else:
            access = placed = _copy_images(repo, images, tmp, config.transfer)
        # Files placed verbatim keep the registry's checksum: no need to read them again.
        known = {placed[i]: (int(ref.size), ref.checksum) for i, ref in refs.items()
                 if i in placed and ref.checksum and ref.size is not None}
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
        manifest = write_manifest(tmp, release, known)
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
