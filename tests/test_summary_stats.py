"""Tests of processing.algorithms.summary_stats (algorithms.md 1.5) against hand computations."""

from __future__ import annotations

import io
import math
import statistics

import numpy as np
import pyarrow as pa
import pytest
from astropy import units as u
from astropy.coordinates import AltAz, EarthLocation
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS, Sip
from photutils.aperture import CircularAperture
from scipy.optimize import brentq

from processing.algorithms.background import BackgroundList, BackgroundModel
from processing.algorithms.moments import adaptive_moments
from processing.algorithms.stats import clipped_stats
from processing.algorithms.summary_stats import (
    PSF_STAT_FIELDS,
    SUMMARY_FIELDS,
    ExposureSummaryStats,
    SummaryStatsConfig,
    compute_magnitude_limit,
    compute_summary_stats,
    psf_grid_values,
    update_background_stats,
    update_effective_time_stats,
    update_magnitude_limit_stats,
    update_masked_image_stats,
    update_photo_calib_stats,
    update_psf_stats,
    update_wcs_stats,
)
from store.calib import ApCorrMap, ChebyshevField, PhotoCalib
from store.exposure import DetectorInfo, Exposure, VisitInfo
from store.formats.fits import exposure_to_bytes, read_exposure
from store.geom import Box
from store.masks import bits
from store.psf import GaussianPsf, PixelBasisPsf

#: 1 / Phi^-1(3/4): the "normal" scale of the median absolute deviation.
MAD_SCALE = 1.0 / statistics.NormalDist().inv_cdf(0.75)


def _gauss(sigma: float, half: int = 20) -> np.ndarray:
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    g = np.exp(-0.5 * (xx**2 + yy**2) / sigma**2)
    return g / g.sum()


def _tan_sip_wcs(crpix=(150.0, 120.0), sip=True) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"] if sip else ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [53.1, -28.1]
    w.wcs.crpix = [crpix[0] + 1, crpix[1] + 1]  # FITS is 1-based
    scale = 0.2 / 3600
    rot = np.radians(23.0)
    w.wcs.cd = scale * np.array([[-np.cos(rot), np.sin(rot)], [np.sin(rot), np.cos(rot)]])
    if sip:
        a = np.zeros((4, 4))
        b = np.zeros((4, 4))
        a[2, 0], a[1, 1], a[0, 3] = 2e-6, -1e-6, 3e-10
        b[0, 2], b[2, 1] = 1.5e-6, -2e-10
        w.sip = Sip(a, b, None, None, w.wcs.crpix)
    return w


# ----------------------------------------------------------------------------- A: PSF model


@pytest.mark.parametrize("sigma, q, theta", [(2.3, 1.0, 0.0), (2.5, 0.7, 0.4)])
def test_gaussian_psf_moments_sigma_and_area_are_analytic(sigma, q, theta):
    psf = GaussianPsf(sigma, axis_ratio=q, theta=theta)
    bbox = Box(0, 0, 500, 400)
    s = ExposureSummaryStats()
    update_psf_stats(s, psf, bbox, image_mask=np.zeros(bbox.shape, np.int32))
    ixx, iyy, ixy = psf.moments()
    det = ixx * iyy - ixy**2
    assert s.psfIxx == pytest.approx(ixx, rel=1e-5)
    assert s.psfIyy == pytest.approx(iyy, rel=1e-5)
    assert s.psfIxy == pytest.approx(ixy, abs=1e-5 * ixx)
    assert s.psfSigma == pytest.approx(det**0.25, rel=1e-5)
    # Effective area of a Gaussian: 4 pi sigma_a sigma_b.
    assert s.psfArea == pytest.approx(4 * np.pi * math.sqrt(det), rel=1e-5)
    # A position-independent PSF has no spread over the grid.
    assert s.psfTraceRadiusDelta == 0.0
    assert s.psfApFluxDelta == 0.0
    assert math.isnan(s.psfApCorrSigmaScaledDelta)  # no ap-corr map given
    assert s.nPsfStar == 0 and math.isnan(s.maxDistToNearestPsf)  # no star table


def _gradient_psf(sig_a, sig_b, x_max, y_max):
    """Degree-1 PixelBasisPsf: exactly G(sig_a) at x = 0 and G(sig_b) at x = x_max."""
    ga, gb = _gauss(sig_a), _gauss(sig_b)
    basis = np.stack([(ga + gb) / 2, (gb - ga) / 2, np.zeros_like(ga)])
    return PixelBasisPsf(basis, 1, (0.0, 0.0, float(x_max), float(y_max)))


