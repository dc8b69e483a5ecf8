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
  cell's weights) of the inputs' true PSFs at the cell centre, rendered in
  the tract frame from the survey plan's Moffat (:func:`true_stamp`, no
  kernel image or resampling involved); compared with the cell PSF by (a) the
  unweighted second moments within the 35 x 35 stamp (linear, so the moments
  of the weighted mean are the weighted mean of the moments) and (b) adaptive
  moments.  Relative errors of Ixx, Iyy and of Ixy (relative to the trace /
  2); the maximum over cells is the figure of the issue ("within 1% in every
  populated cell");
* **photometry**: isolated, unsaturated true stars (no other object with more
  than 1% of their flux within 15 pixels) with S/N > ``--min-snr`` (300) whose centre lies in
  a populated cell: PSF flux (jointly with a constant background) on the
  outer cell with the cell PSF shifted to the true position, times the cell's
  ``base_PsfFlux_instFlux`` aperture correction, over the true flux.  Stars
  whose fit stamp holds a NO_DATA, SAT, CLIPPED, REJECTED or INEXACT_PSF pixel
  are reported separately.  The ratio includes the survey's photometric
  calibration error (per visit zero points).

``--true-psf`` rebuilds each cell coadd from the same warps with the true PSF of
every input in its visit summary, which separates the cell coadd's own errors
from those of the single-visit PSF models.
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


class _Stats:
    """Accumulated figures of one evaluation."""

    def __init__(self):
        self.out = {"n_patches": 0, "n_cells": 0, "n_inputs": 0, "coverage_violations": 0,
                    "stitched_identical": True}
        self.lin, self.ad, self.comb = [], [], []
        self.flux: dict[str, list] = {"clean": [], "flagged": []}
        self.pulls: list[float] = []
        self.by_band: dict[str, list] = {}

    def result(self) -> dict:
        out = dict(self.out)
        names = ("ixx", "iyy", "ixy")
        lin, ad, comb = (np.array(a).reshape(-1, 3) for a in (self.lin, self.ad, self.comb))
        out["psf_vs_true_unweighted_moments"] = {n: _summ(lin[:, k]) for k, n in enumerate(names)}
        out["psf_vs_true_adaptive_moments"] = {n: _summ(ad[:, k]) for k, n in enumerate(names)}
        out["psf_vs_weighted_mean_of_input_models"] = {n: _summ(comb[:, k])
                                                       for k, n in enumerate(names)}
        out["cells_within_1pct_unweighted"] = int(np.sum(np.abs(lin).max(axis=1) < 0.01))
        out["cells_within_1pct_adaptive"] = int(np.sum(np.abs(ad).max(axis=1) < 0.01))
        for key, values in self.flux.items():
            v = np.asarray(values)
            if v.size:
                out[f"flux_ratio_{key}"] = {
                    "n": int(v.size), "median": float(np.median(v)),
                    "robust_sigma": float(1.4826 * np.median(np.abs(v - np.median(v)))),
                    "within_1pct": float(np.mean(np.abs(v - 1) < 0.01)),
                    "within_1pct_of_band_median": None}
        if self.by_band:
            med = {b: float(np.median(v)) for b, v in sorted(self.by_band.items())}
            out["flux_ratio_clean_median_by_band"] = med
            rel = np.concatenate([np.asarray(v) / med[b] for b, v in self.by_band.items()])
            out["flux_ratio_clean"]["within_1pct_of_band_median"] = float(
                np.mean(np.abs(rel - 1) < 0.01))
        if self.pulls:
            p = np.asarray(self.pulls)
            out["flux_pull_clean"] = {"median": float(np.median(p)), "robust_sigma": float(
                1.4826 * np.median(np.abs(p - np.median(p))))}
        return out


def true_stamp(plan, visit: int, detector: int, x: float, y: float, jac: np.ndarray,
               size: int = 35, n_gauss: int = 4) -> np.ndarray:
    """The true PSF of a detector-visit as its warp shows it, on a tract-pixel stamp.

    A warp interpolates the detector image, which samples the continuous PSF
    convolved with the detector pixel; so the warp's PSF at tract offset ``p``
    is ``|det J| (PSF * pixel)(J p)`` with ``J = d detector / d tract``.  The
    Moffat of the survey plan is integrated over the detector pixel by
    Gauss-Legendre quadrature at each tract pixel centre -- no kernel image,
    no resampling: an independent rendering of what the pipeline approximates.
    """
    from sample_data.psf import gauss_legendre_nodes, moffat_pixels

    field = plan.visit(visit).psf
    fx, fy = plan.camera.pixel_to_focal_plane(detector, x, y)
    mxx, myy, mxy = field.moments(fx, fy)
    half = size // 2
    gy, gx = np.mgrid[-half:half + 1, -half:half + 1].astype(float)
    u = jac[0, 0] * gx + jac[0, 1] * gy
    v = jac[1, 0] * gx + jac[1, 1] * gy
    nodes, weights = gauss_legendre_nodes(n_gauss)
    out = np.zeros(gx.shape)
    for ty, wy in zip(nodes, weights, strict=True):
        for tx, wx in zip(nodes, weights, strict=True):
            out += wx * wy * moffat_pixels(u + tx, v + ty, mxx, myy, mxy, field.beta, 1)
    return out * abs(np.linalg.det(jac))


def _perimeter(box):
    xs = np.arange(box.x0, box.x1, dtype=float)
    ys = np.arange(box.y0, box.y1, dtype=float)
    return (np.concatenate([xs, xs, np.full(ys.size, box.x0), np.full(ys.size, box.x1 - 1.0)]),
            np.concatenate([np.full(xs.size, box.y0), np.full(xs.size, box.y1 - 1.0), ys, ys]))


def _evaluate_coadd(stats: _Stats, coadd, stitched, summary_of, plan, truth, *,
                    true_psf: bool, min_snr: float) -> None:
    from processing.algorithms.cell_psf import warp_psf_kernels
    from processing.algorithms.moments import adaptive_moments
    from processing.algorithms.warp import local_jacobian, transform_pixels
    from store.masks import bits
    from store.psf import GridPsf

    out = stats.out
    g, tw = coadd.grid, coadd.wcs
    out["n_patches"] += 1
    out["n_cells"] += len(coadd)
    out["n_inputs"] += coadd.inputs.num_rows
    apcorr = {(int(c), n): v for c, n, v in zip(
        coadd.ap_corr["cell_id"].to_pylist(), coadd.ap_corr["name"].to_pylist(),
        coadd.ap_corr["value"].to_pylist(), strict=True)}
    band = coadd.identifiers["band"]
    t_flux = truth["flux"][band]
    sx, sy = tw.all_world2pix(truth["ra"], truth["dec"], 0)
    flagged_bits = bits("NO_DATA", "SAT", "CLIPPED", "REJECTED", "INEXACT_PSF")
    for cell in coadd:
        if stitched is not None:
            rows, cols = cell.inner_bbox.slices_in(stitched.bbox)
            for plane in ("image", "mask", "variance"):
                out["stitched_identical"] &= bool(np.array_equal(
                    getattr(stitched, plane)[rows, cols], cell.inner(plane),
                    equal_nan=plane != "mask"))
        cx, cy = g.center_pixel(*cell.index)
        px, py = _perimeter(cell.inner_bbox)
        true_stamps, model_stamps, weights = [], [], []
        for r in cell.inputs.to_pylist():
            v, d = int(r["visit"]), int(r["detector"])
            cat = summary_of(v)
            wcs, box = cat.wcs(d), cat.bbox(d)
            xs, ys = transform_pixels(wcs, tw, px, py)
            inside = (xs >= box.x0 + 2) & (xs < box.x1 - 3) & (ys >= box.y0 + 2) & (ys < box.y1 - 3)
            out["coverage_violations"] += int(not inside.all())
            jac = local_jacobian(wcs, tw, float(cx), float(cy))
            true_stamps.append(true_stamp(plan, v, d, r["x_detector"], r["y_detector"], jac))
            model = cat.psf(d).kernel_image(r["x_detector"], r["y_detector"])
            model_stamps.append(warp_psf_kernels(model[None], jac[None], size=35)[0])
            weights.append(r["weight"])
        w = np.asarray(weights)[:, None, None]
        true_cell = (w * np.array(true_stamps)).sum(0) / w.sum()
        model_cell = (w * np.array(model_stamps)).sum(0) / w.sum()
        got = _moments(cell.psf)
        stats.lin.append(_rel(got, _moments(true_cell)))
        stats.comb.append(_rel(got, _moments(model_cell)))
        res = adaptive_moments(np.array([cell.psf, true_cell]), 17, 17, initial=2.25)
        stats.ad.append(_rel(np.array([res.xx[0], res.yy[0], res.xy[0]]),
                             np.array([res.xx[1], res.yy[1], res.xy[1]])))
        # Photometry of isolated true stars centred in this inner cell.
        ib, ob = cell.inner_bbox, cell.outer_bbox
        sel = np.flatnonzero((sx >= ib.x0 - 0.5) & (sx < ib.x1 - 0.5) & (sy >= ib.y0 - 0.5)
                             & (sy < ib.y1 - 0.5) & truth["star"])
        node = GridPsf(cell.psf[None, None], [float(cx)], [float(cy)], mode="nearest")
        for i in sel:
            near = np.hypot(sx - sx[i], sy - sy[i]) < 15
            near[i] = False
            if np.any(t_flux[near] > 0.01 * t_flux[i]):
                continue
            stamp, x0, y0 = node.image(float(sx[i]), float(sy[i]))
            if not (ob.x0 <= x0 and ob.y0 <= y0 and x0 + stamp.shape[1] <= ob.x1
                    and y0 + stamp.shape[0] <= ob.y1):
                continue
            sl = (slice(y0 - ob.y0, y0 - ob.y0 + stamp.shape[0]),
                  slice(x0 - ob.x0, x0 - ob.x0 + stamp.shape[1]))
            img, var, msk = cell.image[sl], cell.variance[sl], cell.mask[sl]
            if not np.all(np.isfinite(var)) or np.any(msk & bits("SAT")):
                continue
            # The true PSF keeps its stamp sum (the flux inside 35 x 35 pixels); model PSFs
            # are normalised and aperture-corrected, as the pipeline measures.
            p = stamp / stamp.sum() * (cell.psf.sum() if true_psf else 1.0)
            design = np.column_stack([p.ravel(), np.ones(p.size)])
            (f_fit, _), *_ = np.linalg.lstsq(design, img.ravel().astype(float), rcond=None)
            err = np.sqrt((p * p * var).sum()) / (p * p).sum()
            if f_fit / err < min_snr:
                continue
            corr = 1.0 if true_psf else apcorr.get((cell.id, "base_PsfFlux_instFlux"), 1.0)
            ratio = f_fit * corr / t_flux[i]
            core = np.hypot(*np.meshgrid(np.arange(stamp.shape[1]) + x0 - sx[i],
                                         np.arange(stamp.shape[0]) + y0 - sy[i])) < 8
            key = "flagged" if np.any(msk[core] & flagged_bits) else "clean"
            stats.flux[key].append(ratio)
            if key == "clean":
                stats.by_band.setdefault(band, []).append(ratio)
                stats.pulls.append((f_fit * corr - t_flux[i]) / (err * corr))


def _true_psf_coadd(repo, collection: str, ref, plan, summary_of):
    """The cell coadd of a patch rebuilt with every input's true PSF in its visit summary."""
    from processing.tasks._cell_inputs import LazyMasks
    from processing.tasks._coadd_quanta import patch_geometry
    from processing.tasks.assemble_cell_coadd import AssembleCellCoaddTask
    from sample_data.psf import TruePsf

    did = ref.data_id
    config = repo.dimension_records("skymap", "skymap = $s", {"s": did["skymap"]})
    _, patch = patch_geometry(config.column("config")[0].as_py(), did["tract"], did["patch"])
    where = "tract = $t AND patch = $p AND band = $b"
    bind = {"t": did["tract"], "p": did["patch"], "b": did["band"]}
    warps = {(r.data_id["instrument"], int(r.data_id["visit"])): repo.path_of(r)
             for r in repo.query_datasets("direct_warp", where, bind=bind,
                                          collections=collection)}
    masks = {(r.data_id["instrument"], int(r.data_id["visit"])): repo.path_of(r)
             for r in repo.query_datasets("compare_warp_artifact_mask", where, bind=bind,
                                          collections=collection)}
    summaries = {}
    for key in warps:
        cat = summary_of(key[1])
        updates = {d: {"psf": TruePsf.for_detector(plan.visit(key[1]).psf, plan.camera, d)}
                   for d in cat.detectors()}
        summaries[key] = cat.with_updates(updates)
    res = AssembleCellCoaddTask().run(warps, sky_info=patch, visit_summaries=summaries,
                                      artifact_masks=LazyMasks(masks), band=did["band"],
                                      skymap=did["skymap"])
    return res["coadd"], res["stitched"], summaries


def evaluate(repo, collection: str, plan, max_patches: int | None = None, *,
             true_psf: bool = False, min_snr: float = 300.0) -> dict:
    """Every figure of the module notes, over the collection's cell coadds."""
    import warnings

    from processing.cell_coadds import MultipleCellCoadd
    from processing.visit_summary import VisitSummaryCatalog

    refs = list(repo.query_datasets("deep_coadd_cell", collections=collection))
    refs = refs[:max_patches] if max_patches else refs
    table = repo.get("truth_object", {"instrument": plan.instrument}, collections="truth")
    truth = {"ra": table.column("ra").to_numpy(), "dec": table.column("dec").to_numpy(),
             "star": np.array(table.column("type").to_pylist()) == "star",
             "flux": {b: table.column(f"{b}_flux").to_numpy() for b in "ugrizy"
                      if f"{b}_flux" in table.column_names}}
    cache: dict[int, VisitSummaryCatalog] = {}

    def summary_of(visit: int) -> VisitSummaryCatalog:
        if visit not in cache:
            cache[visit] = VisitSummaryCatalog.from_table(repo.get(
                "visit_summary", {"instrument": plan.instrument, "visit": visit},
                collections=collection))
        return cache[visit]

    stats = _Stats()
    for ref in refs:
        if true_psf:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # PSF stamp sums < 0.995
                coadd, stitched, rebuilt = _true_psf_coadd(repo, collection, ref, plan,
                                                           summary_of)
            lookup = {k[1]: v for k, v in rebuilt.items()}
            _evaluate_coadd(stats, coadd, stitched, lookup.__getitem__, plan, truth,
                            true_psf=True, min_snr=min_snr)
        else:
            coadd = MultipleCellCoadd.from_bundle(repo.get(ref))
            stitched = repo.get("deep_coadd_cell_stitched", ref.data_id, collections=collection)
            _evaluate_coadd(stats, coadd, stitched, summary_of, plan, truth, true_psf=False,
                            min_snr=min_snr)
    return stats.result()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo")
    parser.add_argument("--collection", default="demo/DR1")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-patches", type=int, default=None)
    parser.add_argument("--min-snr", type=float, default=300.0,
                        help="S/N cut of the photometry stars")
    parser.add_argument("--true-psf", action="store_true",
                        help="rebuild the cell coadds with the true input PSFs")
    args = parser.parse_args()
    from sample_data.config import get_preset
    from sample_data.plan import plan_survey
    from store import Repo

    t0 = time.perf_counter()
    repo = Repo(args.repo)
    plan = plan_survey(get_preset(args.preset), args.seed)
    result = evaluate(repo, args.collection, plan, args.max_patches, true_psf=args.true_psf,
                      min_snr=args.min_snr)
    result["mode"] = "true input PSFs" if args.true_psf else "pipeline"
    result["elapsed_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
