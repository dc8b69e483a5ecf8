"""Reading warps strip by strip for the coadd assembly, with bounded memory.

A :class:`WarpSource` fills caller-owned arrays with a box of a warp's image,
variance and mask.  :class:`FileWarp` reads the rows of a box straight from the
FITS data units (one seek and one read per plane and strip, converted from
big-endian while copying), without memory-mapping: mapped pages would stay
resident and make the process's memory grow with the number of inputs.
:class:`MemoryWarp` does the same from an :class:`~store.exposure.Exposure`.
Pixels of the requested box outside the warp read as image NaN, variance
+inf and mask NO_DATA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from store.errors import FormatError
from store.exposure import Exposure
from store.geom import Box
from store.masks import MASK_PLANES, bits, remap

__all__: list[str] = []  # private helpers of the coadd tasks

_DTYPES = {-32: ">f4", -64: ">f8", 32: ">i4", 16: ">i2", 8: "u1", 64: ">i8"}


class WarpSource:
    """A warp: its box, components and metadata, and a strip reader."""

    bbox: Box
    psf: Any
    metadata: dict
    units: str
    visit_info: Any
    wcs: Any

    def read(self, box: Box, image: np.ndarray, variance: np.ndarray, mask: np.ndarray) -> None:
        """Fill ``(box.height, box.width)`` arrays with the warp's pixels in ``box``."""
        inside = box.intersection(self.bbox)
        if inside.area < box.area:
            image.fill(np.nan)
            variance.fill(np.inf)
            mask.fill(bits("NO_DATA"))
        if inside.is_empty:
            return
        rows, cols = inside.slices_in(box)
        self._read(inside, image[rows, cols], variance[rows, cols], mask[rows, cols])

    def _read(self, box, image, variance, mask) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def read_mask(self, box: Box) -> np.ndarray:
        """The mask inside ``box`` (int32)."""
        img = np.empty(box.shape, np.float32)
        var = np.empty(box.shape, np.float32)
        msk = np.empty(box.shape, np.int32)
        self.read(box, img, var, msk)
        return msk

    def close(self) -> None:
        """Release any open file."""


class MemoryWarp(WarpSource):
    """A warp held in memory."""

    def __init__(self, exposure: Exposure):
        self.exposure = exposure
        self.bbox = exposure.bbox
        self.psf = exposure.psf
        self.metadata = dict(exposure.metadata)
        self.units = exposure.units
        self.visit_info = exposure.visit_info
        self.wcs = exposure.wcs

    def __repr__(self) -> str:
        return f"MemoryWarp({self.exposure!r})"

    def _read(self, box, image, variance, mask) -> None:
        rows, cols = box.slices_in(self.bbox)
        image[...] = self.exposure.image[rows, cols]
        variance[...] = self.exposure.variance[rows, cols]
        mask[...] = self.exposure.mask[rows, cols]


class FileWarp(WarpSource):
    """A warp in an exposure FITS file, read by direct seeks."""

    def __init__(self, path: str | Path):
        from astropy.io import fits

        from store.formats.fits import read_exposure_info

        self.path = Path(path)
        info = read_exposure_info(self.path)
        self.bbox = info.bbox
        self.psf = info.psf
        self.metadata = dict(info.metadata)
        self.units = info.units
        self.visit_info = info.visit_info
        self.wcs = info.wcs
        self._planes: dict[str, tuple[int, np.dtype, dict | None]] = {}
        with fits.open(self.path, memmap=False, lazy_load_hdus=True) as hdul:
            names = [h.name for h in hdul]
            for plane in ("IMAGE", "VARIANCE", "MASK"):
                if plane not in names:
                    raise FormatError(f"{self.path}: no {plane} extension (not a warp)")
                index = names.index(plane)
                hdr = hdul[index].header
                if hdr.get("BSCALE", 1) != 1 or hdr.get("BZERO", 0) != 0:
                    raise FormatError(f"{self.path}: scaled {plane} data are not supported")
                if (hdr["NAXIS1"], hdr["NAXIS2"]) != (self.bbox.width, self.bbox.height):
                    raise FormatError(f"{self.path}: {plane} shape differs from IMAGE")
                planes = None
                if plane == "MASK":
                    file_planes = {k[3:]: int(v) for k, v in hdr.items() if k.startswith("MP_")}
                    if any(MASK_PLANES.get(n, (None,))[0] != b for n, b in file_planes.items()):
                        planes = file_planes
                self._planes[plane] = (int(hdul.fileinfo(index)["datLoc"]),
                                       np.dtype(_DTYPES[int(hdr["BITPIX"])]), planes)
        self._file = None

    def __repr__(self) -> str:
        return f"FileWarp({str(self.path)!r})"

    def _read(self, box, image, variance, mask) -> None:
        if self._file is None:
            self._file = open(self.path, "rb")  # kept open across strips
        width = self.bbox.width
        y0 = box.y0 - self.bbox.y0
        c0, c1 = box.x0 - self.bbox.x0, box.x1 - self.bbox.x0
        for plane, out in (("IMAGE", image), ("VARIANCE", variance), ("MASK", mask)):
            offset, dtype, planes = self._planes[plane]
            self._file.seek(offset + y0 * width * dtype.itemsize)
            if (c0 == 0 and c1 == width and planes is None and out.flags.c_contiguous
                    and out.dtype.itemsize == dtype.itemsize
                    and out.dtype.kind == dtype.kind):
                # Full-width rows: read the big-endian bytes in place and swap them there
                # (one pass instead of read + converting copy).
                if self._file.readinto(memoryview(out).cast("B")) != out.nbytes:
                    raise FormatError(f"{self.path}: truncated {plane} data")
                if dtype.byteorder in "<>" and (dtype.byteorder == ">") == np.little_endian:
                    out.byteswap(inplace=True)
                continue
            buf = np.empty((box.height, width), dtype=dtype)
            if self._file.readinto(memoryview(buf).cast("B")) != buf.nbytes:
                raise FormatError(f"{self.path}: truncated {plane} data")
            values = buf[:, c0:c1]
            if planes is not None:
                values = remap(values.astype(np.int64), planes)
            out[...] = values

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