def _exact_ap_flux(kernel, r):
    half = kernel.shape[0] // 2
    return float(CircularAperture((half, half), r).do_photometry(kernel, method="exact")[0][0])


def test_trace_radius_and_ap_flux_deltas_for_a_linear_size_gradient():
    sig_a, sig_b = 1.8, 2.6
    # Grid x = 0, 96, ..., 960; the polynomial spans x in [0, 864]; x = 960 would be an
    # extrapolation (a broader kernel) and is masked BAD, so it must not count.
    bbox = Box(0, 0, 961, 500)
    psf = _gradient_psf(sig_a, sig_b, 864, 480)
    mask = np.zeros(bbox.shape, np.int32)
    mask[:, 900:] = bits("BAD")
    s = ExposureSummaryStats()
    update_psf_stats(s, psf, bbox, image_mask=mask)
    assert s.psfTraceRadiusDelta == pytest.approx(sig_b - sig_a, rel=1e-5)
    r_ap = max(2.0, 3.0 * s.psfSigma)
    expected_ap = (_exact_ap_flux(psf.kernel_image(0, 0), r_ap)
                   - _exact_ap_flux(psf.kernel_image(864, 0), r_ap))
    assert s.psfApFluxDelta == pytest.approx(expected_ap, rel=1e-6)
    # Without the mask the extrapolated column widens the spread: the mask mattered.
    unmasked = ExposureSummaryStats()
    update_psf_stats(unmasked, psf, bbox, image_mask=np.zeros(bbox.shape, np.int32))
    assert unmasked.psfTraceRadiusDelta > s.psfTraceRadiusDelta + 0.05


def test_batched_grid_values_equal_point_by_point_evaluation():
    rng = np.random.default_rng(8)
    basis = rng.normal(0, 2e-4, (6, 41, 41))
    basis[0] += _gauss(2.4)
    basis[3] += 0.2 * (_gauss(2.8) - _gauss(2.4))
    psf = PixelBasisPsf(basis, 2, (0.0, 0.0, 4071.0, 3999.0))
    x, y = rng.uniform(0, 4071, 700), rng.uniform(0, 3999, 700)  # > one batch of 512
    tr, ap = psf_grid_values(psf, x, y, 6.5, initial=(5.8, 5.8, 0.0))
    for i in (0, 1, 511, 512, 699):
        k = psf.kernel_image(x[i], y[i])
        m = adaptive_moments(k[None], 20, 20)
        assert tr[i] == pytest.approx(math.sqrt((m.xx[0] + m.yy[0]) / 2), rel=1e-6)
        assert ap[i] == pytest.approx(_exact_ap_flux(k, 6.5), rel=1e-9)


def test_ap_corr_sigma_scaled_delta():
    bbox = Box(0, 0, 961, 481)  # grid x, y = 0 ... 960, 0 ... 480
    psf = GaussianPsf(2.0)
    mask = np.zeros(bbox.shape, np.int32)
    # 1 + 0.02 xn, with xn = -1 ... 1 across the grid columns.
    field = ChebyshevField(np.array([[1.0, 0.02]]), (0.0, 0.0, 960.0, 480.0))
    s = ExposureSummaryStats()
    update_psf_stats(s, psf, bbox, image_mask=mask,
                     ap_corr_map=ApCorrMap({"base_PsfFlux_instFlux": field}))
    assert s.psfApCorrSigmaScaledDelta == pytest.approx(0.04 / s.psfSigma, rel=1e-9)
    # Masked grid points do not count: keep only x <= 480 (xn <= 0).
    mask[:, 481:] = bits("SAT")
    update_psf_stats(s, psf, bbox, image_mask=mask,
                     ap_corr_map=ApCorrMap({"base_PsfFlux_instFlux": field}))
    assert s.psfApCorrSigmaScaledDelta == pytest.approx(0.02 / s.psfSigma, rel=1e-9)
    # Wrong field name, or a non-finite field: NaN.
    update_psf_stats(s, psf, bbox, image_mask=mask, ap_corr_map=ApCorrMap({"other": field}))
    assert math.isnan(s.psfApCorrSigmaScaledDelta)
    nan_field = ChebyshevField(np.array([[np.nan]]), (0.0, 0.0, 960.0, 480.0))
    update_psf_stats(s, psf, bbox, image_mask=mask,
                     ap_corr_map=ApCorrMap({"base_PsfFlux_instFlux": nan_field}))
    assert math.isnan(s.psfApCorrSigmaScaledDelta)


# ------------------------------------------------------------------------ A: PSF-star table


