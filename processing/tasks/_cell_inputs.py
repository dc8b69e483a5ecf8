"""What the cell coadd needs to know about each warp: its detectors, their pixels and PSFs.

A ``direct_warp`` is the paste of one visit's detectors on the patch grid
(make_warp); it records which detectors contributed (``INPUT_DET<i>``) and
their clipped mean variance, but not which pixel came from which detector,
nor the detector PSFs (its PSF is a coarse grid of "the detector found at the
node").  Cell coadds need both (``reference/algorithms.md`` 4.4 steps 3-5),
so this module rebuilds them from the visit summary, as Rubin does from the
warp's CoaddInputs (the detector bounding boxes and WCSs):

* **Detector map** (4.4 step 4): each contributing detector's *valid region*
  -- the source positions whose whole Lanczos footprint lies on the detector,
  ``[x0 + a - 1, x1 - a) x [y0 + a - 1, y1 - a)`` for Lanczos order ``a``
  (exactly the pixels make_warp can fill from it) -- mapped through the
  detector and tract WCSs to a polygon and rasterised (later detectors win
  where two overlap, as make_warp pastes them).  Pixels inside the region that
  the warp has no data for (bad source pixels) are interpolated like any bad
  pixel; pixels outside every region belong to no input.
* **Weights** (4.4 step 3): ``1 / (meanVar * calibration_mean^2)`` per
  detector (``meanVar`` in ADU^2 of the calibrated-but-unscaled image,
  ``calibration_mean`` in nJy/ADU), so in 1/nJy^2.
* **PSFs**: the detector's PSF model at the detector position of each cell
  centre, warped to the tract frame through the local Jacobian of the WCS pair.
* **Aperture corrections**: the detector's map evaluated at the same positions.

Without a visit summary (decision, Rubin has no such mode): the warp is one
input of unknown detector (``-1``, or its only detector), weighted by
``1 / MEANVAR`` (the warp's card, else the 3-sigma clipped mean of its
variance), whose pixels are those with data (NO_DATA-free and finite, holes
filled); its PSF is the warp's own PSF at the cell centre, and there are no
aperture corrections.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from store.geom import Box
from store.masks import bits

from ..algorithms.cell_psf import warp_psf_kernels
from ..algorithms.polygons import box_outline, fill_spans, polygon_spans
from ..algorithms.psf_images import kernel_images
from ..algorithms.stats import clipped_stats
from ..algorithms.warp import local_jacobian, transform_pixels
from ._warp_io import WarpSource

__all__: list[str] = []  # private helpers of assemble_cell_coadd


@dataclass
class CellDetector:
    """One detector of a warp as a cell-coadd input."""

    detector: int
    label: int
    weight: float  # 1/nJy^2
    wcs: Any = None
    bbox: Box | None = None
    psf: Any = None
    ap_corr_map: Any = None


@dataclass
class WarpInputs:
    """A warp, its detectors and how to find their pixels and PSFs."""

    key: Any
    source: WarpSource
    detectors: list[CellDetector]
    tract_wcs: Any
    kernel_order: int = 3
    polygons: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def instrument(self) -> str:
        return str(self.key[0]) if isinstance(self.key, tuple) and self.key[0] is not None else ""

    @property
    def visit(self) -> int:
        return int(self.key[-1] if isinstance(self.key, tuple) else self.key)

    @property
    def from_summary(self) -> bool:
        return bool(self.polygons)

    def labels(self, region: Box, image: np.ndarray, mask: np.ndarray,
               out: np.ndarray | None = None) -> np.ndarray:
        """Detector label of every region pixel (``-1``: no detector), int16 (into ``out``)."""
        if len(self.detectors) > np.iinfo(np.int16).max:
            raise ValueError(f"too many detectors in warp {self.key}: {len(self.detectors)}")
        label = np.empty(region.shape, np.int16) if out is None else out
        label.fill(-1)
        if self.from_summary:
            for det in self.detectors:
                x, y = self.polygons[det.label]
                fill_spans(label, *polygon_spans(x, y, region), det.label)
            return label
        covered = np.isfinite(image) & ((mask & np.int32(bits("NO_DATA"))) == 0)
        label[ndimage.binary_fill_holes(covered)] = 0
        return label

    def psf_stamps(self, det: CellDetector, cx: np.ndarray, cy: np.ndarray, size: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """PSF stamps ``(n, size, size)`` at tract pixels ``(cx, cy)``, and the detector positions."""
        cx = np.asarray(cx, dtype=float)
        cy = np.asarray(cy, dtype=float)
        if det.wcs is None:  # no summary: the warp's own PSF, already in the tract frame
            stamps = np.stack([_fit(self.source.psf.kernel_image(float(x), float(y)), size)
                               for x, y in zip(cx, cy, strict=True)]) if cx.size else \
                np.empty((0, size, size))
            return stamps, np.full(cx.size, np.nan), np.full(cx.size, np.nan)
        xs, ys = transform_pixels(det.wcs, self.tract_wcs, cx, cy)
        jac = local_jacobian(det.wcs, self.tract_wcs, cx, cy)
        kernels = kernel_images(det.psf, xs, ys)
        return warp_psf_kernels(kernels, jac, size=size, order=self.kernel_order), xs, ys

    def ap_corr(self, det: CellDetector, xs: np.ndarray, ys: np.ndarray
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Aperture corrections ``name -> (value, error)`` at detector positions."""
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        acm = det.ap_corr_map
        if acm is None or not np.all(np.isfinite(xs)):
            return out
        for name in acm.names():
            if name.endswith("Err"):
                continue
            value = np.asarray(acm[name].evaluate(xs, ys), dtype=float)
            err = (np.asarray(acm[name + "Err"].evaluate(xs, ys), dtype=float)
                   if name + "Err" in acm else np.zeros_like(value))
            out[name] = (value, err)
        return out


