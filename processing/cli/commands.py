"""``drp`` commands beyond the store verbs: simulation, pipeline runs, status."""

from __future__ import annotations

import sys

import click

from . import handle_errors, main
from .output import print_table


@main.command()
@click.argument("repo", type=click.Path())
@click.option("--preset", default="demo", show_default=True,
              help="Survey preset: demo (2x2 detectors, 12 visits) or comcam (3x3 x 4k).")
@click.option("--visits", type=int, default=None, help="Number of visits (preset default).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--jobs", type=int, default=None, help="Rendering processes (default: cores).")
@handle_errors
def simulate(repo, preset, visits, seed, jobs) -> None:
    """Simulate a survey into REPO (created if needed): post_isr_image, reference_catalog, truth."""
    from pathlib import Path

    from sample_data import simulate_survey
    from store import Repo

    r = Repo(repo) if (Path(repo) / "registry.duckdb").exists() else Repo.create(repo)
    with r:
        result = simulate_survey(r, preset=preset, seed=seed, n_visits=visits, n_workers=jobs)
    click.echo(str(result))


@main.command("run")
@click.argument("repo", type=click.Path())
@click.option("--pipeline", "-p", default="drp", show_default=True,
              help="Pipeline name or a .py file defining PIPELINE.")
@click.option("--input", "-i", "inputs", multiple=True, required=True,
              help="Input collection(s), searched in order.")
@click.option("--output", "-o", required=True,
              help="CHAINED collection: the new run in front of the inputs.")
@click.option("--where", "-w", default=None, help="SQL restriction of the data IDs.")
@click.option("--tasks", "-t", default=None, help="Comma-separated subset of the tasks.")
@click.option("--jobs", "-j", type=int, default=None, help="Worker processes (default: cores).")
@click.option("--dask", default=None, envvar="DASK_SCHEDULER_ADDRESS",
              help="Dask scheduler address (tcp://host:8786).")