def _star_table(seed=4, n=80):
    rng = np.random.default_rng(seed)
    pxx = rng.uniform(4.5, 6.5, n)
    pyy = rng.uniform(4.5, 6.5, n)
    pxy = rng.uniform(-0.4, 0.4, n)
    cols = {
        "calib_psf_used": rng.random(n) < 0.85,
        "slot_Shape_flag": rng.random(n) < 0.05,
        "slot_PsfFlux_flag": rng.random(n) < 0.05,
        "slot_PsfFlux_instFlux": rng.uniform(1e3, 1e5, n),
        "slot_Shape_xx": pxx * rng.normal(1.02, 0.03, n),
        "slot_Shape_yy": pyy * rng.normal(1.01, 0.03, n),
        "slot_Shape_xy": pxy + rng.normal(0, 0.05, n),
        "slot_PsfShape_xx": pxx, "slot_PsfShape_yy": pyy, "slot_PsfShape_xy": pxy,
        "slot_Centroid_x": rng.uniform(0, 200, n), "slot_Centroid_y": rng.uniform(0, 150, n),
    }
    # S/N from 20 to 2000: some below 50 and above 1000 are cut.
    snr = 10 ** rng.uniform(np.log10(20), np.log10(2000), n)
    cols["slot_PsfFlux_instFluxErr"] = cols["slot_PsfFlux_instFlux"] / snr
    for order in ("03", "12", "21", "30", "04", "13", "22", "31", "40"):
        values = rng.normal(0.0, 0.01, n)
        values[rng.random(n) < 0.1] = np.nan
        cols[f"ext_shapeHSM_HigherOrderMomentsSource_{order}"] = values
    return cols


def _brute_force_star_stats(cols):
    n = len(cols["calib_psf_used"])
    rows = []
    for i in range(n):
        snr = cols["slot_PsfFlux_instFlux"][i] / cols["slot_PsfFlux_instFluxErr"][i]
        if (cols["calib_psf_used"][i] and not cols["slot_Shape_flag"][i]
                and not cols["slot_PsfFlux_flag"][i] and 50 < snr < 1000):
            rows.append(i)
    de1, de2, dsize, size, e, eun = [], [], [], [], [], []
    for i in rows:
        sxx, syy, sxy = (cols[f"slot_Shape_{c}"][i] for c in ("xx", "yy", "xy"))
        pxx, pyy, pxy = (cols[f"slot_PsfShape_{c}"][i] for c in ("xx", "yy", "xy"))
        de1.append((sxx - syy) / (sxx + syy) - (pxx - pyy) / (pxx + pyy))
        de2.append(2 * sxy / (sxx + syy) - 2 * pxy / (pxx + pyy))
        size.append(math.sqrt((sxx + syy) / 2))
        dsize.append(size[-1] - math.sqrt((pxx + pyy) / 2))
        e.append(math.hypot((sxx - syy) / (sxx + syy), 2 * sxy / (sxx + syy)))
        eun.append(math.hypot(sxx - syy, 2 * sxy))

    def mad(v):
        med = statistics.median(v)
        return MAD_SCALE * statistics.median([abs(a - med) for a in v])

    def hsm(fn):
        if "ext_shapeHSM_HigherOrderMomentsSource_03" not in cols:
            return float("nan")
        m = {o: cols[f"ext_shapeHSM_HigherOrderMomentsSource_{o}"] for o in
             ("03", "12", "21", "30", "04", "13", "22", "31", "40")}
        vals = [fn({k: v[i] for k, v in m.items()}) for i in rows]
        return statistics.median([v for v in vals if not math.isnan(v)])

    return rows, {
        "psfStarDeltaE1Median": statistics.median(de1), "psfStarDeltaE1Scatter": mad(de1),
        "psfStarDeltaE2Median": statistics.median(de2), "psfStarDeltaE2Scatter": mad(de2),
        "psfStarDeltaSizeMedian": statistics.median(dsize),
        "psfStarDeltaSizeScatter": mad(dsize),
        "psfStarScaledDeltaSizeScatter": mad(dsize) / statistics.median(size),
        "starEMedian": statistics.median(e), "starUnNormalizedEMedian": statistics.median(eun),
        "starComa1Median": hsm(lambda m: m["30"] + m["12"]),
        "starComa2Median": hsm(lambda m: m["21"] + m["03"]),
        "starTrefoil1Median": hsm(lambda m: m["30"] - 3 * m["12"]),
        "starTrefoil2Median": hsm(lambda m: 3 * m["21"] - m["03"]),
        "starKurtosisMedian": hsm(lambda m: m["40"] + 2 * m["22"] + m["04"]),
        "starE41Median": hsm(lambda m: m["40"] - m["04"]),
        "starE42Median": hsm(lambda m: 2 * (m["31"] + m["13"])),
    }


