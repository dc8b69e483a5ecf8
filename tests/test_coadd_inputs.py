"""The SQL coadd-input selection against a brute-force Python filter of the same truth."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pyarrow as pa
import pytest

from processing.algorithms.summary_fields import ExposureSummaryStats
from processing.coadd_inputs import (
    CoaddInputSelector,
    SelectionColumnsError,
    check_selection_columns,
    patch_overlap_table,
)
from processing.visit_summary import DetectorSummary, VisitSummaryCatalog
from queries import QueryParameterError
from queries import load as load_query
from store.exposure import DetectorInfo, VisitInfo
from store.geom import Box
from store.sphgeom import ConvexPolygon

from ._coadd_scenes import make_skymap, patch_record_table, tan_wcs

FWHM = math.sqrt(8 * math.log(2))
CUTS = {  # column -> (parameter, default); NaN or NULL fails
    "psfStarScaledDeltaSizeScatter": ("max_scaled_size_scatter", 0.019),
    "psfTraceRadiusDelta": ("max_psf_trace_radius_delta", 0.7),
    "psfApFluxDelta": ("max_psf_ap_flux_delta", 0.24),
    "psfApCorrSigmaScaledDelta": ("max_psf_ap_corr_sigma_scaled_delta", 0.22),
    "starEMedian": ("max_star_e", 0.4),
    "starUnNormalizedEMedian": ("max_star_unnormalized_e", 2.8),
}


@pytest.fixture(scope="module")
def survey():
    """60 visits of 4 detectors around one tract: random pointings, seeing and quality."""
    rng = np.random.default_rng(7)
    skymap = make_skymap()
    tract = skymap[0]
    tables = []
    for v in range(60):
        band = "r" if v % 4 else "g"
        # Pointings spread over ~2x the tract, so some visits miss a given patch.
        ra = tract.ra + rng.uniform(-0.04, 0.04)
        dec = tract.dec + rng.uniform(-0.04, 0.04)
        rot = rng.uniform(0, 90)
        entries = []
        for det in range(4):
            off = np.array([(det % 2 - 1) * 200.0, (det // 2 - 1) * 200.0])
            wcs = tan_wcs(ra, dec, -off, rot)
            c = Box(0, 0, 190, 190).corners()
            cra, cdec = wcs.all_pix2world(c[:, 0], c[:, 1], 0)
            sigma = rng.uniform(1.5, 4.5)
            stats = ExposureSummaryStats(
                psfSigma=sigma, pixelScale=0.2, zeroPoint=31.0, skyNoise=5.0, meanVar=25.0,
                nPsfStar=int(rng.integers(3, 60)),
                psfStarDeltaE1Median=rng.normal(0, 0.004), psfStarDeltaE2Median=rng.normal(0, 0.004),
                raCorners=tuple(cra), decCorners=tuple(cdec), expTime=30.0,
                **{col: rng.uniform(0, 1.05 * default) for col, (_, default) in CUTS.items()})
            for col in rng.choice(["psfSigma", "zeroPoint", "skyNoise", "starEMedian",
                                   "psfTraceRadiusDelta"], size=int(rng.random() < 0.15)):
                setattr(stats, col, float("nan"))  # NaN must fail the cut it feeds
            if rng.random() < 0.03:
                stats.raCorners = (float("nan"),) * 4
            vi = VisitInfo(visit=v, instrument="Cam", band=band, mjd=60000.0 + v)
            entries.append(DetectorSummary(DetectorInfo(det), Box(0, 0, 190, 190), stats,
                                           visit_info=vi))
        tables.append(VisitSummaryCatalog.from_detectors(entries).to_table())
    summary = pa.concat_tables(tables)
    patches = patch_record_table(skymap)
    return skymap, summary, patches


def brute_force(summary: pa.Table, patch, band: str, **params) -> list[tuple[int, int]]:
    """The selection written as a plain Python loop over the rows."""
    p = {"max_psf_fwhm": 1.7, "max_ellip_residual": 0.007, "min_n_psf_star": 6,
         **{name: default for name, default in CUTS.values()}, **params}
    polygon = patch.outer_polygon
    passing = []
    fwhm_by_visit: dict[int, list[float]] = {}
    for row in summary.to_pylist():
        if row["band"] != band:
            continue
        fwhm = row["psfSigma"] * row["pixelScale"] * FWHM
        fwhm_by_visit.setdefault(row["visit"], []).append(fwhm)
        corners = np.array([row["raCorners"], row["decCorners"]], dtype=float)
        if not np.all(np.isfinite(corners)):
            continue
        if not ConvexPolygon(corners[0], corners[1]).overlaps(polygon):
            continue
        ok = fwhm <= p["max_psf_fwhm"]
        ok &= math.hypot(row["psfStarDeltaE1Median"], row["psfStarDeltaE2Median"]) <= \
            p["max_ellip_residual"]
        ok &= row["nPsfStar"] >= p["min_n_psf_star"]
        for col, (name, _) in CUTS.items():
            ok &= row[col] <= p[name]  # False for NaN
        ok &= math.isfinite(row["zeroPoint"]) and math.isfinite(row["skyNoise"])
        if ok:
            passing.append((row["visit"], row["detector"]))
    if p.get("best_n") is not None:
        visits = sorted({v for v, _ in passing},
                        key=lambda v: (np.nanmean(fwhm_by_visit[v]), v))[:p["best_n"]]
        passing = [(v, d) for v, d in passing if v in visits]
    return sorted(passing)


def selected(table: pa.Table) -> list[tuple[int, int]]:
    return sorted(zip(table.column("visit").to_pylist(), table.column("detector").to_pylist(),
                      strict=True))


@pytest.mark.parametrize("params", [{}, {"max_psf_fwhm": 1.0}, {"max_psf_fwhm": 1.3, "best_n": 3},
                                    {"min_n_psf_star": 30, "max_star_e": None}])
def test_sql_selection_equals_brute_force(survey, params):
    skymap, summary, patches = survey
    tract = skymap[0]
    with CoaddInputSelector(summary, patches) as sel:
        n_total = 0
        for patch_id in (6, 12, 18):
            patch = tract.patch(patch_id)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                got = sel.select(skymap="test", tract=0, patch=patch_id, band="r", **params)
            truth_params = {k: (float("inf") if v is None else v) for k, v in params.items()
                            if k != "best_n"}
            if "best_n" in params:
                truth_params["best_n"] = params["best_n"]
            expected = brute_force(summary, patch, "r", **truth_params)
            assert selected(got) == expected
            n_total += len(expected)
    assert n_total > 5  # the cuts leave something to compare


def test_seeing_cut_returns_exactly_the_visits_of_a_python_filter(survey):
    skymap, summary, patches = survey
    with CoaddInputSelector(summary, patches, params={"max_psf_fwhm": 0.9}) as sel:
        got = sel.select(skymap="test", tract=0, patch=12, band="r")
    expected = brute_force(summary, skymap[0].patch(12), "r", max_psf_fwhm=0.9)
    assert sorted(set(got.column("visit").to_pylist())) == sorted({v for v, _ in expected})
    assert np.all(np.asarray(got.column("fwhm")) <= 0.9)
    # Rows come in seeing order (visit rank), detectors ascending within a visit.
    ranks = got.column("visit_rank").to_pylist()
    assert ranks == sorted(ranks)


def test_nan_values_fail_per_detector_cuts(survey):
    _, summary, patches = survey
    rows = summary.to_pylist()
    target = next(i for i, r in enumerate(rows) if r["band"] == "r")
    with CoaddInputSelector(summary, patches, params={k: None for k, _ in CUTS.values()}
                            | {"max_ellip_residual": None, "min_n_psf_star": None,
                               "max_psf_fwhm": None}) as sel:
        everything = selected(sel.select(skymap="test", tract=0, patch=12, band="r"))
    key = (rows[target]["visit"], rows[target]["detector"])
    for column in ("zeroPoint", "skyNoise"):
        patched = [dict(r) for r in rows]
        patched[target][column] = float("nan")
        table = pa.Table.from_pylist(patched, schema=summary.schema)
        with CoaddInputSelector(table, patches, params={k: None for k, _ in CUTS.values()}
                                | {"max_ellip_residual": None, "min_n_psf_star": None,
                                   "max_psf_fwhm": None}) as sel:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                got = selected(sel.select(skymap="test", tract=0, patch=12, band="r"))
        if key in everything:
            assert key not in got and len(got) == len(everything) - 1


def test_quantile_mode_follows_rubin_rounding(survey):
    _, summary, patches = survey
    with CoaddInputSelector(summary, patches, params={"max_psf_fwhm": None}) as sel:
        every = sel.select(skymap="test", tract=0, patch=12, band="r")
        n = len(set(every.column("visit").to_pylist()))
        q = sel.select(skymap="test", tract=0, patch=12, band="r", quantile_min=0.0,
                       quantile_max=0.33, n_visits_min=2)
    ranks = sorted(set(q.column("visit_rank").to_pylist()))
    upper = max(round(0.33 * n), 2)
    assert ranks == list(range(1, upper + 1))


def test_no_input_passes_is_an_empty_result_with_a_warning(survey):
    _, summary, patches = survey
    with CoaddInputSelector(summary, patches) as sel:
        with pytest.warns(UserWarning, match="loosen its cuts"):
            got = sel.select(skymap="test", tract=0, patch=12, band="r", max_psf_fwhm=0.01)
    assert got.num_rows == 0 and {"visit", "detector"} <= set(got.column_names)


def test_patch_that_no_visit_overlaps(survey):
    _, summary, patches = survey
    far = summary.filter(pa.compute.less(summary.column("visit"), 0))  # no rows at all
    with CoaddInputSelector(far, patches) as sel:
        assert sel.candidates() == []
        with pytest.warns(UserWarning):
            assert sel.select(skymap="test", tract=0, patch=0, band="r").num_rows == 0
    with CoaddInputSelector(pa.table({}), pa.table({})) as sel:  # nothing registered at all
        with pytest.warns(UserWarning):
            assert sel.select(skymap="test", tract=0, patch=0, band="r").num_rows == 0


def test_candidates_are_a_superset_of_selected_patches(survey):
    skymap, summary, patches = survey
    with CoaddInputSelector(summary, patches, params={"max_psf_fwhm": None}) as sel:
        cands = set(sel.candidates())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for patch_id in range(0, len(list(skymap[0].patches())), 3):
                for band in ("g", "r"):
                    if sel.select(skymap="test", tract=0, patch=patch_id, band=band).num_rows:
                        assert ("test", 0, patch_id, band) in cands


def test_user_query_with_wrong_columns_names_the_missing_ones(survey, tmp_path):
    _, summary, patches = survey
    path = tmp_path / "mine.sql"
    path.write_text("-- My selection.\n-- @param band str band\n"
                    "SELECT visit AS v, band FROM visit_summary WHERE band = $band\n")
    with CoaddInputSelector(summary, patches, query=path) as sel:
        with pytest.raises(SelectionColumnsError, match="lacks visit, detector"):
            sel.select(skymap="test", tract=0, patch=12, band="r")
    with pytest.raises(SelectionColumnsError, match="lacks detector"):
        check_selection_columns(pa.table({"visit": [1]}), "q")


def test_user_query_file_is_used(survey, tmp_path):
    _, summary, patches = survey
    path = tmp_path / "all_r.sql"
    path.write_text("-- Every r detector of even visits.\n-- @param band str band\n"
                    "SELECT visit, detector FROM visit_summary WHERE band = $band "
                    "AND visit % 2 = 0 ORDER BY visit, detector\n")
    with CoaddInputSelector(summary, patches, query=path) as sel:
        got = sel.select(skymap="test", tract=0, patch=12, band="r")
    assert got.num_rows > 0 and all(v % 2 == 0 for v in got.column("visit").to_pylist())


def test_unknown_parameter_fails_early(survey):
    _, summary, patches = survey
    with pytest.raises(QueryParameterError, match="no parameter"):
        CoaddInputSelector(summary, patches, params={"max_seeing": 1.0})


def test_query_file_declares_the_documented_parameters():
    q = load_query("coadd_inputs")
    assert q.params["max_psf_fwhm"].default == 1.7
    assert q.params["best_n"].default is None and not q.params["best_n"].required
    assert {"skymap", "tract", "patch", "band"} <= {p.name for p in q.params.values()
                                                    if p.required}


def test_patch_overlap_table_lists_every_overlapping_pair(survey):
    _, summary, patches = survey
    table = patch_overlap_table(summary, patches)
    assert set(table.column_names) == {"skymap", "tract", "patch", "instrument", "visit",
                                       "detector"}
    with CoaddInputSelector(summary, patches) as sel:
        for patch_id in (6, 12):
            expected = {(int(summary.column("visit")[i].as_py()),
                         int(summary.column("detector")[i].as_py()))
                        for i in sel.overlapping("test", 0, patch_id)}
            mine = table.filter(pa.compute.equal(table.column("patch"), patch_id))
            assert selected(mine) == sorted(expected) and expected
