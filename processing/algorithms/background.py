"""Sky background: sigma-clipped means on a grid of bins, smoothly interpolated.

Follows meas_algorithms ``SubtractBackgroundTask`` (``reference/algorithms.md``
A.9): the image is cut into bins of ``bin_size`` pixels, each bin's sky is the
sigma-clipped mean (MEANCLIP, A.1) of its unmasked pixels, and the full-resolution
model is a separable Akima spline through the bin centres, with the order
reduced when a direction has few bins (afw ``REDUCE_INTERP_ORDER``: Akima for
>= 5 bins, natural cubic spline for 3-4, linear for 2, constant for 1).

Decisions where afw was not followed exactly:

* afw divides the image into bins of (nearly) equal size; here every bin has the
  same size ``ceil(width / ceil(width / bin_size))`` so that all bins are clipped
  at once as one reshaped array, and the last bin may be narrower.  Its centre is
  the centre of the pixels it really covers.
* Rubin's production default approximates the bin grid with a Chebyshev
  polynomial (``useApprox``); drp interpolates the grid directly, which follows
  sky features on the scale of a few bins.
* Beyond the outermost bin centres the model is extended linearly with the
  spline's end slope (a cubic extension over half a bin can overshoot).
* Bins with fewer than ``min_good_fraction`` unmasked pixels are filled by
  interpolating (and linearly extending) the valid bins of their row, then of
  their column, so a masked corner follows the sky gradient.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import Akima1DInterpolator, CubicSpline

from store.formats import FitsBundle
from store.masks import bits

from ._background_kernels import bin_meanclip, hermite_rows
from .stats import IQR_TO_SIGMA

__all__ = [
    "BackgroundConfig",
    "BackgroundList",
    "BackgroundModel",
    "estimate_background",
    "subtract_background",
]

_FORMAT = "drp-background/1"


@dataclass(frozen=True)
class BackgroundConfig:
    """Settings of :func:`estimate_background`.

    Attributes
    ----------
    bin_size : int
        Nominal bin side, pixels (Rubin ``binSize`` 128).
    n_sigma : float
        Clipping half-width of MEANCLIP, standard deviations.
    n_iter : int
        Clipping passes of MEANCLIP.
    ignored_mask_planes : tuple of str
        Pixels with any of these planes set do not enter the bin statistics.
    min_good_fraction : float
        A bin needs at least this fraction of its pixels unmasked and finite to
        be measured; otherwise it is filled from its neighbours.
    """

    bin_size: int = 128
    n_sigma: float = 3.0
    n_iter: int = 3
    ignored_mask_planes: tuple[str, ...] = (
        "BAD", "EDGE", "DETECTED", "DETECTED_NEGATIVE", "NO_DATA", "SAT",
    )
    min_good_fraction: float = 0.05

    def __post_init__(self) -> None:
        if self.bin_size < 1:
            raise ValueError(f"bin_size must be >= 1 pixel, got {self.bin_size}")
        if self.n_sigma <= 0 or self.n_iter < 1:
            raise ValueError(f"need n_sigma > 0 and n_iter >= 1, got {self.n_sigma}, {self.n_iter}")
        if not 0.0 < self.min_good_fraction <= 1.0:
            raise ValueError(f"min_good_fraction must be in (0, 1], got {self.min_good_fraction}")
        bits(self.ignored_mask_planes)  # fail early on an unknown plane name


@dataclass(frozen=True, eq=False)
class BackgroundModel:
    """One background layer: a grid of bin statistics and how to interpolate it.

    Attributes
    ----------
    stats_image : numpy.ndarray
        ``(ny_bins, nx_bins)`` clipped-mean sky per bin, ADU (holes filled).
    n_good : numpy.ndarray
        ``(ny_bins, nx_bins)`` int, unmasked pixels that entered each bin (0 for
        filled bins).
    x_centers, y_centers : numpy.ndarray
        Bin centres along x and y, pixels (array coordinates of the image).
    bin_width, bin_height : int
        Bin size used, pixels.
    shape : tuple of int
        ``(height, width)`` of the image the model describes.
    """

    stats_image: np.ndarray
    n_good: np.ndarray
    x_centers: np.ndarray
    y_centers: np.ndarray
    bin_width: int
    bin_height: int
    shape: tuple[int, int]

    def __repr__(self) -> str:
        ny, nx = self.stats_image.shape
        return (f"BackgroundModel(shape={self.shape}, bins={ny}x{nx} of "
                f"{self.bin_height}x{self.bin_width} px, sky_level={self.sky_level():.4g})")

    def sky_level(self) -> float:
        """Median of the finite bin values, ADU (one layer's share of ``skyBg``)."""
        finite = self.stats_image[np.isfinite(self.stats_image)]
        return float(np.median(finite)) if finite.size else float("nan")

    def evaluate(self, *, x0: int = 0, y0: int = 0, width: int | None = None,
                 height: int | None = None) -> np.ndarray:
        """Evaluate the model on the image grid (or on a sub-box of it).

        Parameters
        ----------
        x0, y0 : int
            Lower-left pixel of the box, in the model's array coordinates.
        width, height : int, optional
            Box size in pixels; default: to the end of the image.

        Returns
        -------
        numpy.ndarray
            ``(height, width)`` float32 background, ADU.
        """
        width = self.shape[1] - x0 if width is None else width
        height = self.shape[0] - y0 if height is None else height
        xs = np.arange(x0, x0 + width, dtype=float)
        ys = np.arange(y0, y0 + height, dtype=float)
        # Separable: interpolate each bin row along x, then every column along y.
        rows = _interp_1d(self.x_centers, self.stats_image.T, xs)  # (width, ny)
        # float32 for the big product: the model is good to ~1e-7 relative.
        return _interp_rows(self.y_centers, rows.T, ys)  # (height, width)

    def to_bundle(self) -> FitsBundle:
        """Return the model as a :class:`~store.formats.FitsBundle` (arrays + header)."""
        header = {"BGFORMAT": _FORMAT, "IMWIDTH": self.shape[1], "IMHEIGHT": self.shape[0],
                  "BINW": self.bin_width, "BINH": self.bin_height, "BUNIT": "adu"}
        arrays = {"stats": self.stats_image.astype(np.float32), "ngood": self.n_good.astype(np.int32),
                  "xcen": np.asarray(self.x_centers, float), "ycen": np.asarray(self.y_centers, float)}
        return FitsBundle(header=header, arrays=arrays)

    @classmethod
    def from_bundle(cls, bundle: FitsBundle, prefix: str = "") -> BackgroundModel:
        """Rebuild a model written by :meth:`to_bundle` (``prefix`` selects a list layer)."""
        h, a = bundle.header, bundle.arrays
        if h.get("BGFORMAT") != _FORMAT:
            raise ValueError(f"bundle is not a drp background (BGFORMAT={h.get('BGFORMAT')!r})")
        return cls(stats_image=np.asarray(a[f"{prefix}stats"], np.float32),
                   n_good=np.asarray(a[f"{prefix}ngood"], np.int32),
                   x_centers=np.asarray(a[f"{prefix}xcen"], float),
                   y_centers=np.asarray(a[f"{prefix}ycen"], float),
                   bin_width=int(h["BINW"]), bin_height=int(h["BINH"]),
                   shape=(int(h["IMHEIGHT"]), int(h["IMWIDTH"])))


@dataclass(eq=False)
class BackgroundList(Sequence[BackgroundModel]):
    """Ordered background layers whose sum is the total sky (Rubin ``BackgroundList``)."""

    layers: list[BackgroundModel] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index):  # type: ignore[override]
        return self.layers[index]

    def __iter__(self) -> Iterator[BackgroundModel]:
        return iter(self.layers)

    def __repr__(self) -> str:
        return f"BackgroundList({len(self.layers)} layers, sky_level={self.sky_level():.4g})"

    def append(self, model: BackgroundModel) -> None:
        """Add a layer (all layers must describe images of the same shape)."""
        if self.layers and model.shape != self.layers[0].shape:
            raise ValueError(f"layer shape {model.shape} differs from {self.layers[0].shape}")
        self.layers.append(model)

    def evaluate(self, **box) -> np.ndarray:
        """Sum of all layers on the image grid (same arguments as :meth:`BackgroundModel.evaluate`)."""
        if not self.layers:
            raise ValueError("cannot evaluate an empty BackgroundList")
        total = self.layers[0].evaluate(**box)
        for layer in self.layers[1:]:
            total += layer.evaluate(**box)
        return total

    def sky_level(self) -> float:
        """``skyBg``: sum over layers of the median finite bin value, ADU (0 if empty)."""
        return float(sum(layer.sky_level() for layer in self.layers))

    def to_bundle(self) -> FitsBundle:
        """All layers in one bundle: arrays ``l<i>_stats`` etc., header ``NLAYERS``."""
        out = FitsBundle(header={"BGFORMAT": _FORMAT, "NLAYERS": len(self.layers)})
        for i, layer in enumerate(self.layers):
            sub = layer.to_bundle()
            out.header.update({k: v for k, v in sub.header.items() if k != "BGFORMAT"})
            out.arrays.update({f"l{i}_{k}": v for k, v in sub.arrays.items()})
            # Bin sizes may differ between layers.
            out.header[f"BINW{i}"], out.header[f"BINH{i}"] = layer.bin_width, layer.bin_height
        return out

    @classmethod
    def from_bundle(cls, bundle: FitsBundle) -> BackgroundList:
        """Rebuild a list written by :meth:`to_bundle`."""
        h = bundle.header
        layers = []
        for i in range(int(h.get("NLAYERS", 0))):
            sub = FitsBundle(header={**h, "BINW": h[f"BINW{i}"], "BINH": h[f"BINH{i}"]},
                             arrays=bundle.arrays)
            layers.append(BackgroundModel.from_bundle(sub, prefix=f"l{i}_"))
        return cls(layers)