def test_psf_star_statistics_match_brute_force():
    cols = _star_table()
    rows, expected = _brute_force_star_stats(cols)
    assert 20 < len(rows) < 70  # the cuts removed some stars, kept many
    bbox = Box(0, 0, 200, 150)
    mask = np.zeros(bbox.shape, np.int32)
    mask[100:, 150:] = bits("EDGE")
    s = ExposureSummaryStats()
    update_psf_stats(s, GaussianPsf(2.0), bbox, pa.table(cols), mask)
    assert s.nPsfStar == int(np.sum(cols["calib_psf_used"]))
    for name, value in expected.items():
        assert getattr(s, name) == pytest.approx(value, rel=1e-12, abs=1e-15), name
    # maxDistToNearestPsf: every grid point (i*8, j*8), distance to the nearest selected
    # star, masked points counting 0.
    best = 0.0
    for j in range(0, 150, 8):
        for i in range(0, 200, 8):
            if mask[j, i]:
                continue
            d = min(math.hypot(i - cols["slot_Centroid_x"][k], j - cols["slot_Centroid_y"][k])
                    for k in rows)
            best = max(best, d)
    assert s.maxDistToNearestPsf == pytest.approx(best, rel=1e-12)


def test_star_table_as_polars_with_nulls_and_without_optional_columns():
    import polars as pl

    cols = _star_table(seed=5)
    rows, expected = _brute_force_star_stats(cols)
    for order in ("03", "12", "21", "30", "04", "13", "22", "31", "40"):
        del cols[f"ext_shapeHSM_HigherOrderMomentsSource_{order}"]
    table = pa.table(cols)
    # A null flux is not selected (S/N is NaN); null flags read as False.
    flux = table.column("slot_PsfFlux_instFlux").to_pylist()
    extra = rows[0]
    flux[extra] = None
    table = table.set_column(table.schema.get_field_index("slot_PsfFlux_instFlux"),
                             "slot_PsfFlux_instFlux", pa.array(flux, pa.float64()))
    shape_flag = table.column("slot_Shape_flag").to_pylist()
    shape_flag[rows[1]] = None
    table = table.set_column(table.schema.get_field_index("slot_Shape_flag"), "slot_Shape_flag",
                             pa.array(shape_flag, pa.bool_()))
    s = ExposureSummaryStats()
    update_psf_stats(s, GaussianPsf(2.0), Box(0, 0, 200, 150), pl.from_arrow(table))
    cols["calib_psf_used"] = cols["calib_psf_used"].copy()
    cols["calib_psf_used"][extra] = False  # what the null flux amounts to
    _, expected = _brute_force_star_stats(cols)
    assert s.psfStarDeltaE1Median == pytest.approx(expected["psfStarDeltaE1Median"], rel=1e-12)
    assert s.starEMedian == pytest.approx(expected["starEMedian"], rel=1e-12)
    for name in ("starComa1Median", "starKurtosisMedian", "starE42Median"):
        assert math.isnan(getattr(s, name))
    assert math.isnan(s.maxDistToNearestPsf)  # no mask given


def test_missing_required_column_is_named():
    cols = _star_table()
    del cols["slot_Shape_xx"]
    with pytest.raises(KeyError, match="slot_Shape_xx"):
        update_psf_stats(ExposureSummaryStats(), GaussianPsf(2.0), Box(0, 0, 10, 10),
                         pa.table(cols))


def test_no_selected_star_leaves_star_stats_nan_but_counts_psf_stars():
    cols = _star_table()
    cols["slot_PsfFlux_instFluxErr"] = cols["slot_PsfFlux_instFlux"] / 10.0  # S/N 10 < 50
    s = ExposureSummaryStats()
    update_psf_stats(s, GaussianPsf(2.0), Box(0, 0, 200, 150), pa.table(cols),
                     np.zeros((150, 200), np.int32))
    assert s.nPsfStar == int(np.sum(cols["calib_psf_used"]))
    assert math.isnan(s.psfStarDeltaE1Median) and math.isnan(s.maxDistToNearestPsf)
    assert s.psfSigma == pytest.approx(2.0, rel=1e-5)


