"""Point-spread-function models that an :class:`~store.exposure.Exposure` carries.

The store only holds, evaluates and serialises PSFs; fitting them is the job of
``processing.algorithms.psf``.  Every model answers two questions:

* :meth:`Psf.kernel_image` -- the PSF of a point source at ``(x, y)``, as an
  odd-sized square image centred on its central pixel and normalised to sum 1;
* :meth:`Psf.image` -- the same PSF realised on the image's pixel grid at the
  sub-pixel position ``(x, y)``, with the origin of the stamp.

Models serialise to one FITS HDU (``EXTNAME = 'PSF'``, card ``PSFTYPE``) that
plain astropy can read.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from .resample import shift_image

__all__ = [
    "GaussianPsf",
    "GridPsf",
    "PixelBasisPsf",
    "Psf",
    "bilinear_kernel",
    "polynomial_terms",
    "psf_from_hdu",
]


def polynomial_terms(xn: np.ndarray, yn: np.ndarray, degree: int) -> np.ndarray:
    """Monomials ``xn**i * yn**j`` with ``i + j <= degree``, ordered by total degree.

    Parameters
    ----------
    xn, yn : numpy.ndarray
        Normalised positions (typically in ``[-1, 1]``), same shape ``S``.
    degree : int
        Maximum total degree.

    Returns
    -------
    numpy.ndarray
        Shape ``S + (n_terms,)`` with ``n_terms = (degree + 1)(degree + 2) / 2``;
        the first term is 1.
    """
    xn = np.asarray(xn, dtype=float)
    yn = np.asarray(yn, dtype=float)
    cols = []
    for total in range(degree + 1):
        for j in range(total + 1):
            cols.append(xn ** (total - j) * yn**j)
    return np.stack(cols, axis=-1)


class Psf(ABC):
    """A PSF model evaluable at any position of an image (pixels, LSST convention)."""

    psf_type: ClassVar[str]
    _registry: ClassVar[dict[str, type[Psf]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Psf._registry[cls.psf_type] = cls

    @property
    @abstractmethod
    def kernel_size(self) -> int:
        """Side of the (odd, square) kernel image in pixels."""

    @abstractmethod
    def kernel_image(self, x: float, y: float) -> np.ndarray:
        """PSF at ``(x, y)`` centred on the central pixel of an odd square array.

        Parameters
        ----------
        x, y : float
            Position in the image's pixel coordinates.

        Returns
        -------
        numpy.ndarray
            ``(kernel_size, kernel_size)`` float64 array summing to 1.
        """

    def image(self, x: float, y: float) -> tuple[np.ndarray, int, int]:
        """PSF realised on the pixel grid, centred at the sub-pixel position ``(x, y)``.

        Returns
        -------
        stamp : numpy.ndarray
            ``(kernel_size, kernel_size)`` float64 array.
        x0, y0 : int
            Pixel coordinates of ``stamp[0, 0]``.
        """
        ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        kernel = self.kernel_image(x, y)
        half = kernel.shape[0] // 2
        stamp = shift_image(kernel, x - ix, y - iy)
        return stamp, ix - half, iy - half

    @abstractmethod
    def to_hdu(self):
        """Serialise to one astropy HDU with ``EXTNAME = 'PSF'``."""

    @classmethod
    @abstractmethod
    def _from_hdu(cls, hdu) -> Psf: ...


def psf_from_hdu(hdu) -> Psf:
    """Rebuild a PSF from the HDU written by :meth:`Psf.to_hdu`."""
    kind = hdu.header.get("PSFTYPE")
    try:
        cls = Psf._registry[kind]
    except KeyError:
        raise ValueError(f"unknown PSFTYPE {kind!r} in PSF HDU") from None
    return cls._from_hdu(hdu)


def _locate(centers: np.ndarray, v: float) -> tuple[int, int, float]:
    """Bracketing nodes and fraction along one axis (clamped at the ends)."""
    if centers.size == 1:
        return 0, 0, 0.0
    i = int(np.clip(np.searchsorted(centers, v) - 1, 0, centers.size - 2))
    t = float(np.clip((v - centers[i]) / (centers[i + 1] - centers[i]), 0.0, 1.0))
    return i, i + 1, t


def bilinear_kernel(images: np.ndarray, x_centers: np.ndarray, y_centers: np.ndarray,
                    x: float, y: float) -> np.ndarray:
    """Kernel at ``(x, y)`` interpolated between the four surrounding grid nodes.

    Parameters
    ----------
    images : numpy.ndarray
        ``(ny, nx, k, k)`` node kernels.
    x_centers, y_centers : numpy.ndarray
        Increasing node positions, pixels (``(nx,)`` and ``(ny,)``).
    x, y : float
        Position, pixels; clamped to the grid's span.

    Returns
    -------
    numpy.ndarray
        ``(k, k)`` float64 kernel, not normalised.
    """
    i0, i1, tx = _locate(x_centers, x)
    j0, j1, ty = _locate(y_centers, y)
    out = (1 - tx) * (1 - ty) * images[j0, i0].astype(float)
    out += tx * (1 - ty) * images[j0, i1]
    out += (1 - tx) * ty * images[j1, i0]
    out += tx * ty * images[j1, i1]
    return out


def _normalise(kernel: np.ndarray) -> np.ndarray:
    total = kernel.sum()
    return kernel / total if total != 0 else kernel


class GaussianPsf(Psf):
    """Elliptical Gaussian PSF, the same everywhere.

    Parameters
    ----------
    sigma : float
        Major-axis standard deviation in pixels.
    size : int
        Kernel side in pixels (made odd).
    axis_ratio : float
        Minor/major axis ratio (1 for a round PSF).
    theta : float
        Position angle of the major axis from +x, radians.

    Examples
    --------
    >>> psf = GaussianPsf(2.0, size=25)
    >>> round(float(psf.kernel_image(10, 10).sum()), 6)
    1.0
    """

    psf_type = "GAUSSIAN"

    def __init__(self, sigma: float, size: int | None = None, axis_ratio: float = 1.0,
                 theta: float = 0.0):
        self.sigma = float(sigma)
        self.axis_ratio = float(axis_ratio)
        self.theta = float(theta)
        size = int(size) if size is not None else 2 * int(np.ceil(5 * self.sigma)) + 1
        self._size = size if size % 2 == 1 else size + 1

    def __repr__(self) -> str:
        return (f"GaussianPsf(sigma={self.sigma:.3f}, size={self._size}, "
                f"axis_ratio={self.axis_ratio:.3f}, theta={self.theta:.3f})")

    @property
    def kernel_size(self) -> int:
        return self._size

    def moments(self) -> tuple[float, float, float]:
        """Second moments ``(Ixx, Iyy, Ixy)`` of the continuous Gaussian, pixels^2."""
        a2, b2 = self.sigma**2, (self.sigma * self.axis_ratio) ** 2
        c, s = np.cos(self.theta), np.sin(self.theta)
        return (a2 * c * c + b2 * s * s, a2 * s * s + b2 * c * c, (a2 - b2) * c * s)

    def kernel_image(self, x: float, y: float) -> np.ndarray:
        half = self._size // 2
        yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(float)
        ixx, iyy, ixy = self.moments()
        det = ixx * iyy - ixy * ixy
        q = (iyy * xx * xx - 2 * ixy * xx * yy + ixx * yy * yy) / det
        return _normalise(np.exp(-0.5 * q))

    def to_hdu(self):
        from astropy.io import fits

        hdu = fits.ImageHDU(self.kernel_image(0.0, 0.0).astype(np.float32), name="PSF")
        hdu.header["PSFTYPE"] = self.psf_type
        hdu.header["SIGMA"] = (self.sigma, "major-axis sigma [pixel]")
        hdu.header["AXRATIO"] = (self.axis_ratio, "minor/major axis ratio")
        hdu.header["THETA"] = (self.theta, "major-axis angle from +x [rad]")
        return hdu

    @classmethod
    def _from_hdu(cls, hdu) -> GaussianPsf:
        h = hdu.header
        return cls(h["SIGMA"], size=h["NAXIS1"], axis_ratio=h["AXRATIO"], theta=h["THETA"])


class PixelBasisPsf(Psf):
    """PSFEx-like model: basis images whose weights are polynomials of position.

    ``PSF(x, y) = sum_k P_k(xn, yn) B_k`` with ``P_k`` the monomials of
    :func:`polynomial_terms` and ``(xn, yn)`` the position mapped linearly from
    ``bbox`` onto ``[-1, 1]``.  The result is renormalised to sum 1.

    Parameters
    ----------
    basis : numpy.ndarray
        ``(n_terms, k, k)`` basis images, ``k`` odd, in native pixels.
    degree : int
        Polynomial degree; ``n_terms`` must equal ``(degree + 1)(degree + 2) / 2``.
    bbox : tuple of float
        ``(xmin, ymin, xmax, ymax)`` of the region the polynomial is defined on.
    """

    psf_type = "PIXELBASIS"

    def __init__(self, basis: np.ndarray, degree: int, bbox: tuple[float, float, float, float]):
        basis = np.asarray(basis, dtype=float)
        n_terms = (degree + 1) * (degree + 2) // 2
        if basis.ndim != 3 or basis.shape[0] != n_terms or basis.shape[1] != basis.shape[2]:
            raise ValueError(
                f"basis must have shape ({n_terms}, k, k) for degree {degree}, got {basis.shape}"
            )
        if basis.shape[1] % 2 == 0:
            raise ValueError(f"kernel size must be odd, got {basis.shape[1]}")
        self.basis = basis
        self.degree = int(degree)
        self.bbox = tuple(float(v) for v in bbox)

    def __repr__(self) -> str:
        return f"PixelBasisPsf(size={self.kernel_size}, degree={self.degree}, bbox={self.bbox})"

    @property
    def kernel_size(self) -> int:
        return self.basis.shape[1]

    def normalise_position(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Map pixel positions onto the ``[-1, 1]`` square of the polynomial."""
        xmin, ymin, xmax, ymax = self.bbox
        xn = 2.0 * (np.asarray(x, dtype=float) - xmin) / max(xmax - xmin, 1e-9) - 1.0
        yn = 2.0 * (np.asarray(y, dtype=float) - ymin) / max(ymax - ymin, 1e-9) - 1.0
        return xn, yn

    def kernel_image(self, x: float, y: float) -> np.ndarray:
        xn, yn = self.normalise_position(x, y)
        weights = polynomial_terms(xn, yn, self.degree)
        return _normalise(np.tensordot(weights, self.basis, axes=(0, 0)))

    def to_hdu(self):
        from astropy.io import fits

        hdu = fits.ImageHDU(self.basis.astype(np.float64), name="PSF")
        hdu.header["PSFTYPE"] = self.psf_type
        hdu.header["DEGREE"] = (self.degree, "polynomial degree of the basis weights")
        for key, value in zip(("PSFXMIN", "PSFYMIN", "PSFXMAX", "PSFYMAX"), self.bbox,
                              strict=True):
            hdu.header[key] = (value, "polynomial normalisation box [pixel]")
        return hdu

    @classmethod
    def _from_hdu(cls, hdu) -> PixelBasisPsf:
        h = hdu.header
        bbox = (h["PSFXMIN"], h["PSFYMIN"], h["PSFXMAX"], h["PSFYMAX"])
        return cls(np.asarray(hdu.data, dtype=float), h["DEGREE"], bbox)


