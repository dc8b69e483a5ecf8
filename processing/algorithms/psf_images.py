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


def _spline_coefficients(stamps: np.ndarray) -> np.ndarray:
    """Quintic B-spline coefficients of each stamp (mirror boundary, as ndimage.shift)."""
    coeff = ndimage.spline_filter1d(stamps, SHIFT_ORDER, axis=-2, mode="mirror")
    return ndimage.spline_filter1d(coeff, SHIFT_ORDER, axis=-1, mode="mirror")


def _evaluate_shift(coeff: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Evaluate the splines of ``coeff`` (n, ny, nx) on the grid shifted by (dx, dy)."""
    _, ny, nx = coeff.shape
    pad = (SHIFT_ORDER + 1) // 2
    width = 2 * pad + 1
    coeff = np.pad(coeff, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    # out(i) = sum_m c(m) B(i - dx - m); window slot w of output i reads padded
    # coefficient i + w, i.e. m = i + w - pad, with weight B(pad - w - dx).
    slots = pad - np.arange(width)
    wx = _bspline5(slots[None, :] - dx[:, None])
    wy = _bspline5(slots[None, :] - dy[:, None])
    win = np.lib.stride_tricks.sliding_window_view(coeff, width, axis=2)
    tmp = np.einsum("nyxk,nk->nyx", win, wx)
    win = np.lib.stride_tricks.sliding_window_view(tmp, width, axis=1)
    out = np.einsum("nyxk,nk->nyx", win, wy)
    sx = np.arange(nx)[None, :] - dx[:, None]
    sy = np.arange(ny)[None, :] - dy[:, None]
    out *= ((sy >= 0) & (sy <= ny - 1))[:, :, None] & ((sx >= 0) & (sx <= nx - 1))[:, None, :]
    return out


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
    n = stamps.shape[0]
    dx = np.broadcast_to(np.asarray(dx, dtype=float), (n,))
    dy = np.broadcast_to(np.asarray(dy, dtype=float), (n,))
    out = _evaluate_shift(_spline_coefficients(stamps), dx, dy)
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
    ix, iy = nearest_pixel(x), nearest_pixel(y)
    dx, dy = x - ix, y - iy
    if isinstance(psf, PixelBasisPsf):
        # The spline prefilter is linear: filter the few basis images once and combine
        # them with each source's weights, instead of filtering every kernel.
        xn, yn = psf.normalise_position(x, y)
        weights = polynomial_terms(xn, yn, psf.degree)
        total = weights @ psf.basis.sum(axis=(1, 2))
        weights = weights / np.where(total != 0, total, 1.0)[:, None]
        coeff = np.einsum("nt,tij->nij", weights, _spline_coefficients(psf.basis))
        stamps = _evaluate_shift(coeff, dx, dy)
        still = (dx == 0.0) & (dy == 0.0)
        if still.any():
            stamps[still] = np.einsum("nt,tij->nij", weights[still], psf.basis)
    else:
        stamps = shift_stamps(kernel_images(psf, x, y), dx, dy)
    half = stamps.shape[1] // 2
    return stamps, ix - half, iy - half
