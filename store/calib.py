"""Photometric calibration and aperture-correction maps attached to exposures.

Conventions follow afw: a :class:`PhotoCalib` converts instrumental flux (ADU)
to nJy by multiplying by ``calibration_mean``; the zero point is the AB
magnitude of one instrumental count, ``2.5 log10(3631e9 nJy / calibration_mean)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.polynomial import chebyshev

__all__ = [
    "AB_ZERO_NJY",
    "ApCorrMap",
    "ChebyshevField",
    "PhotoCalib",
    "njy_to_abmag",
]

#: Flux of an AB magnitude 0 source in nJy.
AB_ZERO_NJY = 3631e9


def njy_to_abmag(flux_njy):
    """AB magnitude of a flux in nJy (NaN for non-positive fluxes)."""
    flux = np.asarray(flux_njy, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, -2.5 * np.log10(flux / AB_ZERO_NJY), np.nan)


@dataclass(frozen=True)
class PhotoCalib:
    """Spatially constant photometric calibration.

    Parameters
    ----------
    calibration_mean : float
        nJy per instrumental count (ADU); 1.0 for images already in nJy.
    calibration_err : float
        1-sigma uncertainty of ``calibration_mean``, nJy/ADU.
    """

    calibration_mean: float
    calibration_err: float = 0.0

    def __post_init__(self):
        if not np.isfinite(self.calibration_mean) or self.calibration_mean <= 0:
            raise ValueError(
                f"calibration_mean must be finite and positive, got {self.calibration_mean}"
            )

    @classmethod
    def from_zero_point(cls, zero_point: float, zero_point_err: float = 0.0) -> PhotoCalib:
        """Build from the AB magnitude of one instrumental count."""
        mean = AB_ZERO_NJY * 10 ** (-0.4 * zero_point)
        return cls(mean, mean * 0.4 * np.log(10) * zero_point_err)

    @property
    def zero_point(self) -> float:
        """AB magnitude of one instrumental count (mag)."""
        return 2.5 * np.log10(self.instflux_at_zero_magnitude)

    @property
    def instflux_at_zero_magnitude(self) -> float:
        """Instrumental flux (ADU) of an AB magnitude 0 source."""
        return AB_ZERO_NJY / self.calibration_mean

    def instflux_to_njy(self, instflux, instflux_err=None):
        """Convert instrumental fluxes (ADU) to nJy; returns ``flux`` or ``(flux, err)``.

        The error includes the calibration uncertainty in quadrature.
        """
        flux = np.asarray(instflux, dtype=float) * self.calibration_mean
        if instflux_err is None:
            return flux
        rel = np.hypot(
            np.asarray(instflux_err, dtype=float) / np.where(instflux != 0, instflux, np.nan),
            self.calibration_err / self.calibration_mean,
        )
        return flux, np.abs(flux) * rel

    def calibrate_image(self, image: np.ndarray, variance: np.ndarray | None = None):
        """Return the image (and variance) in nJy: image x c, variance x c^2."""
        c = self.calibration_mean
        out = (image * c).astype(image.dtype, copy=False)
        if variance is None:
            return out
        return out, (variance * c * c).astype(variance.dtype, copy=False)


@dataclass
class ChebyshevField:
    """A smooth 2-D field: a Chebyshev series on a pixel box.

    Parameters
    ----------
    coefficients : numpy.ndarray
        ``(order_y + 1, order_x + 1)`` coefficients ``c[j, i]`` of ``T_i(xn) T_j(yn)``.
    bbox : tuple of float
        ``(xmin, ymin, xmax, ymax)`` mapped onto ``[-1, 1]``.
    """

    coefficients: np.ndarray
    bbox: tuple[float, float, float, float]

    def __post_init__(self):
        self.coefficients = np.atleast_2d(np.asarray(self.coefficients, dtype=float))
        self.bbox = tuple(float(v) for v in self.bbox)

    @classmethod
    def constant(cls, value: float, bbox) -> ChebyshevField:
        """A field equal to ``value`` everywhere."""
        return cls(np.array([[value]]), bbox)

    def normalise(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Map pixel positions onto ``[-1, 1]``."""
        xmin, ymin, xmax, ymax = self.bbox
        xn = 2.0 * (np.asarray(x, dtype=float) - xmin) / max(xmax - xmin, 1e-9) - 1.0
        yn = 2.0 * (np.asarray(y, dtype=float) - ymin) / max(ymax - ymin, 1e-9) - 1.0
        return xn, yn

    def evaluate(self, x, y) -> np.ndarray:
        """Field values at pixel positions ``(x, y)``."""
        xn, yn = self.normalise(x, y)
        # chebval2d(x, y, c) sums c[i, j] T_i(x) T_j(y); our c is indexed [j, i].
        return chebyshev.chebval2d(xn, yn, self.coefficients.T)

    def mean(self, nx: int = 16, ny: int = 16) -> float:
        """Average over the box, sampled on an ``nx`` x ``ny`` grid."""
        xmin, ymin, xmax, ymax = self.bbox
        xx, yy = np.meshgrid(np.linspace(xmin, xmax, nx), np.linspace(ymin, ymax, ny))
        return float(np.mean(self.evaluate(xx, yy)))


@dataclass
class ApCorrMap:
    """Aperture corrections by flux field name (e.g. ``base_PsfFlux_instFlux``).

    A field's correction multiplies the flux; the matching ``..._instFluxErr``
    entry holds the uncertainty of the correction.
    """

    fields: dict[str, ChebyshevField] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.fields

    def __getitem__(self, name: str) -> ChebyshevField:
        return self.fields[name]

    def __setitem__(self, name: str, value: ChebyshevField) -> None:
        self.fields[name] = value

    def __len__(self) -> int:
        return len(self.fields)

    def names(self) -> list[str]:
        """Field names, sorted."""
        return sorted(self.fields)

    def to_hdu(self):
        """Serialise as a binary table HDU (``EXTNAME = 'APCORR'``)."""
        from astropy.io import fits

        names = self.names()
        max_len = max((self.fields[n].coefficients.size for n in names), default=1)
        coeffs = np.full((len(names), max_len), np.nan)
        orders = np.zeros((len(names), 2), dtype=np.int32)
        bboxes = np.zeros((len(names), 4))
        for k, n in enumerate(names):
            f = self.fields[n]
            coeffs[k, : f.coefficients.size] = f.coefficients.ravel()
            orders[k] = (f.coefficients.shape[1] - 1, f.coefficients.shape[0] - 1)
            bboxes[k] = f.bbox
        cols = [
            fits.Column("name", "64A", array=np.array(names, dtype="U64")),
            fits.Column("order_x", "J", array=orders[:, 0]),
            fits.Column("order_y", "J", array=orders[:, 1]),
            fits.Column("bbox", "4D", array=bboxes),
            fits.Column("coefficients", f"{max_len}D", array=coeffs),
        ]
        return fits.BinTableHDU.from_columns(cols, name="APCORR")

    @classmethod
    def from_hdu(cls, hdu) -> ApCorrMap:
        """Rebuild from the HDU written by :meth:`to_hdu`."""
        out = cls()
        data = hdu.data
        if data is None:
            return out
        for row in data:
            ox, oy = int(row["order_x"]), int(row["order_y"])
            n = (ox + 1) * (oy + 1)
            coeffs = np.atleast_1d(np.asarray(row["coefficients"]))[:n].reshape(oy + 1, ox + 1)
            out.fields[str(row["name"]).strip()] = ChebyshevField(coeffs, tuple(row["bbox"]))
        return out
