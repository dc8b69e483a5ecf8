"""Integer identifiers of detector-visits and sources (one packing, used everywhere).

``ccdVisitId = visit * 1000 + detector`` (readable; detectors < 1000).
``sourceId`` packs a 31-bit visit index, an 8-bit detector and a 24-bit
counter into a positive int64.  Visit numbers of the ``YYYYMMDDnnnnn`` form
(the simulator's, and Rubin's ``day_obs * 100000 + seq``) are first turned into
``days since 2000-01-01 * 100000 + seq`` so they fit 31 bits until 2058.
"""

from __future__ import annotations

import datetime as _dt

import numpy as np

__all__ = ["ccd_visit_id", "source_ids", "visit_index"]

_EPOCH = _dt.date(2000, 1, 1)
_MAX_COUNT = 1 << 24


def ccd_visit_id(visit: int, detector: int) -> int:
    """Rubin-style ``ccdVisitId`` of one detector in one visit."""
    if not 0 <= detector < 1000:
        raise ValueError(f"detector must be in [0, 1000) for ccdVisitId packing, got {detector}")
    return int(visit) * 1000 + int(detector)


def visit_index(visit: int) -> int:
    """A < 2**31 integer unique per visit (see the module notes)."""
    visit = int(visit)
    if visit < (1 << 31):
        return visit
    day, seq = divmod(visit, 100000)
    try:
        date = _dt.date(day // 10000, (day // 100) % 100, day % 100)
    except ValueError:
        raise ValueError(f"visit {visit} is neither < 2**31 nor of the YYYYMMDDnnnnn form"
                         ) from None
    index = (date - _EPOCH).days * 100000 + seq
    if not 0 <= index < (1 << 31):
        raise ValueError(f"visit {visit} is outside the packable range")
    return index


def source_ids(visit: int, detector: int, n: int) -> np.ndarray:
    """``n`` unique source ids for one detector-visit (counter 1..n)."""
    if n >= _MAX_COUNT:
        raise ValueError(f"at most {_MAX_COUNT - 1} sources per detector-visit, got {n}")
    if not 0 <= detector < 256:
        raise ValueError(f"detector must be in [0, 256) for source ids, got {detector}")
    base = (visit_index(visit) << 32) | (int(detector) << 24)
    return base + np.arange(1, n + 1, dtype=np.int64)
