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

from ._measure_kernels import add_stamps, clean_into, cut_into, family_image, removed_into

__all__ = [
    "CENTER_FLAGS",
    "PIXEL_PLANES",
    "Scene",
    "add_models",
    "aperture_column",
    "column_spec",
    "cut",
    "embed",
    "empty_columns",
    "family_chunks",
    "nan_row_median",
    "to_table",
]

#: pixelFlags_<name> -> mask plane.
PIXEL_PLANES = {"edge": "EDGE", "bad": "BAD", "saturated": "SAT", "interpolated": "INTRP",
                "cr": "CR", "suspect": "SUSPECT", "nodata": "NO_DATA"}
#: Flags that also have a ``<name>Center`` variant (central 3x3 pixels).
CENTER_FLAGS = ("saturated", "interpolated", "cr", "suspect")


def aperture_column(radius: float) -> str:
    """Column stem of an aperture radius, e.g. ``4.5 -> "apFlux_4_5"``."""
    whole = int(radius)
    return f"apFlux_{whole}_{round((radius - whole) * 10)}"


class Scene:
    """Image planes and neighbour-removal state; cuts cleaned stamps on demand."""

    def __init__(self, image, variance, mask, segmentation, ids, family, config):
        self.image = np.ascontiguousarray(image, dtype=np.float32)
        self.variance = np.ascontiguousarray(variance, dtype=np.float32)
        self.mask = np.ascontiguousarray(mask)
        self.shape = self.image.shape
        self.model = None  # fitted PSF models of all deblended children
        self.removed = None  # image with all neighbours removed (see global_removed)
        self.fam = self.noise = self.seg = None
        if segmentation is not None:
            seg = self.seg = np.ascontiguousarray(segmentation)
            if seg.shape != self.shape:
                raise ValueError(f"segmentation shape {seg.shape} != image shape {self.shape}")
            self.fam, self.own_area = _families(seg, ids, family)
            if config.replace_with_noise:
                rng = np.random.default_rng(config.noise_seed)
                self.noise = np.zeros(self.shape, dtype=np.float32)
                labelled = np.flatnonzero(seg)
                sd = np.sqrt(np.maximum(self.variance.ravel()[labelled], 0))
                self.noise.ravel()[labelled] = rng.standard_normal(sd.size,
                                                                   dtype=np.float32) * sd

    def stamps(self, ix, iy, half, family, *, subtract=None, own=None):
        """Cleaned float64 image stamps and their on-image / family-label stamps.

        ``subtract`` (per-source bool) removes the global children model;
        ``own`` (n, s, s) adds each source's own model back.  Pixels of other
        families are replaced by noise (and lose ``own``).
        """
        ix = np.ascontiguousarray(ix, dtype=np.int64)
        iy = np.ascontiguousarray(iy, dtype=np.int64)
        size = 2 * half + 1
        img = np.empty((ix.size, size, size))
        on = np.empty((ix.size, size, size), dtype=bool)
        fam_s = None if self.fam is None else np.empty((ix.size, size, size), self.fam.dtype)
        model = None
        if self.model is not None and subtract is not None and np.any(subtract):
            model = self.model
            subtract = np.ascontiguousarray(subtract, dtype=bool)
        own = None if own is None else np.ascontiguousarray(own, dtype=np.float64)
        family = np.ascontiguousarray(family, dtype=np.int64)
        clean_into(self.image, model, self.fam, self.noise, ix, iy, half, family,
                   subtract if model is not None else None, own, img, on, fam_s)
        return img, on, fam_s

    def planes(self, ix, iy, half):
        """float64 variance and mask stamps (0 off the image)."""
        return cut(self.variance, ix, iy, half, dtype=np.float64), cut(self.mask, ix, iy, half)

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
            if self.noise is not None:
                fam = self.fam[src]
                keep = (fam == 0) | (fam == family)
                img[dst] = np.where(keep, img[dst], self.noise[src])
        return img, on, var, msk

    def global_removed(self):
        """The image with every child model subtracted and every segment replaced by noise."""
        out = np.empty(self.shape, dtype=np.float32)
        removed_into(self.image, self.model, self.fam, self.noise, out)
        return out


def _families(seg, ids, family):
    """Family label of every pixel (unknown labels are families of their own) and own areas."""
    ids = np.asarray(ids, dtype=np.int64)
    family = np.asarray(family, dtype=np.int64)
    top = int(ids.max(initial=0))
    if ids.size and ids.min() > 0 and top < 4 * seg.size + 1024 and seg.dtype.kind in "iu":
        # Dense labels (the usual 1..n): a lookup table indexed by label.
        dtype = np.result_type(seg.dtype, np.int32)
        if np.iinfo(dtype).max < max(top, int(family.max(initial=0))):
            dtype = np.int64
        lut = np.arange(top + 1, dtype=dtype)
        lut[ids] = family
        fam = np.empty(seg.shape, dtype=dtype)
        counts = np.zeros(top + 1, dtype=np.int64)
        family_image(seg, lut, fam, counts)
        counts[0] = 0
        return fam, counts[ids]
    fam = np.zeros(seg.shape, dtype=np.int64)
    labelled = seg != 0
    labels = seg[labelled].astype(np.int64)
    order = np.argsort(ids)
    pos = np.clip(np.searchsorted(ids, labels, sorter=order), 0, ids.size - 1)
    known = ids[order[pos]] == labels
    fam[labelled] = np.where(known, family[order[pos]], labels)
    return fam, np.bincount(order[pos][known], minlength=ids.size)


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


def add_models(target, stamps, ox, oy, amp=None):
    """Add ``(n, k, k)`` stamps (times ``amp``) with origins ``(ox, oy)`` into the 2-D ``target``.

    Each product is rounded to ``target``'s dtype before it is added.
    """
    if stamps.shape[0] == 0:
        return
    amp = np.ones(stamps.shape[0]) if amp is None else np.asarray(amp, dtype=np.float64)
    add_stamps(target, np.ascontiguousarray(stamps), np.ascontiguousarray(amp),
               np.ascontiguousarray(ox, dtype=np.int64), np.ascontiguousarray(oy, dtype=np.int64))


def nan_row_median(values, use):
    """Median of ``values[i][use[i]]`` for each row (NaN when none)."""
    ordered = np.sort(np.where(use, values, np.nan), axis=1)
    count = use.sum(axis=1)
    rows = np.arange(values.shape[0])
    lo = np.maximum((count - 1) // 2, 0)
    hi = np.maximum(count // 2, 0)
    med = 0.5 * (ordered[rows, lo] + ordered[rows, hi])
    return np.where(count > 0, med, np.nan)


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
