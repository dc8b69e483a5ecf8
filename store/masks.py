"""The mask-plane vocabulary: one definition of every mask bit.

Bits are fixed for the whole project, so a mask read from any drp file can be
combined with any other without remapping.  FITS files carry one
``MP_<NAME> = bit`` card per plane (the afw convention), and files written by
other tools with different assignments are remapped on read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

__all__ = [
    "MASK_PLANES",
    "bits",
    "describe",
    "header_cards",
    "plane_names",
    "remap",
]

#: Plane name -> (bit number, description).  Order follows afw's defaults first.
MASK_PLANES: dict[str, tuple[int, str]] = {
    "BAD": (0, "bad pixel (defect, bad column, hot pixel)"),
    "SAT": (1, "saturated pixel"),
    "INTRP": (2, "value interpolated from neighbours"),
    "CR": (3, "cosmic ray"),
    "EDGE": (4, "too close to the image edge to be searched for sources"),
    "DETECTED": (5, "part of a detected source footprint"),
    "DETECTED_NEGATIVE": (6, "part of a negative detection footprint"),
    "SUSPECT": (7, "value is suspect (near saturation, non-linear)"),
    "NO_DATA": (8, "no data for this pixel"),
    "CLIPPED": (9, "an input was clipped as an artefact in the coadd"),
    "REJECTED": (10, "an input was rejected by its mask in the coadd"),
    "SENSOR_EDGE": (11, "an input detector's edge falls here in the coadd"),
    "INEXACT_PSF": (12, "the coadd PSF is not exact here (CLIPPED, REJECTED or SENSOR_EDGE)"),
    "STREAK": (13, "part of a satellite or meteor streak"),
    "BRIGHT_OBJECT": (14, "near a bright object"),
    "NOT_DEBLENDED": (15, "footprint too large to deblend"),
    "SPIKE": (16, "diffraction spike"),
    "UNMASKEDNAN": (17, "NaN pixel that no other plane explains"),
}


def bits(*names: str | Iterable[str]) -> int:
    """Return the OR of the bit values of the named planes.

    Parameters
    ----------
    *names : str or iterable of str
        Plane names such as ``"BAD"``; iterables are flattened.

    Returns
    -------
    int
        The combined bit mask.

    Examples
    --------
    >>> bits("BAD", "SAT")
    3
    """
    value = 0
    for item in names:
        for name in [item] if isinstance(item, str) else item:
            try:
                value |= 1 << MASK_PLANES[name][0]
            except KeyError:
                known = ", ".join(MASK_PLANES)
                raise KeyError(f"unknown mask plane {name!r}; known planes: {known}") from None
    return value


def plane_names(value: int) -> list[str]:
    """Return the names of the planes set in ``value``."""
    return [name for name, (bit, _) in MASK_PLANES.items() if value & (1 << bit)]


def describe() -> dict[str, str]:
    """Return plane name -> description, for docs and reports."""
    return {name: doc for name, (_, doc) in MASK_PLANES.items()}


def header_cards() -> list[tuple[str, int, str]]:
    """Return the ``MP_<NAME>`` FITS cards describing the vocabulary."""
    cards = []
    for name, (bit, doc) in MASK_PLANES.items():
        key = f"MP_{name}"
        # FITS keywords longer than 8 characters need the HIERARCH convention.
        cards.append((key if len(key) <= 8 else f"HIERARCH {key}", bit, doc[:40]))
    return cards


def remap(mask: np.ndarray, file_planes: Mapping[str, int]) -> np.ndarray:
    """Translate a mask written with another bit assignment into the vocabulary.

    Parameters
    ----------
    mask : numpy.ndarray
        Integer mask as read from a file.
    file_planes : mapping of str to int
        Plane name -> bit number used by that file (from its ``MP_`` cards).

    Returns
    -------
    numpy.ndarray
        An int32 mask using :data:`MASK_PLANES` bits.  Planes unknown to the
        vocabulary are dropped.
    """
    if all(MASK_PLANES.get(name, (None,))[0] == bit for name, bit in file_planes.items()):
        return mask.astype(np.int32, copy=False)
    out = np.zeros(mask.shape, dtype=np.int32)
    for name, bit in file_planes.items():
        if name in MASK_PLANES:
            out |= np.where(mask & (1 << bit), np.int32(1 << MASK_PLANES[name][0]), np.int32(0))
    return out
