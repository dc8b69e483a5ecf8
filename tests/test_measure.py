"""measure_sources on simulated fields with known truth."""

from __future__ import annotations

import numpy as np
import pytest

from processing.algorithms.measure import MeasurementConfig, aperture_column, measure_sources
from processing.algorithms.moments import psf_moments
from store.formats.parquet import column_units
from store.masks import bits
from store.psf import PixelBasisPsf
from tests._moffat_stars import enclosed_fraction, moffat_kernel, render_stars
from tests._star_scenes import sersic_image

FWHM, BETA, SKY = 4.5, 3.0, 40.0
SHAPE = (480, 560)

#: dp1_Source columns the measurement must produce under exactly these names.
DP1_NAMES = [
    "x", "y", "xErr", "yErr", "ixx", "iyy", "ixy", "ixxPSF", "iyyPSF", "ixyPSF",
    "psfFlux_area", "psfFlux_flag", "psfFlux_flag_edge", "psfFlux_flag_noGoodPixels",
    "apFlux_12_0_instFlux", "apFlux_12_0_instFluxErr", "apFlux_12_0_flag",
    "apFlux_12_0_flag_apertureTruncated", "apFlux_17_0_instFlux", "apFlux_35_0_instFlux",
    "apFlux_50_0_instFlux", "gaussianFlux_flag", "localBackground_instFlux",
    "localBackground_instFluxErr", "localBackground_flag", "localBackground_flag_noGoodPixels",
    "footprintArea_value", "variance_value", "variance_flag", "variance_flag_emptyFootprint",
    "extendedness", "extendedness_flag", "sizeExtendedness", "sizeExtendedness_flag",
    "centroid_flag", "centroid_flag_almostNoSecondDerivative", "centroid_flag_badError",
    "centroid_flag_edge", "centroid_flag_noSecondDerivative", "centroid_flag_notAtMaximum",
    "centroid_flag_resetToPeak", "pixelFlags_bad", "pixelFlags_cr", "pixelFlags_crCenter",
    "pixelFlags_edge", "pixelFlags_interpolated", "pixelFlags_interpolatedCenter",
    "pixelFlags_nodata", "pixelFlags_offimage", "pixelFlags_saturated",
    "pixelFlags_saturatedCenter", "pixelFlags_suspect", "pixelFlags_suspectCenter",
]


def _psf():
    kernel = moffat_kernel(FWHM, BETA, size=41)
    return PixelBasisPsf(kernel[None], 0, (0.0, 0.0, SHAPE[1] - 1.0, SHAPE[0] - 1.0)), kernel.sum()


def _scene(rng):
    """Isolated stars on a grid, a galaxy, a blended pair, a saturated star, an edge star."""
    gx, gy = np.meshgrid(np.arange(50, 500, 60.0), np.arange(50, 300, 60.0))
    x = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    y = gy.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    flux = 10 ** rng.uniform(3.7, 5.0, x.size)
    pair_x, pair_y = np.array([150.3, 150.3 + 3 * FWHM]), np.array([400.4, 401.1])
    pair_f = np.array([3e4, 8e3])
    extra_x, extra_y, extra_f = np.array([380.2, 2.4]), np.array([400.3, 200.6]), \
        np.array([5e4, 2e4])
    stars_x = np.r_[x, pair_x, extra_x]
    stars_y = np.r_[y, pair_y, extra_y]
    stars_f = np.r_[flux, pair_f, extra_f]
    image = render_stars(SHAPE, stars_x, stars_y, stars_f, FWHM, BETA, half=40)
    galaxy = sersic_image(SHAPE, 425.3, 400.6, 4e4, 6.0, n=1.0, axis_ratio=0.6, theta=0.5,
                          oversample=3)
    return image + galaxy, stars_x, stars_y, stars_f, x.size


