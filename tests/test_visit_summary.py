"""Tests of processing.visit_summary: the per-visit Parquet table with serialised components."""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.wcs import WCS, Sip

from processing.algorithms.summary_stats import (
    SUMMARY_FIELDS,
    ExposureSummaryStats,
    compute_summary_stats,
)
from processing.visit_summary import FORMAT, DetectorSummary, VisitSummaryCatalog
from store.calib import ApCorrMap, ChebyshevField, PhotoCalib
from store.exposure import DetectorInfo, Exposure, VisitInfo
from store.formats.parquet import column_units
from store.geom import Box
from store.psf import GaussianPsf, PixelBasisPsf

VISIT = VisitInfo(visit=2024112100042, instrument="LSSTComCam", band="r",
                  physical_filter="r_03", exposure_time=30.0, dark_time=31.0, mjd=60640.31,
                  mjd_begin=60640.3098, boresight_ra=53.1, boresight_dec=-28.1,
                  rotation_angle=12.5, airmass=1.08, azimuth=150.0, altitude=67.8,
                  day_obs=20241121)


def _wcs(ra=53.1, dec=-28.1) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [2036.5, 2000.5]
    w.wcs.cd = np.array([[-5.5555e-5, 1.3e-7], [1.1e-7, 5.5556e-5]])
    a = np.zeros((4, 4))
    b = np.zeros((4, 4))
    a[2, 0], a[0, 3] = 1.3e-6, 2.1e-10
    b[1, 1], b[3, 0] = -1.1e-6, 1.7e-10
    w.sip = Sip(a, b, None, None, w.wcs.crpix)
    return w


def _pixel_basis_psf(seed=0) -> PixelBasisPsf:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-12:13, -12:13]
    basis = rng.normal(0, 1e-4, (6, 25, 25))
    basis[0] = np.exp(-0.5 * (xx**2 + yy**2) / 2.3**2)
    return PixelBasisPsf(basis, 2, (0.0, 0.0, 4071.0, 3999.0))


def _entries():
    apc = ApCorrMap({
        "base_PsfFlux_instFlux": ChebyshevField(np.array([[0.98, 0.01], [0.003, 0.0]]),
                                                (0, 0, 4071, 3999)),
        "base_PsfFlux_instFluxErr": ChebyshevField.constant(0.002, (0, 0, 4071, 3999)),
    })
    rng = np.random.default_rng(1)
    summaries = [ExposureSummaryStats(psfSigma=float(rng.uniform(2, 3)), nPsfStar=int(n),
                                      raCorners=tuple(rng.uniform(53, 54, 4)),
                                      zeroPoint=31.3, expTime=30.0) for n in (50, 61, 0)]
    bbox = Box(0, 0, 4072, 4000)
    return [
        # Listed out of order: the catalog sorts by detector.
        DetectorSummary(DetectorInfo(4, "R22_S11", bbox, 1.55, 6.1, 9e4), bbox, summaries[0],
                        VISIT, _wcs(), _pixel_basis_psf(), PhotoCalib(0.061, 0.0004), apc),
        DetectorSummary(DetectorInfo(1, "R22_S01", bbox, 1.62, 7.3, 8.5e4), bbox, summaries[1],
                        VISIT, _wcs(53.3), GaussianPsf(2.4, axis_ratio=0.9, theta=0.3)),
        DetectorSummary(DetectorInfo(2, "R22_S02", bbox), bbox, summaries[2], VISIT),
    ]


def _same(a, b) -> bool:
    """Dataclass equality with NaN == NaN."""
    va, vb = dataclasses.astuple(a), dataclasses.astuple(b)
    return all(x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
               for x, y in zip(va, vb, strict=True))


def _parquet_round_trip(table: pa.Table) -> pa.Table:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    buf.seek(0)
    return pq.read_table(buf)