def test_reset_semantics_psf_none():
    cols = _star_table()
    s = ExposureSummaryStats(zeroPoint=31.0)
    bbox = Box(0, 0, 200, 150)
    update_psf_stats(s, GaussianPsf(2.0), bbox, pa.table(cols), np.zeros(bbox.shape, np.int32))
    assert s.nPsfStar > 0 and np.isfinite(s.psfStarDeltaE1Median)
    update_psf_stats(s, None, bbox, pa.table(cols), np.zeros(bbox.shape, np.int32))
    assert s.nPsfStar == 0
    assert all(math.isnan(getattr(s, n)) for n in PSF_STAT_FIELDS if n != "nPsfStar")
    assert s.zeroPoint == 31.0  # other groups untouched


# ----------------------------------------------------------------------------------- B: WCS


def _pixel_scale_by_separations(wcs, x, y, h=0.5):
    """Sky area of a pixel from astropy separations and position angles (arcsec)."""
    pts = wcs.pixel_to_world([x - h, x + h, x, x], [y, y, y - h, y + h])
    ax = pts[0].separation(pts[1]).arcsec / (2 * h)
    ay = pts[2].separation(pts[3]).arcsec / (2 * h)
    pa_x = pts[0].position_angle(pts[1]).rad
    pa_y = pts[2].position_angle(pts[3]).rad
    return math.sqrt(ax * ay * abs(math.sin(pa_x - pa_y)))


def test_wcs_stats_against_astropy():
    wcs = _tan_sip_wcs()
    bbox = Box(0, 0, 400, 300)
    vi = VisitInfo(mjd=60640.3, observatory=(-70.749417, -30.244639, 2663.0))
    s = ExposureSummaryStats()
    update_wcs_stats(s, wcs, bbox, vi)
    xs = [-0.5, 399.5, 399.5, -0.5]
    ys = [-0.5, -0.5, 299.5, 299.5]
    ra_c, dec_c = wcs.all_pix2world(xs, ys, 0)
    np.testing.assert_allclose(s.raCorners, ra_c, rtol=0, atol=1e-12)
    np.testing.assert_allclose(s.decCorners, dec_c, rtol=0, atol=1e-12)
    centre = wcs.pixel_to_world(199.5, 149.5)
    assert s.ra == pytest.approx(centre.ra.deg, abs=1e-12)
    assert s.dec == pytest.approx(centre.dec.deg, abs=1e-12)
    # The SIP terms make the scale differ from 0.2"/px at the centre, by ~1e-4.
    assert s.pixelScale == pytest.approx(_pixel_scale_by_separations(wcs, 199.5, 149.5),
                                         rel=1e-7)
    assert abs(s.pixelScale - 0.2) > 1e-5
    # Zenith distance: an independent astropy AltAz computation at the centre.
    loc = EarthLocation.from_geodetic(-70.749417 * u.deg, -30.244639 * u.deg, 2663.0 * u.m)
    altaz = centre.transform_to(AltAz(obstime=Time(60640.3, format="mjd", scale="tai"),
                                      location=loc))
    assert s.zenithDistance == pytest.approx(90.0 - altaz.alt.deg, abs=1e-8)


def test_pixel_scale_of_a_plain_tan_wcs_at_its_reference_pixel():
    wcs = _tan_sip_wcs(crpix=(199.5, 149.5), sip=False)
    s = ExposureSummaryStats()
    update_wcs_stats(s, wcs, Box(0, 0, 400, 300), None)
    assert s.pixelScale == pytest.approx(math.sqrt(abs(np.linalg.det(wcs.wcs.cd))) * 3600,
                                         rel=1e-9)
    assert math.isnan(s.zenithDistance)  # no visit info


def test_zenith_distance_at_transit_is_dec_minus_latitude():
    lon, lat = -70.749417, -30.244639
    t = Time(60640.3, format="mjd", scale="tai")
    lst = t.sidereal_time("apparent", longitude=lon * u.deg).deg
    wcs = _tan_sip_wcs(sip=False)
    wcs.wcs.crval = [lst, -10.0]  # the reference pixel transits at t
    s = ExposureSummaryStats()
    update_wcs_stats(s, wcs, Box(0, 0, 301, 241), VisitInfo(mjd=60640.3))
    # Precession since J2000 and aberration move the apparent position by < 0.4 deg.
    assert s.zenithDistance == pytest.approx(abs(-10.0 - lat), abs=0.4)


