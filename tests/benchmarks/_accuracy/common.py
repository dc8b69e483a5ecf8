"""Helpers shared by the coadd (figure 4) and cell-coadd (figure 5) figures."""

from __future__ import annotations

import numpy as np

from .core import (
    figure,
    jacobian,
    mixture_moments,
    null_figure,
    rel_moment_errors,
    robust_sigma,
    transform_moments,
    weighted_mean_moments,
)

__all__ = ["MIN_SNR", "bits", "flux_figure", "forced_psf_flux", "forced_psf_flux_stamps",
           "input_psf_truth", "objects_in_box", "psf_errors", "psf_figures"]

MIN_SNR = 100.0
#: Planes that spoil a forced PSF flux (star left out) and those reported separately.
_SPOIL = ("BAD", "SAT", "NO_DATA")
_FLAGGED = ("CLIPPED", "REJECTED", "INEXACT_PSF")


def bits(*names) -> np.int32:
    """Mask bits of the named planes as int32 (the coadd masks' dtype)."""
    from store.masks import bits as _store_bits

    return np.int32(_store_bits(*names))


def forced_psf_flux(image, variance, mask, models, x0, y0) -> dict:
    """PSF fluxes with model stamps whose corner pixels are ``(x0, y0)`` (array pixels).

    Cuts the stamps (off-image pixels count as NO_DATA) and calls
    :func:`forced_psf_flux_stamps`.
    """
    from processing.algorithms.centroid import cut_stamps

    half = models.shape[1] // 2
    cx, cy = np.asarray(x0) + half, np.asarray(y0) + half
    img, _ = cut_stamps(np.asarray(image, np.float64), cx, cy, half, fill=0.0)
    var, _ = cut_stamps(np.asarray(variance, np.float64), cx, cy, half, fill=np.inf)
    msk, _ = cut_stamps(np.asarray(mask), cx, cy, half, fill=bits("NO_DATA"))
    return forced_psf_flux_stamps(img, var, msk, models)


def forced_psf_flux_stamps(img, var, msk, models) -> dict:
    """PSF fluxes of ``(n, k, k)`` image / variance / mask stamps aligned with ``models``.

    Uses the pipeline's unweighted PSF fit (:func:`processing.algorithms.photometry.psf_flux`)
    over pixels with a finite variance and no ``_SPOIL`` plane.

    Returns
    -------
    dict
        ``flux``, ``err`` (image units) and booleans ``spoiled`` (some stamp
        pixel unusable) and ``flagged`` (a ``_FLAGGED`` plane within 8 pixels
        of the centre).
    """
    from processing.algorithms.photometry import psf_flux

    half = models.shape[1] // 2
    good = np.isfinite(var) & np.isfinite(img) & ((msk & bits(*_SPOIL)) == 0)
    res = psf_flux(np.where(good, img, 0.0), np.where(good, var, 0.0), good, models)
    off = np.arange(-half, half + 1)
    core = (off[None, :] ** 2 + off[:, None] ** 2) <= 64
    return {"flux": res.flux, "err": res.flux_err, "spoiled": ~good.all(axis=(1, 2)),
            "flagged": ((msk & bits(*_FLAGGED)) != 0)[:, core].any(axis=1)}


def objects_in_box(truth, wcs, x0, y0, width, height, margin=0.0):
    """Indices and array-pixel positions (from ``(x0, y0)``) of true objects in a box."""
    from astropy.wcs.utils import proj_plane_pixel_scales

    cx, cy = x0 + (width - 1) / 2, y0 + (height - 1) / 2
    ra0, dec0 = wcs.all_pix2world([cx], [cy], 0)
    ra, dec = truth.objects["ra"], truth.objects["dec"]
    radius = 0.6 * np.hypot(width, height) * float(np.max(proj_plane_pixel_scales(wcs)))
    near = np.flatnonzero((np.abs(((ra - ra0[0] + 180) % 360 - 180) * np.cos(np.radians(dec0[0])))
                           < radius) & (np.abs(dec - dec0[0]) < radius))
    px, py = wcs.all_world2pix(ra[near], dec[near], 0)
    ax, ay = px - x0, py - y0
    inside = (ax > -0.5 - margin) & (ax < width - 0.5 + margin) & (ay > -0.5 - margin) & (
        ay < height - 0.5 + margin)
    return near[inside], ax[inside], ay[inside]