def test_parquet_round_trip_keeps_every_component():
    entries = _entries()
    cat = VisitSummaryCatalog.from_detectors(entries)
    back = VisitSummaryCatalog.from_table(_parquet_round_trip(cat.to_table()))
    assert back.detectors() == [1, 2, 4] and back.visit == VISIT.visit and len(back) == 3
    for e in entries:
        d = e.detector.id
        assert back.summary(d) == e.summary
        assert back.bbox(d) == e.bbox
        assert back.visit_info(d) == VISIT
        assert _same(back.detector_info(d), e.detector)
        assert back.photo_calib(d) == e.photo_calib
        if e.psf is None:
            assert back.psf(d) is None
        else:
            for x, y in [(0.0, 0.0), (2035.5, 1999.5), (4071.0, 3999.0), (133.7, 3000.2)]:
                np.testing.assert_array_equal(back.psf(d).kernel_image(x, y),
                                              e.psf.kernel_image(x, y))
        if e.wcs is None:
            assert back.wcs(d) is None
        else:
            x = np.array([-0.5, 4071.5, 1234.5, 17.25])
            y = np.array([-0.5, 3999.5, 2222.0, 3901.75])
            np.testing.assert_allclose(back.wcs(d).all_pix2world(x, y, 0),
                                       e.wcs.all_pix2world(x, y, 0), rtol=0, atol=1e-11)
        if e.ap_corr_map is None:
            assert back.ap_corr_map(d) is None
        else:
            apc = back.ap_corr_map(d)
            assert apc.names() == e.ap_corr_map.names()
            xs, ys = np.array([0.0, 2000.0, 4071.0]), np.array([3999.0, 10.0, 2000.0])
            for name in apc.names():
                np.testing.assert_allclose(apc[name].evaluate(xs, ys),
                                           e.ap_corr_map[name].evaluate(xs, ys), rtol=1e-15)
    assert back.psf(1).__class__ is GaussianPsf and back.psf(4).__class__ is PixelBasisPsf
    row = back.row(4)
    assert row["detector_name"] == "R22_S11" and row["gain"] == 1.55
    assert row["calibration_mean"] == 0.061 and len(row["raCorners"]) == 4
    assert back.row(2)["psf"] is None and back.row(2)["calibration_mean"] is None


def test_columns_units_and_format_metadata():
    table = _parquet_round_trip(VisitSummaryCatalog.from_detectors(_entries()).to_table())
    units = column_units(table)
    assert units["ra"] == "deg" and units["pixelScale"] == "arcsec/pixel"
    assert units["psfSigma"] == "pixel" and units["skyBg"] == "adu"
    assert units["expMidptMJD"] == "d" and units["magLim"] == "mag"
    assert units["calibration_mean"] == "nJy/adu" and units["raCorners"] == "deg"
    assert table.schema.metadata[b"drp_format"] == FORMAT.encode()
    for name in SUMMARY_FIELDS:
        assert name in table.column_names
    for name in ("visit", "detector", "band", "physical_filter", "x0", "y0", "width", "height",
                 "wcs", "psf", "ap_corr_map", "calibration_mean", "calibration_err", "gain",
                 "read_noise", "expMidptMJD", "obsStartMJD"):
        assert name in table.column_names
    assert table.schema.field("nPsfStar").type == pa.int32()
    assert table.schema.field("raCorners").type == pa.list_(pa.float64(), 4)


def test_sql_and_polars_read_the_file(tmp_path):
    import duckdb
    import polars as pl

    path = tmp_path / "visit_summary.parquet"
    pq.write_table(VisitSummaryCatalog.from_detectors(_entries()).to_table(), path)
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT detector, nPsfStar, raCorners[1], psf IS NULL FROM '{path}' ORDER BY detector"
    ).fetchall()
    entries = {e.detector.id: e for e in _entries()}
    assert [r[0] for r in rows] == [1, 2, 4]
    for det, n_psf, ra0, no_psf in rows:
        assert n_psf == entries[det].summary.nPsfStar
        assert ra0 == entries[det].summary.raCorners[0]
        assert no_psf == (entries[det].psf is None)
    cat = VisitSummaryCatalog.from_table(pl.read_parquet(path))
    assert cat.psf(4).kernel_size == 25


