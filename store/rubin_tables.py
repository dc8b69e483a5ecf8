"""The tables of the default collection under the names Rubin's data model gives them.

A query copied from a Rubin tutorial (``SELECT ... FROM dp1.CcdVisit WHERE
CONTAINS(POINT('ICRS', ra, dec), CIRCLE(...)) = 1``) runs on a drp repository
because ``registry.duckdb`` holds, in the schema ``rubin``, these tables:

================  ====================================================================
``Visit``         view, one row per visit: the ``dp1_Visit`` columns, from the
                  ``visit`` dimension records
``CcdVisit``      table, one row per visit and detector of the default collection's
                  ``visit_summary`` datasets: every ``dp1_CcdVisit`` column, then the
                  summary statistics Rubin keeps elsewhere (:data:`EXTRA_STATISTICS`)
``VisitDetector`` table, the same rows under the ``dp2_VisitDetector`` names (those
                  drp can fill), then the same extra statistics
``Source``        view, the ``dp1_Source`` columns that the ``source`` datasets have
``PsfStar``       view, every column of the ``single_visit_star`` (PSF-star) datasets
``CoaddCells``    view, one row per cell of the cell-based coadds: every column of the
                  ``deep_coadd_cell_index`` datasets
================  ====================================================================

``CcdVisit`` and ``VisitDetector`` are materialised (rebuilt in the commit
that changes the default collection's visit summaries): their ~65 derived
columns would cost a view ~10 ms of binding in every query.  The others
stay views: ``Visit`` must follow dimension records inserted at any time, and
the big tables must not be copied twice.

User SQL (:func:`store.sql.run_query`) runs with ``search_path = rubin, main``,
so ``Visit`` and ``Source`` mean these tables; the registry's own ``visit``
dimension table and ``source`` dataset view stay reachable as ``main.visit``
and ``main.source`` (DuckDB identifiers are case-insensitive, so the two
names cannot live side by side in one schema).  Registry code never sets the
search path, so it is unaffected.

Contract with the producers (``store`` never imports ``processing``)
--------------------------------------------------------------------
The SQL below refers to these SQL copies (``ds_<dataset type>``, one row per
table row, plus ``_dataset_id``) by column name:

* ``ds_visit_summary`` (``processing.visit_summary`` format): ``visit``,
  ``detector``, ``band``, ``physical_filter``, ``width``, ``height``,
  ``expMidptMJD``, ``obsStartMJD``, ``darkTime``, ``boresightRotAngle``,
  ``raCorners`` / ``decCorners`` (4 values in afw corner order (xmin, ymin),
  (xmax, ymin), (xmax, ymax), (xmin, ymax): lower-left, lower-right,
  upper-right, upper-left), every ``ExposureSummaryStats`` field under its
  Rubin name, and optionally ``wcsCornerMaxOffset`` (arcsec);
* ``ds_source``: ``dp1_Source`` column names, fluxes in nJy;
* ``ds_single_visit_star``: anything (shown as it is);
* ``ds_deep_coadd_cell_index`` (``processing.tasks.assemble_cell_coadd``):
  anything (shown as it is); the producer writes ``skymap, tract, patch,
  band, cell_id, cell_x, cell_y, ra, dec, n_inputs, psf_fwhm, depth``...;
* the ``visit`` dimension table's declared columns (:mod:`store.dimensions`).

A column a producer lacks reads as NULL (``Source`` and ``PsfStar`` simply
leave it out); a missing ``ds_`` table means no Rubin table.

Conventions: ``ccdVisitId = visit * 1000 + detector`` (duplicated from
``processing.ids.ccd_visit_id``; keep the two in step); ``seeing = psfSigma *
pixelScale * sqrt(8 ln 2)`` (PSF FWHM, arcsec); timestamps are the TAI MJDs
turned into naive timestamps (no leap seconds applied); NaN ("not measured")
shows as NULL in ``Visit``, ``CcdVisit`` and ``VisitDetector``, as in Rubin's
TAP tables (``Source`` and ``PsfStar`` pass values through untouched, so
scans of the big tables cost nothing extra).  ``CcdVisit`` and
``VisitDetector`` have exactly the schema types (``float`` -> FLOAT...); the
views cast a column only where its stored type differs.

When the default collection shows every dataset of a type, the SQL reads the
copy directly; otherwise it keeps the rows of the datasets in
``default_dataset`` (a semi-join).

The spherical and scisql macros of :mod:`store.spherical_sql` are stored in
the registry too, so read cursors do not install them per query (~50 ms).
"""

