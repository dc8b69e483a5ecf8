"""Reference catalogs: which shards a detector needs, and joining them.

Shards are ``reference_catalog`` datasets keyed by a nested HEALPix pixel at
order :data:`store.dimensions.REFCAT_HEALPIX_ORDER`.  A quantum needs every
shard its detector's sky region touches (the detector region from the
``visit_detector_region`` records, else the visit's, grown by a margin for
pointing errors).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from store.dimensions import REFCAT_HEALPIX_ORDER
from store.sphgeom import ConvexPolygon

from ..graph import input_ref

__all__ = ["concat_shards", "lookup_reference_shards", "shards_for_region"]

#: Extra radius around a region when choosing shards (pointing error + margin), degrees.
SHARD_MARGIN_DEG = 0.05


def shards_for_region(polygon: ConvexPolygon, margin_deg: float = SHARD_MARGIN_DEG) -> set[int]:
    """HEALPix pixels (nested, refcat order) within the region's bounding cap + margin."""
    import astropy.units as u
    from astropy_healpix import HEALPix

    cap = polygon.bounding_circle()
    hp = HEALPix(nside=2**REFCAT_HEALPIX_ORDER, order="nested")
    pixels = hp.cone_search_lonlat(cap.ra * u.deg, cap.dec * u.deg,
                                   (cap.radius + margin_deg) * u.deg)
    return {int(p) for p in pixels}


def lookup_reference_shards(quanta, repo, collections, connection: str) -> None:
    """Add the overlapping shards to each quantum's ``connection`` input."""
    refs = repo.query_datasets("reference_catalog", collections=collections)
    by_pixel = {ref.data_id["healpix"]: ref for ref in refs}
    if not by_pixel:
        return
    regions = {}
    vdr = repo.dimension_records("visit_detector_region")
    for row in vdr.select(["visit", "detector", "region_ra", "region_dec"]).to_pylist():
        if row["region_ra"]:
            regions[(row["visit"], row["detector"])] = ConvexPolygon(row["region_ra"],
                                                                     row["region_dec"])
    visits = repo.dimension_records("visit")
    for row in visits.select(["visit", "region_ra", "region_dec"]).to_pylist():
        if row["region_ra"]:
            regions.setdefault((row["visit"], None), ConvexPolygon(row["region_ra"],
                                                                   row["region_dec"]))
    for q in quanta:
        region = regions.get((q.data_id.get("visit"), q.data_id.get("detector"))) or \
            regions.get((q.data_id.get("visit"), None))
        if region is None:
            chosen = list(by_pixel.values())
        else:
            chosen = [by_pixel[p] for p in sorted(shards_for_region(region)) if p in by_pixel]
        q.inputs[connection] = [input_ref(repo, r) for r in chosen]


def concat_shards(shards) -> pa.Table | None:
    """One table from a table or a dict of shard tables (None when empty)."""
    if shards is None:
        return None
    if isinstance(shards, pa.Table):
        return shards
    tables = [t for _, t in sorted(shards.items())]
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="permissive")


def unique_positions(table: pa.Table) -> np.ndarray:  # pragma: no cover - helper for users
    """Indices of the first occurrence of each reference ``id``."""
    _, first = np.unique(table.column("id").to_numpy(), return_index=True)
    return np.sort(first)
