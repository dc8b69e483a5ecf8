"""The optical model: focal plane <-> sky, with radial distortion.

The chain from a focal-plane position to the sky, for a visit with boresight
``(ra0, dec0)`` and sky rotation ``theta``:

1. **distortion** -- a focal-plane position ``f`` (mm, from the optical axis)
   is seen at the field angle an ideal camera would put at
   ``t = f (1 + k |f|^2)`` (``k`` in mm^-2, pincushion for ``k > 0``);
2. **rotation and scale** -- ``t`` becomes gnomonic (tangent-plane)
   coordinates ``(xi, eta)`` (deg, xi towards East, eta towards North)::

       xi  = s (-cos(theta) t_x + sin(theta) t_y)
       eta = s ( sin(theta) t_x + cos(theta) t_y)

   with ``s`` the plate scale in deg/mm.  ``theta`` is the position angle of
   the focal plane's +y axis, from North through East; at ``theta = 0``
   North is +y and East is -x (the usual sky view, determinant < 0);
3. **gnomonic projection** about the boresight (the FITS TAN projection).

Every step has an exact inverse here (the distortion by Newton's method), so
catalog positions are placed on the pixels without relying on any WCS
approximation.  :mod:`sample_data.wcs` writes the same chain as a TAN-SIP WCS.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "distort",
    "field_to_sky",
    "gnomonic",
    "gnomonic_inverse",
    "rotation_matrix",
    "sky_to_field",
    "undistort",
]


def rotation_matrix(theta_deg: float) -> np.ndarray:
    """The 2x2 matrix taking ideal focal-plane offsets to (xi, eta), per unit scale."""
    c, s = np.cos(np.radians(theta_deg)), np.sin(np.radians(theta_deg))
    return np.array([[-c, s], [s, c]])


def distort(fx, fy, k: float) -> tuple[np.ndarray, np.ndarray]:
    """Ideal field position (mm) of focal-plane positions (mm): ``f (1 + k |f|^2)``."""
    fx = np.asarray(fx, float)
    fy = np.asarray(fy, float)
    scale = 1.0 + k * (fx * fx + fy * fy)
    return fx * scale, fy * scale


def undistort(tx, ty, k: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`distort`: focal-plane positions (mm) of ideal field positions (mm).

    Solves ``r (1 + k r^2) = rho`` for the radius by Newton's method (a few
    iterations reach machine precision for ``|k| rho^2 << 1``).
    """
    tx = np.asarray(tx, float)
    ty = np.asarray(ty, float)
    rho = np.hypot(tx, ty)
    r = rho.copy()
    for _ in range(8):
        r = r - (r * (1.0 + k * r * r) - rho) / (1.0 + 3.0 * k * r * r)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(rho > 0, r / np.where(rho > 0, rho, 1.0), 1.0)
    return tx * ratio, ty * ratio


def gnomonic(ra, dec, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Tangent-plane coordinates (deg) of sky positions (deg) about ``(ra0, dec0)``.

    Points more than 90 deg away come back as NaN.
    """
    a = np.radians(np.asarray(ra, float) - ra0)
    d = np.radians(np.asarray(dec, float))
    d0 = np.radians(dec0)
    cos_c = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(a)
    with np.errstate(invalid="ignore", divide="ignore"):
        good = cos_c > 0
        inv = np.where(good, 1.0 / np.where(good, cos_c, 1.0), np.nan)
    xi = np.cos(d) * np.sin(a) * inv
    eta = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a)) * inv
    return np.degrees(xi), np.degrees(eta)


def gnomonic_inverse(xi, eta, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Sky positions (deg) of tangent-plane coordinates (deg) about ``(ra0, dec0)``."""
    x = np.radians(np.asarray(xi, float))
    y = np.radians(np.asarray(eta, float))
    d0 = np.radians(dec0)
    denom = np.cos(d0) - y * np.sin(d0)
    ra = ra0 + np.degrees(np.arctan2(x, denom))
    dec = np.degrees(np.arctan2(np.sin(d0) + y * np.cos(d0), np.hypot(x, denom)))
    return np.mod(ra, 360.0), dec


def field_to_sky(tx, ty, ra0: float, dec0: float, theta_deg: float,
                 plate_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Sky positions (deg) of ideal field positions ``t`` (mm).

    Parameters
    ----------
    tx, ty : array_like
        Ideal (distortion-corrected) focal-plane positions, mm.
    ra0, dec0 : float
        Boresight, deg.
    theta_deg : float
        Sky rotation: position angle of the focal plane +y axis, deg E of N.
    plate_scale : float
        arcsec per mm.
    """
    rot = rotation_matrix(theta_deg) * (plate_scale / 3600.0)
    tx = np.asarray(tx, float)
    ty = np.asarray(ty, float)
    xi = rot[0, 0] * tx + rot[0, 1] * ty
    eta = rot[1, 0] * tx + rot[1, 1] * ty
    return gnomonic_inverse(xi, eta, ra0, dec0)


def sky_to_field(ra, dec, ra0: float, dec0: float, theta_deg: float,
                 plate_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Ideal field positions (mm) of sky positions (deg); inverse of :func:`field_to_sky`."""
    xi, eta = gnomonic(ra, dec, ra0, dec0)
    # The rotation matrix is symmetric and orthogonal: its own inverse.
    rot = rotation_matrix(theta_deg) * (3600.0 / plate_scale)
    return rot[0, 0] * xi + rot[0, 1] * eta, rot[1, 0] * xi + rot[1, 1] * eta
