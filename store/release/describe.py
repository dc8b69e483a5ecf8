"""Column units and descriptions of exported tables.

A column's unit and description are taken, first found, from: the field metadata of
the rows (Parquet ``unit``/``description``), the registry's ``column_meta`` table,
the dataset files the table derives from, the dimension vocabulary
(:data:`store.dimensions.ELEMENTS`), and a few well-known names and suffixes of the
Rubin data model (``...Err``, ``..._flag``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pyarrow as pa

from ..dimensions import ELEMENTS

__all__ = ["arrow_type_name", "astropy_metadata", "column_entries", "known_column_meta"]

_WELL_KNOWN: dict[str, tuple[str, str]] = {
    "coord_ra": ("deg", "ICRS right ascension of the source centroid"),
    "coord_dec": ("deg", "ICRS declination of the source centroid"),
    "ra": ("deg", "ICRS right ascension"),
    "dec": ("deg", "ICRS declination"),
    "sourceId": ("", "unique source identifier"),
    "parentSourceId": ("", "sourceId of the deblend parent (0 if none)"),
    "ccdVisitId": ("", "unique detector-visit identifier"),
    "x": ("pixel", "centroid column in detector pixels"),
    "y": ("pixel", "centroid row in detector pixels"),
    "_healpix_29": ("", "nested HEALPix pixel at order 29 (HATS spatial index)"),
}


def _dimension_meta() -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for element in ELEMENTS.values():
        if element.key is not None:
            out.setdefault(element.name, (element.key.unit, element.key.doc))
        for col in element.columns:
            out.setdefault(col.name, (col.unit, col.doc))
    return out


def arrow_type_name(kind: pa.DataType) -> str:
    """A short, stable type name (``int64``, ``double``, ``string``, ``list<double>``)."""
    return "string" if pa.types.is_large_string(kind) else str(kind)


def known_column_meta(repo, tables: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Units and descriptions the registry records for the named SQL tables.

    Parameters
    ----------
    repo : store.Repo
        Repository.
    tables : iterable of str
        Dataset type (or table) names, compared case-insensitively.

    Returns
    -------
    dict
        Column name -> (unit, description); empty strings where unknown.
    """
    names = sorted({t.lower() for t in tables})
    if not names:
        return {}
    table = repo.sql("SELECT column_name, unit, description FROM column_meta "
                     "WHERE lower(sql_table) IN (SELECT unnest($names))", {"names": names},
                     adql=False)
    out = {}
    for name, unit, doc in zip(*(table.column(c).to_pylist() for c in
                                 ("column_name", "unit", "description")), strict=True):
        out.setdefault(name, (unit or "", doc or ""))
    return out


def _from_field(f: pa.Field) -> tuple[str, str]:
    meta = f.metadata or {}
    return meta.get(b"unit", b"").decode(), meta.get(b"description", b"").decode()


def column_entries(schema: pa.Schema, *sources: Mapping[str, tuple[str, str]]
                   ) -> list[dict[str, str]]:
    """Name, type, unit and description of every column of ``schema``.

    Parameters
    ----------
    schema : pyarrow.Schema
        The exported table's schema (field metadata is the first source).
    *sources : mapping
        Further column -> (unit, description) maps, in priority order.

    Returns
    -------
    list of dict
        ``{"name", "type", "unit", "description"}`` per column, in schema order.
    """
    dims = _dimension_meta()
    out = []
    for f in schema:
        unit, doc = _from_field(f)
        for source in (*sources, dims, _WELL_KNOWN):
            u, d = source.get(f.name, ("", ""))
            unit = unit or u
            doc = doc or d
        if not doc:
            doc = _pattern_description(f.name)
        out.append({"name": f.name, "type": arrow_type_name(f.type), "unit": unit,
                    "description": doc})
    return out


def _pattern_description(name: str) -> str:
    if name.endswith("Err"):
        return f"1-sigma uncertainty of {name[:-3]}"
    if name.endswith("_flag"):
        return f"failure flag of {name[:-5]}"
    if name.endswith("Flux"):
        return f"{name[:-4]} flux"
    if name.startswith("calib_") or name.endswith("_used"):
        return f"calibration flag {name}"
    return ""


def astropy_metadata(table: pa.Table, entries: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """Schema metadata that lets ``astropy.table.Table.read`` restore units and strings.

    astropy's Parquet reader takes units and descriptions from a ``table_meta_yaml``
    header and string widths from ``table::len::<column>`` keys (without them it
    scans every string, and fails on nulls).

    Parameters
    ----------
    table : pyarrow.Table
        The rows to be written.
    entries : iterable of mapping
        :func:`column_entries` output for the same columns.

    Returns
    -------
    dict
        Metadata keys and values to merge into the Parquet schema metadata.
    """
    import numpy as np
    import pyarrow.compute as pc
    from astropy.table import Table
    from astropy.table import meta as table_meta

    empty = Table()
    out: dict[str, str] = {}
    for f in table.schema:
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
            longest = pc.max(pc.utf8_length(table.column(f.name))).as_py() if len(table) else 0
            out[f"table::len::{f.name}"] = str(max(1, longest or 0))
            dtype = np.dtype("U1")
        else:
            try:
                dtype = np.dtype(f.type.to_pandas_dtype())
            except (NotImplementedError, TypeError):
                dtype = np.dtype(object)
        empty[f.name] = np.zeros(0, dtype=dtype)
    for entry in entries:
        col = empty.columns.get(entry["name"])
        if col is None:
            continue
        if entry.get("unit"):
            try:
                col.unit = entry["unit"]
            except ValueError:  # a unit astropy cannot parse stays in the schema file only
                pass
        if entry.get("description"):
            col.description = entry["description"]
    out["table_meta_yaml"] = "\n".join(table_meta.get_yaml_from_table(empty))
    return out
