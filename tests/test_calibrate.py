"""CalibrateTask against the simulator's truth (one dense-field detector, in memory)."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pyarrow as pa
import pytest
from scipy.spatial import cKDTree

from processing.algorithms.moments import adaptive_moments, psf_moments_at
from processing.tasks.calibrate import CalibrateTask
from processing.tasks.single_frame import SingleFrameError
from sample_data import PRESETS, plan_survey, render_exposure, true_psf_kernel
from sample_data.refcat import reference_catalog
from sample_data.sky import KIND_STAR
from store.exposure import Exposure
from store.sphgeom import angular_separation


def small_survey():
    """One 1536-pixel detector, one r visit, stars 13 times denser than the demo."""
    demo = PRESETS["demo"]
    config = dataclasses.replace(
        demo, name="calibrate-test",
        camera=dataclasses.replace(demo.camera, n_x=1, n_y=1, width=1536, height=1536),
        observing=dataclasses.replace(demo.observing, n_visits=1, bands=("r",)),
        sky=dataclasses.replace(demo.sky, star_density=8000.0),
        artefacts=dataclasses.replace(demo.artefacts, satellite_every=0, ghost_visit=None,
                                      transient_visit=None))
    return plan_survey(config, seed=11)


@pytest.fixture(scope="module")
def calibrated():
    plan = small_survey()
    rendered = render_exposure(plan, 0, 0)
    refcat = reference_catalog(plan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CalibrateTask().run(rendered.exposure, refcat)
    return plan, rendered, result


def _true_stars(plan, rendered, result, min_snr=100.0):
    """Calibrated sources matched to isolated true stars (1 px), with truth columns."""
    s = result.sources
    col = {n: s.column(n).to_numpy(zero_copy_only=False) for n in s.column_names}
    kind = plan.catalog.kind[rendered.rows]
    flux = rendered.flux_adu
    stars = (kind == KIND_STAR) & np.isfinite(flux)
    tree = cKDTree(np.c_[rendered.x, rendered.y])
    # isolated: no other object brighter than 1% of the star within 15 px
    isolated = np.ones(len(flux), dtype=bool)
    for i in np.flatnonzero(stars & (flux > 0)):
        near = tree.query_ball_point((rendered.x[i], rendered.y[i]), 15.0)
        isolated[i] = not any(j != i and np.nan_to_num(flux[j]) > 0.01 * flux[i] for j in near)
    dist, j = cKDTree(np.c_[col["x"], col["y"]]).query(np.c_[rendered.x, rendered.y])
    snr = col["psfFlux"] / col["psfFluxErr"]
    ok = (stars & isolated & (dist < 1.0) & (snr[j] > min_snr)
          & ~col["pixelFlags_saturated"][j] & (col["deblend_nChild"][j] == 0)
          & (col["parentSourceId"][j] == 0))
    return np.flatnonzero(ok), j, col


def test_psf_fluxes_match_truth_within_noise(calibrated):
    plan, rendered, result = calibrated
    rows, j, col = _true_stars(plan, rendered, result)
    assert rows.size >= 25
    zp_true = plan.zero_point(rendered.visit, 0)
    true_njy = rendered.flux_adu[rows] * 3631e9 * 10 ** (-0.4 * zp_true)
    ratio = col["psfFlux"][j[rows]] / true_njy
    assert abs(np.median(ratio) - 1) < 0.005
    pull = (ratio - np.median(ratio)) / (col["psfFluxErr"][j[rows]] / true_njy)
    robust_sigma = 1.4826 * np.median(np.abs(pull - np.median(pull)))
    assert robust_sigma < 1.3


def test_astrometry_matches_true_positions(calibrated):
    plan, rendered, result = calibrated
    rows, j, col = _true_stars(plan, rendered, result)
    cat = plan.catalog
    sep_mas = angular_separation(col["coord_ra"][j[rows]], col["coord_dec"][j[rows]],
                                 cat.ra[rendered.rows[rows]], cat.dec[rendered.rows[rows]]) * 3.6e6
    assert np.sqrt(np.mean(sep_mas**2)) < 10.0
    assert result.metadata["n_astrometry_matches"] >= 20


def test_psf_model_moments_at_reserved_stars(calibrated):
    plan, rendered, result = calibrated
    s = result.sources
    reserved = s.column("calib_psf_reserved").to_numpy(zero_copy_only=False)
    assert reserved.sum() >= 2
    x = s.column("x").to_numpy()[reserved]
    y = s.column("y").to_numpy()[reserved]
    psf = result.exposure.psf
    for xi, yi in zip(x, y, strict=True):
        kernel = true_psf_kernel(rendered.visit.psf, plan.camera, 0, xi, yi, size=41)
        half = kernel.shape[0] // 2
        true = adaptive_moments(kernel[None], [half], [half], initial=4.0)
        model = psf_moments_at(psf, xi, yi)
        np.testing.assert_allclose(model, [true.xx[0], true.yy[0], true.xy[0]],
                                   rtol=0.01, atol=0.01 * (true.xx[0] + true.yy[0]) / 2)


def test_zero_point_matches_truth(calibrated):
    plan, rendered, result = calibrated
    # The curve-of-growth correction makes the zero point total: without it, the
    # 17-px calibration aperture's missing wings biased it by -0.004 mag here.
    assert result.metadata["apcorr_to_total"] > 1.001
    assert abs(result.metadata["zero_point"] - plan.zero_point(rendered.visit, 0)) < 0.005
    assert result.exposure.photo_calib.zero_point == pytest.approx(result.metadata["zero_point"])


def test_products_and_flags(calibrated):
    _, _, result = calibrated
    s = result.sources
    for name in ("sourceId", "coord_ra", "coord_dec", "psfFlux", "psfFluxErr", "ap12Flux",
                 "ixx", "calib_psf_used", "calib_astrometry_used", "calib_photometry_used",
                 "visit", "detector", "band"):
        assert name in s.column_names
    assert len(set(s.column("sourceId").to_pylist())) == s.num_rows
    stars = result.psf_stars
    assert stars.num_rows == int(np.sum(s.column("calib_psf_candidate").to_numpy()))
    assert {"slot_Shape_xx", "slot_PsfShape_xx", "calib_psf_used", "detector"} <= set(
        stars.column_names)
    exp = result.exposure
    assert exp.units == "adu" and exp.psf is not None and exp.ap_corr_map is not None
    assert "SUMMARY PSFSIGMA" in {k.upper() for k in exp.metadata}


def _bad(exposure: Exposure, **changes) -> Exposure:
    return dataclasses.replace(exposure.copy(), **changes)


def test_bad_inputs_fail_with_a_reason(calibrated):
    plan, rendered, _ = calibrated
    task = CalibrateTask()
    refcat = reference_catalog(plan)
    exp = rendered.exposure
    with pytest.raises(SingleFrameError, match="no finite pixel"):
        task.run(_bad(exp, image=np.full(exp.image.shape, np.nan, np.float32)), refcat)
    with pytest.raises(SingleFrameError, match="constant"):
        task.run(_bad(exp, image=np.full(exp.image.shape, 7.0, np.float32)), refcat)
    noise = np.random.default_rng(1).normal(500, 20, exp.image.shape).astype(np.float32)
    with pytest.raises(SingleFrameError, match=r"PSF candidates|no source"):
        task.run(_bad(exp, image=noise), refcat)
    far = {k: t.set_column(t.column_names.index("coord_dec"), "coord_dec",
                           pa.array(t.column("coord_dec").to_numpy() + 5.0))
           for k, t in refcat.items()}
    with pytest.raises(SingleFrameError, match="astrometry failed"):
        task.run(exp, far)
    wrong = exp.wcs.deepcopy()
    wrong.wcs.crval = [wrong.wcs.crval[0] + 1.0, wrong.wcs.crval[1]]
    with pytest.raises(SingleFrameError, match="astrometry failed"):
        task.run(_bad(exp, wcs=wrong), refcat)
