"""The in-memory exposure: image, mask, variance and what describes them.

An :class:`Exposure` is what every image dataset (``post_isr_image``,
``visit_image``, warps, coadds) holds.  Pixel arrays are indexed ``[y, x]``;
``xy0`` gives the pixel coordinates of ``image[0, 0]`` in the parent frame (the
detector for single-visit images, the tract for warps and coadds), and the WCS
maps parent pixel coordinates, so cut-outs keep their sky positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .calib import ApCorrMap, PhotoCalib
from .geom import Box
from .psf import Psf

if TYPE_CHECKING:  # astropy is imported lazily to keep `drp sql` fast
    from astropy.wcs import WCS

__all__ = ["DetectorInfo", "Exposure", "ExposureInfo", "VisitInfo"]


@dataclass(frozen=True)
class VisitInfo:
    """What the telescope did for this exposure.

    Angles are in degrees, times are MJD (TAI), durations in seconds.
    """

    visit: int | None = None
    instrument: str | None = None
    band: str | None = None
    physical_filter: str | None = None
    exposure_time: float = float("nan")
    dark_time: float = float("nan")
    mjd: float = float("nan")  #: exposure mid-point
    mjd_begin: float = float("nan")
    boresight_ra: float = float("nan")
    boresight_dec: float = float("nan")
    rotation_angle: float = float("nan")  #: sky rotation of the focal plane
    airmass: float = float("nan")
    azimuth: float = float("nan")
    altitude: float = float("nan")
    day_obs: int | None = None
    #: observatory longitude, latitude (deg) and elevation (m); Rubin's by default
    observatory: tuple[float, float, float] = (-70.749417, -30.244639, 2663.0)

    @property
    def zenith_distance(self) -> float:
        """90 - altitude, degrees."""
        return 90.0 - self.altitude


@dataclass(frozen=True)
class DetectorInfo:
    """A detector's identity and electronics (one amplifier's worth of numbers).

    Parameters
    ----------
    id : int
        Detector number within the instrument.
    name : str
        Human-readable name.
    bbox : Box
        Pixel box of the full detector.
    gain : float
        e-/ADU.
    read_noise : float
        e- per pixel.
    saturation : float
        ADU above which pixels are saturated.
    """

    id: int
    name: str = ""
    bbox: Box = Box(0, 0, 0, 0)  # noqa: RUF009 - Box is immutable
    gain: float = float("nan")
    read_noise: float = float("nan")
    saturation: float = float("nan")


@dataclass
class Exposure:
    """Image, mask and variance planes with the models that describe them.

    Parameters
    ----------
    image : numpy.ndarray
        float32 pixel values, in ``units``.
    mask : numpy.ndarray, optional
        int32 bit planes from :data:`store.masks.MASK_PLANES` (zeros if omitted).
    variance : numpy.ndarray, optional
        float32 variance in ``units`` squared (NaN if omitted).
    units : str
        ``"adu"`` before photometric calibration, ``"nJy"`` after.
    xy0 : tuple of int
        Parent pixel coordinates of ``image[0, 0]``.
    """

    image: np.ndarray
    mask: np.ndarray | None = None
    variance: np.ndarray | None = None
    wcs: WCS | None = None
    psf: Psf | None = None
    photo_calib: PhotoCalib | None = None
    ap_corr_map: ApCorrMap | None = None
    visit_info: VisitInfo | None = None
    detector: DetectorInfo | None = None
    units: str = "adu"
    xy0: tuple[int, int] = (0, 0)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.image = np.asarray(self.image, dtype=np.float32)
        if self.image.ndim != 2:
            raise ValueError(f"image must be 2-D, got shape {self.image.shape}")
        if self.mask is None:
            self.mask = np.zeros(self.image.shape, dtype=np.int32)
        else:
            self.mask = np.asarray(self.mask, dtype=np.int32)
        if self.variance is None:
            self.variance = np.full(self.image.shape, np.nan, dtype=np.float32)
        else:
            self.variance = np.asarray(self.variance, dtype=np.float32)
        for name in ("mask", "variance"):
            if getattr(self, name).shape != self.image.shape:
                raise ValueError(
                    f"{name} shape {getattr(self, name).shape} differs from image shape "
                    f"{self.image.shape}"
                )
        self.xy0 = (int(self.xy0[0]), int(self.xy0[1]))

    def __repr__(self) -> str:
        vi = self.visit_info
        ident = f"visit={vi.visit}, " if vi is not None and vi.visit is not None else ""
        det = f"detector={self.detector.id}, " if self.detector is not None else ""
        return (f"Exposure({ident}{det}bbox={self.bbox}, units={self.units!r}, "
                f"psf={self.psf!r}, wcs={'yes' if self.wcs is not None else 'no'})")

    @property
    def bbox(self) -> Box:
        """Pixel box of the arrays in the parent frame."""
        return Box.from_shape(self.image.shape, *self.xy0)

    @property
    def band(self) -> str | None:
        """Band of the exposure, from its visit info or metadata."""
        if self.visit_info is not None and self.visit_info.band:
            return self.visit_info.band
        return self.metadata.get("BAND")

    def copy(self) -> Exposure:
        """Deep copy of the pixel planes; models are shared (they are not mutated)."""
        return replace(
            self,
            image=self.image.copy(),
            mask=self.mask.copy(),
            variance=self.variance.copy(),
            metadata=dict(self.metadata),
        )

    def cutout(self, box: Box) -> Exposure:
        """The part of the exposure inside ``box`` (which must lie inside :attr:`bbox`)."""
        rows, cols = box.slices_in(self.bbox)
        return replace(
            self,
            image=self.image[rows, cols].copy(),
            mask=self.mask[rows, cols].copy(),
            variance=self.variance[rows, cols].copy(),
            xy0=(box.x0, box.y0),
            metadata=dict(self.metadata),
        )

    def pixel_to_sky(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """ICRS (ra, dec) in degrees of parent pixel positions, through the WCS."""
        if self.wcs is None:
            raise ValueError("exposure has no WCS")
        ra, dec = self.wcs.all_pix2world(np.asarray(x, float), np.asarray(y, float), 0)
        return np.asarray(ra), np.asarray(dec)

    def sky_to_pixel(self, ra, dec) -> tuple[np.ndarray, np.ndarray]:
        """Parent pixel positions of ICRS (ra, dec) in degrees, through the WCS."""
        if self.wcs is None:
            raise ValueError("exposure has no WCS")
        x, y = self.wcs.all_world2pix(np.asarray(ra, float), np.asarray(dec, float), 0,
                                      tolerance=1e-8, maxiter=50, quiet=True)
        return np.asarray(x), np.asarray(y)


@dataclass
class ExposureInfo:
    """Everything about an exposure except its pixels (read without the image planes).

    Has the same attribute names as :class:`Exposure` for the components, so
    code that only needs the PSF, WCS, calibration or metadata accepts either.
    """

    bbox: Box
    wcs: WCS | None = None
    psf: Psf | None = None
    photo_calib: PhotoCalib | None = None
    ap_corr_map: ApCorrMap | None = None
    visit_info: VisitInfo | None = None
    detector: DetectorInfo | None = None
    units: str = "adu"
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def band(self) -> str | None:
        """Band of the exposure."""
        if self.visit_info is not None and self.visit_info.band:
            return self.visit_info.band
        return self.metadata.get("BAND")
