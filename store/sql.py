"""The SQL surface users see: read-only queries over the registry and dataset tables.

User SQL runs on a read-only connection and must be a single query
(``SELECT``, ``WITH``, ``DESCRIBE``, ``SHOW``, ``EXPLAIN``, ``SUMMARIZE``);
anything else (``INSERT``, ``COPY ... TO``, ``ATTACH``, ``SET``...) is refused
with :class:`~store.errors.ReadOnlyError` before it reaches DuckDB.  ADQL is
translated first when detected (or forced).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import duckdb
import pyarrow as pa

from .errors import InvalidQueryError, ReadOnlyError
from .registry import used_params

__all__ = ["check_read_only", "run_query"]

_ALLOWED = {"SELECT", "EXPLAIN"}


def check_read_only(query: str) -> None:
    """Refuse anything but one read-only statement (one-line errors)."""
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as err:
        raise InvalidQueryError(f"malformed SQL: {_first_line(err)}") from None
    if not statements:
        raise InvalidQueryError("empty query")
    if len(statements) > 1:
        raise InvalidQueryError(f"one statement per query, got {len(statements)}")
    kind = statements[0].type.name
    if kind not in _ALLOWED:
        raise ReadOnlyError(
            f"{kind} statements are refused: SQL on a drp repository is read-only")


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


#: Words only ADQL (or Rubin's Qserv) queries contain; a query with none of them is plain
#: DuckDB SQL and skips the parser-based detection (and the sqlglot import).
_ADQL_MARKERS = re.compile(
    r"\b(top|point|circle|polygon|box|distance|contains|intersects|coord1|coord2|area|region|"
    r"centroid|coordsys)\s*\(|\btop\s+\d|\b(scisql_|ivo_)|\b(dp1|dp2|dp02_dc2_catalogs|"
    r"dp03_catalogs_10yr|dp03_catalogs_1yr|tap_schema)\s*\.", re.IGNORECASE)


def _may_be_adql(query: str) -> bool:
    """Cheap lexical pre-check before the parser-based :func:`store.adql.looks_like_adql`."""
    return _ADQL_MARKERS.search(query) is not None


def run_query(con: duckdb.DuckDBPyConnection, query: str, bind: Mapping[str, Any] | None,
              *, adql: bool | None = None) -> pa.Table:
    """Translate (ADQL) if needed, check read-only, execute, return Arrow."""
    sql = query
    if adql or (adql is None and _may_be_adql(query)):
        from . import adql as _adql  # sqlglot costs ~0.2 s to import: only when needed

        if adql or _adql.looks_like_adql(query):
            sql = _adql.translate(query)
            _adql.prepare_connection(con)
    check_read_only(sql)
    from .rubin_tables import use_rubin_tables

    use_rubin_tables(con)  # `Visit`, `Source`... are the Rubin-named views
    try:
        return con.sql(sql, params=used_params(sql, bind) or None).to_arrow_table()
    except duckdb.Error as err:
        text = _first_line(err)
        if "read-only" in text.lower() or "read only" in text.lower():
            raise ReadOnlyError(f"refused: {text}") from None
        raise InvalidQueryError(text) from None
