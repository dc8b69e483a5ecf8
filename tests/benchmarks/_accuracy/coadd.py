"""Figure 4: the ``deep_coadd`` of every patch and band against the truth."""

from __future__ import annotations

import itertools

import numpy as np

from .common import (
    MIN_SNR,
    bits,
    flux_figure,
    forced_psf_flux,
    input_psf_truth,
    objects_in_box,
    psf_errors,
    psf_figures,
)
from .core import (
    FWHM_PER_SIGMA,
    artefact_samples,
    disk_mask,
    figure,
    isolated,
    null_figure,
    robust_sigma,
)

__all__ = ["coadd_figures"]

#: Magnitude bins of the CLIPPED-near-stars breakdown.
_MAG_BINS = (0.0, 18.0, 20.0, 22.0, 99.0)


class _DetectorSizes:
    """Detector sizes of the inputs (from the visit summaries), read once per visit."""

    def __init__(self, repo, collection, instrument):
        self.repo, self.collection, self.instrument = repo, collection, instrument
        self._cats: dict = {}

    def __call__(self, visit: int, detector: int):
        from processing.visit_summary import VisitSummaryCatalog

        if visit not in self._cats:
            ref = self.repo.find_dataset("visit_summary", {"instrument": self.instrument,
                                                           "visit": visit},
                                         collections=self.collection)
            self._cats[visit] = VisitSummaryCatalog.from_table(self.repo.get(ref)) if ref else None
        cat = self._cats[visit]
        if cat is None or detector not in cat:
            return None
        row = cat.row(detector)
        return int(row["width"]), int(row["height"])


def _primary_values(repo, ref, iy, ix) -> np.ndarray:
    """Values of a FITS image dataset (primary array) at pixels, read through a memory map.

    ``compare_warp_artifact_mask`` and ``deep_coadd_n_image`` are whole-patch
    arrays; only the pages holding the asked pixels are read.
    """
    from astropy.io import fits

    with fits.open(repo.path_of(ref), memmap=True) as hdul:
        return np.asarray(hdul[0].data[iy, ix]).astype(np.int64)


def _photometry(coadd, truth, band, idx, ax, ay, snr_est):
    """Bright isolated stars: PSF-flux ratios (clean), flagged booleans, r=20 px aperture ratios."""
    from processing.algorithms.apertures import aperture_flux
    from processing.algorithms.psf_images import model_stamps

    x0, y0 = coadd.xy0
    star = np.flatnonzero(truth.is_star[idx] & (snr_est > 0.5 * MIN_SNR))
    keep = star[isolated(truth.objects["ra"], truth.objects["dec"], truth.flux(band),
                         truth.hlr, idx[star])]
    if keep.size == 0:
        return np.zeros(0), np.zeros(0, bool), np.zeros(0)
    flux = truth.flux(band)[idx[keep]]
    models, mx0, my0 = model_stamps(coadd.psf, ax[keep] + x0, ay[keep] + y0)
    res = forced_psf_flux(coadd.image, coadd.variance, coadd.mask, models, mx0 - x0, my0 - y0)
    ok = ~res["spoiled"] & (flux / res["err"] > MIN_SNR)
    clean = ok & ~res["flagged"]
    # A 20-pixel aperture tells the image's photometry from the PSF model's.
    ap = aperture_flux(coadd.image, coadd.variance, None, ax[keep][clean], ay[keep][clean],
                       radii=[20.0])[0].flux / flux[clean]
    return res["flux"][clean] / flux[clean], res["flagged"][ok], ap


