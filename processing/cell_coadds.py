"""Cell-based coadds: every cell of a patch with its own image, PSF and inputs (Rubin ``cell_coadds``).

A :class:`MultipleCellCoadd` is what ``AssembleCellCoaddTask`` makes for one
(tract, patch, band): for each populated cell, the outer-cell image, mask,
variance and masked fraction (``outer x outer`` pixels, tract frame, nJy), the
cell PSF (``k x k``, the weighted mean of the inputs' PSFs at the cell
centre), and its inputs (visit, detector, weight, overlap fractions), plus
per-cell aperture corrections.

Storage (``deep_coadd_cell``, storage class ``FitsBundle``): one FITS file
with arrays ``IMAGE``, ``MASK``, ``VARIANCE``, ``MASKFRAC`` of shape
``(n_cells, outer, outer)`` and ``PSF`` ``(n_cells, k, k)``, in the row order
of the table ``CELLS`` (the cell index table: ``cell_id``, ``cell_x``,
``cell_y``, ``inner_x0``/``inner_y0`` and the centre pixel, ``ra``/``dec``,
``n_inputs``, ``is_fallback``, ``weight_sum``, ``psf_fwhm``, ``psf_ixx``...,
``psf_sum``, ``depth``, ``variance_median``), the tables ``INPUTS`` (one row
per cell input: ``cell_id``, ``instrument``, ``visit``, ``detector``,
``weight``, ``overlap_fraction``, ``unmasked_fraction``, ``fallback``,
``psf_sum``, the cell centre in detector pixels) and ``APCORR`` (``cell_id``,
``name``, ``value``, ``error``), and in the primary
header the tract WCS, the grid (``CELLX0``, ``CELLY0``, ``CELLSIZE``,
``CELLBRDR``, ``NCELLX``, ``NCELLY``), ``PIXSCALE`` (arcsec/pixel), ``BUNIT``,
the data ID and the mask planes (``MP_<NAME>``).

:meth:`MultipleCellCoadd.stitch` gives ``deep_coadd_cell_stitched``: the inner
cells pasted into one Exposure over the grid box (absent cells: image 0,
NO_DATA, variance +inf) with a piecewise :class:`~store.psf.GridPsf` (mode
``"nearest"``: the PSF of the cell containing the position; absent cells take
the nearest populated cell's PSF).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from store.calib import PhotoCalib
from store.errors import FormatError
from store.exposure import Exposure, VisitInfo
from store.formats.fits import FitsBundle
from store.geom import Box
from store.masks import MASK_PLANES, bits, header_cards, remap
from store.psf import GridPsf

from .algorithms.cell_psf import point_source_depth, psf_fwhm
from .algorithms.cell_stack import CellGrid

__all__ = ["FORMAT", "MultipleCellCoadd", "SingleCellCoadd", "cell_summary"]

#: ``CELLFMT`` card of the bundle.
FORMAT = "cell_coadd/1"


@dataclass
class SingleCellCoadd:
    """One cell (views into the :class:`MultipleCellCoadd` arrays).

    Attributes
    ----------
    id : int
        Sequential cell index ``nx * cell_y + cell_x``.
    index : tuple of int
        ``(cell_x, cell_y)``.
    inner_bbox, outer_bbox : Box
        Tract-pixel boxes.
    image, variance, maskfrac : numpy.ndarray
        ``(outer, outer)`` float32 planes (nJy, nJy^2, fraction).
    mask : numpy.ndarray
        ``(outer, outer)`` int32.
    psf : numpy.ndarray
        ``(k, k)`` cell PSF centred on the cell-centre pixel.
    inputs : pyarrow.Table
        The cell's rows of the inputs table.
    """

    id: int
    index: tuple[int, int]
    inner_bbox: Box
    outer_bbox: Box
    image: np.ndarray
    mask: np.ndarray
    variance: np.ndarray
    maskfrac: np.ndarray
    psf: np.ndarray
    inputs: pa.Table

    def inner(self, plane: str = "image") -> np.ndarray:
        """The inner-cell part of a plane (a view)."""
        rows, cols = self.inner_bbox.slices_in(self.outer_bbox)
        return getattr(self, plane)[rows, cols]


@dataclass
class MultipleCellCoadd:
    """The populated cells of one patch and band.

    Attributes
    ----------
    grid : CellGrid
        Cell geometry (tract pixels).
    wcs : astropy.wcs.WCS
        The tract WCS.
    cells : pyarrow.Table
        One row per populated cell (the ``CELLS`` table), in array order.
    image, mask, variance, maskfrac : numpy.ndarray
        ``(n, outer, outer)`` planes.
    psf : numpy.ndarray
        ``(n, k, k)`` cell PSFs.
    inputs, ap_corr : pyarrow.Table
        The ``INPUTS`` and ``APCORR`` tables.
    identifiers : dict
        ``skymap``, ``tract``, ``patch``, ``band``.
    pixel_scale : float
        Arcseconds per pixel.
    """

    grid: CellGrid
    wcs: Any
    cells: pa.Table
    image: np.ndarray
    mask: np.ndarray
    variance: np.ndarray
    maskfrac: np.ndarray
    psf: np.ndarray
    inputs: pa.Table
    ap_corr: pa.Table
    identifiers: dict[str, Any] = field(default_factory=dict)
    pixel_scale: float = 0.2

    def __post_init__(self):
        n = self.cells.num_rows
        for name in ("image", "mask", "variance", "maskfrac", "psf"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"{name} holds {getattr(self, name).shape[0]} cells, "
                                 f"the cell table {n}")
        self._row = {int(c): i for i, c in enumerate(self.cells.column("cell_id").to_pylist())}

    def __repr__(self) -> str:
        ids = ", ".join(f"{k}={v}" for k, v in self.identifiers.items())
        return (f"MultipleCellCoadd({ids}, cells={len(self)}/{self.grid.n_cells}, "
                f"inputs={self.inputs.num_rows})")

    def __len__(self) -> int:
        return self.cells.num_rows

    def __contains__(self, cell_id: int) -> bool:
        return int(cell_id) in self._row

    def cell_ids(self) -> list[int]:
        """Ids of the populated cells, in array order."""
        return list(self._row)

    def __getitem__(self, cell_id: int) -> SingleCellCoadd:
        try:
            i = self._row[int(cell_id)]
        except KeyError:
            raise KeyError(f"cell {cell_id} has no data; populated: {len(self)} cells") from None
        ix, iy = int(cell_id) % self.grid.nx, int(cell_id) // self.grid.nx
        ids = self.inputs.column("cell_id").to_numpy()
        return SingleCellCoadd(int(cell_id), (ix, iy), self.grid.inner_box(ix, iy),
                               self.grid.outer_box(ix, iy), self.image[i], self.mask[i],
                               self.variance[i], self.maskfrac[i], self.psf[i],
                               self.inputs.filter(pa.array(ids == int(cell_id))))

    def __iter__(self) -> Iterator[SingleCellCoadd]:
        for cell_id in self._row:
            yield self[cell_id]

    # -------------------------------------------------------------------------- stitching

    def stitch(self) -> Exposure:
        """The inner cells as one Exposure over the grid box, with a piecewise PSF."""
        g = self.grid
        box = g.bbox
        image = np.zeros(box.shape, np.float32)
        mask = np.full(box.shape, bits("NO_DATA"), np.int32)
        variance = np.full(box.shape, np.inf, np.float32)
        s, b = g.size, g.border
        k = self.psf.shape[-1]
        psf = np.zeros((g.ny, g.nx, k, k))
        have = np.zeros((g.ny, g.nx), bool)
        for i, cell_id in enumerate(self._row):
            ix, iy = cell_id % g.nx, cell_id // g.nx
            rows, cols = slice(iy * s, (iy + 1) * s), slice(ix * s, (ix + 1) * s)
            image[rows, cols] = self.image[i, b:b + s, b:b + s]
            mask[rows, cols] = self.mask[i, b:b + s, b:b + s]
            variance[rows, cols] = self.variance[i, b:b + s, b:b + s]
            psf[iy, ix] = self.psf[i]
            have[iy, ix] = True
        if have.any() and not have.all():
            gy, gx = np.nonzero(have)
            for iy, ix in zip(*np.nonzero(~have), strict=True):
                nearest = np.argmin((gx - ix) ** 2 + (gy - iy) ** 2)
                psf[iy, ix] = psf[gy[nearest], gx[nearest]]
        cx, cy = g.center_pixel(np.arange(g.nx), np.arange(g.ny))
        metadata = {k.upper(): v for k, v in self.identifiers.items()}
        metadata.update({"NCELLS": len(self), "STITCHED": True})
        return Exposure(image, mask, variance, wcs=self.wcs,
                        psf=GridPsf(psf, cx.astype(float), cy.astype(float), mode="nearest"),
                        photo_calib=PhotoCalib(1.0), units="nJy",
                        visit_info=VisitInfo(band=self.identifiers.get("band")),
                        xy0=(box.x0, box.y0), metadata=metadata)

    # ----------------------------------------------------------------------------- storage

    def to_bundle(self) -> FitsBundle:
        """The ``deep_coadd_cell`` file contents (see the module notes)."""
        g = self.grid
        header: dict[str, Any] = {"CELLFMT": FORMAT, "BUNIT": "nJy",
                                  "PIXSCALE": float(self.pixel_scale), "CELLX0": g.x0,
                                  "CELLY0": g.y0, "CELLSIZE": g.size, "CELLBRDR": g.border,
                                  "NCELLX": g.nx, "NCELLY": g.ny}
        for key, value in self.identifiers.items():
            header[f"ID_{key.upper()}"] = value
        if self.wcs is not None:
            for key, value in self.wcs.to_header(relax=True).items():
                header[key] = value
        for key, bit, _ in header_cards():
            header[key] = bit
        arrays = {"IMAGE": self.image, "MASK": self.mask, "VARIANCE": self.variance,
                  "MASKFRAC": self.maskfrac, "PSF": self.psf.astype(np.float32)}
        tables = {"CELLS": self.cells, "INPUTS": self.inputs, "APCORR": self.ap_corr}
        return FitsBundle(header=header, arrays=arrays, tables=tables)

    @classmethod
    def from_bundle(cls, bundle: FitsBundle) -> MultipleCellCoadd:
        """Rebuild from a bundle written by :meth:`to_bundle` (e.g. ``repo.get``)."""
        from astropy.io import fits
        from astropy.wcs import WCS, FITSFixedWarning

        h = bundle.header
        if h.get("CELLFMT") != FORMAT:
            raise FormatError(f"not a cell coadd bundle: CELLFMT={h.get('CELLFMT')!r}, "
                              f"expected {FORMAT!r}")
        grid = CellGrid(int(h["CELLX0"]), int(h["CELLY0"]), int(h["CELLSIZE"]),
                        int(h["CELLBRDR"]), int(h["NCELLX"]), int(h["NCELLY"]))
        header = fits.Header()
        for key, value in h.items():
            if isinstance(value, (int, float, str)) and len(key) <= 8:
                header[key] = value
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header, relax=True) if "CTYPE1" in header else None
        planes = {k[3:]: int(v) for k, v in h.items() if k.startswith("MP_")}
        arrays = {k.upper(): v for k, v in bundle.arrays.items()}
        tables = {k.upper(): v for k, v in bundle.tables.items()}
        identifiers = {k[3:].lower(): v for k, v in h.items() if k.startswith("ID_")}
        mask = arrays["MASK"]
        if any(MASK_PLANES.get(n, (None,))[0] != b for n, b in planes.items()):
            mask = remap(mask, planes)
        return cls(grid, wcs, tables["CELLS"], arrays["IMAGE"].astype(np.float32, copy=False),
                   mask.astype(np.int32, copy=False),
                   arrays["VARIANCE"].astype(np.float32, copy=False),
                   arrays["MASKFRAC"].astype(np.float32, copy=False),
                   arrays["PSF"].astype(np.float64), tables["INPUTS"], tables["APCORR"],
                   identifiers, float(h.get("PIXSCALE", 0.2)))


def cell_summary(psf: np.ndarray, variance: np.ndarray, grid: CellGrid, pixel_scale: float
                 ) -> dict[str, np.ndarray]:
    """PSF size and depth of cells.

    Parameters
    ----------
    psf : numpy.ndarray
        ``(n, k, k)`` cell PSFs.
    variance : numpy.ndarray
        ``(n, outer, outer)`` variance planes (nJy^2).
    grid : CellGrid
        Gives the inner part of the outer cells.
    pixel_scale : float
        Arcseconds per pixel.

    Returns
    -------
    dict of str to numpy.ndarray
        ``psf_fwhm`` (arcsec, adaptive moments), ``psf_ixx``, ``psf_iyy``,
        ``psf_ixy`` (pixel^2), ``psf_sum``, ``variance_median`` (finite inner
        pixels, nJy^2) and ``depth`` (5-sigma point-source AB magnitude).
    """
    n = psf.shape[0]
    fwhm, ixx, iyy, ixy = psf_fwhm(psf, pixel_scale)
    b, s = grid.border, grid.size
    med = np.full(n, np.nan)
    depth = np.full(n, np.nan)
    for i in range(n):
        inner = variance[i, b:b + s, b:b + s]
        ok = inner[np.isfinite(inner) & (inner > 0)]
        if ok.size:
            med[i] = float(np.median(ok))
            depth[i] = point_source_depth(psf[i], med[i])
    return {"psf_fwhm": fwhm, "psf_ixx": ixx, "psf_iyy": iyy, "psf_ixy": ixy,
            "psf_sum": psf.reshape(n, -1).sum(axis=1), "variance_median": med, "depth": depth}
