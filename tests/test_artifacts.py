"""The safe-clip artefact finder on small blocks of synthetic warps with known truth."""

from __future__ import annotations

import numpy as np
import pytest

from processing.algorithms._artifact_kernels import bin_block, loo_residual
from processing.algorithms.artifacts import ArtifactConfig, find_artifacts
from processing.algorithms.detection import grow_mask
from store.masks import bits

BAD = bits("NO_DATA", "BAD", "SAT", "EDGE")


def gaussian(shape, x0, y0, flux, sxx, syy, sxy=0.0):
    yy, xx = np.indices(shape, dtype=float)
    dx, dy = xx - x0, yy - y0
    det = sxx * syy - sxy * sxy
    g = np.exp(-0.5 * (syy * dx * dx - 2 * sxy * dx * dy + sxx * dy * dy) / det)
    total = g.sum()
    return flux * g / total if total > 0 else g


def block(n=6, size=160, seed=2, noise=5.0):
    """``n`` aligned warps of the same stars with different elliptical Gaussian PSFs."""
    rng = np.random.default_rng(seed)
    stars = [(40, 40, 2e4), (120, 45, 5e4), (80, 110, 1e4), (30, 130, 3e3), (135, 130, 2e5)]
    moments = np.column_stack([rng.uniform(2.5, 5.0, n), rng.uniform(2.5, 5.0, n),
                               rng.uniform(-0.4, 0.4, n)])
    x = np.empty((n, size, size), np.float32)
    for k in range(n):
        img = rng.normal(0.0, noise, (size, size))
        for sx, sy, f in stars:
            img += gaussian((size, size), sx, sy, f, *moments[k])
        x[k] = img
    v = np.full(x.shape, noise * noise, np.float32)
    m = np.zeros(x.shape, np.int32)
    return x, v, m, moments