def test_wcs_none_and_invalid_date_reset():
    s = ExposureSummaryStats(ra=1.0, pixelScale=0.2, raCorners=(1, 2, 3, 4))
    update_wcs_stats(s, None, Box(0, 0, 10, 10), VisitInfo(mjd=60000.0))
    assert math.isnan(s.ra) and math.isnan(s.pixelScale)
    assert all(math.isnan(v) for v in s.raCorners + s.decCorners)
    update_wcs_stats(s, _tan_sip_wcs(), Box(0, 0, 10, 10), VisitInfo())  # mjd NaN
    assert np.isfinite(s.ra) and math.isnan(s.zenithDistance)


# ------------------------------------------------------------------- C, D, E: calibrations


def test_zero_point_from_photo_calib():
    s = ExposureSummaryStats()
    update_photo_calib_stats(s, PhotoCalib(0.0573))
    assert s.zeroPoint == pytest.approx(2.5 * math.log10(3631e9 / 0.0573), rel=1e-14)
    update_photo_calib_stats(s, None)
    assert math.isnan(s.zeroPoint)


def _layer(stats):
    stats = np.asarray(stats, dtype=np.float32)
    ny, nx = stats.shape
    return BackgroundModel(stats, np.ones(stats.shape, np.int32), np.arange(nx) * 128.0 + 64,
                           np.arange(ny) * 128.0 + 64, 128, 128, (ny * 128, nx * 128))


def test_sky_background_is_sum_of_layer_medians():
    bg = BackgroundList([_layer([[1, 2, 3], [4, np.nan, 100]]), _layer([[0.5, 0.25]])])
    s = ExposureSummaryStats()
    update_background_stats(s, bg)
    assert s.skyBg == pytest.approx(3.0 + 0.375, rel=1e-7)  # median(1,2,3,4,100) + 0.375
    update_background_stats(s, None)
    assert math.isnan(s.skyBg)


def test_sky_noise_and_mean_variance_are_clipped_statistics():
    rng = np.random.default_rng(11)
    image = rng.normal(0.0, 7.0, (300, 400)).astype(np.float32)
    variance = np.full(image.shape, 49.0, np.float32) + rng.normal(0, 0.5, image.shape)
    mask = np.zeros(image.shape, np.int32)
    image[:20] = 1e5  # excluded by NO_DATA
    mask[:20] = bits("NO_DATA")
    image[50:60, :] += 3e3  # SUSPECT: excluded
    mask[50:60, :] |= bits("SUSPECT")
    image[100, :40] = 5e3  # unmasked outliers: clipped
    variance[200:220, :] = 1e6
    s = ExposureSummaryStats()
    update_masked_image_stats(s, image, mask, variance)
    kw = {"n_sigma": 3.0, "n_iter": 2, "mask": mask, "and_mask": bits("NO_DATA", "SUSPECT")}
    assert s.skyNoise == clipped_stats(image, **kw).stdev
    assert s.meanVar == clipped_stats(variance, **kw).mean
    assert s.skyNoise == pytest.approx(7.0, rel=0.02)
    assert s.meanVar == pytest.approx(49.0, rel=0.002)
    update_masked_image_stats(s, None)
    assert math.isnan(s.skyNoise) and math.isnan(s.meanVar)


# ------------------------------------------------------------------------- F, G: depth


def _model_snr(mag, zp, psf_area, sky, read_noise_adu, gain):
    counts = 10 ** (-0.4 * (mag - zp))
    return counts / math.sqrt(counts / gain + (sky / gain + read_noise_adu**2) * psf_area)


def test_magnitude_limit_solves_the_snr_model():
    s = ExposureSummaryStats(psfArea=35.2, skyBg=650.0, zeroPoint=31.4)
    det = DetectorInfo(1, gain=1.6, read_noise=8.0)
    update_magnitude_limit_stats(s, det)
    assert _model_snr(s.magLim, 31.4, 35.2, 650.0, 8.0 / 1.6, 1.6) == pytest.approx(5.0, abs=1e-6)
    root = brentq(lambda m: _model_snr(m, 31.4, 35.2, 650.0, 5.0, 1.6) - 5.0, 15.0, 35.0,
                  xtol=1e-12)
    assert s.magLim == pytest.approx(root, abs=1e-9)
    # Images in electrons: gain 1, read noise in electrons.
    update_magnitude_limit_stats(s, det, metadata={"LSST ISR UNITS": "electron"})
    assert _model_snr(s.magLim, 31.4, 35.2, 650.0, 8.0, 1.0) == pytest.approx(5.0, abs=1e-6)
    # S/N 10 at the configured magLimSnr.
    update_magnitude_limit_stats(s, det, SummaryStatsConfig(mag_lim_snr=10.0))
    assert _model_snr(s.magLim, 31.4, 35.2, 650.0, 5.0, 1.6) == pytest.approx(10.0, abs=1e-6)


