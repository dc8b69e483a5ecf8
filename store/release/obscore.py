"""The ObsCore-style index of a release's images (Parquet and VOTable).

One row per image file, with the IVOA ObsCore 1.1 columns (``dataproduct_type``,
``calib_level``, ``s_ra``/``s_dec``/``s_region``, ``t_min``/``t_max``, ``em_min``/``em_max``,
``access_url``...) and the Rubin-style extras (``lsst_band``, ``lsst_visit``,
``lsst_detector``, ``lsst_tract``, ``lsst_patch``), plus the file's checksum.  The
VOTable is a ``results`` resource with ``QUERY_STATUS=OK``, the shape a TAP service
returns, so ``pyvo`` result classes accept it as they are.

Sky regions come from the registry's dimension records (the detector in the visit, the
patch), else from the FITS header's WCS, else from the coarser record (visit, tract).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .config import BAND_WAVELENGTHS_M, ImageSpec

__all__ = ["OBSCORE_COLUMNS", "ObsCoreColumn", "obscore_table", "write_obscore_votable"]


@dataclass(frozen=True)
class ObsCoreColumn:
    """One column of the ObsCore index: Arrow type, unit, UCD, utype, description."""

    name: str
    type: pa.DataType
    unit: str
    ucd: str
    utype: str
    description: str


def _c(name, kind, unit, ucd, utype, doc) -> ObsCoreColumn:
    return ObsCoreColumn(name, kind, unit, ucd, f"obscore:{utype}" if utype else "", doc)


_S, _D, _I, _L = pa.string(), pa.float64(), pa.int32(), pa.int64()

#: The index's columns, in order (one definition for Parquet, VOTable and schema).
OBSCORE_COLUMNS: tuple[ObsCoreColumn, ...] = (
    _c("dataproduct_type", _S, "", "meta.id", "ObsDataset.dataProductType",
       "data product type (image)"),
    _c("dataproduct_subtype", _S, "", "meta.id", "ObsDataset.dataProductSubtype",
       "drp dataset type, e.g. lsst.visit_image"),
    _c("calib_level", _I, "", "meta.code;obs.calib", "ObsDataset.calibLevel",
       "calibration level: 2 calibrated single visit, 3 coadd"),
    _c("obs_collection", _S, "", "meta.id", "DataID.Collection", "release collection"),
    _c("obs_id", _S, "", "meta.id", "DataID.observationID", "data ID of the image"),
    _c("obs_publisher_did", _S, "", "meta.ref.ivoid", "Curation.PublisherDID",
       "unique identifier of the file (dataset UUID)"),
    _c("access_url", _S, "", "meta.ref.url", "Access.Reference",
       "path of the FITS file relative to the release directory"),
    _c("access_format", _S, "", "meta.code.mime", "Access.Format", "MIME type of the file"),
    _c("access_estsize", _L, "kbyte", "phys.size;meta.file", "Access.Size", "file size"),
    _c("target_name", _S, "", "meta.id;src", "Target.Name", "target name (none)"),
    _c("s_ra", _D, "deg", "pos.eq.ra", "Char.SpatialAxis.Coverage.Location.Coord.Position2D"
       ".Value2.C1", "ICRS right ascension of the footprint centre"),
    _c("s_dec", _D, "deg", "pos.eq.dec", "Char.SpatialAxis.Coverage.Location.Coord.Position2D"
       ".Value2.C2", "ICRS declination of the footprint centre"),
    _c("s_fov", _D, "deg", "phys.angSize;instr.fov", "Char.SpatialAxis.Coverage.Bounds.Extent"
       ".diameter", "diameter of the circle enclosing the footprint"),
    _c("s_region", _S, "", "pos.outline;obs.field", "Char.SpatialAxis.Coverage.Support.Area",
       "footprint as an STC-S POLYGON ICRS string"),
    _c("s_resolution", _D, "arcsec", "pos.angResolution", "Char.SpatialAxis.Resolution.Refval"
       ".value", "angular resolution (not recorded: NaN)"),
    _c("t_min", _D, "d", "time.start;obs.exposure", "Char.TimeAxis.Coverage.Bounds.Limits"
       ".StartTime", "exposure start, TAI MJD (NaN for coadds)"),
    _c("t_max", _D, "d", "time.end;obs.exposure", "Char.TimeAxis.Coverage.Bounds.Limits"
       ".StopTime", "exposure end, TAI MJD (NaN for coadds)"),
    _c("t_exptime", _D, "s", "time.duration;obs.exposure", "Char.TimeAxis.Coverage.Support"
       ".Extent", "exposure time (NaN for coadds)"),
    _c("t_resolution", _D, "s", "time.resolution", "Char.TimeAxis.Resolution.Refval.value",
       "time resolution (the exposure time)"),
    _c("em_min", _D, "m", "em.wl;stat.min", "Char.SpectralAxis.Coverage.Bounds.Limits.LoLimit",
       "shortest wavelength of the band (approximate)"),
    _c("em_max", _D, "m", "em.wl;stat.max", "Char.SpectralAxis.Coverage.Bounds.Limits.HiLimit",
       "longest wavelength of the band (approximate)"),
    _c("em_res_power", _D, "", "spect.resolution", "Char.SpectralAxis.Resolution.ResolPower"
       ".refVal", "spectral resolving power (NaN)"),
    _c("em_filter_name", _S, "", "instr.filter", "", "physical filter"),
    _c("o_ucd", _S, "", "meta.ucd", "Char.ObservableAxis.ucd", "UCD of the pixel values"),
    _c("pol_states", _S, "", "meta.code;phys.polarization", "Char.PolarizationAxis.stateList",
       "polarisation states (none)"),
    _c("facility_name", _S, "", "meta.id;instr.tel", "Provenance.ObsConfig.Facility.name",
       "telescope"),
    _c("instrument_name", _S, "", "meta.id;instr", "Provenance.ObsConfig.Instrument.name",
       "instrument"),
    _c("lsst_band", _S, "", "instr.bandpass", "", "abstract filter (u g r i z y)"),
    _c("lsst_visit", _L, "", "meta.id;obs", "", "visit number (null for coadds)"),
    _c("lsst_detector", _I, "", "meta.id;instr.det", "", "detector number (null for coadds)"),
    _c("lsst_skymap", _S, "", "meta.id", "", "sky map name (null for single visits)"),
    _c("lsst_tract", _I, "", "meta.id", "", "tract (null for single visits)"),
    _c("lsst_patch", _I, "", "meta.id", "", "patch (null for single visits)"),
    _c("checksum", _S, "", "meta.code", "", "blake2b checksum of the file"),
)


def _records(repo, element: str, keys: tuple[str, ...]) -> dict[tuple, dict]:
    try:
        table = repo.dimension_records(element)
    except Exception:  # an element without records in this repository
        return {}
    rows = table.to_pylist()
    return {tuple(r[k] for k in keys): r for r in rows}


def _radec(x: float, y: float, z: float) -> tuple[float, float]:
    ra = math.degrees(math.atan2(y, x)) % 360.0
    dec = math.degrees(math.atan2(z, math.hypot(x, y)))
    return ra, dec


def _region_from_record(rec: Mapping[str, Any] | None):
    if not rec or rec.get("region_ra") is None or rec.get("bc_x") is None:
        return None
    ra, dec = _radec(rec["bc_x"], rec["bc_y"], rec["bc_z"])
    return ra, dec, 2.0 * rec["bc_radius"], list(rec["region_ra"]), list(rec["region_dec"])


def _region_from_fits(path: Path):
    """Footprint of the first celestial image HDU (pixel-edge corners), or None."""
    import warnings

    from astropy.io import fits
    from astropy.wcs import WCS

    try:
        with fits.open(path, memmap=True, lazy_load_hdus=True) as hdus, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for hdu in hdus:
                hdr = hdu.header
                if hdr.get("NAXIS") != 2 or "CTYPE1" not in hdr:
                    continue
                wcs = WCS(hdr)
                if not wcs.has_celestial:
                    continue
                nx, ny = hdr["NAXIS1"], hdr["NAXIS2"]
                px = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
                py = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
                ra, dec = wcs.celestial.all_pix2world(px, py, 0)
                break
            else:
                return None
    except (OSError, ValueError):
        return None
    v = np.column_stack([np.cos(np.radians(dec)) * np.cos(np.radians(ra)),
                         np.cos(np.radians(dec)) * np.sin(np.radians(ra)), np.sin(np.radians(dec))])
    centre = v.sum(axis=0)
    centre /= np.linalg.norm(centre)
    radius = float(np.degrees(np.arccos(np.clip(v @ centre, -1, 1))).max())
    cra, cdec = _radec(*centre)
    return cra, cdec, 2.0 * radius, [float(r) for r in ra], [float(d) for d in dec]


def _stcs(ras: Sequence[float], decs: Sequence[float]) -> str:
    return "POLYGON ICRS " + " ".join(f"{r:.7f} {d:.7f}" for r, d in zip(ras, decs, strict=True))


def _nan(value) -> float:
    return float("nan") if value is None else float(value)


def obscore_table(repo, images: Sequence[tuple[ImageSpec, Any]], *, collection: str,
                  access_paths: Mapping[str, str], release_root: Path,
                  facility_name: str | None = None) -> pa.Table:
    """Build the ObsCore index of the exported images.

    Parameters
    ----------
    repo : store.Repo
        Source repository (dimension records give regions and times).
    images : sequence of (ImageSpec, DatasetQueryResult)
        The image datasets of each exported type.
    collection : str
        ``obs_collection`` value.
    access_paths : mapping
        Dataset UUID (str) -> file path relative to the release directory.
    release_root : Path
        Directory the access paths are relative to (for WCS fallbacks).
    facility_name : str, optional
        Telescope name.

    Returns
    -------
    pyarrow.Table
        Columns of :data:`OBSCORE_COLUMNS`, units and descriptions in field metadata.
    """
    vdr = _records(repo, "visit_detector_region", ("instrument", "visit", "detector"))
    visits = _records(repo, "visit", ("instrument", "visit"))
    patches = _records(repo, "patch", ("skymap", "tract", "patch"))
    tracts = _records(repo, "tract", ("skymap", "tract"))
    filters = _records(repo, "physical_filter", ("instrument", "physical_filter"))
    cols: dict[str, list] = {c.name: [] for c in OBSCORE_COLUMNS}
    for spec, result in images:
        rows = result.table.to_pylist()
        for row in rows:
            inst, visit, det = row.get("instrument"), row.get("visit"), row.get("detector")
            skymap, tract, patch = row.get("skymap"), row.get("tract"), row.get("patch")
            vrec = visits.get((inst, visit)) if visit is not None else None
            fine = (vdr.get((inst, visit, det)) if det is not None and visit is not None
                    else patches.get((skymap, tract, patch)) if patch is not None else None)
            access = access_paths[str(row["id"])]
            region = (_region_from_record(fine) or _region_from_fits(release_root / access)
                      or _region_from_record(vrec)
                      or _region_from_record(tracts.get((skymap, tract))))
            band = row.get("band") or (vrec or {}).get("band")
            pfilter = row.get("physical_filter") or (vrec or {}).get("physical_filter")
            if band is None and pfilter is not None:
                band = (filters.get((inst, pfilter)) or {}).get("band")
            exptime = (vrec or {}).get("exposure_time") if visit is not None else None
            mid = (vrec or {}).get("exp_midpt_mjd") if visit is not None else None
            start = (vrec or {}).get("obs_start_mjd") if visit is not None else None
            if start is None and mid is not None and exptime is not None:
                start = mid - exptime / 2 / 86400.0
            t_max = start + exptime / 86400.0 if start is not None and exptime is not None else None
            em = BAND_WAVELENGTHS_M.get(band or "", (None, None))
            data_id = ", ".join(f"{k}={row[k]}" for k in
                                repo.get_dataset_type(row["dataset_type"]).dimensions)
            values = {
                "dataproduct_type": "image", "dataproduct_subtype": spec.obscore_subtype,
                "calib_level": spec.calib_level, "obs_collection": collection,
                "obs_id": f"{row['dataset_type']}: {data_id}",
                "obs_publisher_did": f"ivo://drp/release?{row['id']}",
                "access_url": access, "access_format": "application/fits",
                "access_estsize": math.ceil(row["size"] / 1024), "target_name": None,
                "s_ra": region[0] if region else math.nan,
                "s_dec": region[1] if region else math.nan,
                "s_fov": region[2] if region else math.nan,
                "s_region": _stcs(region[3], region[4]) if region else None,
                "s_resolution": math.nan, "t_min": _nan(start), "t_max": _nan(t_max),
                "t_exptime": _nan(exptime), "t_resolution": _nan(exptime),
                "em_min": _nan(em[0]), "em_max": _nan(em[1]), "em_res_power": math.nan,
                "em_filter_name": pfilter, "o_ucd": "phot.flux.density", "pol_states": None,
                "facility_name": facility_name, "instrument_name": inst, "lsst_band": band,
                "lsst_visit": visit, "lsst_detector": det, "lsst_skymap": skymap,
                "lsst_tract": tract, "lsst_patch": patch, "checksum": row["checksum"],
            }
            for name, value in values.items():
                cols[name].append(value)
    for c in OBSCORE_COLUMNS:  # VOTable has no null string; keep both files alike
        if c.type == _S:
            cols[c.name] = ["" if v is None else v for v in cols[c.name]]
    fields = [pa.field(c.name, c.type, metadata={
        k: v for k, v in (("unit", c.unit), ("description", c.description), ("ucd", c.ucd),
                          ("utype", c.utype)) if v}) for c in OBSCORE_COLUMNS]
    schema = pa.schema(fields)
    return pa.table({c.name: pa.array(cols[c.name], type=c.type) for c in OBSCORE_COLUMNS},
                    schema=schema)


def write_obscore_votable(table: pa.Table, path: str | Path) -> None:
    """Write the ObsCore index as a VOTable ``results`` resource (TAP response shape).

    Parameters
    ----------
    table : pyarrow.Table
        Output of :func:`obscore_table`.
    path : path-like
        File to write (``.xml``).
    """
    from astropy.io.votable.tree import Info, Resource, TableElement, VOTableFile
    from astropy.table import Table

    meta = {c.name: c for c in OBSCORE_COLUMNS}
    columns = {}
    for name in table.column_names:
        values = table.column(name).to_pylist()
        kind = table.schema.field(name).type
        if pa.types.is_string(kind):
            columns[name] = np.array(["" if v is None else v for v in values], dtype=object)
        elif pa.types.is_integer(kind):
            columns[name] = np.ma.masked_array([0 if v is None else v for v in values],
                                               mask=[v is None for v in values],
                                               dtype=np.int64 if kind == pa.int64() else np.int32)
        else:
            columns[name] = np.array([math.nan if v is None else v for v in values], dtype=float)
    astropy_table = Table(columns, names=table.column_names)
    votable = VOTableFile()
    resource = Resource()
    resource.type = "results"
    resource.infos.append(Info(name="QUERY_STATUS", value="OK"))
    votable.resources.append(resource)
    element = TableElement.from_table(votable, astropy_table)
    for f in element.fields:
        c = meta.get(f.name)
        if c is None:
            continue
        if c.unit:
            f.unit = c.unit
        f.ucd = c.ucd or None
        f.utype = c.utype or None
        f.description = c.description
        if f.datatype == "char":
            f.arraysize = "*"
    resource.tables.append(element)
    votable.to_xml(str(path))
