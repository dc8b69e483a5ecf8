"""Vectorised rendering of sources onto a detector (electrons, noiseless).

Point sources
    Each star is a stamp of the pixel-integrated Moffat PSF at the star's own
    focal-plane position (:func:`sample_data.psf.moffat_pixels`, 3x3
    Gauss-Legendre points per pixel: relative error < 2e-5 per pixel for the
    best seeing, 1e-7 typical), normalised analytically so that the stamp
    holds the star's flux minus what falls beyond its edge.  The stamp
    half-width is chosen per star (:meth:`PsfField.stamp_radius`) so the lost
    flux stays below a tenth of the photon noise and below 0.3 %.  Stars are
    grouped by stamp size; each group is computed as one ``(n, k, k)`` array
    and added with ``np.add.at`` (no per-star Python loop over pixels).
Galaxies
    Each galaxy's intrinsic truncated Sersic profile is averaged over 3x3
    points per pixel (9x9 in the central 3x3 pixels, where the cusp of
    high-index profiles is), normalised so the stamp holds exactly the
    catalog flux, then convolved (FFT, batched per stamp size) with the
    point-sampled PSF at the centre of the galaxy's 2 mm (200 pixel)
    focal-plane cell (within 0.4 % of the PSF at its position), cut at 3
    Moffat core radii and renormalised (the pixel response is already in the
    averaged galaxy).
    Peak errors are < 0.2 % against fine sampling; fluxes are exact.
"""

from __future__ import annotations

import numpy as np

from .psf import PsfField, moffat_moment_ratio, moffat_pixels

__all__ = ["render_galaxies", "render_point_sources", "sersic_b"]

# Galaxies are convolved with the PSF at the centre of their 2 mm (200 pixel)
# focal-plane cell: the PSF size changes by < 0.4 % across a cell.
_PSF_CELL_MM = 2.0
_STAMP_TIERS = np.array([3, 4, 6, 8, 11, 16, 22, 32, 45, 64, 90, 128, 180])
_CHUNK_PIXELS = 2_000_000


def _tier(radius: np.ndarray) -> np.ndarray:
    i = np.searchsorted(_STAMP_TIERS, np.ceil(radius))
    return _STAMP_TIERS[np.clip(i, 0, _STAMP_TIERS.size - 1)]


def _add_stamps(image: np.ndarray, ix: np.ndarray, iy: np.ndarray, half: int,
                stamps: np.ndarray) -> None:
    """Add ``(n, k, k)`` stamps centred on pixels ``(ix, iy)`` into ``image``, clipping at edges."""
    ny, nx = image.shape
    offs = np.arange(-half, half + 1)
    px = ix[:, None] + offs  # (n, k)
    py = iy[:, None] + offs
    okx = (px >= 0) & (px < nx)
    oky = (py >= 0) & (py < ny)
    valid = oky[:, :, None] & okx[:, None, :]
    flat = py[:, :, None] * nx + px[:, None, :]
    np.add.at(image.reshape(-1), flat[valid], stamps[valid])


def _overlaps(shape, ix, iy, half) -> np.ndarray:
    """Whether stamps of half-width ``half`` centred on ``(ix, iy)`` touch the image."""
    ny, nx = shape
    return (ix + half >= 0) & (ix - half < nx) & (iy + half >= 0) & (iy - half < ny)


