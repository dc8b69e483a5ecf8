"""From measurement tables to the catalogs drp writes (``src``, ``source``, PSF stars).

Measurement (:func:`processing.algorithms.measure.measure_sources`) returns
instrumental columns named as in ``dp1_Source``; this module adds identifiers,
sky coordinates and the calibrated (nJy) columns, once, for both the
single-frame calibration and the final reprocessing.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from store.calib import PhotoCalib
from store.formats.parquet import with_units

__all__ = ["calibrated_source_table", "psf_star_table"]

# (output column, instrumental column) pairs converted to nJy.
_FLUX_COLUMNS = [("psfFlux", "psfFlux_instFlux"), ("gaussianFlux", "gaussianFlux_instFlux"),
                 ("calibFlux", "apFlux_12_0_instFlux"), ("sky", "localBackground_instFlux")]
for _r, _stem in ((3, "3_0"), (6, "6_0"), (9, "9_0"), (12, "12_0"), (17, "17_0"), (25, "25_0"),
                  (35, "35_0"), (50, "50_0"), (70, "70_0")):
    _FLUX_COLUMNS.append((f"ap{_r:02d}Flux", f"apFlux_{_stem}_instFlux"))


def _col(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False)


def calibrated_source_table(table: pa.Table, *, source_id: np.ndarray, parent_id: np.ndarray,
                            ra: np.ndarray, dec: np.ndarray, photo_calib: PhotoCalib | None,
                            visit: int, detector: int, band: str, physical_filter: str,
                            extra: dict[str, np.ndarray] | None = None) -> pa.Table:
    """Add ids, coordinates and nJy fluxes to a measurement table.

    Parameters
    ----------
    table : pyarrow.Table
        Measurement output (instrumental units).
    source_id, parent_id : numpy.ndarray
        ``sourceId`` and ``parentSourceId`` (0 for non-children) per row.
    ra, dec : numpy.ndarray
        ICRS coordinates, degrees.
    photo_calib : PhotoCalib or None
        Calibration to nJy; without it the nJy columns are NaN.
    visit, detector, band, physical_filter
        Identify the detector-visit.
    extra : dict, optional
        More columns (flags such as ``calib_psf_used``).

    Returns
    -------
    pyarrow.Table
        ``dp1_Source``-named columns, units in the field metadata.
    """
    n = table.num_rows
    cols: dict[str, pa.Array | np.ndarray] = {
        "sourceId": source_id.astype(np.int64), "parentSourceId": parent_id.astype(np.int64),
        "coord_ra": ra, "coord_dec": dec, "ra": ra, "dec": dec,
    }
    units = {"coord_ra": "deg", "coord_dec": "deg", "ra": "deg", "dec": "deg"}
    calib = photo_calib.calibration_mean if photo_calib is not None else np.nan
    for out, inst in _FLUX_COLUMNS:
        if inst not in table.column_names:
            continue
        flux = _col(table, inst).astype(float)
        err_name = inst + "Err"
        cols[out] = flux * calib
        units[out] = "nJy"
        if err_name in table.column_names:
            cols[out + "Err"] = _col(table, err_name).astype(float) * calib
            units[out + "Err"] = "nJy"
        flag = inst.replace("_instFlux", "_flag")
        if out.startswith("ap") and flag in table.column_names:
            cols[out + "_flag"] = _col(table, flag)
    for name in table.column_names:
        if name not in cols:
            cols[name] = table.column(name)
    for name, values in (extra or {}).items():
        cols[name] = values
    cols["visit"] = np.full(n, visit, dtype=np.int64)
    cols["detector"] = np.full(n, detector, dtype=np.int32)
    cols["band"] = pa.array([band] * n, pa.string())
    cols["physical_filter"] = pa.array([physical_filter] * n, pa.string())
    out = pa.table(cols)
    existing = {f.name: (f.metadata or {}).get(b"unit", b"").decode() for f in table.schema}
    units.update({k: v for k, v in existing.items() if v})
    return with_units(out, units)


def psf_star_table(sources: pa.Table, selection: np.ndarray, *, detector: int) -> pa.Table:
    """The PSF-star table (``single_visit_star``) with Rubin's slot column names.

    Parameters
    ----------
    sources : pyarrow.Table
        Calibrated source table holding the ``calib_psf_*`` flags.
    selection : numpy.ndarray
        Rows to keep (the PSF candidates).
    detector : int
        Detector id, written in the ``detector`` column.
    """
    rows = sources.filter(pa.array(np.asarray(selection, dtype=bool)))
    rename = {
        "x": "slot_Centroid_x", "y": "slot_Centroid_y",
        "ixx": "slot_Shape_xx", "iyy": "slot_Shape_yy", "ixy": "slot_Shape_xy",
        "ixxPSF": "slot_PsfShape_xx", "iyyPSF": "slot_PsfShape_yy", "ixyPSF": "slot_PsfShape_xy",
        "psfFlux_instFlux": "slot_PsfFlux_instFlux",
        "psfFlux_instFluxErr": "slot_PsfFlux_instFluxErr",
        "psfFlux_flag": "slot_PsfFlux_flag", "shape_flag": "slot_Shape_flag",
    }
    keep = ["sourceId", "coord_ra", "coord_dec", *rename, "calib_psf_candidate",
            "calib_psf_used", "calib_psf_reserved", "psfFlux", "psfFluxErr",
            "apFlux_12_0_instFlux", "apFlux_12_0_instFluxErr", "apFlux_17_0_instFlux",
            "apFlux_17_0_instFluxErr", "visit", "band"]
    cols = {}
    for name in keep:
        if name in rows.column_names:
            cols[rename.get(name, name)] = rows.column(name)
    cols["detector"] = pa.array(np.full(rows.num_rows, detector, dtype=np.int32))
    units = {f.name: (f.metadata or {}).get(b"unit", b"").decode() for f in rows.schema}
    return with_units(pa.table(cols), {rename.get(k, k): v for k, v in units.items() if v})
