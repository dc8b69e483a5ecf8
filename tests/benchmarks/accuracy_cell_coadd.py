"""Accuracy of the cell coadds of a simulated survey against its truth.

Run ``python tests/benchmarks/accuracy_cell_coadd.py REPO [--collection demo/DR1]
[--preset demo --seed 0]`` on a repository made by ``drp demo`` (or any
``simulate_survey`` repository processed through ``assemble_cell_coadd``);
prints one JSON object.  The survey plan is rebuilt from the preset and seed,
which gives the true PSF of every detector-visit anywhere on its pixels.

For every ``deep_coadd_cell`` of the collection:

* **coverage**: every input of every cell must cover the whole inner cell --
  the inner-cell pixel centres, mapped through the detector's (visit summary)
  WCS, inside the detector's Lanczos-valid region; violations are counted;
* **stitched**: the ``deep_coadd_cell_stitched`` pixels equal the inner pixels
  of each cell (image, mask, variance);
* **PSF**: per populated cell, the true cell PSF is the weighted mean (the
  cell's weights) of the inputs' true PSFs at the cell centre, each warped to
  the tract frame like the model PSFs; compared with the cell PSF by (a) the
  unweighted second moments within the 35 x 35 stamp (linear, so the moments
  of the weighted mean are the weighted mean of the moments) and (b) adaptive
  moments.  Relative errors of Ixx, Iyy and of Ixy (relative to the trace /
  2); the maximum over cells is the figure of the issue ("within 1% in every
  populated cell");
* **photometry**: isolated, unsaturated true stars (no other object with more
  than 1% of their flux within 15 pixels) with S/N > 100 whose centre lies in
  a populated cell: PSF flux (jointly with a constant background) on the
  outer cell with the cell PSF shifted to the true position, times the cell's
  ``base_PsfFlux_instFlux`` aperture correction, over the true flux.  Stars
  whose fit stamp holds a NO_DATA, SAT, CLIPPED, REJECTED or INEXACT_PSF pixel
  are reported separately.  The ratio includes the survey's photometric
  calibration error (per visit zero points).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _moments(stamp: np.ndarray) -> np.ndarray:
    """Unweighted (Ixx, Iyy, Ixy) of a centred stamp about its centroid, pixel^2."""
    k = stamp / stamp.sum()
    h = k.shape[0] // 2
    yy, xx = np.mgrid[-h:h + 1, -h:h + 1].astype(float)
    mx, my = (k * xx).sum(), (k * yy).sum()
    return np.array([(k * (xx - mx) ** 2).sum(), (k * (yy - my) ** 2).sum(),
                     (k * (xx - mx) * (yy - my)).sum()])


def _rel(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Relative errors of (Ixx, Iyy, Ixy); Ixy relative to the half trace."""
    half_trace = 0.5 * (want[..., 0] + want[..., 1])
    return np.stack([(got[..., 0] - want[..., 0]) / want[..., 0],
                     (got[..., 1] - want[..., 1]) / want[..., 1],
                     (got[..., 2] - want[..., 2]) / half_trace], axis=-1)


def _summ(values) -> dict:
    a = np.abs(np.asarray(values))
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.shape[0]), "max_abs": float(a.max()), "p99_abs": float(np.percentile(a, 99)),
            "median_abs": float(np.median(a))}


