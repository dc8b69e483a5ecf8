"""ADQL (as written against the Rubin TAP service) translated to DuckDB SQL.

Queries copied from Rubin tutorials run unchanged on the local tables:
``SELECT TOP n``, ``CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', ra0, dec0, r)) = 1``,
``POLYGON``/``BOX``, ``DISTANCE``, ``INTERSECTS``, ``AREA``, ``COORD1/COORD2``,
the Qserv ``scisql_*`` functions, schema prefixes (``dp1.``, ``dp02_dc2_catalogs.``,
``dp2.`` ...) and ADQL's math functions where DuckDB differs (``LOG`` is the
natural logarithm in ADQL).  The text is parsed by sqlglot (a DuckDB dialect
that also accepts ``TOP``), the tree is rewritten, and DuckDB SQL is generated;
the output is self-contained (the spherical macros are expanded inline), so it
runs on any connection.

Public API: :func:`looks_like_adql`, :func:`translate`, :func:`prepare_sql`,
:func:`prepare_connection`.

Differences from a TAP service worth knowing: ``/`` between integers is
DuckDB's true division; identifiers are case-insensitive even when quoted;
geometry values cannot be selected as columns (use ``COORD1``/``COORD2``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import sqlglot
from sqlglot import exp
from sqlglot.dialects.duckdb import DuckDB
from sqlglot.errors import ErrorLevel, ParseError, SqlglotError, TokenError, UnsupportedError
from sqlglot.tokens import TokenType

from store import adql_geometry as geo
from store.errors import InvalidQueryError, UnsupportedConstructError
from store.spherical_sql import MACROS, expand, install_macros

__all__ = ["RUBIN_SCHEMAS", "looks_like_adql", "prepare_connection", "prepare_sql", "translate"]

#: TAP schemas of Rubin data releases; ``schema.Table`` maps to the local ``Table``.
RUBIN_SCHEMAS = frozenset({"dp1", "dp2", "dp02_dc2_catalogs", "dp03_catalogs_10yr", "dp03_catalogs_1yr"})

# Function names that only ADQL (or Qserv) uses: their presence marks a query as ADQL.
_ADQL_ONLY_FUNCTIONS = frozenset(
    {
        "point",
        "circle",
        "polygon",
        "box",
        "coord1",
        "coord2",
        "coordsys",
        "centroid",
        "region",
        "distance",
    }
)
_PREDICATES = frozenset(
    {"contains", "intersects", "scisql_s2ptincircle", "scisql_s2ptinbox", "scisql_s2ptincpoly"}
)
_UNSUPPORTED_ADQL = {"region": "REGION", "in_unit": "IN_UNIT"}
_SCISQL = {name.lower(): name for name in MACROS if name.startswith("scisql_")}


def _adql_log(args: list[exp.Expression]) -> exp.Expression:
    # ADQL's LOG(x) is the natural logarithm (DuckDB's log(x) is base 10).
    if len(args) == 1:
        return exp.Ln(this=args[0])
    return exp.Log(this=args[0], expression=args[1])


class _ADQL(DuckDB):
    """DuckDB's dialect plus ``SELECT TOP n`` and ADQL's ``LOG``."""

    class Tokenizer(DuckDB.Tokenizer):
        KEYWORDS: ClassVar = {**DuckDB.Tokenizer.KEYWORDS, "TOP": TokenType.TOP}

    class Parser(DuckDB.Parser):
        FUNCTIONS: ClassVar = {**DuckDB.Parser.FUNCTIONS, "LOG": _adql_log}


def looks_like_adql(sql: str) -> bool:
    """Guess whether ``sql`` is ADQL rather than DuckDB SQL.

    True when the query uses ``SELECT TOP``, an ADQL geometry function
    (``POINT``, ``CIRCLE``, ``POLYGON``, ``BOX``, ``DISTANCE``, ``COORD1``...),
    a ``scisql_``/``ivo_`` function, or a table in a Rubin TAP schema
    (``dp1.Source``).  Tokens inside strings and comments do not count.  Text
    that does not even tokenize is left to DuckDB (False).
    """
    try:
        tokens = sqlglot.tokenize(sql, read=_ADQL)
    except (TokenError, SqlglotError):
        return False
    for i, token in enumerate(tokens):
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        previous = tokens[i - 1] if i else None
        if (
            token.token_type == TokenType.TOP
            and previous is not None
            and previous.token_type in (TokenType.SELECT, TokenType.DISTINCT, TokenType.ALL)
        ):
            return True
        if following is None or following.token_type != TokenType.L_PAREN:
            continue
        if previous is not None and previous.token_type == TokenType.DOT:
            continue
        name = token.text.lower()
        if name in _ADQL_ONLY_FUNCTIONS or name.startswith(("scisql_", "ivo_")):
            return True
    try:
        trees = sqlglot.parse(_split_explain(sql)[1], read=_ADQL)
    except SqlglotError:
        return False
    return any(
        table.db.lower() in RUBIN_SCHEMAS
        for tree in trees
        if tree is not None
        for table in tree.find_all(exp.Table)
    )


def prepare_connection(connection) -> None:
    """Install the spherical and scisql macros (``store.spherical_sql``) on a DuckDB connection.

    Translated ADQL does not need them (it is self-contained); they let plain
    DuckDB SQL call ``drp_pt_in_circle(...)``, ``scisql_nanojanskyToAbMag(...)``...
    Idempotent; temporary macros, so read-only connections are fine.
    """
    install_macros(connection)


def prepare_sql(
    sql: str, *, adql: bool | None = None, table_map: Mapping[str, str] | None = None
) -> str:
    """Return the SQL to run on DuckDB for a user query.

    Parameters
    ----------
    sql : str
        The query as the user wrote it.
    adql : bool or None
        True: translate as ADQL; False: pass through untouched; None (default):
        translate only if :func:`looks_like_adql` says so.
    table_map : mapping, optional
        Passed to :func:`translate`.

    Returns
    -------
    str
        ``sql`` itself (the very same string) when no translation applies.
    """
    if adql is None:
        adql = looks_like_adql(sql)
    return translate(sql, table_map=table_map) if adql else sql


def translate(sql: str, table_map: Mapping[str, str] | None = None) -> str:
    """Translate one ADQL query into DuckDB SQL.

    Parameters
    ----------
    sql : str
        One ADQL ``SELECT`` (``TOP``, geometry, scisql functions...).
    table_map : mapping of str to str, optional
        TAP table name -> local table name, case-insensitive keys, either
        qualified (``"dp2.visitdetector"``) or bare (``"visitdetector"``).  Tables
        in :data:`RUBIN_SCHEMAS` that are not listed keep their bare name
        (``dp1.Source`` -> ``Source``).  A renamed table keeps its TAP name as
        alias, so ``VisitDetector.ra`` still resolves.

    Returns
    -------
    str
        DuckDB SQL; needs no macros on the connection.

    Raises
    ------
    InvalidQueryError
        Malformed query (with the parser's reason), several statements, a
        negative radius, a bad polygon.
    UnsupportedConstructError
        A construct drp does not translate, named in the message.
    """
    prefix, sql = _split_explain(sql)
    try:
        trees = [t for t in sqlglot.parse(sql, read=_ADQL) if t is not None]
    except ParseError as error:
        raise InvalidQueryError(f"malformed ADQL: {_parse_reason(error)}") from None
    except TokenError as error:
        raise InvalidQueryError(f"malformed ADQL: {str(error).splitlines()[0]}") from None
    if len(trees) != 1:
        raise InvalidQueryError(f"ADQL takes exactly one SELECT statement, got {len(trees)}")
    tree = trees[0]
    query = tree.this if isinstance(tree, exp.Describe) else tree
    if not isinstance(query, exp.Query):
        raise UnsupportedConstructError(
            f"{tree.key.upper()} statement (ADQL queries are read-only SELECTs)"
        )
    translated = _Translator(table_map or {}).run(tree)
    try:
        return prefix + translated.sql(dialect="duckdb", unsupported_level=ErrorLevel.RAISE)
    except UnsupportedError as error:
        raise UnsupportedConstructError(str(error).splitlines()[0]) from None


def _split_explain(sql: str) -> tuple[str, str]:
    """Split a leading ``EXPLAIN [ANALYZE]`` (which sqlglot cannot parse around ADQL) off the query."""
    prefix = ""
    for word in ("EXPLAIN", "ANALYZE"):
        try:
            tokens = sqlglot.tokenize(sql, read=_ADQL)
        except SqlglotError:
            break
        if not tokens or tokens[0].text.upper() != word:
            break
        prefix += word + " "
        sql = sql[tokens[0].end + 1 :]
    return prefix, sql


def _parse_reason(error: ParseError) -> str:
    if error.errors:
        first = error.errors[0]
        return f"{first['description']} (line {first['line']}, column {first['col']})"
    return str(error).splitlines()[0]


class _Translator:
    """Rewrites one parsed ADQL tree in place of a copy (see :func:`translate`)."""

    def __init__(self, table_map: Mapping[str, str]) -> None:
        self.table_map = {k.lower(): v for k, v in table_map.items()}
        self.filter_context: set[int] = set()

    def run(self, tree: exp.Expression) -> exp.Expression:
        return tree.transform(self._visit)

    def scalar(self, node: exp.Expression) -> exp.Expression:
        """Translate a sub-expression (shape coordinates, function arguments)."""
        return node.transform(self._visit)

    # -- the visitor: pre-order; a returned new node is not visited again ------------------

    def _visit(self, node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Where | exp.Having):
            self.filter_context.add(id(node.this))
        elif isinstance(node, exp.Join) and node.args.get("on") is not None:
            self.filter_context.add(id(node.args["on"]))
        elif isinstance(node, exp.And | exp.Or | exp.Paren) and id(node) in self.filter_context:
            # NULL and FALSE filter alike under AND/OR, so the context carries over.
            self.filter_context.update(id(child) for child in node.iter_expressions())
        if isinstance(node, exp.Table):
            return self._table(node)
        if isinstance(node, exp.Column):
            return self._column(node)
        if isinstance(node, exp.EQ | exp.NEQ):
            rewritten = self._flag_comparison(node)
            if rewritten is not None:
                return rewritten
        if isinstance(node, exp.LT | exp.LTE | exp.GT | exp.GTE):
            rewritten = self._distance_comparison(node)
            if rewritten is not None:
                return rewritten
        name = _function_name(node)
        if name is None:
            return node
        if name in _PREDICATES:
            in_filter = id(node) in self.filter_context
            scisql = name.startswith("scisql_")
            predicate = self._predicate(node, name, null_is_false=scisql and not in_filter)
            return predicate if in_filter else _as_int(predicate)
        return self._function(node, name)

    # -- tables and columns ---------------------------------------------------------------

    def _table(self, table: exp.Table) -> exp.Expression:
        if not isinstance(table.this, exp.Identifier):
            return table
        name, db = table.name, table.db.lower()
        if db == "tap_schema":
            raise UnsupportedConstructError(
                f"TAP_SCHEMA.{name} (list tables and columns with information_schema or DESCRIBE)"
            )
        target = self.table_map.get(f"{db}.{name.lower()}") if db else None
        if target is None and (db in RUBIN_SCHEMAS or not db):
            target = self.table_map.get(name.lower(), name if db else None)
        if target is None:
            return table
        new = exp.to_table(target, dialect="duckdb")
        alias = table.args.get("alias")
        if alias is None and new.name.lower() != name.lower():
            alias = exp.TableAlias(this=exp.to_identifier(name))
        if alias is not None:
            new.set("alias", alias)
        return new

    def _column(self, column: exp.Column) -> exp.Column:
        db = column.args.get("db")
        if db is not None and (
            db.name.lower() in RUBIN_SCHEMAS or f"{db.name}.{column.table}".lower() in self.table_map
        ):
            column = column.copy()
            column.set("db", None)
            column.set("catalog", None)
        return column

    # -- geometry predicates -----------------------------------------------------------------

    def _shape(self, node: exp.Expression) -> geo.Shape:
        return geo.parse_shape(node, self.scalar)

    def _predicate(self, node: exp.Expression, name: str, *, null_is_false: bool) -> exp.Expression:
        """Boolean SQL for CONTAINS / INTERSECTS / scisql_s2PtIn* calls."""
        if name in ("contains", "intersects"):
            args = (
                [node.this, node.expression]
                if isinstance(node, exp.Contains)
                else list(node.expressions)
            )
            if len(args) != 2:
                raise InvalidQueryError(f"{name.upper()} takes 2 arguments, got {len(args)}")
            a, b = (self._shape(arg) for arg in args)
            return geo.contains_sql(a, b) if name == "contains" else geo.intersects_sql(a, b)
        args = [self.scalar(a) for a in node.expressions]
        if name == "scisql_s2ptincpoly":
            if len(args) < 8 or len(args) % 2:
                raise InvalidQueryError(
                    f"scisql_s2PtInCPoly takes a position and >= 3 vertices, got {len(args)} arguments"
                )
            vertices = [geo.Point(args[i], args[i + 1]) for i in range(2, len(args), 2)]
            result = geo.contains_sql(geo.Point(args[0], args[1]), geo.polygon_from_points(vertices))
        else:
            expected = 5 if name == "scisql_s2ptincircle" else 6
            if len(args) != expected:
                raise InvalidQueryError(f"{node.name} takes {expected} arguments, got {len(args)}")
            if name == "scisql_s2ptincircle":
                radius = geo.const_value(args[4])
                if radius is not None and radius < 0:
                    raise InvalidQueryError(
                        f"scisql_s2PtInCircle radius must be >= 0 degrees, got {radius!r}"
                    )
                result = geo.contains_sql(
                    geo.Point(args[0], args[1]), geo.Circle(geo.Point(args[2], args[3]), args[4])
                )
            else:
                result = expand("drp_pt_in_lonlat_box", *args)
        # scisql answers 0 (not NULL) when an input is NULL.
        return exp.Coalesce(this=result, expressions=[exp.false()]) if null_is_false else result

    def _flag_comparison(self, node: exp.EQ | exp.NEQ) -> exp.Expression | None:
        """``CONTAINS(...) = 1`` (and ``= 0``, ``<> 0``...) as a plain boolean."""
        for side, other in ((node.this, node.expression), (node.expression, node.this)):
            name = _function_name(side)
            value = geo.const_value(other)
            if name in _PREDICATES and value in (0.0, 1.0):
                positive = (value == 1.0) == isinstance(node, exp.EQ)
                scisql = name.startswith("scisql_")
                in_filter = id(node) in self.filter_context
                predicate = self._predicate(
                    side, name, null_is_false=scisql and not (positive and in_filter)
                )
                return predicate if positive else exp.Not(this=predicate)
        return None

    def _distance_comparison(self, node: exp.Expression) -> exp.Expression | None:
        """``DISTANCE(p, q) < r``: add the band prefilter the optimiser can push down."""
        left, right = node.this, node.expression
        if _function_name(left) in ("distance", "scisql_angsep") and isinstance(node, exp.LT | exp.LTE):
            call, limit = left, right
        elif _function_name(right) in ("distance", "scisql_angsep") and isinstance(
            node, exp.GT | exp.GTE
        ):
            call, limit = right, left
        else:
            return None
        p, q = self._distance_points(call)
        limit = self.scalar(limit)
        comparison = (
            type(node)(this=geo.distance_sql(p, q), expression=limit)
            if call is left
            else type(node)(this=limit, expression=geo.distance_sql(p, q))
        )
        return exp.Paren(this=exp.And(this=geo.distance_bound_sql(p, q, limit), expression=comparison))

    def _distance_points(self, node: exp.Expression) -> tuple[geo.Point, geo.Point]:
        args = list(node.expressions)
        if len(args) == 4:
            return geo.Point(*map(self.scalar, args[:2])), geo.Point(*map(self.scalar, args[2:]))
        if len(args) == 2 and _function_name(node) == "distance":
            p, q = (self._shape(a) for a in args)
            if isinstance(p, geo.Point) and isinstance(q, geo.Point):
                return p, q
        raise InvalidQueryError(f"{node.name.upper()} takes two POINTs or four coordinates (degrees)")

    # -- other functions -------------------------------------------------------------------

    def _function(self, node: exp.Expression, name: str) -> exp.Expression:
        if name in ("distance", "scisql_angsep"):
            return geo.distance_sql(*self._distance_points(node))
        if name in ("coord1", "coord2"):
            shape = self._shape(node.expressions[0]) if len(node.expressions) == 1 else None
            if not isinstance(shape, geo.Point):
                raise InvalidQueryError(f"{name.upper()} takes one POINT")
            return shape.ra if name == "coord1" else shape.dec
        if name == "coordsys":
            return exp.Literal.string("ICRS")
        if name == "area":
            if len(node.expressions) != 1:
                raise InvalidQueryError("AREA takes one geometry")
            return geo.area_sql(self._shape(node.expressions[0]))
        if name in geo.SHAPE_FUNCTIONS:
            raise UnsupportedConstructError(
                f"{name.upper()} as a value (geometries can only appear inside CONTAINS, INTERSECTS, "
                "DISTANCE, AREA or COORD1/COORD2)"
            )
        if name in _UNSUPPORTED_ADQL:
            raise UnsupportedConstructError(f"ADQL function {_UNSUPPORTED_ADQL[name]}")
        if name in _SCISQL:
            return expand(_SCISQL[name], *[self.scalar(a) for a in node.expressions])
        if name.startswith("scisql_"):
            raise UnsupportedConstructError(f"scisql function {node.name}")
        if name.startswith("ivo_"):
            return self._ivo(node, name)
        return node

    def _ivo(self, node: exp.Expression, name: str) -> exp.Expression:
        args = [self.scalar(a) for a in node.expressions]
        if name == "ivo_nocasematch" and len(args) == 2:
            return _as_int(exp.EQ(this=exp.Lower(this=args[0]), expression=exp.Lower(this=args[1])))
        if name == "ivo_interval_overlaps" and len(args) == 4:
            lo1, hi1, lo2, hi2 = args
            return _as_int(
                exp.And(
                    this=exp.LTE(this=lo1, expression=hi2), expression=exp.LTE(this=lo2, expression=hi1)
                )
            )
        if name == "ivo_string_agg" and len(args) == 2:
            return exp.GroupConcat(this=args[0], separator=args[1])
        raise UnsupportedConstructError(f"ADQL function {node.name}")


def _function_name(node: exp.Expression) -> str | None:
    if isinstance(node, exp.Anonymous):
        return node.name.lower()
    if isinstance(node, exp.Contains):
        return "contains"
    return None


def _as_int(predicate: exp.Expression) -> exp.Expression:
    return exp.Cast(this=predicate, to=exp.DataType.build("INTEGER"))