from __future__ import annotations

import pyarrow as pa

__all__ = [
    "CCD_VISIT_COLUMNS",
    "EXTRA_STATISTICS",
    "RUBIN_SCHEMA",
    "SOURCE_COLUMNS",
    "VISIT_COLUMNS",
    "VISIT_DETECTOR_COLUMNS",
    "refresh_rubin_views",
    "use_rubin_tables",
]

#: Schema holding the Rubin-named tables and views.
RUBIN_SCHEMA = "rubin"

#: Rubin schema datatype -> DuckDB type.
_SQL_TYPES = {"long": "BIGINT", "int": "INTEGER", "float": "FLOAT", "double": "DOUBLE",
              "char": "VARCHAR", "timestamp": "TIMESTAMP", "boolean": "BOOLEAN"}

# ``name:datatype:unit`` in schema order, copied from reference/schemas/*.csv.
_VISIT_SPEC = """
    visit:long: physical_filter:char: band:char: ra:double:deg dec:double:deg
    skyRotation:double:deg azimuth:double:deg altitude:double:deg zenithDistance:double:deg
    airmass:double: expTime:double:s expMidpt:timestamp: expMidptMJD:double:d
    obsStart:timestamp: obsStartMJD:double:d
"""
_CCD_VISIT_SPEC = """
    physical_filter:char: band:char: ra:double:deg dec:double:deg pixelScale:float:arcsec/pixel
    zenithDistance:float:deg expTime:double:s zeroPoint:float:mag psfSigma:float:pixel
    skyBg:float:adu skyNoise:float:adu astromOffsetMean:double:arcsec
    astromOffsetStd:double:arcsec nPsfStar:int: psfStarDeltaE1Median:double:
    psfStarDeltaE2Median:double: psfStarDeltaE1Scatter:double: psfStarDeltaE2Scatter:double:
    psfStarDeltaSizeMedian:double:pixel psfStarDeltaSizeScatter:double:pixel
    psfStarScaledDeltaSizeScatter:double: psfTraceRadiusDelta:double:pixel
    psfApFluxDelta:double: psfApCorrSigmaScaledDelta:double: maxDistToNearestPsf:double:pixel
    ccdVisitId:long: visitId:long: detector:long: seeing:double:arcsec skyRotation:double:deg
    expMidpt:timestamp: expMidptMJD:double:d obsStart:timestamp: obsStartMJD:double:d
    darkTime:double:s xSize:long:pixel ySize:long:pixel llcra:double:deg llcdec:double:deg
    ulcra:double:deg ulcdec:double:deg urcra:double:deg urcdec:double:deg lrcra:double:deg
    lrcdec:double:deg effTime:double:s effTimePsfSigmaScale:double: effTimeSkyBgScale:double:
    effTimeZeroPointScale:double: magLim:double:mag
"""
# dp2_VisitDetector without the four wcs*PointingResidual columns of Rubin's
# pointing refit, which drp does not run.
_VISIT_DETECTOR_SPEC = """
    physical_filter:char: band:char: ra:double:deg dec:double:deg pixelScale:float:arcsec/pixel
    zenithDistance:float:deg expTime:double:s zeroPoint:float:mag psfSigma:float:pixel
    skyBg:float:adu skyNoise:float:adu astromOffsetMean:double:arcsec
    astromOffsetStd:double:arcsec nPsfStar:int: psfStarDeltaE1Median:double:
    psfStarDeltaE2Median:double: psfStarDeltaE1Scatter:double: psfStarDeltaE2Scatter:double:
    psfStarDeltaSizeMedian:double:pixel psfStarDeltaSizeScatter:double:pixel
    psfStarScaledDeltaSizeScatter:double: psfTraceRadiusDelta:double:pixel
    psfApFluxDelta:double: psfApCorrSigmaScaledDelta:double: maxDistToNearestPsf:double:pixel
    starEMedian:double: starUnNormalizedEMedian:double:pixel**2 visitId:long: detector:long:
    seeing:double:arcsec skyRotation:double:deg expMidpt:timestamp: expMidptMJD:double:d
    obsStart:timestamp: obsStartMJD:double:d darkTime:double:s xSize:long:pixel
    ySize:long:pixel llcra:double:deg llcdec:double:deg ulcra:double:deg ulcdec:double:deg
    urcra:double:deg urcdec:double:deg lrcra:double:deg lrcdec:double:deg effTime:double:s
    effTimePsfSigmaScale:double: effTimeSkyBgScale:double: effTimeZeroPointScale:double:
    magLim:double:mag wcsCornerMaxOffset:double:arcsec
"""
# Summary statistics of reference/algorithms.md 1.5 that neither schema has.
_EXTRA_SPEC = """
    psfArea:double:pixel psfIxx:double:pixel**2 psfIyy:double:pixel**2
    psfIxy:double:pixel**2 meanVar:double:adu**2 starEMedian:double:
    starUnNormalizedEMedian:double:pixel**2 starComa1Median:double: starComa2Median:double:
    starTrefoil1Median:double: starTrefoil2Median:double: starKurtosisMedian:double:
    starE41Median:double: starE42Median:double: wcsCornerMaxOffset:double:arcsec
"""
_SOURCE_SPEC = """
    coord_ra:double:deg coord_dec:double:deg parentSourceId:long: x:double:pixel y:double:pixel
    xErr:float:pixel yErr:float:pixel ra:double:deg dec:double:deg raErr:float:deg
    decErr:float:deg ra_dec_Cov:float:deg**2 calibFlux:double:nJy calibFluxErr:double:nJy
    ap03Flux:double:nJy ap03FluxErr:double:nJy ap03Flux_flag:boolean: ap06Flux:double:nJy
    ap06FluxErr:double:nJy ap06Flux_flag:boolean: ap09Flux:double:nJy ap09FluxErr:double:nJy
    ap09Flux_flag:boolean: ap12Flux:double:nJy ap12FluxErr:double:nJy ap12Flux_flag:boolean:
    ap17Flux:double:nJy ap17FluxErr:double:nJy ap17Flux_flag:boolean: ap25Flux:double:nJy
    ap25FluxErr:double:nJy ap25Flux_flag:boolean: ap35Flux:double:nJy ap35FluxErr:double:nJy
    ap35Flux_flag:boolean: ap50Flux:double:nJy ap50FluxErr:double:nJy ap50Flux_flag:boolean:
    ap70Flux:double:nJy ap70FluxErr:double:nJy ap70Flux_flag:boolean: sky:double:nJy
    skyErr:double:nJy psfFlux:double:nJy psfFluxErr:double:nJy ixx:double:pixel**2
    iyy:double:pixel**2 ixy:double:pixel**2 ixxPSF:double:pixel**2 iyyPSF:double:pixel**2
    ixyPSF:double:pixel**2 ixxDebiasedPSF:double:pixel**2 iyyDebiasedPSF:double:pixel**2
    ixyDebiasedPSF:double:pixel**2 gaussianFlux:double:nJy gaussianFluxErr:double:nJy
    extendedness:double: sizeExtendedness:double: blendedness_abs:double:
    blendedness_flag:boolean: blendedness_flag_noCentroid:boolean:
    blendedness_flag_noShape:boolean: apFlux_12_0_flag:boolean:
    apFlux_12_0_flag_apertureTruncated:boolean: apFlux_12_0_flag_sincCoeffsTruncated:boolean:
    apFlux_12_0_instFlux:double:count apFlux_12_0_instFluxErr:double:count
    apFlux_17_0_flag:boolean: apFlux_17_0_instFlux:double:count
    apFlux_17_0_instFluxErr:double:count apFlux_35_0_flag:boolean:
    apFlux_35_0_instFlux:double:count apFlux_35_0_instFluxErr:double:count
    apFlux_50_0_flag:boolean: apFlux_50_0_instFlux:double:count
    apFlux_50_0_instFluxErr:double:count normCompTophatFlux_flag:boolean:
    normCompTophatFlux_instFlux:double:count normCompTophatFlux_instFluxErr:double:count
    extendedness_flag:boolean: sizeExtendedness_flag:boolean: footprintArea_value:int:pixel
    invalidPsfFlag:boolean: jacobian_flag:boolean: jacobian_value:double:
    localBackground_instFlux:double:count localBackground_instFluxErr:double:count
    localBackground_flag:boolean: localBackground_flag_noGoodPixels:boolean:
    localBackground_flag_noPsf:boolean: pixelFlags_bad:boolean: pixelFlags_cr:boolean:
    pixelFlags_crCenter:boolean: pixelFlags_edge:boolean: pixelFlags_interpolated:boolean:
    pixelFlags_interpolatedCenter:boolean: pixelFlags_nodata:boolean:
    pixelFlags_offimage:boolean: pixelFlags_saturated:boolean:
    pixelFlags_saturatedCenter:boolean: pixelFlags_suspect:boolean:
    pixelFlags_suspectCenter:boolean: psfFlux_apCorr:double: psfFlux_apCorrErr:double:
    psfFlux_area:float:pixel psfFlux_flag:boolean: psfFlux_flag_apCorr:boolean:
    psfFlux_flag_edge:boolean: psfFlux_flag_noGoodPixels:boolean: gaussianFlux_flag:boolean:
    centroid_flag:boolean: centroid_flag_almostNoSecondDerivative:boolean:
    centroid_flag_badError:boolean: centroid_flag_edge:boolean:
    centroid_flag_noSecondDerivative:boolean: centroid_flag_notAtMaximum:boolean:
    centroid_flag_resetToPeak:boolean: variance_flag:boolean:
    variance_flag_emptyFootprint:boolean: variance_value:double: calib_astrometry_used:boolean:
    calib_photometry_reserved:boolean: calib_photometry_used:boolean:
    calib_psf_candidate:boolean: calib_psf_reserved:boolean: calib_psf_used:boolean:
    deblend_deblendedAsPsf:boolean: deblend_hasStrayFlux:boolean: deblend_masked:boolean:
    deblend_nChild:int: deblend_parentTooBig:boolean: deblend_patchedTemplate:boolean:
    deblend_rampedTemplate:boolean: deblend_skipped:boolean: deblend_tooManyPeaks:boolean:
    hsmPsfMoments_flag:boolean: hsmPsfMoments_flag_no_pixels:boolean:
    hsmPsfMoments_flag_not_contained:boolean: hsmPsfMoments_flag_parent_source:boolean:
    iDebiasedPSF_flag:boolean: iDebiasedPSF_flag_no_pixels:boolean:
    iDebiasedPSF_flag_not_contained:boolean: iDebiasedPSF_flag_parent_source:boolean:
    iDebiasedPSF_flag_galsim:boolean: iDebiasedPSF_flag_edge:boolean:
    hsmShapeRegauss_flag:boolean: hsmShapeRegauss_flag_galsim:boolean:
    hsmShapeRegauss_flag_no_pixels:boolean: hsmShapeRegauss_flag_not_contained:boolean:
    hsmShapeRegauss_flag_parent_source:boolean: sky_source:boolean: visit:long: detector:int:
    band:char: physical_filter:char: sourceId:long:
"""


