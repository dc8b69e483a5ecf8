"""Load a release back into a repository (``drp import``).

The release's ``datasets/`` directory is a :mod:`store.transfer` export: dimension
records, dataset types, runs and the dataset files with their IDs and checksums.
Importing it re-creates the same datasets (same UUIDs, same bytes), so the SQL tables
of the new repository hold the same rows as the release's catalogs.  The release's
collection is re-created as a CHAINED collection of its runs when it was one, and
becomes the default collection of a repository that has none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .config import ReleaseError
from .layout import DATASETS_DIR, read_manifest
from .verify import verify_release

__all__ = ["ImportSummary", "import_release"]


@dataclass(frozen=True)
class ImportSummary:
    """What :func:`import_release` did."""

    n_datasets: int
    runs: tuple[str, ...]
    collection: str | None

    def format(self) -> str:
        """One line for the command line."""
        chain = f"; collection {self.collection}" if self.collection else ""
        return f"imported {self.n_datasets} dataset(s) into run(s) {', '.join(self.runs)}{chain}"


def _check_not_imported(repo, bundle: Path) -> None:
    """Refuse, in one line, a release whose datasets the repository already holds."""
    import pyarrow.parquet as pq

    ids = pq.read_table(bundle / "datasets.parquet", columns=["id"]).column("id").to_pylist()
    found = repo.registry.query(
        "SELECT id::VARCHAR AS id FROM dataset WHERE id::VARCHAR IN (SELECT unnest($ids)) "
        "LIMIT 1", {"ids": [str(i) for i in ids]})
    if found.num_rows:
        raise ReleaseError(f"the repository already holds dataset {found.column('id')[0]} of "
                           "this release; was it imported before?")


def import_release(repo, directory: str | os.PathLike, *, transfer: str = "copy",
                   verify: bool = True) -> ImportSummary:
    """Import the datasets of a release into ``repo``.

    Parameters
    ----------
    repo : store.Repo
        Destination repository (its runs must not already hold these datasets).
    directory : path-like
        Release directory.
    transfer : {"copy", "hardlink", "symlink"}
        How files enter the repository.
    verify : bool
        Check every release file against the MANIFEST first (HATS validation is
        left to ``drp verify --export``).

    Returns
    -------
    ImportSummary

    Raises
    ------
    ReleaseError
        Not a release, a release that fails its checks, or one exported without datasets.
    """
    from ..transfer import import_datasets

    root = Path(directory)
    manifest = read_manifest(root)
    if verify:
        report = verify_release(root, hats=False)
        if not report.ok:
            first = (report.missing + report.corrupt + report.extra + report.problems)[0]
            kind = ("missing" if report.missing else "corrupt" if report.corrupt
                    else "unlisted" if report.extra else "inconsistent")
            raise ReleaseError(f"release {root} fails its checks ({kind}: {first}); "
                               "run drp verify --export for the full list")
    bundle = root / DATASETS_DIR
    if not bundle.is_dir():
        raise ReleaseError(f"release {root} holds no datasets to import "
                           "(it was exported with include_datasets=False)")
    _check_not_imported(repo, bundle)
    n = import_datasets(repo, bundle, transfer=transfer)
    release = manifest["release"]
    runs = tuple(release.get("runs", []))
    collection = None
    if release.get("collection_type") == "CHAINED":
        name = release["collection"]
        kind = repo.registry.collection_type(name)
        if kind is None:
            repo.register_chain(name, list(runs), doc="imported data release")
            collection = name
        elif kind == "CHAINED" and repo.collection_runs(name) == list(runs):
            collection = name
    elif release.get("collection_type") == "RUN":
        collection = release["collection"]
    if collection is not None and repo.default_collection is None:
        # A fresh repository shows the release in its SQL tables, as the source did.
        repo.set_default_collection(collection)
    return ImportSummary(n, runs, collection)