def test_bin_block_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 9, 11)).astype(np.float32)
    v = rng.uniform(1, 2, x.shape).astype(np.float32)
    m = np.zeros(x.shape, np.int32)
    m[rng.random(x.shape) < 0.3] = bits("BAD")
    x[0, 0, 0] = np.nan
    for b in (2, 3):
        shape = (3, -(-9 // b), -(-11 // b))
        ox, ov, om = (np.empty(shape, np.float32), np.empty(shape, np.float32),
                      np.empty(shape, np.int32))
        bin_block(x, v, m, BAD, b, ox, ov, om)
        ok = om == 0
        for k in range(3):
            for jb in range(shape[1]):
                for ib in range(shape[2]):
                    sl = (k, slice(jb * b, jb * b + b), slice(ib * b, ib * b + b))
                    good = np.isfinite(x[sl]) & ((m[sl] & BAD) == 0)
                    usable = good.sum() > 0 and 2 * good.sum() >= good.size
                    assert ok[k, jb, ib] == usable
                    if usable:
                        assert ox[k, jb, ib] == pytest.approx(x[sl][good].mean(), rel=1e-5)
                        assert ov[k, jb, ib] == pytest.approx(v[sl][good].sum() / good.sum() ** 2,
                                                              rel=1e-5)


def test_leave_one_out_residual():
    x = np.array([[10.0, 3.0]], np.float32)
    v = np.array([[1.0, 1.0]], np.float32)
    valid = np.array([[True, True]])
    t_img = np.array([[4.0, 4.0]], np.float32)
    t_var = np.array([[1 / 3, 1 / 3]], np.float32)
    t_w = np.array([[3.0, 3.0]])
    out = [np.empty((1, 2), np.float32) for _ in range(3)]
    loo_residual(x, v, valid, t_img, t_var, t_w, 1.0, 3.0, 0.0, *out)
    resid, diff, other = out
    # Pixel 0: 10 is 6 sigma from the template, so it was not averaged: other = T.
    assert other[0, 0] == pytest.approx(4.0) and diff[0, 0] == pytest.approx(6.0)
    assert resid[0, 0] == pytest.approx(6.0 / np.sqrt(1 + 1 / 3))
    # Pixel 1: 3 was averaged with weight 1 of 3: the others' mean is (12 - 3) / 2 = 4.5.
    assert other[0, 1] == pytest.approx(4.5) and diff[0, 1] == pytest.approx(-1.5)
    assert resid[0, 1] == pytest.approx(-1.5 / np.sqrt(1 + 0.5))


@pytest.mark.parametrize("b", [1, 2])
def test_cosmic_ray_and_trail_are_found_sources_kept(b):
    x, v, m, moments = block()
    n, size = x.shape[0], x.shape[1]
    x[2, 70, 60] += 3000.0  # cosmic ray
    x[2, 71, 60] += 1500.0
    yy, xx = np.indices((size, size), dtype=float)
    trail = 60.0 * np.exp(-0.5 * ((yy - 0.3 * xx - 20) / 2.0) ** 2)
    x[4] += trail.astype(np.float32)
    x[1] += gaussian((size, size), 80, 110, 3e4, *moments[1]).astype(np.float32)  # variable
    m[3, :, 100:103] = bits("BAD")
    res = find_artifacts(x, v, m, np.ones(n), moments, bad_mask=BAD,
                         config=ArtifactConfig(bin=b))
    clipped = res.clipped
    assert clipped[2, 70, 60] and clipped[2, 71, 60]
    assert not clipped[[0, 1, 3, 4, 5], 70, 60].any()
    on_trail = trail > 20
    assert clipped[4][on_trail].mean() > 0.98
    injected = trail[trail > 0.5].sum()
    assert trail[clipped[4] & (trail > 0.5)].sum() > 0.99 * injected
    # No star, including the variable one, is clipped in any epoch (the trail's own
    # footprint, grown by a PSF sigma or so, aside).
    along_trail = grow_mask(trail > 0.5, 4)
    for sx, sy in ((40, 40), (120, 45), (80, 110), (30, 130), (135, 130)):
        near = (xx - sx) ** 2 + (yy - sy) ** 2 <= 10 ** 2
        others = np.delete(clipped, [2, 4], axis=0)
        assert not others[:, near].any(), (sx, sy)
        assert not (clipped[4] & near & ~along_trail).any(), (sx, sy)
    assert res.n_artifacts[2] >= 1 and res.n_artifacts[4] >= 1
    assert res.n_artifacts[[0, 1, 3, 5]].sum() == 0


def test_warp_alone_over_most_of_the_block_clips_no_sky():
    """A warp that is the only input over most of the block keeps a noise-level threshold.

    Where warp 0 is alone its residual against the others is 0 by construction;
    counting those zeros in the robust scale shrank the threshold to ~1.5 sigma
    and noise blobs of the overlap were clipped (demo visit 2024112700001: 3% of
    its warp).  Its trail in the overlap must still be found.
    """
    x, v, m, moments = block(n=5, size=200, seed=4)
    m[1:, :, :80] = bits("NO_DATA")  # the others cover only the right 60%
    x[1:, :, :80] = np.nan
    yy, xx = np.indices(x.shape[1:], dtype=float)
    trail = 60.0 * np.exp(-0.5 * ((xx - 0.1 * yy - 168) / 2.0) ** 2)
    trail[:, :80] = 0.0
    clean = x.copy()
    x[0] += trail.astype(np.float32)
    res = find_artifacts(x, v, m, np.ones(5), moments, bad_mask=BAD,
                         config=ArtifactConfig(bin=2))
    overlap = np.zeros(x.shape[1:], bool)
    overlap[:, 80:] = True
    sky = overlap & ~grow_mask(trail > 0.5, 8)
    for sx, sy in ((40, 40), (120, 45), (80, 110), (30, 130), (135, 130)):
        sky &= (xx - sx) ** 2 + (yy - sy) ** 2 > 15 ** 2
    assert res.clipped[0][sky].mean() < 1e-3
    assert not res.clipped[1:].any()
    assert trail[res.clipped[0]].sum() > 0.99 * trail.sum()
    # Without the trail nothing at all is clipped.
    assert not find_artifacts(clean, v, m, np.ones(5), moments, bad_mask=BAD).clipped.any()


def test_fewer_than_three_epochs_decide_nothing():
    x, v, m, moments = block(n=2)
    x[0, 50, 50] += 5000.0
    res = find_artifacts(x, v, m, np.ones(2), moments, bad_mask=BAD)
    assert not res.clipped.any()


def test_misuse():
    x, v, m, moments = block(n=3, size=32)
    with pytest.raises(ValueError, match="rows of PSF moments"):
        find_artifacts(x, v, m, np.ones(3), moments[:2], bad_mask=BAD)
    with pytest.raises(ValueError, match="need 3 weights"):
        find_artifacts(x, v, m, np.ones(2), moments, bad_mask=BAD)
    with pytest.raises(ValueError, match="bad_mask must name"):
        find_artifacts(x, v, m, np.ones(3), moments, bad_mask=0)
    with pytest.raises(ValueError, match="bin must be >= 1"):
        ArtifactConfig(bin=0)


def moffat_block(n=6, size=200, seed=3, noise=5.0):
    """``n`` warps of bright stars with Moffat PSFs of different widths, betas and shapes."""
    from store.psf import GridPsf

    from ._moffat_stars import moffat_kernel, render_stars

    rng = np.random.default_rng(seed)
    xs = np.array([40.3, 150.7, 100.2, 45.9, 160.1, 100.5])
    ys = np.array([45.1, 40.6, 100.4, 155.2, 150.8, 170.3])
    flux = np.array([3e5, 1e6, 2e5, 6e5, 1e5, 4e5])
    fwhm = rng.uniform(3.5, 6.5, n)
    beta = rng.uniform(2.5, 4.5, n)
    e1, e2 = rng.uniform(-0.06, 0.06, (2, n))
    x = np.empty((n, size, size), np.float32)
    psfs = []
    for k in range(n):
        clean = render_stars((size, size), xs, ys, flux, fwhm[k], beta[k], e1[k], e2[k])
        x[k] = clean + rng.normal(0.0, noise, (size, size))
        kern = moffat_kernel(fwhm[k], beta[k], 41, e1[k], e2[k])
        psfs.append(GridPsf(kern[None, None], [0.0], [0.0]))
    v = np.full(x.shape, noise * noise, np.float32)
    m = np.zeros(x.shape, np.int32)
    return x, v, m, psfs, (xs, ys)


def test_psf_matching_kernels_match_moffat_profiles():
    from scipy import signal

    from processing.algorithms.artifacts import _bin_kernel, psf_matching_kernels

    from ._moffat_stars import moffat_kernel

    kernels = np.array([moffat_kernel(f, b, 41, e1, 0.0)
                        for f, b, e1 in ((3.5, 2.5, 0.05), (5.0, 4.0, -0.03), (6.5, 3.0, 0.0))])
    for b in (1, 2):
        k, sigma = psf_matching_kernels(kernels, b)
        assert k.dtype == np.float32 and k.shape[1] % 2 == 1
        np.testing.assert_allclose(k.sum(axis=(1, 2)), 1.0, rtol=1e-5)
        assert 6.5 / 2.3548 / b < sigma < 1.5 * 6.5 / 2.3548 / b
        matched = [signal.convolve(_bin_kernel(p, b), kk, mode="same")
                   for p, kk in zip(kernels, k, strict=True)]
        ref = matched[-1]
        for mk in matched[:-1]:
            assert np.sqrt(((mk - ref) ** 2).sum() / (ref ** 2).sum()) < 0.01


def test_bright_moffat_stars_kept_artefacts_found_with_psf_models():
    """PSF-model matching: stars of different Moffat PSFs are not artefacts, a CR and a trail are.

    A Gaussian matched to the second moments leaves several per cent of a bright
    Moffat star in the sharpest and broadest epochs (the wings do not match).
    """
    x, v, m, psfs, (xs, ys) = moffat_block()
    n, size = x.shape[0], x.shape[1]
    res = find_artifacts(x, v, m, np.ones(n), bad_mask=BAD, psfs=psfs)
    assert not res.clipped.any()
    x[1, 120, 30] += 4000.0  # cosmic ray on the sky
    yy, xx = np.indices((size, size), dtype=float)
    trail = 80.0 * np.exp(-0.5 * ((yy - 0.5 * xx - 60) / 2.5) ** 2)
    x[3] += trail.astype(np.float32)
    res = find_artifacts(x, v, m, np.ones(n), bad_mask=BAD, psfs=psfs)
    assert res.clipped[1, 120, 30]
    assert trail[res.clipped[3]].sum() > 0.99 * trail.sum()
    along = grow_mask(trail > 0.5, 6)
    for sx, sy in zip(xs, ys, strict=True):
        near = (xx - sx) ** 2 + (yy - sy) ** 2 <= 12 ** 2
        assert not np.delete(res.clipped, [1, 3], axis=0)[:, near].any(), (sx, sy)
        assert not (res.clipped[3] & near & ~along).any(), (sx, sy)


def test_psf_models_or_moments_are_required():
    x, v, m, _ = block(n=3, size=32)
    with pytest.raises(ValueError, match="PSF models"):
        find_artifacts(x, v, m, np.ones(3), bad_mask=BAD)
    with pytest.raises(ValueError, match="need 3 PSF models"):
        find_artifacts(x, v, m, np.ones(3), bad_mask=BAD, psfs=[None, None, None])
