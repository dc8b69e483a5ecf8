"""The store verbs of the drp command, through click's CliRunner."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from processing.cli import main
from store import Exposure, Repo
from store.formats.fits import write_exposure

from .conftest import populate_dimensions


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def cli_repo(tmp_path, runner):
    path = tmp_path / "repo"
    result = runner.invoke(main, ["init", str(path)])
    assert result.exit_code == 0, result.output
    with Repo(path) as repo:
        populate_dimensions(repo)
        repo.register_dataset_type("post_isr_image", ("instrument", "visit", "detector"),
                                   "Exposure")
    return path


def test_every_command_has_help(runner):
    for name, command in main.commands.items():
        assert command.help, f"drp {name} has no help text"
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output


def test_sql_formats_and_errors(runner, cli_repo):
    out = runner.invoke(main, ["sql", str(cli_repo), "SELECT visit, band FROM visit "
                               "WHERE band = $b ORDER BY visit", "--bind", "b=r"])
    assert out.exit_code == 0
    assert out.output.splitlines()[0].split() == ["visit", "band"]
    assert "(3 rows)" in out.output
    out = runner.invoke(main, ["sql", str(cli_repo), "SELECT visit FROM visit ORDER BY visit",
                               "--format", "csv"])
    assert out.output.splitlines() == ["\"visit\""] + [str(v) for v in range(6)]
    out = runner.invoke(main, ["sql", str(cli_repo), "SELECT count(*) AS n FROM visit",
                               "--format", "json"])
    assert json.loads(out.output) == {"n": 6}
    bad = runner.invoke(main, ["sql", str(cli_repo), "DROP TABLE visit"])
    assert bad.exit_code != 0 and "read-only" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    bad = runner.invoke(main, ["sql", str(cli_repo), "SELECT * FROM nope"])
    assert bad.exit_code != 0 and "nope" in bad.output
    bad = runner.invoke(main, ["sql", str(cli_repo.parent / "missing"), "SELECT 1"])
    assert bad.exit_code != 0 and "no drp repository" in bad.output


def test_ingest_query_and_verify(runner, cli_repo, tmp_path):
    files = []
    for i in range(2):
        p = tmp_path / f"img{i}.fits"
        with open(p, "wb") as f:
            write_exposure(Exposure(np.full((4, 4), i, np.float32)), f)
        files.append(str(p))
    out = runner.invoke(main, ["ingest", str(cli_repo), "post_isr_image", *files, "--run", "raw",
                               "--data-id", "instrument=Cam,visit=1,detector=0",
                               "--data-id", "instrument=Cam,visit=2,detector=0"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(main, ["query-datasets", str(cli_repo), "post_isr_image",
                               "--where", "band = 'r'", "--format", "json"])
    rows = [json.loads(line) for line in out.output.splitlines()]
    assert [r["visit"] for r in rows] == [1]
    out = runner.invoke(main, ["verify", str(cli_repo)])
    assert out.exit_code == 0 and "0 missing, 0 corrupt" in out.output
    with Repo(cli_repo) as repo:
        path = repo.path_of(repo.find_dataset("post_isr_image", instrument="Cam", visit=2,
                                              detector=0, collections="raw"))
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    out = runner.invoke(main, ["verify", str(cli_repo)])
    assert out.exit_code == 1 and f"CORRUPT  {path}" in out.output
