"""The QA report (processing.report): figure data against values planted in a synthetic
repository, the self-contained HTML page in headless Chromium, and bad input."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from astropy.wcs import WCS
from click.testing import CliRunner

from processing.algorithms.summary_stats import ExposureSummaryStats
from processing.report import ReportError, build_report, write_report
from processing.report.calibration import collect_reference_matches
from processing.report.coadds import cell_psf_fwhm, collect_coadd_panels
from processing.report.data import ReportData
from processing.report.psf import collect_psf_map, collect_star_residuals, pick_visit
from processing.report.truth import collect_truth_matches, completeness_curve
from processing.report.visits import collect_visit_conditions
from processing.visit_summary import DetectorSummary, VisitSummaryCatalog
from store.calib import AB_ZERO_NJY
from store.errors import CollectionError
from store.exposure import DetectorInfo, Exposure, VisitInfo
from store.formats import FitsBundle
from store.formats.parquet import exclude_from_sql
from store.geom import Box
from store.masks import bits
from store.psf import GaussianPsf

from ._chromium import check_page

FWHM_PER_SIGMA = math.sqrt(8 * math.log(2))
SCALE = 0.2  # arcsec/pixel
SIZE = 400  # detector side, pixels
RA0, DEC0 = 150.0, 2.0
VISITS = (0, 1, 2, 3, 4, 5)
BAND = {v: "g" if v % 2 == 0 else "r" for v in VISITS}
SEEING = {0: 1.00, 1: 0.90, 2: 1.02, 3: 0.92, 4: 1.60, 5: 0.88}  # visit 4: a bad-seeing outlier
ZERO_POINT = {v: 31.0 + 0.01 * v for v in VISITS}  # 30-s zero points, AB mag of 1 ADU
SKY_ADU = 500.0
MAG_LIM = {0: 24.5, 1: 24.2, 2: 24.6, 3: 24.1, 4: 24.0, 5: 24.3}
AXIS_RATIO, THETA = 0.8, 0.4  # PSF shape in pixel axes
DET_RA = {0: RA0, 1: RA0 + 0.03 / math.cos(math.radians(DEC0))}
OFFSET_RA, OFFSET_DEC = 12.0, -7.0  # planted src - reference offsets, mas
DMAG = 0.02  # planted src - reference magnitude offset
RESERVED_DSIZE, RESERVED_DE1 = 0.03, 0.01
DETECTION_LIMIT = 23.5  # truth objects brighter than this are in `source`
ZP_BIAS = 0.005  # measured - true zero point, mag
CLIPPED_ROWS = 10  # of a 300-row coadd


def _wcs(det: int) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [DET_RA[det], DEC0]
    w.wcs.crpix = [SIZE / 2 + 0.5, SIZE / 2 + 0.5]  # FITS 1-based: the image centre
    w.wcs.cd = np.array([[-SCALE / 3600, 0.0], [0.0, SCALE / 3600]])
    return w


def _sigma(visit: int) -> float:
    """Major-axis sigma (pixels) of the planted PSF: det radius sigma*sqrt(q) gives the seeing."""
    return SEEING[visit] / (SCALE * FWHM_PER_SIGMA) / math.sqrt(AXIS_RATIO)


def _psf_moments(visit: int):
    """Exact (ixx, iyy, ixy) pixel^2 of the planted elliptical Gaussian."""
    a2, b2 = _sigma(visit) ** 2, (_sigma(visit) * AXIS_RATIO) ** 2
    c, s = math.cos(THETA), math.sin(THETA)
    return a2 * c * c + b2 * s * s, a2 * s * s + b2 * c * c, (a2 - b2) * c * s


def _corners(det: int):
    x = np.array([-0.5, SIZE - 0.5, SIZE - 0.5, -0.5])
    y = np.array([-0.5, -0.5, SIZE - 0.5, SIZE - 0.5])
    ra, dec = _wcs(det).all_pix2world(x, y, 0)
    return tuple(float(v) for v in ra), tuple(float(v) for v in dec)


def _visit_summary(visit: int) -> pa.Table:
    band = BAND[visit]
    vi = VisitInfo(visit=visit, instrument="Cam", band=band, physical_filter=f"{band}_01",
                   exposure_time=30.0, mjd=61000.0 + 0.02 * visit, boresight_ra=DET_RA[0] + 0.015,
                   boresight_dec=DEC0)
    entries = []
    for det in (0, 1):
        ra_c, dec_c = _corners(det)
        stats = ExposureSummaryStats(
            psfSigma=SEEING[visit] / (SCALE * FWHM_PER_SIGMA), pixelScale=SCALE,
            zeroPoint=ZERO_POINT[visit], skyBg=SKY_ADU, magLim=MAG_LIM[visit], expTime=30.0,
            raCorners=ra_c, decCorners=dec_c, ra=DET_RA[det], dec=DEC0)
        psf = GaussianPsf(_sigma(visit), size=31, axis_ratio=AXIS_RATIO, theta=THETA)
        entries.append(DetectorSummary(DetectorInfo(det, f"S{det}"), Box(0, 0, SIZE, SIZE),
                                       stats, vi, wcs=_wcs(det), psf=psf))
    table = VisitSummaryCatalog.from_detectors(entries).to_table()
    return exclude_from_sql(table, ["psf", "wcs", "ap_corr_map"])


def _reference(rng):
    """Reference stars over both detectors: (ra, dec, g flux, r flux)."""
    n = 120
    ra = RA0 + rng.uniform(-0.01, 0.04, n)
    dec = DEC0 + rng.uniform(-0.01, 0.01, n)
    mag = rng.uniform(16, 21, n)
    flux = AB_ZERO_NJY * 10 ** (-0.4 * mag)
    return ra, dec, flux, flux * 0.8


def _stars(rng, visit: int, det: int) -> pa.Table:
    """PSF stars: used ones match the model, reserved ones are 3% larger and +0.01 in e1."""
    n, n_res = 30, 6
    ixx, iyy, ixy = (np.full(n, m) for m in _psf_moments(visit))
    t, e1 = ixx + iyy, (ixx - iyy) / (ixx + iyy)
    reserved = np.arange(n) < n_res
    # Reserved stars: trace (1 + dsize) T and e1 + de1 at the same e2.
    t_star = np.where(reserved, t * (1 + RESERVED_DSIZE), t)
    e1_star = np.where(reserved, e1 + RESERVED_DE1, e1)
    e2_star = 2 * ixy / t
    return pa.table({
        "slot_Shape_xx": t_star * (1 + e1_star) / 2, "slot_Shape_yy": t_star * (1 - e1_star) / 2,
        "slot_Shape_xy": t_star * e2_star / 2, "slot_PsfShape_xx": ixx, "slot_PsfShape_yy": iyy,
        "slot_PsfShape_xy": ixy, "slot_Shape_flag": np.zeros(n, bool),
        "calib_psf_used": ~reserved, "calib_psf_reserved": reserved,
        "psfFlux": 10 ** rng.uniform(4, 6, n)})


def _src(ref, visit: int) -> pa.Table:
    """Calibration sources: every reference star, offset by the planted position and mag."""
    ra, dec, g, r = ref
    cosd = np.cos(np.radians(dec))
    flux = (g if BAND[visit] == "g" else r) * 10 ** (-0.4 * DMAG)
    n = ra.size
    return pa.table({
        "coord_ra": ra + OFFSET_RA / 3.6e6 / cosd, "coord_dec": dec + OFFSET_DEC / 3.6e6,
        "psfFlux": flux, "calib_astrometry_used": np.ones(n, bool),
        "calib_photometry_used": np.arange(n) % 2 == 0})


def _truth(rng):
    # A jittered 7.2" grid (no two objects within the 1" match radius); some objects fall
    # outside both detectors.
    gx, gy = np.meshgrid(np.arange(30), np.arange(15))
    n = gx.size
    ra = RA0 - 0.015 + 0.002 * gx.ravel() + rng.uniform(-3e-4, 3e-4, n)
    dec = DEC0 - 0.015 + 0.002 * gy.ravel() + rng.uniform(-3e-4, 3e-4, n)
    mags = {b: rng.uniform(18, 26, n) for b in "gr"}
    return pa.table({
        "id": np.arange(n), "type": np.where(np.arange(n) % 2 == 0, "star", "galaxy"),
        "ra": ra, "dec": dec, "visit": pa.nulls(n, pa.int64()),
        **{f"{b}_mag": m for b, m in mags.items()},
        **{f"{b}_flux": AB_ZERO_NJY * 10 ** (-0.4 * m) for b, m in mags.items()}})


def _sources(truth: pa.Table, visit: int, det: int) -> pa.Table:
    """Final sources: the truth objects on the detector brighter than the limit, exact flux."""
    band = BAND[visit]
    ra, dec = truth["ra"].to_numpy(), truth["dec"].to_numpy()
    x, y = _wcs(det).all_world2pix(ra, dec, 0)
    keep = ((x > -0.5) & (x < SIZE - 0.5) & (y > -0.5) & (y < SIZE - 0.5)
            & (truth[f"{band}_mag"].to_numpy() < DETECTION_LIMIT))
    n = int(keep.sum())
    return pa.table({"coord_ra": ra[keep], "coord_dec": dec[keep],
                     "psfFlux": truth[f"{band}_flux"].to_numpy()[keep],
                     "sky_source": np.zeros(n, bool)})


def _psf_grid(visit: int) -> pa.Table:
    g = (np.arange(5) + 0.5) * SIZE / 5 - 0.5
    gx, gy = np.meshgrid(g, g)
    n = gx.size
    ixx, iyy, ixy = _psf_moments(visit)
    fwhm = FWHM_PER_SIGMA * (ixx * iyy - ixy**2) ** 0.25 * SCALE
    return pa.table({"visit": np.full(2 * n, visit), "detector": np.repeat([0, 1], n),
                     "x": np.tile(gx.ravel(), 2), "y": np.tile(gy.ravel(), 2),
                     "ixx": np.full(2 * n, ixx), "iyy": np.full(2 * n, iyy),
                     "ixy": np.full(2 * n, ixy), "fwhm": np.full(2 * n, fwhm)})


def _coadd(rng, clipped: bool) -> tuple[Exposure, np.ndarray]:
    image = rng.normal(0.0, 1.0, (300, 300)).astype(np.float32)
    yy, xx = np.mgrid[0:300, 0:300]
    for x0, y0 in rng.uniform(20, 280, (15, 2)):
        image += (200 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 2.5**2))).astype(
            np.float32)
    mask = np.zeros((300, 300), np.int32)
    if clipped:
        mask[100:100 + CLIPPED_ROWS] |= bits("CLIPPED")
    mask[:20, :20] |= bits("NO_DATA")
    n_image = np.full((300, 300), 3, np.int32)
    n_image[:20, :20] = 0
    return Exposure(image, mask=mask, units="nJy"), n_image


def _cells() -> FitsBundle:
    gy, gx = np.mgrid[0:4, 0:5]
    fwhm = 0.9 + 0.01 * gx + 0.02 * gy
    return FitsBundle(header={"PIXSCALE": SCALE}, tables={"cells": pa.table({
        "cell_x": gx.ravel(), "cell_y": gy.ravel(), "psf_fwhm": fwhm.ravel()})})


def _dimensions(repo) -> None:
    repo.insert_dimension_records("instrument", [{"instrument": "Cam", "pixel_scale": SCALE}])
    repo.insert_dimension_records("band", [{"band": "g"}, {"band": "r"}])
    repo.insert_dimension_records("physical_filter", [
        {"instrument": "Cam", "physical_filter": f"{b}_01", "band": b} for b in "gr"])
    repo.insert_dimension_records("day_obs", [{"instrument": "Cam", "day_obs": 20270101}])
    repo.insert_dimension_records("detector", [
        {"instrument": "Cam", "detector": d, "name": f"S{d}", "x0": 0, "y0": 0, "width": SIZE,
         "height": SIZE} for d in (0, 1)])
    box = np.array([[RA0 - 0.02, DEC0 - 0.02], [RA0 + 0.05, DEC0 - 0.02],
                    [RA0 + 0.05, DEC0 + 0.02], [RA0 - 0.02, DEC0 + 0.02]])
    repo.insert_dimension_records("visit", [
        {"instrument": "Cam", "visit": v, "band": BAND[v], "physical_filter": f"{BAND[v]}_01",
         "day_obs": 20270101, "exposure_time": 30.0, "exp_midpt_mjd": 61000.0 + 0.02 * v,
         "region": box} for v in VISITS])
    repo.insert_dimension_records("skymap", [{"skymap": "sm", "config": "{}", "n_tracts": 1}])
    repo.insert_dimension_records("tract", [{"skymap": "sm", "tract": 0, "ra": RA0, "dec": DEC0,
                                             "region": box}])
    repo.insert_dimension_records("patch", [
        {"skymap": "sm", "tract": 0, "patch": p, "patch_x": p, "patch_y": 0, "region": box}
        for p in (0, 1)])


def _build(path) -> dict:
    """A processed survey in run 'proc' (chain 'DR1'), refcat in 'refcats', truth in 'truth'."""
    from store import Repo

    rng = np.random.default_rng(5)
    repo = Repo.create(path)
    _dimensions(repo)
    det_dims = ("instrument", "visit", "detector")
    coadd_dims = ("skymap", "tract", "patch", "band")
    for name, dims, sc in (
            ("visit_summary", ("instrument", "visit"), "ArrowTable"),
            ("single_visit_star", det_dims, "ArrowTable"), ("src", det_dims, "ArrowTable"),
            ("source", det_dims, "ArrowTable"), ("reference_catalog", ("healpix",), "ArrowTable"),
            ("deep_coadd", coadd_dims, "Exposure"), ("deep_coadd_n_image", coadd_dims, "Image"),
            ("deep_coadd_cell", coadd_dims, "FitsBundle"),
            ("truth_object", ("instrument",), "ArrowTable"),
            ("truth_visit_detector", ("instrument", "visit"), "ArrowTable"),
            ("truth_psf_grid", ("instrument", "visit"), "ArrowTable")):
        repo.register_dataset_type(name, dims, sc)
    for run in ("proc", "refcats", "truth"):
        repo.register_run(run)
    ref = _reference(rng)
    truth = _truth(rng)
    items = []
    for v in VISITS:
        items.append((_visit_summary(v), "visit_summary", {"instrument": "Cam", "visit": v}))
        for det in (0, 1):
            did = {"instrument": "Cam", "visit": v, "detector": det}
            items.append((_stars(rng, v, det), "single_visit_star", did))
            src = _src(ref, v)
            x, _ = _wcs(det).all_world2pix(src["coord_ra"].to_numpy(),
                                           src["coord_dec"].to_numpy(), 0)
            on_det = (x > -0.5) & (x < SIZE - 0.5)
            items.append((src.filter(pa.array(on_det)), "src", did))
            items.append((_sources(truth, v, det), "source", did))
    for patch, band in ((0, "g"), (1, "g"), (0, "r")):
        did = {"skymap": "sm", "tract": 0, "patch": patch, "band": band}
        coadd, n_image = _coadd(rng, clipped=(patch, band) == (0, "g"))
        items += [(coadd, "deep_coadd", did), (n_image, "deep_coadd_n_image", did),
                  (_cells(), "deep_coadd_cell", did)]
    repo.put_many(items, run="proc", durable=False)
    repo.put(pa.table({"coord_ra": ref[0], "coord_dec": ref[1], "g_flux": ref[2],
                       "r_flux": ref[3]}), "reference_catalog", {"healpix": 1234}, run="refcats")
    truth_items = [(truth, "truth_object", {"instrument": "Cam"})]
    for v in VISITS:
        truth_items.append((pa.table({"visit": [v, v], "detector": [0, 1],
                                      "zero_point": [ZERO_POINT[v] - ZP_BIAS] * 2}),
                            "truth_visit_detector", {"instrument": "Cam", "visit": v}))
        truth_items.append((_psf_grid(v), "truth_psf_grid", {"instrument": "Cam", "visit": v}))
    repo.put_many(truth_items, run="truth", durable=False)
    repo.register_chain("DR1", ["proc"])
    return {"repo": repo, "truth": truth, "ref": ref}


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("report") / "repo")


@pytest.fixture(scope="module")
def data(survey):
    return ReportData(survey["repo"], "DR1")


@pytest.fixture(scope="module")
def report(survey):
    """The report of DR1, built once."""
    return build_report(survey["repo"], collection="DR1")


@pytest.fixture(scope="module")
def written(report, tmp_path_factory):
    return report.write(tmp_path_factory.mktemp("out") / "report.html")


# -- figure data against the planted values ----------------------------------------------------
def test_visit_conditions_recover_the_summaries_and_flag_the_outlier(data):
    cond = collect_visit_conditions(data)
    assert list(cond.visit) == list(VISITS)  # time order
    assert cond.seeing == pytest.approx([SEEING[v] for v in VISITS], rel=1e-6)
    assert cond.zero_point == pytest.approx(
        [ZERO_POINT[v] - 2.5 * math.log10(30.0) for v in VISITS], abs=1e-9)
    expected_sky = [ZERO_POINT[v] - 2.5 * math.log10(SKY_ADU / SCALE**2) for v in VISITS]
    assert cond.sky == pytest.approx(expected_sky, abs=1e-9)
    assert cond.mag_lim == pytest.approx([MAG_LIM[v] for v in VISITS])
    assert list(cond.n_detectors) == [2] * len(VISITS)
    assert cond.outliers() == {4: ["seeing", "depth"]}


def test_psf_map_matches_the_model_and_the_truth(data):
    visit = pick_visit(data)
    assert visit in VISITS and visit != 4  # the median-seeing visit, never the outlier
    pmap = collect_psf_map(data, 2)
    assert pmap.band == "g" and sorted(pmap.outlines) == [0, 1]
    assert pmap.fwhm.size == 50  # the 5 x 5 truth grid of each detector
    assert np.median(pmap.fwhm) == pytest.approx(SEEING[2], rel=0.01)
    # Sky frame (x -> west): e1 unchanged, e2 flips sign.
    e = (1 - AXIS_RATIO**2) / (1 + AXIS_RATIO**2)
    assert np.median(pmap.e1) == pytest.approx(e * math.cos(2 * THETA), abs=0.005)
    assert np.median(pmap.e2) == pytest.approx(-e * math.sin(2 * THETA), abs=0.005)
    assert pmap.true_fwhm == pytest.approx(SEEING[2], rel=1e-6)
    assert np.abs(pmap.fwhm / pmap.true_fwhm - 1).max() < 0.01
    # Detector 1 lies east of detector 0: smaller xi (east is +xi).
    assert pmap.xi[pmap.detector == 1].mean() > pmap.xi[pmap.detector == 0].mean()


def test_reserved_star_residuals(data):
    res = collect_star_residuals(data)
    assert res.reserved.sum() == 6 * 2 * len(VISITS)
    assert np.median(res.dsize[res.reserved]) == pytest.approx(RESERVED_DSIZE, abs=1e-9)
    assert np.median(res.de1[res.reserved]) == pytest.approx(RESERVED_DE1, abs=1e-9)
    assert np.abs(res.dsize[~res.reserved]).max() < 1e-9


def test_calibration_residuals_recover_the_planted_offsets(data, survey):
    m = collect_reference_matches(data)
    n_ref_on_detectors = len(m.visit) // len(VISITS)
    assert 0 < n_ref_on_detectors <= survey["ref"][0].size
    assert np.median(m.dra[m.astrometry]) == pytest.approx(OFFSET_RA, abs=0.05)
    assert np.median(m.ddec[m.astrometry]) == pytest.approx(OFFSET_DEC, abs=0.05)
    assert np.median(m.dmag[m.photometry]) == pytest.approx(DMAG, abs=1e-6)
    assert m.photometry.sum() < m.astrometry.sum()  # half the stars are photometry stars


def test_coadd_panels(data):
    panels, more, failed = collect_coadd_panels(data, "g")
    assert more == 0 and failed == [] and [p.data_id["patch"] for p in panels] == [0, 1]
    assert panels[0].clipped_fraction == pytest.approx(CLIPPED_ROWS / 300)
    assert panels[1].clipped_fraction == 0.0
    assert panels[0].no_data_fraction == pytest.approx(400 / 300**2)
    assert panels[0].n_image_median == 3.0
    assert panels[0].clipped.any() and np.isnan(panels[0].image[0, 0])
    panels, more, _ = collect_coadd_panels(data, "g", max_patches=1, max_pixels=100)
    assert more == 1 and panels[0].image.shape == (100, 100)  # binned by 3


def test_cell_psf_from_a_table_and_from_psf_images():
    cx, cy, fwhm = cell_psf_fwhm(_cells())
    assert fwhm == pytest.approx(0.9 + 0.01 * cx + 0.02 * cy)
    sig = np.array([[2.0, 2.2], [2.4, 2.6]])
    k = np.arange(25) - 12
    stamps = np.exp(-(k[None, None, None, :] ** 2 + k[None, None, :, None] ** 2)
                    / (2 * sig[..., None, None] ** 2))
    stamps /= stamps.sum(axis=(2, 3), keepdims=True)
    cx, cy, fwhm = cell_psf_fwhm(FitsBundle(header={"PIXSCALE": 0.2}, arrays={"psf": stamps}))
    assert list(cx) == [0, 1, 0, 1] and list(cy) == [0, 0, 1, 1]
    assert fwhm == pytest.approx(FWHM_PER_SIGMA * 0.2 * sig.ravel(), rel=0.01)
    assert cell_psf_fwhm(FitsBundle(arrays={"image": np.zeros((4, 4))})) is None


def test_truth_completeness_and_flux(data, survey):
    m = collect_truth_matches(data)
    assert m.source_type == "source"
    bright, faint = m.mag < DETECTION_LIMIT - 0.01, m.mag > DETECTION_LIMIT + 0.01
    assert m.detected[bright].all() and not m.detected[faint].any()
    assert np.nanmax(np.abs(m.flux_ratio - 1)) < 1e-9
    # Every truth object on a detector is counted once per visit: compare with a brute force.
    truth = survey["truth"]
    ra, dec = truth["ra"].to_numpy(), truth["dec"].to_numpy()
    on = 0
    for det in (0, 1):
        x, y = _wcs(det).all_world2pix(ra, dec, 0)
        on += int(((x > -0.5) & (x < SIZE - 0.5) & (y > -0.5) & (y < SIZE - 0.5)).sum())
    assert len(m) == on * len(VISITS)


def test_completeness_curve_by_hand():
    mag = np.array([20.1, 20.2, 20.3, 20.6, 20.7, 20.8])
    det = np.array([True, True, False, False, False, True])
    centers, frac, counts = completeness_curve(mag, det, bin_width=0.5, min_count=1)
    assert centers == pytest.approx([20.25, 20.75])
    assert frac == pytest.approx([2 / 3, 1 / 3]) and list(counts) == [3, 3]


def test_report_sections_and_captions(report):
    titles = [s.title for s in report.sections]
    assert titles == ["Datasets", "Observing conditions per visit", "PSF model",
                      "Calibration against the reference catalog", "Coadds",
                      "Against the simulated truth"]
    figures = [f for s in report.sections for f in s.figures]
    # conditions; PSF map and residuals; astrometry and photometry; coadds g and r and the
    # cell PSF; completeness and true conditions.
    assert len(figures) == 10
    assert report.notes == []
    for fig in figures:
        assert fig.png.startswith(b"\x89PNG") and "Good" in fig.caption
    text = " ".join(f.caption for f in figures)
    assert "visit 4: seeing, depth" in text
    assert f"zero point {1000 * ZP_BIAS:+.1f} mmag" in text


def test_written_page_is_self_contained(written):
    html = written.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert html.count('<img src="data:image/png;base64,') == 10
    assert not re.search(r'(src|href)="(?!data:|#)', html)  # nothing outside the file
    assert "<script" not in html
    assert written.stat().st_mode & 0o777 == 0o644


def test_report_in_headless_chromium(written):
    shot = Path(__file__).parent / "artifacts" / "report.png"
    page = check_page(written, shot)
    assert page.title == "drp data-release QA report"
    assert len(page.images) == 10
    assert page.broken_images == []
    assert all(i["width"] > 300 for i in page.images)
    assert page.errors == []
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 50_000


def test_page_checker_sees_broken_images_and_console_errors(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"><title>t</title>'
                    '</head><body><img alt="ok" src="data:image/png;base64,iVBORw0KGgoAAAANSUhEU'
                    'gAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==">'
                    '<img alt="bad" src="data:image/png;base64,AAAA">'
                    '<script>console.error("boom")</script></body></html>')
    result = check_page(page, tmp_path / "bad.png")
    assert [i["alt"] for i in result.broken_images] == ["bad"]
    assert any("boom" in e for e in result.errors)


# -- missing data and bad input ----------------------------------------------------------------
def test_empty_repository_says_what_is_missing(tmp_path):
    from store import Repo

    with Repo.create(tmp_path / "empty") as repo:
        path = write_report(repo, tmp_path / "empty.html")
        report = build_report(repo)
    html = path.read_text()
    assert "<img" not in html
    assert "holds no processed data" in html
    notes = " ".join(report.notes)
    for needed in ("visit_summary", "single_visit_star", "src", "deep_coadd",
                   "deep_coadd_cell"):
        assert needed in notes
    assert [s.title for s in report.sections][-1] == "Coadds"  # no truth section


def test_unknown_collection_and_unwritable_target(survey, tmp_path):
    repo = survey["repo"]
    with pytest.raises(CollectionError, match="unknown collection 'nope'"):
        write_report(repo, tmp_path / "r.html", collection="nope")
    with pytest.raises(ReportError, match="does not exist"):
        write_report(repo, tmp_path / "missing" / "r.html")
    with pytest.raises(ReportError, match="is a directory"):
        write_report(repo, tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_cli(survey, tmp_path):
    from processing.cli import main

    root = str(survey["repo"].root)
    runner = CliRunner()
    res = runner.invoke(main, ["report", root, "--collection", "nope", "--to",
                               str(tmp_path / "r.html")])
    assert res.exit_code == 1 and res.output.strip() == "Error: unknown collection 'nope'"
    res = runner.invoke(main, ["report", root, "--to", str(tmp_path / "no" / "r.html")])
    assert res.exit_code == 1 and "does not exist" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = runner.invoke(main, ["report", "--help"])
    assert res.exit_code == 0 and "--collection" in res.output


def test_bin_image_by_hand():
    from processing.report.coadds import bin_image

    a = np.array([[1.0, 3.0, 7.0, 0.0], [np.nan, 5.0, 1.0, 0.0], [np.nan, np.nan, 2.0, 2.0],
                  [np.nan, np.nan, 2.0, 2.0]])
    assert bin_image(a, 2) == pytest.approx(np.array([[3.0, 2.0], [np.nan, 2.0]]),
                                            nan_ok=True)
    assert bin_image(np.isnan(a), 2, reduce="any").tolist() == [[True, False], [True, False]]
    assert bin_image(np.arange(16.0).reshape(4, 4), 2, reduce="sample").tolist() == [
        [5.0, 7.0], [13.0, 15.0]]
    with pytest.raises(ValueError, match="reduce must be"):
        bin_image(a, 2, reduce="median")


def test_unreadable_dataset_becomes_a_note(tmp_path):
    from store import Repo

    with Repo.create(tmp_path / "repo") as repo:
        _dimensions(repo)
        repo.register_dataset_type("deep_coadd", ("skymap", "tract", "patch", "band"),
                                   "Exposure")
        repo.register_run("proc")
        rng = np.random.default_rng(1)
        refs = [repo.put(_coadd(rng, clipped=False)[0], "deep_coadd",
                         {"skymap": "sm", "tract": 0, "patch": p, "band": "g"}, run="proc")
                for p in (0, 1)]
        repo.path_of(refs[0]).write_bytes(b"not a FITS file")
        with pytest.warns(UserWarning, match="cannot read deep_coadd"):
            report = build_report(repo, collection="proc")
    coadds = next(s for s in report.sections if s.title == "Coadds")
    assert len(coadds.figures) == 1 and "1 patch coadd(s)" in coadds.figures[0].caption
    assert any("Could not read deep_coadd" in n.text and "'patch': 0" in n.text
               for n in coadds.notes)
