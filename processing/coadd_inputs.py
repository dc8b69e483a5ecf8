"""Coadd input selection through SQL: which (visit, detector) images go into a coadd patch.

The selection is a named query (``queries/coadd_inputs.sql`` by default, or any
``.sql`` file a user passes with ``--inputs-query``) run by DuckDB in a private
in-memory database that holds exactly the rows the query may use:

``visit_summary``
    one row per (visit, detector) of the ``visit_summary`` datasets found in the
    task's input collections (every column of the visit-summary catalog except
    the serialised PSF, WCS and aperture-correction components);
``patch``
    the registry's ``patch`` dimension records (``region_ra``/``region_dec``
    vertex lists of the outer patch polygon, bounding cap ``bc_*``, boxes);
``visit``
    the registry's ``visit`` dimension records (boresight, times, airmass...).

``patch_overlap``
    ``(skymap, tract, patch, instrument, visit, detector)`` of every detector
    whose sky polygon (``raCorners``/``decCorners``, all finite) overlaps the
    outer polygon of the patch being selected.  The overlap is computed exactly
    in Python, vectorised over all rows (two convex spherical polygons are
    disjoint iff a great circle through an edge of one separates them; the test
    of :meth:`store.sphgeom.ConvexPolygon.overlaps`), because the same test as
    a DuckDB macro over vertex lists (nested list lambdas) costs 40 microseconds
    to 13 milliseconds per row (measured, DuckDB 2.0) against ~1 microsecond
    here.  :func:`patch_overlap_table` computes the same rows for every patch,
    should the registry want a consolidated copy for ``drp query coadd_inputs``.

The spherical macros of :mod:`store.spherical_sql` are installed, plus
``drp_cpoly_overlaps(ra_a, dec_a, ra_b, dec_b)`` (the same exact polygon test
on vertex lists, either winding) for ad-hoc queries on a handful of rows.

Running the query in its own database, rather than on the registry, makes the
selection see the input collections (not the repository's default
collection), keeps the registry lock free while quanta are built, and lets
tests and notebooks run a selection on plain Arrow tables.

Parameters are bound by DuckDB from the query's ``@param`` declarations; a
query's result must contain the columns of :data:`REQUIRED_COLUMNS`
(:class:`SelectionColumnsError` names the missing ones).  An empty selection
is a result: an empty table and a warning saying which cuts to loosen.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from queries import NamedQuery
from queries import load as load_query
from store.errors import DrpError
from store.spherical_sql import install_macros
from store.sphgeom import ConvexPolygon, radec_to_xyz

__all__ = [
    "OVERLAP_MACROS",
    "REQUIRED_COLUMNS",
    "CoaddInputSelector",
    "SelectionColumnsError",
    "check_selection_columns",
    "patch_overlap_table",
    "visit_summary_rows",
    "with_inputs_query",
]

#: Columns every coadd-input query must return.
REQUIRED_COLUMNS: tuple[str, ...] = ("visit", "detector")

#: Serialised components left out of the SQL copy of the visit summary (bulky, not SQL-usable).
_BLOB_COLUMNS = ("psf", "wcs", "ap_corr_map")

# Orientation sign of polygon A times the side of point b_j of A's edge i; A and B are
# separated when some edge of A has every vertex of B strictly outside.
_TRIPLE_EDGE = ("drp_triple(ara[{i} + 1], adec[{i} + 1], ara[({i} + 1) % len(ara) + 1], "
                "adec[({i} + 1) % len(ara) + 1], {px}, {py})")
#: ``name -> CREATE TEMP MACRO`` statements added to the spherical macros.
OVERLAP_MACROS: dict[str, str] = {
    "drp_cpoly_orientation": (
        "CREATE OR REPLACE TEMP MACRO drp_cpoly_orientation(ara, adec) AS "
        "sign(list_sum(list_transform(range(len(ara)), lambda k: "
        + _TRIPLE_EDGE.format(i="k", px="ara[(k + 2) % len(ara) + 1]",
                              py="adec[(k + 2) % len(ara) + 1]") + ")))"),
    "drp_cpoly_separates": (
        "CREATE OR REPLACE TEMP MACRO drp_cpoly_separates(ara, adec, bra, bdec) AS "
        "list_bool_or(list_transform(range(len(ara)), lambda i: "
        "list_bool_and(list_transform(range(len(bra)), lambda j: "
        "drp_cpoly_orientation(ara, adec) * "
        + _TRIPLE_EDGE.format(i="i", px="bra[j + 1]", py="bdec[j + 1]") + " < -1e-15))))"),
    "drp_cpoly_overlaps": (
        "CREATE OR REPLACE TEMP MACRO drp_cpoly_overlaps(ara, adec, bra, bdec) AS "
        "NOT drp_cpoly_separates(ara, adec, bra, bdec) "
        "AND NOT drp_cpoly_separates(bra, bdec, ara, adec)"),
}


class SelectionColumnsError(DrpError, ValueError):
    """A coadd-input query did not return the columns tasks need."""


def check_selection_columns(table: pa.Table, query_name: str = "query",
                            required: Sequence[str] = REQUIRED_COLUMNS) -> None:
    """Raise :class:`SelectionColumnsError` naming every required column the result lacks."""
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise SelectionColumnsError(
            f"coadd-input query {query_name!r} returned columns {table.column_names} but "
            f"lacks {', '.join(missing)}; it must return {', '.join(required)}")


def with_inputs_query(pipeline, path: str | Path | None = None,
                      params: Mapping[str, Any] | None = None):
    """The pipeline with every step that selects coadd inputs using ``path`` and ``params``.

    What ``drp run --inputs-query FILE.sql`` does: each step whose config has an
    ``inputs_query`` field (make_warp, assemble_coadd...) gets the file, so all
    of them select the same inputs; ``params`` update their ``query_params``.
    """
    import dataclasses

    from .pipeline import Pipeline, PipelineStep

    steps = []
    for step in pipeline.steps:
        config = step.resolved_config()
        names = {f.name for f in dataclasses.fields(config)} if dataclasses.is_dataclass(
            config) else set()
        if "inputs_query" in names:
            changes: dict[str, Any] = {}
            if path is not None:
                changes["inputs_query"] = str(path)
            if params:
                changes["query_params"] = {**dict(config.query_params), **dict(params)}
            config = dataclasses.replace(config, **changes)
        steps.append(PipelineStep(step.task_class, config))
    return Pipeline(pipeline.name, tuple(steps), pipeline.doc)


def visit_summary_rows(repo, collections: Sequence[str] | str | None = None,
                       dataset_type: str = "visit_summary") -> pa.Table:
    """The SQL rows of the visit summaries found first in ``collections`` (blobs left out).

    Parameters
    ----------
    repo : store.Repo
        The repository (read only).
    collections : str or sequence of str, optional
        Collections searched in order (default: the default collection).
    dataset_type : str
        ``visit_summary`` (final) or ``preliminary_visit_summary``.

    Returns
    -------
    pyarrow.Table
        One row per (visit, detector); empty (no columns) when there are none.
    """
    if dataset_type not in {t.name for t in repo.dataset_types()}:
        return pa.table({})
    refs = repo.query_datasets(dataset_type, collections=collections)
    if len(refs) == 0:
        return pa.table({})
    ids = [str(i) for i in refs.table.column("id").to_pylist()]
    table_name = repo.get_dataset_type(dataset_type).sql_table
    cols = repo.registry.query(
        "SELECT column_name FROM information_schema.columns WHERE table_name = $t",
        {"t": table_name}).column("column_name").to_pylist()
    keep = [c for c in cols if c not in _BLOB_COLUMNS and not c.startswith("_")]
    select = ", ".join(f'"{c}"' for c in keep)
    return repo.registry.query(
        f"SELECT {select} FROM {table_name} WHERE _dataset_id IN "
        f"(SELECT unnest($ids::UUID[])) ORDER BY visit, detector", {"ids": ids})


class CoaddInputSelector:
    """Run a coadd-input query for many (skymap, tract, patch, band) on one DuckDB database.

    Parameters
    ----------
    visit_summary : pyarrow.Table
        Visit-summary rows (see :func:`visit_summary_rows`); may be empty.
    patches : pyarrow.Table
        ``patch`` dimension records (``skymap, tract, patch, region_ra,
        region_dec, bc_x, bc_y, bc_z, bc_radius``...).
    visits : pyarrow.Table, optional
        ``visit`` dimension records, available to custom queries.
    query : str, path or NamedQuery, optional
        Query name or ``.sql`` path (default ``coadd_inputs``).
    params : mapping, optional
        Parameter values applied to every selection (e.g. ``{"max_psf_fwhm": 1.5}``).

    Examples
    --------
    >>> sel = CoaddInputSelector(pa.table({}), pa.table({}))
    >>> sel.query.name, sel.candidates()
    ('coadd_inputs', [])
    """

    def __init__(self, visit_summary: pa.Table, patches: pa.Table, *,
                 visits: pa.Table | None = None,
                 query: str | Path | NamedQuery | None = None,
                 params: Mapping[str, Any] | None = None):
        self.query = query if isinstance(query, NamedQuery) else load_query(
            query if query is not None else "coadd_inputs")
        self.params = dict(params or {})
        self.query.bind({**self._dummy_keys(), **self.params})  # unknown names fail early
        self.visit_summary = visit_summary
        self.patches = patches
        self._quads = _Quads.from_summary(visit_summary)
        self._polygons: dict[tuple[str, int, int], ConvexPolygon] = {}
        if patches.num_rows:
            cols = patches.select(["skymap", "tract", "patch", "region_ra",
                                   "region_dec"]).to_pydict()
            for sk, t, p, ra, dec in zip(*cols.values(), strict=True):
                if ra:
                    self._polygons[(str(sk), int(t), int(p))] = ConvexPolygon(ra, dec)
        # Small tables: one thread answers faster (no scheduling; ~40 ms per selection).
        self._con = duckdb.connect(config={"threads": 1})
        install_macros(self._con)
        for statement in OVERLAP_MACROS.values():
            self._con.execute(statement)
        self._register("visit_summary", visit_summary, _EMPTY_SUMMARY)
        self._register("patch", patches, _EMPTY_PATCH)
        self._register("visit", visits if visits is not None else pa.table({}), _EMPTY_VISIT)
        self._con.execute(f"CREATE TEMP TABLE patch_overlap AS {_EMPTY_OVERLAP}")

    def __repr__(self) -> str:
        return (f"CoaddInputSelector(query={self.query.name!r}, "
                f"summary_rows={self.visit_summary.num_rows}, patches={self.patches.num_rows})")

    def _dummy_keys(self) -> dict[str, Any]:
        # The data-ID parameters are given per selection; placeholders let bind() check the rest.
        return {k: v for k, v in (("skymap", ""), ("tract", 0), ("patch", 0), ("band", ""))
                if k in self.query.params}

    def _register(self, name: str, table: pa.Table, empty: str) -> None:
        if table.num_columns == 0:
            self._con.execute(f"CREATE TEMP TABLE {name} AS {empty}")
        else:
            self._con.register(f"_{name}_arrow", table)
            self._con.execute(f"CREATE TEMP VIEW {name} AS SELECT * FROM _{name}_arrow")

    def close(self) -> None:
        """Release the in-memory database."""
        self._con.close()

    def __enter__(self) -> CoaddInputSelector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @classmethod
    def from_repo(cls, repo, collections: Sequence[str] | str | None = None, *,
                  query: str | Path | NamedQuery | None = None,
                  params: Mapping[str, Any] | None = None, where: str | None = None,
                  bind: Mapping[str, Any] | None = None) -> CoaddInputSelector:
        """A selector over the visit summaries in ``collections`` and the registry's patches.

        ``where`` (with ``bind``) restricts the visits when it only names visit
        dimensions (``visit IN (1, 2)``, ``band = 'r'``) and the patches when it
        only names patch dimensions (``tract = 9 AND patch = 3``).
        """
        from .graph import applicable_where

        summary = visit_summary_rows(repo, collections)
        visits = repo.dimension_records("visit")
        patches = repo.dimension_records("patch")
        visit_where = applicable_where(where, ("instrument", "visit"))
        if visit_where:
            visits = repo.dimension_records("visit", visit_where, _used(visit_where, bind))
            if summary.num_rows:
                summary = summary.filter(pc.is_in(summary.column("visit"),
                                                  visits.column("visit")))
        patch_where = applicable_where(where, ("skymap", "tract", "patch"))
        if patch_where:
            patches = repo.dimension_records("patch", patch_where, _used(patch_where, bind))
        return cls(summary, patches, visits=visits, query=query, params=params)

    def overlapping(self, skymap: str, tract: int, patch: int) -> np.ndarray:
        """Indices of the visit-summary rows whose polygon overlaps the patch's outer polygon."""
        polygon = self._polygons.get((str(skymap), int(tract), int(patch)))
        if polygon is None or self._quads is None:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self._quads.overlaps(polygon))

    def select(self, *, skymap: str, tract: int, patch: int, band: str,
               **params: Any) -> pa.Table:
        """The selected inputs of one coadd.

        Parameters
        ----------
        skymap, tract, patch, band
            The coadd's data ID.
        **params
            Query parameters overriding the selector's (e.g. ``best_n=10``).

        Returns
        -------
        pyarrow.Table
            The query's rows (at least ``visit`` and ``detector``); empty with a
            warning when nothing passes.

        Raises
        ------
        SelectionColumnsError
            The query does not return the required columns.
        """
        given = {**self.params, **params}
        data_id = {"skymap": skymap, "tract": int(tract), "patch": int(patch), "band": band}
        values = self.query.bind({**{k: v for k, v in data_id.items() if k in self.query.params},
                                  **given})
        self._fill_overlap(skymap, int(tract), int(patch))
        try:
            table = self._con.sql(self.query.sql, params=values).to_arrow_table()
        except duckdb.Error as err:
            first = str(err).strip().splitlines()[0]
            raise DrpError(f"coadd-input query {self.query.name!r} failed: {first}") from None
        check_selection_columns(table, self.query.name)
        if table.num_rows == 0:
            warnings.warn(
                f"no (visit, detector) passes coadd-input query {self.query.name!r} for "
                f"skymap={skymap} tract={tract} patch={patch} band={band}; loosen its cuts "
                "(max_psf_fwhm, min_n_psf_star...) or check that visits overlap the patch",
                stacklevel=2)
        return table

    def _fill_overlap(self, skymap: str, tract: int, patch: int) -> None:
        self._con.execute("DELETE FROM patch_overlap")
        rows = self.overlapping(skymap, tract, patch)
        if rows.size == 0:
            return
        ids = self.visit_summary.select(["instrument", "visit", "detector"]).take(pa.array(rows))
        n = ids.num_rows
        table = pa.table({"skymap": pa.array([str(skymap)] * n), "tract": pa.array([tract] * n),
                          "patch": pa.array([patch] * n), "instrument": ids.column("instrument"),
                          "visit": ids.column("visit"), "detector": ids.column("detector")})
        self._con.register("_overlap_arrow", table)
        self._con.execute("INSERT INTO patch_overlap SELECT * FROM _overlap_arrow")
        self._con.unregister("_overlap_arrow")

    def candidates(self, skymap: str | None = None) -> list[tuple[str, int, int, str]]:
        """(skymap, tract, patch, band) of the patches some detector of that band overlaps.

        Exact polygon overlap, no quality cuts: :meth:`select` then decides
        which inputs pass.
        """
        if self._quads is None:
            return []
        bands = np.asarray(self.visit_summary.column("band").to_pylist(), dtype=object)
        out = []
        for key in sorted(self._polygons):
            if skymap is not None and key[0] != skymap:
                continue
            hit = self._quads.overlaps(self._polygons[key])
            for band in sorted({b for b in bands[hit] if b is not None}):
                out.append((*key, str(band)))
        return out