def _noise(coadd, ax, ay, radius):
    """Robust scatter of image / sqrt(variance) on empty sky, per pixel and on 8x8 sums."""
    h, w = coadd.image.shape
    var = coadd.variance
    empty = ~disk_mask((h, w), ax, ay, radius)
    empty &= (coadd.mask & bits("NO_DATA", "BAD", "SAT", "EDGE", "CLIPPED", "REJECTED",
                                "SENSOR_EDGE", "INTRP", "CR")) == 0
    empty &= np.isfinite(var) & (var > 0) & np.isfinite(coadd.image)
    if empty.sum() < 1000:
        return None
    per_pixel = robust_sigma(coadd.image[empty] / np.sqrt(var[empty]))
    b, hb, wb = 8, h // 8 * 8, w // 8 * 8

    def block_sum(a):
        return a[:hb, :wb].reshape(hb // b, b, wb // b, b).sum(axis=(1, 3))

    full = block_sum(empty.astype(np.int32)) == b * b
    s_img = block_sum(np.where(empty, coadd.image, 0.0))[full]
    s_var = block_sum(np.where(empty, var, 0.0))[full]
    binned = robust_sigma(s_img / np.sqrt(s_var)) if s_img.size > 100 else float("nan")
    return per_pixel, int(empty.sum()), binned


def _artefact_points(truth, coadd, used, fwhm):
    """Truth artefacts of the used inputs in coadd array pixels.

    Returns a list of ``(kind, visit, ix, iy, flux_share, radius)``; the radius
    (pixels) is the artefact's reach for the CLIPPED-near-stars exclusion.
    """
    arts = truth.artefacts
    if arts is None:
        return []
    x0, y0 = coadd.xy0
    h, w = coadd.image.shape
    out = []
    for r in arts.itertuples():
        if (int(r.visit), int(r.detector)) not in used:
            continue
        x, y, share = artefact_samples(r.kind, r.x0, r.y0, r.x1, r.y1, r.size, r.value)
        ra, dec = truth.wcs(r.visit, r.detector).all_pix2world(x, y, 0)
        px, py = coadd.wcs.all_world2pix(ra, dec, 0)
        ix, iy = np.floor(px - x0 + 0.5).astype(int), np.floor(py - y0 + 0.5).astype(int)
        reach = {"ghost": r.size, "transient": 2 * fwhm}.get(r.kind, 2.0)
        inside = (ix > -reach) & (ix < w + reach) & (iy > -reach) & (iy < h + reach)
        if inside.any():
            out.append((r.kind, int(r.visit), ix[inside], iy[inside], share[inside], reach))
    return out


def _artefact_tally(repo, collection, coadd, did, instrument, points, n_image_ref) -> dict:
    """Per kind: [flux, excluded, repaired-only, count, flux where N >= 3, excluded there]."""
    from processing.tasks.assemble_coadd import AssembleCoaddConfig

    h, w = coadd.image.shape
    clipped, cr = bits("CLIPPED"), bits("CR")
    bad = bits(*AssembleCoaddConfig().bad_mask_planes)  # the planes the coadd rejects
    tally: dict = {}
    by_visit: dict = {}
    for kind, visit, ix, iy, share, _ in points:
        inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
        if kind in ("cosmic_ray", "satellite") and inside.any():
            by_visit.setdefault(visit, []).append((kind, ix[inside], iy[inside], share[inside]))
    for visit, parts in by_visit.items():
        kind = np.concatenate([np.full(p[1].size, p[0]) for p in parts])
        start = np.cumsum([0] + [p[1].size for p in parts])
        ix, iy, share = (np.concatenate([p[k] for p in parts]) for k in (1, 2, 3))
        excl = (coadd.mask[iy, ix] & clipped) != 0
        repaired = np.zeros(ix.size, bool)
        ref = repo.find_dataset("compare_warp_artifact_mask",
                                {**did, "instrument": instrument, "visit": visit},
                                collections=collection)
        if ref is not None:
            am = _primary_values(repo, ref, iy, ix)
            excl |= (am & (clipped | bad)) != 0
            repaired = (am & cr) != 0
        # Inputs at the pixel before this visit's exclusion (deep_coadd_n_image counts the
        # accepted ones): the number safe-clip decided among.
        deep = (_primary_values(repo, n_image_ref, iy, ix) + excl >= 3
                if n_image_ref is not None else np.zeros(ix.size, bool))
        for a, b in itertools.pairwise(start):
            sl = slice(a, b)
            e, rp, dp, sh = excl[sl], repaired[sl], deep[sl], share[sl]
            t = tally.setdefault(str(kind[a]), np.zeros(6))
            t += [sh.sum(), sh[e].sum(), sh[~e & rp].sum(), 1, sh[dp].sum(), sh[dp & e].sum()]
    return tally


def _clipped_near_stars(coadd, truth, band, idx, ax, ay, fwhm, points) -> np.ndarray:
    """``(2, n_bins)`` pixels within 2 FWHM of true stars away from artefacts: total, CLIPPED."""
    h, w = coadd.image.shape
    art = np.zeros((h, w), bool)
    for _, _, ix, iy, _, reach in points:
        art |= disk_mask((h, w), ix, iy, reach)
    mag = truth.mag(band)[idx]
    out = np.zeros((2, len(_MAG_BINS) - 1), np.int64)
    usable = ((coadd.mask & bits("NO_DATA")) == 0) & ~art
    for k in range(len(_MAG_BINS) - 1):
        s = truth.is_star[idx] & (mag >= _MAG_BINS[k]) & (mag < _MAG_BINS[k + 1])
        disk = disk_mask((h, w), ax[s], ay[s], 2 * fwhm) & usable
        out[:, k] = disk.sum(), ((coadd.mask[disk] & bits("CLIPPED")) != 0).sum()
    return out


def _psf_nodes(repo, coadd, truth, sel, sizes, n_image_ref):
    """PSF errors at the PSF nodes whose true input count equals the coadd's N image.

    The nodes of a GridPsf, or a 9 x 9 grid over the coadd for a PSF evaluated
    anywhere (CoaddPsf).
    """
    from processing.algorithms.coadd_psf import psf_grid_centers
    from processing.algorithms.moments import psf_moments

    if np.ndim(getattr(coadd.psf, "x_centers", None)) == 1:
        xc, yc = coadd.psf.x_centers, coadd.psf.y_centers
    else:
        xc, yc = psf_grid_centers(coadd.bbox, 9, 9)
    nx, ny = (a.ravel() for a in np.meshgrid(xc, yc))
    ra, dec = coadd.wcs.all_pix2world(nx, ny, 0)
    inputs, gx, gy, groups = [], [], [], []
    for v, d, wt, u in zip(sel["visit"], sel["detector"], sel["weight"], sel["used"],
                           strict=True):
        size = sizes(int(v), int(d)) if u else None
        if size is None or (int(v), int(d)) not in truth.visit_detector:
            continue
        px, py = truth.wcs(v, d).all_world2pix(ra, dec, 0)
        for k in np.flatnonzero((px > -0.5) & (px < size[0] - 0.5) & (py > -0.5)
                                & (py < size[1] - 0.5)):
            inputs.append((v, d, wt))
            gx.append(px[k])
            gy.append(py[k])
            groups.append(k)
    count = np.bincount(np.asarray(groups, int), minlength=nx.size)
    n_image = (_primary_values(repo, n_image_ref,
                               np.floor(ny - coadd.xy0[1] + 0.5).astype(int),
                               np.floor(nx - coadd.xy0[0] + 0.5).astype(int))
               if n_image_ref is not None else count)
    good = (count > 0) & (count == n_image)
    skipped = np.array([(count == 0).sum(), ((count > 0) & (count != n_image)).sum()])
    if not inputs or not good.any():
        return None, skipped
    model = np.column_stack(psf_moments(coadd.psf, nx, ny))
    mean, mix = input_psf_truth(truth, inputs, coadd.wcs, np.array(gx), np.array(gy),
                                np.array(groups), nx.size)
    errs = psf_errors(model, mean, mix)
    return {k: v[good] for k, v in errs.items()}, skipped


def coadd_figures(repo, collection: str, truth, max_patches: int | None = None,
                  where: str | None = None) -> dict:
    """Figure 4: photometry, noise, clipping, artefacts and PSF of every ``deep_coadd``."""
    from processing.algorithms.moments import psf_moments

    refs = list(repo.query_datasets("deep_coadd", where, collections=collection))
    refs = refs[:max_patches] if max_patches else refs
    if not refs:
        return {"reason": f"no deep_coadd in {collection}"}
    sizes = _DetectorSizes(repo, collection, truth.instrument)
    ratios, flagged, aperture, noise = [], [], [], []
    per_patch: dict = {}
    near = np.zeros((2, len(_MAG_BINS) - 1), np.int64)
    art: dict = {}
    psf_err = {"mean": [], "mix": []}
    skipped_nodes = np.zeros(2, np.int64)
    for ref in refs:
        did = dict(ref.data_id)
        coadd, band = repo.get(ref), did["band"]
        h, w = coadd.image.shape
        idx, ax, ay = objects_in_box(truth, coadd.wcs, *coadd.xy0, w, h)
        ixx, iyy, ixy = psf_moments(coadd.psf, [coadd.xy0[0] + w / 2], [coadd.xy0[1] + h / 2])
        sigma = float((ixx[0] * iyy[0] - ixy[0] ** 2) ** 0.25)
        fwhm = FWHM_PER_SIGMA * sigma
        var = coadd.variance
        sigma_pix = float(np.sqrt(np.nanmedian(var[np.isfinite(var) & (var > 0)])))
        flux = np.nan_to_num(truth.flux(band)[idx], nan=0.0)
        snr_est = flux / (sigma_pix * np.sqrt(4 * np.pi) * sigma)
        r, f, a = _photometry(coadd, truth, band, idx, ax, ay, snr_est)
        ratios.append(r)
        flagged.append(f)
        aperture.append(a)
        if r.size:
            per_patch[f"{did['tract']}-{did['patch']}-{band}"] = [int(r.size),
                                                                 float(np.median(r))]
        radius = fwhm * (1 + 1.5 * np.log10(np.maximum(snr_est, 1))) + 3 * truth.hlr[idx] / 0.2
        res = _noise(coadd, ax, ay, radius)
        if res is not None:
            noise.append(res)
        sel_ref = repo.find_dataset("deep_coadd_visit_selection", did, collections=collection)
        sel = repo.get(sel_ref).to_pydict() if sel_ref else None
        used = ({(int(v), int(d)) for v, d, u in zip(sel["visit"], sel["detector"], sel["used"],
                                                     strict=True) if u} if sel else set())
        n_image_ref = repo.find_dataset("deep_coadd_n_image", did, collections=collection)
        points = _artefact_points(truth, coadd, used, fwhm)
        near += _clipped_near_stars(coadd, truth, band, idx, ax, ay, fwhm, points)
        for kind, t in _artefact_tally(repo, collection, coadd, did, truth.instrument, points,
                                       n_image_ref).items():
            art[kind] = art.get(kind, 0) + t
        if sel is not None and coadd.psf is not None:
            errs, skipped = _psf_nodes(repo, coadd, truth, sel, sizes, n_image_ref)
            skipped_nodes += skipped
            for k, e in (errs or {}).items():
                psf_err[k].append(e)
    return _summarise(len(refs), ratios, flagged, aperture, per_patch, noise, near, art,
                      psf_err, skipped_nodes)


def _cat(parts) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0)


