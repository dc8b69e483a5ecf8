"""Writing a sky map into the registry: ``skymap``, ``tract`` and ``patch`` records.

A rings sky map has ~19,000 tracts of 100 patches; registering them all would
put two million patch rows in the registry for nothing.  By default only the
tracts that the repository's visits touch are written (with all their
patches), so SQL can join visits to patches; ``all_tracts=True`` writes every
tract of a (small, discrete) sky map.
"""

from __future__ import annotations

import json

import numpy as np

from store.errors import DrpError

__all__ = ["load_skymap", "register_skymap"]


def register_skymap(repo, name: str, skymap, *, all_tracts: bool = False,
                    tracts: list[int] | None = None) -> dict[str, int]:
    """Insert the sky map's records; returns counts of tracts and patches written.

    Parameters
    ----------
    repo : store.Repo
        Repository.
    name : str
        Sky map name (the ``skymap`` data-ID value).
    skymap : RingsSkyMap or DiscreteSkyMap
        The geometry.
    all_tracts : bool
        Register every tract instead of those overlapping the visits.
    tracts : list of int, optional
        Register exactly these tracts.
    """
    existing = repo.dimension_records("skymap", "skymap = $n", {"n": name})
    record = skymap.dimension_record(name)
    if existing.num_rows:
        if json.loads(existing.column("config")[0].as_py()) != json.loads(record["config"]):
            raise DrpError(f"sky map {name!r} is already registered with another configuration")
    else:
        repo.insert_dimension_records("skymap", [record])
    if tracts is None:
        tracts = list(range(len(skymap))) if all_tracts else _tracts_of_visits(repo, skymap)
    tract_rows, patch_rows = [], []
    for t in tracts:
        tract = skymap[int(t)]
        tract_rows.append({"skymap": name, **tract.dimension_record()})
        for patch in tract.patches():
            patch_rows.append({"skymap": name, **patch.dimension_record()})
    repo.insert_dimension_records("tract", tract_rows, skip_existing=True)
    repo.insert_dimension_records("patch", patch_rows, skip_existing=True)
    return {"tracts": len(tract_rows), "patches": len(patch_rows)}


def _tracts_of_visits(repo, skymap) -> list[int]:
    """Tracts overlapping the visit regions (vertices and centres)."""
    visits = repo.dimension_records("visit")
    ra, dec = [], []
    for row in visits.select(["ra", "dec", "region_ra", "region_dec"]).to_pylist():
        if row["region_ra"]:
            ra += list(row["region_ra"])
            dec += list(row["region_dec"])
        elif row["ra"] is not None:
            ra.append(row["ra"])
            dec.append(row["dec"])
    if not ra:
        raise DrpError("no visits with sky positions to choose tracts from; "
                       "pass tracts explicitly or all_tracts=True")
    return sorted({int(t) for t in np.unique(skymap.find_tract(np.array(ra), np.array(dec)))})


def load_skymap(repo, name: str):
    """Rebuild a registered sky map from its stored configuration."""
    from . import sky_map_from_config

    rows = repo.dimension_records("skymap", "skymap = $n", {"n": name})
    if rows.num_rows == 0:
        raise DrpError(f"no sky map named {name!r}; register one with `drp register-skymap`")
    return sky_map_from_config(rows.column("config")[0].as_py())