def _spec(text: str) -> tuple[tuple[str, str, str], ...]:
    return tuple(tuple(token.split(":", 2)) for token in text.split())  # type: ignore[misc]


_VISIT = _spec(_VISIT_SPEC)
_CCD_VISIT = _spec(_CCD_VISIT_SPEC)
_VISIT_DETECTOR = _spec(_VISIT_DETECTOR_SPEC)
_SOURCE = _spec(_SOURCE_SPEC)

#: Column names of ``Visit`` (all of ``dp1_Visit``).
VISIT_COLUMNS: tuple[str, ...] = tuple(c[0] for c in _VISIT)
#: Summary statistics appended to ``CcdVisit`` / ``VisitDetector`` when the schema lacks them.
EXTRA_STATISTICS: tuple[str, ...] = tuple(c[0] for c in _spec(_EXTRA_SPEC))
_CCD_VISIT += tuple(c for c in _spec(_EXTRA_SPEC) if c[0] not in {n for n, _, _ in _CCD_VISIT})
_VISIT_DETECTOR += tuple(c for c in _spec(_EXTRA_SPEC)
                         if c[0] not in {n for n, _, _ in _VISIT_DETECTOR})
#: Column names of ``CcdVisit``: ``dp1_CcdVisit`` in order, then the extra statistics.
CCD_VISIT_COLUMNS: tuple[str, ...] = tuple(c[0] for c in _CCD_VISIT)
#: Column names of ``VisitDetector``: ``dp2_VisitDetector`` (fillable) then the extras.
VISIT_DETECTOR_COLUMNS: tuple[str, ...] = tuple(c[0] for c in _VISIT_DETECTOR)
#: Every ``dp1_Source`` column (the view keeps those the ``source`` datasets have).
SOURCE_COLUMNS: tuple[str, ...] = tuple(c[0] for c in _SOURCE)