def _chunks(n: int, k: int):
    step = max(1, _CHUNK_PIXELS // (k * k))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def render_point_sources(image: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray,
                         psf: PsfField, fp_x: np.ndarray, fp_y: np.ndarray, *,
                         n_gauss: int = 3) -> None:
    """Add point sources to an image in electrons, in place.

    Parameters
    ----------
    image : numpy.ndarray
        ``(ny, nx)`` float64 image.
    x, y : numpy.ndarray
        Source positions in the image's pixel coordinates.
    flux : numpy.ndarray
        Total fluxes, e-.
    psf : PsfField
        The visit's PSF.
    fp_x, fp_y : numpy.ndarray
        Focal-plane positions of the sources, mm (set the local PSF).
    n_gauss : int
        Gauss-Legendre points per pixel axis.
    """
    if x.size == 0:
        return
    mxx, myy, mxy = psf.moments(fp_x, fp_y)
    half = _tier(psf.stamp_radius(flux, fp_x, fp_y))
    ix = np.floor(x + 0.5).astype(np.int64)
    iy = np.floor(y + 0.5).astype(np.int64)
    # Row-major order makes np.add.at walk memory forwards; skip stamps off the image.
    order = np.lexsort((ix, iy))
    order = order[_overlaps(image.shape, ix[order], iy[order], half[order])]
    for h in np.unique(half[order]):
        members = order[half[order] == h]
        offs = np.arange(-h, h + 1, dtype=float)
        for part in _chunks(members.size, 2 * h + 1):
            s = members[part]
            dx = (ix[s, None] + offs - x[s, None])[:, None, :]
            dy = (iy[s, None] + offs - y[s, None])[:, :, None]
            stamps = moffat_pixels(dx, dy, mxx[s, None, None], myy[s, None, None],
                                   mxy[s, None, None], psf.beta, n_gauss)
            stamps *= flux[s, None, None]
            _add_stamps(image, ix[s], iy[s], int(h), stamps)


def sersic_b(n):
    """``b_n`` of the Sersic profile (Ciotti & Bertin 1999 expansion), so ``r_e`` is half-light."""
    n = np.asarray(n, float)
    return (2 * n - 1.0 / 3 + 4.0 / (405 * n) + 46.0 / (25515 * n**2)
            + 131.0 / (1148175 * n**3) - 2194697.0 / (30690717750 * n**4))


def _sersic_sum(u0, v0, shape_args, sub: int):
    """Mean of the Sersic profile over ``sub x sub`` points per pixel.

    ``u0, v0`` are the pixel-centre offsets along the major and (stretched)
    minor axis in units of ``r_e``; each sub-pixel point only shifts them by
    a per-galaxy constant.  float32 keeps this hot loop fast (1e-7 relative).
    """
    c, s, b, half_inv_n, inv_re, inv_q, trunc2 = shape_args
    t = (np.arange(sub) + 0.5) / sub - 0.5
    ox, oy = (a.ravel() for a in np.meshgrid(t, t))
    # Shifts of (u, v) for every sub-pixel point and galaxy: (sub^2, m, 1, 1).
    du = ((ox[:, None, None, None] * c + oy[:, None, None, None] * s) * inv_re).astype(np.float32)
    dv = ((oy[:, None, None, None] * c - ox[:, None, None, None] * s)
          * (inv_re * inv_q)).astype(np.float32)
    out = np.zeros(np.broadcast_shapes(u0.shape, v0.shape), dtype=np.float32)
    for k in range(ox.size):
        u = u0 + du[k]
        v = v0 + dv[k]
        r2 = u * u + v * v
        val = np.exp(b - b * r2**half_inv_n)
        val[r2 > trunc2] = 0.0
        out += val
    return out / np.float32(sub * sub)


def _sersic_stamps(dx, dy, n, re, q, theta, truncation):
    """Sersic stamps normalised to unit sum; ``dx, dy`` are (m, 1, k) and (m, k, 1) offsets.

    3 x 3 samples per pixel, 9 x 9 in the central 3 x 3 pixels where the
    cusp of high-index profiles lives (peak error after PSF convolution
    < 0.2 % against 16 x 16 sampling, for n <= 4 and r_e >= 0.7 pixel).
    """
    c = np.cos(theta)[:, None, None]
    s = np.sin(theta)[:, None, None]
    inv_re = (1.0 / re)[:, None, None]
    inv_q = (1.0 / q)[:, None, None]
    f32 = np.float32
    args = (c, s, sersic_b(n)[:, None, None].astype(f32), (0.5 / n)[:, None, None].astype(f32),
            inv_re, inv_q, f32(truncation**2))
    u0 = ((dx * c + dy * s) * inv_re).astype(f32)
    v0 = ((dy * c - dx * s) * inv_re * inv_q).astype(f32)
    img = _sersic_sum(u0, v0, args, 3)
    h = dx.shape[2] // 2
    core = slice(h - 1, h + 2)
    img[:, core, core] = _sersic_sum(u0[:, core, core], v0[:, core, core], args, 9)
    total = img.sum(axis=(1, 2), dtype=np.float64, keepdims=True)
    img /= np.where(total > 0, total, 1.0).astype(np.float32)
    return img


