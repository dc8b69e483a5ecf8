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

from .centroid import cut_stamps

__all__ = [
    "CENTER_FLAGS",
    "PIXEL_PLANES",
    "Scene",
    "add_models",
    "aperture_column",
    "column_spec",
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
        self.image = np.asarray(image, dtype=np.float32)
        self.variance = np.asarray(variance, dtype=np.float32)
        self.mask = np.asarray(mask)
        self.shape = self.image.shape
        self.model = None  # fitted PSF models of all deblended children
        self.removed = None  # image with all neighbours removed (see global_removed)
        self.fam = self.noise = self.seg = None
        if segmentation is not None:
            seg = self.seg = np.asarray(segmentation)
            if seg.shape != self.shape:
                raise ValueError(f"segmentation shape {seg.shape} != image shape {self.shape}")
            self.fam = np.zeros(self.shape, dtype=np.int64)
            labelled = seg != 0
            labels = seg[labelled].astype(np.int64)
            order = np.argsort(ids)
            pos = np.clip(np.searchsorted(ids, labels, sorter=order), 0, ids.size - 1)
            known = ids[order[pos]] == labels
            # Labels of unknown sources form families of their own.
            self.fam[labelled] = np.where(known, family[order[pos]], labels)
            self.own_area = np.bincount(order[pos][known], minlength=ids.size)
            if config.replace_with_noise:
                rng = np.random.default_rng(config.noise_seed)
                self.noise = np.zeros(self.shape, dtype=np.float32)
                sd = np.sqrt(np.maximum(self.variance[labelled], 0))
                self.noise[labelled] = rng.standard_normal(sd.size, dtype=np.float32) * sd

    def stamps(self, ix, iy, half, family, *, subtract=None, own=None):
        """Cleaned image stamps and their on-image / family-membership masks.

        ``subtract`` (per-source bool) removes the global children model;
        ``own`` (n, s, s) adds each source's own model back.
        """
        img, on = cut_stamps(self.image, ix, iy, half)
        img = img.astype(float)
        if self.model is not None and subtract is not None and subtract.any():
            mdl, _ = cut_stamps(self.model, ix, iy, half)
            img -= mdl * subtract[:, None, None]
        if own is not None:
            img += own
        fam_s = None
        if self.fam is not None:
            fam_s, _ = cut_stamps(self.fam, ix, iy, half)
            if self.noise is not None:
                keep = (fam_s == 0) | (fam_s == family[:, None, None])
                noise, _ = cut_stamps(self.noise, ix, iy, half)
                img = np.where(keep, img, noise)
        return img, on, fam_s

    def planes(self, ix, iy, half):
        var, _ = cut_stamps(self.variance, ix, iy, half)
        msk, _ = cut_stamps(self.mask, ix, iy, half)
        return var.astype(float), msk

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
        out = self.image.copy()
        if self.model is not None:
            out -= self.model
        if self.noise is not None:
            labelled = self.fam != 0
            out[labelled] = self.noise[labelled]
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


def add_models(target, stamps, ox, oy):
    """Add ``(n, k, k)`` stamps with origins ``(ox, oy)`` into the 2-D ``target``."""
    if stamps.shape[0] == 0:
        return
    ny, nx = target.shape
    k = stamps.shape[1]
    rows = (oy[:, None] + np.arange(k))[:, :, None]
    cols = (ox[:, None] + np.arange(k))[:, None, :]
    ok = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
    flat = np.broadcast_to(rows * nx + cols, stamps.shape)[ok]
    np.add.at(target.ravel(), flat, stamps[ok].astype(target.dtype))


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
