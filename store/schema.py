"""Registry tables declared as data, and the named migrations that create them.

Every table of ``registry.duckdb`` is described here once.  The schema
version is recorded in ``migration``; opening a repository whose version is
older applies the missing migrations, newer refuses to open.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .dimensions import DIMENSION_ORDER, ELEMENTS, KEY_TYPES, Element

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "TABLES", "Table", "element_ddl"]


@dataclass(frozen=True)
class Table:
    """A registry table: name, column DDL fragments and constraints."""

    name: str
    columns: tuple[tuple[str, str], ...]
    constraints: tuple[str, ...] = ()
    doc: str = ""

    def ddl(self) -> str:
        """``CREATE TABLE`` statement."""
        parts = [f"{name} {kind}" for name, kind in self.columns] + list(self.constraints)
        return f"CREATE TABLE IF NOT EXISTS {self.name} ({', '.join(parts)})"


_SPATIAL_COLUMNS = (
    ("region_ra", "DOUBLE[]"), ("region_dec", "DOUBLE[]"),
    ("bc_x", "DOUBLE"), ("bc_y", "DOUBLE"), ("bc_z", "DOUBLE"), ("bc_radius", "DOUBLE"),
    ("center_pixel", "BIGINT"),
)

#: Columns of the ``dataset`` table that hold data-ID values.
DATA_ID_COLUMNS: tuple[tuple[str, str], ...] = tuple((n, KEY_TYPES[n]) for n in DIMENSION_ORDER)

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table("registry_meta", (("key", "VARCHAR PRIMARY KEY"), ("value", "VARCHAR")),
              doc="repository-wide settings (default collection)"),
        Table("migration", (("version", "INTEGER PRIMARY KEY"), ("name", "VARCHAR"),
                            ("applied", "TIMESTAMP")), doc="applied schema migrations"),
        Table("dataset_type", (
            ("name", "VARCHAR PRIMARY KEY"), ("dimensions", "VARCHAR[]"),
            ("storage_class", "VARCHAR"), ("sql_table", "VARCHAR"), ("created", "TIMESTAMP"),
        ), doc="what kinds of datasets exist: dimensions and storage"),
        Table("collection", (
            ("name", "VARCHAR PRIMARY KEY"), ("type", "VARCHAR"), ("doc", "VARCHAR"),
            ("created", "TIMESTAMP"),
        ), doc="RUN and CHAINED collections"),
        Table("collection_chain", (
            ("parent", "VARCHAR"), ("position", "INTEGER"), ("child", "VARCHAR"),
        ), ("PRIMARY KEY (parent, position)",), doc="ordered members of CHAINED collections"),
        Table("dataset", (
            ("id", "UUID PRIMARY KEY"), ("dataset_type", "VARCHAR NOT NULL"),
            ("run", "VARCHAR NOT NULL"), *DATA_ID_COLUMNS, ("data_id_key", "VARCHAR NOT NULL"),
            ("path", "VARCHAR NOT NULL"), ("size", "BIGINT"), ("checksum", "VARCHAR"),
            ("created", "TIMESTAMP"), ("external", "BOOLEAN"),
        ), ("UNIQUE (dataset_type, run, data_id_key)",),
            doc="every stored dataset: type, run, data ID, file, size and checksum"),
        Table("default_dataset", (("id", "UUID PRIMARY KEY"), ("dataset_type", "VARCHAR")),
              doc="datasets found first in the default collection (drives the SQL views)"),
        Table("column_meta", (
            ("sql_table", "VARCHAR"), ("column_name", "VARCHAR"), ("unit", "VARCHAR"),
            ("description", "VARCHAR"),
        ), ("PRIMARY KEY (sql_table, column_name)",), doc="units of SQL table columns"),
        Table("quantum", (
            ("id", "UUID PRIMARY KEY"), ("run", "VARCHAR"), ("task", "VARCHAR"),
            ("config_hash", "VARCHAR"), ("data_id", "VARCHAR"), ("inputs", "UUID[]"),
            ("outputs", "UUID[]"), ("status", "VARCHAR"), ("start_time", "TIMESTAMP"),
            ("end_time", "TIMESTAMP"), ("host", "VARCHAR"), ("versions", "VARCHAR"),
            ("error", "VARCHAR"), ("traceback", "VARCHAR"), ("metadata", "VARCHAR"),
        ), doc="provenance: one row per task execution"),
    )
}


def element_ddl(element: Element) -> str:
    """``CREATE TABLE`` for a dimension element's records."""
    cols: list[tuple[str, str]] = [(d, f"{KEY_TYPES[d]} NOT NULL") for d in element.required]
    if element.key is not None:
        cols.append((element.name, f"{element.key.sql_type} NOT NULL"))
    cols += [(d, KEY_TYPES[d]) for d in element.implied]
    cols += [(c.name, c.sql_type) for c in element.columns]
    if element.spatial:
        cols += list(_SPATIAL_COLUMNS)
    table = Table(element.name, tuple(cols), (f"PRIMARY KEY ({', '.join(element.primary_key)})",))
    return table.ddl()


def _initial(con) -> None:
    for table in TABLES.values():
        con.execute(table.ddl())
    for element in ELEMENTS.values():
        if element.has_table:
            con.execute(element_ddl(element))
    con.execute("CREATE INDEX IF NOT EXISTS dataset_type_run ON dataset (dataset_type, run)")


#: Ordered (version, name, function) migrations; the last version is current.
MIGRATIONS: tuple[tuple[int, str, Callable], ...] = ((1, "initial schema", _initial),)
SCHEMA_VERSION = MIGRATIONS[-1][0]