def test_magnitude_limit_missing_electronics():
    s = ExposureSummaryStats(psfArea=35.2, skyBg=650.0, zeroPoint=31.4)
    update_magnitude_limit_stats(s, DetectorInfo(1, gain=1.6))  # read noise NaN -> 0
    assert s.magLim == pytest.approx(compute_magnitude_limit(35.2, 650.0, 31.4, 0.0, 1.6, 5.0))
    update_magnitude_limit_stats(s, DetectorInfo(1, read_noise=8.0))  # gain NaN
    assert math.isnan(s.magLim)
    update_magnitude_limit_stats(s, None)
    assert math.isnan(s.magLim)


def test_effective_time_factors_by_hand():
    config = SummaryStatsConfig(
        fiducial_psf_sigma={"r": 1.6}, fiducial_sky_background={"r": 20.0},
        fiducial_zero_point={"r": 27.8}, fiducial_mag_lim={"r": 24.5},
        fiducial_exp_time={"r": 30.0})
    s = ExposureSummaryStats(psfSigma=2.0, zeroPoint=31.2, skyBg=750.0, magLim=24.3)
    update_effective_time_stats(s, "r", 30.0, config)
    assert s.effTimePsfSigmaScale == pytest.approx((2.0 / 1.6) ** -2, rel=1e-14)
    zp_1s = 31.2 - 2.5 * math.log10(30.0)
    assert s.effTimeZeroPointScale == pytest.approx(10 ** (-0.8 * (27.8 - zp_1s)), rel=1e-13)
    assert s.effTimeSkyBgScale == pytest.approx(20.0 / (750.0 / 30.0), rel=1e-14)
    assert s.effTime == pytest.approx(10 ** (0.8 * (24.3 - 24.5)) * 30.0, rel=1e-13)
    # Transparency is capped; a band without fiducials or no band gives NaN.
    update_effective_time_stats(s, "r", 30.0, SummaryStatsConfig(
        fiducial_zero_point={"r": 27.0}, max_effective_transparency=1.0))
    assert s.effTimeZeroPointScale == 1.0
    update_effective_time_stats(s, "N921", 30.0, config)
    assert all(math.isnan(getattr(s, n)) for n in ("effTime", "effTimePsfSigmaScale",
                                                   "effTimeSkyBgScale", "effTimeZeroPointScale"))
    s.magLim = 24.0
    update_effective_time_stats(s, None, 30.0, config)
    assert math.isnan(s.effTime)


def test_default_fiducials_give_30s_for_design_conditions():
    # A design-condition r visit: fiducial seeing, sky and zero point; 30 s.
    c = SummaryStatsConfig()
    s = ExposureSummaryStats(psfSigma=1.56, skyBg=19.94 * 30, zeroPoint=27.81 + 2.5 * np.log10(30),
                             psfArea=4 * np.pi * 1.56**2)
    update_magnitude_limit_stats(s, DetectorInfo(0, gain=1.6, read_noise=8.8), c)
    update_effective_time_stats(s, "r", 30.0, c)
    assert s.effTimePsfSigmaScale == pytest.approx(1.0)
    assert s.effTimeSkyBgScale == pytest.approx(1.0)
    assert s.effTimeZeroPointScale == pytest.approx(1.0)
    assert s.magLim == pytest.approx(24.52, abs=0.15)
    assert 25.0 < s.effTime < 45.0


# ------------------------------------------------------------------ record, config, driver


def _filled_summary(seed=0) -> ExposureSummaryStats:
    rng = np.random.default_rng(seed)
    values = {}
    for name in SUMMARY_FIELDS:
        if name in ("raCorners", "decCorners"):
            values[name] = tuple(rng.uniform(-80, 80, 4))
        elif name in ("version", "nPsfStar"):
            values[name] = int(rng.integers(0, 500))
        else:
            values[name] = float(rng.normal(0, 10) * 10.0 ** rng.integers(-6, 6))
    values["starE41Median"] = float("nan")
    return ExposureSummaryStats(**values)


