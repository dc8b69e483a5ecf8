"""simulate_survey through the store: datasets, truth, determinism and bad input."""

from dataclasses import replace

import numpy as np
import pytest
from astropy.wcs import WCS

import sample_data.survey as survey_module
from sample_data import PRESETS, RefcatConfig, RunNames, simulate_survey
from store import Repo
from store.errors import ConflictingDefinitionError
from store.masks import bits

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    repo = Repo.create(tmp_path_factory.mktemp("sim") / "repo")
    calls = []
    result = simulate_survey(repo, "tiny", seed=3, n_workers=1, durable=False,
                             progress=lambda done, total: calls.append((done, total)))
    return repo, result, calls


def _checksums(repo: Repo) -> dict:
    rows = repo.registry.query(
        "SELECT dataset_type, data_id_key, run, checksum FROM dataset").to_pylist()
    return {(r["dataset_type"], r["data_id_key"], r["run"]): r["checksum"] for r in rows}


def test_survey_datasets_and_records(simulated):
    repo, result, calls = simulated
    plan = result.plan
    n_visits = len(plan.visits)
    assert result.n_images == n_visits
    assert calls[-1] == (n_visits, n_visits)
    assert repo.collection_runs("inputs") == ["raw", "refcats"]
    visits = repo.dimension_records("visit").to_pylist()
    assert sorted(v["visit"] for v in visits) == sorted(v.id for v in plan.visits)
    v0 = plan.visits[0]
    rec = next(v for v in visits if v["visit"] == v0.id)
    assert rec["band"] == v0.band and rec["exposure_time"] == 30.0
    assert rec["ra"] == pytest.approx(v0.header_ra) and rec["airmass"] >= 1.0
    det = repo.dimension_records("detector").to_pylist()[0]
    assert det["gain"] == pytest.approx(plan.camera.detectors[0].gain)
    assert repo.dimension_records("visit_detector_region").num_rows == n_visits

    exp = repo.get("post_isr_image", {"instrument": plan.instrument, "visit": v0.id,
                                      "detector": 0}, collections="inputs")
    assert exp.units == "adu" and exp.psf is None
    assert exp.visit_info.band == v0.band and exp.visit_info.exposure_time == 30.0
    assert exp.visit_info.boresight_ra == pytest.approx(v0.header_ra)
    assert exp.detector.saturation == plan.camera.detectors[0].saturation
    assert exp.image.dtype == np.float32 and exp.variance.min() > 0
    assert np.any(exp.mask & bits("BAD"))
    # The header WCS is the pointing model's (about an arcsec off), with SIP.
    true_wcs = plan.true_wcs(v0, 0)
    a = exp.wcs.all_pix2world([256.0], [256.0], 0)
    b = true_wcs.all_pix2world([256.0], [256.0], 0)
    sep = np.hypot((a[0] - b[0]) * np.cos(np.radians(a[1])), a[1] - b[1]) * 3600
    assert 0.3 < sep[0] < 3.0
    assert exp.wcs.sip is not None


def test_reference_catalog_is_gaia_like(simulated):
    repo, result, _ = simulated
    plan = result.plan
    shards = [repo.get("reference_catalog", {"healpix": int(p)}, collections="inputs")
              for p in plan.refcat_pixels]
    assert len(shards) == result.n_shards >= 1
    table = shards[0]
    for col in ("id", "coord_ra", "coord_dec", "coord_raErr", "coord_decErr", "g_flux",
                "g_fluxErr", "r_flux", "i_flux"):
        assert col in table.column_names
    meta = table.schema.field("coord_raErr").metadata
    assert meta[b"unit"] == b"mas"
    assert table.schema.field("r_flux").metadata[b"unit"] == b"nJy"
    err = table.column("coord_raErr").to_numpy()
    assert err.min() >= 1.0 and err.max() <= 5.0
    ids = table.column("id").to_numpy()
    cat = plan.catalog
    rows = np.searchsorted(cat.id, ids)
    assert np.all(cat.mag["r"][rows] < 21.0)
    # Positions scatter around truth by their quoted errors.
    ddec = (table.column("coord_dec").to_numpy() - cat.dec[rows]) * 3.6e6
    assert np.std(ddec / err) == pytest.approx(1.0, rel=0.15)