@pytest.fixture(scope="module")
def field():
    rng = np.random.default_rng(42)
    truth, sx, sy, sf, n_grid = _scene(rng)
    var = SKY + truth
    image = truth + rng.normal(size=SHAPE) * np.sqrt(var)
    mask = np.zeros(SHAPE, dtype=np.int32)
    sat_x, sat_y = round(sx[-2]), round(sy[-2])
    mask[sat_y - 1 : sat_y + 2, sat_x - 1 : sat_x + 2] |= bits("SAT")
    # peaks: grid stars, pair (children of parent 1000), saturated, edge, galaxy, parent
    px = np.r_[np.round(sx), 425.0, np.round(sx[n_grid])]
    py = np.r_[np.round(sy), 401.0, np.round(sy[n_grid])]
    ids = np.arange(1, px.size + 1)
    ids[-1] = 1000
    parents = np.zeros(px.size, dtype=int)
    parents[[n_grid, n_grid + 1]] = 1000
    # segmentation: each child owns the pixels nearest to it within 12 px; stars own 10 px discs
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    seg = np.zeros(SHAPE, dtype=np.int64)
    for k in range(sx.size):
        if k in (n_grid, n_grid + 1):
            continue
        seg[np.hypot(xx - sx[k], yy - sy[k]) < 10] = ids[k]
    d0 = np.hypot(xx - sx[n_grid], yy - sy[n_grid])
    d1 = np.hypot(xx - sx[n_grid + 1], yy - sy[n_grid + 1])
    seg[np.minimum(d0, d1) < 12] = np.where(d0 < d1, ids[n_grid], ids[n_grid + 1])[
        np.minimum(d0, d1) < 12]
    seg[np.hypot(xx - 425.3, yy - 400.6) < 25] = ids[-2]
    psf, inside = _psf()
    table = measure_sources(image, var, mask, psf, px, py, segmentation=seg, ids=ids,
                            parents=parents)
    cols = {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}
    return dict(table=table, cols=cols, sx=sx, sy=sy, sf=sf, n_grid=n_grid, inside=inside,
                seg=seg, ids=ids, psf=psf, image=image, var=var, mask=mask, px=px, py=py)


def test_columns_units_and_names(field):
    table = field["table"]
    missing = [c for c in DP1_NAMES if c not in table.column_names]
    assert not missing
    for r in MeasurementConfig().radii:
        assert f"{aperture_column(r)}_instFlux" in table.column_names
    assert aperture_column(4.5) == "apFlux_4_5"
    units = column_units(table)
    assert units["x"] == "pixel" and units["ixx"] == "pixel**2"
    assert units["psfFlux_instFlux"] == "count" and units["apFlux_70_0_instFluxErr"] == "count"
    assert table.num_rows == field["px"].size
    np.testing.assert_array_equal(field["cols"]["sourceId"], field["ids"])


def test_isolated_stars(field):
    c, n = field["cols"], field["n_grid"]
    sx, sy, sf = field["sx"][:n], field["sy"][:n], field["sf"][:n]
    assert not c["centroid_flag"][:n].any() and not c["psfFlux_flag"][:n].any()
    for est, err, truth in ((c["x"], c["xErr"], sx), (c["y"], c["yErr"], sy)):
        pull = (est[:n] - truth) / err[:n]
        assert np.abs(pull).max() < 5 and 0.6 < np.std(pull) < 1.4
    pull = (c["psfFlux_instFlux"][:n] - sf * field["inside"]) / c["psfFlux_instFluxErr"][:n]
    assert abs(np.mean(pull)) < 0.5 and 0.7 < np.std(pull) < 1.3
    # Aperture fluxes follow the enclosed fraction (noise-limited at large radii).
    for r in (9.0, 12.0, 17.0):
        stem = aperture_column(r)
        ratio = c[f"{stem}_instFlux"][:n] / (sf * enclosed_fraction(r, FWHM, BETA))
        pulls = (ratio - 1) * sf * enclosed_fraction(r, FWHM, BETA) / c[f"{stem}_instFluxErr"][:n]
        assert abs(np.median(pulls)) < 0.6 and np.std(pulls) < 1.4
    psf_xx, _psf_yy, _ = psf_moments(field["psf"], c["x"][:n], c["y"][:n])
    np.testing.assert_allclose(c["ixxPSF"][:n], psf_xx, rtol=1e-6)
    assert np.median(c["ixx"][:n] / psf_xx) == pytest.approx(1.0, abs=0.02)
    bright = sf > 2e4
    assert (c["extendedness"][:n][bright] == 0).all()
    assert np.nanmedian(c["sizeExtendedness"][:n]) < 0.2
    assert np.abs(np.median(c["localBackground_instFlux"][:n])) < 1.0
    assert np.median(c["variance_value"][:n]) == pytest.approx(SKY, rel=0.05)


