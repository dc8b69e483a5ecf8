"""Coadd PSFs: weighted means of input PSFs warped into the coadd frame (``CoaddPsf``).

See ``reference/algorithms.md`` 3.7 and 4.4.  At a coadd position, each input
that covers it contributes its own PSF, evaluated at the corresponding input
position and warped through the local affine approximation of the WCS pair
(:func:`warped_psf_kernel`); the coadd PSF is ``sum w_c K_c / sum w_c`` on the
union of the component stamps, renormalised to sum 1 (:func:`combine_psf_kernels`).
A coadd's PSF is the union of its warps' per-detector components, each with
its valid polygon (:func:`combine_coadd_psfs`, a
:class:`~store.coadd_psf.CoaddPsf`), so that it is
evaluated from exactly the inputs covering a position; a PSF can also be
tabulated on a grid of positions as a :class:`store.psf.GridPsf`
(:func:`build_grid_psf`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np

from store.coadd_psf import CoaddPsf
from store.geom import Box
from store.psf import GridPsf, Psf

from .warp import warp_psf_kernel

__all__ = ["build_grid_psf", "combine_coadd_psfs", "combine_psf_kernels", "psf_grid_centers",
           "warped_psf_kernel"]


def combine_psf_kernels(kernels: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted mean of centred PSF kernels, normalised to sum 1.

    Parameters
    ----------
    kernels : sequence of numpy.ndarray
        Odd square kernels, each centred on its central pixel, already in the
        coadd frame; sizes may differ (smaller ones are zero-padded).
    weights : sequence of float
        Non-negative weights, one per kernel (the inputs' coadd weights).

    Returns
    -------
    numpy.ndarray
        ``(k, k)`` float64 kernel with ``k`` the largest input size.

    Examples
    --------
    >>> a = np.zeros((3, 3)); a[1, 1] = 1.0
    >>> b = np.full((5, 5), 1 / 25)
    >>> out = combine_psf_kernels([a, b], [1.0, 1.0])
    >>> out.shape, round(float(out[2, 2]), 3), round(float(out.sum()), 12)
    ((5, 5), 0.52, 1.0)
    """
    if len(kernels) == 0:
        raise ValueError("need at least one kernel to combine, got 0")
    weights = np.asarray(weights, dtype=float).reshape(-1)
    if weights.size != len(kernels):
        raise ValueError(f"got {len(kernels)} kernels but {weights.size} weights")
    if np.any(~np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {weights.tolist()}")
    size = 0
    for k in kernels:
        if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] % 2 == 0:
            raise ValueError(f"kernels must be odd square arrays, got shape {k.shape}")
        size = max(size, k.shape[0])
    out = np.zeros((size, size))
    for k, w in zip(kernels, weights, strict=True):
        pad = (size - k.shape[0]) // 2
        out[pad: size - pad, pad: size - pad] += w * np.asarray(k, dtype=float)
    out /= weights.sum()
    total = out.sum()
    return out / total if total != 0 else out


def warped_psf_kernel(psf: Psf, x_src: float, y_src: float, jacobian: np.ndarray, *,
                      size: int | None = None, order: int = 3) -> np.ndarray:
    """An input PSF at an input position, seen in the coadd frame.

    Parameters
    ----------
    psf : store.psf.Psf
        The input (detector) PSF model.
    x_src, y_src : float
        Position in the input's pixel coordinates (pixels).
    jacobian : numpy.ndarray
        ``(2, 2)`` ``d input / d coadd`` pixel Jacobian at that point
        (:func:`processing.algorithms.warp.local_jacobian`).
    size : int, optional
        Odd output side in coadd pixels (default: the model's kernel size).
    order : int
        Lanczos order of the resampling.

    Returns
    -------
    numpy.ndarray
        ``(size, size)`` kernel centred on its central pixel, summing to 1.
    """
    kernel = psf.kernel_image(float(x_src), float(y_src))
    return warp_psf_kernel(kernel, jacobian, size=size, order=order)