def test_truth_tables(simulated):
    repo, result, _ = simulated
    plan = result.plan
    inst = {"instrument": plan.instrument}
    objects = repo.get("truth_object", inst, collections="truth")
    assert objects.num_rows == len(plan.catalog)
    assert set(objects.column("type").to_pylist()) == {"star", "galaxy", "transient"}
    v = plan.visits[1]
    vd = repo.get("truth_visit_detector", {**inst, "visit": v.id}, collections="truth")
    row = vd.to_pylist()[0]
    assert row["zero_point"] == pytest.approx(plan.zero_point(v, 0))
    assert row["seeing"] == pytest.approx(v.seeing)
    exp = repo.get("post_isr_image", {**inst, "visit": v.id, "detector": 0}, collections="raw")
    # The true sky is the level of the image background.
    assert np.median(exp.image) == pytest.approx(row["sky_mean"], rel=0.02)
    w = WCS(row["wcs"])
    assert w.sip is not None
    grid = repo.get("truth_psf_grid", {**inst, "visit": v.id}, collections="truth")
    assert grid.num_rows == 25
    fwhm = np.array(grid.column("fwhm").to_pylist())
    assert np.all(np.abs(fwhm / v.seeing - 1) < 0.05)
    for visit in plan.visits:  # cosmic rays in every exposure
        art = repo.get("truth_artefact", {**inst, "visit": visit.id}, collections="truth")
        assert "cosmic_ray" in art.column("kind").to_pylist()
    assert vd.schema.field("sky_mean").metadata[b"unit"] == b"adu"


def test_same_seed_same_files_different_seed_different_files(simulated, tmp_path):
    repo, _, _ = simulated
    again = Repo.create(tmp_path / "again")
    simulate_survey(again, "tiny", seed=3, n_workers=2, durable=False)
    first, second = _checksums(repo), _checksums(again)
    assert first == second  # also: the process pool changes nothing
    other = Repo.create(tmp_path / "other")
    simulate_survey(other, "tiny", seed=4, n_visits=1, n_workers=1, durable=False)
    third = _checksums(other)
    images = [k for k in third if k[0] == "post_isr_image"]
    assert len(images) == 1 and first[images[0]] != third[images[0]]


def test_bad_input_gives_clear_errors_and_writes_nothing(tmp_path):
    repo = Repo.create(tmp_path / "repo")
    with pytest.raises(ValueError, match="unknown preset 'nope'; known presets: comcam, demo"):
        simulate_survey(repo, "nope")
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match="n_visits must be a positive integer"):
            simulate_survey(repo, "tiny", n_visits=bad)
    outside = replace(TINY, refcat=RefcatConfig(healpix=(0, 1)))
    with pytest.raises(ValueError, match="outside the reference catalog coverage"):
        simulate_survey(repo, outside, n_workers=1)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        simulate_survey(repo, "tiny", seed=-1)
    assert repo.collections().num_rows == 0
    assert repo.dimension_records("visit").num_rows == 0
    repo.register_run("truth")
    with pytest.raises(ConflictingDefinitionError, match="collection 'truth' already exists"):
        simulate_survey(repo, "tiny", n_workers=1)
    assert sorted(repo.collections().column("name").to_pylist()) == ["truth"]
    assert repo.dimension_records("visit").num_rows == 0


def test_failure_midway_leaves_nothing_registered(tmp_path, monkeypatch):
    repo = Repo.create(tmp_path / "repo")
    real = survey_module.render_exposure
    calls = []

    def flaky(plan, visit_index, detector, **kw):
        calls.append(visit_index)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return real(plan, visit_index, detector, **kw)

    monkeypatch.setattr(survey_module, "render_exposure", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        simulate_survey(repo, "tiny", seed=1, n_visits=2, n_workers=1, durable=False)
    assert repo.collections().num_rows == 0
    assert repo.registry.query("SELECT count(*) AS n FROM dataset").to_pylist()[0]["n"] == 0
    assert not list(tmp_path.glob("repo/raw/**/*.fits"))
    # A retry with the same seed reuses the dimension records and succeeds.
    monkeypatch.setattr(survey_module, "render_exposure", real)
    result = simulate_survey(repo, "tiny", seed=1, n_visits=2, n_workers=1, durable=False)
    assert result.n_images == 2
    # A different seed has other detectors: refused, nothing more written.
    with pytest.raises(ConflictingDefinitionError, match="detector record"):
        simulate_survey(repo, "tiny", seed=2, n_workers=1,
                        runs=RunNames(raw="raw2", refcats="ref2", truth="truth2", chain="in2"))
    assert "raw2" not in repo.collections().column("name").to_pylist()