def estimate_background(image: np.ndarray, mask: np.ndarray | None = None,
                        config: BackgroundConfig | None = None) -> BackgroundModel:
    """Measure the sky on a grid of bins.

    Parameters
    ----------
    image : numpy.ndarray
        ``(height, width)`` image, ADU.  Non-finite pixels are ignored.
    mask : numpy.ndarray, optional
        ``(height, width)`` integer mask; pixels with any of
        ``config.ignored_mask_planes`` set are ignored.
    config : BackgroundConfig, optional
        Settings; defaults to ``BackgroundConfig()``.

    Returns
    -------
    BackgroundModel
        The bin grid; call ``.evaluate()`` for the full-resolution model.

    Raises
    ------
    ValueError
        If the image is not 2-D, the mask shape differs, or no bin has enough
        usable pixels.

    Examples
    --------
    >>> img = np.full((256, 256), 100.0, dtype=np.float32)
    >>> model = estimate_background(img, config=BackgroundConfig(bin_size=64))
    >>> float(model.evaluate()[10, 200])
    100.0
    """
    config = config or BackgroundConfig()
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    if mask is not None and np.shape(mask) != image.shape:
        raise ValueError(f"mask shape {np.shape(mask)} differs from image shape {image.shape}")
    height, width = image.shape
    nx = -(-width // config.bin_size)
    ny = -(-height // config.bin_size)
    bw, bh = -(-width // nx), -(-height // ny)

    # MEANCLIP of every bin, read in place (see _background_kernels.bin_meanclip).
    ignored = bits(config.ignored_mask_planes) if mask is not None else 0
    mean = np.zeros((ny, nx))
    n_good = np.zeros((ny, nx), dtype=np.int64)
    bin_meanclip(image, np.asarray(mask) if ignored else None, ignored, bh, bw,
                 float(config.n_sigma), IQR_TO_SIGMA, int(config.n_iter), mean, n_good)
    # Pixels actually inside the image for each bin (the last row/column may be short).
    real = (np.minimum(bh, height - bh * np.arange(ny))[:, None]
            * np.minimum(bw, width - bw * np.arange(nx))[None, :])
    valid = n_good >= np.maximum(1, config.min_good_fraction * real)
    if not valid.any():
        raise ValueError(f"no background bin has >= {config.min_good_fraction:.0%} usable pixels "
                         f"(image {width}x{height}, bin {config.bin_size})")
    if not valid.all():
        warnings.warn(f"{int((~valid).sum())} of {valid.size} background bins had too few usable "
                      "pixels and were filled from their neighbours", stacklevel=2)
    x_centers = np.minimum(bw * np.arange(nx) + (bw - 1) / 2.0,
                           (bw * np.arange(nx) + width - 1) / 2.0)
    y_centers = np.minimum(bh * np.arange(ny) + (bh - 1) / 2.0,
                           (bh * np.arange(ny) + height - 1) / 2.0)
    stats = _fill_holes(np.where(valid, mean, np.nan), x_centers, y_centers)
    return BackgroundModel(stats_image=stats.astype(np.float32),
                           n_good=np.where(valid, n_good, 0).astype(np.int32),
                           x_centers=x_centers, y_centers=y_centers,
                           bin_width=bw, bin_height=bh, shape=(height, width))


def subtract_background(image: np.ndarray, mask: np.ndarray | None = None,
                        config: BackgroundConfig | None = None,
                        ) -> tuple[np.ndarray, BackgroundModel]:
    """Estimate the background and return ``(image - model, model)``.

    Parameters
    ----------
    image, mask, config
        As for :func:`estimate_background`.

    Returns
    -------
    subtracted : numpy.ndarray
        New float32 array, ADU; the input is not modified.
    model : BackgroundModel
    """
    model = estimate_background(image, mask, config)
    return np.asarray(image, dtype=np.float32) - model.evaluate(), model


def _fill_holes(stats: np.ndarray, x_centers: np.ndarray, y_centers: np.ndarray) -> np.ndarray:
    """Replace NaN bins by interpolating the valid bins of their row, then column.

    Each row with some valid bins is interpolated (and linearly extended) along x
    through them, like afw's row-wise interpolation over missing bins; rows
    without any valid bin are then filled column by column along y.  The grid is
    small (tens of bins), so the loops over rows and columns are cheap.
    """
    stats = stats.astype(float)
    for values, centers in ((stats, x_centers), (stats.T, y_centers)):
        for line in values:  # rows (x direction), then columns of the row-filled grid
            good = np.isfinite(line)
            if good.any() and not good.all():
                line[~good] = _interp_1d(centers[good], line[good][:, None], centers[~good])[:, 0]
    return stats


def _interp_1d(centers: np.ndarray, values: np.ndarray, x: np.ndarray,
               dtype=np.float64) -> np.ndarray:
    """Interpolate ``values`` (n_centers, m) at ``x``; returns (len(x), m).

    Akima for >= 5 nodes, natural cubic for 3-4, linear for 2, constant for 1;
    linear extension beyond the end nodes using the end slopes.  Every case is a
    piecewise cubic Hermite interpolant ``f(x) = sum_i a_i(x) v_i + b_i(x) s_i``
    with node values ``v`` and node slopes ``s`` (chosen by the method), so the
    evaluation is two matrix products (small grids); full images go through
    :func:`_interp_rows`, which uses the two non-zero terms of each row.
    """
    values = np.asarray(values, dtype=float)
    slopes = _node_slopes(centers, values)
    a, b = _hermite_weights(centers, x)
    return (a.astype(dtype) @ values.astype(dtype)) + (b.astype(dtype) @ slopes.astype(dtype))


def _node_slopes(centers: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Node slopes of the interpolant: Akima (>= 5 nodes), natural cubic (3-4), linear, constant."""
    n = len(centers)
    if n == 1:
        return np.zeros_like(values)
    if n == 2:
        return np.repeat((values[1:] - values[:1]) / (centers[1] - centers[0]), 2, axis=0)
    if n >= 5:
        return Akima1DInterpolator(centers, values, axis=0)(centers, 1)
    return CubicSpline(centers, values, axis=0, bc_type="natural")(centers, 1)


def _interp_rows(centers: np.ndarray, values: np.ndarray, y: np.ndarray) -> np.ndarray:
    """:func:`_interp_1d` of ``values`` (n_centers, width) at rows ``y``, as float32.

    Each output row combines at most two node rows and two slope rows, so it is
    evaluated directly instead of as products with mostly-zero weight matrices.
    """
    values = np.asarray(values, dtype=float)
    slopes = _node_slopes(centers, values)
    a, b = _hermite_weights(centers, y)
    out = np.empty((len(y), values.shape[1]), dtype=np.float32)
    hermite_rows(*_two_terms(a), *_two_terms(b), np.ascontiguousarray(values, np.float32),
                 np.ascontiguousarray(slopes, np.float32), out)
    return out


def _two_terms(weights: np.ndarray):
    """Columns and float32 values of the (at most two) non-zero weights of each row."""
    order = np.argsort(weights == 0, axis=1, kind="stable")[:, :2]  # non-zero columns first
    w = np.take_along_axis(weights, order, axis=1).astype(np.float32)
    if w.shape[1] < 2:
        order = np.concatenate([order, order], axis=1)
        w = np.concatenate([w, np.zeros_like(w)], axis=1)
    return (np.ascontiguousarray(order[:, 0]), np.ascontiguousarray(w[:, 0]),
            np.ascontiguousarray(order[:, 1]), np.ascontiguousarray(w[:, 1]))


def _hermite_weights(centers: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights ``(a, b)``, each (len(x), n), of node values and slopes at ``x``."""
    n = len(centers)
    a = np.zeros((len(x), n))
    b = np.zeros((len(x), n))
    rows = np.arange(len(x))
    if n == 1:
        a[:, 0] = 1.0
        return a, b
    below, above = x < centers[0], x > centers[-1]
    inside = ~(below | above)
    i = np.clip(np.searchsorted(centers, x, side="right") - 1, 0, n - 2)
    h = centers[i + 1] - centers[i]
    t = (x - centers[i]) / h
    t2, t3 = t * t, t * t * t
    r, ii = rows[inside], i[inside]
    a[r, ii] = (2 * t3 - 3 * t2 + 1)[inside]
    a[r, ii + 1] = (-2 * t3 + 3 * t2)[inside]
    b[r, ii] = ((t3 - 2 * t2 + t) * h)[inside]
    b[r, ii + 1] = ((t3 - t2) * h)[inside]
    # Linear extension with the end slopes.
    a[below, 0] = 1.0
    b[below, 0] = x[below] - centers[0]
    a[above, -1] = 1.0
    b[above, -1] = x[above] - centers[-1]
    return a, b
