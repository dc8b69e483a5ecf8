"""MakeWarpTask on synthetic star fields: flux, noise, masks, PSF, pasting, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from processing.algorithms.warp import local_jacobian
from processing.tasks.make_warp import MakeWarpConfig, MakeWarpTask
from store.calib import PhotoCalib
from store.errors import NoWorkFound
from store.exposure import Exposure
from store.geom import Box
from store.masks import bits
from store.psf import GaussianPsf

from ._coadd_scenes import isolated, make_scene, tan_wcs

BAD = bits("NO_DATA", "BAD", "SAT", "EDGE")


@pytest.fixture(scope="module")
def scene():
    return make_scene(n_visits=2, seed=11)


@pytest.fixture(scope="module")
def warped(scene):
    task = MakeWarpTask()
    return task.run(scene.exposures[0], scene.summaries[0], tract_wcs=scene.tract.wcs,
                    patch_bbox=scene.patch.outer_bbox)


def star_pixels(scene, warp):
    x, y = scene.tract.sky_to_pixel(scene.star_ra, scene.star_dec)
    return x - warp.xy0[0], y - warp.xy0[1]


def aperture_sums(image, mask, x, y, half=12, bad=BAD):
    out = np.full(x.size, np.nan)
    for i, (xi, yi) in enumerate(zip(x, y, strict=True)):
        ix, iy = round(float(xi)), round(float(yi))
        if not (half <= ix < image.shape[1] - half and half <= iy < image.shape[0] - half):
            continue
        sl = (slice(iy - half, iy + half + 1), slice(ix - half, ix + half + 1))
        if np.any(mask[sl] & bad):
            continue
        out[i] = image[sl].sum()
    return out


def test_warp_conserves_star_flux(scene, warped):
    warp = warped["warp"]
    assert warp.units == "nJy" and warp.bbox == scene.patch.outer_bbox
    x, y = star_pixels(scene, warp)
    flux = aperture_sums(warp.image, warp.mask, x, y)
    bright = np.isfinite(flux) & (scene.star_flux >= 1e5) & isolated(x, y, scene.star_flux)
    assert bright.sum() >= 3
    ratio = flux[bright] / scene.star_flux[bright]
    assert abs(np.median(ratio) - 1) < 0.005
    assert np.all(np.abs(ratio - 1) < 0.01)


def test_warp_variance_predicts_the_noise(scene, warped):
    warp = warped["warp"]
    x, y = star_pixels(scene, warp)
    yy, xx = np.indices(warp.image.shape)
    far = np.ones(warp.image.shape, bool)
    for xi, yi in zip(x, y, strict=True):
        far &= (xx - xi) ** 2 + (yy - yi) ** 2 > 20 ** 2
    ok = far & ((warp.mask & BAD) == 0) & np.isfinite(warp.image)
    z = warp.image[ok] / np.sqrt(warp.variance[ok])
    assert ok.sum() > 20000
    assert abs(np.std(z) - 1) < 0.03
    # Lanczos smoothing: the warped variance is below the input's (100 nJy^2) on average.
    assert 0.5 * 100 < np.median(warp.variance[ok]) < 100


def test_bad_pixels_spread_over_the_lanczos_footprint(scene, warped):
    warp = warped["warp"]
    # The bad columns hold 1e4 nJy of garbage: every warped pixel that saw it is flagged BAD.
    unflagged = ((warp.mask & BAD) == 0) & np.isfinite(warp.image)
    x, y = star_pixels(scene, warp)
    yy, xx = np.indices(warp.image.shape)
    near_star = np.zeros(warp.image.shape, bool)
    for xi, yi in zip(x, y, strict=True):
        near_star |= (xx - xi) ** 2 + (yy - yi) ** 2 < 20 ** 2
    z = warp.image / np.sqrt(warp.variance)
    assert np.nanmax(np.abs(z[unflagged & ~near_star])) < 6.5
    bad = (warp.mask & bits("BAD")) != 0
    # A one-pixel column spreads to a band ~6 pixels wide (Lanczos-3), not 2 (bilinear).
    widths = bad.sum(axis=1)
    assert np.median(widths[widths > 0]) >= 5
    frac = warped["masked_fraction"]
    assert np.nanmax(frac[bad]) > 0.5 and np.nanmedian(frac[~bad & unflagged]) == 0.0


def test_warp_psf_is_the_input_psf_in_tract_pixels(scene, warped):
    warp = warped["warp"]
    exp = scene.exposures[0][0]
    x, y = warp.psf.x_centers[0][2], warp.psf.y_centers[0][2]  # a node of the first detector
    kernel = warp.psf.kernel_image(x, y)
    half = kernel.shape[0] // 2
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(float)
    measured = np.array([[np.sum(kernel * xx * xx), np.sum(kernel * xx * yy)],
                         [np.sum(kernel * xx * yy), np.sum(kernel * yy * yy)]])
    ixx, iyy, ixy = exp.psf.moments()
    c_src = np.array([[ixx, ixy], [ixy, iyy]])
    # Every detector of a visit shares the PSF and rotation, so any node will do.
    jac = local_jacobian(exp.wcs, scene.tract.wcs, x, y)
    inv = np.linalg.inv(jac)
    expected = inv @ c_src @ inv.T
    np.testing.assert_allclose(measured, expected, rtol=0.01, atol=0.01)


def test_metadata_records_inputs_and_weight_statistic(warped):
    md = warped["warp"].metadata
    assert md["NINPUTS"] == 4
    assert [md[f"INPUT_DET{i}"] for i in range(4)] == [0, 1, 2, 3]
    assert sum(md[f"INPUT_NGOOD{i}"] for i in range(4)) == md["NGOODPIX"]
    assert 50 < md["MEANVAR"] < 100 and md["MEANVARMASK"] == BAD


def flat_exposure(value, box, wcs, variance=1.0, units="nJy", calib=1.0):
    img = np.full(box.shape, value, np.float32)
    return Exposure(img, None, np.full(box.shape, variance, np.float32), wcs=wcs,
                    psf=GaussianPsf(1.5, size=15), photo_calib=PhotoCalib(calib), units=units,
                    xy0=(box.x0, box.y0))


def test_later_detector_wins_where_valid(scene):
    tract, patch = scene.tract, scene.patch
    ra, dec = tract.pixel_to_sky(*patch.outer_bbox.center)
    wcs = tan_wcs(float(ra), float(dec), (100.0, 100.0), 10.0)
    first = flat_exposure(1.0, Box(0, 0, 200, 200), wcs)
    second = flat_exposure(5.0, Box(0, 0, 120, 120), wcs)  # overlaps the first's lower left
    out = MakeWarpTask().run({0: first, 1: second}, tract_wcs=tract.wcs,
                             patch_bbox=patch.outer_bbox)["warp"]
    good = (out.mask & bits("NO_DATA")) == 0
    vals = np.unique(np.round(out.image[good], 3))
    assert set(vals) <= {1.0, 5.0} and {1.0, 5.0} <= set(vals)
    assert out.metadata["INPUT_NGOOD1"] > 0


def test_adu_inputs_are_calibrated(scene):
    tract, patch = scene.tract, scene.patch
    ra, dec = tract.pixel_to_sky(*patch.outer_bbox.center)
    wcs = tan_wcs(float(ra), float(dec), (100.0, 100.0), 0.0)
    exp = flat_exposure(3.0, Box(0, 0, 200, 200), wcs, variance=2.0, units="adu", calib=2.0)
    out = MakeWarpTask().run({0: exp}, tract_wcs=tract.wcs, patch_bbox=patch.outer_bbox)["warp"]
    good = (out.mask & bits("NO_DATA")) == 0
    np.testing.assert_allclose(out.image[good], 6.0, rtol=1e-4)
    assert np.all(out.variance[good] <= 8.0 + 1e-3)


def test_nan_variance_becomes_no_data(scene):
    exps = {d: e.copy() for d, e in scene.exposures[1].items()}
    exps[0].variance[120:150, 110:140] = np.nan
    out = MakeWarpTask().run(exps, scene.summaries[1], tract_wcs=scene.tract.wcs,
                             patch_bbox=scene.patch.outer_bbox)["warp"]
    good = (out.mask & bits("NO_DATA")) == 0
    assert np.all(np.isfinite(out.variance[good])) and np.all(np.isfinite(out.image[good]))
    # The NaN block maps somewhere into the warp as a hole.
    ra, dec = exps[0].pixel_to_sky(125.0, 135.0)
    x, y = scene.tract.sky_to_pixel(ra, dec)
    ix, iy = round(float(x)) - out.xy0[0], round(float(y)) - out.xy0[1]
    assert 0 <= ix < out.image.shape[1] and 0 <= iy < out.image.shape[0]
    assert out.mask[iy, ix] & bits("NO_DATA")
    assert not np.isfinite(out.image[iy, ix])


def test_no_good_pixel_is_no_work(scene):
    exps = {d: e.copy() for d, e in scene.exposures[1].items()}
    for e in exps.values():
        e.variance[:] = np.nan
    with pytest.raises(NoWorkFound, match="no selected detector"):
        MakeWarpTask().run(exps, tract_wcs=scene.tract.wcs, patch_bbox=scene.patch.outer_bbox)
    far = scene.tract.patch(0)  # no detector reaches this patch
    with pytest.raises(NoWorkFound):
        MakeWarpTask().run(scene.exposures[1], tract_wcs=scene.tract.wcs,
                           patch_bbox=far.outer_bbox)
    with pytest.raises(NoWorkFound, match="no detector image"):
        MakeWarpTask().run({}, tract_wcs=scene.tract.wcs, patch_bbox=far.outer_bbox)


def test_config_is_validated():
    with pytest.raises(ValueError, match="border must be >= 0"):
        MakeWarpConfig(border=-1)
    with pytest.raises(ValueError, match="psf_size must be a positive odd"):
        MakeWarpConfig(psf_size=10)
    with pytest.raises(KeyError, match="unknown mask plane"):
        MakeWarpConfig(masked_fraction_planes=("BADD",))