def test_dict_and_header_round_trips():
    s = _filled_summary()
    assert ExposureSummaryStats.from_dict(s.to_dict()) == s
    assert ExposureSummaryStats.from_dict({"psfSigma": 2.0, "foo": 1}).psfSigma == 2.0
    header = fits.Header()
    for card in s.to_header_cards():
        header.append(card)
    assert "HIERARCH SUMMARY PSFSIGMA" in header
    assert "SUMMARY STARE41MEDIAN" not in header  # NaN: no card
    buf = io.BytesIO()
    fits.PrimaryHDU(header=header).writeto(buf)
    buf.seek(0)
    back = ExposureSummaryStats.from_header(fits.getheader(buf))
    for name in SUMMARY_FIELDS:
        np.testing.assert_allclose(getattr(back, name), getattr(s, name), rtol=1e-13, err_msg=name)
    assert isinstance(back.nPsfStar, int) and back.nPsfStar == s.nPsfStar
    assert ExposureSummaryStats.from_header({}) == ExposureSummaryStats()


def test_summary_in_exposure_metadata_survives_the_exposure_file():
    s = _filled_summary(1)
    metadata = {key.removeprefix("HIERARCH "): value for key, value, _ in s.to_header_cards()}
    exposure = Exposure(np.zeros((5, 5), np.float32), metadata=metadata)
    buf = io.BytesIO(exposure_to_bytes(exposure))
    back = ExposureSummaryStats.from_header(read_exposure(buf).metadata)
    np.testing.assert_allclose(back.psfSigma, s.psfSigma, rtol=1e-13)
    np.testing.assert_allclose(back.decCorners, s.decCorners, rtol=1e-13)
    assert math.isnan(back.starE41Median)


def test_config_validation_names_the_bad_value():
    with pytest.raises(KeyError, match="NOPE"):
        SummaryStatsConfig(bad_mask_planes=("NOPE",))
    with pytest.raises(ValueError, match="star_snr_min"):
        SummaryStatsConfig(star_snr_min=2000.0)
    with pytest.raises(ValueError, match="psf_grid_sampling=0"):
        SummaryStatsConfig(psf_grid_sampling=0)
    with pytest.raises(ValueError, match="raCorners needs 4"):
        ExposureSummaryStats(raCorners=(1.0, 2.0))


def test_compute_summary_stats_runs_every_group():
    rng = np.random.default_rng(3)
    bbox = Box(0, 0, 300, 240)
    image = rng.normal(0, 5.0, bbox.shape).astype(np.float32)
    variance = np.full(bbox.shape, 25.0, np.float32)
    vi = VisitInfo(visit=42, band="r", exposure_time=30.0, mjd=60640.3)
    det = DetectorInfo(5, gain=1.5, read_noise=7.0)
    psf = GaussianPsf(2.2)
    pc = PhotoCalib.from_zero_point(31.3)
    apc = ApCorrMap({"base_PsfFlux_instFlux": ChebyshevField(np.array([[1.0, 0.01]]),
                                                             (0, 0, 299, 239))})
    exposure = Exposure(image, variance=variance, wcs=_tan_sip_wcs(), psf=psf, photo_calib=pc,
                        ap_corr_map=apc, visit_info=vi, detector=det,
                        metadata={"SFM_ASTROM_OFFSET_MEAN": 0.031, "SFM_ASTROM_OFFSET_STD": 0.012})
    stars = _star_table()
    bg = BackgroundList([_layer([[600.0, 610.0], [620.0, 630.0]])])
    s = compute_summary_stats(exposure, pa.table(stars), bg)
    expected = ExposureSummaryStats(expTime=30.0, astromOffsetMean=0.031, astromOffsetStd=0.012)
    update_psf_stats(expected, psf, bbox, pa.table(stars), exposure.mask, apc)
    update_wcs_stats(expected, exposure.wcs, bbox, vi)
    update_photo_calib_stats(expected, pc)
    update_background_stats(expected, bg)
    update_masked_image_stats(expected, image, exposure.mask, variance)
    update_magnitude_limit_stats(expected, det)
    update_effective_time_stats(expected, "r", 30.0)
    assert s == expected
    # Every statistic this exposure allows is finite.
    finite_expected = set(SUMMARY_FIELDS) - {
        "starComa1Median", "starComa2Median", "starTrefoil1Median", "starTrefoil2Median",
        "starKurtosisMedian", "starE41Median", "starE42Median", "psfAdaptiveThresholdValue",
        "psfAdaptiveIncludeThresholdMultiplier", "refCatSourceDensity"}
    for name in finite_expected:
        assert np.all(np.isfinite(getattr(s, name))), name
    assert s.zeroPoint == pytest.approx(31.3) and s.skyBg == pytest.approx(615.0)
    # An empty exposure: everything NaN except what the pixels give.
    bare = compute_summary_stats(Exposure(image))
    assert math.isnan(bare.psfSigma) and math.isnan(bare.magLim) and bare.nPsfStar == 0
    assert bare.skyNoise == pytest.approx(5.0, rel=0.03)