def test_blended_pair_and_parent(field):
    c, n, inside = field["cols"], field["n_grid"], field["inside"]
    kids = [n, n + 1]
    np.testing.assert_allclose(c["psfFlux_instFlux"][kids] / (field["sf"][kids] * inside), 1.0,
                               atol=0.02)
    np.testing.assert_allclose(c["x"][kids], field["sx"][kids], atol=0.05)
    assert (c["parentSourceId"][kids] == 1000).all()
    parent = c["sourceId"] == 1000
    assert c["deblend_nChild"][parent][0] == 2
    seg = field["seg"]
    assert c["footprintArea_value"][n] == (seg == field["ids"][n]).sum()
    assert c["footprintArea_value"][parent][0] == np.isin(seg, field["ids"][kids]).sum()
    # Each child's aperture holds its own flux only (sibling model subtracted).
    ratio = c["apFlux_6_0_instFlux"][kids] / (field["sf"][kids] * enclosed_fraction(6, FWHM, BETA))
    np.testing.assert_allclose(ratio, 1.0, atol=0.03)


def test_galaxy_saturated_and_edge(field):
    c, n = field["cols"], field["n_grid"]
    gal = field["ids"].size - 2
    assert c["extendedness"][gal] == 1.0 and c["sizeExtendedness"][gal] > 0.9
    sat, edge = n + 2, n + 3
    assert c["pixelFlags_saturatedCenter"][sat] and c["pixelFlags_saturated"][sat]
    assert not c["pixelFlags_saturated"][:n].any()
    # The fit leaves the masked core out and still recovers the flux from the wings.
    assert c["psfFlux_instFlux"][sat] / (field["sf"][sat] * field["inside"]) == pytest.approx(
        1.0, abs=0.02)
    assert c["psfFlux_flag_edge"][edge] and c["pixelFlags_edge"][edge]
    assert c["centroid_flag_edge"][edge] and c["apFlux_4_5_flag_apertureTruncated"][edge]


def test_neighbour_segments_are_replaced_with_noise(field):
    # The galaxy 45 px from the star at (380, 400) has its segment within the 50-px aperture:
    # its ~2e4 counts must be absent with segmentation and present without.
    c = field["cols"]
    star = field["n_grid"] + 2
    with_seg = c["apFlux_50_0_instFlux"][star]
    without = measure_sources(field["image"], field["var"], field["mask"], field["psf"],
                              field["px"][[star]], field["py"][[star]])
    plain = without.column("apFlux_50_0_instFlux").to_numpy()[0]
    expect = field["sf"][star] * enclosed_fraction(50, FWHM, BETA)
    err = c["apFlux_50_0_instFluxErr"][star]
    assert abs(with_seg - expect) < 5 * err
    assert plain - expect > 1e4


def test_empty_and_invalid_inputs():
    psf, _ = _psf()
    img = np.zeros((50, 60))
    with pytest.warns(UserWarning, match="no sources"):
        empty = measure_sources(img, img, img.astype(np.int32), psf, [], [])
    assert empty.num_rows == 0 and "psfFlux_instFlux" in empty.column_names
    with pytest.raises(ValueError, match="one shape"):
        measure_sources(img, img[:10], img.astype(np.int32), psf, [1.0], [1.0])
    with pytest.raises(ValueError, match="one length"):
        measure_sources(img, img, img.astype(np.int32), psf, [1.0, 2.0], [1.0])
