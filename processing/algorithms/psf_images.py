"""Batched evaluation of PSF models: many kernels and shifted model stamps at once.

:class:`store.psf.Psf` answers one position at a time.  Measurement needs the
PSF at thousands of positions, so this module evaluates

* :func:`kernel_images` -- ``psf.kernel_image(x, y)`` for every position, as one
  ``(n, k, k)`` array (vectorised for :class:`~store.psf.PixelBasisPsf` and
  :class:`~store.psf.GaussianPsf`; other models fall back to one call each);
* :func:`shift_stamps` -- the separable Lanczos sub-pixel shift of
  :func:`store.resample.shift_image` applied to a stack of stamps;
* :func:`model_stamps` -- ``psf.image(x, y)`` for every position (kernel shifted
  to the sub-pixel position plus the integer origin of each stamp).

The results equal the single-position methods to rounding (tested), so the PSF
used by measurement is exactly the model the exposure carries.
"""

from __future__ import annotations

import numpy as np

from store.psf import GaussianPsf, PixelBasisPsf, Psf, polynomial_terms
from store.resample import lanczos

__all__ = ["kernel_images", "model_stamps", "nearest_pixel", "shift_stamps"]

#: Lanczos order used by :meth:`store.psf.Psf.image` (``shift_image`` default).
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


def shift_stamps(stamps: np.ndarray, dx, dy, order: int = SHIFT_ORDER) -> np.ndarray:
    """Shift each stamp of a stack by its own sub-pixel offset.

    Same operation as :func:`store.resample.shift_image` (content moves by
    ``(+dx, +dy)``, separable Lanczos with taps normalised to sum 1, zero
    padding), vectorised over the stack.

    Parameters
    ----------
    stamps : numpy.ndarray
        ``(n, ny, nx)`` images.
    dx, dy : array_like
        ``(n,)`` shifts in pixels, ``|dx|, |dy| <= 1`` expected.
    order : int
        Lanczos order.

    Returns
    -------
    numpy.ndarray
        ``(n, ny, nx)`` float64 shifted stamps.
    """
    stamps = np.asarray(stamps, dtype=float)
    n, ny, nx = stamps.shape
    dx = np.broadcast_to(np.asarray(dx, dtype=float), (n,))
    dy = np.broadcast_to(np.asarray(dy, dtype=float), (n,))
    taps = np.arange(-order, order + 1)
    wx = lanczos(taps[None, :] - dx[:, None], order)
    wy = lanczos(taps[None, :] - dy[:, None], order)
    wx /= wx.sum(axis=1, keepdims=True)
    wy /= wy.sum(axis=1, keepdims=True)
    # A zero shift must return the input exactly, as shift_image does.
    still = (dx == 0.0) & (dy == 0.0)
    pad = order
    padded = np.pad(stamps, ((0, 0), (pad, pad), (pad, pad)))
    tmp = np.zeros((n, ny + 2 * pad, nx))
    for t, k in enumerate(taps):
        tmp += wx[:, t, None, None] * padded[:, :, pad - k : pad - k + nx]
    out = np.zeros((n, ny, nx))
    for t, k in enumerate(taps):
        out += wy[:, t, None, None] * tmp[:, pad - k : pad - k + ny, :]
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
