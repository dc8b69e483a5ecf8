"""Support for :mod:`processing.algorithms.measure`: neighbour-cleaned stamps and output columns.

:class:`Scene` holds the image planes and the neighbour-removal state (family
labels, replacement noise, fitted models of deblended children) and cuts
cleaned stamps; the column helpers define the output table (names, dtypes,
units) in one place.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from store.formats.parquet import with_units

from ._measure_kernels import (
    add_stamps,
    clean_into,
    cut_into,
    label_counts,
    subtract_unlabelled,
    tile_index,
)

__all__ = [
    "CENTER_FLAGS",
    "MODEL_TILE",
    "PIXEL_PLANES",
    "Scene",
    "aperture_column",
    "column_spec",
    "cut",
    "embed",
    "empty_columns",
    "family_chunks",
    "to_table",
]

#: pixelFlags_<name> -> mask plane.
PIXEL_PLANES = {"edge": "EDGE", "bad": "BAD", "saturated": "SAT", "interpolated": "INTRP",
                "cr": "CR", "suspect": "SUSPECT", "nodata": "NO_DATA"}
#: Side of the tiles holding the children's fitted models, pixels.
MODEL_TILE = 64
#: Flags that also have a ``<name>Center`` variant (central 3x3 pixels).
CENTER_FLAGS = ("saturated", "interpolated", "cr", "suspect")


def aperture_column(radius: float) -> str:
    """Column stem of an aperture radius, e.g. ``4.5 -> "apFlux_4_5"``."""
    whole = int(radius)
    return f"apFlux_{whole}_{round((radius - whole) * 10)}"


class Scene:
    """Image planes and neighbour-removal state; cuts cleaned stamps on demand.

    The family of a pixel is ``lut[labels]`` (see ``_measure_kernels.family_at``;
    0 off the segments).  ``removed`` holds the replacement noise on every
    segment pixel and, once :meth:`remove_children` has run, the image minus the
    fitted children models elsewhere: one full-frame array serves as the noise
    source of the cleaned stamps and as the "everything removed" image.
    """

    def __init__(self, image, variance, mask, segmentation, ids, family, config):
        self.image = np.ascontiguousarray(image, dtype=np.float32)
        self.variance = np.ascontiguousarray(variance, dtype=np.float32)
        self.mask = np.ascontiguousarray(mask)
        self.shape = self.image.shape
        self.model = None  # fitted PSF models of all deblended children
        self.removed = None  # noise on the segments; image - model elsewhere (see above)
        self.labels = self.lut = self.seg = None
        self.has_noise = False
        if segmentation is not None:
            seg = self.seg = np.ascontiguousarray(segmentation)
            if seg.shape != self.shape:
                raise ValueError(f"segmentation shape {seg.shape} != image shape {self.shape}")
            self.labels, self.lut, self.own_area = _families(seg, ids, family)
            if config.replace_with_noise:
                rng = np.random.default_rng(config.noise_seed)
                self.removed = self.image.copy()
                labelled = np.flatnonzero(seg)
                sd = np.sqrt(np.maximum(self.variance.ravel()[labelled], 0))
                self.removed.ravel()[labelled] = rng.standard_normal(sd.size,
                                                                     dtype=np.float32) * sd
                self.has_noise = True

    @property
    def noise(self):
        """Replacement noise (valid on segment pixels only), or None."""
        return self.removed if self.has_noise else None

    def stamps(self, ix, iy, half, family, *, subtract=None, own=None):
        """Cleaned float64 image stamps, their on-image masks and the "own family on the
        border" flags (None without segmentation).

        ``subtract`` (per-source bool) removes the global children model;
        ``own`` (n, s, s) adds each source's own model back.  Pixels of other
        families are replaced by noise (and lose ``own``).
        """
        ix = np.ascontiguousarray(ix, dtype=np.int64)
        iy = np.ascontiguousarray(iy, dtype=np.int64)
        size = 2 * half + 1
        img = np.empty((ix.size, size, size))
        on = np.empty((ix.size, size, size), dtype=bool)
        border = None if self.labels is None else np.empty(ix.size, dtype=bool)
        index = tiles = None
        if self.model is not None and subtract is not None and np.any(subtract):
            index, tiles = self.model
            subtract = np.ascontiguousarray(subtract, dtype=bool)
        own = None if own is None else np.ascontiguousarray(own, dtype=np.float64)
        family = np.ascontiguousarray(family, dtype=np.int64)
        clean_into(self.image, index, tiles, self.labels, self.lut, self.noise, ix, iy, half,
                   family, subtract if index is not None else None, own, img, on, border)
        return img, on, border

    def planes(self, ix, iy, half):
        """float64 variance and mask stamps (0 off the image)."""
        return cut(self.variance, ix, iy, half, dtype=np.float64), cut(self.mask, ix, iy, half)

    def families(self, y0, y1, x0, x1):
        """Family labels of the box ``[y0, y1) x [x0, x1)`` (inside the image)."""
        labels = self.labels[y0:y1, x0:x1]
        if self.lut is None:
            return labels
        inside = (labels >= 0) & (labels < self.lut.size)
        return np.where(inside, self.lut[np.where(inside, labels, 0)], labels)

    def region(self, x0, y0, x1, y1, family):
        """Cleaned image, on-image mask, variance and mask of the box ``[x0, x1) x [y0, y1)``."""
        ny, nx = self.shape
        shape = (y1 - y0, x1 - x0)
        img, var = np.zeros(shape), np.zeros(shape)
        msk, on = np.zeros(shape, dtype=self.mask.dtype), np.zeros(shape, dtype=bool)
        ya, yb, xa, xb = max(y0, 0), min(y1, ny), max(x0, 0), min(x1, nx)
        if yb > ya and xb > xa:
            src = (slice(ya, yb), slice(xa, xb))
            dst = (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0))
            img[dst], var[dst], msk[dst], on[dst] = (self.image[src], self.variance[src],
                                                     self.mask[src], True)
            if self.has_noise:
                fam = self.families(ya, yb, xa, xb)
                keep = (fam == 0) | (fam == family)
                img[dst] = np.where(keep, img[dst], self.removed[src])
        return img, on, var, msk

    def set_children_model(self, stamps, ox, oy, amp):
        """The sum of the children's fitted models, ``amp * stamps`` at origins ``(ox, oy)``.

        Kept as float32 tiles of :data:`MODEL_TILE` pixels where some model
        lands (``model = (tile index, tiles)``), not as a full-frame array;
        products are rounded to float32 and summed in source order.
        """
        ny, nx = self.shape
        t = MODEL_TILE
        index = np.full((-(-ny // t), -(-nx // t)), -1, dtype=np.int64)
        ox = np.ascontiguousarray(ox, dtype=np.int64)
        oy = np.ascontiguousarray(oy, dtype=np.int64)
        stamps = np.ascontiguousarray(stamps)
        count = tile_index(ny, nx, t, stamps.shape[1], ox, oy, index)
        tiles = np.zeros((count, t, t), dtype=np.float32)
        add_stamps(index, tiles, ny, nx, stamps, np.ascontiguousarray(amp, dtype=np.float64),
                   ox, oy)
        self.model = (index, tiles)

    def remove_children(self):
        """Make :attr:`removed` the image with every child model subtracted and every
        segment replaced by noise."""
        if self.removed is None:
            self.removed = self.image.copy()
            labels = None
        else:
            labels = self.labels if self.has_noise else None
        if self.model is not None:
            subtract_unlabelled(self.image, *self.model, labels, self.removed)


def _families(seg, ids, family):
    """Labels and lookup table giving every pixel's family, and each source's own area.

    Unknown labels are families of their own.  With dense positive ids (the
    usual 1..n) the segmentation itself is the label image and the table maps
    label -> family; otherwise a full family image is built (table None).
    """
    ids = np.asarray(ids, dtype=np.int64)
    family = np.asarray(family, dtype=np.int64)
    top = int(ids.max(initial=0))
    if (ids.size and ids.min() > 0 and family.min() > 0 and top < 4 * seg.size + 1024
            and seg.dtype.kind in "iu"):
        lut = np.arange(top + 1, dtype=np.int64)
        lut[ids] = family
        counts = np.zeros(top + 1, dtype=np.int64)
        label_counts(seg, top + 1, counts)
        return seg, lut, counts[ids]
    fam = np.zeros(seg.shape, dtype=np.int64)
    labelled = seg != 0
    labels = seg[labelled].astype(np.int64)
    order = np.argsort(ids)
    pos = np.clip(np.searchsorted(ids, labels, sorter=order), 0, ids.size - 1)
    known = ids[order[pos]] == labels
    fam[labelled] = np.where(known, family[order[pos]], labels)
    return fam, None, np.bincount(order[pos][known], minlength=ids.size)


def cut(array, ix, iy, half, *, dtype=None, fill=0):
    """``(n, 2 half + 1, 2 half + 1)`` stamps of ``array`` (``fill`` off it), as ``dtype``."""
    ix = np.ascontiguousarray(ix, dtype=np.int64)
    iy = np.ascontiguousarray(iy, dtype=np.int64)
    size = 2 * half + 1
    out = np.empty((ix.size, size, size), dtype=dtype or array.dtype)
    if out.dtype == array.dtype:
        cut_into(array, ix, iy, half, out.dtype.type(fill), out, None)
    else:
        tmp = np.empty((ix.size, size, size), dtype=array.dtype)
        cut_into(array, ix, iy, half, array.dtype.type(fill), tmp, None)
        out[...] = tmp
    return out


def family_chunks(family: np.ndarray, size: int) -> list[np.ndarray]:
    """Source indices grouped in chunks of about ``size`` without splitting a family."""
    order = np.argsort(family, kind="stable")
    fam_sorted = family[order]
    starts = np.r_[0, np.nonzero(np.diff(fam_sorted))[0] + 1]
    chunks, begin = [], 0
    for s in starts[1:]:
        if s - begin >= size:
            chunks.append(order[begin:s])
            begin = s
    chunks.append(order[begin:])
    return [c for c in chunks if c.size]


def embed(stamps, half):
    """Centre ``(n, k, k)`` stamps in ``(n, 2 half + 1, 2 half + 1)`` zero arrays."""
    k = stamps.shape[1]
    out = np.zeros((stamps.shape[0], 2 * half + 1, 2 * half + 1))
    o = half - k // 2
    out[:, o : o + k, o : o + k] = stamps
    return out


# ---------------------------------------------------------------------------------- columns


def column_spec(config):
    """(name, numpy dtype, unit) of every output column, in order."""
    flag, f8, f4 = np.bool_, np.float64, np.float32
    spec = [("sourceId", np.int64, None), ("parentSourceId", np.int64, None),
            ("deblend_nChild", np.int32, None),
            ("x", f8, "pixel"), ("y", f8, "pixel"), ("xErr", f4, "pixel"), ("yErr", f4, "pixel")]
    spec += [(f"centroid_flag{s}", flag, None) for s in (
        "", "_almostNoSecondDerivative", "_badError", "_edge", "_noSecondDerivative",
        "_notAtMaximum", "_resetToPeak")]
    spec += [(n, f8, "pixel**2") for n in ("ixx", "iyy", "ixy")]
    spec += [(f"shape_flag{s}", flag, None) for s in ("", "_maxIter", "_shift", "_unweightedBad")]
    spec += [(n, f8, "pixel**2") for n in ("ixxPSF", "iyyPSF", "ixyPSF")]
    spec += [("psfFlux_instFlux", f8, "count"), ("psfFlux_instFluxErr", f8, "count"),
             ("psfFlux_area", f4, "pixel"), ("psfFlux_chi2", f4, None),
             ("psfFlux_npixels", np.int32, None)]
    spec += [(f"psfFlux_flag{s}", flag, None) for s in ("", "_edge", "_noGoodPixels")]
    for r in config.radii:
        stem = aperture_column(r)
        spec += [(f"{stem}_instFlux", f8, "count"), (f"{stem}_instFluxErr", f8, "count"),
                 (f"{stem}_flag", flag, None), (f"{stem}_flag_apertureTruncated", flag, None)]
    spec += [("gaussianFlux_instFlux", f8, "count"), ("gaussianFlux_instFluxErr", f8, "count"),
             ("gaussianFlux_flag", flag, None),
             ("localBackground_instFlux", f8, "count"),
             ("localBackground_instFluxErr", f8, "count"),
             ("localBackground_flag", flag, None), ("localBackground_flag_noGoodPixels", flag, None),
             ("footprintArea_value", np.int32, "pixel"), ("variance_value", f8, "count**2"),
             ("variance_flag", flag, None), ("variance_flag_emptyFootprint", flag, None),
             ("sizeExtendedness", f8, None), ("sizeExtendedness_flag", flag, None),
             ("extendedness", f8, None), ("extendedness_flag", flag, None)]
    for name in PIXEL_PLANES:
        spec.append((f"pixelFlags_{name}", flag, None))
        if name in CENTER_FLAGS:
            spec.append((f"pixelFlags_{name}Center", flag, None))
    spec.append(("pixelFlags_offimage", flag, None))
    return spec


def empty_columns(n, config):
    cols = {}
    for name, dtype, _ in column_spec(config):
        fill = np.nan if np.issubdtype(dtype, np.floating) else 0
        cols[name] = np.full(n, fill, dtype=np.float64 if fill is np.nan else dtype)
    cols["_gauss_psf"] = np.full(n, np.nan)
    return cols


def to_table(cols, config):
    spec = column_spec(config)
    arrays = {name: np.asarray(cols[name]).astype(dtype) for name, dtype, _ in spec}
    units = {name: unit for name, _, unit in spec if unit}
    return with_units(pa.table(arrays), units)
