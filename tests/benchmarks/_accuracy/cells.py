"""Figure 5: the ``deep_coadd_cell`` of every patch and band against the truth."""

from __future__ import annotations

import numpy as np

from .common import (
    MIN_SNR,
    flux_figure,
    forced_psf_flux_stamps,
    input_psf_truth,
    objects_in_box,
    psf_errors,
    psf_figures,
)
from .core import figure, isolated, null_figure

__all__ = ["cell_figures", "cell_stamps"]


def cell_stamps(arrays: np.ndarray, rows, ix, iy, half: int) -> np.ndarray:
    """``(n, k, k)`` stamps of ``arrays[rows]`` (``(n_cells, outer, outer)``) centred on pixels.

    ``ix, iy`` are array pixels of the outer cells; the stamps must lie inside.
    """
    off = np.arange(-half, half + 1)
    r = np.asarray(rows)[:, None, None]
    yy = np.asarray(iy)[:, None, None] + off[None, :, None]
    xx = np.asarray(ix)[:, None, None] + off[None, None, :]
    return arrays[r, yy, xx]


def _cell_photometry(c, truth, band, row_of, cell_ids):
    """Flux ratios (clean) and flagged booleans of isolated bright stars in the inner cells."""
    from processing.algorithms.psf_images import shift_stamps

    g = c.grid
    idx, ax, ay = objects_in_box(truth, c.wcs, g.x0, g.y0, g.nx * g.size, g.ny * g.size)
    cxi = np.floor((ax + 0.5) / g.size).astype(int)
    cyi = np.floor((ay + 0.5) / g.size).astype(int)
    rows = np.array([row_of.get(int(cy * g.nx + cx), -1)
                     for cx, cy in zip(cxi, cyi, strict=True)], dtype=np.int64)
    sel = np.flatnonzero(truth.is_star[idx] & (rows >= 0))
    sel = sel[isolated(truth.objects["ra"], truth.objects["dec"], truth.flux(band), truth.hlr,
                       idx[sel])]
    if sel.size == 0:
        return np.zeros(0), np.zeros(0, bool)
    r = rows[sel]
    lx = ax[sel] - (cxi[sel] * g.size - g.border)  # pixel in the outer cell
    ly = ay[sel] - (cyi[sel] * g.size - g.border)
    ix, iy = np.floor(lx + 0.5).astype(int), np.floor(ly + 0.5).astype(int)
    half = c.psf.shape[1] // 2
    kernels = c.psf[r] / c.psf[r].sum(axis=(1, 2), keepdims=True)
    models = shift_stamps(kernels, lx - ix, ly - iy)
    res = forced_psf_flux_stamps(cell_stamps(c.image, r, ix, iy, half),
                                 cell_stamps(c.variance, r, ix, iy, half),
                                 cell_stamps(c.mask, r, ix, iy, half), models)
    ap = {int(cid): v for cid, name, v in zip(c.ap_corr["cell_id"].to_pylist(),
                                              c.ap_corr["name"].to_pylist(),
                                              c.ap_corr["value"].to_pylist(), strict=True)
          if name == "base_PsfFlux_instFlux"}
    corr = np.array([ap.get(int(cell_ids[j]), 1.0) for j in r])
    flux = truth.flux(band)[idx[sel]]
    ok = ~res["spoiled"] & (flux / res["err"] > MIN_SNR)
    ratio = (res["flux"] * corr / flux)[ok]
    return ratio[~res["flagged"][ok]], res["flagged"][ok]


def _stitched_differences(c, st) -> int:
    """Number of cells whose inner pixels differ from the stitched exposure's."""
    g = c.grid
    inner = slice(g.border, g.border + g.size)
    bad = 0
    for j, (cx, cy) in enumerate(zip(c.cells["cell_x"].to_numpy(), c.cells["cell_y"].to_numpy(),
                                     strict=True)):
        sy = slice(int(cy) * g.size + g.y0 - st.xy0[1], (int(cy) + 1) * g.size + g.y0 - st.xy0[1])
        sx = slice(int(cx) * g.size + g.x0 - st.xy0[0], (int(cx) + 1) * g.size + g.x0 - st.xy0[0])
        same = all(np.array_equal(getattr(st, p)[sy, sx], getattr(c, p)[j, inner, inner],
                                  equal_nan=p != "mask") for p in ("image", "mask", "variance"))
        bad += int(not same)
    return bad


def cell_figures(repo, collection: str, truth, max_patches: int | None = None,
                 where: str | None = None) -> dict:
    """Figure 5: cell PSFs, star fluxes with the cell PSF and the stitched image."""
    from processing.algorithms.moments import adaptive_moments
    from processing.cell_coadds import MultipleCellCoadd

    refs = list(repo.query_datasets("deep_coadd_cell", where, collections=collection))
    refs = refs[:max_patches] if max_patches else refs
    if not refs:
        return {"reason": f"no deep_coadd_cell in {collection}"}
    psf_err = {"mean": [], "mix": []}
    ratios, flagged, n_cells = [], [], 0
    stitched = {"n_patches": 0, "n_cells": 0, "n_cells_differing": 0}
    for ref in refs:
        did = dict(ref.data_id)
        c = MultipleCellCoadd.from_bundle(repo.get(ref))
        n = c.cells.num_rows
        n_cells += n
        if n == 0:
            continue
        cell_ids = c.cells["cell_id"].to_numpy()
        row_of = {int(k): i for i, k in enumerate(cell_ids)}
        half = c.psf.shape[1] // 2
        am = adaptive_moments(c.psf / c.psf.sum(axis=(1, 2), keepdims=True),
                              np.full(n, half, float), np.full(n, half, float), initial=4.0)
        inp = c.inputs.to_pydict()
        mean, mix = input_psf_truth(
            truth, list(zip(inp["visit"], inp["detector"], inp["weight"], strict=True)), c.wcs,
            np.asarray(inp["x_detector"], float), np.asarray(inp["y_detector"], float),
            np.array([row_of[int(i)] for i in inp["cell_id"]]), n)
        for key, e in psf_errors(np.column_stack([am.xx, am.yy, am.xy]), mean, mix).items():
            psf_err[key].append(e)
        r, f = _cell_photometry(c, truth, did["band"], row_of, cell_ids)
        ratios.append(r)
        flagged.append(f)
        st_ref = repo.find_dataset("deep_coadd_cell_stitched", did, collections=collection)
        if st_ref is not None:
            stitched["n_patches"] += 1
            stitched["n_cells"] += n
            stitched["n_cells_differing"] += _stitched_differences(c, repo.get(st_ref))
    out = {"n_patches": len(refs), "n_populated_cells": n_cells}
    cat = (lambda parts: np.concatenate(parts) if parts else np.zeros(0))  # noqa: E731
    out.update(psf_figures(cat(psf_err["mean"]), cat(psf_err["mix"]), "populated cell"))
    out["psf_flux_ratio"] = flux_figure(
        cat(ratios), cat(flagged),
        "< 0.01 (|median PSF flux x cell aperture correction / true flux - 1|)", 0.01,
        "PSF fit on the outer cell with the cell PSF shifted to the true position, isolated "
        "true stars with S/N > 100 centred in the inner cell")
    target = "0 cells whose inner image, mask or variance differ from the stitched exposure"
    if stitched["n_patches"]:
        bad = stitched["n_cells_differing"]
        out["stitched_equals_inner_cells"] = figure(bad, stitched["n_cells"], target, bad == 0,
                                                    n_patches=stitched["n_patches"])
    else:
        out["stitched_equals_inner_cells"] = null_figure("no deep_coadd_cell_stitched", target)
    return out