_FWHM_PER_SIGMA = 2.3548200450309493  # sqrt(8 ln 2)


def _mjd_timestamp(expr: str) -> str:
    """TAI MJD -> naive timestamp (NULL for NULL/NaN/inf)."""
    return (f"CASE WHEN isfinite({expr}) THEN TIMESTAMP '1858-11-17 00:00:00' + "
            f"to_microseconds(CAST(round({expr} * 86400000000.0) AS BIGINT)) END")


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# Visit: column -> (expression over the ``visit`` dimension table v, source columns).
_VISIT_EXPR: dict[str, tuple[str, tuple[str, ...]]] = {
    "skyRotation": ("v.sky_rotation", ("sky_rotation",)),
    "zenithDistance": ("v.zenith_distance", ("zenith_distance",)),
    "expTime": ("v.exposure_time", ("exposure_time",)),
    "expMidpt": (_mjd_timestamp("v.exp_midpt_mjd"), ("exp_midpt_mjd",)),
    "expMidptMJD": ("v.exp_midpt_mjd", ("exp_midpt_mjd",)),
    "obsStart": (_mjd_timestamp("v.obs_start_mjd"), ("obs_start_mjd",)),
    "obsStartMJD": ("v.obs_start_mjd", ("obs_start_mjd",)),
}