def _summarise(n_patches, ratios, flagged, aperture, per_patch, noise, near, art, psf_err,
               skipped):
    out: dict = {"n_patches": n_patches}
    out["psf_flux_ratio"] = flux_figure(
        _cat(ratios), _cat(flagged), "< 0.01 (|median PSF flux / true flux - 1|)", 0.01,
        "forced PSF fit (pipeline psf_flux, the coadd PSF) at the true positions of isolated "
        "true stars with S/N > 100, no BAD/SAT/NO_DATA in the stamp; stars with CLIPPED, "
        "REJECTED or INEXACT_PSF within 8 px are left out; no aperture correction",
        aperture_r20_median_ratio=float(np.median(_cat(aperture))) if _cat(aperture).size
        else None, aperture_r20_robust_sigma=robust_sigma(_cat(aperture)))
    if per_patch:
        meds = np.array([m for _, m in per_patch.values()])
        out["psf_flux_ratio"]["per_patch_max_abs"] = float(np.max(np.abs(meds - 1)))
        out["psf_flux_ratio"]["per_patch_n_and_median"] = per_patch
    if noise:
        vals = np.array([v for v, _, _ in noise])
        worst = float(np.max(np.abs(vals - 1)))
        out["noise_vs_variance"] = figure(
            worst, sum(n for _, n, _ in noise), "< 0.05 (|robust sigma of image / "
            "sqrt(variance) - 1| on empty-sky pixels, worst patch)", worst < 0.05,
            median=float(np.median(vals)), n_patches=len(noise),
            binned_8x8_median=float(np.nanmedian([b for _, _, b in noise])),
            note="binned: the same on 8 x 8 pixel sums, which includes the pixel-to-pixel "
                 "noise correlations of the warps that the variance plane leaves out")
    else:
        out["noise_vs_variance"] = null_figure("no empty-sky pixels", "< 0.05")
    total, clipped = near.sum(axis=1)
    frac = clipped / total if total else float("nan")
    out["clipped_near_stars"] = figure(
        frac, int(total), "< 0.001 (fraction of pixels within 2 FWHM of true stars with "
        "CLIPPED, pixels reached by a truth artefact of an input left out)", frac < 0.001,
        by_true_mag={f"{lo:g}-{hi:g}": {"n_pixels": int(n), "fraction": (c / n if n else None)}
                     for lo, hi, n, c in zip(_MAG_BINS[:-1], _MAG_BINS[1:], near[0], near[1],
                                             strict=True)})
    kinds = {}
    for kind, (flux, excl, repaired, n, deep, deep_excl) in art.items():
        kept_out = (excl + repaired) / flux
        kinds[kind] = figure(
            kept_out, int(n), ">= 0.99 of the flux kept out of the coadd: excluded (CLIPPED "
            "in the coadd or in compare_warp_artifact_mask, or a bad plane of the warp, STREAK "
            "included) or repaired upstream (CR plane: interpolated)", kept_out >= 0.99,
            excluded_by_the_coadd=excl / flux,
            repaired_upstream_not_excluded=repaired / flux,
            flux_fraction_where_n_image_ge_3=deep / flux,
            excluded_where_n_image_ge_3=(deep_excl / deep if deep > 0 else None),
            note="safe-clip decides nothing where fewer than 3 inputs overlap (N counts the "
                 "inputs before the visit's own exclusion); 'repaired' = CR plane set in the "
                 "warp (interpolated by reprocess_visit_image); a repaired cosmic ray's flux "
                 "no longer reaches the coadd")
    out["artefact_exclusion"] = kinds or {"reason": "no satellite or cosmic ray in the inputs"}
    out.update(psf_figures(_cat(psf_err["mean"]), _cat(psf_err["mix"]), "PSF node"))
    for key in ("psf_moments_vs_mean_of_true_moments", "psf_moments_vs_moments_of_mean_true_psf"):
        out[key]["n_nodes_without_inputs"] = int(skipped[0])
        out[key]["n_nodes_input_count_differs"] = int(skipped[1])
        out[key]["nodes"] = ("PSF nodes (GridPsf nodes, else a 9 x 9 grid) covered by true "
                             "inputs whose number equals deep_coadd_n_image there (the others "
                             "are left out)")
    return out
