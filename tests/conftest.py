"""Shared fixtures: small repositories with realistic dimension records."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("DRP_LOCK_TIMEOUT", "20")


def populate_dimensions(repo, n_visits: int = 6, n_detectors: int = 4) -> None:
    """One instrument, two bands, visits with square regions near (10, 0)."""
    repo.insert_dimension_records("instrument", [
        {"instrument": "Cam", "pixel_scale": 0.2, "n_detectors": n_detectors,
         "description": "test camera"}])
    repo.insert_dimension_records("band", [{"band": "g"}, {"band": "r"}])
    repo.insert_dimension_records("physical_filter", [
        {"instrument": "Cam", "physical_filter": "g_01", "band": "g"},
        {"instrument": "Cam", "physical_filter": "r_01", "band": "r"}])
    repo.insert_dimension_records("day_obs", [{"instrument": "Cam", "day_obs": 20261121}])
    repo.insert_dimension_records("detector", [
        {"instrument": "Cam", "detector": d, "name": f"S{d}", "x0": 0, "y0": 0, "width": 100,
         "height": 100, "gain": 1.5, "read_noise": 6.0, "saturation": 9e4}
        for d in range(n_detectors)])
    visits = []
    for v in range(n_visits):
        band = "r" if v % 2 else "g"
        ra0 = 10.0 + 0.5 * v
        visits.append({
            "instrument": "Cam", "visit": v, "band": band, "physical_filter": f"{band}_01",
            "day_obs": 20261121, "exposure_time": 30.0 if v < n_visits // 2 else 15.0,
            "ra": ra0 + 0.1, "dec": 0.1, "exp_midpt_mjd": 60000.1 + 0.01 * v,
            "region": np.array([[ra0, 0.0], [ra0 + 0.2, 0.0], [ra0 + 0.2, 0.2], [ra0, 0.2]]),
        })
    repo.insert_dimension_records("visit", visits)


@pytest.fixture
def repo(tmp_path):
    """An empty repository."""
    from store import Repo

    with Repo.create(tmp_path / "repo") as r:
        yield r


@pytest.fixture
def filled_repo(repo):
    """A repository with dimension records, two dataset types and a run."""
    populate_dimensions(repo)
    repo.register_dataset_type("post_isr_image", ("instrument", "visit", "detector"), "Exposure")
    repo.register_dataset_type("src", ("instrument", "visit", "detector"), "ArrowTable")
    repo.register_dataset_type("note", ("instrument", "visit"), "StructuredData")
    repo.register_run("raw")
    return repo