def evaluate(repo, collection: str, plan, max_patches: int | None = None) -> dict:
    from processing.algorithms.cell_psf import warp_psf_kernels
    from processing.algorithms.moments import adaptive_moments
    from processing.algorithms.warp import local_jacobian, transform_pixels
    from processing.cell_coadds import MultipleCellCoadd
    from processing.visit_summary import VisitSummaryCatalog
    from sample_data.psf import TruePsf
    from store.masks import bits
    from store.psf import GridPsf

    refs = list(repo.query_datasets("deep_coadd_cell", collections=collection))
    refs = refs[:max_patches] if max_patches else refs
    truth = repo.get("truth_object", {"instrument": plan.instrument}, collections="truth")
    t_ra = truth.column("ra").to_numpy()
    t_dec = truth.column("dec").to_numpy()
    t_type = np.array(truth.column("type").to_pylist())
    summaries: dict[int, VisitSummaryCatalog] = {}
    out = {"n_patches": len(refs), "n_cells": 0, "n_inputs": 0, "coverage_violations": 0,
           "stitched_identical": True}
    psf_lin, psf_ad, psf_comb = [], [], []
    flux = {"clean": [], "flagged": []}
    by_band: dict[str, list] = {}
    flagged_bits = bits("NO_DATA", "SAT", "CLIPPED", "REJECTED", "INEXACT_PSF")
    for ref in refs:
        did = ref.data_id
        coadd = MultipleCellCoadd.from_bundle(repo.get(ref))
        stitched = repo.get("deep_coadd_cell_stitched", did, collections=collection)
        g, tw = coadd.grid, coadd.wcs
        out["n_cells"] += len(coadd)
        out["n_inputs"] += coadd.inputs.num_rows
        apcorr = {(int(c), n): v for c, n, v in zip(
            coadd.ap_corr["cell_id"].to_pylist(), coadd.ap_corr["name"].to_pylist(),
            coadd.ap_corr["value"].to_pylist(), strict=True)}
        band = did["band"]
        t_flux = truth.column(f"{band}_flux").to_numpy()
        sx, sy = tw.all_world2pix(t_ra, t_dec, 0)
        for cell in coadd:
            # Stitched image = inner pixels.
            rows, cols = cell.inner_bbox.slices_in(stitched.bbox)
            for plane in ("image", "mask", "variance"):
                same = np.array_equal(getattr(stitched, plane)[rows, cols], cell.inner(plane),
                                      equal_nan=plane != "mask")
                out["stitched_identical"] &= bool(same)
            cx, cy = g.center_pixel(*cell.index)
            inputs = cell.inputs.to_pylist()
            px = np.concatenate([np.arange(cell.inner_bbox.x0, cell.inner_bbox.x1),
                                 np.arange(cell.inner_bbox.x0, cell.inner_bbox.x1),
                                 np.full(g.size, cell.inner_bbox.x0),
                                 np.full(g.size, cell.inner_bbox.x1 - 1)]).astype(float)
            py = np.concatenate([np.full(g.size, cell.inner_bbox.y0),
                                 np.full(g.size, cell.inner_bbox.y1 - 1),
                                 np.arange(cell.inner_bbox.y0, cell.inner_bbox.y1),
                                 np.arange(cell.inner_bbox.y0, cell.inner_bbox.y1)]).astype(float)
            true_stamps, model_stamps, weights = [], [], []
            for r in inputs:
                v, d = int(r["visit"]), int(r["detector"])
                if v not in summaries:
                    summaries[v] = VisitSummaryCatalog.from_table(repo.get(
                        "visit_summary", {"instrument": plan.instrument, "visit": v},
                        collections=collection))
                cat = summaries[v]
                wcs, box = cat.wcs(d), cat.bbox(d)
                xs, ys = transform_pixels(wcs, tw, px, py)
                inside = ((xs >= box.x0 + 2) & (xs < box.x1 - 3) & (ys >= box.y0 + 2)
                          & (ys < box.y1 - 3))
                out["coverage_violations"] += int(not inside.all())
                jac = local_jacobian(wcs, tw, float(cx), float(cy))[None]
                true_psf = TruePsf.for_detector(plan.visit(v).psf, plan.camera, d)
                kernel = true_psf.kernel_image(r["x_detector"], r["y_detector"])
                true_stamps.append(warp_psf_kernels(kernel[None], jac, size=35)[0])
                model = cat.psf(d).kernel_image(r["x_detector"], r["y_detector"])
                model_stamps.append(warp_psf_kernels(model[None], jac, size=35)[0])
                weights.append(r["weight"])
            w = np.asarray(weights)[:, None, None]
            true_cell = (w * np.array(true_stamps)).sum(0) / w.sum()
            model_cell = (w * np.array(model_stamps)).sum(0) / w.sum()
            got = _moments(cell.psf)
            psf_lin.append(_rel(got, _moments(true_cell)))
            psf_comb.append(_rel(got, _moments(model_cell)))
            res = adaptive_moments(np.array([cell.psf, true_cell]), 17, 17, initial=2.25)
            psf_ad.append(_rel(np.array([res.xx[0], res.yy[0], res.xy[0]]),
                               np.array([res.xx[1], res.yy[1], res.xy[1]])))
            # Photometry of isolated true stars centred in this inner cell.
            ib = cell.inner_bbox
            sel = np.flatnonzero((sx >= ib.x0 - 0.5) & (sx < ib.x1 - 0.5) & (sy >= ib.y0 - 0.5)
                                 & (sy < ib.y1 - 0.5) & (t_type == "star"))
            node = GridPsf(cell.psf[None, None], [float(cx)], [float(cy)], mode="nearest")
            ob = cell.outer_bbox
            for i in sel:
                near = np.hypot(sx - sx[i], sy - sy[i]) < 15
                near[i] = False
                if np.any(t_flux[near] > 0.01 * t_flux[i]):
                    continue
                stamp, x0, y0 = node.image(float(sx[i]), float(sy[i]))
                if not (ob.x0 <= x0 and ob.y0 <= y0 and x0 + stamp.shape[1] <= ob.x1
                        and y0 + stamp.shape[0] <= ob.y1):
                    continue
                r0, c0 = y0 - ob.y0, x0 - ob.x0
                sl = (slice(r0, r0 + stamp.shape[0]), slice(c0, c0 + stamp.shape[1]))
                img, var, msk = cell.image[sl], cell.variance[sl], cell.mask[sl]
                if not np.all(np.isfinite(var)):
                    continue
                p = stamp / stamp.sum()
                design = np.column_stack([p.ravel(), np.ones(p.size)])
                (f_fit, _), *_ = np.linalg.lstsq(design, img.ravel().astype(float), rcond=None)
                err = np.sqrt((p * p * var).sum()) / (p * p).sum()
                if f_fit / err < 100 or np.any(msk & bits("SAT")):
                    continue
                ratio = f_fit * apcorr.get((cell.id, "base_PsfFlux_instFlux"), 1.0) / t_flux[i]
                core = np.hypot(*np.meshgrid(np.arange(stamp.shape[1]) + x0 - sx[i],
                                             np.arange(stamp.shape[0]) + y0 - sy[i])) < 8
                key = "flagged" if np.any(msk[core] & flagged_bits) else "clean"
                flux[key].append(ratio)
                if key == "clean":
                    by_band.setdefault(band, []).append(ratio)
    psf_lin, psf_ad, psf_comb = (np.array(a).reshape(-1, 3) for a in (psf_lin, psf_ad, psf_comb))
    names = ("ixx", "iyy", "ixy")
    out["psf_vs_true_unweighted_moments"] = {n: _summ(psf_lin[:, k]) for k, n in
                                             enumerate(names)}
    out["psf_vs_true_adaptive_moments"] = {n: _summ(psf_ad[:, k]) for k, n in enumerate(names)}
    out["psf_vs_weighted_mean_of_input_models"] = {n: _summ(psf_comb[:, k]) for k, n in
                                                   enumerate(names)}
    out["cells_within_1pct_unweighted"] = int(np.sum(np.abs(psf_lin).max(axis=1) < 0.01))
    out["cells_within_1pct_adaptive"] = int(np.sum(np.abs(psf_ad).max(axis=1) < 0.01))
    for key, values in flux.items():
        v = np.asarray(values)
        if v.size:
            mad = 1.4826 * np.median(np.abs(v - np.median(v)))
            out[f"flux_ratio_{key}"] = {"n": int(v.size), "median": float(np.median(v)),
                                        "robust_sigma": float(mad),
                                        "within_1pct": float(np.mean(np.abs(v - 1) < 0.01)),
                                        "within_1pct_of_median": float(
                                            np.mean(np.abs(v / np.median(v) - 1) < 0.01))}
    out["flux_ratio_clean_median_by_band"] = {b: float(np.median(v)) for b, v in
                                              sorted(by_band.items())}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo")
    parser.add_argument("--collection", default="demo/DR1")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-patches", type=int, default=None)
    args = parser.parse_args()
    from sample_data.config import get_preset
    from sample_data.plan import plan_survey
    from store import Repo

    t0 = time.perf_counter()
    repo = Repo(args.repo)
    plan = plan_survey(get_preset(args.preset), args.seed)
    result = evaluate(repo, args.collection, plan, args.max_patches)
    result["elapsed_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