# CcdVisit / VisitDetector: column -> (expression over ds_visit_summary s, source columns).
# Anything not listed is the summary column of the same name.
_CORNER = {"ll": 1, "lr": 2, "ur": 3, "ul": 4}  # afw corner order, 1-based SQL lists
_SUMMARY_EXPR: dict[str, tuple[str, tuple[str, ...]]] = {
    "ccdVisitId": ("s.visit * 1000 + s.detector", ("visit", "detector")),
    "visitId": ("s.visit", ("visit",)),
    "seeing": (f's."psfSigma" * s."pixelScale" * {_FWHM_PER_SIGMA!r}', ("psfSigma", "pixelScale")),
    "skyRotation": ('s."boresightRotAngle"', ("boresightRotAngle",)),
    "expMidpt": (_mjd_timestamp('s."expMidptMJD"'), ("expMidptMJD",)),
    "obsStart": (_mjd_timestamp('s."obsStartMJD"'), ("obsStartMJD",)),
    "xSize": ("s.width", ("width",)),
    "ySize": ("s.height", ("height",)),
    **{f"{c}c{axis}": (f's."{axis}Corners"[{i}]', (f"{axis}Corners",))
       for c, i in _CORNER.items() for axis in ("ra", "dec")},
}


def _select(spec, exprs, stored: dict[str, str], alias: str, *, exact_types: bool) -> str:
    """SELECT list: every spec column, NaN -> NULL, NULL where the producer lacks a source.

    ``exact_types`` casts every column to its schema type (for the materialised
    tables, where the cost is paid once); otherwise a column is cast only when
    its stored type differs (views are re-bound by every query, and each cast
    adds to that).
    """
    parts = []
    for name, kind, _ in spec:
        sql_type = _SQL_TYPES[kind]
        expr, sources = exprs.get(name, (f"{alias}.{_q(name)}", (name,)))
        if not all(s.lower() in stored for s in sources):
            parts.append(f"CAST(NULL AS {sql_type}) AS {_q(name)}")
            continue
        plain = name not in exprs
        if exact_types or not plain or stored[name.lower()] != sql_type:
            expr = f"CAST({expr} AS {sql_type})"
        if kind in ("float", "double"):
            expr = f"CASE WHEN isnan({expr}) THEN NULL ELSE {expr} END"
        parts.append(f"{expr} AS {_q(name)}")
    return ", ".join(parts)