def render_galaxies(image: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray,
                    sersic_n: np.ndarray, re_px: np.ndarray, axis_ratio: np.ndarray,
                    theta: np.ndarray, psf: PsfField, fp_x: np.ndarray, fp_y: np.ndarray, *,
                    truncation: float = 4.0) -> None:
    """Add PSF-convolved Sersic galaxies to an image in electrons, in place.

    Parameters
    ----------
    image : numpy.ndarray
        ``(ny, nx)`` float64 image.
    x, y : numpy.ndarray
        Galaxy centres, pixels.
    flux : numpy.ndarray
        Total fluxes, e-.
    sersic_n : numpy.ndarray
        Sersic indices.
    re_px : numpy.ndarray
        Semi-major half-light radii, pixels.
    axis_ratio : numpy.ndarray
        Minor/major axis ratios.
    theta : numpy.ndarray
        Major-axis angles from the pixel +x axis, radians.
    psf : PsfField
        The visit's PSF.
    fp_x, fp_y : numpy.ndarray
        Focal-plane positions, mm.
    truncation : float
        Profiles end at this many ``re`` (major axis).
    """
    from scipy.fft import irfft2, next_fast_len, rfft2

    if x.size == 0:
        return
    # The PSF of each galaxy is the one at the centre of its focal-plane cell.
    cell_x = np.floor(fp_x / _PSF_CELL_MM).astype(np.int64)
    cell_y = np.floor(fp_y / _PSF_CELL_MM).astype(np.int64)
    cells, cell_of = np.unique(np.stack([cell_x, cell_y]), axis=1, return_inverse=True)
    cell_of = cell_of.ravel()
    mxx, myy, mxy = psf.moments((cells[0] + 0.5) * _PSF_CELL_MM, (cells[1] + 0.5) * _PSF_CELL_MM)
    c = moffat_moment_ratio(psf.beta)
    alpha_major = np.sqrt(np.maximum(mxx, myy) / c)
    # PSF kernel half-width: 3 core radii hold 99.7 % of a beta = 3.5 Moffat; the
    # kernel is renormalised, so galaxy fluxes stay exact.
    hp = int(np.ceil(3.0 * alpha_major.max()))
    gal_half = _tier(truncation * re_px + 1.0)
    ix = np.floor(x + 0.5).astype(np.int64)
    iy = np.floor(y + 0.5).astype(np.int64)
    order = np.lexsort((ix, iy))
    order = order[_overlaps(image.shape, ix[order], iy[order], gal_half[order] + hp)]
    poffs = np.arange(-hp, hp + 1, dtype=float)
    kernels = moffat_pixels(poffs[None, None, :], poffs[None, :, None], mxx[:, None, None],
                            myy[:, None, None], mxy[:, None, None], psf.beta, n_gauss=1)
    kernels = (kernels / kernels.sum(axis=(1, 2), keepdims=True)).astype(np.float32)
    for h in np.unique(gal_half[order]):
        members = order[gal_half[order] == h]
        offs = np.arange(-h, h + 1, dtype=float)
        k_out = 2 * (h + hp) + 1
        size = next_fast_len(k_out, real=True)
        used = np.unique(cell_of[members])
        kspec = rfft2(kernels[used], s=(size, size), axes=(1, 2))
        for part in _chunks(members.size, k_out):
            s = members[part]
            dx = (ix[s, None] + offs - x[s, None])[:, None, :]
            dy = (iy[s, None] + offs - y[s, None])[:, :, None]
            gal = _sersic_stamps(dx, dy, sersic_n[s], re_px[s], axis_ratio[s], theta[s],
                                 truncation)
            # Batched FFT convolution in float32 (errors ~1e-7 of the peak).
            spec = rfft2(gal, s=(size, size), axes=(1, 2))
            spec *= kspec[np.searchsorted(used, cell_of[s])]
            conv = irfft2(spec, s=(size, size), axes=(1, 2))[:, :k_out, :k_out]
            conv = conv * flux[s, None, None]
            _add_stamps(image, ix[s], iy[s], int(h + hp), conv)