def _fit(kernel: np.ndarray, size: int) -> np.ndarray:
    """Crop or zero-pad a centred odd kernel to ``size``."""
    k = kernel.shape[0]
    if k >= size:
        cut = (k - size) // 2
        return kernel[cut:cut + size, cut:cut + size]
    out = np.zeros((size, size))
    pad = (size - k) // 2
    out[pad:pad + k, pad:pad + k] = kernel
    return out


def warp_detector_ids(source: WarpSource) -> list[int] | None:
    """Detectors that contributed to a warp (its ``INPUT_DET<i>`` cards), or None."""
    md = source.metadata
    if "NINPUTS" not in md:
        return None
    return [int(md[f"INPUT_DET{i}"]) for i in range(int(md["NINPUTS"]))
            if f"INPUT_DET{i}" in md]


def warp_weight(source: WarpSource, box: Box, bad: int) -> float:
    """``1 / MEANVAR`` of a warp (its card, else the clipped mean of its variance), 1/nJy^2."""
    md = source.metadata
    mean_var = float(md["MEANVAR"]) if "MEANVAR" in md else float("nan")
    if not (np.isfinite(mean_var) and mean_var > 0):
        inside = box.intersection(source.bbox)
        if inside.is_empty:
            return float("nan")
        img = np.empty(inside.shape, np.float32)
        var = np.empty(inside.shape, np.float32)
        msk = np.empty(inside.shape, np.int32)
        source.read(inside, img, var, msk)
        msk[~np.isfinite(img)] |= np.int32(bits("NO_DATA"))
        mean_var = float(clipped_stats(var, n_sigma=3.0, n_iter=2, mask=msk, and_mask=bad).mean)
    return 1.0 / mean_var if np.isfinite(mean_var) and mean_var > 0 else float("nan")


def prepare_warp(key: Any, source: WarpSource, summary, tract_wcs, *, box: Box,
                 kernel_order: int, bad: int, weight_from_warp: bool) -> WarpInputs | None:
    """The inputs of one warp (None, with a warning, when it has none usable).

    Parameters
    ----------
    key : object
        The warp's key (``(instrument, visit)`` or visit).
    source : WarpSource
        The warp.
    summary : VisitSummaryCatalog or None
        The visit's summary (detector WCS, box, PSF, meanVar, calibration).
    tract_wcs : astropy.wcs.WCS
        The tract (coadd) WCS.
    box : Box
        The patch outer box (for the warp-level weight).
    kernel_order : int
        Lanczos order of make_warp (sets each detector's valid region).
    bad : int
        Mask bits ignored by the warp-level weight.
    weight_from_warp : bool
        Use the warp-level weight even with a summary.
    """
    if summary is None:
        w = warp_weight(source, box, bad)
        if not np.isfinite(w):
            warnings.warn(f"warp {key}: no usable variance for a weight; skipped", stacklevel=3)
            return None
        ids = warp_detector_ids(source) or []
        det = CellDetector(ids[0] if len(ids) == 1 else -1, 0, w)
        return WarpInputs(key, source, [det], tract_wcs, kernel_order)
    ids = warp_detector_ids(source)
    ids = sorted(summary.detectors() if ids is None else ids)
    w_warp = warp_weight(source, box, bad) if weight_from_warp else None
    dets, polygons, skipped = [], {}, []
    for det_id in ids:
        if det_id not in summary:
            skipped.append(f"{det_id} (not in the visit summary)")
            continue
        wcs, psf, pc = summary.wcs(det_id), summary.psf(det_id), summary.photo_calib(det_id)
        if wcs is None or psf is None:
            skipped.append(f"{det_id} (no {'WCS' if wcs is None else 'PSF'})")
            continue
        if w_warp is not None:
            w = w_warp
        else:
            mean_var = summary.summary(det_id).meanVar
            calib = pc.calibration_mean if pc is not None else float("nan")
            w = 1.0 / (mean_var * calib * calib) if mean_var * calib * calib > 0 else np.nan
        if not np.isfinite(w) or w <= 0:
            skipped.append(f"{det_id} (no finite weight: meanVar or calibration missing)")
            continue
        bbox = summary.bbox(det_id)
        label = len(dets)
        a = kernel_order
        x, y = box_outline(bbox.x0 + a - 1, bbox.y0 + a - 1, bbox.x1 - a, bbox.y1 - a)
        polygons[label] = transform_pixels(tract_wcs, wcs, x, y)
        dets.append(CellDetector(det_id, label, float(w), wcs, bbox, psf,
                                 summary.ap_corr_map(det_id)))
    if skipped:
        warnings.warn(f"warp {key}: detectors skipped: {', '.join(skipped)}", stacklevel=3)
    if not dets:
        return None
    return WarpInputs(key, source, dets, tract_wcs, kernel_order, polygons)


class LazyMasks(Mapping):
    """Artefact masks read one at a time: key -> int32 array (from a path or in memory)."""

    def __init__(self, items: Mapping[Any, Any]):
        self._items = dict(items)

    def __getitem__(self, key) -> np.ndarray:
        value = self._items[key]
        if isinstance(value, (str, Path)):
            from store.formats.fits import read_image

            value = read_image(value)
        return np.asarray(value, dtype=np.int32)

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
