"""The registry benchmark workload, shared by the drp and daf_butler runners.

Pure numpy + stdlib so both virtual environments can import it.  The shape
follows what the Rubin butler is measured on: one instrument, 30 detectors,
6 bands, N visits each with 30 detector regions, 2,000 small tables put,
3,000 FITS files ingested, where/spatial queries, gets, and an export+import
of the band-r subset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BANDS = ("u", "g", "r", "i", "z", "y")
N_DETECTORS = 30
N_TABLES = 2000
N_FITS = 3000
INSTRUMENT = "BenchCam"
FOV_DEG = 3.5          # visit footprint side
QUERY_POINT = (150.0, 2.0)
QUERY_CIRCLE = (150.0, 2.0, 1.0)
#: Query timings are the median of this many runs (both sides; a shared machine
#: has bursts of load that a median of 5 does not absorb).
N_REPEAT = 15


@dataclass
class Workload:
    n_visits: int
    visits: list[dict]
    detector_regions: list[dict]     # instrument, visit, detector, corners (4, 2)
    detectors: list[dict]
    day_obs: list[int]


def _square(ra0: float, dec0: float, half: float) -> np.ndarray:
    """Corners (ra, dec) of a square of half-side ``half`` deg on the tangent plane."""
    corners = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
    dec = dec0 + corners[:, 1]
    ra = ra0 + corners[:, 0] / math.cos(math.radians(dec0))
    return np.column_stack([ra % 360.0, dec])


def make_workload(n_visits: int, seed: int = 1) -> Workload:
    """Visits spread over a 40 x 20 deg field around the query point."""
    rng = np.random.default_rng(seed)
    ra = QUERY_POINT[0] + rng.uniform(-20, 20, n_visits)
    dec = QUERY_POINT[1] + rng.uniform(-10, 10, n_visits)
    visits = []
    regions = []
    day0 = 20250101
    for v in range(n_visits):
        band = BANDS[v % len(BANDS)]
        day = day0 + (v // 100)  # ~100 visits a night
        mjd = 60676.0 + v // 100 + 0.0003 * (v % 100)
        visits.append({
            "visit": v, "band": band, "physical_filter": f"{band}_bench", "day_obs": day,
            "exposure_time": 30.0 if v % 3 else 15.0, "ra": float(ra[v]), "dec": float(dec[v]),
            "sky_rotation": float(rng.uniform(0, 360)), "exp_midpt_mjd": mjd,
            "airmass": 1.0 + float(rng.uniform(0, 0.8)),
            "corners": _square(ra[v], dec[v], FOV_DEG / 2),
        })
        step = FOV_DEG / 6
        for d in range(N_DETECTORS):
            cx = -FOV_DEG / 2 + step * (d % 6 + 0.5)
            cy = -FOV_DEG / 2 + FOV_DEG / 5 * (d // 6 + 0.5)
            dra = cx / math.cos(math.radians(dec[v]))
            regions.append({"visit": v, "detector": d,
                            "corners": _square(ra[v] + dra, dec[v] + cy, step / 2 * 0.98)})
    detectors = [{"detector": d, "name": f"R{d // 9}{d % 9}_S00"} for d in range(N_DETECTORS)]
    days = sorted({v["day_obs"] for v in visits})
    return Workload(n_visits, visits, regions, detectors, days)


def table_payload(i: int) -> dict[str, np.ndarray]:
    """A small source table (10 rows, 5 columns) for dataset ``i``."""
    rng = np.random.default_rng(i)
    return {"id": np.arange(10, dtype=np.int64) + 10 * i, "ra": rng.uniform(0, 1, 10),
            "dec": rng.uniform(0, 1, 10), "flux": rng.uniform(0, 1e4, 10),
            "flux_err": rng.uniform(0, 10, 10)}


def dataset_data_ids(n_visits: int, count: int, offset: int = 0) -> list[tuple[int, int]]:
    """(visit, detector) pairs for ``count`` datasets, spread over all visits."""
    total = n_visits * N_DETECTORS
    idx = (np.arange(count) * max(total // count, 1) + offset) % total
    return [(int(i // N_DETECTORS), int(i % N_DETECTORS)) for i in idx]
