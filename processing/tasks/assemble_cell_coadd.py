"""AssembleCellCoaddTask: cell-based coadds with a PSF per cell.

Rubin's ``AssembleCellCoaddTask`` (``reference/algorithms.md`` 4.1-4.5), in the
form Rubin is moving to: every cell of a patch is the weighted mean of the
inputs (a detector of a visit) that cover its whole inner box, with bad
pixels interpolated in the inputs rather than left out and no clipping, so
that the cell PSF -- the weighted mean of the inputs' PSFs with the same
weights -- is the PSF of the cell image.

1. **Inputs**: the warps (``direct_warp``) of the visits the coadd-input query
   selects for the (patch, band), their visit summaries and, when
   ``use_artifact_masks``, the ``compare_warp_artifact_mask`` of each warp
   (CLIPPED artefacts are left out, never interpolated).  Warps must be in nJy.
2. **One pass over the warps** (one read per warp; with a small
   ``memory_budget_mb``, one pass per band of cell rows, each reading only
   those rows): the detector map, weights and PSFs of each warp come from
   its visit summary (:mod:`._cell_inputs`); pixels are coded and BAD ones
   interpolated (:mod:`processing.algorithms.cell_stack`).
3. **Which inputs a cell takes** (4.4 step 5): a detector whose pixels cover at
   least ``min_overlap_fraction`` (1.0: all) of the inner cell and its centre
   pixel.  An input with more than ``max_maskfrac`` of those pixels masked
   (bad or excluded) is a *fallback*: taken (with its bad pixels left out, not
   interpolated) only while the cell has no better input; the first good input
   replaces all fallback ones.
4. **Per cell**: weighted mean (A.3, no clipping) of the outer cell; NO_DATA
   pixels interpolated afterwards (A.8) when ``do_interpolate_coadd``; the cell
   PSF (``psf_size`` 35) and aperture corrections at the cell centre; the
   inputs with their weight and overlap / unmasked fractions.
5. **Outputs**: ``deep_coadd_cell`` (:class:`processing.cell_coadds.MultipleCellCoadd`
   as a FITS bundle), ``deep_coadd_cell_stitched`` (inner cells, piecewise
   PSF) and ``deep_coadd_cell_index`` (one row per cell: inputs, PSF FWHM,
   depth; the SQL table ``CoaddCells``).

No input warp, or no populated cell, is "no work"; a sky map without cells or
a warp not in nJy is an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from store.errors import DrpError, NoWorkFound
from store.exposure import Exposure
from store.formats import get_storage_class
from store.masks import bits

from ..algorithms.cell_stack import CellGrid
from ..cell_coadds import MultipleCellCoadd, cell_summary
from ..graph import input_ref, quantum_key
from ..quantum import Quantum
from ..visit_summary import VisitSummaryCatalog
from ._cell_assembler import Assembler
from ._cell_inputs import LazyMasks, prepare_warp
from ._cell_tables import ap_corr_table, cells_table, index_table, inputs_table
from ._coadd_quanta import iter_selections, patch_geometry
from ._warp_io import FileWarp, MemoryWarp, WarpSource
from .base import Connection, PipelineTask, TaskResult

__all__ = ["AssembleCellCoaddConfig", "AssembleCellCoaddTask"]

COADD = ("skymap", "tract", "patch", "band")
WARP = ("instrument", "skymap", "tract", "patch", "visit")
VISIT = ("instrument", "visit")


@dataclass(frozen=True)
class AssembleCellCoaddConfig:
    """Settings of :class:`AssembleCellCoaddTask` (Rubin names in brackets).

    Attributes
    ----------
    skymap, inputs_query, query_params
        As in :class:`~processing.tasks.make_warp.MakeWarpConfig`.
    min_overlap_fraction : float
        Fraction of the inner cell an input's detector must cover, in [0, 1]
        [min_overlap_fraction].
    max_maskfrac : float
        Masked fraction above which an input is only a fallback, in [0, 1)
        [max_maskfrac].
    bad_mask_planes : tuple of str
        Planes marking pixels to interpolate (to leave out in fallback inputs).
    exclude_mask_planes : tuple of str
        Planes marking pixels always left out (artefacts) [with the previous:
        bad_mask_planes].
    remove_mask_planes : tuple of str
        Planes cleared from the inputs [remove_mask_planes].
    mask_propagation_thresholds : dict
        Plane -> interpolated-weight fraction above which it is set
        [mask_propagation_thresholds].
    interpolate_bad_pixels : bool
        Interpolate bad pixels in the inputs (False: leave them out per pixel,
        Rubin's current code).
    use_artifact_masks : bool
        Apply ``compare_warp_artifact_mask`` when present [do_use_artifact_mask].
    do_interpolate_coadd : bool
        Interpolate NO_DATA pixels of each cell [do_interpolate_coadd].
    weight_from_warp : bool
        Weight by the warp's variance even with a visit summary
        [do_calculate_weight_from_warp].
    psf_size : int
        Odd side of the cell PSF images, pixels [psf_dimensions].
    warp_kernel_order : int
        Lanczos order of the warps (make_warp's) and of the PSF warping.
    memory_budget_mb : float
        Accumulator memory; fewer cell rows per pass over the warps when the
        patch does not fit (each pass reads the warps again).
    """

    skymap: str | None = None
    inputs_query: str | None = None
    query_params: dict[str, Any] = field(default_factory=dict)
    min_overlap_fraction: float = 1.0
    max_maskfrac: float = 0.5
    bad_mask_planes: tuple[str, ...] = ("BAD", "NO_DATA", "SAT")
    exclude_mask_planes: tuple[str, ...] = ("CLIPPED", "STREAK")
    remove_mask_planes: tuple[str, ...] = ("EDGE", "NOT_DEBLENDED")
    mask_propagation_thresholds: dict[str, float] = field(default_factory=lambda: {"SAT": 0.1})
    interpolate_bad_pixels: bool = True
    use_artifact_masks: bool = True
    do_interpolate_coadd: bool = True
    weight_from_warp: bool = False
    psf_size: int = 35
    warp_kernel_order: int = 3
    memory_budget_mb: float = 1024.0

    def __post_init__(self):
        if not 0.0 <= self.min_overlap_fraction <= 1.0:
            raise ValueError(f"min_overlap_fraction must be in [0, 1], got "
                             f"{self.min_overlap_fraction}")
        if not 0.0 <= self.max_maskfrac < 1.0:
            raise ValueError(f"max_maskfrac must be in [0, 1), got {self.max_maskfrac}")
        if self.psf_size < 1 or self.psf_size % 2 == 0:
            raise ValueError(f"psf_size must be a positive odd number, got {self.psf_size}")
        if not self.memory_budget_mb > 0:
            raise ValueError(f"memory_budget_mb must be > 0, got {self.memory_budget_mb}")
        bits(self.bad_mask_planes, self.exclude_mask_planes, self.remove_mask_planes,
             list(self.mask_propagation_thresholds))


class AssembleCellCoaddTask(PipelineTask):
    """Coadd the warps of a patch and band cell by cell, with a PSF per cell."""

    name = "assemble_cell_coadd"
    config_class = AssembleCellCoaddConfig
    dimensions = COADD
    inputs = (
        Connection("warps", "direct_warp", WARP, "Exposure", multiple=True,
                   doc="warps of the visits the coadd-input query selects"),
        Connection("visit_summaries", "visit_summary", VISIT, "ArrowTable", multiple=True,
                   optional=True, doc="detector WCS, box, PSF, meanVar and calibration"),
        Connection("artifact_masks", "compare_warp_artifact_mask", WARP, "Image",
                   multiple=True, optional=True, doc="CLIPPED artefacts of each warp"),
    )
    outputs = (
        Connection("coadd", "deep_coadd_cell", COADD, "FitsBundle",
                   doc="all populated cells: planes, PSF, inputs, aperture corrections"),
        Connection("stitched", "deep_coadd_cell_stitched", COADD, "Exposure",
                   doc="inner cells stitched, piecewise PSF"),
        Connection("index", "deep_coadd_cell_index", COADD, "ArrowTable",
                   doc="one row per cell (the CoaddCells SQL table)"),
    )

    # -- quanta -----------------------------------------------------------------------
    @classmethod
    def build_quanta(cls, config: AssembleCellCoaddConfig, repo, collections, run, *,
                     where=None, bind=None) -> list[Quantum]:
        """One quantum per (patch, band) that a detector overlaps; empty selections are no work."""
        types = {t.name for t in repo.dataset_types()}

        def refs_of(dataset_type: str, keys: tuple[str, ...]) -> dict[tuple, Any]:
            if dataset_type not in types:
                return {}
            return {tuple(r.data_id[k] for k in keys): r
                    for r in repo.query_datasets(dataset_type, collections=collections)}

        warps = refs_of("direct_warp", ("skymap", "tract", "patch", "instrument", "visit"))
        masks = (refs_of("compare_warp_artifact_mask",
                         ("skymap", "tract", "patch", "instrument", "visit"))
                 if config.use_artifact_masks else {})
        summaries = refs_of("visit_summary", ("instrument", "visit"))
        quanta = []
        for sel in iter_selections(config, repo, collections, where=where, bind=bind):
            rows = sel.rows
            inst = (rows.column("instrument").to_pylist() if "instrument" in rows.column_names
                    else [None] * rows.num_rows)
            inputs: dict[str, list] = {"warps": [], "visit_summaries": [], "artifact_masks": []}
            seen = set()
            for instrument, visit in zip(inst, rows.column("visit").to_pylist(), strict=True):
                key = (sel.skymap, sel.tract, sel.patch, instrument, int(visit))
                if key in seen or key not in warps:
                    continue
                seen.add(key)
                inputs["warps"].append(input_ref(repo, warps[key]))
                if (instrument, int(visit)) in summaries:
                    inputs["visit_summaries"].append(
                        input_ref(repo, summaries[(instrument, int(visit))]))
                if key in masks:
                    inputs["artifact_masks"].append(input_ref(repo, masks[key]))
            data_id = sel.coadd_id
            quanta.append(Quantum(cls.name, cls, config, data_id,
                                  {k: v for k, v in inputs.items() if v},
                                  {c.name: [] for c in cls.outputs}, run, str(repo.root),
                                  key=quantum_key(cls.name, data_id),
                                  extra={"skymap_config": sel.skymap_config,
                                         "n_selected": sel.rows.num_rows}))
        return quanta

    def run_quantum(self, context) -> TaskResult:
        """Read the warps one at a time, assemble the cells, write the three outputs."""
        q = context.quantum
        _, patch = patch_geometry(q.extra["skymap_config"], q.data_id["tract"],
                                  q.data_id["patch"])
        if not context.has("warps"):
            raise NoWorkFound(f"no warp to coadd: the coadd-input query selected "
                              f"{q.extra.get('n_selected', 0)} (visit, detector) images here "
                              "and none produced a warp")
        root = Path(q.repo_root)

        def path_of(ref) -> Path:
            p = Path(ref.path)
            return p if p.is_absolute() else root / p

        def key_of(ref) -> tuple:
            return (ref.data_id.get("instrument"), int(ref.data_id["visit"]))

        sources = {key_of(r): FileWarp(path_of(r)) for r in context.refs("warps")}
        table_class = get_storage_class("ArrowTable")
        summaries = {key_of(r): table_class.read(path_of(r))
                     for r in context.refs("visit_summaries")}
        masks = LazyMasks({key_of(r): path_of(r) for r in context.refs("artifact_masks")})
        try:
            result = self.run(sources, sky_info=patch, visit_summaries=summaries,
                              artifact_masks=masks, band=q.data_id["band"],
                              skymap=q.data_id["skymap"])
        finally:
            for src in sources.values():
                src.close()
        context.put(result["coadd"].to_bundle(), "coadd")
        context.put(result["stitched"], "stitched")
        context.put(result["index"], "index")
        return result

    # -- the algorithm --------------------------------------------------------------------
    def run(self, inputs: Mapping[Any, Exposure | WarpSource | str | Path], *, sky_info,
            visit_summaries: Mapping[Any, Any] | Sequence[Any] | None = None,
            artifact_masks: Mapping[Any, Any] | None = None, band: str | None = None,
            skymap: str | None = None) -> TaskResult:
        """Assemble the cell coadd of one patch.

        Parameters
        ----------
        inputs : mapping
            ``(instrument, visit)`` (or visit) -> warp: an Exposure (nJy, tract
            frame), a :class:`WarpSource` or the path of a warp file.
        sky_info : processing.skymap.PatchInfo
            The patch: its ``wcs`` (tract WCS), ``outer_bbox`` and ``cells()``.
        visit_summaries : mapping or sequence of VisitSummaryCatalog / table, optional
            Summaries of the visits, keyed like ``inputs`` (or by visit, or a
            list): detector maps, per-detector weights, PSFs and aperture
            corrections.  Without one, a warp is a single input weighted by its
            own variance, with its own PSF.
        artifact_masks : mapping, optional
            Key -> int32 mask on the patch outer box (or its path); its CLIPPED
            pixels are left out (with ``use_artifact_masks``).
        band, skymap : str, optional
            Recorded in the outputs.

        Returns
        -------
        TaskResult
            ``coadd`` (:class:`~processing.cell_coadds.MultipleCellCoadd`),
            ``stitched`` (Exposure) and ``index`` (pyarrow table, one row per cell).

        Raises
        ------
        DrpError
            ``sky_info`` has no cells, or a warp is not in nJy.
        NoWorkFound
            No input, or no cell with an input.
        """
        _grid_of(sky_info)  # a sky map without cells is an error before anything else
        if not inputs:
            raise NoWorkFound("no input warps to coadd")
        sources = {k: _as_source(v) for k, v in inputs.items()}
        try:
            return self._run(sources, sky_info, visit_summaries, artifact_masks, band, skymap)
        finally:  # close the files opened here (the caller closes its own sources)
            for key, src in sources.items():
                if src is not inputs[key]:
                    src.close()

    def _run(self, sources: dict[Any, WarpSource], sky_info, visit_summaries, artifact_masks,
             band, skymap) -> TaskResult:
        cfg = self.config
        grid, tract, patch = _grid_of(sky_info)
        for key, src in sources.items():
            if (src.units or "").lower() != "njy":
                raise DrpError(f"warp {key} is in {src.units!r}; cell coadds need nJy warps")
        summaries = _match_summaries(visit_summaries, list(sources))
        bad_bits = bits(cfg.bad_mask_planes)
        plans = []
        for key, src in sources.items():
            plan = prepare_warp(key, src, summaries.get(key), sky_info.wcs,
                                box=sky_info.outer_bbox, kernel_order=cfg.warp_kernel_order,
                                bad=bad_bits | bits(cfg.exclude_mask_planes),
                                weight_from_warp=cfg.weight_from_warp)
            if plan is not None:
                plans.append(plan)
        if not plans:
            raise NoWorkFound(f"none of the {len(sources)} warps has a usable input")
        w_ref = float(np.median([d.weight for p in plans for d in p.detectors]))
        masks = artifact_masks if (cfg.use_artifact_masks and artifact_masks) else {}
        assembler = Assembler(cfg, grid, plans, w_ref, masks, sky_info.outer_bbox)
        out = assembler.run()
        if not out["cell_ids"]:
            raise NoWorkFound(f"no cell of patch {patch} is fully covered by an input "
                              f"({len(plans)} warps)")
        if band is None:
            first = plans[0].source
            band = first.metadata.get("BAND") or (first.visit_info.band if first.visit_info
                                                  else None)
        identifiers = {k: v for k, v in (("skymap", skymap), ("tract", tract), ("patch", patch),
                                         ("band", band)) if v is not None}
        pixel_scale = _pixel_scale(sky_info)
        summary = cell_summary(out["psf"], out["variance"], grid, pixel_scale)
        cells = cells_table(grid, sky_info.wcs, out, summary, w_ref)
        coadd = MultipleCellCoadd(grid, sky_info.wcs, cells, out["image"], out["mask"],
                                  out["variance"], out["maskfrac"], out["psf"],
                                  inputs_table(out["inputs"], w_ref),
                                  ap_corr_table(out["ap_corr"]), identifiers, pixel_scale)
        index = index_table(grid, sky_info.wcs, cells, identifiers)
        n_fallback = int(np.sum(cells.column("is_fallback").to_numpy(zero_copy_only=False)))
        return TaskResult(coadd=coadd, stitched=coadd.stitch(), index=index,
                          metadata={"n_warps": len(plans), "n_cells": len(coadd),
                                    "n_fallback_cells": n_fallback,
                                    "n_inputs": coadd.inputs.num_rows,
                                    "n_passes": assembler.n_passes})


def _grid_of(sky_info) -> tuple[CellGrid, Any, Any]:
    """The cell grid of a patch (error when the sky map has no cells)."""
    cells_of = getattr(sky_info, "cells", None)
    cells = list(cells_of()) if callable(cells_of) else []
    if not cells:
        raise DrpError(f"the sky map of {sky_info!r} has no cells: cell coadds need a cell-based "
                       "sky map (patches divided into cells)")
    try:
        grid = CellGrid.from_cells(cells)
    except ValueError as err:
        raise DrpError(f"the sky map of {sky_info!r} has no regular cell grid: {err}") from None
    return grid, getattr(sky_info, "tract", None), getattr(sky_info, "id", None)


def _pixel_scale(sky_info) -> float:
    geometry = getattr(sky_info, "geometry", None)
    if geometry is not None:
        return float(geometry.pixel_scale)
    from astropy.wcs.utils import proj_plane_pixel_scales

    return float(np.mean(proj_plane_pixel_scales(sky_info.wcs.celestial)) * 3600.0)


def _as_source(value) -> WarpSource:
    if isinstance(value, WarpSource):
        return value
    if isinstance(value, Exposure):
        return MemoryWarp(value)
    return FileWarp(value)


def _match_summaries(summaries, keys: list) -> dict[Any, VisitSummaryCatalog]:
    """Visit summaries keyed like the warps (matched by key, then by visit number)."""
    if summaries is None:
        return {}
    items = (list(summaries.values()) if isinstance(summaries, Mapping)
             else list(summaries))
    given = dict(summaries) if isinstance(summaries, Mapping) else {}
    cats = [s if isinstance(s, VisitSummaryCatalog) else VisitSummaryCatalog.from_table(s)
            for s in items]
    by_visit = {c.visit: c for c in cats if c.visit is not None}
    by_key = dict(zip(given, cats, strict=True)) if given else {}
    out = {}
    for key in keys:
        visit = int(key[-1] if isinstance(key, tuple) else key)
        cat = by_key.get(key)
        cat = by_visit.get(visit) if cat is None else cat
        if cat is not None:
            out[key] = cat
    return out


