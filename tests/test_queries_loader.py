"""The named-query loader: headers, parameters bound by DuckDB, type checks."""

from __future__ import annotations

import duckdb
import pytest

import queries
from queries import QueryParameterError

QUERY = """-- Visits of one band with exposure time above a cut.
-- Second line of the docstring.
-- @param band str            band to select
-- @param min_exptime float = 10.0 shortest exposure [s]
-- @param note str = null     unused placeholder
SELECT visit FROM v WHERE band = $band AND exposure_time >= $min_exptime ORDER BY visit
"""


@pytest.fixture
def query_file(tmp_path):
    path = tmp_path / "long_visits.sql"
    path.write_text(QUERY)
    return path


def test_header_and_params_are_parsed(query_file):
    q = queries.load(query_file)
    assert q.name == "long_visits"
    assert q.summary == "Visits of one band with exposure time above a cut."
    assert list(q.params) == ["band", "min_exptime", "note"]
    assert q.params["min_exptime"].default == 10.0 and not q.params["min_exptime"].required
    assert q.params["band"].required


def test_values_are_bound_by_duckdb_not_formatted(query_file):
    q = queries.load(query_file)
    con = duckdb.connect()
    con.execute("CREATE TABLE v AS SELECT * FROM (VALUES (1, 'r', 30.0), (2, 'r', 5.0), "
                "(3, 'g', 30.0)) t(visit, band, exposure_time)")
    assert con.execute(q.sql, q.bind(band="r")).fetchall() == [(1,)]
    assert con.execute(q.sql, q.bind(band="r", min_exptime="1")).fetchall() == [(1,), (2,)]
    # an injection attempt stays a harmless string value
    assert con.execute(q.sql, q.bind(band="r' OR '1'='1")).fetchall() == []


def test_parameter_errors(query_file):
    q = queries.load(query_file)
    with pytest.raises(QueryParameterError, match=r"needs parameter \$band"):
        q.bind()
    with pytest.raises(QueryParameterError, match=r"\$min_exptime must be float"):
        q.bind(band="r", min_exptime="ten")
    with pytest.raises(QueryParameterError, match="has no parameter"):
        q.bind(band="r", colour="red")


def test_unknown_query_name_lists_known_ones():
    with pytest.raises(FileNotFoundError, match="no query named 'nope'"):
        queries.load("nope")
