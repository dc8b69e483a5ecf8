"""Benchmark: ADQL spatial searches over 10 million rows, against a bare DuckDB scan.

Run: ``python tests/benchmarks/bench_cone_search.py [n_rows] [threads]``.
Prints the best of 5 wall-clock times (ms) and the row counts for a plain
one-column range scan, the translated ADQL cone / polygon / BOX / DISTANCE
searches, and the exact haversine test without the band prefilter.
"""

from __future__ import annotations

import sys
import time

import duckdb

from store.adql import translate

_FROM = "SELECT count(*) FROM dp1.Source"
_IN = "WHERE CONTAINS(POINT('ICRS', coord_ra, coord_dec),"
QUERIES = {
    "bare scan (dec range)": "SELECT count(*) FROM Source WHERE coord_dec BETWEEN -37.2 AND -36.8",
    "cone r=0.2 (ADQL)": f"{_FROM} {_IN} CIRCLE('ICRS', 62.0, -37.0, 0.2)) = 1",
    "cone r=1 at RA=0 (ADQL)": f"{_FROM} {_IN} CIRCLE('ICRS', 0.1, 2.0, 1.0)) = 1",
    "cone r=1 on the pole (ADQL)": f"{_FROM} {_IN} CIRCLE('ICRS', 0, 90, 1.0)) = 1",
    "polygon 4 vertices (ADQL)": f"{_FROM} {_IN} "
    "POLYGON('ICRS', 61.8, -37.2, 62.2, -37.2, 62.2, -36.8, 61.8, -36.8)) = 1",
    "box 0.4x0.4 (ADQL)": f"{_FROM} {_IN} BOX('ICRS', 62.0, -37.0, 0.4, 0.4)) = 1",
    "distance < 0.2 (ADQL)": "SELECT count(*) FROM dp1.Source WHERE DISTANCE(POINT('ICRS', coord_ra, "
    "coord_dec), POINT('ICRS', 62.0, -37.0)) < 0.2",
    "haversine only, no bands": "SELECT count(*) FROM Source WHERE "
    "power(sin(radians(coord_dec + 37.0) / 2), 2) + cos(radians(coord_dec)) * cos(radians(-37.0))"
    " * power(sin(radians(coord_ra - 62.0) / 2), 2) <= power(sin(radians(0.2) / 2), 2)",
}


def main(n_rows: int = 10_000_000, threads: int = 2) -> None:
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.execute(
        "CREATE TABLE Source AS SELECT i AS sourceId, random() * 360 AS coord_ra, "
        f"degrees(asin(2 * random() - 1)) AS coord_dec FROM range({n_rows}) t(i)"
    )
    print(f"{n_rows:,} uniform random rows, {threads} threads; best of 5")
    for label, query in QUERIES.items():
        sql = translate(query) if "ADQL" in label else query
        best, count = float("inf"), None
        for _ in range(5):
            start = time.perf_counter()
            count = con.sql(sql).fetchall()[0][0]
            best = min(best, time.perf_counter() - start)
        print(f"{label:32s} {best * 1e3:8.1f} ms   {count:>9,} rows")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
