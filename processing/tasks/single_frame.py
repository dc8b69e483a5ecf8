"""Steps shared by the single-frame tasks (calibrate, reprocess_visit_image)."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pyarrow as pa

from store.errors import DrpError
from store.exposure import Exposure
from store.geom import Box
from store.masks import bits

from ..algorithms._repair_kernels import prepare_planes_into
from ..algorithms.background import BackgroundList
from ..algorithms.deblend import DeblendConfig, deblend
from ..algorithms.detection import DetectionConfig, detect_sources
from ..algorithms.measure import MeasurementConfig, measure_sources

__all__ = ["SingleFrameError", "StepClock", "attach_summary", "bbox_tuple", "column",
           "detect_and_measure", "prepare_planes", "usable_sources"]


class SingleFrameError(DrpError, RuntimeError):
    """A single-frame step cannot proceed (the message says why)."""


class StepClock:
    """CPU seconds per named step, for the quantum's metadata (provenance and tuning)."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self._name: str | None = None
        self._t0 = 0.0

    def start(self, name: str) -> None:
        """End the current step (if any) and start ``name``."""
        now = time.process_time()
        if self._name is not None:
            self.times[self._name] = round(self.times.get(self._name, 0.0) + now - self._t0, 3)
        self._name, self._t0 = name, now

    def stop(self) -> dict[str, float]:
        """End the current step; returns every step's CPU seconds."""
        if self._name is not None:
            now = time.process_time()
            self.times[self._name] = round(self.times.get(self._name, 0.0) + now - self._t0, 3)
        self._name = None
        return dict(self.times)


def detect_and_measure(image, variance, mask, psf, sigma: float, detection: DetectionConfig,
                       deblending: DeblendConfig, measurement: MeasurementConfig):
    """Detect, deblend and measure; returns (measurement table, detection result, deblend)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        det = detect_sources(image, variance, mask, sigma, detection)
        blend = deblend(det, image, variance, sigma, deblending)
        cat = blend.catalog
        table = measure_sources(image, variance, det.mask, psf, cat["peak_x"], cat["peak_y"],
                                segmentation=blend.segmentation, ids=cat["id"],
                                parents=cat["parent"], config=measurement)
    return table, det


def column(table: pa.Table, name: str) -> np.ndarray:
    """A column as a numpy array."""
    return table.column(name).to_numpy(zero_copy_only=False)


def bbox_tuple(bbox: Box) -> tuple[float, float, float, float]:
    """``(xmin, ymin, xmax, ymax)`` pixel edges of a box."""
    return (bbox.x0 - 0.5, bbox.y0 - 0.5, bbox.x1 - 0.5, bbox.y1 - 0.5)


def prepare_planes(exp: Exposure):
    """Validate the pixels; NaNs become NO_DATA (value 0, variance inf).

    Returns float32 image and variance and int32 mask copies, made in one
    compiled pass.
    """
    shape = exp.image.shape
    image = np.empty(shape, dtype=np.float32)
    variance = np.empty(shape, dtype=np.float32)
    mask = np.empty(shape, dtype=np.int32)
    n_finite, low, high = prepare_planes_into(
        np.asarray(exp.image), np.asarray(exp.variance), np.asarray(exp.mask),
        np.int32(bits("NO_DATA")), image, variance, mask)
    if n_finite == 0:
        raise SingleFrameError("image has no finite pixel")
    if low == high:
        raise SingleFrameError(f"image is constant ({low:g})")
    return image, variance, mask


def usable_sources(table: pa.Table) -> np.ndarray:
    """Deblended sources without flags that spoil positions and fluxes."""
    ok = np.ones(table.num_rows, dtype=bool)
    for name in ("pixelFlags_edge", "pixelFlags_saturatedCenter", "pixelFlags_interpolatedCenter",
                 "pixelFlags_crCenter", "pixelFlags_nodata", "centroid_flag", "psfFlux_flag"):
        if name in table.column_names:
            ok &= ~column(table, name).astype(bool)
    if "deblend_nChild" in table.column_names:
        ok &= column(table, "deblend_nChild") == 0
    flux = column(table, "psfFlux_instFlux")
    return ok & np.isfinite(flux) & (flux > 0)


def attach_summary(exposure: Exposure, psf_stars: pa.Table, background: BackgroundList) -> None:
    """Compute the summary statistics and store them in the exposure's header cards."""
    from ..algorithms.summary_stats import compute_summary_stats

    summary = compute_summary_stats(exposure, psf_stars, background)
    for key, value, _ in summary.to_header_cards():
        # the FITS writer adds the HIERARCH convention itself
        exposure.metadata[key.removeprefix("HIERARCH ")] = value