class GridPsf(Psf):
    """Kernel images tabulated on a rectangular grid of positions.

    Used for coadd PSFs (evaluated on a grid over a patch) and for the
    piecewise PSF of stitched cell coadds (one image per cell).

    Parameters
    ----------
    images : numpy.ndarray
        ``(ny, nx, k, k)`` kernels; ``images[j, i]`` is the PSF at
        ``(x_centers[i], y_centers[j])``.
    x_centers, y_centers : numpy.ndarray
        Increasing grid positions in pixels.
    mode : {"bilinear", "nearest"}
        ``"nearest"`` returns the kernel of the grid cell containing the
        position (piecewise PSF); ``"bilinear"`` interpolates between the four
        surrounding nodes (clamped at the grid edges).
    """

    psf_type = "GRID"

    def __init__(self, images: np.ndarray, x_centers, y_centers, mode: str = "bilinear"):
        images = np.asarray(images, dtype=float)
        self.x_centers = np.asarray(x_centers, dtype=float)
        self.y_centers = np.asarray(y_centers, dtype=float)
        if images.ndim != 4 or images.shape[:2] != (self.y_centers.size, self.x_centers.size):
            raise ValueError(
                f"images must have shape (ny={self.y_centers.size}, nx={self.x_centers.size}, k, k),"
                f" got {images.shape}"
            )
        if mode not in ("bilinear", "nearest"):
            raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
        self.images = images
        self.mode = mode

    def __repr__(self) -> str:
        ny, nx, k, _ = self.images.shape
        return f"GridPsf(grid={nx}x{ny}, size={k}, mode={self.mode!r})"

    @property
    def kernel_size(self) -> int:
        return self.images.shape[2]

    def kernel_image(self, x: float, y: float) -> np.ndarray:
        if self.mode == "nearest":
            i = int(np.argmin(np.abs(self.x_centers - x)))
            j = int(np.argmin(np.abs(self.y_centers - y)))
            return _normalise(self.images[j, i].copy())
        return _normalise(bilinear_kernel(self.images, self.x_centers, self.y_centers, x, y))

    def to_hdu(self):
        from astropy.io import fits

        hdu = fits.ImageHDU(self.images.astype(np.float64), name="PSF")
        hdu.header["PSFTYPE"] = self.psf_type
        hdu.header["GRIDMODE"] = self.mode
        for axis, centers in (("X", self.x_centers), ("Y", self.y_centers)):
            for n, value in enumerate(centers):
                hdu.header[f"HIERARCH PSF{axis}{n}"] = float(value)
        return hdu

    @classmethod
    def _from_hdu(cls, hdu) -> GridPsf:
        h = hdu.header
        data = np.asarray(hdu.data, dtype=float)
        xs = [h[f"PSFX{n}"] for n in range(data.shape[1])]
        ys = [h[f"PSFY{n}"] for n in range(data.shape[0])]
        return cls(data, xs, ys, mode=h["GRIDMODE"])