class _Quads:
    """Detector polygons of the visit-summary rows as oriented unit vectors and edge normals."""

    def __init__(self, vertices: np.ndarray, finite: np.ndarray):
        self.vertices = vertices  # (R, 4, 3)
        self.finite = finite
        normals = np.cross(vertices, np.roll(vertices, -1, axis=1))
        centroid = vertices.sum(axis=1)
        # Orient every polygon so its edge normals point inwards (either winding accepted).
        sign = np.sign(np.einsum("rik,rk->r", normals, centroid))
        sign[sign == 0] = 1.0
        norm = np.linalg.norm(normals, axis=2, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.normals = normals * sign[:, None, None] / norm
        c = centroid / np.maximum(np.linalg.norm(centroid, axis=1, keepdims=True), 1e-300)
        self.center = c
        self.cos_radius = np.min(np.einsum("rik,rk->ri", vertices, c), axis=1)

    @classmethod
    def from_summary(cls, table: pa.Table) -> _Quads | None:
        if table.num_rows == 0 or "raCorners" not in table.column_names:
            return None
        ra = _corner_array(table.column("raCorners"))
        dec = _corner_array(table.column("decCorners"))
        finite = np.all(np.isfinite(ra) & np.isfinite(dec), axis=1)
        return cls(radec_to_xyz(np.where(finite[:, None], ra, 0.0),
                                np.where(finite[:, None], dec, 0.0)), finite)

    def overlaps(self, polygon: ConvexPolygon) -> np.ndarray:
        """Boolean per row: the row's polygon intersects ``polygon`` (containment included)."""
        cap = polygon.bounding_circle()
        c = radec_to_xyz(cap.ra, cap.dec)
        # Cap prefilter: angle(centre_r, c) <= radius_r + radius_cap.
        ang = np.arccos(np.clip(self.center @ c, -1.0, 1.0))
        reach = np.arccos(np.clip(self.cos_radius, -1.0, 1.0)) + np.radians(cap.radius) + 1e-9
        rows = np.flatnonzero(self.finite & (ang <= reach))
        out = np.zeros(self.finite.shape, dtype=bool)
        if rows.size == 0:
            return out
        a, na = self.vertices[rows], self.normals[rows]
        b, nb = polygon.vertices, polygon.normals
        sep_a = np.any(np.all(np.einsum("rik,jk->rij", na, b) < -1e-15, axis=2), axis=1)
        sep_b = np.any(np.all(np.einsum("mk,rjk->rmj", nb, a) < -1e-15, axis=2), axis=1)
        out[rows] = ~sep_a & ~sep_b
        return out


def _corner_array(column) -> np.ndarray:
    values = column.to_pylist()
    out = np.full((len(values), 4), np.nan)
    for i, v in enumerate(values):
        if v is not None and len(v) == 4:
            out[i] = [np.nan if x is None else x for x in v]
    return out


def patch_overlap_table(visit_summary: pa.Table, patches: pa.Table) -> pa.Table:
    """Every (patch, detector image) pair whose polygons overlap, as ``patch_overlap`` rows.

    Parameters
    ----------
    visit_summary : pyarrow.Table
        Visit-summary rows (``instrument, visit, detector, raCorners, decCorners``).
    patches : pyarrow.Table
        ``patch`` dimension records.

    Returns
    -------
    pyarrow.Table
        Columns ``skymap, tract, patch, instrument, visit, detector``.
    """
    selector = CoaddInputSelector(visit_summary, patches)
    try:
        parts = []
        ids = visit_summary.select(["instrument", "visit", "detector"]) if \
            visit_summary.num_rows else None
        for skymap, tract, patch in sorted(selector._polygons):
            rows = selector.overlapping(skymap, tract, patch)
            if rows.size == 0:
                continue
            sub = ids.take(pa.array(rows))
            n = sub.num_rows
            parts.append(pa.table({
                "skymap": pa.array([skymap] * n), "tract": pa.array([tract] * n, pa.int32()),
                "patch": pa.array([patch] * n, pa.int32()),
                "instrument": sub.column("instrument"), "visit": sub.column("visit"),
                "detector": sub.column("detector")}))
    finally:
        selector.close()
    if not parts:
        return pa.table({
            "skymap": pa.array([], pa.string()), "tract": pa.array([], pa.int32()),
            "patch": pa.array([], pa.int32()), "instrument": pa.array([], pa.string()),
            "visit": pa.array([], pa.int64()), "detector": pa.array([], pa.int64())})
    return pa.concat_tables(parts)


def _used(where: str, bind: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not bind:
        return None
    return {k: v for k, v in bind.items() if f"${k}" in where}


_EMPTY_SUMMARY = (
    "SELECT NULL::VARCHAR AS instrument, NULL::BIGINT AS visit, NULL::BIGINT AS detector, "
    "NULL::VARCHAR AS band, NULL::DOUBLE[4] AS raCorners, NULL::DOUBLE[4] AS decCorners, "
    + ", ".join(f"NULL::DOUBLE AS {c}" for c in (
        "psfSigma", "pixelScale", "zeroPoint", "skyNoise", "meanVar", "skyBg", "effTime",
        "magLim", "expMidptMJD", "psfStarDeltaE1Median", "psfStarDeltaE2Median",
        "psfStarDeltaSizeScatter", "psfStarScaledDeltaSizeScatter", "psfTraceRadiusDelta",
        "psfApFluxDelta", "psfApCorrSigmaScaledDelta", "starEMedian",
        "starUnNormalizedEMedian"))
    + ", NULL::INTEGER AS nPsfStar WHERE FALSE")
_EMPTY_PATCH = ("SELECT NULL::VARCHAR AS skymap, NULL::INTEGER AS tract, NULL::INTEGER AS patch, "
                "NULL::DOUBLE[] AS region_ra, NULL::DOUBLE[] AS region_dec, NULL::DOUBLE AS bc_x, "
                "NULL::DOUBLE AS bc_y, NULL::DOUBLE AS bc_z, NULL::DOUBLE AS bc_radius WHERE FALSE")
_EMPTY_OVERLAP = ("SELECT NULL::VARCHAR AS skymap, NULL::INTEGER AS tract, NULL::INTEGER AS patch, "
                  "NULL::VARCHAR AS instrument, NULL::BIGINT AS visit, NULL::BIGINT AS detector "
                  "WHERE FALSE")
_EMPTY_VISIT = ("SELECT NULL::VARCHAR AS instrument, NULL::BIGINT AS visit, NULL::VARCHAR AS band "
                "WHERE FALSE")
