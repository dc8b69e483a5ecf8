"""The sky footprint of a visit: detector corner polygons and their convex hull.

``UpdateVisitSummaryTask`` writes one ``visit_geometry`` dataset per visit
(JSON, storage class ``StructuredData``) from the final WCS corners::

    {"instrument": "LSSTComCam", "visit": 2024112100042,
     "detectors": [{"detector": 0, "ra": [4 floats], "dec": [4 floats]}, ...],
     "polygon": {"ra": [...], "dec": [...]}}

Corners are in afw order (xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin,
ymax) of the detector's outer pixel edges, degrees.  ``polygon`` is the
spherical convex hull of every detector corner (counter-clockwise seen from
outside the sphere), or null when no detector has a WCS.  After the stage the
task turns these into the registry's ``visit_detector_region`` and ``visit``
regions (:func:`region_records`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from store.sphgeom import radec_to_xyz

__all__ = ["region_records", "sky_convex_hull", "visit_geometry"]


def sky_convex_hull(ra, dec) -> np.ndarray | None:
    """Vertices of the smallest spherical convex polygon holding the points.

    The points are projected gnomonically about their mean direction (great
    circles become straight lines, so the planar hull is the spherical one);
    they must lie within a hemisphere, which any visit does.

    Parameters
    ----------
    ra, dec : array_like
        ``(n,)`` positions, degrees.

    Returns
    -------
    numpy.ndarray or None
        ``(k, 2)`` hull vertices (ra, dec) in degrees, as given (a subset of
        the points), counter-clockwise seen from outside the sphere; None for
        fewer than 3 non-collinear points.

    Examples
    --------
    >>> hull = sky_convex_hull([10, 11, 11, 10, 10.5], [0, 0, 1, 1, 0.5])
    >>> hull.shape
    (4, 2)
    """
    ra, dec = np.ravel(np.asarray(ra, float)), np.ravel(np.asarray(dec, float))
    v = radec_to_xyz(ra, dec)
    if len(v) < 3:
        return None
    centre = v.sum(axis=0)
    norm = np.linalg.norm(centre)
    if norm == 0 or np.any(v @ (centre / norm) <= 1e-9):
        raise ValueError("points do not lie within one hemisphere; no convex hull")
    centre /= norm
    # Tangent-plane basis at the centre: east (e) and north (n).
    pole = np.array([0.0, 0.0, 1.0]) if abs(centre[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    e = np.cross(pole, centre)
    e /= np.linalg.norm(e)
    n = np.cross(centre, e)
    depth = v @ centre
    plane = np.column_stack([(v @ e) / depth, (v @ n) / depth])
    try:
        hull = ConvexHull(plane)
    except QhullError:
        return None  # collinear or repeated points
    idx = hull.vertices  # counter-clockwise in the (e, n) plane
    # (e, n, centre) is right-handed, so counter-clockwise in the tangent
    # plane is counter-clockwise seen from outside the sphere.
    return np.column_stack([ra[idx], dec[idx]])  # the input values, not a round trip


def visit_geometry(instrument: str, visit: int,
                   corners: Mapping[int, tuple[Sequence[float], Sequence[float]]]
                   ) -> dict[str, Any]:
    """The ``visit_geometry`` record of one visit.

    Parameters
    ----------
    instrument : str
        Instrument name.
    visit : int
        Visit id.
    corners : mapping of int to (ra, dec)
        Per detector, the 4 corner right ascensions and declinations
        (degrees, afw order).  Detectors with a non-finite corner (no WCS) are
        left out.

    Returns
    -------
    dict
        JSON-ready record (see the module docstring).
    """
    detectors = []
    for det in sorted(corners):
        ra, dec = (np.asarray(c, dtype=float) for c in corners[det])
        if ra.shape != (4,) or dec.shape != (4,):
            raise ValueError(f"detector {det}: need 4 corner ra and dec values, got "
                             f"{ra.shape} and {dec.shape}")
        if np.all(np.isfinite(ra)) and np.all(np.isfinite(dec)):
            detectors.append({"detector": int(det), "ra": ra.tolist(), "dec": dec.tolist()})
    polygon = None
    if detectors:
        hull = sky_convex_hull(np.concatenate([d["ra"] for d in detectors]),
                               np.concatenate([d["dec"] for d in detectors]))
        if hull is not None:
            polygon = {"ra": hull[:, 0].tolist(), "dec": hull[:, 1].tolist()}
    return {"instrument": instrument, "visit": int(visit), "detectors": detectors,
            "polygon": polygon}


def region_records(geometry: Mapping[str, Any]) -> tuple[list[dict], list[dict]]:
    """Dimension records holding the regions of a ``visit_geometry`` record.

    Returns
    -------
    detector_records : list of dict
        ``visit_detector_region`` records (instrument, visit, detector, region).
    visit_records : list of dict
        The visit's record with its new region (empty without a polygon).
    """
    instrument, visit = geometry["instrument"], int(geometry["visit"])
    detector_records = [
        {"instrument": instrument, "visit": visit, "detector": int(d["detector"]),
         "region": np.column_stack([d["ra"], d["dec"]])}
        for d in geometry["detectors"]]
    poly = geometry.get("polygon")
    visit_records = [] if not poly else [
        {"instrument": instrument, "visit": visit,
         "region": np.column_stack([poly["ra"], poly["dec"]])}]
    return detector_records, visit_records
