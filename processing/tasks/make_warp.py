"""MakeWarpTask: resample the selected detector images of one visit onto a patch.

Rubin's ``MakeDirectWarpTask`` (``reference/algorithms.md`` 5.1-5.3, A.6, A.7),
writing ``direct_warp`` (an Exposure in nJy on the tract pixel grid, covering
the patch outer box grown by ``border``) and ``direct_warp_masked_fraction``
per (skymap, tract, patch, visit).

Which detectors: the coadd-input query (``queries/coadd_inputs.sql`` or the
config's ``inputs_query`` file) is run for every (patch, band) that some
detector overlaps, in :meth:`MakeWarpTask.build_quanta`; each visit with
selected detectors becomes one quantum holding exactly those ``visit_image``
datasets (the per-detector cuts of Rubin's pre-warp ``select`` subtask live in
that query).

For each selected detector, in detector order:

1. read only the part of the image that maps into the target box (plus the
   kernel margin); pixels whose variance is not positive and finite get image
   NaN, so every output pixel whose kernel touches them is NO_DATA;
2. calibrate to nJy if the image is still in ADU (``photo_calib``);
3. warp with :func:`processing.algorithms.warp.warp_image` (Lanczos-3, exact
   transform every ``interp_length`` pixels, interpolated between); the
   ``spread_mask_planes`` bits spread to every output pixel whose Lanczos
   footprint touches them, other bits through the 2 x 2 bilinear footprint;
4. paste the good pixels into the warp ("later wins where valid", A.6);
5. warp the bad-pixel indicator (``masked_fraction_planes``, or a variance
   that is not positive and finite) with a bilinear kernel into the masked
   fraction image.

The warp's PSF is a :class:`~store.coadd_psf.CoaddPsf` with
one component per detector: the detector's valid region (its box less the
Lanczos kernel's reach, outline mapped to tract pixels) and its PSF evaluated at
the corresponding detector positions of ``psf_grid x psf_grid`` nodes over the
part of the target box it covers, warped through the local Jacobian of the WCS
pair.  A position is thus given the PSF of the detector that covers it (the
coadd combines the components of all its warps the same way).  The
inputs are recorded in the metadata (``NINPUTS``, ``INPUT_DET<i>``,
``INPUT_NGOOD<i>``), with the clipped mean variance used for coadd weights
(``MEANVAR``, over the patch outer box, 3 sigma x 2 iterations, ignoring the
``weight_bad_mask_planes`` bits recorded as ``MEANVARMASK``).

Decisions: the default border is 0 (Rubin: 256 px, needed by its PSF-matched
warps, which drp does not make); ``visit_image`` already carries the final
calibrations, so the visit summary's components are used only with
``use_visit_summary=True``.  A warp without any good pixel is "no work".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from store.calib import PhotoCalib
from store.coadd_psf import CoaddPsf
from store.errors import DrpError, NoWorkFound
from store.exposure import Exposure, ExposureInfo
from store.geom import Box
from store.masks import bits

from ..algorithms.cell_psf import warp_psf_kernels
from ..algorithms.coadd_psf import psf_grid_centers
from ..algorithms.polygons import box_outline
from ..algorithms.psf_images import kernel_images
from ..algorithms.stack import DEFAULT_BAD_MASK_PLANES
from ..algorithms.stats import clipped_stats
from ..algorithms.warp import (
    WarpConfig,
    compute_pixel_mapping,
    local_jacobian,
    transform_pixels,
    warp_image,
)
from ..graph import input_ref, quantum_key
from ..quantum import Quantum
from ..visit_summary import VisitSummaryCatalog
from ._coadd_quanta import iter_selections, patch_geometry, rows_by_visit
from .base import Connection, PipelineTask, TaskResult

__all__ = ["DetectorInput", "MakeWarpConfig", "MakeWarpTask"]

DETECTOR = ("instrument", "visit", "detector")
VISIT = ("instrument", "visit")
WARP = ("instrument", "skymap", "tract", "patch", "visit")

#: Planes spread over the whole Lanczos footprint ("every output pixel it touches").
SPREAD_MASK_PLANES = ("BAD", "SAT", "CR", "INTRP", "SUSPECT", "EDGE", "NO_DATA", "STREAK")


@dataclass(frozen=True)
class MakeWarpConfig:
    """Settings of :class:`MakeWarpTask`.

    Attributes
    ----------
    skymap : str or None
        Sky map to warp onto (None: every registered one).
    inputs_query : str or None
        Path of a coadd-input ``.sql`` file (None: ``queries/coadd_inputs.sql``).
    query_params : dict
        Values of the query's parameters (e.g. ``{"max_psf_fwhm": 1.5}``).
    border : int
        Pixels added around the patch outer box.
    warp : WarpConfig
        Kernel and transform settings (Lanczos-3, ``interp_length`` 10).
    spread_mask_planes : tuple of str
        Planes OR'ed over the full kernel footprint (others: bilinear 2 x 2).
    masked_fraction_planes : tuple of str
        Planes counted as masked in ``direct_warp_masked_fraction``.
    psf_grid : int
        Nodes per side of the warp's GridPsf.
    psf_size : int or None
        Odd side of the warp PSF kernels, tract pixels (None: the largest input size).
    weight_bad_mask_planes : tuple of str
        Planes ignored by the ``MEANVAR`` statistic.
    use_visit_summary : bool
        Take WCS, PSF and calibration from the visit summary instead of the image.
    """

    skymap: str | None = None
    inputs_query: str | None = None
    query_params: dict[str, Any] = field(default_factory=dict)
    border: int = 0
    warp: WarpConfig = field(default_factory=WarpConfig)
    spread_mask_planes: tuple[str, ...] = SPREAD_MASK_PLANES
    masked_fraction_planes: tuple[str, ...] = ("BAD", "SAT", "CR", "NO_DATA")
    psf_grid: int = 5
    psf_size: int | None = None
    weight_bad_mask_planes: tuple[str, ...] = DEFAULT_BAD_MASK_PLANES
    use_visit_summary: bool = False

    def __post_init__(self):
        if self.border < 0:
            raise ValueError(f"border must be >= 0 pixels, got {self.border}")
        if self.psf_grid < 1:
            raise ValueError(f"psf_grid must be >= 1, got {self.psf_grid}")
        if self.psf_size is not None and (self.psf_size < 1 or self.psf_size % 2 == 0):
            raise ValueError(f"psf_size must be a positive odd number, got {self.psf_size}")
        bits(self.spread_mask_planes, self.masked_fraction_planes, self.weight_bad_mask_planes)


class DetectorInput:
    """One detector image, read lazily: its components first, then only the pixels needed.

    Parameters
    ----------
    source : Exposure or path-like
        An exposure in memory, or the path of an exposure FITS file.
    """

    def __init__(self, source: Exposure | str | Path):
        self._exposure = source if isinstance(source, Exposure) else None
        self._path = None if self._exposure is not None else Path(source)
        self._info: Exposure | ExposureInfo | None = self._exposure

    def __repr__(self) -> str:
        return f"DetectorInput({self._path or self._exposure!r})"

    def info(self) -> Exposure | ExposureInfo:
        """Components and metadata (the exposure itself when in memory)."""
        if self._info is None:
            from store.formats.fits import read_exposure_info

            self._info = read_exposure_info(self._path)
        return self._info

    def read(self, bbox: Box) -> Exposure:
        """The pixels inside ``bbox`` (parent coordinates, within the image)."""
        if self._exposure is not None:
            return self._exposure.cutout(bbox)
        from store.formats.fits import read_exposure

        return read_exposure(self._path, bbox=bbox)


def _perimeter(box: Box, n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    (xa, ya), (xb, yb) = box.corners()[0], box.corners()[2]
    tx = np.linspace(xa, xb, n + 1)
    ty = np.linspace(ya, yb, n + 1)
    return (np.concatenate([tx, tx, np.full(ty.size, xa), np.full(ty.size, xb)]),
            np.concatenate([np.full(tx.size, ya), np.full(tx.size, yb), ty, ty]))


def _mapped_box(box: Box, from_wcs, to_wcs, margin: int, clip: Box) -> Box:
    """Pixels of ``clip`` (in ``to_wcs``) covered by ``box`` (in ``from_wcs``), grown by ``margin``."""
    px, py = _perimeter(box)
    x, y = transform_pixels(to_wcs, from_wcs, px, py)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return clip
    out = Box.from_minmax(int(np.floor(x.min())) - margin, int(np.floor(y.min())) - margin,
                          int(np.ceil(x.max())) + margin, int(np.ceil(y.max())) + margin)
    return out.intersection(clip)


class MakeWarpTask(PipelineTask):
    """Warp the selected detectors of a visit onto a patch of the sky map."""

    name = "make_warp"
    config_class = MakeWarpConfig
    dimensions = WARP
    inputs = (
        Connection("visit_images", "visit_image", DETECTOR, "Exposure", multiple=True,
                   doc="calibrated detector images (nJy) selected by the coadd-input query"),
        Connection("visit_summary", "visit_summary", VISIT, "ArrowTable", optional=True,
                   doc="per-detector components and summary statistics"),
    )
    outputs = (
        Connection("warp", "direct_warp", WARP, "Exposure"),
        Connection("masked_fraction", "direct_warp_masked_fraction", WARP, "Image"),
    )

    # -- quanta -----------------------------------------------------------------------
    @classmethod
    def build_quanta(cls, config: MakeWarpConfig, repo, collections, run, *, where=None,
                     bind=None) -> list[Quantum]:
        """One quantum per (visit, patch) with detectors selected by the coadd-input query."""
        if "visit_image" not in {t.name for t in repo.dataset_types()}:
            return []
        images = {}
        for ref in repo.query_datasets("visit_image", collections=collections):
            d = ref.data_id
            images[(d["instrument"], int(d["visit"]), int(d["detector"]))] = ref
        summaries = {}
        if "visit_summary" in {t.name for t in repo.dataset_types()}:
            for ref in repo.query_datasets("visit_summary", collections=collections):
                summaries[(ref.data_id["instrument"], int(ref.data_id["visit"]))] = ref
        quanta: dict[str, Quantum] = {}
        for sel in iter_selections(config, repo, collections, where=where, bind=bind):
            for (instrument, visit), rows in rows_by_visit(sel.rows).items():
                dets = [int(d) for d in rows.column("detector").to_pylist()]
                refs = [images[(instrument, visit, d)] for d in sorted(set(dets))
                        if (instrument, visit, d) in images]
                if not refs:
                    continue
                data_id = {"instrument": instrument, "skymap": sel.skymap, "tract": sel.tract,
                           "patch": sel.patch, "visit": visit}
                inputs = {"visit_images": [input_ref(repo, r) for r in refs]}
                if (instrument, visit) in summaries:
                    inputs["visit_summary"] = [input_ref(repo, summaries[(instrument, visit)])]
                key = quantum_key(cls.name, data_id)
                quanta[key] = Quantum(cls.name, cls, config, data_id, inputs,
                                      {c.name: [] for c in cls.outputs}, run, str(repo.root),
                                      key=key, extra={"skymap_config": sel.skymap_config})
        return [quanta[k] for k in sorted(quanta)]

    def run_quantum(self, context) -> TaskResult:
        """Read lazily (only the pixels each detector contributes), warp, write."""
        q = context.quantum
        tract, patch = patch_geometry(q.extra["skymap_config"], q.data_id["tract"],
                                      q.data_id["patch"])
        root = Path(q.repo_root)
        images = {}
        for ref in context.refs("visit_images"):
            path = Path(ref.path)
            images[int(ref.data_id["detector"])] = DetectorInput(
                path if path.is_absolute() else root / path)
        summary = context.get("visit_summary") if context.has("visit_summary") else None
        result = self.run(images, summary, tract_wcs=tract.wcs, patch_bbox=patch.outer_bbox)
        result["warp"].metadata.update({"SKYMAP": q.data_id["skymap"],
                                        "TRACT": q.data_id["tract"],
                                        "PATCH": q.data_id["patch"]})
        self.write_outputs(context, result)
        return result

    # -- the algorithm --------------------------------------------------------------------
    def run(self, visit_images: Mapping[int, Exposure | DetectorInput], visit_summary=None, *,
            tract_wcs, patch_bbox: Box) -> TaskResult:
        """Warp one visit's detector images onto a patch.

        Parameters
        ----------
        visit_images : mapping of int to Exposure or DetectorInput
            Detector id -> calibrated image (nJy, or ADU with a PhotoCalib).
        visit_summary : VisitSummaryCatalog or pyarrow.Table, optional
            The visit's summary (components used with ``use_visit_summary``).
        tract_wcs : astropy.wcs.WCS
            The tract WCS (0-based tract pixels).
        patch_bbox : Box
            The patch outer box in tract pixels; the warp covers it grown by ``border``.

        Returns
        -------
        TaskResult
            ``warp`` (Exposure, nJy, tract WCS, CoaddPsf) and ``masked_fraction``
            (float32 array on the same box, NaN where no detector contributes).

        Raises
        ------
        NoWorkFound
            No detector contributes a good pixel.
        """
        cfg = self.config
        if not visit_images:
            raise NoWorkFound("no detector image selected for this visit and patch")
        summary = None
        if visit_summary is not None:
            summary = (visit_summary if isinstance(visit_summary, VisitSummaryCatalog)
                       else VisitSummaryCatalog.from_table(visit_summary))
        target = patch_bbox.grow(cfg.border)
        acc = _Accumulator(target)
        used: list[tuple[int, int, Any]] = []  # (detector, n_good, components)
        for det in sorted(visit_images):
            source = visit_images[det]
            source = source if isinstance(source, DetectorInput) else DetectorInput(source)
            comps = self._components(det, source.info(), summary)
            n_good = self._warp_detector(source, comps, tract_wcs, target, acc)
            if n_good:
                used.append((det, n_good, comps))
        if not used:
            raise NoWorkFound(f"no selected detector ({sorted(visit_images)}) has a good pixel "
                              f"in the patch box {patch_bbox}")
        psf = self._warp_psf(used, tract_wcs, target)
        first = used[0][2]
        metadata = {"BAND": first.band, "NINPUTS": len(used),
                    "NGOODPIX": int(sum(n for _, n, _ in used))}
        for i, (det, n_good, _) in enumerate(used):
            metadata[f"INPUT_DET{i}"] = int(det)
            metadata[f"INPUT_NGOOD{i}"] = int(n_good)
        weight_mask = bits(cfg.weight_bad_mask_planes)
        rows, cols = patch_bbox.intersection(target).slices_in(target)
        stats = clipped_stats(acc.variance[rows, cols], n_sigma=3.0, n_iter=2,
                              mask=acc.mask[rows, cols], and_mask=weight_mask)
        if np.isfinite(stats.mean):
            metadata["MEANVAR"] = float(stats.mean)
            metadata["MEANVARMASK"] = int(weight_mask)
        warp = Exposure(acc.image, acc.mask, acc.variance, wcs=tract_wcs, psf=psf,
                        photo_calib=PhotoCalib(1.0), visit_info=first.visit_info, units="nJy",
                        xy0=(target.x0, target.y0), metadata=metadata)
        return TaskResult(warp=warp, masked_fraction=acc.masked_fraction,
                          metadata={"n_detectors": len(used), "n_good": metadata["NGOODPIX"]})

    def _components(self, det: int, info, summary):
        """WCS, PSF, calibration, visit info and units of one detector."""
        wcs, psf, pc = info.wcs, info.psf, info.photo_calib
        if self.config.use_visit_summary and summary is not None and det in summary:
            wcs = summary.wcs(det) or wcs
            psf = summary.psf(det) or psf
            pc = summary.photo_calib(det) or pc
        if wcs is None:
            raise DrpError(f"detector {det} has no WCS to warp with")
        if psf is None:
            raise DrpError(f"detector {det} has no PSF model")
        units = (info.units or "").lower()
        if units not in ("njy", "adu"):
            raise DrpError(f"detector {det}: cannot warp pixels in units {info.units!r}")
        if units == "adu" and pc is None:
            raise DrpError(f"detector {det} is in ADU and has no photometric calibration")
        bbox = info.bbox
        return _Components(wcs, psf, pc if units == "adu" else None, bbox,
                           info.visit_info, info.band)

    def _warp_detector(self, source: DetectorInput, comps, tract_wcs, target: Box,
                       acc: _Accumulator) -> int:
        cfg = self.config
        order = cfg.warp.kernel_order
        src_box = _mapped_box(target, tract_wcs, comps.wcs, order + 2, comps.bbox)
        if src_box.is_empty:
            return 0
        dst_box = _mapped_box(src_box, comps.wcs, tract_wcs, order + 2, target)
        if dst_box.is_empty:
            return 0
        exp = source.read(src_box)
        image = exp.image.astype(np.float32, copy=True)
        variance = exp.variance.astype(np.float32, copy=True)
        mask = exp.mask
        if comps.calib is not None:
            c = np.float32(comps.calib.calibration_mean)
            image *= c
            variance *= c * c
        bad_var = ~(variance > 0) | ~np.isfinite(variance)
        image[bad_var] = np.nan  # every output pixel whose kernel touches it becomes NO_DATA
        present = int(np.bitwise_or.reduce(mask, axis=None)) if mask.size else 0
        spread = tuple(p for p in cfg.spread_mask_planes if present & bits(p))
        wcfg = dataclasses.replace(cfg.warp, grow_full_mask=spread)
        out = warp_image(image, variance, mask, src_box, comps.wcs, tract_wcs, dst_box, wcfg)
        good = out.good
        n_good = int(good.sum())
        if n_good == 0:
            return 0
        # Masked fraction: bilinear warp of the bad-pixel indicator (no area factor).
        indicator = (((mask & bits(cfg.masked_fraction_planes)) != 0) | bad_var).astype(
            np.float32)
        xs, ys = compute_pixel_mapping(comps.wcs, tract_wcs, dst_box, cfg.warp.interp_length)
        frac = ndimage.map_coordinates(indicator, [ys - src_box.y0, xs - src_box.x0], order=1,
                                       mode="nearest", output=np.float32)
        acc.paste(dst_box, out, frac)
        return n_good

    def _warp_psf(self, used, tract_wcs, target: Box) -> CoaddPsf:
        """One CoaddPsf component per detector: its valid polygon and its PSF on a grid."""
        cfg = self.config
        n = cfg.psf_grid
        order = cfg.warp.kernel_order
        size = cfg.psf_size or max(c.psf.kernel_size for _, _, c in used)
        kernels, xcs, ycs, polygons = [], [], [], []
        for _, _, c in used:
            b = c.bbox
            # The warped detector's good pixels: its box less the Lanczos kernel's reach.
            ox, oy = box_outline(b.x0 + order - 1, b.y0 + order - 1, b.x1 - order, b.y1 - order)
            px, py = transform_pixels(tract_wcs, c.wcs, ox, oy)
            polygons.append(np.column_stack([px, py]))
            region = _polygon_box(px, py, target)
            xc, yc = psf_grid_centers(region, n, n)
            gx, gy = (a.ravel() for a in np.meshgrid(xc, yc))
            xs, ys = transform_pixels(c.wcs, tract_wcs, gx, gy)
            xs = np.clip(xs, b.x0, b.x1 - 1)
            ys = np.clip(ys, b.y0, b.y1 - 1)
            jac = local_jacobian(c.wcs, tract_wcs, gx, gy)
            stamps = warp_psf_kernels(kernel_images(c.psf, xs, ys), jac, size=size, order=order)
            kernels.append(stamps.reshape(n, n, size, size))
            xcs.append(xc)
            ycs.append(yc)
        return CoaddPsf(np.array(kernels), np.array(xcs), np.array(ycs), np.ones(len(used)),
                        polygons)


def _polygon_box(x: np.ndarray, y: np.ndarray, clip: Box) -> Box:
    """The pixels of ``clip`` spanned by a polygon's vertices (``clip`` if they miss it)."""
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return clip
    box = Box.from_minmax(int(np.floor(x[ok].min() + 0.5)), int(np.floor(y[ok].min() + 0.5)),
                          int(np.floor(x[ok].max() + 0.5)), int(np.floor(y[ok].max() + 0.5)))
    inside = box.intersection(clip)
    return clip if inside.is_empty else inside


@dataclass
class _Components:
    wcs: Any
    psf: Any
    calib: PhotoCalib | None
    bbox: Box
    visit_info: Any
    band: str | None


class _Accumulator:
    """The warp being built: its planes on the target box."""

    def __init__(self, box: Box):
        self.box = box
        self.image = np.full(box.shape, np.nan, np.float32)
        self.variance = np.full(box.shape, np.inf, np.float32)
        self.mask = np.full(box.shape, bits("NO_DATA"), np.int32)
        self.masked_fraction = np.full(box.shape, np.nan, np.float32)

    def paste(self, dst_box: Box, out, frac: np.ndarray) -> None:
        rows, cols = dst_box.slices_in(self.box)
        good = out.good
        for plane, values in ((self.image, out.image), (self.variance, out.variance),
                              (self.mask, out.mask), (self.masked_fraction, frac)):
            view = plane[rows, cols]
            view[good] = values[good]
