"""Pixel-integrated elliptical Moffat stars with known truth, for the measurement tests."""

from __future__ import annotations

import numpy as np


def moffat_alpha(fwhm: float, beta: float) -> float:
    """Moffat core width alpha (pixels) of a profile with the given FWHM."""
    return fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def enclosed_fraction(radius, fwhm: float, beta: float):
    """Fraction of a round Moffat's flux within ``radius`` (continuous profile)."""
    a = moffat_alpha(fwhm, beta)
    return 1.0 - (1.0 + (np.asarray(radius) / a) ** 2) ** (1.0 - beta)


def moffat(dx, dy, fwhm, beta, e1=0.0, e2=0.0):
    """Unit-integral elliptical Moffat at offsets ``(dx, dy)`` (ellipticity via a det-1 shear)."""
    alpha = moffat_alpha(fwhm, beta)
    g = float(np.hypot(e1, e2))
    if g > 0:
        theta = 0.5 * np.arctan2(e2, e1)
        q = np.sqrt((1 - g) / (1 + g))
        c, s = np.cos(theta), np.sin(theta)
        u, v = c * dx + s * dy, -s * dx + c * dy
        r2 = u * u * q + v * v / q
    else:
        r2 = dx * dx + dy * dy
    return (beta - 1.0) / (np.pi * alpha**2) * (1.0 + r2 / alpha**2) ** (-beta)


def moffat_stamp(x, y, fwhm, beta, e1=0.0, e2=0.0, half=20, oversample=6):
    """Pixel-integrated unit-flux Moffat on the stamp of pixels ``round(x, y) +- half``.

    Returns the stamp and the integer coordinates of its ``[0, 0]`` pixel.
    """
    ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    o = (np.arange(oversample) + 0.5) / oversample - 0.5
    gy, gx = np.mgrid[-half : half + 1, -half : half + 1]
    dx = (gx + ix - x)[:, :, None, None] + o[None, None, None, :]
    dy = (gy + iy - y)[:, :, None, None] + o[None, None, :, None]
    return moffat(dx, dy, fwhm, beta, e1, e2).mean(axis=(2, 3)), ix - half, iy - half


def render_stars(shape, x, y, flux, fwhm, beta, e1=0.0, e2=0.0, half=20, oversample=6):
    """Noiseless image of Moffat stars; ``fwhm``, ``e1``, ``e2`` may be per-star arrays."""
    img = np.zeros(shape)
    n = np.size(x)
    fwhm, e1, e2 = (np.broadcast_to(np.asarray(v, float), (n,)) for v in (fwhm, e1, e2))
    ny, nx = shape
    for k in range(n):
        st, x0, y0 = moffat_stamp(x[k], y[k], fwhm[k], beta, e1[k], e2[k], half, oversample)
        ya, yb = max(y0, 0), min(y0 + st.shape[0], ny)
        xa, xb = max(x0, 0), min(x0 + st.shape[1], nx)
        if yb > ya and xb > xa:
            img[ya:yb, xa:xb] += flux[k] * st[ya - y0 : yb - y0, xa - x0 : xb - x0]
    return img


def moffat_kernel(fwhm, beta, size=41, e1=0.0, e2=0.0, oversample=8):
    """Pixel-integrated unit-flux Moffat centred on the central pixel of a ``size`` square."""
    return moffat_stamp(0.0, 0.0, fwhm, beta, e1, e2, size // 2, oversample)[0]