@click.option("--resume", is_flag=True, help="Continue the output's latest run.")
@click.option("--inputs-query", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Your own coadd input selection (.sql with @param headers; must return "
                   "visit and detector).")
@click.option("--query-param", "query_params", multiple=True, metavar="NAME=VALUE",
              help="A parameter of the coadd input selection (e.g. max_psf_fwhm=1.2).")
@handle_errors
def run_cmd(repo, pipeline, inputs, output, where, tasks, jobs, dask, resume, inputs_query,
            query_params) -> None:
    """Run a pipeline on REPO: outputs go to a new RUN chained in front of the inputs."""
    from processing.pipeline import run_pipeline
    from processing.pipelines import get_pipeline
    from store import Repo

    chosen = get_pipeline(pipeline)
    if inputs_query or query_params:
        from processing.coadd_inputs import with_inputs_query

        params = {}
        for item in query_params:
            key, sep, value = item.partition("=")
            if not sep:
                raise click.BadParameter(f"expected NAME=VALUE, got {item!r}",
                                         param_hint="--query-param")
            params[key.strip()] = value.strip()
        chosen = with_inputs_query(chosen, inputs_query, params)
    with Repo(repo) as r:
        summary = run_pipeline(r, chosen, inputs=list(inputs), output=output,
                               where=where, tasks=tasks.split(",") if tasks else None,
                               jobs=jobs, dask=dask, resume=resume)
    click.echo(summary.format())
    if summary.total("succeeded") == 0 and summary.total("skipped") == 0 and summary.ok:
        click.echo("nothing to do: no data ID matched" + (f" --where {where!r}" if where else ""))
    if not summary.ok:
        sys.exit(1)


@main.command()
@click.argument("repo", type=click.Path())
@click.argument("run")
@click.option("--failures", is_flag=True, help="List failed quanta with their errors.")
@handle_errors
def status(repo, run, failures) -> None:
    """Summarise the quanta of RUN: counts per task and status, timings."""
    from store import Repo

    with Repo(repo) as r:
        table = r.sql(
            "SELECT task, status, count(*) AS n, "
            "round(avg(epoch(end_time) - epoch(start_time)), 3) AS mean_s, "
            "min(start_time) AS first_start, max(end_time) AS last_end "
            "FROM quantum WHERE run = $run GROUP BY task, status ORDER BY min(start_time), task",
            {"run": run})
        if table.num_rows == 0:
            click.echo(f"no quanta recorded for run {run!r}")
            return
        print_table(table)
        if failures:
            print_table(r.sql("SELECT task, data_id, error FROM quantum WHERE run = $run AND "
                              "status = 'failed' ORDER BY task, data_id", {"run": run}))


@main.command("register-skymap")
@click.argument("repo", type=click.Path())
@click.argument("name")
@click.option("--rings", type=int, default=120, show_default=True,
              help="Number of rings of a rings sky map (Rubin's lsst_cells_v1 has 120).")
@click.option("--discrete", "discrete", multiple=True, metavar="RA,DEC,RADIUS",
              help="A tract of a discrete sky map instead (degrees; repeatable).")
@click.option("--all-tracts", is_flag=True,
              help="Register every tract (default: the tracts the visits touch).")
@handle_errors
def register_skymap_cmd(repo, name, rings, discrete, all_tracts) -> None:
    """Register sky map NAME in REPO: tract and patch records with their sky polygons."""
    from processing.skymap import DiscreteSkyMap, RingsSkyMap
    from processing.skymap.register import register_skymap
    from store import Repo

    if discrete:
        parsed = [tuple(float(v) for v in d.split(",")) for d in discrete]
        if any(len(p) != 3 for p in parsed):
            raise click.BadParameter("expected RA,DEC,RADIUS", param_hint="--discrete")
        skymap = DiscreteSkyMap([p[:2] for p in parsed], [p[2] for p in parsed])
    else:
        skymap = RingsSkyMap(rings)
    with Repo(repo) as r:
        counts = register_skymap(r, name, skymap, all_tracts=all_tracts)
    click.echo(f"registered sky map {name}: {counts['tracts']} tract(s), "
               f"{counts['patches']} patch(es)")


@main.command()
@click.argument("directory", type=click.Path(), default="demo-repo", required=False)
@click.option("--preset", default="demo", show_default=True, help="Survey preset to simulate.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--jobs", "-j", type=int, default=None, help="Worker processes (default: cores).")
@click.option("--no-export", is_flag=True, help="Skip the data-release export.")
@click.option("--no-report", is_flag=True, help="Skip the QA report.")
@click.option("--all-patches", is_flag=True,
              help="Coadd every patch the visits touch (default: the 4 central patches).")
@handle_errors
def demo(directory, preset, seed, jobs, no_export, no_report, all_patches) -> None:
    """Simulate a small survey in DIRECTORY, run the whole pipeline, export a release."""
    from processing.demo import format_result, run_demo

    result = run_demo(directory, preset=preset, seed=seed, jobs=jobs, export=not no_export,
                      report=not no_report, all_patches=all_patches, echo=click.echo)
    click.echo(format_result(result))
    if result.summary is not None and not result.summary.ok:
        sys.exit(1)


@main.command()
@click.argument("repo", type=click.Path(), required=False)
@click.argument("name", required=False)
@click.option("--param", "-p", "params", multiple=True, metavar="NAME=VALUE",
              help="Value of a query parameter (repeatable).")
@click.option("--list", "list_queries", is_flag=True, help="List the named queries.")
@click.option("--show", is_flag=True, help="Print the query's SQL instead of running it.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True)
@handle_errors
def query(repo, name, params, list_queries, show, fmt) -> None:
    """Run the named query NAME (a file of queries/, or a .sql path) against REPO."""
    import queries as named

    if list_queries:
        for q in named.list_queries():
            click.echo(f"{q.name:<22} {q.summary}")
            for p in q.params.values():
                default = "" if p.required else f" = {p.default}"
                click.echo(f"    --param {p.name} ({p.type}{default})  {p.doc}")
        return
    if not name:
        raise click.UsageError("give REPO and a query NAME, or --list")
    try:
        q = named.load(name if repo is not None else repo)
    except FileNotFoundError as err:
        raise click.ClickException(str(err)) from None
    values = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="--param")
        values[key.strip()] = value.strip()
    try:
        bind = q.bind(values)
    except named.QueryParameterError as err:
        raise click.ClickException(str(err)) from None
    if show:
        click.echo(q.sql)
        return
    from store import Repo

    with Repo(repo) as r:
        print_table(r.sql(q.sql, bind, adql=False), fmt)
