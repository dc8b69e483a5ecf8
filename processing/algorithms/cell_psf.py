"""Cell PSFs: input PSFs warped to a cell centre, and what a cell PSF tells about depth.

See ``reference/algorithms.md`` 4.4 ("Cell PSF").  Each input of a cell
contributes its detector's PSF model evaluated at the detector position of the
cell centre, seen in the tract frame through the local affine map of the WCS
pair (:func:`warp_psf_kernels`, the batched form of
:func:`processing.algorithms.warp.warp_psf_kernel`: ``K_dst(d) = |det J|
K_src(J d)`` sampled with a Lanczos kernel, not renormalised, so a stamp too
small for the PSF shows as a sum below 1); the cell PSF is the weighted mean of
those stamps with the inputs' coadd weights.  Because the image of every
input at every inner-cell pixel enters the cell mean with the same weight,
this mean *is* the PSF of the cell coadd (up to the variation of each input
PSF across the cell).

:func:`point_source_depth` turns a cell PSF and the cell's variance into the
5-sigma point-source depth: with the PSF normalised to sum 1, the optimal
(PSF-weighted) flux of a point source on white noise of per-pixel variance
``V`` has variance ``V / sum(P^2)``, i.e. ``V`` times the noise-equivalent area
``1 / sum(P^2)``.

The warping loop is numba-compiled with tabulated Lanczos weights (2**14
fractional offsets per pixel): 484 kernels of 35 x 35 with Lanczos-3 take
0.16 s against 1.4 s for the per-kernel numpy routine (shared machine, load
~4.5 on 2 cores); the two agree to 1e-6 of the kernel peak.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from store.calib import AB_ZERO_NJY
from store.resample import lanczos_weights

from .moments import adaptive_moments, moments_to_fwhm

__all__ = ["point_source_depth", "psf_fwhm", "warp_psf_kernels"]


#: Fractional offsets tabulated per pixel for the Lanczos weights (position error < 3e-5 px).
_N_FRAC = 1 << 14


@numba.njit(cache=True, nogil=True, parallel=True)
def _warp(padded, jac, size, order, table, out):
    n, npad, _ = padded.shape
    half = size // 2
    centre = npad // 2
    lo, hi = order - 1.0, npad - order - 1.0
    n_frac = table.shape[0] - 1
    taps = 2 * order
    for q in numba.prange(n):
        j00, j01, j10, j11 = jac[q, 0, 0], jac[q, 0, 1], jac[q, 1, 0], jac[q, 1, 1]
        area = abs(j00 * j11 - j01 * j10)
        for a in range(size):
            dy = a - half
            for b in range(size):
                dx = b - half
                u = min(max(centre + j00 * dx + j01 * dy, lo), hi)
                v = min(max(centre + j10 * dx + j11 * dy, lo), hi)
                iu = int(np.floor(u))
                iv = int(np.floor(v))
                ku = int((u - iu) * n_frac + 0.5)
                kv = int((v - iv) * n_frac + 0.5)
                sx = 0.0
                sy = 0.0
                acc = 0.0
                for ty in range(taps):
                    row = iv - order + 1 + ty
                    part = 0.0
                    for tx in range(taps):
                        part += table[ku, tx] * padded[q, row, iu - order + 1 + tx]
                    acc += table[kv, ty] * part
                    sy += table[kv, ty]
                for tx in range(taps):
                    sx += table[ku, tx]
                out[q, a, b] = acc / (sx * sy) * area


@functools.lru_cache(maxsize=4)
def _table(order: int) -> np.ndarray:
    return lanczos_weights(np.linspace(0.0, 1.0, _N_FRAC + 1), order)


def warp_psf_kernels(kernels: np.ndarray, jacobians: np.ndarray, *, size: int,
                     order: int = 3) -> np.ndarray:
    """Warp many centred PSF kernels through local affine transforms.

    Parameters
    ----------
    kernels : numpy.ndarray
        ``(n, k, k)`` source-frame kernels, ``k`` odd, centred on the central pixel.
    jacobians : numpy.ndarray
        ``(n, 2, 2)`` ``d source / d destination`` pixel Jacobians
        (:func:`processing.algorithms.warp.local_jacobian`).
    size : int
        Odd side of the output stamps, destination pixels.
    order : int
        Lanczos order.

    Returns
    -------
    numpy.ndarray
        ``(n, size, size)`` float64 stamps centred on the central pixel, not
        renormalised (sum 1 when the stamp holds the whole PSF).

    Examples
    --------
    >>> k = np.zeros((1, 5, 5)); k[0, 2, 2] = 1.0
    >>> out = warp_psf_kernels(k, np.eye(2)[None], size=3)
    >>> out.shape, round(float(out[0, 1, 1]), 6), round(float(out.sum()), 6)
    ((1, 3, 3), 1.0, 1.0)
    """
    kernels = np.asarray(kernels, dtype=np.float64)
    jac = np.ascontiguousarray(jacobians, dtype=np.float64)
    if kernels.ndim != 3 or kernels.shape[1] != kernels.shape[2] or kernels.shape[1] % 2 == 0:
        raise ValueError(f"kernels must have shape (n, k, k) with k odd, got {kernels.shape}")
    if jac.shape != (kernels.shape[0], 2, 2):
        raise ValueError(f"jacobians must have shape ({kernels.shape[0]}, 2, 2), got {jac.shape}")
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd number, got {size}")
    # Pad so that every tap of every output pixel lies inside the array.
    reach = int(np.ceil(np.abs(jac).sum(axis=2).max(initial=1.0) * (size // 2))) if len(jac) else 0
    pad = max(order + 1, reach - kernels.shape[1] // 2 + order + 1)
    padded = np.pad(kernels, ((0, 0), (pad, pad), (pad, pad)))
    out = np.empty((kernels.shape[0], size, size))
    if kernels.shape[0]:
        _warp(padded, jac, int(size), int(order), _table(int(order)), out)
    return out


def psf_fwhm(stamps: np.ndarray, pixel_scale: float) -> tuple[np.ndarray, ...]:
    """Adaptive moments and FWHM of centred PSF stamps.

    Parameters
    ----------
    stamps : numpy.ndarray
        ``(n, k, k)`` PSF images centred on the central pixel.
    pixel_scale : float
        Arcseconds per pixel.

    Returns
    -------
    fwhm, ixx, iyy, ixy : numpy.ndarray
        ``(n,)``: FWHM in arcsec (``sqrt(8 ln 2)`` times the determinant
        radius) and the adaptive moments in pixel^2 (NaN where they failed).
    """
    stamps = np.asarray(stamps, dtype=float)
    if stamps.shape[0] == 0:
        empty = np.empty(0)
        return empty, empty, empty, empty
    half = stamps.shape[-1] // 2
    res = adaptive_moments(stamps, half, half, initial=2.25)
    bad = res.flag
    ixx, iyy, ixy = (np.where(bad, np.nan, m) for m in (res.xx, res.yy, res.xy))
    return moments_to_fwhm(ixx, iyy, ixy, pixel_scale), ixx, iyy, ixy


def point_source_depth(psf: np.ndarray, variance: float, n_sigma: float = 5.0) -> float:
    """AB magnitude of a point source detected at ``n_sigma`` by PSF photometry.

    Parameters
    ----------
    psf : numpy.ndarray
        ``(k, k)`` PSF image (normalised here to sum 1).
    variance : float
        Per-pixel variance of the coadd, nJy^2.
    n_sigma : float
        Detection significance.

    Returns
    -------
    float
        ``-2.5 log10(n_sigma sqrt(variance / sum(P^2)) / 3631e9 nJy)``; NaN if
        the variance is not positive and finite.

    Examples
    --------
    >>> p = np.zeros((3, 3)); p[1, 1] = 1.0
    >>> round(point_source_depth(p, 100.0), 3)  # 5 x 10 nJy = 50 nJy
    27.153
    """
    p = np.asarray(psf, dtype=float)
    total = p.sum()
    if not (np.isfinite(variance) and variance > 0 and total > 0):
        return float("nan")
    p = p / total
    flux = n_sigma * np.sqrt(variance / float((p * p).sum()))
    return float(-2.5 * np.log10(flux / AB_ZERO_NJY))
