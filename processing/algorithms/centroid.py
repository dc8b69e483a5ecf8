"""SdssCentroid-like centroids with noise-propagated errors, batched over sources.

For each source (meas_base ``base_SdssCentroid``, ``reference/algorithms.md`` 6.4):

1. smooth the neighbourhood of the peak pixel with a normalised Gaussian of the
   PSF width ``sigma`` (only the 5x5 smoothed values around the peak are needed,
   so they are computed directly as two small matrix products per source);
2. take the smoothed maximum among the peak pixel and its 8 neighbours (moving
   there sets ``flag_not_at_maximum``);
3. fit a 2-D quadratic (with cross term) to the 3x3 neighbourhood of that pixel
   and take its extremum.  The quadratic is fitted to the *logarithm* of the
   smoothed values when all nine are positive: the log of a Gaussian is exactly
   quadratic, so a Gaussian-like smoothed star has no sub-pixel bias (SDSS gets
   the same effect from its empirical "quartic" correction).  Otherwise the
   values themselves are fitted, as SDSS does.

Errors are first-order propagation of the pixel variances through steps 1 and
3: the offset is a function of the nine smoothed values, each a linear
combination of pixels, so ``var(x) = sum_pix h_x^2 V`` with ``h_x`` the exact
per-pixel sensitivity.  This includes the source's own photon noise when the
variance plane does.

Flags follow meas_base: ``edge`` (smoothing window leaves the image),
``no_second_derivative`` (flat), ``not_at_maximum`` (peak not a smoothed maximum
or curvature not negative-definite), ``almost_no_second_derivative`` (offset
> 10 pixels), ``reset_to_peak`` (result moved farther than ``max_dist_to_peak``
or the fit failed; the position is then the peak pixel and the errors NaN),
``bad_error``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._measure_kernels import cut_into
from .psf_images import nearest_pixel

__all__ = ["Centroid", "centroid_window_half", "cut_stamps", "sdss_centroid",
           "sdss_centroid_stamps"]

# Coefficients of gradient and Hessian of a quadratic sampled on a 3x3 grid
# (index a = 3 * row + col, row = y), as linear maps of the nine samples.
_DGX = np.zeros(9)
_DGX[[5, 3]] = 0.5, -0.5
_DGY = np.zeros(9)
_DGY[[7, 1]] = 0.5, -0.5
_DHXX = np.zeros(9)
_DHXX[[5, 3, 4]] = 1.0, 1.0, -2.0
_DHYY = np.zeros(9)
_DHYY[[7, 1, 4]] = 1.0, 1.0, -2.0
_DHXY = np.zeros(9)
_DHXY[[8, 6, 2, 0]] = 0.25, -0.25, -0.25, 0.25


@dataclass(frozen=True)
class Centroid:
    """Result of :func:`sdss_centroid`; every attribute has shape ``(n,)``.

    Attributes
    ----------
    x, y : numpy.ndarray
        Centroid in the input's pixel coordinates.
    x_err, y_err : numpy.ndarray
        1-sigma errors, pixels.
    flag_edge, flag_no_second_derivative, flag_almost_no_second_derivative, \
flag_not_at_maximum, flag_reset_to_peak, flag_bad_error : numpy.ndarray
        Boolean failure flags (see module docstring).
    """

    x: np.ndarray
    y: np.ndarray
    x_err: np.ndarray
    y_err: np.ndarray
    flag_edge: np.ndarray
    flag_no_second_derivative: np.ndarray
    flag_almost_no_second_derivative: np.ndarray
    flag_not_at_maximum: np.ndarray
    flag_reset_to_peak: np.ndarray
    flag_bad_error: np.ndarray

    @property
    def flag(self) -> np.ndarray:
        """General failure flag (meas_base ``_flag``)."""
        return (self.flag_edge | self.flag_no_second_derivative | self.flag_reset_to_peak
                | self.flag_almost_no_second_derivative | self.flag_bad_error)


def centroid_window_half(sigma: float) -> int:
    """Half-size of the stamp :func:`sdss_centroid_stamps` needs for smoothing width ``sigma``."""
    return int(np.ceil(4.0 * sigma)) + 2


def cut_stamps(array: np.ndarray, ix, iy, half: int, fill=0) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``(2 half + 1)``-square stamps centred on integer pixels.

    Parameters
    ----------
    array : numpy.ndarray
        2-D image indexed ``[y, x]``.
    ix, iy : array_like
        ``(n,)`` integer centre pixels (0-based array indices).
    half : int
        Half-size of the stamps, pixels.
    fill : scalar
        Value of stamp pixels that fall off the array.

    Returns
    -------
    stamps : numpy.ndarray
        ``(n, 2 half + 1, 2 half + 1)``, same dtype as ``array``.
    on_image : numpy.ndarray
        ``(n, 2 half + 1, 2 half + 1)`` boolean, False off the array.
    """
    array = np.asarray(array)
    ix = np.ascontiguousarray(ix, dtype=np.int64).ravel()
    iy = np.ascontiguousarray(iy, dtype=np.int64).ravel()
    size = 2 * half + 1
    stamps = np.empty((ix.size, size, size), dtype=array.dtype)
    on_image = np.empty((ix.size, size, size), dtype=bool)
    cut_into(array, ix, iy, int(half), np.asarray(fill, dtype=array.dtype)[()], stamps, on_image)
    return stamps, on_image


