"""The ``drp`` command: a thin layer over the library.

Each command parses its options, calls one library function and prints.
Library errors (:class:`store.errors.DrpError`) become one-line messages and a
non-zero exit.  Heavy modules are imported inside the commands that need
them, so ``drp sql`` starts in a fraction of a second.
"""

from __future__ import annotations

import functools
import sys

import click

from .output import FORMATS, print_table

__all__ = ["main"]


def handle_errors(func):
    """Turn library errors into one-line ``click`` errors."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from store.errors import DrpError

        try:
            return func(*args, **kwargs)
        except DrpError as err:
            raise click.ClickException(str(err).splitlines()[0] if str(err) else
                                       type(err).__name__) from None
        except FileNotFoundError as err:
            raise click.ClickException(f"{err.filename or err}: no such file") from None
        except PermissionError as err:
            raise click.ClickException(f"permission denied: {err.filename or err}") from None

    return wrapper


format_option = click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
    help="Output format.")
collections_option = click.option(
    "--collections", "-c", multiple=True,
    help="Collections to search, in order (default: the repository's default collection).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="drp")
def main() -> None:
    """drp: an embedded data-release processing system for imaging surveys."""


def _parse_binds(values: tuple[str, ...]) -> dict:
    out = {}
    for item in values:
        if "=" not in item:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="--bind")
        key, value = item.split("=", 1)
        out[key] = _coerce(value)
    return out


def _coerce(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


@main.command()
@click.argument("repo", type=click.Path())
@handle_errors
def init(repo: str) -> None:
    """Create an empty repository at REPO."""
    from store import Repo

    r = Repo.create(repo)
    click.echo(f"created repository {r.root}")


@main.command()
@click.argument("repo", type=click.Path())
@click.argument("query")
@format_option
@click.option("--bind", "-b", multiple=True, metavar="NAME=VALUE",
              help="Value of a $NAME parameter (repeatable).")
@click.option("--adql/--no-adql", default=None,
              help="Force or forbid ADQL translation (default: auto-detect).")
@click.option("--limit", type=int, default=None, help="Print at most this many rows.")
@handle_errors
def sql(repo: str, query: str, fmt: str, bind: tuple[str, ...], adql, limit) -> None:
    """Run a read-only SQL (or ADQL) QUERY against REPO.

    Tables: the registry (dataset, collection, visit, detector, patch...) and one
    table per table dataset type in the default collection (Visit, CcdVisit,
    Source... once the pipeline has run).
    """
    from store import Repo

    with Repo(repo) as r:
        table = r.sql(query, _parse_binds(bind), adql=adql)
    print_table(table, fmt, limit=limit)


@main.command("query-datasets")
@click.argument("repo", type=click.Path())
@click.argument("dataset_type")
@click.option("--where", "-w", default=None, help="SQL condition on data IDs and dimensions.")
@click.option("--bind", "-b", multiple=True, metavar="NAME=VALUE")
@collections_option
@format_option
@handle_errors
def query_datasets(repo, dataset_type, where, bind, collections, fmt) -> None:
    """List datasets of DATASET_TYPE in REPO matching --where."""
    from store import Repo

    with Repo(repo) as r:
        result = r.query_datasets(dataset_type, where, bind=_parse_binds(bind),
                                  collections=list(collections) or None)
        dims = list(r.get_dataset_type(dataset_type).dimensions)
    table = result.table.select([*dims, "run", "path", "size", "id"])
    print_table(table, fmt)


@main.command()
@click.argument("repo", type=click.Path())
@click.argument("dataset_type")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--run", required=True, help="RUN collection to ingest into (created if new).")
@click.option("--data-id", "data_ids", multiple=True, required=True, metavar="K=V,K=V",
              help="Data ID of each file, in order (repeat once per file).")
@click.option("--transfer", type=click.Choice(["copy", "move", "hardlink", "symlink", "direct"]),
              default="copy", show_default=True)
@handle_errors
def ingest(repo, dataset_type, files, run, data_ids, transfer) -> None:
    """Register existing FILES as datasets of DATASET_TYPE."""
    from store import Repo

    if len(data_ids) != len(files):
        raise click.BadParameter(f"{len(files)} files but {len(data_ids)} --data-id values")
    parsed = [dict(_coerce_pair(p) for p in d.split(",")) for d in data_ids]
    with Repo(repo) as r:
        r.register_run(run, exist_ok=True)
        refs = r.ingest(files, dataset_type, parsed, run=run, transfer=transfer)
    click.echo(f"ingested {len(refs)} {dataset_type} dataset(s) into {run}")


def _coerce_pair(text: str):
    if "=" not in text:
        raise click.BadParameter(f"expected K=V, got {text!r}", param_hint="--data-id")
    k, v = text.split("=", 1)
    return k.strip(), _coerce(v.strip())


@main.command()
@click.argument("repo", type=click.Path(), required=False)
@click.option("--repair", is_flag=True, help="Remove orphan files (not registered).")
@click.option("--fast", is_flag=True, help="Check existence and size only, not checksums.")
@click.option("--export", "export_dir", type=click.Path(), default=None, metavar="DIR",
              help="Check the data release in DIR instead (MANIFEST, schema, HATS, index).")
@handle_errors
def verify(repo, repair, fast, export_dir) -> None:
    """Check that every registered file of REPO exists and matches its checksum."""
    from store import Repo

    if export_dir is not None:
        from .release import verify_export

        return verify_export(export_dir, fast)
    if repo is None:
        raise click.UsageError("give REPO, or --export DIR to check a release")

    with Repo(repo) as r:
        report = r.verify(repair=repair, checksums=not fast)
    for path in report.missing:
        click.echo(f"MISSING  {path}")
    for path in report.corrupt:
        click.echo(f"CORRUPT  {path}")
    for path in report.orphans:
        click.echo(f"{'REMOVED' if repair else 'ORPHAN '}  {path}")
    click.echo(f"{report.n_checked} datasets checked: {len(report.missing)} missing, "
               f"{len(report.corrupt)} corrupt, {len(report.orphans)} orphan file(s)"
               + (" removed" if repair and report.orphans else ""))
    if not report.ok:
        sys.exit(1)


@main.command()
@click.argument("repo", type=click.Path())
@format_option
@handle_errors
def collections(repo, fmt) -> None:
    """List the collections of REPO."""
    from store import Repo

    with Repo(repo) as r:
        print_table(r.collections(), fmt)


def _register_subcommands() -> None:
    # Commands defined in other modules register themselves on import; the
    # modules are light (they import their heavy dependencies lazily).
    from . import commands, release, report  # noqa: F401


_register_subcommands()