def input_psf_truth(truth, inputs, target_wcs, x, y, groups, n_groups):
    """True PSF of a coadd at positions, from its inputs' truth.

    Parameters
    ----------
    inputs : list of (visit, detector, weight)
        One per contribution.
    target_wcs : astropy.wcs.WCS
        The coadd frame.
    x, y : numpy.ndarray
        Detector pixel of each contribution.
    groups : numpy.ndarray
        Output group (position) of each contribution.

    Returns
    -------
    mean, mixture : numpy.ndarray
        ``(n_groups, 3)``: the weighted mean of the inputs' true moments (mapped
        to the coadd frame) and the adaptive moments of the weighted mean of
        their true PSF images.
    """
    n = len(inputs)
    adaptive, cont = np.full((n, 3), np.nan), np.full((n, 3), np.nan)
    beta, w = np.full(n, 3.5), np.array([i[2] for i in inputs], float)
    keys = {}
    for k, (v, d, _) in enumerate(inputs):
        keys.setdefault((int(v), int(d)), []).append(k)
    for (v, d), rows in keys.items():
        rows = np.asarray(rows)
        field = truth.psf_field(v, d)
        if field is None:
            continue
        wcs = truth.wcs(v, d)

        def to_target(px, py, wcs=wcs):
            ra, dec = wcs.all_pix2world(px, py, 0)
            return target_wcs.all_world2pix(ra, dec, 0)

        a = jacobian(to_target, x[rows], y[rows])
        vals = field(x[rows], y[rows])
        adaptive[rows] = transform_moments(vals[:, :3], a)
        cont[rows] = transform_moments(vals[:, 3:], a)
        beta[rows] = truth.visit_detector[(v, d)]["psf_beta"]
    ok = np.isfinite(adaptive).all(axis=1)
    mean = weighted_mean_moments(adaptive[ok], w[ok], groups[ok], n_groups)
    mix = mixture_moments(cont[ok], beta[ok], w[ok], groups[ok], n_groups)
    return mean, mix


def psf_errors(model, mean, mix) -> dict:
    """Worst relative moment error per position against both truths (see :func:`psf_figures`)."""
    e_mean = np.abs(rel_moment_errors(model, mean)).max(axis=1)
    e_mix = np.abs(rel_moment_errors(model, mix)).max(axis=1)
    return {"mean": e_mean, "mix": e_mix}


def psf_figures(err_mean, err_mix, what: str) -> dict:
    """The two PSF figures: against the mean of true moments and the moments of the mean PSF."""
    out = {}
    for name, e, truth_note in (
            ("psf_moments_vs_mean_of_true_moments", err_mean,
             "weighted mean (coadd weights) of the inputs' true adaptive moments, mapped to "
             "the coadd frame by the local WCS Jacobian"),
            ("psf_moments_vs_moments_of_mean_true_psf", err_mix,
             "adaptive moments of the weighted mean of the inputs' true pixel-integrated "
             "Moffat PSFs (truth continuous moments and beta, mapped to the coadd frame)")):
        e = e[np.isfinite(e)]
        if e.size == 0:
            out[name] = null_figure(f"no {what} with a true PSF", "< 0.01")
            continue
        out[name] = figure(e.max(), e.size, f"< 0.01 in every {what} (value = max of "
                           "|rel. error| of Ixx, Iyy, Ixy/(trace/2))", e.max() < 0.01,
                           median=float(np.median(e)), fraction_within_1pct=float(
                               np.mean(e < 0.01)), truth=truth_note)
    return out


def flux_figure(ratios, flagged, target, limit, note, **extra) -> dict:
    """Median flux ratio figure (value = |median - 1|) with its scatter."""
    r = np.asarray(ratios, float)
    if r.size == 0:
        return null_figure("no bright isolated star", target)
    med = float(np.median(r))
    return figure(abs(med - 1), r.size, target, abs(med - 1) < limit, median_ratio=med,
                  robust_sigma=robust_sigma(r), fraction_within_1pct=float(
                      np.mean(np.abs(r - 1) < 0.01)),
                  n_flagged_left_out=int(np.sum(flagged)), note=note, **extra)


