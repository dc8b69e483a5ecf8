"""make_warp and assemble_coadd through a repository: SQL selection, quanta, files, no-work cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import ConvexHull

from processing.coadd_inputs import SelectionColumnsError, with_inputs_query
from processing.pipeline import Pipeline, PipelineStep, run_pipeline
from processing.skymap.register import register_skymap
from processing.tasks.assemble_coadd import AssembleCoaddConfig, AssembleCoaddTask
from processing.tasks.make_warp import MakeWarpConfig, MakeWarpTask
from store.masks import bits

from ._coadd_scenes import isolated, make_scene

PATCH = 12  # patch (2, 2) of the test tract, the one the scene covers


@pytest.fixture(scope="module")
def scene():
    return make_scene(n_visits=4, seed=31, trail_visit=1, n_cosmics=4)


@pytest.fixture(scope="module")
def coadd_repo(tmp_path_factory, scene):
    """A repository with visit images and visit summaries of the scene (shared: tests write
    their own output runs)."""
    from store import Repo

    repo = Repo.create(tmp_path_factory.mktemp("coadd") / "repo")
    repo.insert_dimension_records("instrument", [{"instrument": "Cam", "pixel_scale": 0.2,
                                                  "n_detectors": 4}])
    repo.insert_dimension_records("band", [{"band": "r"}])
    repo.insert_dimension_records("physical_filter", [{"instrument": "Cam",
                                                       "physical_filter": "r_01", "band": "r"}])
    repo.insert_dimension_records("day_obs", [{"instrument": "Cam", "day_obs": 20260101}])
    repo.insert_dimension_records("detector", [
        {"instrument": "Cam", "detector": d, "name": f"S{d}", "x0": 0, "y0": 0, "width": 260,
         "height": 260} for d in range(4)])
    visits = []
    for v, exps in scene.exposures.items():
        corners = np.concatenate([np.column_stack(e.pixel_to_sky(*e.bbox.corners().T))
                                  for e in exps.values()])
        centre = corners.mean(axis=0)
        hull = corners[ConvexHull(corners).vertices]
        visits.append({"instrument": "Cam", "visit": v, "band": "r", "physical_filter": "r_01",
                       "day_obs": 20260101, "ra": float(centre[0]), "dec": float(centre[1]),
                       "region": hull})
    repo.insert_dimension_records("visit", visits)
    register_skymap(repo, "test", scene.skymap, tracts=[0])
    repo.register_dataset_type("visit_image", ("instrument", "visit", "detector"), "Exposure")
    repo.register_dataset_type("visit_summary", ("instrument", "visit"), "ArrowTable")
    repo.register_run("inputs")
    items = []
    for v, exps in scene.exposures.items():
        for d, e in exps.items():
            items.append((e, "visit_image", {"instrument": "Cam", "visit": v, "detector": d}))
        items.append((scene.summaries[v].to_table(), "visit_summary",
                      {"instrument": "Cam", "visit": v}))
    repo.put_many(items, run="inputs")
    return repo


def coadd_pipeline(**config):
    return Pipeline("coadd", (PipelineStep(MakeWarpTask, MakeWarpConfig(**config)),
                              PipelineStep(AssembleCoaddTask, AssembleCoaddConfig(**config))))


def test_pipeline_selects_warps_and_assembles(coadd_repo, scene):
    summary = run_pipeline(coadd_repo, coadd_pipeline(), inputs=["inputs"], output="coadd",
                           where=f"patch = {PATCH}", jobs=1, progress=False)
    assert summary.ok, summary.format()
    assert summary.counts["make_warp"]["succeeded"] == len(scene.exposures)
    assert summary.counts["assemble_coadd"]["succeeded"] == 1
    coadd = coadd_repo.get("deep_coadd", {"skymap": "test", "tract": 0, "patch": PATCH,
                                          "band": "r"}, collections="coadd")
    assert coadd.units == "nJy" and coadd.bbox == scene.patch.outer_bbox
    assert coadd.psf is not None and coadd.metadata["NINPUTS"] == len(scene.exposures)
    x, y = scene.tract.sky_to_pixel(scene.star_ra, scene.star_dec)
    x, y = x - coadd.xy0[0], y - coadd.xy0[1]
    sums = []
    for xi, yi, f, ok in zip(x, y, scene.star_flux, isolated(x, y, scene.star_flux),
                             strict=True):
        ix, iy = round(float(xi)), round(float(yi))
        if ok and f >= 1e5 and 12 <= ix < 428 and 12 <= iy < 428:
            sl = (slice(iy - 12, iy + 13), slice(ix - 12, ix + 13))
            if not np.any(coadd.mask[sl] & bits("NO_DATA", "REJECTED")):
                sums.append(coadd.image[sl].sum() / f)
    assert len(sums) >= 5 and abs(np.median(sums) - 1) < 0.01
    # The selection is a SQL table with the weights; warps and artefact masks exist per visit.
    rows = coadd_repo.sql("SELECT visit, detector, weight, used FROM deep_coadd_visit_selection "
                          "WHERE patch = 12 ORDER BY visit, detector").to_pylist()
    assert {r["visit"] for r in rows} == set(scene.exposures)
    assert all(r["used"] and r["weight"] > 0 for r in rows)
    warps = coadd_repo.query_datasets("direct_warp", collections="coadd")
    masks = coadd_repo.query_datasets("compare_warp_artifact_mask", collections="coadd")
    assert len(warps) == len(masks) == len(scene.exposures)
    trail_mask = coadd_repo.get("compare_warp_artifact_mask",
                                {"instrument": "Cam", "skymap": "test", "tract": 0,
                                 "patch": PATCH, "visit": 1}, collections="coadd")
    assert trail_mask.shape == coadd.image.shape
    assert (trail_mask & bits("CLIPPED")).sum() > 500  # the satellite trail
    n_image = coadd_repo.get("deep_coadd_n_image", {"skymap": "test", "tract": 0,
                                                    "patch": PATCH, "band": "r"},
                             collections="coadd")
    assert n_image.max() == len(scene.exposures)


def test_no_input_passing_the_selection_is_no_work(coadd_repo):
    summary = run_pipeline(coadd_repo, coadd_pipeline(query_params={"max_psf_fwhm": 0.01}),
                           inputs=["inputs"], output="strict", where=f"patch = {PATCH}",
                           jobs=1, progress=False)
    assert summary.ok
    assert summary.counts["make_warp"]["succeeded"] == 0
    assert summary.counts["assemble_coadd"]["no_work"] == 1
    row = coadd_repo.sql("SELECT status, error FROM quantum WHERE task = 'assemble_coadd' "
                         "AND run = $r", {"r": summary.run}).to_pylist()[0]
    assert row["status"] == "no_work" and "selected 0" in row["error"]


def test_patch_that_no_visit_overlaps_gets_no_quanta(coadd_repo):
    summary = run_pipeline(coadd_repo, coadd_pipeline(), inputs=["inputs"], output="far",
                           where="patch = 0", jobs=1, progress=False)
    assert summary.ok and summary.total("succeeded") == 0 and summary.total("failed") == 0


def test_user_query_with_wrong_columns_stops_with_the_missing_names(coadd_repo, tmp_path):
    path = tmp_path / "bad.sql"
    path.write_text("-- Wrong columns.\n-- @param band str band\n"
                    "SELECT visit AS v FROM visit_summary WHERE band = $band\n")
    pipeline = with_inputs_query(coadd_pipeline(), path)
    assert pipeline.steps[0].config.inputs_query == str(path)
    with pytest.raises(SelectionColumnsError, match="lacks visit, detector"):
        run_pipeline(coadd_repo, pipeline, inputs=["inputs"], output="bad",
                     where=f"patch = {PATCH}", jobs=1, progress=False)
