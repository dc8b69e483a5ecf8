"""Resampling kernels shared by PSF evaluation (store) and warping (processing).

Kept here, below both users, so that the Lanczos kernel has one definition.
"""

from __future__ import annotations

import numpy as np

__all__ = ["lanczos", "lanczos_weights", "shift_image"]


def lanczos(t: np.ndarray, order: int = 3) -> np.ndarray:
    """Evaluate the Lanczos kernel ``sinc(t) sinc(t / order)`` (zero for ``|t| >= order``).

    Parameters
    ----------
    t : numpy.ndarray
        Offsets in pixels.
    order : int
        Kernel half-width ``a`` in pixels (3 for Lanczos-3).

    Returns
    -------
    numpy.ndarray
        Kernel values, same shape as ``t``.
    """
    t = np.asarray(t, dtype=float)
    out = np.sinc(t) * np.sinc(t / order)
    out[np.abs(t) >= order] = 0.0
    return out


def lanczos_weights(frac: np.ndarray, order: int = 3) -> np.ndarray:
    """Tap weights for interpolating at fractional offsets.

    Parameters
    ----------
    frac : numpy.ndarray
        Fractional positions in ``[0, 1)``, any shape ``S``.
    order : int
        Lanczos order ``a``; there are ``2 a`` taps at integer offsets
        ``-a + 1 ... a`` from the integer part.

    Returns
    -------
    numpy.ndarray
        Weights of shape ``S + (2 a,)``, *not* normalised (callers divide by
        their sum so that a constant image stays constant).
    """
    frac = np.asarray(frac, dtype=float)
    taps = np.arange(-order + 1, order + 1, dtype=float)
    return lanczos(taps - frac[..., None], order)


def shift_image(image: np.ndarray, dx: float, dy: float, order: int = 5) -> np.ndarray:
    """Shift a small image by a sub-pixel amount with separable Lanczos interpolation.

    ``out[j, i] = image(i - dx, j - dy)``, i.e. the content moves by
    ``(+dx, +dy)``.  Intended for PSF kernels (a few dozen pixels on a side);
    the edges are padded with zeros.

    Parameters
    ----------
    image : numpy.ndarray
        2-D array.
    dx, dy : float
        Shift in pixels, ``|dx|, |dy| <= 1`` expected.
    order : int
        Lanczos order.

    Returns
    -------
    numpy.ndarray
        The shifted image (float64), same shape.
    """
    image = np.asarray(image, dtype=float)
    if dx == 0.0 and dy == 0.0:
        return image.copy()
    # out(i) = sum_m image(m) L(i - dx - m): a 1-D convolution per axis.
    taps = np.arange(-order, order + 1)
    wx = lanczos(taps - dx, order)
    wy = lanczos(taps - dy, order)
    wx /= wx.sum()
    wy /= wy.sum()
    pad = order
    padded = np.pad(image, pad)
    ny, nx = image.shape
    tmp = np.zeros((ny + 2 * pad, nx))
    for k, w in zip(taps, wx, strict=True):
        if w != 0.0:
            tmp += w * padded[:, pad - k : pad - k + nx]
    out = np.zeros((ny, nx))
    for k, w in zip(taps, wy, strict=True):
        if w != 0.0:
            out += w * tmp[pad - k : pad - k + ny, :]
    return out
