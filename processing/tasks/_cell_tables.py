"""The tables of a cell coadd: cells, inputs, aperture corrections and the SQL cell index.

Private helpers of :mod:`processing.tasks.assemble_cell_coadd`; the column
meanings are documented in :mod:`processing.cell_coadds` (``CELLS``,
``INPUTS``, ``APCORR``) and with the ``CoaddCells`` SQL table
(:func:`index_table`, units in the Parquet field metadata).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from store.formats.parquet import with_units

from ..algorithms.cell_stack import CellGrid

__all__: list[str] = []  # private helpers of assemble_cell_coadd

_UNITS = {"ra": "deg", "dec": "deg", "psf_fwhm": "arcsec", "psf_ixx": "pixel**2",
          "psf_iyy": "pixel**2", "psf_ixy": "pixel**2", "depth": "mag",
          "variance_median": "nJy**2", "weight_sum": "nJy**-2", "weight": "nJy**-2",
          "x_detector": "pixel", "y_detector": "pixel", "center_x": "pixel",
          "center_y": "pixel", "inner_x0": "pixel", "inner_y0": "pixel"}
_DESCRIPTIONS = {
    "cell_id": "sequential cell index n_x * cell_y + cell_x within the patch",
    "ra": "cell centre", "dec": "cell centre",
    "n_inputs": "number of (visit, detector) inputs of the cell",
    "is_fallback": "only inputs with more than max_maskfrac of the cell masked",
    "weight_sum": "sum of the inputs' weights 1 / (meanVar calibration^2)",
    "psf_fwhm": "FWHM of the cell PSF from its adaptive moments",
    "psf_sum": "sum of the cell PSF image (1 when the stamp holds the whole PSF)",
    "depth": "5-sigma point-source AB magnitude (median inner variance, PSF area)",
    "variance_median": "median variance of the inner cell",
}


def cells_table(grid: CellGrid, wcs, out: dict, summary: dict, w_ref: float) -> pa.Table:
    """The ``CELLS`` table: one row per populated cell, in array order."""
    ids = np.asarray(out["cell_ids"], np.int64)
    ix, iy = ids % grid.nx, ids // grid.nx
    cx, cy = grid.center_pixel(ix, iy)
    ra, dec = wcs.all_pix2world(cx.astype(float), cy.astype(float), 0) if ids.size else ([], [])
    cols = {"cell_id": ids, "cell_x": ix.astype(np.int32), "cell_y": iy.astype(np.int32),
            "inner_x0": grid.x0 + ix * grid.size, "inner_y0": grid.y0 + iy * grid.size,
            "center_x": cx, "center_y": cy, "ra": np.asarray(ra, float),
            "dec": np.asarray(dec, float),
            "n_inputs": np.asarray(out["n_inputs"], np.int32),
            "is_fallback": np.asarray(out["is_fallback"], bool),
            "weight_sum": np.asarray(out["weight"], float) * w_ref}
    cols.update(summary)
    return pa.table(cols)


def inputs_table(rows: list[dict], w_ref: float) -> pa.Table:
    """The ``INPUTS`` table: one row per (cell, input); weights in 1/nJy^2."""
    schema = pa.schema([("cell_id", pa.int64()), ("instrument", pa.string()),
                        ("visit", pa.int64()), ("detector", pa.int64()),
                        ("weight", pa.float64()), ("overlap_fraction", pa.float64()),
                        ("unmasked_fraction", pa.float64()), ("fallback", pa.bool_()),
                        ("psf_sum", pa.float64()), ("x_detector", pa.float64()),
                        ("y_detector", pa.float64())])
    rows = [dict(r, weight=r["weight"] * w_ref) for r in rows]
    return pa.Table.from_pylist(rows, schema=schema)


def ap_corr_rows(cell_id: int, sums: dict[str, list[float]], n_inputs: int) -> list[dict]:
    """Weighted-mean aperture corrections of one cell (NaN if an input lacks the field)."""
    rows = []
    for name, (swa, sw2s2, sw, count) in sorted(sums.items()):
        ok = count == n_inputs and sw > 0
        rows.append({"cell_id": cell_id, "name": name,
                     "value": swa / sw if ok else float("nan"),
                     "error": float(np.sqrt(sw2s2)) / sw if ok else float("nan")})
    return rows


def ap_corr_table(rows: list[dict]) -> pa.Table:
    """The ``APCORR`` table: one row per (cell, flux field)."""
    schema = pa.schema([("cell_id", pa.int64()), ("name", pa.string()),
                        ("value", pa.float64()), ("error", pa.float64())])
    return pa.Table.from_pylist(rows, schema=schema)


_INDEX_COLUMNS = ("psf_fwhm", "psf_ixx", "psf_iyy", "psf_ixy", "psf_sum", "depth",
                  "variance_median")


def index_table(grid: CellGrid, wcs, cells: pa.Table, identifiers: dict) -> pa.Table:
    """One row per cell of the patch, empty cells included (``n_inputs`` 0, NULL PSF)."""
    ids = np.arange(grid.n_cells)
    ix, iy = ids % grid.nx, ids // grid.nx
    cx, cy = grid.center_pixel(ix, iy)
    ra, dec = wcs.all_pix2world(cx.astype(float), cy.astype(float), 0)
    row = np.full(grid.n_cells, -1)
    row[cells.column("cell_id").to_numpy()] = np.arange(cells.num_rows)
    have = row >= 0

    def spread(name, fill, dtype):
        values = np.full(grid.n_cells, fill, dtype=dtype)
        values[have] = cells.column(name).to_numpy(zero_copy_only=False)[row[have]]
        return values

    cols: dict[str, Any] = {}
    for key in ("skymap", "tract", "patch", "band"):
        if key in identifiers:
            cols[key] = [identifiers[key]] * grid.n_cells
    cols.update({"cell_id": ids.astype(np.int32), "cell_x": ix.astype(np.int32),
                 "cell_y": iy.astype(np.int32), "ra": np.asarray(ra), "dec": np.asarray(dec),
                 "n_inputs": spread("n_inputs", 0, np.int32),
                 "is_fallback": spread("is_fallback", False, bool),
                 "weight_sum": spread("weight_sum", 0.0, float)})
    for name in _INDEX_COLUMNS:  # NULL, not NaN, where not measured: SQL aggregates skip it
        values = spread(name, np.nan, float)
        cols[name] = pa.array(values, mask=~np.isfinite(values))
    return with_units(pa.table(cols), _UNITS, _DESCRIPTIONS)
