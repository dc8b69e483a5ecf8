"""``drp export`` and ``drp import``: data releases (and the check behind ``verify --export``)."""

from __future__ import annotations

import sys
import warnings

import click

from . import handle_errors, main

__all__ = ["verify_export"]


def _parse_tables(values: tuple[str, ...]):
    from store.release import TableSpec

    out = []
    for item in values:
        name, sep, query = item.partition("=")
        if not sep or not name.strip() or not query.strip():
            raise click.BadParameter(f"expected NAME=SELECT..., got {item!r}",
                                     param_hint="--table")
        out.append(TableSpec(name.strip(), "catalogs", query=query.strip()))
    return tuple(out)


@main.command("export")
@click.argument("repo", type=click.Path())
@click.option("--to", "target", required=True, type=click.Path(),
              help="Release directory to create (written aside, renamed when complete).")
@click.option("--collection", "-c", default=None,
              help="Collection to export (default: the default collection the SQL tables show).")
@click.option("--what", default="catalogs,visits,images", show_default=True,
              help="Comma-separated parts: catalogs (Source, PsfStar, CoaddCells), visits "
                   "(Visit, CcdVisit), images (FITS + ObsCore index).")
@click.option("--table", "tables", multiple=True, metavar="NAME=SELECT...",
              help="Export a query's rows as table NAME instead of the default tables "
                   "(repeatable).")
@click.option("--images", "image_types", default=None, metavar="TYPE,...",
              help="Image dataset types (default: visit_image, deep_coadd, deep_coadd_cell).")
@click.option("--hats-max-rows", type=int, default=1_000_000, show_default=True,
              help="Largest number of rows in one HATS partition.")
@click.option("--no-datasets", is_flag=True,
              help="Leave out the datasets behind the release (no `drp import` possible).")
@click.option("--transfer", type=click.Choice(["copy", "hardlink"]), default="copy",
              show_default=True, help="How dataset files enter the release.")
@click.option("--overwrite", is_flag=True, help="Replace an existing release at --to.")
@click.option("--no-sync", is_flag=True, help="Skip the flush to disk before the final rename.")
@handle_errors
def export_cmd(repo, target, collection, what, tables, image_types, hats_max_rows, no_datasets,
               transfer, overwrite, no_sync) -> None:
    """Export a collection of REPO as a data release: Parquet + HATS catalogs, FITS images
    with an ObsCore index, schema, MANIFEST and README."""
    from store import Repo
    from store.release import DEFAULT_IMAGES, DEFAULT_TABLES, ExportConfig, ImageSpec, export_release

    parts = tuple(p.strip() for p in what.split(",") if p.strip())
    images = DEFAULT_IMAGES
    if image_types:
        levels = {s.dataset_type: s.calib_level for s in DEFAULT_IMAGES}
        images = tuple(ImageSpec(t.strip(), levels.get(t.strip(), 3 if "coadd" in t else 2))
                       for t in image_types.split(",") if t.strip())
    custom = _parse_tables(tables)
    config = ExportConfig(what=parts, tables=custom or DEFAULT_TABLES, images=images,
                          hats_max_rows=hats_max_rows, include_datasets=not no_datasets,
                          transfer=transfer, durable=not no_sync)
    with Repo(repo) as r, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # notices are printed with the summary
        summary = export_release(r, target, collection=collection, config=config,
                                 overwrite=overwrite)
    click.echo(summary.format())


@main.command("import")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.argument("repo", type=click.Path())
@click.option("--transfer", type=click.Choice(["copy", "hardlink", "symlink"]), default="copy",
              show_default=True, help="How files enter the repository.")
@handle_errors
def import_cmd(directory, repo, transfer) -> None:
    """Import the release in DIRECTORY into REPO (created when it does not exist)."""
    from pathlib import Path

    from store import Repo
    from store.release import import_release

    path = Path(repo)
    created = not (path / "registry.duckdb").exists()
    r = Repo.create(path) if created else Repo(path)
    with r:
        if created:
            click.echo(f"created repository {r.root}")
        summary = import_release(r, directory, transfer=transfer)
    click.echo(summary.format())


def verify_export(directory: str, fast: bool) -> None:
    """Body of ``drp verify --export DIR``: print problems, exit 1 if any."""
    from store.release import verify_release

    report = verify_release(directory, checksums=not fast)
    for path in report.missing:
        click.echo(f"MISSING   {path}")
    for path in report.corrupt:
        click.echo(f"CORRUPT   {path}")
    for path in report.extra:
        click.echo(f"UNLISTED  {path}")
    for problem in report.problems:
        click.echo(f"PROBLEM   {problem}")
    click.echo(f"{report.n_checked} files checked: {len(report.missing)} missing, "
               f"{len(report.corrupt)} corrupt, {len(report.extra)} unlisted, "
               f"{len(report.problems)} other problem(s)")
    if not report.ok:
        sys.exit(1)
