"""AssembleCoaddTask on synthetic warps: photometry, noise, safe-clip, PSF, masks, bad inputs."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pyarrow as pa
import pytest

from processing.algorithms.detection import grow_mask
from processing.algorithms.warp import local_jacobian
from processing.tasks.assemble_coadd import AssembleCoaddConfig, AssembleCoaddTask
from store.errors import DrpError, NoWorkFound
from store.masks import bits

from ._coadd_scenes import isolated, make_scene, warp_scene

BAD = bits("NO_DATA", "BAD", "SAT", "EDGE")


@pytest.fixture(scope="module")
def clean():
    """Six visits, no artefacts."""
    scene = make_scene(n_visits=6, seed=21)
    warps, _ = warp_scene(scene)
    return scene, warps


@pytest.fixture(scope="module")
def dirty():
    """Six visits with a satellite trail, cosmic rays and a variable star; few bright stars."""
    scene = make_scene(n_visits=6, seed=5, trail_visit=2, n_cosmics=8, variable_star=True,
                       bright_grid=2)
    warps, artefacts = warp_scene(scene)
    return scene, warps, artefacts


def assemble(warps, scene, **config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return AssembleCoaddTask(**config).run(warps, patch_bbox=scene.patch.outer_bbox,
                                               tract_wcs=scene.tract.wcs, band="r")


def star_xy(scene):
    x, y = scene.tract.sky_to_pixel(scene.star_ra, scene.star_dec)
    return x - scene.patch.outer_bbox.x0, y - scene.patch.outer_bbox.y0


def aperture(image, mask, x, y, half=12):
    out = np.full(x.size, np.nan)
    for i, (xi, yi) in enumerate(zip(x, y, strict=True)):
        ix, iy = round(float(xi)), round(float(yi))
        if half <= ix < image.shape[1] - half and half <= iy < image.shape[0] - half:
            sl = (slice(iy - half, iy + half + 1), slice(ix - half, ix + half + 1))
            if not np.any(mask[sl] & bits("NO_DATA", "REJECTED")):
                out[i] = image[sl].sum()
    return out


@pytest.mark.parametrize("statistic", ["MEAN", "SAFECLIP"])
def test_star_fluxes_on_the_coadd_within_one_percent(clean, statistic):
    scene, warps = clean
    res = assemble(warps, scene, statistic=statistic)
    coadd = res["coadd"]
    assert coadd.units == "nJy" and coadd.bbox == scene.patch.outer_bbox
    x, y = star_xy(scene)
    flux = aperture(coadd.image, coadd.mask, x, y)
    bright = np.isfinite(flux) & (scene.star_flux >= 1e5) & isolated(x, y, scene.star_flux)
    assert bright.sum() >= 6
    ratio = flux[bright] / scene.star_flux[bright]
    assert abs(np.median(ratio) - 1) < 0.01
    if statistic == "SAFECLIP":  # nothing to clip in a clean scene
        assert res.metadata["n_clipped_pixels"] < 0.001 * coadd.image.size * len(warps)


def test_coadd_noise_equals_the_prediction_from_the_weights(clean):
    scene, warps = clean
    res = assemble(warps, scene, statistic="MEAN", do_interp=False)
    coadd, n_image = res["coadd"], res["n_image"]
    weights = np.array([res["coadd"].metadata[f"INPUT_WEIGHT{i}"] for i in range(len(warps))])
    predicted = 1.0 / weights.sum()  # sum w^2 V / (sum w)^2 with V = 1/w
    x, y = star_xy(scene)
    yy, xx = np.indices(coadd.image.shape)
    far = np.ones(coadd.image.shape, bool)
    for xi, yi in zip(x, y, strict=True):
        far &= (xx - xi) ** 2 + (yy - yi) ** 2 > 20 ** 2
    full = far & (n_image == len(warps)) & ((coadd.mask & bits("REJECTED", "NO_DATA")) == 0)
    assert full.sum() > 5000
    measured = np.var(coadd.image[full])
    assert abs(measured / predicted - 1) < 0.05
    assert abs(np.mean(coadd.variance[full]) / predicted - 1) < 0.05


def test_safe_clip_removes_trails_and_cosmic_rays_but_not_sources(dirty):
    scene, warps, artefacts = dirty
    res = assemble(warps, scene, statistic="SAFECLIP")
    masks = res["artifact_masks"]
    keys = list(warps)
    valid = np.stack([np.isfinite(warps[k].image) & ((warps[k].mask & BAD) == 0) for k in keys])
    decidable = valid.sum(axis=0) >= 3  # with fewer epochs nothing can be called an artefact
    injected = excluded = 0.0
    art_region = np.zeros(valid.shape[1:], bool)
    for i, k in enumerate(keys):
        if k not in artefacts:
            continue
        a = np.clip(artefacts[k], 0, None)
        use = valid[i] & decidable
        clipped = (masks[k] & bits("CLIPPED")) != 0
        injected += a[use].sum()
        excluded += a[use & clipped].sum()
        art_region |= grow_mask(a > 0.5, 8)
    assert injected > 5e5
    assert excluded / injected >= 0.99
    # Pixels within 2 FWHM of true stars, away from any injected artefact, are not clipped.
    x, y = star_xy(scene)
    fwhm = 2.355 * max(p.sigma for p in scene.psfs.values())
    yy, xx = np.indices(art_region.shape)
    near = np.zeros(art_region.shape, bool)
    for xi, yi in zip(x, y, strict=True):
        near |= (xx - xi) ** 2 + (yy - yi) ** 2 <= (2 * fwhm) ** 2
    clipped_coadd = (res["coadd"].mask & bits("CLIPPED")) != 0
    frac = np.mean(clipped_coadd[near & ~art_region])
    assert frac < 0.001
    # The variable star (an outburst in one visit) is not clipped, and its coadd flux is the
    # weighted mean of its per-visit fluxes.
    vx, vy = scene.tract.sky_to_pixel(scene.star_ra[0] * 0 + 150.0 + 4e-4, 2.0 - 3e-4)
    vx, vy = vx - scene.patch.outer_bbox.x0, vy - scene.patch.outer_bbox.y0
    near_var = (xx - vx) ** 2 + (yy - vy) ** 2 <= (2 * fwhm) ** 2
    assert not clipped_coadd[near_var].any()


def test_meanclip_sets_clipped_and_mask_planes(dirty):
    scene, warps, _ = dirty
    res = assemble(warps, scene, statistic="MEANCLIP", do_interp=False)
    mask = res["coadd"].mask
    assert (mask & bits("CLIPPED")).any()
    assert (mask & bits("REJECTED")).any()  # the bad columns
    assert (mask & bits("SENSOR_EDGE")).any()  # detector edges
    inexact = (mask & bits("SENSOR_EDGE", "CLIPPED", "REJECTED")) != 0
    assert np.array_equal(inexact, (mask & bits("INEXACT_PSF")) != 0)
    n_image = res["n_image"]
    assert n_image.max() == len(warps) and n_image.dtype == np.int32


def test_coadd_psf_is_the_weighted_mean_of_the_input_psfs(clean):
    scene, warps = clean
    res = assemble(warps, scene, statistic="MEAN")
    coadd = res["coadd"]
    psf = coadd.psf
    x, y = coadd.bbox.center
    k = psf.kernel_image(x, y)
    half = k.shape[0] // 2
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(float)
    measured = np.array([np.sum(k * xx * xx), np.sum(k * yy * yy), np.sum(k * xx * yy)])
    ix, iy = round(x) - coadd.xy0[0], round(y) - coadd.xy0[1]
    total, acc = 0.0, np.zeros(3)
    for i, (key, warp) in enumerate(warps.items()):
        w = coadd.metadata[f"INPUT_WEIGHT{i}"]
        if not (np.isfinite(warp.image[iy, ix]) and not warp.mask[iy, ix] & BAD):
            continue
        v = key[1]
        det = scene.exposures[v][0]
        ixx, iyy, ixy = scene.psfs[v].moments()
        jac = np.linalg.inv(local_jacobian(det.wcs, scene.tract.wcs, x, y))
        c = jac @ np.array([[ixx, ixy], [ixy, iyy]]) @ jac.T
        acc += w * np.array([c[0, 0], c[1, 1], c[0, 1]])
        total += w
    expected = acc / total
    np.testing.assert_allclose(measured[:2], expected[:2], rtol=0.01)
    assert abs(measured[2] - expected[2]) < 0.01 * expected[:2].mean()


def test_no_data_is_interpolated_and_flagged(clean):
    scene, warps = clean
    holes = {k: w.copy() for k, w in warps.items()}
    for w in holes.values():
        w.image[200:204, 100:300] = np.nan
        w.mask[200:204, 100:300] = bits("NO_DATA")
    res = assemble(holes, scene, statistic="MEAN")
    c = res["coadd"]
    band = c.mask[200:204, 100:300]
    assert np.all(band & bits("NO_DATA")) and np.all(band & bits("INTRP"))
    assert np.all(np.isfinite(c.image)) and np.all(np.isinf(c.variance[200:204, 100:300]))
    assert np.all(res["n_image"][200:204, 100:300] == 0)


@pytest.mark.parametrize("statistic", ["MEAN", "SAFECLIP"])
def test_streak_pixels_are_excluded_even_where_one_input_covers(clean, statistic):
    """STREAK (set in the visit by the streak finder) is a bad plane of the coadd."""
    scene, warps = clean
    keys = list(warps)
    base = {k: w.copy() for k, w in warps.items()}
    for k in keys[1:]:  # where the streaked warp is the only input (no safe-clip decision)
        base[k].image[150:160, 200:260] = np.nan
        base[k].mask[150:160, 200:260] |= bits("NO_DATA")
    band = (slice(150, 160), slice(None))
    streaked = {k: w.copy() for k, w in base.items()}
    w0 = streaked[keys[0]]
    w0.image[band] += 500.0  # the trail's light, masked by the visit
    w0.mask[band] |= bits("STREAK")
    res = assemble(streaked, scene, statistic=statistic, do_interp=False)
    # The same coadd as with those pixels missing from the input.
    holed = {k: w.copy() for k, w in base.items()}
    holed[keys[0]].image[band] = np.nan
    holed[keys[0]].mask[band] |= bits("NO_DATA")
    ref = assemble(holed, scene, statistic=statistic, do_interp=False)
    c, r = res["coadd"], ref["coadd"]
    np.testing.assert_array_equal(c.image[band], r.image[band])
    np.testing.assert_array_equal(res["n_image"], ref["n_image"])
    covered = np.isfinite(w0.image[band])
    assert np.all(c.mask[band][covered] & bits("REJECTED"))
    alone = covered.copy()
    alone[:, :200] = alone[:, 260:] = False
    assert alone.sum() > 300 and np.all(res["n_image"][band][alone] == 0)
    assert np.all(c.mask[band][alone] & bits("NO_DATA"))


@pytest.mark.parametrize("statistic", ["MEAN", "MEANCLIP", "SAFECLIP"])
def test_small_subregions_give_the_same_coadd(dirty, statistic):
    scene, warps, _ = dirty
    big = assemble(warps, scene, statistic=statistic)["coadd"]
    small = assemble(warps, scene, statistic=statistic, memory_budget_mb=2.0)["coadd"]
    if statistic == "SAFECLIP":  # artefact decisions near strip edges may differ slightly
        differ = ~np.isclose(big.image, small.image, rtol=1e-5, atol=1e-3)
        assert differ.mean() < 0.002
    else:
        np.testing.assert_array_equal(big.image, small.image)
        np.testing.assert_array_equal(big.mask, small.mask)


def test_peak_memory_does_not_grow_with_the_number_of_inputs(dirty):
    scene, warps, _ = dirty
    keys = list(warps)
    peaks, psf_bytes = [], []
    for n in (3, 6):
        subset = {k: warps[k] for k in keys[:n]}
        tracemalloc.start()
        res = assemble(subset, scene, statistic="MEAN", memory_budget_mb=1.0)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        psf_bytes.append(res["coadd"].psf.kernels.nbytes)
    outputs = scene.patch.outer_bbox.area * 16
    # The coadd PSF keeps one component per input detector (its size grows with the inputs,
    # by design); the pixel buffers must not.
    assert psf_bytes[1] > psf_bytes[0]
    assert peaks[1] - 2 * psf_bytes[1] < 1.3 * (peaks[0] - 2 * psf_bytes[0])
    assert peaks[1] < outputs + 3 * 1e6 + 4e6


def test_bad_inputs(clean):
    scene, warps = clean
    keys = list(warps)
    masked = {k: w.copy() for k, w in warps.items()}
    masked[keys[0]].mask[:] |= bits("BAD")  # a warp with every pixel masked
    masked[keys[1]].variance[:] = np.nan  # an input with NaN variance
    for k in keys[:2]:  # make_warp records no MEANVAR when no pixel is usable
        masked[k].metadata.pop("MEANVAR")
    with pytest.warns(UserWarning, match="skipped"):
        res = AssembleCoaddTask(statistic="MEAN").run(masked, patch_bbox=scene.patch.outer_bbox,
                                                      band="r")
    assert res.metadata["n_inputs"] == len(keys) - 2
    sel = res["selection"]
    used = dict(zip(sel.column("visit").to_pylist(), sel.column("used").to_pylist(), strict=True))
    assert not used[keys[0][1]] and not used[keys[1][1]] and used[keys[2][1]]
    with pytest.warns(UserWarning), pytest.raises(NoWorkFound, match="none of the 2 warps"):
        AssembleCoaddTask().run({k: masked[k] for k in keys[:2]},
                                patch_bbox=scene.patch.outer_bbox)
    adu = warps[keys[2]].copy()
    adu.units = "adu"
    with pytest.raises(DrpError, match="coadds need nJy"):
        AssembleCoaddTask().run({keys[2]: adu}, patch_bbox=scene.patch.outer_bbox)


def test_selection_table_gets_weights(clean):
    scene, warps = clean
    rows = pa.table({"instrument": ["Cam"] * 3, "visit": [0, 0, 9], "detector": [1, 2, 0]})
    res = AssembleCoaddTask(statistic="MEAN").run(warps, patch_bbox=scene.patch.outer_bbox,
                                                  selection=rows)
    sel = res["selection"]
    assert sel.column_names == ["instrument", "visit", "detector", "weight", "used"]
    w = sel.column("weight").to_pylist()
    assert w[0] == w[1] == pytest.approx(res["coadd"].metadata["INPUT_WEIGHT0"]) and w[2] is None


def test_config_is_validated():
    with pytest.raises(ValueError, match="statistic must be one of"):
        AssembleCoaddConfig(statistic="MEDIAN")
    with pytest.raises(ValueError, match="memory_budget_mb must be > 0"):
        AssembleCoaddConfig(memory_budget_mb=0)
