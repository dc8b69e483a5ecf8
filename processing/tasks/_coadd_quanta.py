"""Shared by the coadd tasks: the SQL selection of each (skymap, tract, patch, band).

``make_warp`` and ``assemble_coadd`` both ask the coadd-input query which
(visit, detector) images belong to each coadd; this module runs it once per
candidate (patch, band) over the visit summaries of the input collections and
hands back the sky-map geometry that the workers (which never see the
registry) need to rebuild the tract WCS and the patch boxes.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ..coadd_inputs import CoaddInputSelector

__all__: list[str] = []  # private helpers of the coadd tasks


@dataclass
class CoaddSelection:
    """The selected inputs of one coadd and where its patch is."""

    skymap: str
    tract: int
    patch: int
    band: str
    rows: pa.Table
    skymap_config: str

    @property
    def coadd_id(self) -> dict[str, Any]:
        return {"skymap": self.skymap, "tract": self.tract, "patch": self.patch,
                "band": self.band}


def skymap_configs(repo, name: str | None) -> dict[str, str]:
    """JSON configurations of the registered sky maps (one, or all when ``name`` is None)."""
    table = repo.dimension_records("skymap")
    out = {str(s): str(c) for s, c in zip(table.column("skymap").to_pylist(),
                                           table.column("config").to_pylist(), strict=True)}
    if name is not None:
        out = {k: v for k, v in out.items() if k == name}
    return out


def iter_selections(config, repo, collections, *, where=None, bind=None
                    ) -> Iterator[CoaddSelection]:
    """Run the coadd-input query for every (patch, band) some detector overlaps.

    Yields a :class:`CoaddSelection` per candidate, including those whose
    selection is empty (the caller decides whether that is "no work").
    """
    configs = skymap_configs(repo, config.skymap)
    if not configs:
        return
    with CoaddInputSelector.from_repo(repo, collections, query=config.inputs_query,
                                      params=dict(config.query_params), where=where,
                                      bind=bind) as selector:
        for skymap, tract, patch, band in selector.candidates():
            if skymap not in configs:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # empty selections are reported
                rows = selector.select(skymap=skymap, tract=tract, patch=patch, band=band)
            yield CoaddSelection(skymap, tract, patch, band, rows, configs[skymap])


def patch_geometry(skymap_config: str, tract: int, patch: int):
    """``(tract_info, patch_info)`` rebuilt from a sky map's stored configuration."""
    from ..skymap import sky_map_from_config

    skymap = sky_map_from_config(json.loads(skymap_config))
    tract_info = skymap[int(tract)]
    return tract_info, tract_info.patch(int(patch))


def rows_by_visit(rows: pa.Table) -> dict[tuple[str | None, int], pa.Table]:
    """Split a selection into per-(instrument, visit) tables, keeping the row order."""
    if rows.num_rows == 0:
        return {}
    visits = rows.column("visit").to_pylist()
    instruments = (rows.column("instrument").to_pylist() if "instrument" in rows.column_names
                   else [None] * rows.num_rows)
    groups: dict[tuple[str | None, int], list[int]] = {}
    for i, key in enumerate(zip(instruments, visits, strict=True)):
        groups.setdefault((key[0], int(key[1])), []).append(i)
    return {k: rows.take(pa.array(idx)) for k, idx in groups.items()}
