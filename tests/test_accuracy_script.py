"""The accuracy script's pure helpers on tiny inputs whose answers are known."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from store.masks import bits
from tests.benchmarks import accuracy_demo
from tests.benchmarks._accuracy import cells, coadd, common, core, visits
from tests.benchmarks._accuracy.truth import Truth


# ------------------------------------------------------------------------- statistics
def test_robust_sigma_and_figure_records():
    rng = np.random.default_rng(3)
    assert core.robust_sigma(rng.normal(5.0, 2.0, 20000)) == pytest.approx(2.0, rel=0.03)
    assert core.robust_sigma([1.0, 1.0, 1.0]) == 0.0
    assert math.isnan(core.robust_sigma([np.nan]))
    f = core.figure(0.004, 12, "< 0.005", 0.004 < 0.005, median=np.float64(np.nan), note="x")
    assert f == {"value": 0.004, "n": 12, "target": "< 0.005", "pass": True, "median": None,
                 "note": "x"}
    assert core.figure(float("nan"), 0, "t", True)["pass"] is None
    assert core.null_figure("no data", "t")["value"] is None
    assert core.spread([-3.0, 1.0, np.nan, 2.0]) == {"median": 2.0, "max": 3.0, "n_units": 3}


def test_match_nearest_is_unique_and_nearest():
    # two measured points near target 0; the closer one wins, the other takes target 1
    i1, i2 = core.match_nearest([0.1, 0.3, 5.0], [0.0, 0.0, 5.0], [0.0, 0.9, 50.0],
                                [0.0, 0.0, 50.0], 1.0)
    pairs = set(zip(i1.tolist(), i2.tolist(), strict=True))
    assert pairs == {(0, 0), (1, 1)}
    assert core.match_nearest([], [], [1.0], [1.0], 1.0)[0].size == 0


def test_isolated_counts_bright_and_extended_neighbours():
    arcsec = 1 / 3600
    ra = np.array([10.0, 10.0 + 2 * arcsec, 10.0 + 100 * arcsec, 10.0 + 104 * arcsec,
                   10.0 + 300 * arcsec])
    dec = np.zeros(5)
    flux = np.array([1000.0, 5.0, 1000.0, 20.0, 1000.0])
    hlr = np.array([0.0, 0.0, 0.0, 0.0, 0.0])
    # 2" neighbour with 0.5% of the flux: isolated; 4" neighbour with 2%: too far at 3"
    assert core.isolated(ra, dec, flux, hlr, [0, 2, 4]).tolist() == [True, True, True]
    # the same 4" neighbour as a galaxy of half-light radius 1" reaches 5": not isolated
    hlr[3] = 1.0
    assert core.isolated(ra, dec, flux, hlr, [0, 2, 4]).tolist() == [True, False, True]
    assert core.isolated(ra, dec, flux * 0 + 1, hlr, [0], max_fraction=0.001).tolist() == [False]


def test_offsets_mas_east_north():
    east, north = core.offsets_mas([30.0 + 1 / 3600, 359.9999], [60.0, 0.0],
                                   [30.0, 0.0], [60.0, 0.0])
    assert east[0] == pytest.approx(500.0, rel=1e-6)  # cos 60 deg
    assert north[0] == 0.0
    assert east[1] == pytest.approx(-360.0, rel=1e-6)  # wraps through 0 deg


def test_snr_limit_magnitude_recovers_a_power_law():
    mag = np.linspace(20.0, 26.0, 200)
    snr = 5.0 * 10 ** (-0.4 * (mag - 24.3))
    m5, slope, n = core.snr_limit_magnitude(mag, snr, snr_min=3.0, snr_max=20.0)
    assert m5 == pytest.approx(24.3, abs=1e-9)
    assert slope == pytest.approx(-0.4, abs=1e-12)
    assert n == int(np.sum((snr >= 3) & (snr <= 20)))
    assert math.isnan(core.snr_limit_magnitude(mag[:3], snr[:3], snr_min=0, snr_max=1e9)[0])


# ------------------------------------------------------------------------- PSF moments
def test_poly_field_reproduces_a_cubic_and_reports_residuals():
    g = np.array([204.3, 613.9, 1023.5, 1433.1, 1842.7])
    x, y = (a.ravel() for a in np.meshgrid(g, g))

    def f(x, y):
        u, v = x / 1000, y / 1000
        return np.column_stack([5 + 0.1 * u - 0.05 * u ** 2 * v + 0.02 * v ** 3, 0.3 * u * v])

    field = core.PolyField(x, y, f(x, y), degree=3)
    assert field.max_residual.max() < 1e-10
    px, py = np.array([0.0, 2047.0, 900.0]), np.array([2047.0, 0.0, 55.0])
    assert np.allclose(field(px, py), f(px, py), atol=1e-10)
    assert core.PolyField([0, 1, 0, 1], [0, 0, 1, 1], np.ones((4, 1))).degree == 1


def test_moment_transforms_and_errors():
    m = np.array([[4.0, 2.0, 0.5]])
    rot = np.array([[[0.0, -1.0], [1.0, 0.0]]])  # 90 degrees
    assert np.allclose(core.transform_moments(m, rot), [[2.0, 4.0, -0.5]])
    assert np.allclose(core.transform_moments(m, 2 * np.eye(2)[None]), 4 * m)
    err = core.rel_moment_errors([[4.04, 1.98, 0.53]], m)
    assert np.allclose(err, [[0.01, -0.01, 0.01]])
    a = np.array([[1.5, 0.2], [-0.1, 0.9]])
    jac = core.jacobian(lambda x, y: (a[0, 0] * x + a[0, 1] * y + 3, a[1, 0] * x + a[1, 1] * y),
                        [1.0, 50.0], [2.0, -7.0])
    assert np.allclose(jac, a[None], atol=1e-12)
    mean = core.weighted_mean_moments([[1, 2, 0], [3, 4, 1], [7, 7, 7]], [1, 3, 2], [0, 0, 2], 3)
    assert np.allclose(mean[0], [2.5, 3.5, 0.75])
    assert np.isnan(mean[1]).all() and np.allclose(mean[2], 7)


def test_mixture_moments_of_one_moffat_match_the_simulator_truth():
    from sample_data.moments import adaptive_moments as truth_moments
    from sample_data.psf import moffat_pixels

    cont = np.array([[5.2, 4.9, 0.6], [8.0, 7.0, -1.0]])
    beta = np.array([3.5, 2.5])
    got = core.mixture_moments(cont, beta, [1.0, 2.0], [0, 1], 3)
    half = 30
    grid = np.arange(-half, half + 1, dtype=float)
    for k in range(2):
        img = moffat_pixels(grid[None, :], grid[:, None], *cont[k], beta[k], n_gauss=4)
        t = truth_moments(img[None], half, half, np.sqrt(cont[k, :2].mean()))
        want = np.array([t.ixx[0], t.iyy[0], t.ixy[0]])
        assert np.abs(core.rel_moment_errors(got[k:k + 1], want[None])).max() < 2e-4
    assert np.isnan(got[2]).all()
    # equal PSFs: the mixture is the PSF itself, whatever the weights
    same = core.mixture_moments(cont[[0, 0]], 3.5, [1.0, 9.0], [0, 0], 1)
    assert np.allclose(same[0], got[0], rtol=1e-9)


# ----------------------------------------------------------------------- pixel geometry
def test_artefact_samples_carry_the_flux():
    x, y, w = core.artefact_samples("cosmic_ray", 10.0, 10.0, 14.0, 13.0, 5.0, 800.0)
    assert w.sum() == pytest.approx(800.0)
    assert np.allclose((y - 10.0) * 4, (x - 10.0) * 3)  # on the segment
    x, y, w = core.artefact_samples("satellite", 0.0, 5.0, 100.0, 5.0, 2.0, 50.0)
    assert w.sum() == pytest.approx(50.0)
    assert np.average(y, weights=w) == pytest.approx(5.0)
    assert np.sqrt(np.average((y - 5) ** 2, weights=w)) == pytest.approx(2.0, rel=0.05)
    x, y, w = core.artefact_samples("ghost", 3.0, 4.0, 3.0, 4.0, 120.0, 7.0)
    assert (x.tolist(), y.tolist(), w.tolist()) == ([3.0], [4.0], [7.0])


def test_disk_mask_counts_pixels():
    m = core.disk_mask((20, 20), [10.2], [9.9], 2.0)
    assert m.sum() == 13 and m[10, 10] and m[10, 12] and not m[11, 12]
    edge = core.disk_mask((20, 20), [0.0, np.nan], [0.0, 5.0], [1.0, 3.0])
    assert edge.sum() == 3
    two = core.disk_mask((20, 20), [3.0, 15.0], [3.0, 15.0], [0.0, 1.0])
    assert two.sum() == 6


# ------------------------------------------------------------------------ photometry
def _gaussian(shape, x, y, sigma, flux):
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(float)
    return flux * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / sigma ** 2) / (
        2 * np.pi * sigma ** 2)


def test_forced_psf_flux_exact_on_a_noiseless_star_and_flags():
    img = _gaussian((40, 40), 20.0, 19.0, 2.0, 5000.0)
    var = np.full_like(img, 4.0)
    mask = np.zeros(img.shape, np.int32)
    model = _gaussian((41, 41), 20.0, 20.0, 2.0, 1.0)[10:31, 10:31]  # 21 x 21, centred
    models = np.stack([model / model.sum()] * 3)
    mask[19, 25] = bits("CLIPPED")  # 5 px from star 0's centre
    mask[5, 5] = bits("SAT")  # inside star 2's stamp
    res = common.forced_psf_flux(img, var, mask, models, np.array([10, 10, 0]),
                                 np.array([9, 9, 0]))
    assert res["flux"][0] == pytest.approx(5000.0 * model.sum() / model.sum(), rel=1e-3)
    assert res["flagged"].tolist() == [True, True, False]
    assert res["spoiled"].tolist() == [False, False, True]  # star 2: SAT and off the image
    assert res["err"][0] == pytest.approx(2.0 / np.sqrt((models[0] ** 2).sum()), rel=1e-6)


def test_cell_stamps_index_outer_cells():
    arr = np.arange(2 * 9 * 9).reshape(2, 9, 9)
    st = cells.cell_stamps(arr, [1, 0], [4, 2], [3, 5], 1)
    assert np.array_equal(st[0], arr[1, 2:5, 3:6]) and np.array_equal(st[1], arr[0, 4:7, 1:4])


def test_noise_figure_sees_a_wrong_variance_plane():
    rng = np.random.default_rng(7)
    img = rng.normal(0.0, 2.0, (256, 256)).astype(np.float32)
    mask = np.zeros(img.shape, np.int32)
    mask[:10] = bits("NO_DATA")
    img[:10] = 1e6  # masked pixels must not enter
    good = SimpleNamespace(image=img, variance=np.full(img.shape, 4.0, np.float32), mask=mask)
    per_pixel, n, binned = coadd._noise(good, [128.0], [128.0], [20.0])
    assert per_pixel == pytest.approx(1.0, abs=0.03) and binned == pytest.approx(1.0, abs=0.1)
    assert n == 246 * 256 - int(core.disk_mask((256, 256), [128.0], [128.0], 20.0).sum())
    wrong = SimpleNamespace(image=img, variance=np.full(img.shape, 2.0, np.float32), mask=mask)
    assert coadd._noise(wrong, [], [], [])[0] == pytest.approx(np.sqrt(2), rel=0.03)


def test_clipped_near_stars_by_magnitude():
    mask = np.zeros((60, 60), np.int32)
    mask[10, 10] = bits("CLIPPED")
    fake = SimpleNamespace(image=np.zeros((60, 60)), mask=mask)
    truth = SimpleNamespace(is_star=np.array([True, True, False]),
                            mag=lambda band: np.array([17.0, 23.0, 17.0]))
    near = coadd._clipped_near_stars(fake, truth, "g", np.arange(3), np.array([10.0, 40.0, 30.0]),
                                     np.array([10.0, 40.0, 30.0]), 1.0, [])
    assert near[:, 0].tolist() == [13, 1] and near[:, 3].tolist() == [13, 0]
    assert near[:, 1:3].sum() == 0
    # an artefact on the first star takes its pixels out
    near = coadd._clipped_near_stars(fake, truth, "g", np.arange(3), np.array([10.0, 40.0, 30.0]),
                                     np.array([10.0, 40.0, 30.0]), 1.0,
                                     [("ghost", 1, np.array([10]), np.array([10]), None, 3.0)])
    assert near[:, 0].tolist() == [0, 0]


# ------------------------------------------------------------------ summaries and driver
def test_calibrate_summary_takes_the_worst_detector_visit():
    units = {(1, 0): {"ratio": 1.002, "ratio_inst": 0.999, "pull": 1.1, "astrom_rms": 4.0,
                      "astrom_robust": 3.0, "astrom_mean": 1.0, "zp": -0.004, "n_stars": 10,
                      "psf_reserved": [0.002, 0.004, 0.001], "n_reserved": 2,
                      "psf_grid": [0.003, 0.002, 0.001], "n_grid": 25, "grid_fit_residual": 1e-5,
                      "psf_degree": 1, "wcs_max": 8.0, "wcs_median": 2.0},
             (1, 1): {"ratio": 0.990, "ratio_inst": 1.001, "pull": 1.5, "astrom_rms": 6.0,
                      "astrom_robust": 5.0, "astrom_mean": 2.0, "zp": 0.002, "n_stars": 8,
                      "psf_grid": [0.02, 0.001, 0.0], "n_grid": 25, "grid_fit_residual": 2e-5,
                      "psf_degree": 0, "wcs_max": 30.0, "wcs_median": 5.0}}
    out = visits._summarise_calibrate(units)
    r = out["psf_flux_ratio"]
    assert r["value"] == pytest.approx(0.010) and r["pass"] is False
    assert r["median"] == pytest.approx(0.006) and r["n_stars"] == 18
    assert out["psf_flux_ratio_true_calibration"]["pass"] is True
    assert out["psf_flux_pull_scatter"]["value"] == 1.5
    assert out["zero_point_minus_truth"]["signed_median"] == pytest.approx(-0.001)
    assert out["psf_moments_at_reserved"]["value"] == pytest.approx(0.004)
    assert out["psf_moments_at_reserved"]["n_detector_visits"] == 1
    assert out["psf_moments_at_grid"]["by_model_degree"]["0"]["max"] == pytest.approx(0.02)
    assert out["wcs_vs_true_wcs_max_mas"]["value"] == 30.0


def test_sky_source_summary():
    rng = np.random.default_rng(11)
    units = {(1, d): {"ratio": 1.0, "n_stars": 3, "sky_psf": rng.normal(0, 10, 400),
                      "sky_psf_err": np.full(400, 10.0), "sky_ap": rng.normal(0, 12, 400)}
             for d in range(3)}
    sky = visits._summarise_photometry(units)["sky_sources"]
    assert sky["n"] == 1200 and sky["consistent_with_zero"]
    assert sky["pull_std"] == pytest.approx(1.0, abs=0.06)
    assert sky["psf_flux_standard_error_njy"] == pytest.approx(10 / np.sqrt(1200), rel=0.06)


def test_guard_and_regroup():
    def boom():
        raise ValueError("bad table")

    out = accuracy_demo._guard("x", boom)
    assert out["value"] is None and out["reason"] == "ValueError: bad table"
    res = accuracy_demo._regroup({"repo": "r", "collection": "c", "deep_coadd": {},
                                  "deep_coadd_cell": {},
                                  "calibrate": {"a": 1, "visit_summary": {"b": 2},
                                                "visit_image": {"c": 3}}})
    assert res["1_calibrate"] == {"a": 1} and res["2_visit_summary"] == {"b": 2}
    assert res["3_visit_image"] == {"c": 3}


# ----------------------------------------------------------------------------- truth
def _tan_header(crval, crpix=(50.5, 50.5), scale_deg=0.2 / 3600) -> str:
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = crval
    w.wcs.crpix = crpix
    w.wcs.cd = [[-scale_deg, 0.0], [0.0, scale_deg]]
    return w.to_header().tostring()


def test_truth_reads_the_tables_and_places_objects(repo):
    from tests.conftest import populate_dimensions

    populate_dimensions(repo, n_visits=1, n_detectors=1)
    repo.register_run("truth")
    repo.register_dataset_type("truth_object", ("instrument",), "ArrowTable")
    for name in ("truth_visit_detector", "truth_psf_grid", "truth_artefact"):
        repo.register_dataset_type(name, ("instrument", "visit"), "ArrowTable")
    ra0, dec0 = 10.1, 0.1
    s = 0.2 / 3600
    repo.put(pa.table({"id": [1, 2], "type": ["star", "galaxy"], "ra": [ra0, ra0 + 500 * s],
                       "dec": [dec0 + 10 * s, dec0], "half_light_radius": [np.nan, 0.5],
                       "visit": pa.array([None, None], pa.int64()), "g_flux": [100.0, 50.0],
                       "g_mag": [26.4, 27.1]}),
             "truth_object", {"instrument": "Cam"}, run="truth")
    repo.put(pa.table({"visit": [0], "detector": [0], "band": ["g"], "psf_beta": [3.5],
                       "wcs": [_tan_header([ra0, dec0])]}),
             "truth_visit_detector", {"instrument": "Cam", "visit": 0}, run="truth")
    g = np.array([10.0, 50.0, 90.0])
    gx, gy = (a.ravel() for a in np.meshgrid(g, g))
    grid = {"visit": np.zeros(9, np.int64), "detector": np.zeros(9, np.int32), "x": gx, "y": gy,
            "ixx": 5 + gx / 100, "iyy": 4 + gy / 100, "ixy": np.full(9, 0.5),
            "ixx_cont": 4.9 + gx / 100, "iyy_cont": 3.9 + gy / 100, "ixy_cont": np.full(9, 0.5)}
    repo.put(pa.table(grid), "truth_psf_grid", {"instrument": "Cam", "visit": 0}, run="truth")
    truth = Truth(repo)
    assert truth.instrument == "Cam" and truth.is_star.tolist() == [True, False]
    idx, x, y = truth.on_detector(0, 0, 100, 100)
    assert idx.tolist() == [0]  # the galaxy is 500 pixels away
    assert x[0] == pytest.approx(49.5, abs=1e-6) and y[0] == pytest.approx(59.5, abs=1e-6)
    assert truth.pixel_scale(0, 0, 50.0, 50.0) == pytest.approx(0.2, rel=1e-4)
    vals = truth.psf_field(0, 0)([30.0], [70.0])
    assert np.allclose(vals[0], [5.3, 4.7, 0.5, 5.2, 4.6, 0.5])
    assert truth.psf_field(5, 0) is None and truth.artefacts is None
    assert truth.hlr.tolist() == [0.0, 0.5] and truth.flux("g")[1] == 50.0


# ----------------------------------------------------------------- coadd-level helpers
def test_input_psf_truth_in_the_detector_frame():
    from astropy.io import fits
    from astropy.wcs import WCS

    g = np.array([0.0, 50.0, 100.0])
    gx, gy = (a.ravel() for a in np.meshgrid(g, g))
    vals = np.column_stack([np.full(9, 5.3), np.full(9, 4.6), np.full(9, 0.4),
                            np.full(9, 5.2), np.full(9, 4.5), np.full(9, 0.4)])
    field = core.PolyField(gx, gy, vals, degree=2)
    wcs = WCS(fits.Header.fromstring(_tan_header([10.0, 0.0])))
    truth = SimpleNamespace(psf_field=lambda v, d: field, wcs=lambda v, d: wcs,
                            visit_detector={(1, 0): {"psf_beta": 3.5}})
    # two contributions to position 0, one (weight 0) to position 1; same frame as the detector
    mean, mix = common.input_psf_truth(truth, [(1, 0, 1.0), (1, 0, 3.0), (1, 0, 0.0)], wcs,
                                       np.array([10.0, 60.0, 30.0]), np.array([20.0, 70.0, 5.0]),
                                       np.array([0, 0, 1]), 2)
    assert np.allclose(mean[0], [5.3, 4.6, 0.4], rtol=1e-6)
    assert np.isnan(mean[1]).all()  # zero total weight
    one = core.mixture_moments(vals[:1, 3:], 3.5, [1.0], [0], 1)
    assert np.allclose(mix[0], one[0], rtol=1e-6)
    err = common.psf_errors(np.array([[5.3 * 1.02, 4.6, 0.4], [1, 1, 0]]), mean, mix)
    assert err["mean"][0] == pytest.approx(0.02, rel=1e-4)
    figs = common.psf_figures(err["mean"], err["mix"], "cell")
    assert figs["psf_moments_vs_mean_of_true_moments"]["n"] == 1
    assert figs["psf_moments_vs_mean_of_true_moments"]["pass"] is False


def test_coadd_photometry_of_isolated_stars():
    from store.psf import GaussianPsf

    rng = np.random.default_rng(5)
    s = 0.2 / 3600
    px = np.array([40.0, 120.3, 200.0, 206.0])
    py = np.array([60.0, 150.7, 100.0, 100.0])
    flux = np.array([2e5, 1e5, 1e5, 3e4])  # the last two are too close to each other
    img = sum(_gaussian((256, 256), x, y, 2.0, f) for x, y, f in zip(px, py, flux, strict=True))
    img = img + rng.normal(0, 1.0, img.shape)
    exp = SimpleNamespace(image=img.astype(np.float32), variance=np.ones(img.shape, np.float32),
                          mask=np.zeros(img.shape, np.int32), xy0=(1000, 2000),
                          psf=GaussianPsf(2.0, size=25))
    truth = SimpleNamespace(objects={"ra": 10.0 + px * s, "dec": py * s}, hlr=np.zeros(4),
                            is_star=np.ones(4, bool), flux=lambda band: flux)
    ratios, flagged, ap = coadd._photometry(exp, truth, "g", np.arange(4), px, py,
                                            np.full(4, 1e4))
    assert ratios.size == 2 and not flagged.any()
    assert np.allclose(ratios, 1.0, atol=3e-3)
    assert np.allclose(ap, 1.0, atol=3e-3)  # a Gaussian of sigma 2 is all within 20 px


def test_stitched_differences_counts_cells():
    grid = SimpleNamespace(size=2, border=1, x0=10, y0=20)
    planes = {p: np.arange(2 * 4 * 4, dtype=float).reshape(2, 4, 4) for p in ("image", "variance")}
    planes["mask"] = np.zeros((2, 4, 4), np.int32)
    c = SimpleNamespace(grid=grid, cells=pa.table({"cell_x": [0, 1], "cell_y": [0, 0]}), **planes)
    st = SimpleNamespace(xy0=(10, 20), image=np.zeros((2, 4)), variance=np.zeros((2, 4)),
                         mask=np.zeros((2, 4), np.int32))
    for p in ("image", "variance"):
        getattr(st, p)[:, 0:2] = planes[p][0, 1:3, 1:3]
        getattr(st, p)[:, 2:4] = planes[p][1, 1:3, 1:3]
    assert cells._stitched_differences(c, st) == 0
    st.image[1, 3] += 1
    assert cells._stitched_differences(c, st) == 1
