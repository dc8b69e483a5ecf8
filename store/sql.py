"""The SQL surface users see: read-only queries over the registry and dataset tables.

User SQL runs on a read-only connection and must be a single query
(``SELECT``, ``WITH``, ``DESCRIBE``, ``SHOW``, ``EXPLAIN``, ``SUMMARIZE``);
anything else (``INSERT``, ``COPY ... TO``, ``ATTACH``, ``SET``...) is refused
with :class:`~store.errors.ReadOnlyError` before it reaches DuckDB.  ADQL is
translated first when detected (or forced).
"""

from __future__ import annotations

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


def run_query(con: duckdb.DuckDBPyConnection, query: str, bind: Mapping[str, Any] | None,
              *, adql: bool | None = None) -> pa.Table:
    """Translate (ADQL) if needed, check read-only, execute, return Arrow."""
    sql = query
    try:
        from . import adql as _adql
    except ImportError:  # pragma: no cover - ADQL layer optional during development
        _adql = None
    if _adql is not None and (adql or (adql is None and _adql.looks_like_adql(query))):
        sql = _adql.translate(query)
        _adql_install = getattr(_adql, "prepare_connection", None)
        if _adql_install is not None:
            _adql_install(con)
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
