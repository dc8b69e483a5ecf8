"""TAN-SIP WCS of each detector: the true one and the pointing model's one.

The optical model of :mod:`sample_data.optics` is written exactly as a FITS
TAN-SIP WCS per detector (astropy, parent pixel coordinates, 0-based in the
drp convention, FITS ``CRPIX`` 1-based as usual):

* ``CRVAL`` is the boresight, ``CRPIX`` the pixel position of the optical
  axis (usually off the detector);
* ``CD = (pixel_scale / 3600) R(theta)`` with ``R`` from
  :func:`sample_data.optics.rotation_matrix`;
* with ``(u, v)`` pixel offsets from ``CRPIX`` the radial distortion is
  ``(u, v) (1 + k p^2 (u^2 + v^2))``: third-order SIP with
  ``A_3_0 = A_1_2 = B_2_1 = B_0_3 = k p^2`` (``p`` the pixel size in mm).
  The forward SIP is therefore exact; the inverse (``AP``/``BP``, fifth
  order) is a least-squares fit good to ~1e-6 pixel.

The *header* WCS of a ``post_isr_image`` uses the same camera model (SIP
included, as a camera geometry would give) about the telescope's reported
boresight and rotation, which are off by about 1 arcsec and 0.05-0.2 deg per
visit; the *true* WCS uses the true pointing.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np

from .camera import Camera
from .optics import rotation_matrix

__all__ = ["detector_wcs", "wcs_to_header_string"]

_SIP_INVERSE_ORDER = 5


@lru_cache(maxsize=256)
def _sip_coefficients(k_px: float, crpix_x: float, crpix_y: float, width: int,
                      height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    order = 3
    a = np.zeros((order + 1, order + 1))
    b = np.zeros((order + 1, order + 1))
    a[3, 0] = a[1, 2] = k_px
    b[2, 1] = b[0, 3] = k_px
    # Inverse: fit u - U, v - V as polynomials of the distorted offsets (U, V)
    # over the detector grown by a margin, so all_world2pix starts close.
    margin = 0.1 * max(width, height)
    gx = np.linspace(-margin, width - 1 + margin, 41) - crpix_x
    gy = np.linspace(-margin, height - 1 + margin, 41) - crpix_y
    u, v = (m.ravel() for m in np.meshgrid(gx, gy))
    r2 = u * u + v * v
    big_u, big_v = u * (1 + k_px * r2), v * (1 + k_px * r2)
    terms = [(p, q) for p in range(_SIP_INVERSE_ORDER + 1) for q in range(_SIP_INVERSE_ORDER + 1)
             if 1 <= p + q <= _SIP_INVERSE_ORDER]
    # Scale the offsets to O(1) so the normal equations stay well conditioned.
    scale = max(np.abs(big_u).max(), np.abs(big_v).max(), 1.0)
    design = np.stack([(big_u / scale) ** p * (big_v / scale) ** q for p, q in terms], axis=1)
    # Normal equations: the scaled design is well conditioned, and LAPACK's
    # lstsq is needlessly slow for this small problem.  einsum (not BLAS) keeps
    # the sums in a fixed order, so every process gets the same bits.
    normal = np.einsum("ij,ik->jk", design, design)
    cu = np.linalg.solve(normal, np.einsum("ij,i->j", design, u - big_u))
    cv = np.linalg.solve(normal, np.einsum("ij,i->j", design, v - big_v))
    ap = np.zeros((_SIP_INVERSE_ORDER + 1, _SIP_INVERSE_ORDER + 1))
    bp = np.zeros_like(ap)
    for (p, q), c1, c2 in zip(terms, cu, cv, strict=True):
        ap[p, q] = c1 / scale ** (p + q)
        bp[p, q] = c2 / scale ** (p + q)
    return a, b, ap, bp


def detector_wcs(camera: Camera, detector: int, ra0: float, dec0: float, theta_deg: float):
    """The TAN-SIP WCS of one detector for a pointing.

    Parameters
    ----------
    camera : Camera
        Layout and distortion.
    detector : int
        Detector id.
    ra0, dec0 : float
        Boresight, deg.
    theta_deg : float
        Sky rotation (position angle of the focal plane +y axis, deg E of N).

    Returns
    -------
    astropy.wcs.WCS
        Maps 0-based parent pixel coordinates (``origin=0``) to ICRS degrees.
    """
    from astropy.wcs import WCS, Sip

    cfg = camera.config
    det = camera.detectors[detector]
    crpix_x, crpix_y = camera.focal_plane_to_pixel(detector, 0.0, 0.0)
    k_px = cfg.distortion * cfg.pixel_size**2
    a, b, ap, bp = _sip_coefficients(float(k_px), float(crpix_x), float(crpix_y),
                                     det.width, det.height)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.radesys = "ICRS"
    w.wcs.crval = [float(ra0), float(dec0)]
    w.wcs.crpix = [float(crpix_x) + 1.0, float(crpix_y) + 1.0]
    w.wcs.cd = rotation_matrix(theta_deg) * (cfg.pixel_scale / 3600.0)
    w.sip = Sip(a, b, ap, bp, w.wcs.crpix)
    w.pixel_shape = (det.width, det.height)
    w.wcs.set()
    return w


def wcs_to_header_string(wcs) -> str:
    """The FITS header cards of a WCS (SIP included) as one string of 80-character cards."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return wcs.to_header(relax=True).tostring()
