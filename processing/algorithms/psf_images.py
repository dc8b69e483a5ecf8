"""Batched evaluation of PSF models: many kernels and shifted model stamps at once.

:class:`store.psf.Psf` answers one position at a time.  Measurement needs the
PSF at thousands of positions, so this module evaluates

* :func:`kernel_images` -- ``psf.kernel_image(x, y)`` for every position, as one
  ``(n, k, k)`` array (vectorised for :class:`~store.psf.PixelBasisPsf` and
  :class:`~store.psf.GaussianPsf`; other models fall back to one call each);
* :func:`shift_stamps` -- the quintic B-spline sub-pixel shift of
  :func:`store.resample.shift_image` applied to a stack of stamps;
* :func:`model_stamps` -- ``psf.image(x, y)`` for every position (kernel shifted
  to the sub-pixel position plus the integer origin of each stamp).

The results equal the single-position methods to rounding (tested), so the PSF
used by measurement is exactly the model the exposure carries.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from store.psf import GaussianPsf, PixelBasisPsf, Psf, polynomial_terms

__all__ = ["kernel_images", "model_stamps", "nearest_pixel", "shift_stamps"]

#: B-spline order of :func:`store.resample.shift_image`, used by :meth:`store.psf.Psf.image`.
SHIFT_ORDER = 5


def nearest_pixel(v) -> np.ndarray:
    """Index of the pixel containing position ``v`` (pixel centres are integers).

    Parameters
    ----------
    v : array_like
        Positions in pixels.

    Returns
    -------
    numpy.ndarray
        ``floor(v + 0.5)`` as int64.
    """
    return np.floor(np.asarray(v, dtype=float) + 0.5).astype(np.int64)


def kernel_images(psf: Psf, x, y) -> np.ndarray:
    """PSF kernel images at many positions.

    Parameters
    ----------
    psf : store.psf.Psf
        The PSF model.
    x, y : array_like
        Positions in the image's pixel coordinates, shape ``(n,)``.

    Returns
    -------
    numpy.ndarray
        ``(n, k, k)`` float64 kernels, each summing to 1 and centred on the
        central pixel (as :meth:`~store.psf.Psf.kernel_image`).
    """
    x = np.atleast_1d(np.asarray(x, dtype=float))
    y = np.atleast_1d(np.asarray(y, dtype=float))
    if isinstance(psf, PixelBasisPsf):
        xn, yn = psf.normalise_position(x, y)
        weights = polynomial_terms(xn, yn, psf.degree)
        kernels = np.einsum("nt,tij->nij", weights, psf.basis)
        total = kernels.sum(axis=(1, 2))
        total = np.where(total != 0, total, 1.0)
        return kernels / total[:, None, None]
    if isinstance(psf, GaussianPsf):
        # Position independent: one evaluation, broadcast (read-only view).
        kernel = psf.kernel_image(0.0, 0.0)
        return np.broadcast_to(kernel, (x.size, *kernel.shape))
    return np.stack([psf.kernel_image(float(a), float(b)) for a, b in zip(x, y, strict=True)])


def _bspline5(t: np.ndarray) -> np.ndarray:
    """Centred quintic B-spline basis function."""
    t = np.abs(t)
    out = np.where(t < 3, (3 - t) ** 5, 0.0)
    out -= np.where(t < 2, 6 * (2 - t) ** 5, 0.0)
    out += np.where(t < 1, 15 * (1 - t) ** 5, 0.0)
    return out / 120.0


def shift_stamps(stamps: np.ndarray, dx, dy) -> np.ndarray:
    """Shift each stamp of a stack by its own sub-pixel offset.

    Batched :func:`store.resample.shift_image` (content moves by ``(+dx, +dy)``,
    quintic B-spline interpolation as ``scipy.ndimage.shift(order=5,
    mode="constant")``): the spline coefficients of all stamps are computed at
    once (mirror boundary), evaluated separably with per-stamp tap weights, and
    output pixels whose source position lies outside the stamp are zero.  Equal
    to the single-stamp function to ~1e-13.

    Parameters
    ----------
    stamps : numpy.ndarray
        ``(n, ny, nx)`` images.
    dx, dy : array_like
        ``(n,)`` shifts in pixels, ``|dx|, |dy| <= 1`` expected.

    Returns
    -------
    numpy.ndarray
        ``(n, ny, nx)`` float64 shifted stamps.
    """
    stamps = np.asarray(stamps, dtype=float)
    n, ny, nx = stamps.shape
    dx = np.broadcast_to(np.asarray(dx, dtype=float), (n,))
    dy = np.broadcast_to(np.asarray(dy, dtype=float), (n,))
    coeff = ndimage.spline_filter1d(stamps, SHIFT_ORDER, axis=1, mode="mirror")
    coeff = ndimage.spline_filter1d(coeff, SHIFT_ORDER, axis=2, mode="mirror")
    pad = (SHIFT_ORDER + 1) // 2
    coeff = np.pad(coeff, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    taps = np.arange(-pad, pad + 1)
    wx = _bspline5(taps[None, :] - dx[:, None])
    wy = _bspline5(taps[None, :] - dy[:, None])
    # out(i) = sum_m c(m) B(i - dx - m): tap t = i - m carries weight B(t - dx).
    tmp = np.zeros((n, ny + 2 * pad, nx))
    for k, t in enumerate(taps):
        tmp += wx[:, k, None, None] * coeff[:, :, pad - t : pad - t + nx]
    out = np.zeros((n, ny, nx))
    for k, t in enumerate(taps):
        out += wy[:, k, None, None] * tmp[:, pad - t : pad - t + ny, :]
    sx = np.arange(nx)[None, :] - dx[:, None]
    sy = np.arange(ny)[None, :] - dy[:, None]
    out *= ((sy >= 0) & (sy <= ny - 1))[:, :, None] & ((sx >= 0) & (sx <= nx - 1))[:, None, :]
    still = (dx == 0.0) & (dy == 0.0)  # shift_image returns the input unchanged
    if still.any():
        out[still] = stamps[still]
    return out


def model_stamps(psf: Psf, x, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PSF realised on the pixel grid at many sub-pixel positions.

    Batched equivalent of :meth:`store.psf.Psf.image`.

    Parameters
    ----------
    psf : store.psf.Psf
        The PSF model.
    x, y : array_like
        ``(n,)`` positions in pixels.

    Returns
    -------
    stamps : numpy.ndarray
        ``(n, k, k)`` float64 model images (each sums to ~1).
    x0, y0 : numpy.ndarray
        ``(n,)`` int64 pixel coordinates of ``stamps[:, 0, 0]``.
    """
    x = np.atleast_1d(np.asarray(x, dtype=float))
    y = np.atleast_1d(np.asarray(y, dtype=float))
    kernels = kernel_images(psf, x, y)
    half = kernels.shape[1] // 2
    ix, iy = nearest_pixel(x), nearest_pixel(y)
    stamps = shift_stamps(kernels, x - ix, y - iy)
    return stamps, ix - half, iy - half
