"""Single-frame source measurement (SingleFrameMeasurementTask-like), batched over sources.

:func:`measure_sources` runs, for every detected peak, the plugins of
``reference/algorithms.md`` 6.4: SdssCentroid, adaptive moments (SdssShape) and
the PSF model's moments, PSF flux, circular apertures, Gaussian flux, local
background, variance, footprint area, pixel flags and the two extendedness
classifiers, and returns one row per source with the ``dp1_Source`` column
names (instrumental units: image counts).

Neighbours are removed with a hybrid of Rubin's two approaches:

* **other families** (sources with a different top-level parent): when a
  segmentation image is given, their labelled pixels are *replaced with noise*
  (Gaussian, from the variance plane, seeded), as meas_base's NoiseReplacer;
* **siblings** (children of the same blended parent): their PSF fluxes are
  fitted *jointly*, then every deblended child's fitted PSF model is
  *subtracted* and each child is measured with only its own model added back.
  Wings of other families' children falling outside their segments are
  removed the same way.  Parents (sources that have children) are measured on
  their undeblended family.

Work is done on stamps cut around each source, in chunks that never split a
family; the per-source loops are compiled (``_measure_kernels``), and the local
background, variance and pixel flags read the full-frame planes directly.  The
children's fitted models are kept as tiles where they land, not as a
full-frame image.  Apertures larger than the stamp are summed on one global
"everything-removed" image (children subtracted, all segments replaced by
noise) plus the stamp difference between the source's own cleaned image and
that global image.  Own-family pixels beyond the stamp are missing from those
large apertures; this sets their ``_flag``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from store.masks import bits
from store.psf import Psf

from ._measure_kernels import pixel_flag_bits, recentroid_stamps, variance_median_loop
from ._measure_support import (
    CENTER_FLAGS,
    PIXEL_PLANES,
    Scene,
    aperture_column,
    cut,
    embed,
    empty_columns,
    family_chunks,
    to_table,
)
from .apertures import APERTURE_RADII, aperture_flux, aperture_flux_stamps
from .centroid import centroid_window_half, sdss_centroid_stamps
from .moments import adaptive_moments, determinant_radius, psf_moments, psf_moments_at
from .photometry import gaussian_flux, local_background_image, psf_flux, psf_flux_blend
from .psf_images import model_stamps, nearest_pixel

__all__ = ["MeasurementConfig", "aperture_column", "measure_sources"]


@dataclass(frozen=True)
class MeasurementConfig:
    """Settings of :func:`measure_sources`.

    Attributes
    ----------
    radii : tuple of float
        Circular aperture radii, pixels.
    stamp_half_size : int
        Half-size of the per-source cleaned stamps (at least the PSF kernel's), pixels.
    psf_bad_planes, aperture_bad_planes : tuple of str
        Mask planes excluded from the PSF fit / flagging an aperture.
    shape_max_iter, shape_tol1, shape_tol2 : int, float, float
        Adaptive-moment iteration limits (SdssShape defaults).
    centroid_max_dist_to_peak : float
        Centroids farther than this from the peak are reset to it, pixels.
    background_inner, background_outer : float
        Local-background annulus radii in PSF sigmas (meas_base: 7 and 15).
    background_bad_planes : tuple of str
        Planes excluded from the local background and the variance value.
    background_n_sigma, background_n_iter : float, int
        Clipping of the local background.
    extendedness_flux_ratio : float
        ``extendedness = 1`` when the PSF-normalised ``psfFlux / gaussianFlux``
        falls below this (meas_base ``fluxRatio``).
    size_extendedness_exponent : float
        Exponent of the PSF trace in the size-extendedness chi (meas_base 0.5).
    footprint_radius : float
        Without segmentation, the pixel-flag footprint is a circle of this many PSF sigmas.
    replace_with_noise, subtract_children : bool
        Neighbour-removal switches (see module docstring).
    noise_seed : int
        Seed of the replacement noise.
    chunk_size : int
        Sources per processing chunk (bounds memory).
    """

    radii: tuple[float, ...] = APERTURE_RADII
    stamp_half_size: int = 20
    psf_bad_planes: tuple[str, ...] = ("BAD", "SAT", "NO_DATA")
    aperture_bad_planes: tuple[str, ...] = ("BAD", "SAT", "NO_DATA")
    shape_max_iter: int = 100
    shape_tol1: float = 1e-5
    shape_tol2: float = 1e-4
    centroid_max_dist_to_peak: float = 2.0
    background_inner: float = 7.0
    background_outer: float = 15.0
    background_bad_planes: tuple[str, ...] = ("BAD", "SAT", "NO_DATA", "DETECTED",
                                              "DETECTED_NEGATIVE")
    background_n_sigma: float = 3.0
    background_n_iter: int = 3
    extendedness_flux_ratio: float = 0.95
    size_extendedness_exponent: float = 0.5
    footprint_radius: float = 3.0
    replace_with_noise: bool = True
    subtract_children: bool = True
    noise_seed: int = 0
    chunk_size: int = 500


def measure_sources(
    image: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    psf: Psf,
    x_peak,
    y_peak,
    *,
    segmentation: np.ndarray | None = None,
    ids=None,
    parents=None,
    config: MeasurementConfig | None = None,
) -> pa.Table:
    """Measure every source of a background-subtracted image.

    Parameters
    ----------
    image, variance : numpy.ndarray
        2-D image (counts) and its variance (counts^2), indexed ``[y, x]``.
    mask : numpy.ndarray
        2-D integer mask with :mod:`store.masks` bits.
    psf : store.psf.Psf
        PSF model of the image.
    x_peak, y_peak : array_like
        ``(n,)`` peak positions, array pixel coordinates.
    segmentation : numpy.ndarray, optional
        2-D integer labels: 0 for sky, otherwise the id of the source (child
        id for deblended pixels) owning the pixel.
    ids : array_like, optional
        ``(n,)`` source ids (default 1..n).
    parents : array_like, optional
        ``(n,)`` parent ids, 0 for sources that are not deblended children.
    config : MeasurementConfig, optional
        Settings.

    Returns
    -------
    pyarrow.Table
        One row per source (input order), ``dp1_Source`` column names, units in
        the field metadata.
    """
    config = config or MeasurementConfig()
    image = np.asarray(image)
    if image.ndim != 2 or np.shape(variance) != image.shape or np.shape(mask) != image.shape:
        raise ValueError(f"image, variance and mask must be 2-D of one shape, got "
                         f"{image.shape}, {np.shape(variance)}, {np.shape(mask)}")
    xp = np.atleast_1d(np.asarray(x_peak, dtype=float))
    yp = np.atleast_1d(np.asarray(y_peak, dtype=float))
    n = xp.size
    ids = np.arange(1, n + 1, dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
    parents = np.zeros(n, dtype=np.int64) if parents is None else np.asarray(parents, np.int64)
    if yp.size != n or ids.size != n or parents.size != n:
        raise ValueError(f"x_peak, y_peak, ids and parents must have one length, got "
                         f"{n}, {yp.size}, {ids.size}, {parents.size}")
    if n == 0:
        warnings.warn("no sources to measure; returning an empty table", stacklevel=2)
        return to_table(empty_columns(0, config), config)
    family = np.where(parents != 0, parents, ids)
    is_child = parents != 0
    n_child = np.zeros(n, dtype=np.int64)
    par_ids, counts = np.unique(parents[is_child], return_counts=True)
    hit = np.isin(ids, par_ids)
    n_child[hit] = counts[np.searchsorted(par_ids, ids[hit])]
    is_parent = n_child > 0
    ny, nx = image.shape
    sigma = float(determinant_radius(*psf_moments_at(psf, (nx - 1) / 2, (ny - 1) / 2)))
    scene = Scene(image, variance, mask, segmentation, ids, family, config)
    cols = empty_columns(n, config)
    cols["sourceId"][:] = ids
    cols["parentSourceId"][:] = parents
    cols["deblend_nChild"][:] = n_child
    chunks = family_chunks(family, config.chunk_size)

    half = max(config.stamp_half_size, psf.kernel_size // 2)
    large = [r for r in config.radii if r > half - 0.5]
    models = {}
    for chunk in chunks:
        models[id(chunk)] = _pass_one(scene, psf, chunk, xp, yp, family, is_child, sigma,
                                      config, cols)
    if config.subtract_children and is_child.any():
        parts = []
        for chunk in chunks:
            stamps, ox, oy = models[id(chunk)]
            sel = is_child[chunk] & np.isfinite(cols["psfFlux_instFlux"][chunk])
            parts.append((stamps[sel], ox[sel], oy[sel], cols["psfFlux_instFlux"][chunk][sel]))
        scene.set_children_model(*(np.concatenate(p) for p in zip(*parts, strict=True)))
    if large:
        scene.remove_children()
    for chunk in chunks:
        _pass_two(scene, psf, chunk, models[id(chunk)][0], family, is_child, is_parent, sigma,
                  half, config, cols)
    _large_apertures(scene, cols, large, config)
    _classify(cols, config)
    if segmentation is not None:
        own = scene.own_area.copy()
        # A parent's footprint is its whole family: its own pixels and its children's.
        fam_keys, fam_index = np.unique(family, return_inverse=True)
        fam_total = np.bincount(fam_index, weights=own).astype(np.int64)
        own[is_parent] = fam_total[np.searchsorted(fam_keys, ids[is_parent])]
        cols["footprintArea_value"][:] = own
    return to_table(cols, config)


# ------------------------------------------------------------------------------- the passes


def _pass_one(scene, psf, idx, xp, yp, family, is_child, sigma, config, cols):
    """Centroids and PSF fluxes (joint for the children of a blend) of one chunk."""
    ny, nx = scene.shape
    fam = family[idx]
    ixp, iyp = nearest_pixel(xp[idx]), nearest_pixel(yp[idx])
    off = (ixp < 0) | (ixp >= nx) | (iyp < 0) | (iyp >= ny)
    hc = centroid_window_half(sigma)
    img, on, _ = scene.stamps(ixp, iyp, hc, fam)
    var = cut(scene.variance, ixp, iyp, hc, dtype=np.float64)
    dx, dy, ex, ey, fl = sdss_centroid_stamps(img, var, sigma,
                                              max_dist_to_peak=config.centroid_max_dist_to_peak)
    edge = ~on.all(axis=(1, 2))
    cols["x"][idx] = np.where(off, xp[idx], ixp + dx)
    cols["y"][idx] = np.where(off, yp[idx], iyp + dy)
    cols["centroid_flag_edge"][idx] = edge
    for key, name in (("no_second_derivative", "noSecondDerivative"),
                      ("almost_no_second_derivative", "almostNoSecondDerivative"),
                      ("not_at_maximum", "notAtMaximum"), ("reset_to_peak", "resetToPeak"),
                      ("bad_error", "badError")):
        cols[f"centroid_flag_{name}"][idx] = fl[key] | off
    cols["centroid_flag"][idx] = (edge | fl["no_second_derivative"] | fl["reset_to_peak"]
                                  | fl["almost_no_second_derivative"] | fl["bad_error"] | off)
    cols["pixelFlags_offimage"][idx] = off

    x, y = cols["x"][idx].copy(), cols["y"][idx].copy()
    models, ox, oy = model_stamps(psf, x, y)
    h = models.shape[1] // 2
    img, on, _ = scene.stamps(ox + h, oy + h, h, fam)
    var, msk = scene.planes(ox + h, oy + h, h)
    psf_bad = bits(config.psf_bad_planes)
    res = psf_flux(img, var, on & ((msk & psf_bad) == 0), models, off_image=~on)
    fields = [res.flux, res.flux_err, res.area, res.chi2, res.npixels, res.flag_edge,
              res.flag_no_good_pixels]
    # Children of one blend: amplitudes solved together on the union of their stamps,
    # then each child is re-centroided with its siblings' fitted models subtracted (a
    # bright neighbour's gradient would pull it) and the blend is fitted again.
    child = is_child[idx]
    keys, counts = np.unique(fam[child], return_counts=True)
    keys = keys[counts > 1]
    groups = [np.nonzero(child & (fam == key))[0] for key in keys]
    if groups:
        fits = [_joint_fit(scene, key, members, models, ox, oy, psf_bad)
                for key, members in zip(keys, groups, strict=True)]
        _recentroid(fits, groups, models, ox, oy, x, y, ex, ey, sigma, config)
        every = np.concatenate(groups)
        models[every], ox[every], oy[every] = model_stamps(psf, x[every], y[every])
        for key, members in zip(keys, groups, strict=True):
            fit = _joint_fit(scene, key, members, models, ox, oy, psf_bad)[0]
            for field, value in zip(fields, (fit.flux, fit.flux_err, fit.area, fit.chi2,
                                             fit.npixels, fit.flag_edge,
                                             fit.flag_no_good_pixels), strict=True):
                field[members] = value
    cols["x"][idx], cols["y"][idx] = x, y
    cols["xErr"][idx] = np.where(off, np.nan, ex)
    cols["yErr"][idx] = np.where(off, np.nan, ey)
    for name, value in zip(("instFlux", "instFluxErr", "area", "chi2", "npixels", "flag_edge",
                            "flag_noGoodPixels"), fields, strict=True):
        cols[f"psfFlux_{name}"][idx] = value
    cols["psfFlux_flag"][idx] = fields[5] | fields[6] | ~np.isfinite(fields[0]) | off
    return models.astype(np.float32), ox, oy


def _joint_fit(scene, key, members, models, ox, oy, psf_bad):
    """Joint PSF fit of one blend's children on the union of their model stamps."""
    k = models.shape[1]
    x0, y0 = int(ox[members].min()), int(oy[members].min())
    x1, y1 = int(ox[members].max()) + k, int(oy[members].max()) + k
    rimg, ron, rvar, rmsk = scene.region(x0, y0, x1, y1, key)
    fit = psf_flux_blend(rimg, rvar, ron & ((rmsk & psf_bad) == 0), models[members],
                         ox[members] - x0, oy[members] - y0)
    return fit, rimg, rvar, x0, y0


def _recentroid(fits, groups, models, ox, oy, x, y, ex, ey, sigma, config):
    """Centroid each child of a blend on its region minus its siblings' fitted models.

    Blends whose joint fit failed keep their centroids; so do children whose
    centroid fails.  All children are centroided in one batch.
    """
    hc = centroid_window_half(sigma)
    size = 2 * hc + 1
    stamps, variances, ons, rows, origins = [], [], [], [], []
    for (fit, rimg, rvar, x0, y0), members in zip(fits, groups, strict=True):
        if not np.all(np.isfinite(fit.flux)):
            continue
        m = members.size
        cx, cy = nearest_pixel(x[members] - x0), nearest_pixel(y[members] - y0)
        out, out_var = np.empty((m, size, size)), np.empty((m, size, size))
        out_on = np.empty((m, size, size), dtype=bool)
        recentroid_stamps(rimg, rvar, np.ascontiguousarray(models[members]),
                          ox[members] - x0, oy[members] - y0, fit.flux, cx, cy, hc,
                          out, out_var, out_on)
        stamps.append(out)
        variances.append(out_var)
        ons.append(out_on)
        rows.append(members)
        origins.append(np.c_[cx + 0.0, cy + 0.0, np.full(m, x0 + 0.0), np.full(m, y0 + 0.0)])
    if not rows:
        return
    dx, dy, dx_err, dy_err, fl = sdss_centroid_stamps(
        np.concatenate(stamps), np.concatenate(variances), sigma,
        max_dist_to_peak=config.centroid_max_dist_to_peak)
    edge = ~np.concatenate(ons).all(axis=(1, 2))
    failed = (edge | fl["no_second_derivative"] | fl["reset_to_peak"]
              | fl["almost_no_second_derivative"] | fl["bad_error"])
    rows = np.concatenate(rows)
    cx, cy, x0, y0 = np.concatenate(origins).T
    ok = ~failed
    i = rows[ok]
    x[i], y[i] = (cx[ok] + dx[ok]) + x0[ok], (cy[ok] + dy[ok]) + y0[ok]
    ex[i], ey[i] = dx_err[ok], dy_err[ok]


def _pass_two(scene, psf, idx, models, family, is_child, is_parent, sigma, half, config, cols):
    """Shapes, apertures, Gaussian flux, background, flags on neighbour-cleaned stamps."""
    fam = family[idx]
    child, parent = is_child[idx], is_parent[idx]
    x, y = cols["x"][idx], cols["y"][idx]
    h = models.shape[1] // 2
    ixc, iyc = nearest_pixel(x), nearest_pixel(y)
    own = None
    if scene.model is not None:
        amp = np.where(child, np.nan_to_num(cols["psfFlux_instFlux"][idx]), 0.0)
        own = embed(models.astype(float), half) * amp[:, None, None]
    img, on, border_own = scene.stamps(ixc, iyc, half, fam, subtract=~parent, own=own)
    var, msk = scene.planes(ixc, iyc, half)
    xs, ys = x - ixc + half, y - iyc + half

    # Shapes: source and PSF model, on a crop big enough for PSF-sized sources.
    hm = min(half, max(12, int(np.ceil(6 * sigma))))
    pxx, pyy, pxy = psf_moments(psf, x, y, max_half=hm)
    cols["ixxPSF"][idx], cols["iyyPSF"][idx], cols["ixyPSF"][idx] = pxx, pyy, pxy
    good = on & ((msk & bits(config.psf_bad_planes)) == 0)
    shape_args = dict(max_iter=config.shape_max_iter, tol1=config.shape_tol1,
                      tol2=config.shape_tol2)
    c = slice(half - hm, half + hm + 1)
    init = np.stack([pxx, pyy, pxy], axis=1)
    mom = adaptive_moments(img[:, c, c], xs - (half - hm), ys - (half - hm), good=good[:, c, c],
                           initial=init, **shape_args)
    shape = {f: getattr(mom, f).copy() for f in ("xx", "yy", "xy", "flag_not_converged",
                                                 "flag_bad_shape", "flag_shift")}
    retry = np.nonzero(mom.flag_bad_shape)[0] if hm < half else np.zeros(0, dtype=int)
    if retry.size:  # large sources: again on the whole stamp
        big = adaptive_moments(img[retry], xs[retry], ys[retry], good=good[retry],
                               initial=init[retry], **shape_args)
        for f in shape:
            shape[f][retry] = getattr(big, f)
    cols["ixx"][idx], cols["iyy"][idx], cols["ixy"][idx] = shape["xx"], shape["yy"], shape["xy"]
    cols["shape_flag_maxIter"][idx] = shape["flag_not_converged"]
    cols["shape_flag_unweightedBad"][idx] = shape["flag_bad_shape"]
    cols["shape_flag_shift"][idx] = shape["flag_shift"]
    shape_bad = shape["flag_not_converged"] | shape["flag_bad_shape"] | shape["flag_shift"]
    cols["shape_flag"][idx] = shape_bad

    # Gaussian flux with the measured shape (PSF shape when that failed).
    gxx = np.where(shape_bad, pxx, shape["xx"])
    gyy = np.where(shape_bad, pyy, shape["yy"])
    gxy = np.where(shape_bad, pxy, shape["xy"])
    gf, gfe = gaussian_flux(img, var, good, xs, ys, gxx, gyy, gxy)
    cols["gaussianFlux_instFlux"][idx], cols["gaussianFlux_instFluxErr"][idx] = gf, gfe
    cols["gaussianFlux_flag"][idx] = shape_bad | ~np.isfinite(gf) | cols["centroid_flag"][idx]
    # Gaussian flux of the PSF model itself: normalises extendedness.
    mc = h + x - ixc, h + y - iyc
    cols["_gauss_psf"][idx] = gaussian_flux(models.astype(float), np.zeros(models.shape), None,
                                            mc[0], mc[1], pxx, pyy, pxy)[0]

    # Apertures: small ones on the cleaned stamps, large ones in _large_apertures.
    bad_ap = (msk & bits(config.aperture_bad_planes)) != 0
    small = [r for r in config.radii if r <= half - 0.5]
    large = [r for r in config.radii if r > half - 0.5]
    for r, ap in zip(small, aperture_flux_stamps(img, var, bad_ap, xs, ys, small,
                                                 off_image=~on), strict=True):
        stem = aperture_column(r)
        cols[f"{stem}_instFlux"][idx], cols[f"{stem}_instFluxErr"][idx] = ap.flux, ap.flux_err
        cols[f"{stem}_flag"][idx] = ap.flag
        cols[f"{stem}_flag_apertureTruncated"][idx] = ap.flag_truncated
    if large:
        diff = img - cut(scene.removed, ixc, iyc, half)
        # Own-family pixels on the stamp border continue beyond it.
        lost = np.zeros(idx.size, dtype=bool) if border_own is None else border_own
        for r, ap in zip(large, aperture_flux_stamps(diff, np.zeros_like(diff), None, xs, ys,
                                                     large), strict=True):
            stem = aperture_column(r)
            cols[f"{stem}_instFlux"][idx] = ap.flux  # the global part is added later
            cols[f"{stem}_flag"][idx] = lost

    # Pixel flags over the footprint and the central 3x3 (read from the full planes).
    n = idx.size
    foot_bits, centre_bits = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    edge = np.empty(n, dtype=bool)
    pixel_flag_bits(scene.mask, scene.seg, scene.labels, scene.lut, ixc, iyc, half,
                    np.ascontiguousarray(cols["sourceId"][idx]), np.ascontiguousarray(fam),
                    np.ascontiguousarray(parent), float(config.footprint_radius * sigma) ** 2,
                    foot_bits, centre_bits, edge)
    for name, plane in PIXEL_PLANES.items():
        cols[f"pixelFlags_{name}"][idx] = (foot_bits & bits(plane)) != 0
        if name in CENTER_FLAGS:
            cols[f"pixelFlags_{name}Center"][idx] = (centre_bits & bits(plane)) != 0
    # A footprint cut by the image boundary is an edge source even without EDGE bits.
    cols["pixelFlags_edge"][idx] |= edge

    # Local background (annulus in PSF sigmas) and the background variance.
    bg_bad = bits(config.background_bad_planes)
    value, stdev, used = local_background_image(
        scene.image, scene.mask, bg_bad, ixc, iyc, config.background_inner * sigma,
        config.background_outer * sigma, labels=scene.labels, n_sigma=config.background_n_sigma,
        n_iter=config.background_n_iter)
    cols["localBackground_instFlux"][idx], cols["localBackground_instFluxErr"][idx] = value, stdev
    cols["localBackground_flag_noGoodPixels"][idx] = used == 0
    cols["localBackground_flag"][idx] = ~np.isfinite(value)
    vv, empty = np.empty(n), np.empty(n, dtype=bool)
    variance_median_loop(scene.variance, scene.mask, scene.labels, bg_bad, ixc, iyc, half, vv,
                         empty)
    cols["variance_value"][idx] = vv
    cols["variance_flag_emptyFootprint"][idx] = empty
    cols["variance_flag"][idx] = ~np.isfinite(vv)


def _large_apertures(scene, cols, large, config):
    """Add the global ("everything removed") part of the apertures larger than the stamps."""
    if not large:
        return
    res = aperture_flux(scene.removed, scene.variance, scene.mask, cols["x"], cols["y"], large,
                        bad_bits=bits(config.aperture_bad_planes))
    for r, ap in zip(large, res, strict=True):
        stem = aperture_column(r)
        cols[f"{stem}_instFlux"] += ap.flux
        cols[f"{stem}_instFluxErr"][:] = ap.flux_err
        cols[f"{stem}_flag"] |= ap.flag
        cols[f"{stem}_flag_apertureTruncated"][:] = ap.flag_truncated


def _classify(cols, config):
    """Size- and flux-ratio extendedness (meas_base ClassificationSizeExtendedness/Extendedness)."""
    t_obj = cols["ixx"] + cols["iyy"]
    t_psf = cols["ixxPSF"] + cols["iyyPSF"]
    with np.errstate(invalid="ignore", divide="ignore"):
        chi = (t_obj - t_psf) / t_psf ** config.size_extendedness_exponent
        size = 1.0 - np.exp(-0.5 * chi * chi)
        ratio = cols["_gauss_psf"] * cols["psfFlux_instFlux"] / cols["gaussianFlux_instFlux"]
    bad = cols["shape_flag"] | ~np.isfinite(size)
    cols["sizeExtendedness"][:] = np.where(bad, np.nan, size)
    cols["sizeExtendedness_flag"][:] = bad
    bad = cols["psfFlux_flag"] | cols["gaussianFlux_flag"] | ~np.isfinite(ratio)
    cols["extendedness"][:] = np.where(bad, np.nan, (ratio < config.extendedness_flux_ratio) * 1.0)
    cols["extendedness_flag"][:] = bad
