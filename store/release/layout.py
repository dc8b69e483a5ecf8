"""File layout of a release directory, its MANIFEST and its README.

::

    <release>/
      README.md                  what the release holds and how to read it
      MANIFEST.json              release facts, and size + checksum of every other file
      schema.json                every table and column: name, type, unit, description
      catalogs/<Table>.parquet   one Parquet file per table (DuckDB, pyarrow, astropy, polars)
      hats/<Table>/              HATS catalogs of the tables with sky positions (lsdb, hats)
      images/obscore.parquet     ObsCore index of the image files
      images/obscore.xml         the same index as a VOTable (astropy, pyvo)
      datasets/                  the datasets behind the release with their registry
                                 records (``store.transfer`` layout; ``drp import``)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..datastore import checksum_file
from .config import ReleaseError

__all__ = [
    "CATALOG_DIR",
    "DATASETS_DIR",
    "FORMAT",
    "HATS_DIR",
    "IMAGES_DIR",
    "MANIFEST",
    "OBSCORE_PARQUET",
    "OBSCORE_VOTABLE",
    "README",
    "SCHEMA",
    "list_files",
    "read_manifest",
    "readme_text",
    "write_manifest",
]

#: Format tag written in the MANIFEST (bumped when the layout changes).
FORMAT = "drp-release/1"
MANIFEST = "MANIFEST.json"
README = "README.md"
SCHEMA = "schema.json"
CATALOG_DIR = "catalogs"
HATS_DIR = "hats"
IMAGES_DIR = "images"
DATASETS_DIR = "datasets"
OBSCORE_PARQUET = f"{IMAGES_DIR}/obscore.parquet"
OBSCORE_VOTABLE = f"{IMAGES_DIR}/obscore.xml"


def list_files(root: Path) -> list[str]:
    """Every file under ``root`` (relative POSIX paths, sorted), the MANIFEST excepted."""
    out = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def write_manifest(root: Path, release: dict[str, Any],
                   known: dict[str, tuple[int, str]] | None = None) -> dict[str, Any]:
    """Checksum every file of the release and write ``MANIFEST.json``; returns it.

    Parameters
    ----------
    root : pathlib.Path
        The release directory being written.
    release : dict
        The MANIFEST's ``release`` section.
    known : dict of str to (int, str), optional
        ``relative path -> (size, checksum)`` of files copied or hard-linked
        verbatim from a repository whose registry already records them: they
        are not read again (the manifest then states what the file must hold,
        so a release verification still catches a copy of a damaged file).
        A file whose size differs from its record is hashed.

    Returns
    -------
    dict
        The manifest written.
    """
    from concurrent.futures import ThreadPoolExecutor

    known = known or {}

    def describe(rel: str) -> tuple[int, str]:
        path = root / rel
        if rel in known and path.stat().st_size == known[rel][0]:
            return known[rel]
        return checksum_file(path)

    rels = list_files(root)
    # hashlib releases the GIL on large buffers: two threads hash twice as fast.
    with ThreadPoolExecutor(max_workers=2) as pool:
        sums = list(pool.map(describe, rels))
    files = [{"path": rel, "size": size, "checksum": checksum}
             for rel, (size, checksum) in zip(rels, sums, strict=True)]
    manifest = {"format": FORMAT, "release": release, "files": files,
                "n_files": len(files), "total_bytes": sum(f["size"] for f in files)}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def read_manifest(root: Path) -> dict[str, Any]:
    """The parsed ``MANIFEST.json`` of a release (one-line error when absent or broken)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise ReleaseError(f"{root} is not a drp release (missing {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as err:
        raise ReleaseError(f"{path}: not valid JSON ({err})") from None
    if manifest.get("format") != FORMAT:
        raise ReleaseError(f"{path}: unsupported release format {manifest.get('format')!r}, "
                           f"expected {FORMAT}")
    return manifest


def readme_text(release: dict[str, Any]) -> str:
    """The release's README (Markdown) from its MANIFEST ``release`` section."""
    lines = [f"# Data release: {release['collection']}", "",
             f"Exported by drp {release['drp_version']} on {release['created']} from the "
             f"collection `{release['collection']}` (runs: {', '.join(release['runs']) or 'none'}).",
             "", "## Contents", ""]
    for t in release["tables"]:
        n_parts = t["hats_partitions"]
        hats = (f"; HATS catalog `{t['hats']}` ({n_parts} partition{'s' * (n_parts != 1)})"
                if t["hats"] else "")
        lines.append(f"* `{t['path']}`: **{t['name']}**, {t['n_rows']:,} rows"
                     f"{hats}. {t['description']}")
    for name, n in release["images"].items():
        lines.append(f"* {n:,} `{name}` FITS files, listed in `{OBSCORE_PARQUET}` and "
                     f"`{OBSCORE_VOTABLE}`")
    if release["n_datasets"]:
        lines.append(f"* `{DATASETS_DIR}/`: the {release['n_datasets']:,} datasets behind the "
                     "release with their registry records (`drp import` rebuilds a repository)")
    if release["notices"]:
        lines += ["", "Not included:", ""] + [f"* {n}" for n in release["notices"]]
    lines += [
        "", "`schema.json` describes every table and column (name, type, unit, description);",
        f"`{MANIFEST}` lists every file with its size and BLAKE2b checksum.", "",
        "## Reading it", "", "```python"]
    tables = release["tables"]
    if tables:
        first = tables[0]
        lines += ["import duckdb",
                  f"duckdb.sql(\"SELECT count(*) FROM '{first['path']}'\")", "",
                  "from astropy.table import Table",
                  f"rows = Table.read('{first['path']}')      # units restored", ""]
    if release["images"]:
        lines += [] if tables else ["from astropy.table import Table"]
        lines += [f"index = Table.read('{OBSCORE_VOTABLE}')   # ObsCore index (VOTable)", ""]
    located = [t for t in tables if t["hats"]]
    if located:
        t = located[0]
        lines += ["import lsdb",
                  f"cat = lsdb.open_catalog('{t['hats']}')",
                  "near = cat.cone_search(ra=RA_DEG, dec=DEC_DEG, radius_arcsec=60).compute()"]
    lines += [
        "```", "",
        "Check the files with `drp verify --export .` and load the release into a drp",
        "repository with `drp import . REPO`.", ""]
    return "\n".join(lines)