def test_with_components_replaces_one_detector_and_leaves_the_original():
    cat = VisitSummaryCatalog.from_detectors(_entries())
    new_psf = GaussianPsf(3.1)
    new_summary = ExposureSummaryStats(psfSigma=3.1, nPsfStar=12)
    updated = cat.with_components(1, psf=new_psf, photo_calib=None, summary=new_summary)
    assert updated.psf(1).sigma == 3.1 and updated.photo_calib(1) is None
    assert updated.summary(1) == new_summary
    assert cat.psf(1).sigma == 2.4 and cat.summary(1).nPsfStar == 61  # unchanged
    # Other detectors and other components untouched.
    assert updated.wcs(1) is not None
    np.testing.assert_array_equal(updated.psf(4).kernel_image(5, 5), cat.psf(4).kernel_image(5, 5))
    assert updated.summary(4) == cat.summary(4)
    # Setting components on a bare detector; removing a WCS and an ap-corr map.
    updated = updated.with_updates({2: {"photo_calib": PhotoCalib(0.05), "wcs": _wcs()},
                                    4: {"wcs": None, "ap_corr_map": None}})
    assert updated.photo_calib(2) == PhotoCalib(0.05) and updated.wcs(2) is not None
    assert updated.wcs(4) is None and updated.ap_corr_map(4) is None
    assert updated.psf(4) is not None


def test_from_exposures_with_computed_summaries():
    rng = np.random.default_rng(2)
    exposures, summaries = [], []
    for det in (7, 3):
        image = rng.normal(0, 4.0, (120, 160)).astype(np.float32)
        exp = Exposure(image, variance=np.full(image.shape, 16.0, np.float32), wcs=_wcs(),
                       psf=GaussianPsf(2.0 + det / 10), photo_calib=PhotoCalib.from_zero_point(31.0),
                       visit_info=VISIT, detector=DetectorInfo(det, f"S{det}", gain=1.5,
                                                               read_noise=6.0))
        exposures.append(exp)
        summaries.append(compute_summary_stats(exp))
    cat = VisitSummaryCatalog.from_table(_parquet_round_trip(
        VisitSummaryCatalog.from_exposures(exposures, summaries).to_table()))
    assert cat.detectors() == [3, 7]
    for exp, s in zip(exposures, summaries, strict=True):
        d = exp.detector.id
        assert cat.summary(d) == s
        assert cat.summary(d).psfSigma == pytest.approx(2.0 + d / 10, rel=1e-5)
        assert cat.bbox(d) == Box(0, 0, 160, 120)
        assert cat.entry(d).psf.sigma == exp.psf.sigma
    assert math.isfinite(cat.summary(3).zenithDistance)
    assert math.isnan(cat.summary(3).magLim)  # no background given: no skyBg


def test_summary_exp_time_falls_back_to_the_visit_info():
    bbox = Box(0, 0, 10, 10)
    cat = VisitSummaryCatalog.from_detectors(
        [DetectorSummary(DetectorInfo(0), bbox, ExposureSummaryStats(), VISIT)])
    assert cat.summary(0).expTime == 30.0 and cat.visit_info(0).exposure_time == 30.0


def test_misuse_is_reported():
    entries = _entries()
    with pytest.raises(ValueError, match="duplicate detector"):
        VisitSummaryCatalog.from_detectors([entries[0], entries[0]])
    other = DetectorSummary(DetectorInfo(9), Box(0, 0, 5, 5), visit_info=VisitInfo(visit=1))
    with pytest.raises(ValueError, match="one visit"):
        VisitSummaryCatalog.from_detectors([entries[0], other])
    cat = VisitSummaryCatalog.from_detectors(entries)
    with pytest.raises(KeyError, match="detector 99 not in the summary"):
        cat.psf(99)
    with pytest.raises(ValueError, match="missing columns"):
        VisitSummaryCatalog.from_table(cat.to_table().drop_columns(["psf"]))
    with pytest.raises(ValueError, match="unknown components"):
        cat.with_updates({1: {"background": None}})
    with pytest.raises(TypeError, match="ExposureSummaryStats"):
        cat.with_components(1, summary={"psfSigma": 1.0})
    with pytest.raises(ValueError, match="2 exposures but 1 summaries"):
        VisitSummaryCatalog.from_exposures([Exposure(np.zeros((2, 2)))] * 2,
                                           [ExposureSummaryStats()])


def test_empty_catalog():
    cat = VisitSummaryCatalog.from_detectors([])
    assert len(cat) == 0 and cat.visit is None and cat.detectors() == []
    back = VisitSummaryCatalog.from_table(_parquet_round_trip(cat.to_table()))
    assert len(back) == 0
