"""Registry result fetching: the direct Arrow path and the public fallbacks agree."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from store.registry import _arrow


class _PublicOnly:
    """A connection without the direct-to-Arrow entry point (another DuckDB build)."""

    def __init__(self, con):
        self._con = con

    def __getattr__(self, name):
        if name == "_submit":
            raise AttributeError(name)
        return getattr(self._con, name)


@pytest.fixture
def con():
    con = duckdb.connect()
    con.execute("CREATE TABLE t (id UUID, name VARCHAR, x DOUBLE, l DOUBLE[])")
    con.execute("INSERT INTO t VALUES (uuid(), 'a', 1.5, [1.0, 2.0]), (uuid(), 'b', NULL, NULL)")
    yield con
    con.close()


@pytest.mark.parametrize("bulk", [False, True])
def test_direct_and_public_paths_return_the_same_table(con, bulk):
    sql, params = "SELECT * FROM t WHERE name <> $skip ORDER BY name", {"skip": "zzz"}
    direct = _arrow(con, sql, params, bulk=bulk)
    public = _arrow(_PublicOnly(con), sql, params, bulk=bulk)
    assert isinstance(direct, pa.Table) and direct.num_rows == 2
    assert direct.schema.equals(public.schema) and direct.equals(public)


def test_errors_still_surface(con):
    with pytest.raises(duckdb.Error):
        _arrow(con, "SELECT no_such_column FROM t")
    with pytest.raises(duckdb.Error):
        _arrow(_PublicOnly(con), "SELECT no_such_column FROM t")
