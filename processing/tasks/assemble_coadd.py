"""AssembleCoaddTask: weighted coadd of the direct warps of one patch and band.

Rubin's ``AssembleCoaddTask`` / ``CompareWarpAssembleCoaddTask``
(``reference/algorithms.md`` 3.1-3.7, A.1-A.8), writing ``deep_coadd`` (an
Exposure in nJy on the patch outer box, tract WCS, CoaddPsf), ``deep_coadd_n_image``,
``deep_coadd_visit_selection`` (the coadd-input query's rows with each visit's
weight) and, for SAFECLIP, ``compare_warp_artifact_mask`` per visit (the warp's
mask with the artefacts set CLIPPED, for the cell coadds).

1. **Inputs**: the warps of the visits the coadd-input query selects for the
   (patch, band) (:meth:`AssembleCoaddTask.build_quanta`), in seeing order.
2. **Weights** (3.3): ``1 / MEANCLIP(variance)`` (3 sigma, 2 iterations,
   ignoring ``bad_mask_planes``), read from the warp's ``MEANVAR`` card when
   make_warp computed it with the same bad mask (STREAK aside), otherwise
   measured on a sample of the warp's rows.  Warps without a usable pixel or weight are
   skipped with a warning; none left is "no work".
3. **Subregions**: full-width strips whose height keeps the working memory
   under ``memory_budget_mb`` whatever the number of inputs.  Each strip of
   every warp is read (seek + read, no memory map), the ``remove_mask_planes``
   bits cleared, and stacked by the compiled kernels of
   :mod:`processing.algorithms.stack_kernels` with the mask map of A.4
   (rejected bad bits -> REJECTED, EDGE -> SENSOR_EDGE, CLIPPED -> CLIPPED),
   propagation thresholds, INEXACT_PSF and ``n_image``.
4. **Statistics**: MEAN; MEANCLIP (``sigma_clip`` 3, ``clip_iter`` 2); SAFECLIP
   (default): artefacts found by :func:`processing.algorithms.artifacts.find_artifacts`
   on the strip grown by ``artifact_margin`` rows (the warps matched to a
   common PSF with kernels computed from their PSF models) are set CLIPPED in
   their warps, then a MEAN with CLIPPED as a bad bit.
5. **Coadd PSF** (3.7): a :class:`~store.coadd_psf.CoaddPsf`,
   the union of the warps' per-detector components (valid polygon, PSF on a
   grid) with the warps' weights, so that at any position it is the weighted
   mean of the PSFs of the inputs covering it.
6. NO_DATA where the variance is 0 (A.5), then NO_DATA pixels interpolated
   (A.8) and non-positive variances set to +inf.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from store.calib import PhotoCalib
from store.coadd_psf import CoaddPsf
from store.errors import DrpError, NoWorkFound
from store.exposure import Exposure, VisitInfo
from store.geom import Box
from store.masks import bits

from ..algorithms.artifacts import ArtifactConfig, find_artifacts
from ..algorithms.coadd_psf import combine_coadd_psfs
from ..algorithms.interpolate import interpolate_masked
from ..algorithms.stack import DEFAULT_BAD_MASK_PLANES, rejected_mask_map, set_coadd_edge_bits
from ..algorithms.stack_kernels import stack_block
from ..algorithms.stats import clipped_stats
from ..graph import input_ref, quantum_key
from ..quantum import Quantum
from ._coadd_quanta import iter_selections, patch_geometry
from ._warp_io import FileWarp, MemoryWarp, WarpSource
from .base import Connection, PipelineTask, TaskResult

__all__ = ["STATISTICS", "AssembleCoaddConfig", "AssembleCoaddTask"]

COADD = ("skymap", "tract", "patch", "band")
WARP = ("instrument", "skymap", "tract", "patch", "visit")
#: Statistics the task offers.
STATISTICS = ("MEAN", "MEANCLIP", "SAFECLIP")


@dataclass(frozen=True)
class AssembleCoaddConfig:
    """Settings of :class:`AssembleCoaddTask` (Rubin names in brackets).

    Attributes
    ----------
    skymap, inputs_query, query_params
        As in :class:`~processing.tasks.make_warp.MakeWarpConfig` (give both
        tasks the same query).
    statistic : {"MEAN", "MEANCLIP", "SAFECLIP"}
        [statistic]; SAFECLIP is the artefact rejection of CompareWarp.
    sigma_clip, clip_iter : float, int
        MEANCLIP settings and those of the weight statistic [sigmaClip, clipIter].
    bad_mask_planes : tuple of str
        Planes rejecting an input pixel [badMaskPlanes]; with STREAK, a satellite
        or meteor trail masked in its visit by
        :mod:`processing.algorithms.streaks` is excluded even where the
        safe-clip cannot decide (fewer than three inputs).
    remove_mask_planes : tuple of str
        Planes cleared from the inputs [removeMaskPlanes].
    mask_propagation_thresholds : dict
        Plane -> rejected-weight fraction [maskPropagationThresholds].
    calc_error_from_input_variance : bool
        [calcErrorFromInputVariance].
    artifacts : ArtifactConfig
        SAFECLIP's artefact finder.
    artifact_margin : int
        Rows added above and below each strip for the artefact finder.
    do_interp : bool
        Interpolate NO_DATA pixels [doInterp].
    psf_grid : int
        Nodes per side of the PSF grid of each coadd PSF component (warps whose
        components use another grid are re-tabulated).
    memory_budget_mb : float
        Working memory of the strip buffers, MB.
    write_artifact_masks : bool
        Write ``compare_warp_artifact_mask`` (SAFECLIP) [doWriteArtifactMasks].
    """

    skymap: str | None = None
    inputs_query: str | None = None
    query_params: dict[str, Any] = field(default_factory=dict)
    statistic: str = "SAFECLIP"
    sigma_clip: float = 3.0
    clip_iter: int = 2
    bad_mask_planes: tuple[str, ...] = (*DEFAULT_BAD_MASK_PLANES, "STREAK")
    remove_mask_planes: tuple[str, ...] = ("NOT_DEBLENDED",)
    mask_propagation_thresholds: dict[str, float] = field(default_factory=lambda: {"SAT": 0.1})
    calc_error_from_input_variance: bool = True
    artifacts: ArtifactConfig = field(default_factory=ArtifactConfig)
    artifact_margin: int = 32
    do_interp: bool = True
    psf_grid: int = 5
    memory_budget_mb: float = 512.0
    write_artifact_masks: bool = True

    def __post_init__(self):
        if self.statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {STATISTICS}, got {self.statistic!r}")
        if not self.memory_budget_mb > 0:
            raise ValueError(f"memory_budget_mb must be > 0, got {self.memory_budget_mb}")
        bits(self.bad_mask_planes, self.remove_mask_planes, list(self.mask_propagation_thresholds))


class AssembleCoaddTask(PipelineTask):
    """Coadd the direct warps of a patch and band (mean, clipped mean or safe-clip)."""

    name = "assemble_coadd"
    config_class = AssembleCoaddConfig
    dimensions = COADD
    inputs = (Connection("warps", "direct_warp", WARP, "Exposure", multiple=True,
                         doc="warps of the visits the coadd-input query selects"),)
    outputs = (
        Connection("coadd", "deep_coadd", COADD, "Exposure"),
        Connection("n_image", "deep_coadd_n_image", COADD, "Image"),
        Connection("selection", "deep_coadd_visit_selection", COADD, "ArrowTable"),
        Connection("artifact_masks", "compare_warp_artifact_mask", WARP, "Image", multiple=True),
    )

    # -- quanta -----------------------------------------------------------------------
    @classmethod
    def build_quanta(cls, config: AssembleCoaddConfig, repo, collections, run, *, where=None,
                     bind=None) -> list[Quantum]:
        """One quantum per (patch, band) that a detector overlaps; empty selections are no work."""
        warps = {}
        if "direct_warp" in {t.name for t in repo.dataset_types()}:
            for ref in repo.query_datasets("direct_warp", collections=collections):
                d = ref.data_id
                warps[(d["skymap"], d["tract"], d["patch"], d["instrument"], d["visit"])] = ref
        quanta = []
        for sel in iter_selections(config, repo, collections, where=where, bind=bind):
            seen, refs = set(), []
            rows = sel.rows
            inst = (rows.column("instrument").to_pylist() if "instrument" in rows.column_names
                    else [None] * rows.num_rows)
            for instrument, visit in zip(inst, rows.column("visit").to_pylist(), strict=True):
                key = (sel.skymap, sel.tract, sel.patch, instrument, int(visit))
                if key not in seen and key in warps:
                    seen.add(key)
                    refs.append(warps[key])
            data_id = sel.coadd_id
            inputs = {"warps": [input_ref(repo, r) for r in refs]} if refs else {}
            quanta.append(Quantum(cls.name, cls, config, data_id, inputs,
                                  {c.name: [] for c in cls.outputs}, run, str(repo.root),
                                  key=quantum_key(cls.name, data_id),
                                  extra={"skymap_config": sel.skymap_config,
                                         "selection": sel.rows}))
        return quanta

    def run_quantum(self, context) -> TaskResult:
        """Read the warps strip by strip, assemble, write (artefact masks one at a time)."""
        q = context.quantum
        tract, patch = patch_geometry(q.extra["skymap_config"], q.data_id["tract"],
                                      q.data_id["patch"])
        selection = q.extra.get("selection")
        if not context.has("warps"):
            n = 0 if selection is None else selection.num_rows
            raise NoWorkFound(f"no warp to coadd: the coadd-input query selected {n} "
                              "(visit, detector) images here and none produced a warp")
        root = Path(q.repo_root)
        sources = {}
        for ref in context.refs("warps"):
            path = Path(ref.path)
            sources[(ref.data_id["instrument"], int(ref.data_id["visit"]))] = FileWarp(
                path if path.is_absolute() else root / path)
        try:
            result = self.run(sources, patch_bbox=patch.outer_bbox, tract_wcs=tract.wcs,
                              band=q.data_id["band"], selection=selection)
            self.write_outputs(context, result)
        finally:
            for src in sources.values():
                src.close()
        return result

    # -- the algorithm --------------------------------------------------------------------
    def run(self, warps: Mapping[Any, Exposure | WarpSource | str | Path], *, patch_bbox: Box,
            tract_wcs=None, band: str | None = None, selection: pa.Table | None = None
            ) -> TaskResult:
        """Assemble a coadd from warps.

        Parameters
        ----------
        warps : mapping
            ``(instrument, visit)`` (or visit) -> warp: an Exposure, a
            :class:`WarpSource` or the path of a warp file.
        patch_bbox : Box
            The coadd box (patch outer box, tract pixels).
        tract_wcs : astropy.wcs.WCS, optional
            The coadd WCS (default: the first warp's).
        band : str, optional
            Recorded in the coadd.
        selection : pyarrow.Table, optional
            The coadd-input query's rows, returned with weights as ``selection``.

        Returns
        -------
        TaskResult
            ``coadd`` (Exposure, nJy), ``n_image`` (int32 array), ``selection``
            (table) and ``artifact_masks`` (lazy mapping key -> int32 mask; SAFECLIP).

        Raises
        ------
        NoWorkFound
            No warp has a usable pixel and weight.
        """
        cfg = self.config
        sources = {k: _as_source(v) for k, v in warps.items()}
        bad = bits(cfg.bad_mask_planes)
        keys, weights = [], []
        for key, src in sources.items():
            if (src.units or "").lower() != "njy":
                raise DrpError(f"warp {key} is in {src.units!r}; coadds need nJy warps")
            w = self._weight(src, patch_bbox, bad)
            if np.isfinite(w):
                keys.append(key)
                weights.append(w)
            else:
                warnings.warn(f"warp {key} has no usable pixel or variance in {patch_bbox}; "
                              "skipped", stacklevel=2)
        if not keys:
            raise NoWorkFound(f"none of the {len(sources)} warps has a usable pixel in "
                              f"{patch_bbox}")
        weights = np.asarray(weights)
        stack = _StripStacker(self.config, [sources[k] for k in keys], weights, patch_bbox, bad)
        out = stack.run()
        psf = self._coadd_psf([sources[k] for k in keys], weights, patch_bbox)
        image, variance, mask = out["image"], out["variance"], out["mask"]
        set_coadd_edge_bits(mask, variance)
        if cfg.do_interp:
            interpolate_masked(image, mask, bits("NO_DATA"), variance=variance)
        first = sources[keys[0]]
        band = band or (first.visit_info.band if first.visit_info else None)
        metadata = {"BAND": band, "STATISTIC": cfg.statistic, "NINPUTS": len(keys)}
        for i, (key, w) in enumerate(zip(keys, weights, strict=True)):
            metadata[f"INPUT_VISIT{i}"] = int(key[-1] if isinstance(key, tuple) else key)
            metadata[f"INPUT_WEIGHT{i}"] = float(w)
        coadd = Exposure(image, mask, variance, wcs=tract_wcs or first.wcs, psf=psf,
                         photo_calib=PhotoCalib(1.0), units="nJy",
                         visit_info=VisitInfo(band=band), xy0=(patch_bbox.x0, patch_bbox.y0),
                         metadata=metadata)
        result = TaskResult(coadd=coadd, n_image=out["n_image"],
                            selection=_selection_table(selection, keys, weights, sources),
                            metadata={"n_inputs": len(keys),
                                      "n_clipped_pixels": int(stack.n_clipped_pixels)})
        if cfg.statistic == "SAFECLIP" and cfg.write_artifact_masks:
            result["artifact_masks"] = _ArtifactMasks(
                {k: sources[k] for k in keys}, dict(zip(keys, stack.spans, strict=True)),
                patch_bbox)
        return result

    def _weight(self, src: WarpSource, box: Box, bad: int) -> float:
        md = src.metadata
        # A card computed with or without STREAK serves: the 3-sigma clipping of the
        # variance already rejects a trail's raised variance.
        streak = bits("STREAK")
        if ("MEANVAR" in md and (int(md.get("MEANVARMASK", -1)) | streak) == (bad | streak)
                and self.config.sigma_clip == 3.0 and self.config.clip_iter == 2):
            mean_var = float(md["MEANVAR"])
        else:
            mean_var = _sampled_mean_variance(src, box, bad, self.config.sigma_clip,
                                              self.config.clip_iter)
        return 1.0 / mean_var if np.isfinite(mean_var) and mean_var > 0 else float("nan")

    def _coadd_psf(self, sources, weights, box: Box) -> CoaddPsf:
        """The union of the warps' PSF components, each weighted by its warp's weight (3.7)."""
        return combine_coadd_psfs([s.psf for s in sources], weights, box,
                                  n_grid=self.config.psf_grid)


def _as_source(value) -> WarpSource:
    if isinstance(value, WarpSource):
        return value
    if isinstance(value, Exposure):
        return MemoryWarp(value)
    return FileWarp(value)


def _sampled_mean_variance(src: WarpSource, box: Box, bad: int, n_sigma: float,
                           n_iter: int) -> float:
    """MEANCLIP of the variance on up to ~16 strips of 64 rows spread over the box."""
    inside = box.intersection(src.bbox)
    if inside.is_empty:
        return float("nan")
    rows = 64
    starts = list(range(inside.y0, inside.y1, rows))
    step = max(1, len(starts) // 16)
    values, masks = [], []
    for y0 in starts[::step]:
        strip = Box(inside.x0, y0, inside.width, min(rows, inside.y1 - y0))
        img = np.empty(strip.shape, np.float32)
        var = np.empty(strip.shape, np.float32)
        msk = np.empty(strip.shape, np.int32)
        src.read(strip, img, var, msk)
        msk[~np.isfinite(img)] |= bits("NO_DATA")
        values.append(var)
        masks.append(msk)
    stats = clipped_stats(np.concatenate(values), n_sigma=n_sigma, n_iter=n_iter,
                          mask=np.concatenate(masks), and_mask=bad)
    return float(stats.mean)


class _StripStacker:
    """The subregion loop: read every warp strip by strip, find artefacts, stack."""

    def __init__(self, config: AssembleCoaddConfig, sources: list[WarpSource],
                 weights: np.ndarray, box: Box, bad: int):
        self.config = config
        self.sources = sources
        self.weights = weights
        self.box = box
        self.bad = bad
        self.safe = config.statistic == "SAFECLIP"
        self.margin = config.artifact_margin if self.safe else 0
        n = len(sources)
        per_pixel = 24 if self.safe else 12  # working bytes per input pixel
        budget = config.memory_budget_mb * 1e6
        rows = int(budget // (n * box.width * per_pixel)) - 2 * self.margin
        self.rows = int(np.clip(rows, 16, box.height))
        self.spans: list[list[np.ndarray]] = [[] for _ in sources]
        self.n_clipped_pixels = 0

    def strips(self) -> Iterator[tuple[Box, Box]]:
        """(inner strip, strip grown by the margin and clipped to the box)."""
        b = self.box
        for y0 in range(b.y0, b.y1, self.rows):
            inner = Box(b.x0, y0, b.width, min(self.rows, b.y1 - y0))
            lo, hi = max(b.y0, y0 - self.margin), min(b.y1, inner.y1 + self.margin)
            yield inner, Box(b.x0, lo, b.width, hi - lo)

    def _find_artifacts(self, xs, vs, ms, grown: Box):
        """The artefact finder on a strip, matching with the warps' PSF models there."""
        return find_artifacts(xs, vs, ms, self.weights, bad_mask=self.bad,
                              config=self.config.artifacts, psfs=[s.psf for s in self.sources],
                              origin=(grown.x0, grown.y0))

    def run(self) -> dict[str, np.ndarray]:
        cfg = self.config
        b = self.box
        n = len(self.sources)
        out = {"image": np.empty(b.shape, np.float32), "variance": np.empty(b.shape, np.float32),
               "mask": np.empty(b.shape, np.int32), "n_image": np.empty(b.shape, np.int32)}
        height = min(b.height, self.rows + 2 * self.margin)
        x = np.empty((n, height, b.width), np.float32)
        v = np.empty((n, height, b.width), np.float32)
        m = np.empty((n, height, b.width), np.int32)
        remove = ~np.int32(bits(cfg.remove_mask_planes)) if cfg.remove_mask_planes else None
        bad = self.bad | (bits("CLIPPED") if self.safe else 0)
        statistic = "MEAN" if self.safe else cfg.statistic
        for inner, grown in self.strips():
            h = grown.height
            xs, vs, ms = x[:, :h], v[:, :h], m[:, :h]
            for k, src in enumerate(self.sources):
                src.read(grown, xs[k], vs[k], ms[k])
            if remove is not None:
                np.bitwise_and(ms, remove, out=ms)
            a, z = inner.y0 - grown.y0, inner.y1 - grown.y0
            if self.safe:
                found = self._find_artifacts(xs, vs, ms, grown)
                clip = found.clipped[:, a:z]
                for k in np.flatnonzero(clip.any(axis=(1, 2))):
                    ms[k, a:z][clip[k]] |= np.int32(bits("CLIPPED"))
                    self.spans[k].append(_runs(clip[k], inner.y0))
                    self.n_clipped_pixels += int(clip[k].sum())
            res = stack_block(xs[:, a:z], vs[:, a:z], ms[:, a:z], self.weights,
                              statistic=statistic, n_sigma=cfg.sigma_clip, n_iter=cfg.clip_iter,
                              bad_mask=bad, mask_map=rejected_mask_map(bad),
                              thresholds=cfg.mask_propagation_thresholds,
                              calc_error_from_input_variance=cfg.calc_error_from_input_variance)
            rows = slice(inner.y0 - b.y0, inner.y1 - b.y0)
            out["image"][rows] = res.image
            out["variance"][rows] = res.variance
            out["mask"][rows] = res.mask
            out["n_image"][rows] = res.n_image
        return out


def _runs(clip: np.ndarray, y0: int) -> np.ndarray:
    """Runs of True along rows: ``(n, 3)`` int32 rows of (y, x_start, x_end) (box offsets)."""
    padded = np.zeros((clip.shape[0], clip.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = clip
    d = np.diff(padded, axis=1)
    ry, rs = np.nonzero(d == 1)
    _, re = np.nonzero(d == -1)
    return np.column_stack([ry + y0, rs, re]).astype(np.int32)


class _ArtifactMasks(Mapping):
    """Warp masks with CLIPPED applied, built one at a time when asked for."""

    def __init__(self, sources: dict, spans: dict, box: Box):
        self._sources = sources
        self._spans = spans
        self._box = box

    def __getitem__(self, key) -> np.ndarray:
        mask = self._sources[key].read_mask(self._box)
        clipped = np.int32(bits("CLIPPED"))
        for runs in self._spans[key]:
            for y, xa, xb in runs:
                mask[y - self._box.y0, xa:xb] |= clipped
        return mask

    def __iter__(self):
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)


def _selection_table(selection: pa.Table | None, keys, weights, sources) -> pa.Table:
    """The query's rows plus each visit's coadd weight and whether it was used."""
    by_visit = {(k if isinstance(k, tuple) else (None, k)): w
                for k, w in zip(keys, weights, strict=True)}
    if selection is None or selection.num_rows == 0:
        rows = []
        for key, src in sources.items():
            inst, visit = key if isinstance(key, tuple) else (None, key)
            md = src.metadata
            for i in range(int(md.get("NINPUTS", 0))):
                rows.append({"instrument": inst, "visit": int(visit),
                             "detector": int(md[f"INPUT_DET{i}"])})
        selection = pa.Table.from_pylist(rows) if rows else pa.table(
            {"visit": pa.array([], pa.int64()), "detector": pa.array([], pa.int64())})
    inst = (selection.column("instrument").to_pylist() if "instrument" in selection.column_names
            else [None] * selection.num_rows)
    w = []
    for i, v in zip(inst, selection.column("visit").to_pylist(), strict=True):
        w.append(by_visit.get((i, int(v)), by_visit.get((None, int(v)))))
    return (selection.append_column("weight", pa.array(w, pa.float64()))
            .append_column("used", pa.array([x is not None for x in w], pa.bool_())))