def _gauss_1d(sigma: float, half: int) -> np.ndarray:
    t = np.arange(-half, half + 1, dtype=float)
    g = np.exp(-0.5 * (t / sigma) ** 2)
    return g / g.sum()


def _placement(g: np.ndarray, size: int, offsets: np.ndarray) -> np.ndarray:
    """Rows = the 1-D kernel centred at ``centre + offset`` within a window of ``size``."""
    centre = size // 2
    r = g.size // 2
    out = np.zeros((offsets.size, size))
    for k, o in enumerate(offsets):
        out[k, centre + o - r : centre + o + r + 1] = g
    return out


def sdss_centroid_stamps(
    stamps: np.ndarray,
    variance: np.ndarray,
    sigma: float,
    *,
    max_dist_to_peak: float = 2.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Centroid offsets from the central pixel of stamps centred on each peak.

    Parameters
    ----------
    stamps, variance : numpy.ndarray
        ``(n, s, s)`` image and variance stamps with the peak pixel at the
        centre, ``s >= 2 centroid_window_half(sigma) + 1``.
    sigma : float
        Gaussian smoothing width (PSF determinant radius), pixels.
    max_dist_to_peak : float
        Offsets farther than this from the central pixel are reset to it.

    Returns
    -------
    dx, dy : numpy.ndarray
        ``(n,)`` centroid offsets from the stamp's central pixel, pixels.
    dx_err, dy_err : numpy.ndarray
        ``(n,)`` 1-sigma errors, pixels.
    flags : dict of str to numpy.ndarray
        ``no_second_derivative``, ``almost_no_second_derivative``,
        ``not_at_maximum``, ``reset_to_peak``, ``bad_error``.
    """
    stamps = np.asarray(stamps, dtype=float)
    variance = np.asarray(variance, dtype=float)
    n, s, _ = stamps.shape
    r = int(np.ceil(4.0 * sigma))
    if s < 2 * (r + 2) + 1:
        raise ValueError(f"stamps of size {s} are too small for sigma={sigma}; "
                         f"need {2 * (r + 2) + 1}")
    g = _gauss_1d(sigma, r)
    g5 = _placement(g, s, np.arange(-2, 3))  # (5, s)
    smooth5 = g5 @ stamps @ g5.T  # (n, 5, 5) rows=y
    # Step 2: the smoothed maximum among the peak and its neighbours.
    inner = smooth5[:, 1:4, 1:4].reshape(n, 9)
    best = np.argmax(inner, axis=1)
    py, px = best // 3 - 1, best % 3 - 1
    not_at_max = best != 4
    rows = (py + 2)[:, None] + np.arange(-1, 2)[None, :]
    cols = (px + 2)[:, None] + np.arange(-1, 2)[None, :]
    s3 = smooth5[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]].reshape(n, 9)
    # Step 3: quadratic on log values where possible (exact for Gaussians).
    use_log = np.all(s3 > 0, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        lv = np.where(use_log[:, None], np.log(np.where(s3 > 0, s3, 1.0)), s3)
    gx, gy = lv @ _DGX, lv @ _DGY
    hxx, hyy, hxy = lv @ _DHXX, lv @ _DHYY, lv @ _DHXY
    det = hxx * hyy - hxy * hxy
    no_d2 = (hxx == 0) | (hyy == 0)
    fit_ok = (hxx < 0) & (hyy < 0) & (det > 0)
    not_at_max |= ~fit_ok & ~no_d2
    with np.errstate(divide="ignore", invalid="ignore"):
        ixx, iyy, ixy = hyy / det, hxx / det, -hxy / det  # H^-1
        ox = -(ixx * gx + ixy * gy)
        oy = -(ixy * gx + iyy * gy)
    almost = fit_ok & ((np.abs(ox) > 10) | (np.abs(oy) > 10))
    dx, dy = px + ox, py + oy
    reset = ~fit_ok | almost | ~np.isfinite(dx + dy) | (np.hypot(dx, dy) > max_dist_to_peak)
    # Errors: d(offset)/d(L_a) = -H^-1 (dg_a + dH_a offset), then dL = dS / S.
    with np.errstate(divide="ignore", invalid="ignore"):
        vx = _DGX[None, :] + _DHXX[None, :] * ox[:, None] + _DHXY[None, :] * oy[:, None]
        vy = _DGY[None, :] + _DHXY[None, :] * ox[:, None] + _DHYY[None, :] * oy[:, None]
        jx = -(ixx[:, None] * vx + ixy[:, None] * vy)
        jy = -(ixy[:, None] * vx + iyy[:, None] * vy)
        scale = np.where(use_log[:, None], 1.0 / np.where(s3 > 0, s3, 1.0), 1.0)
    jx, jy = (jx * scale).reshape(n, 3, 3), (jy * scale).reshape(n, 3, 3)
    # Pixel sensitivities: the smoothing kernels of the 3x3 samples around the chosen peak.
    g3y = g5[(py + 1)[:, None] + np.arange(3)[None, :]]  # (n, 3, s)
    g3x = g5[(px + 1)[:, None] + np.arange(3)[None, :]]
    g3y_t = g3y.transpose(0, 2, 1)
    hx = g3y_t @ jx @ g3x  # (n, s, s): sum_rc jx[r, c] g3y[r, j] g3x[c, k]
    hy = g3y_t @ jy @ g3x
    dx_err = np.sqrt((hx * hx * variance).sum(axis=(1, 2)))
    dy_err = np.sqrt((hy * hy * variance).sum(axis=(1, 2)))
    bad_err = ~np.isfinite(dx_err + dy_err) | (dx_err <= 0) | (dy_err <= 0)
    dx = np.where(reset, 0.0, dx)
    dy = np.where(reset, 0.0, dy)
    dx_err = np.where(reset, np.nan, dx_err)
    dy_err = np.where(reset, np.nan, dy_err)
    flags = {
        "no_second_derivative": no_d2,
        "almost_no_second_derivative": almost,
        "not_at_maximum": not_at_max,
        "reset_to_peak": reset,
        "bad_error": bad_err & ~reset,
    }
    return dx, dy, dx_err, dy_err, flags


def sdss_centroid(
    image: np.ndarray,
    variance: np.ndarray,
    x_peak,
    y_peak,
    sigma: float,
    *,
    max_dist_to_peak: float = 2.0,
) -> Centroid:
    """SdssCentroid-like centroids of sources near the given peaks.

    Parameters
    ----------
    image : numpy.ndarray
        2-D background-subtracted image, indexed ``[y, x]``.
    variance : numpy.ndarray
        Variance plane, same shape (image units squared).
    x_peak, y_peak : array_like
        ``(n,)`` peak positions in array pixel coordinates (rounded to the
        nearest pixel).
    sigma : float
        Smoothing Gaussian sigma, pixels: the PSF determinant radius.
    max_dist_to_peak : float
        Results farther than this from the peak pixel are reset to it, pixels.

    Returns
    -------
    Centroid

    Examples
    --------
    >>> yy, xx = np.mgrid[0:40, 0:40]
    >>> img = np.exp(-0.5 * ((xx - 20.3) ** 2 + (yy - 17.8) ** 2) / 4.0)
    >>> c = sdss_centroid(img, np.full(img.shape, 1e-4), [20], [18], 2.0)
    >>> round(float(c.x[0]), 4), round(float(c.y[0]), 4)
    (20.3, 17.8)
    """
    ix, iy = nearest_pixel(x_peak), nearest_pixel(y_peak)
    half = centroid_window_half(sigma)
    img, on_image = cut_stamps(np.asarray(image, dtype=float), ix, iy, half)
    var, _ = cut_stamps(np.asarray(variance, dtype=float), ix, iy, half)
    dx, dy, ex, ey, flags = sdss_centroid_stamps(img, var, sigma,
                                                 max_dist_to_peak=max_dist_to_peak)
    edge = ~on_image.all(axis=(1, 2))
    return Centroid(
        x=ix + dx, y=iy + dy, x_err=ex, y_err=ey, flag_edge=edge,
        flag_no_second_derivative=flags["no_second_derivative"],
        flag_almost_no_second_derivative=flags["almost_no_second_derivative"],
        flag_not_at_maximum=flags["not_at_maximum"],
        flag_reset_to_peak=flags["reset_to_peak"], flag_bad_error=flags["bad_error"],
    )
