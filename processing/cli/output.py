"""Printing Arrow tables as an aligned text table, CSV or JSON."""

from __future__ import annotations

import json
import math
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["FORMATS", "print_table"]

FORMATS = ("table", "csv", "json")


def _cell(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return f"{value:.6g}" if abs(value) < 1e6 else f"{value:.10g}"
    if isinstance(value, list):
        return "[" + ", ".join(_cell(v) for v in value[:4]) + (", ...]" if len(value) > 4 else "]")
    return str(value)


def print_table(table: pa.Table, fmt: str = "table", *, limit: int | None = None,
                stream=None) -> None:
    """Write ``table`` to ``stream`` (stdout) in the chosen format."""
    stream = stream or sys.stdout
    if limit is not None:
        table = table.slice(0, limit)
    if fmt == "csv":
        import pyarrow as pa
        import pyarrow.csv as pacsv

        buf = pa.BufferOutputStream()
        pacsv.write_csv(table, buf)
        stream.write(buf.getvalue().to_pybytes().decode())
        return
    if fmt == "json":
        for row in table.to_pylist():
            stream.write(json.dumps(row, default=str) + "\n")
        return
    names = table.column_names
    rows = [[_cell(v) for v in row.values()] for row in table.to_pylist()]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]
    stream.write("  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)).rstrip() + "\n")
    stream.write("  ".join("-" * w for w in widths) + "\n")
    for r in rows:
        stream.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")
    stream.write(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''})\n")
