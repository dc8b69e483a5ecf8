"""Small synthetic pixel scenes shared by the detection/deblend/cosmic-ray tests."""

from __future__ import annotations

import numpy as np
from scipy.special import erf


def gaussian_psf_flux(snr: float, sigma: float, noise: float) -> float:
    """Total flux of a Gaussian star whose optimal (PSF-fit) S/N on white noise is ``snr``."""
    return snr * noise * np.sqrt(4 * np.pi) * sigma


def add_gaussian_stars(image: np.ndarray, x, y, flux, sigma, half: int | None = None) -> None:
    """Add pixel-integrated round Gaussian stars in place (stamps of +-``half`` px)."""
    x, y = np.atleast_1d(x), np.atleast_1d(y)
    flux = np.broadcast_to(np.asarray(flux, float), x.shape)
    sigma = np.broadcast_to(np.asarray(sigma, float), x.shape)
    ny, nx = image.shape
    for xi, yi, fi, si in zip(x, y, flux, sigma, strict=True):
        h = half if half is not None else int(np.ceil(6 * si))
        x0, y0 = round(float(xi)) - h, round(float(yi)) - h
        ex = np.arange(x0, x0 + 2 * h + 2) - 0.5
        ey = np.arange(y0, y0 + 2 * h + 2) - 0.5
        gx = np.diff(0.5 * erf((ex - xi) / (np.sqrt(2) * si)))
        gy = np.diff(0.5 * erf((ey - yi) / (np.sqrt(2) * si)))
        stamp = fi * np.outer(gy, gx)
        ys, xs = slice(max(0, y0), min(ny, y0 + 2 * h + 1)), slice(max(0, x0), min(nx, x0 + 2 * h + 1))
        image[ys, xs] += stamp[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]


def sersic_image(shape, x0, y0, flux, r_e, n=1.0, axis_ratio=1.0, theta=0.0, oversample=5):
    """Pixel-integrated (by oversampling) Sersic profile with total flux ``flux``."""
    from scipy.special import gamma, gammaincinv

    b = gammaincinv(2 * n, 0.5)
    ny, nx = shape
    off = (np.arange(oversample) + 0.5) / oversample - 0.5
    yy = (np.arange(ny)[:, None] + off[None, :]).ravel()
    xx = (np.arange(nx)[:, None] + off[None, :]).ravel()
    dx, dy = xx[None, :] - x0, yy[:, None] - y0
    c, s = np.cos(theta), np.sin(theta)
    u, v = dx * c + dy * s, (-dx * s + dy * c) / axis_ratio
    r = np.hypot(u, v)
    total = 2 * np.pi * n * r_e**2 * axis_ratio * np.exp(b) * gamma(2 * n) / b ** (2 * n)
    fine = flux / total * np.exp(-b * ((r / r_e) ** (1 / n) - 1)) / oversample**2
    return fine.reshape(ny, oversample, nx, oversample).sum(axis=(1, 3))
