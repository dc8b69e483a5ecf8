"""UpdateVisitSummaryTask (algorithms.md 1.4): override semantics field by field, recomputed
statistics, visit geometry, bad inputs, and the task inside the pipeline."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pyarrow as pa
import pytest
from astropy.wcs import WCS

from processing.algorithms.background import BackgroundList, BackgroundModel
from processing.algorithms.summary_stats import (
    PSF_STAT_FIELDS,
    SUMMARY_FIELDS,
    SummaryStatsConfig,
    compute_magnitude_limit,
    compute_summary_stats,
    update_effective_time_stats,
    update_magnitude_limit_stats,
    update_psf_stats,
    update_wcs_stats,
)
from processing.pipeline import Pipeline, PipelineStep, run_pipeline
from processing.tasks.update_visit_summary import (
    UpdateVisitSummaryConfig,
    UpdateVisitSummaryTask,
    VisitSummaryInputError,
)
from processing.visit_geometry import sky_convex_hull, visit_geometry
from processing.visit_summary import VisitSummaryCatalog
from store.calib import ApCorrMap, ChebyshevField, PhotoCalib
from store.errors import NoWorkFound
from store.exposure import DetectorInfo, Exposure, VisitInfo
from store.geom import Box
from store.masks import bits
from store.psf import GaussianPsf
from store.sphgeom import ConvexPolygon, angular_separation

from .conftest import populate_dimensions

N = 256
DETECTORS = (0, 1, 2)
VISIT = VisitInfo(visit=3, instrument="Cam", band="r", physical_filter="r_01",
                  exposure_time=30.0, dark_time=30.5, mjd=60000.13, mjd_begin=60000.1298,
                  boresight_ra=11.6, boresight_dec=0.1, rotation_angle=20.0, airmass=1.2,
                  day_obs=20261121)
BBOX = Box(0, 0, N, N)


def _wcs(ra: float, dec: float, scale_arcsec: float = 0.2) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [N / 2 + 0.5, N / 2 + 0.5]
    w.wcs.cd = np.diag([-scale_arcsec, scale_arcsec]) / 3600.0
    return w


def _ap_corr(slope: float) -> ApCorrMap:
    bbox = (-0.5, -0.5, N - 0.5, N - 0.5)
    return ApCorrMap({"base_PsfFlux_instFlux": ChebyshevField(np.array([[0.97, slope]]), bbox)})


def _stars(detector: int, n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    pxx, pyy = rng.uniform(4.0, 5.0, n), rng.uniform(4.0, 5.0, n)
    flux = rng.uniform(2e3, 2e4, n)
    return pa.table({
        "detector": pa.array(np.full(n, detector), pa.int32()),
        "calib_psf_used": rng.random(n) < 0.9,
        "slot_PsfFlux_instFlux": flux, "slot_PsfFlux_instFluxErr": flux / rng.uniform(60, 900, n),
        "slot_Shape_xx": pxx * 1.03, "slot_Shape_yy": pyy * 0.99, "slot_Shape_xy": 0.05 + 0 * pxx,
        "slot_PsfShape_xx": pxx, "slot_PsfShape_yy": pyy, "slot_PsfShape_xy": 0 * pxx,
        "slot_Centroid_x": rng.uniform(0, N - 1, n), "slot_Centroid_y": rng.uniform(0, N - 1, n),
    })


def _layer(value: float, gradient: float = 0.0) -> BackgroundModel:
    centres = np.array([32.0, 96.0, 160.0, 224.0])
    stats = value + gradient * np.broadcast_to(centres, (4, 4))
    return BackgroundModel(stats.astype(np.float32), np.full((4, 4), 4096), centres, centres,
                           64, 64, (N, N))


@pytest.fixture(scope="module")
def visit():
    """Three detectors of one visit with consistent preliminary summary statistics."""
    rng = np.random.default_rng(7)
    exposures, summaries, stars, backgrounds = {}, {}, {}, {}
    for det in DETECTORS:
        image = rng.normal(0.0, 8.0, (N, N)).astype(np.float32)
        mask = np.zeros((N, N), np.int32)
        mask[:, :20] |= bits("BAD")
        exp = Exposure(image, mask=mask, variance=np.full((N, N), 64.0, np.float32),
                       wcs=_wcs(11.5 + 0.02 * det, 0.1), psf=GaussianPsf(2.0 + 0.1 * det),
                       photo_calib=PhotoCalib(0.05 + 0.01 * det),
                       ap_corr_map=_ap_corr(0.002 * (det + 1)), visit_info=VISIT,
                       detector=DetectorInfo(det, f"S{det}", BBOX, 1.5, 6.0, 9e4),
                       metadata={"SFM_ASTROM_OFFSET_MEAN": 0.02 + det / 100,
                                 "SFM_ASTROM_OFFSET_STD": 0.01})
        stars[det] = _stars(det, 0 if det == 2 else 40, seed=det)  # detector 2: no stars
        backgrounds[det] = BackgroundList([_layer(400.0 + 10 * det)])
        summaries[det] = compute_summary_stats(exp, stars[det], backgrounds[det])
        exposures[det] = exp
    catalog = VisitSummaryCatalog.from_exposures([exposures[d] for d in DETECTORS],
                                                 [summaries[d] for d in DETECTORS])
    return {"exposures": exposures, "catalog": catalog, "stars": stars,
            "backgrounds": backgrounds}


def _run(visit, task=None, **kwargs):
    kwargs.setdefault("psf_overrides", None)
    kwargs.setdefault("ap_corr_overrides", None)
    kwargs.setdefault("psf_star_catalog", pa.concat_tables(visit["stars"].values()))
    task = task or UpdateVisitSummaryTask()
    result = task.run(visit["catalog"].to_table(), visit["exposures"], **kwargs)
    return VisitSummaryCatalog.from_table(result.visit_summary), result


def _nan_or_equal(a, b) -> bool:
    if isinstance(a, tuple):
        return all(_nan_or_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


# ------------------------------------------------------------------------- pass-through


def test_no_override_passes_components_and_stats_through(visit):
    # Put deliberately inconsistent values in the input: passing through keeps them, only
    # magLim and the effTime family are recomputed (from the input's psfArea/skyBg/zeroPoint).
    cat = visit["catalog"]
    fake = dataclasses.replace(cat.summary(1), psfSigma=9.5, skyNoise=123.0, raCorners=(1, 2, 3, 4),
                               magLim=0.0, effTime=-1.0)
    visit = dict(visit, catalog=cat.with_components(1, summary=fake))
    out, result = _run(visit)
    for det in DETECTORS:
        before, after = visit["catalog"].summary(det), out.summary(det)
        expected = dataclasses.replace(before)
        update_magnitude_limit_stats(expected, cat.detector_info(det))
        update_effective_time_stats(expected, "r", 30.0)
        for name in SUMMARY_FIELDS:
            assert _nan_or_equal(getattr(after, name), getattr(expected, name)), (det, name)
        assert out.photo_calib(det) == cat.photo_calib(det)
        assert out.psf(det).sigma == cat.psf(det).sigma
        np.testing.assert_array_equal(out.wcs(det).wcs.crval, cat.wcs(det).wcs.crval)
        assert out.ap_corr_map(det).names() == cat.ap_corr_map(det).names()
    s1 = out.summary(1)
    assert s1.psfSigma == 9.5 and s1.skyNoise == 123.0 and s1.raCorners == (1, 2, 3, 4)
    assert s1.magLim == pytest.approx(compute_magnitude_limit(
        s1.psfArea, s1.skyBg, s1.zeroPoint, 6.0 / 1.5, 1.5, 5.0), abs=1e-12)
    assert np.isfinite(s1.effTime) and s1.effTime > 0
    assert result.visit_summary.column("wcsCornerMaxOffset").null_count == 0
    assert np.all(np.isnan(result.visit_summary.column("wcsCornerMaxOffset").to_numpy()))


# ------------------------------------------------------- overrides given, one detector missing


def test_override_missing_a_detector_nulls_component_and_resets_stats(visit):
    cat, exps = visit["catalog"], visit["exposures"]
    new_psf = {0: GaussianPsf(2.6), 1: GaussianPsf(2.3)}                  # lacks 2
    new_apc = {0: _ap_corr(0.01), 2: _ap_corr(0.02)}                      # lacks 1
    new_pc = {1: PhotoCalib(0.08), 2: 0.09}                               # lacks 0
    new_wcs = {0: _wcs(11.5, 0.1), 2: _wcs(11.54, 0.1)}                   # lacks 1
    out, result = _run(visit, psf_overrides=new_psf, ap_corr_overrides=new_apc,
                       photo_calib_overrides=new_pc, wcs_overrides=new_wcs)
    table = result.visit_summary.to_pylist()
    row = {r["detector"]: r for r in table}
    stars = visit["stars"]
    for det in DETECTORS:
        # Brute force from the spec, group by group, starting from the input statistics.
        expected = cat.summary(det)
        wcs = new_wcs.get(det)
        update_wcs_stats(expected, wcs, BBOX, VISIT)
        update_psf_stats(expected, new_psf.get(det), BBOX,
                         stars[det] if stars[det].num_rows else None, exps[det].mask,
                         new_apc.get(det), SummaryStatsConfig())
        calib = new_pc.get(det)
        calib = PhotoCalib(calib) if isinstance(calib, float) else calib
        expected.zeroPoint = math.nan if calib is None else calib.zero_point
        update_magnitude_limit_stats(expected, cat.detector_info(det))
        update_effective_time_stats(expected, "r", 30.0)
        got = out.summary(det)
        for name in SUMMARY_FIELDS:
            assert _nan_or_equal(getattr(got, name), getattr(expected, name)), (det, name)

    # Detector 2 has no PSF override: PSF null, every PSF statistic NaN, nPsfStar 0, so
    # magLim, effTime and the PSF factor are NaN too; the zero point and sky factor are not.
    s2 = out.summary(2)
    assert out.psf(2) is None and row[2]["psf"] is None
    assert s2.nPsfStar == 0
    assert all(math.isnan(getattr(s2, n)) for n in PSF_STAT_FIELDS if n != "nPsfStar")
    assert math.isnan(s2.magLim) and math.isnan(s2.effTime)
    assert math.isnan(s2.effTimePsfSigmaScale)
    assert np.isfinite(s2.zeroPoint) and np.isfinite(s2.effTimeSkyBgScale)
    assert out.ap_corr_map(2) is not None and out.photo_calib(2) == PhotoCalib(0.09)
    # Detector 1 has no ApCorr and no WCS override.
    s1 = out.summary(1)
    assert out.ap_corr_map(1) is None and row[1]["ap_corr_map"] is None
    assert math.isnan(s1.psfApCorrSigmaScaledDelta)
    assert np.isfinite(s1.psfSigma) and s1.nPsfStar == int(np.sum(stars[1]["calib_psf_used"]))
    assert out.wcs(1) is None and row[1]["wcs"] is None
    assert all(math.isnan(v) for v in (*s1.raCorners, *s1.decCorners, s1.ra, s1.dec,
                                       s1.pixelScale, s1.zenithDistance))
    assert math.isnan(row[1]["wcsCornerMaxOffset"])
    # Detector 0 has no PhotoCalib override.
    s0 = out.summary(0)
    assert out.photo_calib(0) is None and row[0]["calibration_mean"] is None
    assert math.isnan(s0.zeroPoint) and math.isnan(s0.magLim) and math.isnan(s0.effTime)
    assert math.isnan(s0.effTimeZeroPointScale)
    assert np.isfinite(s0.effTimePsfSigmaScale) and np.isfinite(s0.effTimeSkyBgScale)
    # Untouched groups pass through everywhere.
    for det in DETECTORS:
        for name in ("expTime", "skyBg", "skyNoise", "meanVar", "astromOffsetMean"):
            assert getattr(out.summary(det), name) == getattr(cat.summary(det), name)
    # The geometry has only the detectors that kept a WCS.
    assert [d["detector"] for d in result.visit_geometry["detectors"]] == [0, 2]


def test_override_given_as_a_catalog_missing_a_detector(visit):
    cat = visit["catalog"]
    table = cat.to_table()
    partial = VisitSummaryCatalog(table.filter(pa.compute.not_equal(table["detector"], 1)))
    out, _ = _run(visit, psf_overrides=partial, ap_corr_overrides=partial,
                  photo_calib_overrides=partial)
    assert out.psf(1) is None and out.ap_corr_map(1) is None and out.photo_calib(1) is None
    assert out.summary(1).nPsfStar == 0 and math.isnan(out.summary(1).zeroPoint)
    for det in (0, 2):
        assert out.psf(det).sigma == cat.psf(det).sigma
        assert out.photo_calib(det) == cat.photo_calib(det)
        assert out.summary(det).zeroPoint == cat.summary(det).zeroPoint


# ------------------------------------------------------------------- recomputed statistics


def test_recomputed_statistics_follow_the_new_components(visit):
    sigma = 2.8
    shift_arcsec = 0.9
    moved = {d: _wcs(11.5 + 0.02 * d + shift_arcsec / 3600 / math.cos(math.radians(0.1)), 0.1)
             for d in DETECTORS}
    out, result = _run(visit, psf_overrides={d: GaussianPsf(sigma) for d in DETECTORS},
                       ap_corr_overrides={d: _ap_corr(0.0) for d in DETECTORS},
                       photo_calib_overrides={d: 0.1 for d in DETECTORS}, wcs_overrides=moved)
    cfg = SummaryStatsConfig()
    offsets = result.visit_summary.column("wcsCornerMaxOffset").to_numpy()
    np.testing.assert_allclose(offsets, shift_arcsec, rtol=2e-3)
    for det in DETECTORS:
        s = out.summary(det)
        assert s.psfSigma == pytest.approx(sigma, rel=2e-3)        # circular Gaussian
        assert s.psfArea == pytest.approx(4 * math.pi * sigma**2, rel=2e-3)
        assert s.psfTraceRadiusDelta == pytest.approx(0.0, abs=1e-9)
        assert s.psfApCorrSigmaScaledDelta == 0.0                   # constant correction
        assert s.zeroPoint == pytest.approx(2.5 * math.log10(3631e9 / 0.1), abs=1e-12)
        assert s.pixelScale == pytest.approx(0.2, rel=1e-6)
        centre = moved[det].all_pix2world([(N - 1) / 2], [(N - 1) / 2], 0)
        assert angular_separation(s.ra, s.dec, centre[0][0], centre[1][0]) < 1e-9
        assert s.effTimePsfSigmaScale == pytest.approx((sigma / cfg.fiducial_psf_sigma["r"])**-2,
                                                       rel=5e-3)
        expected_maglim = compute_magnitude_limit(s.psfArea, s.skyBg, s.zeroPoint, 4.0, 1.5, 5.0)
        assert s.magLim == pytest.approx(expected_maglim, abs=1e-12)
        assert s.effTime == pytest.approx(10 ** (0.8 * (s.magLim - 24.52)) * 30.0, rel=1e-12)
        geometry = result.visit_geometry["detectors"][det]
        assert geometry["ra"] == list(s.raCorners) and geometry["dec"] == list(s.decCorners)
    # A consistency threshold below the shift drops every WCS.
    task = UpdateVisitSummaryTask(wcs_consistency_threshold=0.5)
    out, result = _run(visit, task, wcs_overrides=moved)
    assert all(out.wcs(d) is None and math.isnan(out.summary(d).ra) for d in DETECTORS)
    assert result.visit_geometry == {"instrument": "Cam", "visit": 3, "detectors": [],
                                     "polygon": None}


def test_background_replacement_recomputes_sky_statistics(visit):
    # Detector 0's image still holds a sky gradient of 0.25 ADU/pixel; the override removes it.
    exps = dict(visit["exposures"])
    ramp = 0.25 * np.arange(N, dtype=np.float32)[None, :] + np.zeros((N, 1), np.float32)
    exps[0] = dataclasses.replace(exps[0], image=exps[0].image + ramp)
    gradient = BackgroundList([_layer(0.0, 0.25)])
    out, _ = _run(dict(visit, exposures=exps), background_originals=visit["backgrounds"],
                  background_overrides={0: gradient})
    s0, before = out.summary(0), visit["catalog"].summary(0)
    # The Hermite interpolant reproduces a linear ramp, so the noise is back to 8 ADU.
    assert s0.skyNoise == pytest.approx(8.0, rel=0.02)
    assert s0.skyNoise == pytest.approx(before.skyNoise, rel=1e-3)
    assert s0.skyBg == pytest.approx(400.0 + np.median(_layer(0.0, 0.25).stats_image))
    assert s0.meanVar == pytest.approx(64.0)
    assert s0.magLim != before.magLim  # more sky, shallower
    for det in (1, 2):  # no override: input values kept
        assert out.summary(det).skyBg == visit["catalog"].summary(det).skyBg
        assert out.summary(det).skyNoise == visit["catalog"].summary(det).skyNoise


# ------------------------------------------------------------------------------- geometry


def test_sky_convex_hull_contains_every_corner_and_is_minimal():
    rng = np.random.default_rng(2)
    for ra0, dec0 in ((10.0, 0.0), (359.9, -30.0), (45.0, 88.5)):
        ra = ra0 + rng.uniform(-0.5, 0.5, 60) / max(math.cos(math.radians(dec0)), 0.05)
        dec = np.clip(dec0 + rng.uniform(-0.5, 0.5, 60), -90, 89.99)
        hull = sky_convex_hull(ra % 360, dec)
        poly = ConvexPolygon(hull[:, 0], hull[:, 1])
        shrunk = poly.contains(ra % 360, dec)
        assert shrunk.sum() >= len(ra) - len(hull)  # vertices may sit on the boundary
        # every input point is inside the hull grown by 1e-9 deg (vertices are inputs)
        inside = [poly.contains(r, d) or np.min(angular_separation(r, d, hull[:, 0], hull[:, 1]))
                  < 1e-9 for r, d in zip(ra % 360, dec, strict=True)]
        assert all(inside)
        # every hull vertex is one of the points
        assert all(np.min(angular_separation(h[0], h[1], ra % 360, dec)) < 1e-9 for h in hull)
    assert sky_convex_hull([1.0, 2.0], [0.0, 0.0]) is None


def test_visit_geometry_skips_detectors_without_wcs():
    nan4 = (math.nan,) * 4
    g = visit_geometry("Cam", 5, {1: ((0, 1, 1, 0), (0, 0, 1, 1)), 2: (nan4, nan4)})
    assert [d["detector"] for d in g["detectors"]] == [1]
    corners = sorted(zip(g["polygon"]["ra"], g["polygon"]["dec"], strict=True))
    assert corners == [(0, 0), (0, 1), (1, 0), (1, 1)]


# ------------------------------------------------------------------------------ bad inputs


def test_summary_and_exposures_must_agree(visit):
    exps = {d: e for d, e in visit["exposures"].items() if d != 2}
    with pytest.raises(VisitSummaryInputError,
                       match=r"^instrument=Cam, visit=3, detector=2: in the input visit summary "
                             "but no input exposure"):
        _run(dict(visit, exposures=exps))
    table = visit["catalog"].to_table()
    partial = table.filter(pa.compute.not_equal(table["detector"], 1))
    with pytest.raises(VisitSummaryInputError,
                       match=r"visit=3, detector=1: has an input exposure but no row"):
        UpdateVisitSummaryTask().run(partial, visit["exposures"], None, None, None)
    with pytest.raises(NoWorkFound):
        UpdateVisitSummaryTask().run(table.slice(0, 0), {}, None, None, None)


@pytest.mark.parametrize("bad", [0.0, float("nan"), -1.0])
def test_zero_or_nan_photo_calib_is_an_error_naming_the_data_id(visit, bad):
    with pytest.raises(VisitSummaryInputError,
                       match=rf"visit=3, detector=1 \(photo_calib_overrides\): photometric "
                             rf"calibration {bad} nJy/ADU is not finite and positive"):
        _run(visit, photo_calib_overrides={0: 0.1, 1: bad, 2: 0.1})
    table = visit["catalog"].to_table()
    column = table.column("calibration_mean").to_pylist()
    column[2] = bad
    broken = table.set_column(table.schema.get_field_index("calibration_mean"),
                              "calibration_mean", pa.array(column, pa.float64()))
    with pytest.raises(VisitSummaryInputError,
                       match=r"detector=2 \(input visit summary\): photometric calibration"):
        UpdateVisitSummaryTask().run(broken, visit["exposures"], None, None, None)


def test_detector_without_psf_stars_gets_nan_star_statistics(visit):
    # Detector 2 has no stars in the concatenated table, and an empty per-detector table works
    # too: star statistics NaN, model statistics finite, no crash.
    for catalog in (pa.concat_tables(visit["stars"].values()), dict(visit["stars"]), None):
        out, _ = _run(visit, psf_overrides={d: GaussianPsf(2.4) for d in DETECTORS},
                      ap_corr_overrides={d: _ap_corr(0.01) for d in DETECTORS},
                      psf_star_catalog=catalog)
        s2 = out.summary(2)
        assert s2.nPsfStar == 0 and np.isfinite(s2.psfSigma) and np.isfinite(s2.magLim)
        for name in ("psfStarDeltaE1Median", "psfStarDeltaSizeScatter", "starEMedian",
                     "maxDistToNearestPsf"):
            assert math.isnan(getattr(s2, name))
        assert (out.summary(0).nPsfStar > 0) == (catalog is not None)


def test_config_validation():
    with pytest.raises(ValueError, match=r"wcs_consistency_threshold must be a positive .* -1"):
        UpdateVisitSummaryConfig(wcs_consistency_threshold=-1.0)


# ---------------------------------------------------------------------- inside the pipeline


def _pipeline_repo(repo, visit):
    """Inputs of visits 3 (good) and 4 (its summary lacks detector 2) in run ``in``."""
    from processing.tasks.calibrate import CalibrateTask
    from processing.tasks.consolidate import ConsolidateVisitSummaryTask

    populate_dimensions(repo, n_visits=6, n_detectors=3)
    for conn in (*CalibrateTask.outputs, *ConsolidateVisitSummaryTask.outputs):
        repo.register_dataset_type(conn.dataset_type, conn.dimensions, conn.storage_class)
    repo.register_run("in")
    items = []
    for v in (3, 4):
        vi = dataclasses.replace(VISIT, visit=v)
        exps = {d: dataclasses.replace(e, visit_info=vi) for d, e in visit["exposures"].items()}
        entries = VisitSummaryCatalog.from_exposures(
            [exps[d] for d in DETECTORS], [visit["catalog"].summary(d) for d in DETECTORS])
        table = entries.to_table()
        if v == 4:
            table = table.filter(pa.compute.not_equal(table["detector"], 2))
        items.append((table, "preliminary_visit_summary", {"instrument": "Cam", "visit": v}))
        for d in DETECTORS:
            did = {"instrument": "Cam", "visit": v, "detector": d}
            items += [(exps[d], "preliminary_visit_image", did),
                      (visit["stars"][d], "single_visit_star", did)]
    repo.put_many(items, run="in")
    return repo


def test_pipeline_stage_writes_summaries_updates_regions_and_skips_broken_visit(repo, visit):
    _pipeline_repo(repo, visit)
    before = repo.dimension_records("visit", "visit = 4").to_pylist()[0]
    pipeline = Pipeline("t", (PipelineStep(UpdateVisitSummaryTask),))
    summary = run_pipeline(repo, pipeline, inputs=["in"], output="out", jobs=1, progress=False)
    assert summary.counts["update_visit_summary"]["succeeded"] == 1
    assert summary.counts["update_visit_summary"]["failed"] == 1
    assert "visit=4, detector=2: has an input exposure but no row" in summary.failures[0][1]
    # Nothing of the broken visit is registered; its region is untouched.
    rows = repo.sql("SELECT dataset_type, visit FROM dataset WHERE run = $r ORDER BY 1",
                    {"r": summary.run}).to_pylist()
    assert rows == [{"dataset_type": "visit_geometry", "visit": 3},
                    {"dataset_type": "visit_summary", "visit": 3}]
    assert repo.dimension_records("visit", "visit = 4").to_pylist()[0] == before
    assert repo.verify().ok and not repo.verify().orphans
    # The good visit: PSF statistics recomputed from the exposures equal the preliminary ones.
    out = VisitSummaryCatalog.from_table(repo.get("visit_summary", instrument="Cam", visit=3))
    for det in DETECTORS:
        assert out.summary(det) == visit["catalog"].summary(det)
    # Regions: each detector's corners, the visit's hull holds them all.
    regions = repo.dimension_records("visit_detector_region", "visit = 3").to_pylist()
    assert sorted(r["detector"] for r in regions) == list(DETECTORS)
    hull = repo.dimension_records("visit", "visit = 3").to_pylist()[0]
    poly = ConvexPolygon(hull["region_ra"], hull["region_dec"])
    for r in regions:
        s = out.summary(r["detector"])
        assert sorted(r["region_ra"]) == pytest.approx(sorted(s.raCorners), abs=1e-12)
        centre = (np.mean(r["region_ra"]), np.mean(r["region_dec"]))
        assert poly.contains(*centre)
    # The serialised models stay in the file but not in the SQL copy.
    cols = set(repo.sql("SELECT * FROM main.visit_summary LIMIT 0").column_names)
    assert "psfSigma" in cols and not cols & {"psf", "wcs", "ap_corr_map"}
    assert repo.get("visit_summary", instrument="Cam", visit=3).column("psf").null_count == 0
