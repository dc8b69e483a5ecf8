"""Simulated detector scenes for the astrometry and matching tests (not a test module).

A "true" TAN-SIP WCS with a cubic radial distortion reaching ``distortion_pix`` at the detector
corners, a pointing-model guess (plain TAN, offset and rotated), reference stars with mas-level
position errors, and detected sources with centroid noise, unmatched extras on both sides and a
noisy brightness ranking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS, Sip

from store.geom import Box


def make_true_wcs(width=2048, height=2048, ra0=150.0, dec0=2.0, scale_arcsec=0.2, rot_deg=30.0,
                  distortion_pix=4.0) -> WCS:
    """TAN-SIP WCS with CRPIX at the detector centre and a 3rd-order radial (+ small 2nd-order) SIP."""
    crpix0 = ((width - 1) / 2.0, (height - 1) / 2.0)
    th = np.radians(rot_deg)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    cd = scale_arcsec / 3600.0 * rot @ np.diag([-1.0, 1.0])
    r_corner = np.hypot(width / 2.0, height / 2.0)
    k = distortion_pix / r_corner**3
    q = 0.3 / r_corner**2                     # a 0.3 px quadratic term (tilted focal plane)
    a = np.zeros((4, 4))
    b = np.zeros((4, 4))
    a[3, 0] = a[1, 2] = k
    b[2, 1] = b[0, 3] = k
    a[2, 0] = q
    b[1, 1] = 0.5 * q
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.wcs.crpix = [crpix0[0] + 1.0, crpix0[1] + 1.0]
    w.wcs.crval = [ra0, dec0]
    w.wcs.cd = cd
    w.sip = Sip(a, b, None, None, w.wcs.crpix)
    w.wcs.set()
    return w


def make_guess_wcs(true_wcs: WCS, offset_arcsec=(3.0, 0.0), rot_deg=0.2) -> WCS:
    """Plain TAN guess: true CRVAL moved by ``offset_arcsec`` (east, north), CD rotated, no SIP."""
    g = WCS(naxis=2)
    g.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    g.wcs.crpix = true_wcs.wcs.crpix
    ra0, dec0 = true_wcs.wcs.crval
    g.wcs.crval = [ra0 + offset_arcsec[0] / 3600.0 / np.cos(np.radians(dec0)),
                   dec0 + offset_arcsec[1] / 3600.0]
    th = np.radians(rot_deg)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    g.wcs.cd = rot @ true_wcs.wcs.cd
    g.wcs.set()
    return g


def make_camera_wcs(ra0=150.0, dec0=2.0, rot_deg=30.0, crpix=(-60.0, 2110.0), scale_arcsec=0.2,
                    k_px=1e-11, ap_bp=True) -> WCS:
    """Camera-model TAN-SIP WCS as our headers carry it: CRPIX at the optical axis (0-based
    ``crpix``, off the detector by default), CRVAL the boresight, radial cubic SIP
    ``(u, v)(1 + k_px (u^2 + v^2))`` (the demo camera has k_px = 1e-11: 0.3 px at 3000 px)."""
    th = np.radians(rot_deg)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    a = np.zeros((4, 4))
    b = np.zeros((4, 4))
    a[3, 0] = a[1, 2] = b[2, 1] = b[0, 3] = k_px
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.wcs.crpix = [crpix[0] + 1.0, crpix[1] + 1.0]
    w.wcs.crval = [ra0, dec0]
    w.wcs.cd = scale_arcsec / 3600.0 * rot @ np.diag([-1.0, 1.0])
    w.sip = Sip(a, b, None, None, w.wcs.crpix)
    w.wcs.set()
    if ap_bp:   # an inverse as a camera model provides: fitted, good to ~1e-6 px
        from processing.algorithms.wcs_fit import _fit_inverse
        gx, gy = np.meshgrid(np.linspace(-300, 2350, 40) - crpix[0],
                             np.linspace(-300, 2350, 40) - crpix[1])
        ap, bp, _ = _fit_inverse(a, b, 5, gx.ravel(), gy.ravel(), 3000.0)
        w.sip = Sip(a, b, ap, bp, w.wcs.crpix)
        w.wcs.set()
    return w


def make_header_wcs(true_wcs: WCS, offset_arcsec=(0.8, -0.6), rot_deg=0.15) -> WCS:
    """The header WCS of a camera model: the true distortion and CRPIX, the pointing off by
    ``offset_arcsec`` (east, north) and the rotation (about the optical axis) by ``rot_deg``."""
    g = true_wcs.deepcopy()
    ra0, dec0 = true_wcs.wcs.crval
    g.wcs.crval = [ra0 + offset_arcsec[0] / 3600.0 / np.cos(np.radians(dec0)),
                   dec0 + offset_arcsec[1] / 3600.0]
    th = np.radians(rot_deg)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    g.wcs.cd = rot @ true_wcs.wcs.cd
    g.wcs.set()
    return g


@dataclass
class Scene:
    bbox: Box
    true_wcs: WCS
    src_x: np.ndarray
    src_y: np.ndarray
    src_flux: np.ndarray
    ref_ra: np.ndarray
    ref_dec: np.ndarray
    ref_mag: np.ndarray
    true_src_of_ref: np.ndarray    # index of the source of each reference, -1 if none


def make_scene(rng, true_wcs: WCS, *, width=2048, height=2048, n_common=150, n_ref_only=100,
               n_src_only=2000, centroid_sigma_pix=0.02, ref_sigma_mas=3.0,
               ref_wcs: WCS | None = None) -> Scene:
    """Sources seen through ``true_wcs``; references around ``ref_wcs`` (default: the truth).

    Common stars have magnitudes 16-21 and a 0.3 mag brightness-ranking scatter; reference-only
    stars lie on the detector but were not detected; source-only objects (galaxies, stars too
    faint or too red for the reference catalogue) follow steep number counts from mag 16 to 24.
    """
    bbox = Box(0, 0, width, height)
    ref_wcs = true_wcs if ref_wcs is None else ref_wcs
    xc = rng.uniform(-0.5, width - 0.5, n_common)
    yc = rng.uniform(-0.5, height - 0.5, n_common)
    mag_c = rng.uniform(16.0, 21.0, n_common)
    ra_c, dec_c = ref_wcs.all_pix2world(xc, yc, 0)
    xr = rng.uniform(-0.5, width - 0.5, n_ref_only)
    yr = rng.uniform(-0.5, height - 0.5, n_ref_only)
    ra_r, dec_r = ref_wcs.all_pix2world(xr, yr, 0)
    mag_r = rng.uniform(16.0, 21.0, n_ref_only)
    noise = ref_sigma_mas / 3.6e6
    cos_dec = np.cos(np.radians(dec_c[0]))
    ref_ra = np.r_[ra_c, ra_r] + rng.normal(0, noise, n_common + n_ref_only) / cos_dec
    ref_dec = np.r_[dec_c, dec_r] + rng.normal(0, noise, n_common + n_ref_only)
    ref_mag = np.r_[mag_c, mag_r]
    if ref_wcs is true_wcs:
        sx_c, sy_c = xc, yc
    else:  # references come from elsewhere on the sky: the detected stars are different ones
        sx_c = rng.uniform(-0.5, width - 0.5, n_common)
        sy_c = rng.uniform(-0.5, height - 0.5, n_common)
    flux_c = 10 ** (-0.4 * (mag_c + rng.normal(0, 0.3, n_common) - 30.0))
    xs = rng.uniform(-0.5, width - 0.5, n_src_only)
    ys = rng.uniform(-0.5, height - 0.5, n_src_only)
    # number counts N(<m) ~ 10^(0.35 m) between 16 and 24: most extra objects are faint
    u = rng.uniform(0.0, 1.0, n_src_only)
    mag_s = np.log10(10 ** (0.35 * 16) + u * (10 ** (0.35 * 24) - 10 ** (0.35 * 16))) / 0.35
    flux_s = 10 ** (-0.4 * (mag_s - 30.0))
    src_x = np.r_[sx_c, xs] + rng.normal(0, centroid_sigma_pix, n_common + n_src_only)
    src_y = np.r_[sy_c, ys] + rng.normal(0, centroid_sigma_pix, n_common + n_src_only)
    src_flux = np.r_[flux_c, flux_s]
    # shuffle so that indices carry no information
    ps = rng.permutation(src_x.size)
    pr = rng.permutation(ref_ra.size)
    inv_ps = np.argsort(ps)
    truth = np.full(ref_ra.size, -1)
    if ref_wcs is true_wcs:
        truth[:n_common] = inv_ps[:n_common]
    return Scene(bbox, true_wcs, src_x[ps], src_y[ps], src_flux[ps], ref_ra[pr], ref_dec[pr],
                 ref_mag[pr], truth[pr])


def wcs_error_mas(fitted: WCS, true_wcs: WCS, bbox: Box, n=25) -> np.ndarray:
    """On-sky distance (mas) between two WCSs on an n x n grid spanning the box to its outer corners."""
    c = bbox.corners()
    gx, gy = np.meshgrid(np.linspace(c[0, 0], c[1, 0], n), np.linspace(c[0, 1], c[2, 1], n))
    r1, d1 = fitted.all_pix2world(gx.ravel(), gy.ravel(), 0)
    r2, d2 = true_wcs.all_pix2world(gx.ravel(), gy.ravel(), 0)
    dra = (r1 - r2) * np.cos(np.radians(d2))
    return np.hypot(dra, d1 - d2) * 3.6e6
