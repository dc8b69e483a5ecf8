"""Coadd images per patch and band, their coverage and clipping, and the cell-coadd PSF map.

Coadd panels
    Each ``deep_coadd`` (nJy) is shown block-averaged to at most
    ``max_pixels`` on a side, with an asinh stretch ``asinh((I - m) / (2 s))``
    (``m``, ``s``: median and robust sigma of the binned image, so the
    sky noise sits in the linear part and bright stars are compressed), the
    pixels whose mask has a ``CLIPPED`` bit (an input was rejected there as an
    artefact) in red, and NO_DATA in blue; beside it the ``deep_coadd_n_image``
    map (number of inputs per pixel).

Cell-coadd PSF
    The PSF FWHM of every cell of the ``deep_coadd_cell`` datasets.  The
    cell-coadd format is written by the cell-coadd task; this module reads what
    that :class:`~store.formats.fits.FitsBundle` provides, in this order:

    1. a table (any name) with integer columns ``cell_x``, ``cell_y`` and a
       column ``psf_fwhm`` (arcsec; also accepted: ``psfFwhm``, ``fwhm``), or
       adaptive moments ``psf_ixx``, ``psf_iyy``, ``psf_ixy`` (pixel^2);
    2. an array ``PSF`` of per-cell PSF images, shape ``(ny, nx, k, k)``, or
       ``(n, k, k)`` in the row order of a table with ``cell_x``/``cell_y``;
       their adaptive moments are measured here.

    Moments become arcsec with the header's ``PIXSCALE`` (arcsec/pixel), else
    the 0.2"/pixel of the sky map's default.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from store.errors import DrpError
from store.masks import bits

from .data import ReportData
from .render import Figure, Section, new_figure, robust_sigma, to_png

__all__ = ["CoaddPanel", "bin_image", "cell_psf_fwhm", "coadd_section", "collect_coadd_panels",
           "stretch"]

_FWHM_PER_SIGMA = float(np.sqrt(8.0 * np.log(2.0)))
_DEFAULT_PIXEL_SCALE = 0.2  # arcsec/pixel, the sky map default


def bin_image(array: np.ndarray, factor: int, *, reduce: str = "mean") -> np.ndarray:
    """Block-reduce a 2-D array by an integer factor (edges cropped).

    Parameters
    ----------
    array : numpy.ndarray
        ``(ny, nx)`` image; NaNs are ignored by ``mean``.
    factor : int
        Block size, pixels.
    reduce : {"mean", "any"}
        NaN-ignoring mean, or "any pixel true" of a boolean array.

    Returns
    -------
    numpy.ndarray
        ``(ny // factor, nx // factor)``.
    """
    if factor <= 1:
        return np.asarray(array, dtype=float) if reduce == "mean" else np.asarray(array, bool)
    ny, nx = (s // factor for s in array.shape)
    blocks = np.asarray(array)[:ny * factor, :nx * factor].reshape(ny, factor, nx, factor)
    if reduce == "any":
        return blocks.any(axis=(1, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        return np.nanmean(blocks.astype(np.float32), axis=(1, 3))


def stretch(image: np.ndarray) -> tuple[np.ndarray, float, float]:
    """asinh stretch of an image: (display values, vmin, vmax)."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return np.zeros_like(image), 0.0, 1.0
    med, sig = float(np.median(finite)), robust_sigma(finite)
    soft = 2.0 * sig if sig > 0 else max(float(np.ptp(finite)), 1.0) / 100.0
    shown = np.arcsinh((image - med) / soft)
    vmax = float(np.percentile(shown[np.isfinite(shown)], 99.7))
    return shown, float(np.arcsinh(-2.0 * sig / soft)) if sig > 0 else -1.0, max(vmax, 1.0)


@dataclass(frozen=True)
class CoaddPanel:
    """One coadd, binned for display.

    Attributes
    ----------
    data_id : dict
        skymap, tract, patch, band.
    image : numpy.ndarray
        Block-averaged image, nJy (NaN where every pixel is NO_DATA).
    clipped, no_data : numpy.ndarray of bool
        Blocks with at least one CLIPPED / NO_DATA pixel.
    n_image : numpy.ndarray or None
        Block-averaged number of inputs (None without ``deep_coadd_n_image``).
    clipped_fraction, no_data_fraction : float
        Fraction of the full-resolution pixels with the bit set.
    n_image_median : float
        Median number of inputs over pixels with data.
    """

    data_id: dict
    image: np.ndarray
    clipped: np.ndarray
    no_data: np.ndarray
    n_image: np.ndarray | None
    clipped_fraction: float
    no_data_fraction: float
    n_image_median: float

    @property
    def label(self) -> str:
        """``tract T patch P``."""
        return f"tract {self.data_id.get('tract')} patch {self.data_id.get('patch')}"


def _key(ref) -> tuple:
    return tuple(sorted(ref.data_id.items()))


def collect_coadd_panels(data: ReportData, band: str, *, max_patches: int = 8,
                         max_pixels: int = 400) -> tuple[list[CoaddPanel], int]:
    """Binned coadds of one band, in patch order.

    Parameters
    ----------
    data : ReportData
    band : str
        Band of the coadds.
    max_patches : int
        Read at most this many patches.
    max_pixels : int
        Largest side after binning, pixels (the binning factor is an integer).

    Returns
    -------
    panels : list of CoaddPanel
    n_more : int
        Patches of the band left out by ``max_patches``.
    """
    refs = data.refs("deep_coadd", "band = $b", {"b": band})
    n_refs = {_key(r): r for r in data.refs("deep_coadd_n_image", "band = $b", {"b": band})}
    clipped_bit, nodata_bit = bits("CLIPPED"), bits("NO_DATA")
    panels = []
    for ref in refs[:max_patches]:
        exposure = data.get(ref)
        factor = max(1, int(np.ceil(max(exposure.image.shape) / max_pixels)))
        mask = exposure.mask if exposure.mask is not None else np.zeros(exposure.image.shape,
                                                                          np.int32)
        clipped = (mask & clipped_bit) != 0
        nodata = (mask & nodata_bit) != 0
        image = np.where(nodata, np.nan, exposure.image)
        n_ref = n_refs.get(_key(ref))
        n_image = np.asarray(data.get(n_ref)) if n_ref is not None else None
        n_med = (float(np.median(n_image[~nodata])) if n_image is not None
                 and n_image.shape == nodata.shape and (~nodata).any() else float("nan"))
        panels.append(CoaddPanel(
            data_id=dict(ref.data_id), image=bin_image(image, factor),
            clipped=bin_image(clipped, factor, reduce="any"),
            no_data=bin_image(nodata, factor, reduce="any"),
            n_image=bin_image(n_image, factor) if n_image is not None else None,
            clipped_fraction=float(clipped.mean()), no_data_fraction=float(nodata.mean()),
            n_image_median=n_med))
    return panels, max(0, len(refs) - max_patches)


def _overlay(ax, boolean: np.ndarray, rgb: tuple[float, float, float], alpha: float) -> None:
    rgba = np.zeros((*boolean.shape, 4))
    rgba[..., :3] = rgb
    rgba[..., 3] = np.where(boolean, alpha, 0.0)
    ax.imshow(rgba, origin="lower", interpolation="nearest")


def _plot_band(band: str, panels: list[CoaddPanel]) -> bytes:
    per_row = 2
    nrows = (len(panels) + per_row - 1) // per_row
    fig, axes = new_figure(12.0, 3.3 * nrows, nrows, 2 * per_row)
    n_max = max([np.nanmax(p.n_image) for p in panels if p.n_image is not None
                 and np.isfinite(p.n_image).any()] or [1.0])
    for ax in axes.ravel():
        ax.set_axis_off()
    for i, p in enumerate(panels):
        ax_img, ax_n = axes[i // per_row, 2 * (i % per_row)], axes[i // per_row, 2 * (i % per_row) + 1]
        shown, vmin, vmax = stretch(p.image)
        cmap = _gray_with_nan()
        ax_img.imshow(shown, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax,
                      interpolation="nearest")
        _overlay(ax_img, p.clipped, (1.0, 0.1, 0.1), 0.75)
        _overlay(ax_img, p.no_data, (0.2, 0.4, 1.0), 0.35)
        ax_img.set_title(f"{p.label} ({band}); CLIPPED {100 * p.clipped_fraction:.2f}%",
                         fontsize=8)
        ax_img.set_axis_on()
        ax_img.set_xticks([])
        ax_img.set_yticks([])
        if p.n_image is not None:
            im = ax_n.imshow(p.n_image, origin="lower", cmap="magma", vmin=0, vmax=n_max,
                             interpolation="nearest")
            fig.colorbar(im, ax=ax_n, shrink=0.8, label="n_image")
            ax_n.set_title(f"inputs per pixel (median {p.n_image_median:.0f})", fontsize=8)
            ax_n.set_axis_on()
            ax_n.set_xticks([])
            ax_n.set_yticks([])
    return to_png(fig)


def _gray_with_nan():
    from matplotlib import colormaps

    return colormaps["gray"].with_extremes(bad=(0.85, 0.85, 1.0))


# -- cell coadds ---------------------------------------------------------------------------
def _column(table, *names):
    have = {c.lower(): c for c in table.column_names}
    for name in names:
        if name.lower() in have:
            return np.asarray(table.column(have[name.lower()]).to_numpy(zero_copy_only=False),
                              dtype=float)
    return None


def _moments_fwhm(ixx, iyy, ixy, scale):
    with np.errstate(invalid="ignore"):
        return _FWHM_PER_SIGMA * (ixx * iyy - ixy**2) ** 0.25 * scale


def cell_psf_fwhm(bundle) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Per-cell PSF FWHM of a cell coadd (see the module notes for what is read).

    Parameters
    ----------
    bundle : store.formats.fits.FitsBundle
        A ``deep_coadd_cell`` dataset.

    Returns
    -------
    (cell_x, cell_y, fwhm) or None
        ``(n,)`` arrays, FWHM in arcsec; None when the bundle has no per-cell PSF.
    """
    scale = float(bundle.header.get("PIXSCALE", _DEFAULT_PIXEL_SCALE) or _DEFAULT_PIXEL_SCALE)
    cells = None
    for table in bundle.tables.values():
        cx, cy = _column(table, "cell_x"), _column(table, "cell_y")
        if cx is None or cy is None:
            continue
        cells = (cx, cy)
        fwhm = _column(table, "psf_fwhm", "psfFwhm", "fwhm")
        if fwhm is not None:
            return cx, cy, fwhm
        mom = [_column(table, f"psf_{m}") for m in ("ixx", "iyy", "ixy")]
        if all(m is not None for m in mom):
            return cx, cy, _moments_fwhm(*mom, scale)
    arrays = {k.upper(): v for k, v in bundle.arrays.items()}
    psf = arrays.get("PSF")
    if psf is None or psf.ndim not in (3, 4):
        return None
    from processing.algorithms.moments import adaptive_moments

    if psf.ndim == 4:
        ny, nx = psf.shape[:2]
        gy, gx = np.mgrid[0:ny, 0:nx]
        cx, cy = gx.ravel().astype(float), gy.ravel().astype(float)
        stamps = psf.reshape(ny * nx, *psf.shape[2:])
    elif cells is not None and len(cells[0]) == psf.shape[0]:
        cx, cy = cells
        stamps = psf
    else:
        return None
    half = stamps.shape[-1] // 2
    res = adaptive_moments(np.asarray(stamps, dtype=float), half, half, initial=2.25)
    return cx, cy, _moments_fwhm(res.xx, res.yy, res.xy, scale)


def _plot_cells(maps: list[tuple[str, np.ndarray]], vmin: float, vmax: float) -> bytes:
    ncols = min(4, len(maps))
    nrows = (len(maps) + ncols - 1) // ncols
    fig, axes = new_figure(3.3 * ncols + 0.8, 3.0 * nrows, nrows, ncols)
    for ax in axes.ravel():
        ax.set_axis_off()
    im = None
    for ax, (label, grid) in zip(axes.ravel(), maps, strict=False):
        im = ax.imshow(grid, origin="lower", cmap="viridis", vmin=vmin, vmax=vmax,
                       interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.set_axis_on()
        ax.set_xlabel("cell x", fontsize=8)
        ax.set_ylabel("cell y", fontsize=8)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="cell PSF FWHM [arcsec]")
    return to_png(fig)


def _cell_items(data: ReportData, section: Section, max_patches: int) -> None:
    refs = data.refs("deep_coadd_cell")
    if not refs:
        section.note(f"No cell coadds (deep_coadd_cell) in {data.label}: run "
                     "assemble_cell_coadd to get the per-cell PSF map.")
        return
    maps, unread, values = [], 0, []
    for ref in refs[:max_patches]:
        try:
            got = cell_psf_fwhm(data.get(ref))
        except DrpError as err:
            warnings.warn(f"report: cannot read {ref.dataset_type} {ref.data_id}: {err}",
                          stacklevel=2)
            got = None
        if got is None:
            unread += 1
            continue
        cx, cy, fwhm = got
        ix, iy = cx.astype(int) - int(cx.min()), cy.astype(int) - int(cy.min())
        grid = np.full((iy.max() + 1, ix.max() + 1), np.nan)
        grid[iy, ix] = fwhm
        label = f"tract {ref.data_id.get('tract')} patch {ref.data_id.get('patch')}"
        maps.append((f"{label} ({ref.data_id.get('band')})", grid))
        values.append(fwhm[np.isfinite(fwhm)])
    if unread:
        section.note(f"{unread} deep_coadd_cell dataset(s) hold no per-cell PSF this report "
                     "can read (a table with cell_x, cell_y, psf_fwhm or a PSF image array).")
    if not maps:
        return
    allv = np.concatenate(values) if values else np.array([np.nan])
    vmin, vmax = (float(np.nanpercentile(allv, 1)), float(np.nanpercentile(allv, 99))) \
        if np.isfinite(allv).any() else (0.0, 1.0)
    omitted = len(refs) - min(len(refs), max_patches)
    caption = (
        "PSF FWHM of each cell of the cell-based coadds (one panel per patch and band; empty "
        "cells had no input). Good: the FWHM changes smoothly from cell to cell, tracking the "
        "seeing of the inputs; single cells much sharper or broader than their neighbours "
        "point to a cell with few or odd inputs. "
        f"Range over cells: {vmin:.2f}-{vmax:.2f}\" (1st-99th percentile)."
        + (f" {omitted} more patch(es) not shown." if omitted else ""))
    section.items.append(Figure("Cell-coadd PSF FWHM", caption, _plot_cells(maps, vmin, vmax)))


def coadd_section(data: ReportData, *, max_patches: int = 8, max_pixels: int = 400) -> Section:
    """The "Coadds" section: images with coverage and CLIPPED pixels, and the cell PSF map.

    Parameters
    ----------
    data : ReportData
    max_patches : int
        Patches shown per band (the first in patch order; the caption says how many
        more there are).
    max_pixels : int
        Largest side of a shown image, pixels after binning.
    """
    section = Section("Coadds",
                      "The deep coadd of each patch and band with its input count, the pixels "
                      "where inputs were clipped as artefacts, and the PSF of the cell coadds.")
    bands = sorted({str(r.data_id.get("band")) for r in data.refs("deep_coadd")})
    if not bands:
        section.note(f"No deep_coadd datasets in {data.label}: run make_warp and "
                     "assemble_coadd to get coadd images.")
    for band in bands:
        panels, omitted = collect_coadd_panels(data, band, max_patches=max_patches,
                                               max_pixels=max_pixels)
        clipped = np.array([p.clipped_fraction for p in panels])
        n_med = np.array([p.n_image_median for p in panels])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # no n_image at all: NaN
            n_text = (f"median n_image per patch {np.nanmin(n_med):.0f}-{np.nanmax(n_med):.0f}"
                      if np.isfinite(n_med).any() else "no deep_coadd_n_image maps")
        caption = (
            f"Band {band}: {len(panels)} patch coadd(s), asinh stretch (grey; pale blue: no "
            "data), pixels with a CLIPPED input in red; right of each, the number of inputs "
            "per pixel. Good: a smooth background without residual satellite trails or ghosts "
            "(the safe-clip coadd removes them: they appear as red CLIPPED strips, not as "
            "bright features), few clipped pixels outside such artefacts (well below 1%), and "
            "n_image close to the number of selected visits except near the field edges. "
            f"CLIPPED covers {100 * np.mean(clipped):.2f}% of pixels on average; {n_text}."
            + (f" {omitted} more patch(es) of this band not shown." if omitted else ""))
        section.items.append(Figure(f"Coadds, band {band}", caption, _plot_band(band, panels)))
    _cell_items(data, section, max_patches)
    return section

