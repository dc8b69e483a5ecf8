"""The simulated camera: detector layout, electronics and cosmetic defects.

Detectors form an ``n_x`` x ``n_y`` grid centred on the optical axis, unrotated,
separated by ``gap`` pixels.  Detector ``id = iy * n_x + ix`` (row-major from
the bottom-left), named ``R22_S{iy}{ix}`` like the single ComCam raft.  The
focal plane is measured in mm with +x, +y along the detector axes; a pixel
``(x, y)`` of a detector (LSST convention: integer coordinates are pixel
centres) sits at ``fp = fp_center + (x - xc, y - yc) * pixel_size`` with
``(xc, yc) = ((width - 1) / 2, (height - 1) / 2)``.

Electronics (gain, read noise, full well, throughput) and defects are drawn
once per camera from the seed, so they are the same in every visit, as on a
real camera.  Defects in a post-ISR image:

* bad columns: a column (whole, or from a charge trap upwards) that is either
  *hot* (a constant excess charge) or *dead* (20 % response);
* hot pixels: single pixels with a large excess charge.

All of them are masked BAD; their pixel values stay wrong, as ISR leaves them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import CameraConfig

__all__ = ["Camera", "DetectorSpec", "build_camera"]


@dataclass(frozen=True, eq=False)
class DetectorSpec:
    """One detector: geometry, electronics and defects.

    Attributes
    ----------
    id : int
        Detector number.
    name : str
        Detector name.
    width, height : int
        Size in pixels.
    fp_x, fp_y : float
        Focal-plane position of the detector centre, mm.
    gain : float
        e-/ADU.
    read_noise : float
        e- r.m.s. per pixel.
    full_well : float
        e-; charge beyond it bleeds along the column.
    saturation : float
        ADU; ``full_well / gain`` rounded down.  Pixels at or above it are SAT.
    qe : float
        Relative throughput of the detector (mean 1).
    bad_columns : numpy.ndarray
        Structured rows ``(x, y0, y1, dead, excess)``: column ``x`` is bad for
        rows ``y0 <= y < y1``; ``dead`` columns keep 20 % of the signal,
        others gain ``excess`` e-.
    hot_pixels : numpy.ndarray
        Structured rows ``(x, y, excess)`` with ``excess`` in e-.
    """

    id: int
    name: str
    width: int
    height: int
    fp_x: float
    fp_y: float
    gain: float
    read_noise: float
    full_well: float
    saturation: float
    qe: float
    bad_columns: np.ndarray
    hot_pixels: np.ndarray

    def __repr__(self) -> str:
        return (f"DetectorSpec(id={self.id}, name={self.name!r}, {self.width}x{self.height}, "
                f"fp=({self.fp_x:.2f}, {self.fp_y:.2f}) mm, gain={self.gain:.3f}, "
                f"read_noise={self.read_noise:.2f}, saturation={self.saturation:.0f})")

    @property
    def center(self) -> tuple[float, float]:
        """Pixel coordinates ``(xc, yc)`` of the detector centre."""
        return ((self.width - 1) / 2.0, (self.height - 1) / 2.0)

    def defect_mask(self) -> np.ndarray:
        """Boolean ``(height, width)`` array, True on bad columns and hot pixels."""
        mask = np.zeros((self.height, self.width), dtype=bool)
        rows = np.arange(self.height)[:, None]
        for_cols = self.bad_columns
        if for_cols.size:
            sel = (rows >= for_cols["y0"][None, :]) & (rows < for_cols["y1"][None, :])
            yy, k = np.nonzero(sel)
            mask[yy, for_cols["x"][k]] = True
        if self.hot_pixels.size:
            mask[self.hot_pixels["y"], self.hot_pixels["x"]] = True
        return mask

    def apply_defects(self, image_e: np.ndarray) -> None:
        """Spoil the defect pixels of an image in electrons, in place."""
        cols = self.bad_columns
        if cols.size:
            rows = np.arange(self.height)[:, None]
            sel = (rows >= cols["y0"][None, :]) & (rows < cols["y1"][None, :])
            yy, k = np.nonzero(sel)
            xx = cols["x"][k]
            dead = cols["dead"][k]
            image_e[yy, xx] = np.where(dead, 0.2 * image_e[yy, xx],
                                       image_e[yy, xx] + cols["excess"][k])
        if self.hot_pixels.size:
            hp = self.hot_pixels
            image_e[hp["y"], hp["x"]] += hp["excess"]


@dataclass(frozen=True, eq=False)
class Camera:
    """The focal plane: configuration plus the realised detectors.

    Attributes
    ----------
    config : CameraConfig
        What the camera was built from.
    detectors : tuple of DetectorSpec
        Indexed by detector id.
    """

    config: CameraConfig
    detectors: tuple[DetectorSpec, ...]

    def __repr__(self) -> str:
        c = self.config
        return (f"Camera({c.name!r}, {c.n_x}x{c.n_y} detectors of {c.width}x{c.height} px, "
                f"{c.pixel_scale}\"/px)")

    @property
    def name(self) -> str:
        """Instrument name."""
        return self.config.name

    @property
    def plate_scale(self) -> float:
        """arcsec per mm on the focal plane (at its centre)."""
        return self.config.pixel_scale / self.config.pixel_size

    @property
    def half_extent(self) -> tuple[float, float]:
        """Half size of the detector grid, ``(x, y)`` in mm."""
        c = self.config
        wx = (c.n_x * c.width + (c.n_x - 1) * c.gap) * c.pixel_size
        wy = (c.n_y * c.height + (c.n_y - 1) * c.gap) * c.pixel_size
        return wx / 2.0, wy / 2.0

    @property
    def corner_radius(self) -> float:
        """Distance of the outermost pixel corner from the optical axis, mm."""
        hx, hy = self.half_extent
        return float(np.hypot(hx, hy))

    def pixel_to_focal_plane(self, detector: int, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Focal-plane position (mm) of pixel coordinates on a detector."""
        det = self.detectors[detector]
        xc, yc = det.center
        p = self.config.pixel_size
        return (det.fp_x + (np.asarray(x, float) - xc) * p,
                det.fp_y + (np.asarray(y, float) - yc) * p)

    def focal_plane_to_pixel(self, detector: int, fx, fy) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates on a detector of focal-plane positions (mm)."""
        det = self.detectors[detector]
        xc, yc = det.center
        p = self.config.pixel_size
        return (xc + (np.asarray(fx, float) - det.fp_x) / p,
                yc + (np.asarray(fy, float) - det.fp_y) / p)

    def outline(self) -> np.ndarray:
        """Corners of the whole detector grid in the focal plane, (4, 2) mm, counter-clockwise."""
        hx, hy = self.half_extent
        return np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]])


_BAD_COLUMN = np.dtype([("x", np.int64), ("y0", np.int64), ("y1", np.int64),
                        ("dead", bool), ("excess", np.float64)])
_HOT_PIXEL = np.dtype([("x", np.int64), ("y", np.int64), ("excess", np.float64)])


def _defects(config: CameraConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    w, h = config.width, config.height
    cols = np.zeros(config.n_bad_columns, dtype=_BAD_COLUMN)
    cols["x"] = rng.integers(10, max(w - 10, 11), cols.size)
    whole = rng.random(cols.size) < 0.5
    start = rng.integers(0, h, cols.size)
    cols["y0"] = np.where(whole, 0, start)
    cols["y1"] = h
    cols["dead"] = rng.random(cols.size) < 0.5
    cols["excess"] = rng.uniform(300.0, 3000.0, cols.size)
    hot = np.zeros(config.n_hot_pixels, dtype=_HOT_PIXEL)
    hot["x"] = rng.integers(0, w, hot.size)
    hot["y"] = rng.integers(0, h, hot.size)
    hot["excess"] = np.exp(rng.uniform(np.log(2e3), np.log(5e4), hot.size))
    return cols, hot


def build_camera(config: CameraConfig, rng: np.random.Generator) -> Camera:
    """Realise a camera: detector positions, electronics and defects.

    Parameters
    ----------
    config : CameraConfig
        Layout and the ranges electronics are drawn from.
    rng : numpy.random.Generator
        Source of the per-detector draws (its own stream: the camera does
        not change when the survey does).

    Returns
    -------
    Camera
    """
    c = config
    step_x = (c.width + c.gap) * c.pixel_size
    step_y = (c.height + c.gap) * c.pixel_size
    n = c.n_detectors
    gains = rng.uniform(*c.gain_range, n)
    read_noise = rng.uniform(*c.read_noise_range, n)
    full_well = rng.uniform(*c.full_well_range, n)
    qe = 1.0 + c.qe_scatter * rng.standard_normal(n)
    detectors = []
    for det_id in range(n):
        iy, ix = divmod(det_id, c.n_x)
        bad_columns, hot_pixels = _defects(c, rng)
        detectors.append(DetectorSpec(
            id=det_id, name=f"R22_S{iy}{ix}", width=c.width, height=c.height,
            fp_x=(ix - (c.n_x - 1) / 2.0) * step_x, fp_y=(iy - (c.n_y - 1) / 2.0) * step_y,
            gain=float(gains[det_id]), read_noise=float(read_noise[det_id]),
            full_well=float(full_well[det_id]),
            saturation=float(np.floor(full_well[det_id] / gains[det_id])),
            qe=float(qe[det_id]), bad_columns=bad_columns, hot_pixels=hot_pixels,
        ))
    return Camera(config=c, detectors=tuple(detectors))
