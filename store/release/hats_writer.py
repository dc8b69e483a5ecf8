"""Write an Arrow table as a HATS catalog (HEALPix-partitioned Parquet).

The layout is the one ``hats-import`` produces and ``hats``/``lsdb`` read::

    <catalog>/
      hats.properties, properties     catalog metadata (type, columns, row count)
      partition_info.csv              the partition pixels (Norder, Npix)
      dataset/_common_metadata        schema
      dataset/_metadata               row-group footers of every partition
      dataset/Norder=K/Dir=D/Npix=P.parquet

Every row gets the ``_healpix_29`` spatial index (nested HEALPix pixel at order 29,
the first column); partitions are the coarsest pixels (between the lowest and the
highest order) holding at most ``max_rows`` rows, rows sorted by ``_healpix_29``.

``hats-import`` reaches the same result through a Dask map/split/reduce that writes
every row three times; here the table is already in memory, so one stable sort of the
spatial index and one slice per partition suffice (measured on 10 million rows: see
``tests/benchmarks/bench_export.py``).  The partition search is vectorised over the
occupied pixels only (``hats.pixel_math.partition_stats.generate_alignment`` walks a
dense histogram: 20 s at order 10).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .config import ReleaseError

__all__ = ["HEALPIX_COLUMN", "HatsResult", "hats_partitions", "parquet_options",
           "write_hats_catalog"]

#: Name of the spatial index column (as in hats).
HEALPIX_COLUMN = "_healpix_29"
_INDEX_ORDER = 29


@dataclass(frozen=True)
class HatsResult:
    """What :func:`write_hats_catalog` wrote.

    Attributes
    ----------
    path : Path
        Catalog directory.
    n_rows : int
        Rows in the catalog.
    n_dropped : int
        Input rows left out because their position was not finite.
    n_partitions : int
        Number of partition files.
    max_order : int
        Finest partition order.
    max_partition_rows : int
        Rows in the largest partition.
    """

    path: Path
    n_rows: int
    n_dropped: int
    n_partitions: int
    max_order: int
    max_partition_rows: int


def _require_hats():
    try:
        import hats  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the installation
        raise ReleaseError("HATS export needs the 'hats' package: pip install 'drp[export]'"
                           ) from None


def hats_partitions(sorted_index: np.ndarray, *, max_rows: int, lowest_order: int = 0,
                    highest_order: int = 10) -> list[tuple[int, int, int, int]]:
    """Choose the HATS partitions of sorted order-29 HEALPix indices.

    A pixel of order ``k`` becomes a partition when it holds at most ``max_rows``
    rows and no coarser pixel containing it was chosen; pixels of the highest order
    are partitions whatever their count.  Empty pixels are not partitions.

    Parameters
    ----------
    sorted_index : numpy.ndarray of int64, shape (n,)
        Nested HEALPix pixel of every row at order 29, sorted ascending.
    max_rows : int
        Largest partition size aimed at.
    lowest_order, highest_order : int
        Range of partition orders.

    Returns
    -------
    list of (order, pixel, start, stop)
        Partitions in ascending index order; rows ``start:stop`` of the sorted
        index fall in each.

    Examples
    --------
    >>> idx = np.sort(np.array([0, 1, 2, 4**29 * 3], dtype=np.int64))
    >>> hats_partitions(idx, max_rows=10)
    [(0, 0, 0, 3), (0, 3, 3, 4)]
    """
    n = len(sorted_index)
    if n == 0:
        return []
    shift_top = 2 * (_INDEX_ORDER - highest_order)
    top = sorted_index >> shift_top
    # Occupied pixels of the highest order and their row ranges (the index is sorted).
    starts = np.flatnonzero(np.r_[True, top[1:] != top[:-1]])
    pixels = top[starts]
    counts = np.diff(np.r_[starts, n])
    assigned = np.zeros(len(pixels), dtype=bool)
    chosen: list[tuple[int, int, int, int]] = []
    for order in range(lowest_order, highest_order + 1):
        parent = pixels >> (2 * (highest_order - order))
        first = np.flatnonzero(np.r_[True, parent[1:] != parent[:-1]])
        totals = np.add.reduceat(counts, first)
        group = np.repeat(np.arange(len(first)), np.diff(np.r_[first, len(pixels)]))
        free = ~np.logical_or.reduceat(assigned, first)
        take = free & ((totals <= max_rows) | (order == highest_order))
        for g in np.flatnonzero(take):
            lo = first[g]
            hi = first[g + 1] if g + 1 < len(first) else len(pixels)
            chosen.append((order, int(parent[lo]), int(starts[lo]),
                           int(starts[hi]) if hi < len(pixels) else n))
        assigned |= take[group]
        if assigned.all():
            break
    chosen.sort(key=lambda p: p[2])
    return chosen


def parquet_options(schema: pa.Schema, compression: str) -> dict:
    """``pyarrow.parquet.write_table`` options of every release table.

    Dictionary encoding is kept for integer, boolean and string columns only:
    measured on 3 million DP1-like sources (42 columns), turning it off for the
    float columns cuts the zstd write from 3.4 to 2.1 s of CPU and the file from
    586 to 563 MB (pyarrow tries a dictionary for every column, then falls back).
    """
    return {"compression": None if compression == "none" else compression,
            "use_dictionary": [f.name for f in schema if not pa.types.is_floating(f.type)]}


def _pixel_file(root: Path, order: int, pixel: int) -> Path:
    directory = (pixel // 10_000) * 10_000
    return root / "dataset" / f"Norder={order}" / f"Dir={directory}" / f"Npix={pixel}.parquet"


def write_hats_catalog(table: pa.Table, path: str | Path, *, catalog_name: str,
                       ra_column: str, dec_column: str, catalog_type: str = "object",
                       max_rows: int = 1_000_000, lowest_order: int = 0,
                       highest_order: int = 10, compression: str = "zstd",
                       threads: int = 2) -> HatsResult:
    """Write ``table`` as a HATS catalog at ``path`` (a new directory).

    Parameters
    ----------
    table : pyarrow.Table
        Rows to write; field metadata (units) is kept.
    path : path-like
        Catalog directory to create.
    catalog_name : str
        ``obs_collection`` of the catalog.
    ra_column, dec_column : str
        ICRS position columns, degrees.
    catalog_type : {"object", "source"}
        HATS catalog type.
    max_rows : int
        Largest number of rows in a partition (partitions of ``highest_order``
        may exceed it).
    lowest_order, highest_order : int
        Range of partition HEALPix orders.
    compression : str
        Parquet codec.
    threads : int
        Partitions written at once (Parquet encoding releases the GIL).

    Returns
    -------
    HatsResult
    """
    _require_hats()
    from hats.catalog import PartitionInfo, TableProperties
    from hats.io.parquet_metadata import write_parquet_metadata
    from hats.pixel_math import HealpixPixel
    from hats.pixel_math.spatial_index import compute_spatial_index

    for col in (ra_column, dec_column):
        if col not in table.column_names:
            raise ReleaseError(f"{catalog_name}: no position column {col!r}")
    if HEALPIX_COLUMN in table.column_names:
        table = table.drop_columns([HEALPIX_COLUMN])
    root = Path(path)
    ra = np.asarray(table.column(ra_column).to_numpy(zero_copy_only=False), dtype=np.float64)
    dec = np.asarray(table.column(dec_column).to_numpy(zero_copy_only=False), dtype=np.float64)
    good = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90)
    n_dropped = int(len(good) - good.sum())
    if n_dropped:
        table = table.filter(pa.array(good))
        ra, dec = ra[good], dec[good]
    if table.num_rows == 0:
        raise ReleaseError(f"{catalog_name}: no rows with a finite position for a HATS catalog")
    index = np.asarray(compute_spatial_index(ra, dec), dtype=np.int64)
    order = np.argsort(index, kind="stable")
    index = index[order]
    parts = hats_partitions(index, max_rows=max_rows, lowest_order=lowest_order,
                            highest_order=highest_order)
    # One gather of the whole table, then zero-copy slices: taking each partition
    # from the (chunked) table costs 3x more (2.8 vs 0.9 s on 3 million rows).
    ordered = table.take(pa.array(order))
    del order
    ordered = ordered.add_column(0, pa.field(HEALPIX_COLUMN, pa.int64()), pa.array(index))
    options = parquet_options(ordered.schema, compression)

    def write(part: tuple[int, int, int, int]) -> None:
        k, pixel, start, stop = part
        target = _pixel_file(root, k, pixel)
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(ordered.slice(start, stop - start), target,
                       sorting_columns=[pq.SortingColumn(0)], **options)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(write, parts))
    pixels = [HealpixPixel(k, p) for k, p, _, _ in parts]
    partition_info = PartitionInfo.from_healpix(pixels)
    partition_info.write_to_file(catalog_path=root)
    hats_logger = logging.getLogger("hats")
    previous = hats_logger.level
    hats_logger.setLevel(logging.ERROR)  # hats logs a warning per file it reads
    try:
        n_written = write_parquet_metadata(root)
    finally:
        hats_logger.setLevel(previous)
    if n_written != table.num_rows:
        raise ReleaseError(f"{catalog_name}: HATS partitions hold {n_written} rows, "
                           f"expected {table.num_rows}")
    largest = max(stop - start for _, _, start, stop in parts)
    properties = TableProperties(**TableProperties.new_provenance_dict(
        root, builder="drp",
        catalog_name=catalog_name, catalog_type=catalog_type, total_rows=table.num_rows,
        ra_column=ra_column, dec_column=dec_column, healpix_column=HEALPIX_COLUMN,
        healpix_order=_INDEX_ORDER, hats_max_rows=max(max_rows, largest),
        hats_order=partition_info.get_highest_order(),
        moc_sky_fraction=f"{partition_info.calculate_fractional_coverage():0.5f}"))
    properties.to_properties_file(root)
    return HatsResult(root, table.num_rows, n_dropped, len(parts),
                      partition_info.get_highest_order(), largest)