def _columns(con, table: str) -> dict[str, str]:
    """Lower-cased column name -> DuckDB type of a ``main`` table (empty if absent)."""
    rows = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'main' AND table_name = ?", [table]).fetchall()
    return {name.lower(): kind for name, kind in rows}


def _default_rows(con, dataset_type: str, alias: str) -> str:
    """WHERE clause keeping the default collection's rows ('' when all rows are visible)."""
    n_all, n_default = con.execute(
        "SELECT (SELECT count(*) FROM main.dataset WHERE dataset_type = ?), "
        "(SELECT count(*) FROM main.default_dataset WHERE dataset_type = ?)",
        [dataset_type, dataset_type]).fetchall()[0]
    if n_all == n_default:
        return ""
    literal = dataset_type.replace("'", "''")
    return (f" WHERE {alias}._dataset_id IN (SELECT id FROM main.default_dataset "
            f"WHERE dataset_type = '{literal}')")


def _kind(con, name: str) -> str | None:
    """'VIEW', 'BASE TABLE' or None for an object of the rubin schema."""
    rows = con.execute("SELECT table_type FROM information_schema.tables WHERE table_schema = ? "
                       "AND table_name = ?", [RUBIN_SCHEMA, name]).fetchall()
    return rows[0][0] if rows else None


def _drop(con, name: str, keep: str | None = None) -> None:
    """Drop a rubin object unless it is of kind ``keep`` (DuckDB's DROP is kind-specific)."""
    kind = _kind(con, name)
    if kind is not None and kind != keep:
        what = "VIEW" if kind == "VIEW" else "TABLE"
        con.execute(f"DROP {what} {RUBIN_SCHEMA}.{_q(name)}")


def _view(con, name: str, body: str | None) -> None:
    _drop(con, name, keep="VIEW" if body is not None else None)
    if body is not None:
        con.execute(f"CREATE OR REPLACE VIEW {RUBIN_SCHEMA}.{_q(name)} AS {body}")


def _units(con, view: str, spec) -> None:
    """Record the units of a table's columns in ``column_meta`` (once per column set)."""
    rows = [(view, name, unit) for name, _, unit in spec if unit]
    have = con.execute("SELECT count(*) FROM main.column_meta WHERE sql_table = ?",
                       [view]).fetchall()[0][0]
    if have == len(rows) or not rows:
        return
    con.execute("DELETE FROM main.column_meta WHERE sql_table = ?", [view])
    table = pa.table({"sql_table": [r[0] for r in rows], "column_name": [r[1] for r in rows],
                      "unit": [r[2] for r in rows]})
    con.register("_rubin_units", table)
    con.execute("INSERT INTO main.column_meta SELECT sql_table, column_name, unit, NULL "
                "FROM _rubin_units")
    con.unregister("_rubin_units")


#: Bump when the CcdVisit / VisitDetector definitions change (forces a rebuild).
_TABLES_VERSION = 1
_FINGERPRINT_KEY = "rubin_ccd_visit_fingerprint"


def _refresh_ccd_visit(con) -> None:
    """Materialise CcdVisit and VisitDetector when the default collection's summaries changed.

    They are small (one row per detector-visit) but their ~65 derived columns
    would cost a view ~10 ms of binding in every query; as tables they answer
    in about a millisecond.  A fingerprint of the visible ``visit_summary``
    datasets (in ``registry_meta``) skips the rebuild when nothing changed.
    """
    stored = _columns(con, "ds_visit_summary")
    if not stored:
        for name in ("CcdVisit", "VisitDetector"):
            _view(con, name, None)
        return
    n, xor = con.execute(
        "SELECT count(*), coalesce(bit_xor(hash(id)), 0) FROM main.default_dataset "
        "WHERE dataset_type = 'visit_summary'").fetchall()[0]
    rows = con.execute("SELECT count(*) FROM main.ds_visit_summary").fetchall()[0][0]
    fingerprint = f"{_TABLES_VERSION}:{n}:{xor}:{rows}:{len(stored)}"
    old = con.execute("SELECT value FROM main.registry_meta WHERE key = ?",
                      [_FINGERPRINT_KEY]).fetchall()
    tables = all(_kind(con, n) == "BASE TABLE" for n in ("CcdVisit", "VisitDetector"))
    if old and old[0][0] == fingerprint and tables:
        return
    where = _default_rows(con, "visit_summary", "s")
    for name, spec in (("CcdVisit", _CCD_VISIT), ("VisitDetector", _VISIT_DETECTOR)):
        target = f"{RUBIN_SCHEMA}.{_q(name)}"
        _drop(con, name, keep="BASE TABLE")
        con.execute(f"CREATE OR REPLACE TABLE {target} AS SELECT "
                    f"{_select(spec, _SUMMARY_EXPR, stored, 's', exact_types=True)} "
                    f'FROM main.ds_visit_summary AS s{where} ORDER BY s.visit, s.detector')
        _units(con, name, spec)
    con.execute("DELETE FROM main.registry_meta WHERE key = ?", [_FINGERPRINT_KEY])
    con.execute("INSERT INTO main.registry_meta VALUES (?, ?)", [_FINGERPRINT_KEY, fingerprint])


