"""The pass over the warps of a cell coadd: which inputs each cell takes, and their sums.

Private to :mod:`processing.tasks.assemble_cell_coadd` (``reference/algorithms.md``
4.4 steps 2-6).  For each band of cell rows that fits the memory budget (the
whole patch by default), every warp is read once over those rows, its
pixels labelled by detector and coded, the inputs of every cell decided
(overlap, centre, fallback rule), the BAD pixels interpolated if any input
uses them, and the accepted (cell, detector) inputs added to the cell
accumulators together with their PSF stamps and aperture corrections.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from store.geom import Box
from store.masks import bits

from ..algorithms.cell_stack import (
    BAD,
    CellGrid,
    CellStack,
    cell_coverage,
    classify_pixels,
    interpolate_runs,
)
from ..algorithms.interpolate import interpolate_masked
from ._cell_inputs import WarpInputs
from ._cell_tables import ap_corr_rows

__all__: list[str] = []  # private helpers of assemble_cell_coadd

#: Bytes per region pixel while a warp is processed: image, variance, mask, label, code.
_REGION_BYTES = 15


class _Cell:
    """Bookkeeping of one cell: its inputs, PSF and aperture-correction sums."""

    __slots__ = ("ap_corr", "inputs", "is_fallback", "psf", "weight")

    def __init__(self, psf_size: int):
        self.psf = np.zeros((psf_size, psf_size))
        self.is_fallback = True  # no input with enough unmasked pixels yet
        self.reset()

    def reset(self) -> None:
        self.psf[...] = 0.0
        self.weight = 0.0  # sum of normalised weights
        self.inputs: list[dict[str, Any]] = []
        self.ap_corr: dict[str, list[float]] = {}


class Assembler:
    """Accumulate the warps into the cells, one band of cell rows per pass.

    Parameters
    ----------
    config : AssembleCellCoaddConfig
        Task settings.
    grid : CellGrid
        The cells of the patch.
    plans : list of WarpInputs
        The warps, in input order.
    w_ref : float
        Weights are divided by this (float32 sums), 1/nJy^2.
    masks : mapping
        Key -> artefact mask on ``patch_box``.
    patch_box : Box
        The patch outer box.
    """

    def __init__(self, config, grid: CellGrid, plans: list[WarpInputs], w_ref: float,
                 masks: Mapping, patch_box: Box):
        self.config = config
        self.grid = grid
        self.plans = plans
        self.w_ref = w_ref
        self.masks = masks
        self.patch_box = patch_box
        o = grid.outer_size
        region_row = (grid.size * grid.nx + 2 * grid.border) * grid.size * _REGION_BYTES
        per_row = grid.nx * o * o * 24 + region_row
        rows = int(config.memory_budget_mb * 1e6 // per_row)
        self.rows_per_pass = int(np.clip(rows, 1, grid.ny))
        self.n_passes = -(-grid.ny // self.rows_per_pass)
        self.n_psf_off = 0

    def run(self) -> dict[str, Any]:
        """Every populated cell: planes, PSFs, inputs (dict of arrays and lists)."""
        planes: dict[str, list] = {k: [] for k in ("image", "mask", "variance", "maskfrac")}
        out: dict[str, Any] = {"cell_ids": [], "psf": [], "inputs": [], "ap_corr": [],
                               "n_inputs": [], "is_fallback": [], "weight": []}
        for r0 in range(0, self.grid.ny, self.rows_per_pass):
            self._pass(r0, min(self.grid.ny, r0 + self.rows_per_pass), planes, out)
        if self.n_psf_off:
            warnings.warn(f"{self.n_psf_off} input PSF stamps sum outside 1 +- 0.005 "
                          f"(psf_size {self.config.psf_size} too small?)", stacklevel=3)
        o = self.grid.outer_size
        for k, v in planes.items():
            out[k] = v[0] if len(v) == 1 else np.concatenate(v) if v else np.empty((0, o, o))
        k = self.config.psf_size
        out["psf"] = np.array(out["psf"]) if out["psf"] else np.empty((0, k, k))
        return out

    # ----------------------------------------------------------------------------- a pass

    def _pass(self, r0: int, r1: int, planes: dict, out: dict) -> None:
        cfg, g = self.config, self.grid
        region = g.region(r0, r1)
        n = (r1 - r0) * g.nx
        stack = CellStack(n, g.outer_size,
                          mask_propagation_thresholds=cfg.mask_propagation_thresholds)
        cells = [_Cell(cfg.psf_size) for _ in range(n)]
        iy, ix = np.divmod(np.arange(n), g.nx)
        cx, cy = g.center_pixel(ix, iy + r0)
        image = np.empty(region.shape, np.float32)
        variance = np.empty(region.shape, np.float32)
        mask = np.empty(region.shape, np.int32)
        label = np.empty(region.shape, np.int16)  # reused: no page faults per warp
        bad_bits, exclude_bits = bits(cfg.bad_mask_planes), bits(cfg.exclude_mask_planes)
        keep = np.int32(~bits(cfg.remove_mask_planes))
        for plan in self.plans:
            plan.source.read(region, image, variance, mask)
            if plan.key in self.masks:
                mask |= self._artifact_bits(plan.key, region)
            mask &= keep
            plan.labels(region, image, mask, out=label)
            codes = classify_pixels(image, variance, mask, label, bad_bits=bad_bits,
                                    exclude_bits=exclude_bits)
            own, good, centre = cell_coverage(label, codes, g, len(plan.detectors))
            pending = self._decide(plan, cells, stack, own, good, centre)
            if not pending:
                continue
            slots = np.array([c for c, items in pending.items() for _ in items], np.int64)
            items = [it for c in pending for it in pending[c]]
            interp = np.array([cfg.interpolate_bad_pixels and not it[1] for it in items])
            if interp.any() and np.any(codes == BAD):
                interpolate_runs(image, variance, label, codes)
            weights = np.array([plan.detectors[it[0]].weight for it in items]) / self.w_ref
            stack.add(image, variance, mask, label, codes, slots=slots,
                      origins_y=iy[slots] * g.size, origins_x=ix[slots] * g.size,
                      labels=[it[0] for it in items], weights=weights, interpolate=interp)
            self._record(plan, cells, slots, items, weights, cx, cy)
        populated = [c for c in range(n) if cells[c].inputs]
        for c in populated:
            cell = cells[c]
            cell_id = int((iy[c] + r0) * g.nx + ix[c])
            img, var, msk, _ = stack.finish(c, cell.weight)  # in place in the stack arrays
            self._fill_gaps(cell_id, img, var, msk)
            out["cell_ids"].append(cell_id)
            out["psf"].append(cell.psf / cell.weight)
            out["inputs"].extend(dict(r, cell_id=cell_id) for r in cell.inputs)
            out["ap_corr"].extend(ap_corr_rows(cell_id, cell.ap_corr, len(cell.inputs)))
            out["n_inputs"].append(len(cell.inputs))
            out["is_fallback"].append(bool(cell.is_fallback))
            out["weight"].append(cell.weight)
        arrays = {"image": stack.sum_wx, "mask": stack.or_mask, "variance": stack.sum_w2v,
                  "maskfrac": stack.interp_w}
        for name, array in arrays.items():
            # Every cell populated (the usual case): hand the arrays over without a copy.
            planes[name].append(array if len(populated) == n else array[populated])

    def _decide(self, plan: WarpInputs, cells: list[_Cell], stack: CellStack, own, good,
                centre) -> dict[int, list[tuple[int, bool, float, float]]]:
        """The (label, fallback, overlap, unmasked) inputs this warp gives each cell (4.4 step 5)."""
        cfg = self.config
        area = self.grid.size * self.grid.size
        min_good = max(1.0 - cfg.max_maskfrac, 0.0)
        pending: dict[int, list[tuple[int, bool, float, float]]] = {}
        for c, k in zip(*np.nonzero(own), strict=True):
            c, k = int(c), int(k)
            overlap = own[c, k] / area
            if overlap < cfg.min_overlap_fraction or centre[c] != k:
                continue
            unmasked = good[c, k] / own[c, k]
            cell = cells[c]
            if unmasked <= min_good:
                if not cell.is_fallback:
                    continue  # the cell has good inputs already
                fallback = True
            else:
                fallback = False
                if cell.is_fallback:  # the first good input replaces every fallback one
                    if cell.inputs or pending.get(c):
                        stack.reset(c)
                        cell.reset()
                        pending.pop(c, None)
                    cell.is_fallback = False
            pending.setdefault(c, []).append((k, fallback, float(overlap), float(unmasked)))
        return pending

    def _artifact_bits(self, key, region: Box) -> np.ndarray:
        """The exclude-plane bits of a warp's artefact mask over the region."""
        art = self.masks[key]
        box = Box.from_shape(art.shape, self.patch_box.x0, self.patch_box.y0)
        out = np.zeros(region.shape, np.int32)
        inside = region.intersection(box)
        if not inside.is_empty:
            rows, cols = inside.slices_in(region)
            r2, c2 = inside.slices_in(box)
            out[rows, cols] = art[r2, c2] & np.int32(bits(self.config.exclude_mask_planes))
        return out

    def _record(self, plan: WarpInputs, cells: list[_Cell], slots, items, weights, cx, cy):
        """PSF stamps, aperture corrections and input records of the accepted inputs."""
        labels = np.array([it[0] for it in items])
        for det in plan.detectors:
            sel = np.flatnonzero(labels == det.label)
            if sel.size == 0:
                continue
            s = slots[sel]
            stamps, xs, ys = plan.psf_stamps(det, cx[s], cy[s], self.config.psf_size)
            sums = stamps.reshape(sel.size, -1).sum(axis=1)
            self.n_psf_off += int(np.count_nonzero(np.abs(sums - 1) > 0.005))
            ap = plan.ap_corr(det, xs, ys)
            for j, i in enumerate(sel):
                cell = cells[int(s[j])]
                w = float(weights[i])
                cell.weight += w
                cell.psf += w * stamps[j]
                for name, (value, err) in ap.items():
                    acc = cell.ap_corr.setdefault(name, [0.0, 0.0, 0.0, 0])
                    acc[0] += w * value[j]
                    acc[1] += (w * err[j]) ** 2
                    acc[2] += w
                    acc[3] += 1
                _, fallback, overlap, unmasked = items[i]
                cell.inputs.append({"instrument": plan.instrument, "visit": plan.visit,
                                    "detector": det.detector, "weight": w,
                                    "overlap_fraction": overlap,
                                    "unmasked_fraction": unmasked, "fallback": fallback,
                                    "psf_sum": float(sums[j]), "x_detector": float(xs[j]),
                                    "y_detector": float(ys[j])})

    def _fill_gaps(self, cell_id: int, image, variance, mask) -> None:
        """A.8 on one cell: interpolate NO_DATA pixels; variance <= 0 or NaN -> +inf.

        A cell whose inner pixels all lack data (every input masked there) is not
        interpolated from its border: its NO_DATA pixels get image 0, variance +inf.
        """
        nodata = np.int32(bits("NO_DATA"))
        empty = (mask & nodata) != 0
        b, s = self.grid.border, self.grid.size
        if empty[b:b + s, b:b + s].all():
            warnings.warn(f"cell {cell_id}: every inner pixel of every input is masked; the "
                          "cell is NO_DATA (image 0, variance +inf)", stacklevel=4)
            image[empty] = 0.0
            variance[empty] = np.inf
            return
        if self.config.do_interpolate_coadd and empty.any():
            interpolate_masked(image, mask, int(nodata), variance=variance)
        with np.errstate(invalid="ignore"):
            variance[~(variance > 0)] = np.inf
