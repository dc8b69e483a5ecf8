"""``drp report``: the data-release QA report of a collection, as one HTML file."""

from __future__ import annotations

import click

from . import handle_errors, main

__all__: list[str] = []


@main.command("report")
@click.argument("repo", type=click.Path())
@click.option("--collection", "-c", default=None,
              help="Collection to report on (default: the repository's default collection).")
@click.option("--to", "target", default="report.html", show_default=True, type=click.Path(),
              help="HTML file to write (self-contained: figures embedded).")
@click.option("--visit", type=int, default=None,
              help="Visit of the focal-plane PSF map (default: a median-seeing visit).")
@click.option("--max-patches", type=click.IntRange(min=1), default=6, show_default=True,
              help="Coadd patches shown per band (the best-covered first).")
@handle_errors
def report_cmd(repo, collection, target, visit, max_patches) -> None:
    """Write the QA report of a collection of REPO: conditions per visit, PSF, calibration
    residuals, coadds, and truth comparisons when simulated."""
    import warnings

    from processing.report import write_report
    from store import Repo

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Repo(repo) as r:
            path = write_report(r, target, collection=collection, visit=visit,
                                max_patches=max_patches)
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    click.echo(f"wrote {path}")