def _store_macros(con) -> None:
    """Persistent spherical/scisql macros, (re)created when missing or of another version."""
    from .spherical_sql import MACROS_VERSION, install_macros

    # Probe through the catalog: a failing call would abort the write transaction.
    found = con.execute("SELECT count(*) FROM duckdb_functions() WHERE function_name = "
                        "'drp_macros_version' AND schema_name = 'main' AND NOT internal"
                        ).fetchall()[0][0]
    if found and con.execute("SELECT main.drp_macros_version()").fetchall()[0][0] == MACROS_VERSION:
        return
    install_macros(con, temporary=False, force=True)


#: Dataset types whose SQL copies feed the Rubin-named tables (their changes rebuild them).
INPUT_DATASET_TYPES = frozenset({"visit_summary", "source", "single_visit_star",
                                 "deep_coadd_cell_index"})


def refresh_rubin_views(con) -> None:
    """(Re)create the ``rubin`` tables and views; run inside the registry's write transaction.

    Called by :meth:`store.registry.Registry._refresh_views` whenever the
    default collection's datasets change.  Also stores the spherical and
    scisql macros (:mod:`store.spherical_sql`) in the registry, so user
    queries need not install them on each read cursor (~50 ms).
    """
    _store_macros(con)
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {RUBIN_SCHEMA}")
    visit_cols = _columns(con, "visit")
    _view(con, "Visit", f"SELECT {_select(_VISIT, _VISIT_EXPR, visit_cols, 'v', exact_types=False)}"
                        " FROM main.visit AS v")
    _units(con, "Visit", _VISIT)
    _refresh_ccd_visit(con)

    source_cols = _columns(con, "ds_source")
    present = [c for c in _SOURCE if c[0].lower() in source_cols]
    body = None
    if present:
        parts = []
        for name, kind, _ in present:
            stored, wanted = source_cols[name.lower()], _SQL_TYPES[kind]
            parts.append(f"s.{_q(name)}" if stored == wanted
                         else f"CAST(s.{_q(name)} AS {wanted}) AS {_q(name)}")
        body = (f"SELECT {', '.join(parts)} FROM main.ds_source AS s"
                f"{_default_rows(con, 'source', 's')}")
    _view(con, "Source", body)
    if present:
        _units(con, "Source", present)

    star_cols = _columns(con, "ds_single_visit_star")
    _view(con, "PsfStar", (
        "SELECT * EXCLUDE (_dataset_id, _run) FROM main.ds_single_visit_star AS s"
        f"{_default_rows(con, 'single_visit_star', 's')}") if star_cols else None)

    cell_cols = _columns(con, "ds_deep_coadd_cell_index")
    _view(con, "CoaddCells", (
        "SELECT * EXCLUDE (_dataset_id, _run) FROM main.ds_deep_coadd_cell_index AS s"
        f"{_default_rows(con, 'deep_coadd_cell_index', 's')}") if cell_cols else None)


def use_rubin_tables(con) -> None:
    """Make the Rubin names resolve first on a (read) connection used for user SQL."""
    import duckdb

    try:
        con.execute(f"SET search_path = '{RUBIN_SCHEMA},main'")
    except duckdb.Error:  # a registry that has no views yet
        pass
