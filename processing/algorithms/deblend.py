"""Deblending: split footprints with several significant peaks into children.

A footprint is segmented by steepest ascent on the PSF-smoothed image (the
image the detection threshold was applied to): every pixel points to its
highest 8-neighbour inside the same footprint, and following the pointers
(vectorised pointer doubling) ends at a local maximum, whose *basin* the pixel
joins.  Detection peaks are always basin seeds; other local maxima (noise bumps
in the grown, below-threshold rim) are seeds that can never become children.

Basins are then merged like a topographic merge tree: adjacent basins meet at a
*saddle* (the highest ``min(v_i, v_j)`` over neighbouring pixel pairs across
their border); processing saddles from the highest down, a basin whose top peak
is the lower one ends there, with *prominence* ``v_peak - v_saddle``.

A peak is **significant** (becomes a child) if it is a detection peak and its
prominence exceeds ``min_prominence`` times the noise of the smoothed image at
the peak (``sqrt(smoothed_variance)``; with Poisson noise in the variance plane,
bright galaxies need proportionally deeper dips to split).  The brightest
detection peak of a footprint is always significant.  An insignificant basin
is given to the basin across its key saddle (recursively), so a child's pixels
are its own basin plus those of the lesser bumps that drained into it: a
watershed with markers at the significant peaks.

Catalog convention (Rubin): every footprint gives a parent record (``parent``
0); a blended parent has ``deblend_nChild = k >= 2`` and ``k`` child records
with ``parent`` = its id.  Parents have ids 1..N equal to the detection labels;
children follow in parent order, brightest first.  Too-big parents
(``deblend_parentTooBig``) are not deblended (``deblend_skipped``); when a
footprint has more than ``max_peaks`` significant peaks only the brightest
``max_peaks`` become children (``deblend_tooManyPeaks``).  Only the positive
footprints are deblended.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._detection_kernels import basin_saddles, steepest_neighbour
from .detection import DetectionResult, convolve_separable, gaussian_kernel

__all__ = ["CATALOG_DTYPE", "DeblendConfig", "DeblendResult", "deblend"]

#: Columns of the deblend catalog (Rubin names for the ``deblend_*`` fields).
CATALOG_DTYPE = np.dtype([
    ("id", np.int64), ("parent", np.int64), ("deblend_nChild", np.int32),
    ("footprint", np.int32), ("peak_x", np.int32), ("peak_y", np.int32),
    ("peak_value", np.float32), ("peak_significance", np.float32),
    ("deblend_tooManyPeaks", bool), ("deblend_parentTooBig", bool), ("deblend_skipped", bool),
])


@dataclass(frozen=True)
class DeblendConfig:
    """Settings of :func:`deblend`.

    Attributes
    ----------
    min_prominence : float
        A peak must rise above its key saddle by more than this many sigma of the
        smoothed-image noise at the peak to become a child.
    max_peaks : int
        Most children per parent (``deblend_tooManyPeaks`` beyond).
    max_footprint_area : int
        Parents with more pixels are not deblended (``deblend_parentTooBig``).
    """

    min_prominence: float = 3.0
    max_peaks: int = 100
    max_footprint_area: int = 1_000_000

    def __post_init__(self) -> None:
        if self.min_prominence < 0:
            raise ValueError(f"min_prominence must be >= 0 sigma, got {self.min_prominence}")
        if self.max_peaks < 2:
            raise ValueError(f"max_peaks must be >= 2, got {self.max_peaks}")
        if self.max_footprint_area < 1:
            raise ValueError(f"max_footprint_area must be >= 1 pixel, got {self.max_footprint_area}")


@dataclass(eq=False)
class DeblendResult:
    """Output of :func:`deblend`.

    Attributes
    ----------
    catalog : numpy.ndarray
        Structured array of :data:`CATALOG_DTYPE`: parents (ids 1..n_parents,
        equal to the detection labels) then children.
    segmentation : numpy.ndarray
        ``(ny, nx)`` int32: each footprint pixel holds the id of the deblended
        source it belongs to (a child id inside blends, the parent id
        otherwise); 0 outside footprints.
    """

    catalog: np.ndarray
    segmentation: np.ndarray

    @property
    def n_parents(self) -> int:
        """Number of parent (footprint) records."""
        return int((self.catalog["parent"] == 0).sum())

    @property
    def n_children(self) -> int:
        """Number of child records."""
        return int((self.catalog["parent"] != 0).sum())

    @property
    def is_deblended_source(self) -> np.ndarray:
        """``detect_isDeblendedSource``: records with no children (isolated or child)."""
        return self.catalog["deblend_nChild"] == 0

    def __repr__(self) -> str:
        blended = int((self.catalog["deblend_nChild"] > 0).sum())
        return (f"DeblendResult(n_parents={self.n_parents}, blended={blended}, "
                f"n_children={self.n_children})")


def deblend(detection: DetectionResult, image: np.ndarray, variance: np.ndarray, psf_sigma: float,
            config: DeblendConfig | None = None) -> DeblendResult:
    """Split blended footprints into children at their significant peaks.

    Parameters
    ----------
    detection : DetectionResult
        Output of :func:`~processing.algorithms.detection.detect_sources` on this image.
    image : numpy.ndarray
        ``(ny, nx)`` background-subtracted image; only used if ``detection`` does not
        carry its smoothed image.
    variance : numpy.ndarray
        ``(ny, nx)`` variance, image units squared (same proviso).
    psf_sigma : float
        PSF sigma, pixels (same proviso).
    config : DeblendConfig, optional

    Returns
    -------
    DeblendResult

    Examples
    --------
    >>> from processing.algorithms.detection import detect_sources
    >>> y, x = np.mgrid[:40, :60]
    >>> img = sum(f * np.exp(-((x - x0) ** 2 + (y - 20) ** 2) / 8) for f, x0 in [(50, 22), (30, 36)])
    >>> var = np.ones_like(img)
    >>> res = deblend(detect_sources(img, var, None, 2.0), img, var, 2.0)
    >>> res.catalog["id"].tolist(), res.catalog["parent"].tolist(), res.catalog["peak_x"].tolist()
    ([1, 2, 3], [0, 1, 1], [22, 22, 36])
    """
    config = config or DeblendConfig()
    labels = detection.labels
    shape = labels.shape
    smoothed, smoothed_var = detection.smoothed, detection.smoothed_variance
    if smoothed is None or smoothed.shape != shape:
        if np.shape(image) != shape or np.shape(variance) != shape:
            raise ValueError(f"image/variance shapes {np.shape(image)}, {np.shape(variance)} "
                             f"differ from the detection labels {shape}")
        kernel = gaussian_kernel(psf_sigma)
        smoothed = convolve_separable(np.nan_to_num(image), kernel)
        smoothed_var = convolve_separable(np.nan_to_num(variance), kernel * kernel)

    fps, peaks = detection.footprints, detection.peaks
    n_fp = len(fps)
    catalog = np.zeros(n_fp, dtype=CATALOG_DTYPE)
    catalog["id"] = np.arange(1, n_fp + 1)
    catalog["footprint"] = catalog["id"]
    # Peaks are sorted by footprint, brightest first: the first of each is the parent's.
    first = np.searchsorted(peaks["footprint"], np.arange(1, n_fp + 1))
    has_peak = fps["n_peaks"] > 0
    catalog["peak_x"][has_peak] = peaks["x"][first[has_peak]]
    catalog["peak_y"][has_peak] = peaks["y"][first[has_peak]]
    catalog["peak_value"][has_peak] = peaks["value"][first[has_peak]]
    catalog["peak_significance"][has_peak] = peaks["significance"][first[has_peak]]
    too_big = (fps["n_peaks"] >= 2) & (fps["area"] > config.max_footprint_area)
    catalog["deblend_parentTooBig"] = too_big
    catalog["deblend_skipped"] = too_big
    candidates = np.flatnonzero((fps["n_peaks"] >= 2) & ~too_big) + 1
    if len(candidates) == 0:
        return DeblendResult(catalog, labels.astype(np.int32, copy=True))
    # The segmentation's memory first serves _split as its pixel -> position map.
    segmentation = np.empty(shape, dtype=np.int32)
    node_fp, node_flat, node_val, node_sig, pix, pix_child_node, too_many = _split(
        candidates, detection, smoothed, smoothed_var, config, segmentation)
    np.copyto(segmentation, labels, casting="unsafe")

    # Footprints with >= 2 significant peaks get children, brightest first.
    counts = np.bincount(node_fp, minlength=n_fp + 1)[1:]
    blended = counts >= 2
    keep = blended[node_fp - 1]
    node_fp, node_flat, node_val, node_sig = (a[keep] for a in (node_fp, node_flat, node_val, node_sig))
    kept_nodes = np.flatnonzero(keep)
    order = np.lexsort((-node_val, node_fp))
    child_ids = np.empty(len(order), np.int64)
    child_ids[order] = n_fp + 1 + np.arange(len(order))
    child_of_node = np.full(len(keep), -1, np.int64)
    child_of_node[kept_nodes] = child_ids
    kids = np.zeros(len(order), dtype=CATALOG_DTYPE)
    kids["id"] = child_ids[order]
    kids["parent"] = node_fp[order]
    kids["footprint"] = node_fp[order]
    kids["peak_y"], kids["peak_x"] = np.divmod(node_flat[order], shape[1])
    kids["peak_value"] = node_val[order]
    kids["peak_significance"] = node_sig[order]
    catalog["deblend_nChild"] = np.where(blended, counts, 0)
    catalog["deblend_tooManyPeaks"] = too_many[1:] & blended
    in_blend = child_of_node[pix_child_node] >= 0
    segmentation.ravel()[pix[in_blend]] = child_of_node[pix_child_node[in_blend]]
    return DeblendResult(np.concatenate([catalog, kids]), segmentation)


def _split(candidates, detection, smoothed, smoothed_var, config, scratch):
    """Segment the candidate footprints; returns their significant nodes and pixel owners.

    ``scratch`` (int32, image-sized, contents irrelevant) holds the position of
    every candidate pixel in the pixel list; it is only read at candidate pixels.
    """
    labels = detection.labels
    nx = labels.shape[1]
    flat_val = smoothed.ravel()
    # Pixels of the candidate footprints, from the detection's CSR lists.
    starts = detection.pixel_offsets[candidates - 1]
    lengths = detection.pixel_offsets[candidates] - starts
    total = int(lengths.sum())
    shift = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    pix = detection.pixel_index[np.arange(total) + shift]
    fp_of = np.repeat(candidates, lengths).astype(np.int32)
    val = flat_val[pix]
    pos = scratch.ravel()
    pos[pix] = np.arange(total)

    # Steepest ascent in (value, flat index) order, staying inside the footprint.
    best_flat = np.empty(total, dtype=np.int64)
    steepest_neighbour(labels, smoothed, pix, fp_of, best_flat)
    is_candidate = np.zeros(len(detection.footprints) + 1, dtype=bool)
    is_candidate[candidates] = True
    peaks = detection.peaks[is_candidate[detection.peaks["footprint"]]]
    peak_flat = peaks["y"].astype(np.int64) * nx + peaks["x"]
    peak_pos = pos[peak_flat]  # peaks of the candidate footprints
    best_flat[peak_pos] = pix[peak_pos]  # detection peaks always seed a basin
    ptr = pos[best_flat].astype(np.int64)
    while True:  # pointer doubling: log2(longest ascent path) passes
        nxt = ptr[ptr]
        if np.array_equal(nxt, ptr):
            break
        ptr = nxt
    seeds, node = np.unique(ptr, return_inverse=True)
    n_nodes = len(seeds)
    node_val = val[seeds]
    node_flat = pix[seeds]
    node_fp = fp_of[seeds]
    is_peak = np.zeros(n_nodes, bool)
    is_peak[np.searchsorted(seeds, peak_pos)] = True

    # Saddles: the highest min(v_i, v_j) over neighbouring pixel pairs in different basins.
    a, b, s = basin_saddles(labels, pos, pix, fp_of, node, val)
    key = a.astype(np.int64) * n_nodes + b
    order = np.lexsort((s, key))
    last = np.r_[key[order][1:] != key[order][:-1], True]
    a, b, s = a[order][last], b[order][last], s[order][last]

    prominence, across = _merge_tree(a, b, s, node_val, node_flat)
    noise = np.sqrt(np.maximum(smoothed_var.ravel()[node_flat], 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        significant = is_peak & (prominence > config.min_prominence * noise)
        node_sig = np.where(noise > 0, node_val / noise, np.nan)
    # The brightest detection peak of each footprint always stays.
    rank = np.lexsort((-node_val, ~is_peak, node_fp))
    first = np.r_[True, node_fp[rank][1:] != node_fp[rank][:-1]]
    n_fp = len(detection.footprints)
    brightest = np.zeros(n_fp + 1, np.int64)
    brightest[node_fp[rank][first]] = rank[first]
    significant[rank[first]] = True
    # Cap the children per footprint at max_peaks (brightest kept).
    order = np.lexsort((-node_val, ~significant, node_fp))
    start = np.searchsorted(node_fp[order], node_fp[order], side="left")
    within = np.arange(n_nodes) - start
    drop = order[significant[order] & (within >= config.max_peaks)]
    too_many = np.zeros(n_fp + 1, bool)
    too_many[node_fp[drop]] = True
    significant[drop] = False

    owner = np.where(significant, np.arange(n_nodes), across)
    orphan = owner < 0  # a footprint's top that is not a detection peak
    owner[orphan] = brightest[node_fp[orphan]]
    for _ in range(64):  # chains follow merge events back in time, so they end
        nxt = owner[owner]
        if np.array_equal(nxt, owner):
            break
        owner = nxt
    else:
        raise RuntimeError("deblend: basin ownership did not converge")
    # Renumber so that pixel owners index the significant nodes returned.
    compact = np.cumsum(significant) - 1
    sig = significant
    return (node_fp[sig], node_flat[sig], node_val[sig], node_sig[sig], pix,
            compact[owner[node]], too_many)


def _merge_tree(a, b, s, node_val, node_flat):
    """Prominence of every node and the node across its key saddle (-1 for tops).

    ``(a, b, s)`` are the basin adjacency edges and their saddle levels.  The
    loop is over edges (a few per blended peak), not pixels.
    """
    n = len(node_val)
    parent = np.arange(n)
    top = np.arange(n)
    prominence = np.full(n, np.inf)
    across = np.full(n, -1, np.int64)
    order = np.lexsort((-node_flat[a], -s))  # highest saddles first
    parent_l, top_l = parent.tolist(), top.tolist()
    val_l, flat_l = node_val.tolist(), node_flat.tolist()

    def find(i):
        root = i
        while parent_l[root] != root:
            root = parent_l[root]
        while parent_l[i] != root:
            parent_l[i], i = root, parent_l[i]
        return root

    for e in order.tolist():
        ra, rb = find(int(a[e])), find(int(b[e]))
        if ra == rb:
            continue
        ta, tb = top_l[ra], top_l[rb]
        if (val_l[ta], flat_l[ta]) > (val_l[tb], flat_l[tb]):
            winner, loser, other = ra, rb, int(a[e])
        else:
            winner, loser, other = rb, ra, int(b[e])
        lost_top = top_l[loser]
        prominence[lost_top] = val_l[lost_top] - float(s[e])
        across[lost_top] = other
        parent_l[loser] = winner
    return prominence, across