def psf_grid_centers(bbox: Box, n_x: int, n_y: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres of an ``n_x x n_y`` grid of equal cells covering ``bbox`` (pixels)."""
    if n_x < 1 or n_y < 1:
        raise ValueError(f"grid must have at least 1 x 1 cells, got {n_x} x {n_y}")
    x = bbox.x0 - 0.5 + (np.arange(n_x) + 0.5) * bbox.width / n_x
    y = bbox.y0 - 0.5 + (np.arange(n_y) + 0.5) * bbox.height / n_y
    return x, y


def build_grid_psf(
    bbox: Box,
    kernel_at: Callable[[float, float], np.ndarray] | None = None,
    *,
    n_x: int = 5,
    n_y: int = 5,
    kernels: np.ndarray | None = None,
    mode: str = "bilinear",
) -> GridPsf:
    """Tabulate a spatially varying (coadd) PSF over a box as a :class:`store.psf.GridPsf`.

    Parameters
    ----------
    bbox : Box
        The region (e.g. a patch's outer box) in coadd pixels.
    kernel_at : callable, optional
        ``kernel_at(x, y)`` returns the combined kernel at a position; all
        kernels must share one odd size.  Called at :func:`psf_grid_centers`.
    n_x, n_y : int
        Grid cells along x and y.
    kernels : numpy.ndarray, optional
        Precomputed ``(n_y, n_x, k, k)`` kernels at the grid centres, instead
        of ``kernel_at`` (e.g. one per cell for cell coadds).
    mode : {"bilinear", "nearest"}
        Interpolation between grid nodes (nearest = piecewise, as for cells).

    Returns
    -------
    store.psf.GridPsf
    """
    xc, yc = psf_grid_centers(bbox, n_x, n_y)
    if (kernel_at is None) == (kernels is None):
        raise ValueError("give exactly one of kernel_at and kernels")
    if kernels is None:
        images = [[np.asarray(kernel_at(float(x), float(y)), dtype=float) for x in xc] for y in yc]
        sizes = {k.shape for row in images for k in row}
        if len(sizes) != 1:
            raise ValueError(f"kernel_at returned kernels of several shapes: {sorted(sizes)}")
        kernels = np.array(images)
    kernels = np.asarray(kernels, dtype=float)
    if kernels.shape[:2] != (n_y, n_x):
        raise ValueError(f"kernels must have shape ({n_y}, {n_x}, k, k), got {kernels.shape}")
    return GridPsf(kernels, xc, yc, mode=mode)


def combine_coadd_psfs(psfs: Sequence[Psf], weights: Sequence[float], bbox: Box, *,
                       n_grid: int = 5) -> CoaddPsf:
    """The PSF of a coadd of warps: every warp's components with the warp's weight.

    Parameters
    ----------
    psfs : sequence of store.psf.Psf
        The warps' PSFs in the coadd frame.  A :class:`CoaddPsf` (one component
        per detector, from make_warp) contributes each component with its
        polygon and ``weight x component weight``; any other PSF counts as one
        component valid over the whole ``bbox`` (with a warning: it has no
        valid region, so it is used even where the warp has no data).
    weights : sequence of float
        The warps' coadd weights (positive).
    bbox : Box
        The coadd box, pixels.
    n_grid : int
        Nodes per side of every component's grid: components tabulated on
        another grid are re-tabulated (bilinear) over the same span.

    Returns
    -------
    CoaddPsf
        Kernels of the largest input size (smaller ones zero-padded).
    """
    weights = np.asarray(weights, dtype=float).reshape(-1)
    if len(psfs) == 0 or weights.size != len(psfs):
        raise ValueError(f"need one weight per PSF and at least one PSF, got {len(psfs)} PSFs "
                         f"and {weights.size} weights")
    if not np.all(np.isfinite(weights) & (weights > 0)):
        raise ValueError(f"weights must be finite and > 0, got {weights.tolist()}")
    parts = []  # (kernels (ny, nx, k, k), x centres, y centres, weight, polygon)
    n_plain = 0
    for psf, w in zip(psfs, weights, strict=True):
        if isinstance(psf, CoaddPsf):
            for c in range(psf.n_components):
                parts.append((psf.kernels[c], psf.x_centers[c], psf.y_centers[c],
                              w * psf.weights[c], psf.polygons[c]))
            continue
        n_plain += 1
        xc, yc = psf_grid_centers(bbox, n_grid, n_grid)
        kernels = np.array([[psf.kernel_image(float(x), float(y)) for x in xc] for y in yc])
        (xa, ya), (xb, yb) = bbox.corners()[0], bbox.corners()[2]
        outline = np.array([[xa, ya], [xb, ya], [xb, yb], [xa, yb]], dtype=float)
        parts.append((kernels, xc, yc, w, outline))
    if n_plain:
        warnings.warn(f"{n_plain} of {len(psfs)} input PSFs have no valid polygons (not a "
                      f"CoaddPsf: warps made before per-detector PSFs?); they count everywhere "
                      f"in {bbox}", stacklevel=2)
    size = max(p[0].shape[-1] for p in parts)
    kernels = np.zeros((len(parts), n_grid, n_grid, size, size), dtype=np.float32)
    xcs, ycs = np.empty((len(parts), n_grid)), np.empty((len(parts), n_grid))
    for c, (kern, xc, yc, _, _) in enumerate(parts):
        if kern.shape[:2] != (n_grid, n_grid):
            grid = GridPsf(kern, xc, yc)
            xc = np.linspace(xc[0], xc[-1], n_grid)
            yc = np.linspace(yc[0], yc[-1], n_grid)
            kern = np.array([[grid.kernel_image(float(x), float(y)) for x in xc] for y in yc])
        pad = (size - kern.shape[-1]) // 2
        kernels[c, :, :, pad:size - pad, pad:size - pad] = kern
        xcs[c], ycs[c] = xc, yc
    return CoaddPsf(kernels, xcs, ycs, [p[3] for p in parts], [p[4] for p in parts])
