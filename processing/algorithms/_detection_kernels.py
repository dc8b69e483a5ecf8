"""Compiled pixel loops of :mod:`processing.algorithms.detection` (numba).

Kept apart from the public module so that the orchestration stays readable.

* :func:`smooth_pair` correlates an image and its variance with a separable
  kernel in one pass over the rows (a ring of x-smoothed rows feeds the y
  pass), with the float32 arithmetic of the numpy shifted-add version in the
  same order, so the results are identical to it.
* Footprints are handled as runs (row, first column, last column) of
  above-threshold pixels: :func:`threshold_runs` finds them,
  :func:`grow_runs` dilates them with the afw disk, :func:`label_runs` joins
  8-connected runs (union-find) and numbers the groups in raster order of their
  first pixel, as ``scipy.ndimage.label``; :func:`footprint_tables` lays the
  groups out (label image, pixel lists, boxes).  Work is proportional to the
  number of runs, not of pixels, except for writing the label image.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__: list[str] = []  # private helpers of processing.algorithms.detection

_OPTS = {"cache": True, "nogil": True}


# ------------------------------------------------------------------------------ smoothing


@numba.njit(**_OPTS)
def _clean(v, mode):
    """float32 value; mode 1 sets non-finite values to 0, mode 2 also negative ones."""
    v = np.float32(v)
    if mode > 0 and (not math.isfinite(v) or (mode > 1 and v < 0)):
        return np.float32(0.0)
    return v


@numba.njit(**_OPTS)
def _x_pass(src, y, kernel, mode, buf, out):
    """Row ``y`` of ``src`` correlated along x with the symmetric ``kernel`` (zeros outside).

    ``buf`` has ``half`` zeros on each side of the cleaned row.  The inner loops
    run over slices (plain unit-stride indices), which lets LLVM vectorise them.
    """
    nx = src.shape[1]
    half = kernel.size // 2
    row = buf[half : half + nx]
    for i in range(nx):
        row[i] = _clean(src[y, i], mode)
    kc = kernel[half]
    for i in range(nx):
        out[i] = row[i] * kc
    for d in range(1, half + 1):
        kd = kernel[half + d]
        right = buf[half + d : half + d + nx]
        left = buf[half - d : half - d + nx]
        for i in range(nx):
            out[i] += (right[i] + left[i]) * kd


@numba.njit(**_OPTS)
def correlate_separable(src, kernel, mode, out):
    """``out`` = ``src`` correlated with ``kernel`` along x, then y (zeros outside; float32).

    ``mode`` 1 counts non-finite inputs as 0, mode 2 also negative ones (0:
    as they are).  The x-smoothed rows live in a ring of ``len(kernel)`` rows.
    Each output is ``k0 v + sum_d kd (v[+d] + v[-d])`` accumulated over d in
    float32, as the numpy shifted adds it replaces (same values).
    """
    ny, nx = src.shape
    size = kernel.size
    half = size // 2
    ring = np.zeros((size, nx), dtype=np.float32)
    zero = np.zeros(nx, dtype=np.float32)
    buf = np.zeros(nx + 2 * half, dtype=np.float32)
    kc = kernel[half]
    for r in range(min(half, ny)):  # rows 0 .. half - 1 (y + half of the first outputs)
        _x_pass(src, r, kernel, mode, buf, ring[r % size])
    for y in range(ny):
        nxt = y + half
        if nxt < ny:
            _x_pass(src, nxt, kernel, mode, buf, ring[nxt % size])
        row = ring[y % size]
        acc = out[y]
        for i in range(nx):
            acc[i] = row[i] * kc
        for d in range(1, half + 1):
            up = ring[(y + d) % size] if y + d < ny else zero
            down = ring[(y - d) % size] if y - d >= 0 else zero
            kd = kernel[half + d]
            for i in range(nx):
                acc[i] += (up[i] + down[i]) * kd


# ----------------------------------------------------------------------------------- runs


@numba.njit(**_OPTS)
def _append(runs, n, y, a, b):
    """Append run ``(y, a, b)`` to the ``(capacity, 3)`` array ``runs`` (grown as needed)."""
    if n == runs.shape[0]:
        bigger = np.empty((2 * runs.shape[0] + 16, 3), dtype=runs.dtype)
        bigger[:n] = runs[:n]
        runs = bigger
    runs[n, 0] = y
    runs[n, 1] = a
    runs[n, 2] = b
    return runs, n + 1


@numba.njit(**_OPTS)
def threshold_runs(smoothed, smoothed_var, sign, threshold, level, half):
    """Runs of ``sign * smoothed > level`` more than ``half`` pixels inside the image.

    ``level`` is ``sqrt(smoothed_var) * threshold`` (float32) when
    ``smoothed_var`` is given, else the scalar ``level``.
    """
    ny, nx = smoothed.shape
    runs = np.empty((1024, 3), dtype=np.int64)
    n = 0
    t32 = np.float32(threshold)
    l32 = np.float32(level)
    s32 = np.float32(sign)
    width = nx - 2 * half
    if width <= 0:
        return runs[:0].copy()
    # Flags of one row as bytes (a 0 sentinel closes the last run), scanned 8 at a
    # time: words of all-0 (outside a run) or all-1 (inside) are skipped whole.
    n_words = width // 8 + 1
    above = np.zeros(8 * n_words, dtype=np.uint8)
    words = above.view(np.uint64)
    ones = np.uint64(0x0101010101010101)
    for y in range(half, ny - half):
        values = smoothed[y, half : nx - half]
        if smoothed_var is not None:
            var = smoothed_var[y, half : nx - half]
            for i in range(width):
                above[i] = s32 * values[i] > np.sqrt(var[i]) * t32
        else:
            for i in range(width):
                above[i] = s32 * values[i] > l32
        start = -1
        for k in range(n_words):
            w = words[k]
            if (start < 0 and w == 0) or (start >= 0 and w == ones):
                continue
            for i in range(8 * k, 8 * k + 8):
                if above[i]:
                    if start < 0:
                        start = i
                elif start >= 0:
                    runs, n = _append(runs, n, y, start + half, i - 1 + half)
                    start = -1
    return runs[:n].copy()


@numba.njit(**_OPTS)
def _row_index(runs, ny):
    """``first[y] .. first[y + 1]`` are the runs of row ``y`` (runs sorted by row)."""
    first = np.zeros(ny + 1, dtype=np.int64)
    for r in range(runs.shape[0]):
        first[runs[r, 0] + 1] += 1
    for y in range(ny):
        first[y + 1] += first[y]
    return first


@numba.njit(**_OPTS)
def local_maxima(signed, runs, sign, half):
    """Flat index and value of the run pixels that beat their 8 neighbours.

    Order is (value, flat index); neighbours are clipped to the searched region
    ``half`` pixels in from the edges (a clipped neighbour is the pixel itself,
    which passes), as ``detection._local_maxima``.
    """
    ny, nx = signed.shape
    s32 = np.float32(sign)
    count = 0
    for r in range(runs.shape[0]):
        count += runs[r, 2] - runs[r, 1] + 1
    idx = np.empty(count, dtype=np.int64)
    val = np.empty(count, dtype=np.float32)
    m = 0
    ylo, yhi, xlo, xhi = half, ny - 1 - half, half, nx - 1 - half
    for r in range(runs.shape[0]):
        y = runs[r, 0]
        for x in range(runs[r, 1], runs[r, 2] + 1):
            v = s32 * signed[y, x]
            flat = y * nx + x
            peak = True
            for k in range(8):
                # Same neighbour order as the numpy version (it stops at the first failure).
                if k == 0:
                    dy, dx = 0, -1
                elif k == 1:
                    dy, dx = 0, 1
                elif k == 2:
                    dy, dx = -1, 0
                elif k == 3:
                    dy, dx = 1, 0
                elif k == 4:
                    dy, dx = -1, -1
                elif k == 5:
                    dy, dx = -1, 1
                elif k == 6:
                    dy, dx = 1, -1
                else:
                    dy, dx = 1, 1
                yy = min(max(y + dy, ylo), yhi)
                xx = min(max(x + dx, xlo), xhi)
                vj = s32 * signed[yy, xx]
                j = yy * nx + xx
                if not (v > vj or (v == vj and flat >= j)):
                    peak = False
                    break
            if peak:
                idx[m] = flat
                val[m] = v
                m += 1
    return idx[:m].copy(), val[:m].copy()


@numba.njit(**_OPTS)
def grow_runs(runs, ny, nx, radius):
    """Runs of the dilation of ``runs`` by the afw disk of ``radius`` (maximal, raster order)."""
    if radius <= 0 or runs.shape[0] == 0:
        return runs.copy()
    widths = np.empty(2 * radius + 1, dtype=np.int64)
    for k in range(2 * radius + 1):
        dy = k - radius
        widths[k] = math.floor(math.sqrt(radius * radius - dy * dy) + 1e-9)
    first = _row_index(runs, ny)
    out = np.empty((max(runs.shape[0], 16), 3), dtype=np.int64)
    n = 0
    buf_a = np.empty(16, dtype=np.int64)
    buf_b = np.empty(16, dtype=np.int64)
    for y in range(ny):
        # Source rows y - radius .. y + radius, each run widened by the disk at that offset.
        m = 0
        for src in range(max(y - radius, 0), min(y + radius, ny - 1) + 1):
            w = widths[src - y + radius]
            for r in range(first[src], first[src + 1]):
                if m == buf_a.size:
                    bigger_a = np.empty(2 * m, dtype=np.int64)
                    bigger_b = np.empty(2 * m, dtype=np.int64)
                    bigger_a[:m] = buf_a[:m]
                    bigger_b[:m] = buf_b[:m]
                    buf_a, buf_b = bigger_a, bigger_b
                buf_a[m] = max(runs[r, 1] - w, 0)
                buf_b[m] = min(runs[r, 2] + w, nx - 1)
                m += 1
        if m == 0:
            continue
        order = np.argsort(buf_a[:m])
        a, b = buf_a[order[0]], buf_b[order[0]]
        for k in range(1, m):
            c, d = buf_a[order[k]], buf_b[order[k]]
            if c <= b + 1:
                b = max(b, d)
            else:
                out, n = _append(out, n, y, a, b)
                a, b = c, d
        out, n = _append(out, n, y, a, b)
    return out[:n].copy()


@numba.njit(**_OPTS)
def _find(parent, i):
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        parent[i], i = root, parent[i]
    return root


@numba.njit(**_OPTS)
def label_runs(runs, ny):
    """Label of every run: 8-connected groups numbered 1.. in raster order of first pixel."""
    n = runs.shape[0]
    parent = np.arange(n)
    first = _row_index(runs, ny)
    for y in range(1, ny):
        # Two-pointer sweep over the runs of rows y - 1 and y (both sorted by column).
        p, p_end = first[y - 1], first[y]
        for r in range(first[y], first[y + 1]):
            a, b = runs[r, 1], runs[r, 2]
            while p < p_end and runs[p, 2] < a - 1:
                p += 1
            q = p
            while q < p_end and runs[q, 1] <= b + 1:
                ra, rb = _find(parent, r), _find(parent, q)
                if ra != rb:
                    if ra < rb:
                        parent[rb] = ra
                    else:
                        parent[ra] = rb
                q += 1
    labels = np.zeros(n, dtype=np.int64)
    number = np.zeros(n, dtype=np.int64)
    count = 0
    for r in range(n):  # runs are in raster order: a root's first run comes first
        root = _find(parent, r)
        if number[root] == 0:
            count += 1
            number[root] = count
        labels[r] = number[root]
    return labels, count


@numba.njit(**_OPTS)
def footprint_tables(runs, run_label, n_labels, nx, label_image):
    """Label image, pixel lists (CSR, raster order within a label), areas and boxes.

    ``label_image`` (zeroed) receives the labels.  Boxes are ``(y0, y1, x0, x1)``
    with exclusive ends.
    """
    counts = np.zeros(n_labels + 1, dtype=np.int64)
    box = np.empty((n_labels + 1, 4), dtype=np.int64)
    for lab in range(n_labels + 1):
        box[lab, 0] = box[lab, 2] = runs.shape[0] + label_image.size
        box[lab, 1] = box[lab, 3] = -1
    for r in range(runs.shape[0]):
        lab = run_label[r]
        y, a, b = runs[r, 0], runs[r, 1], runs[r, 2]
        counts[lab] += b - a + 1
        box[lab, 0] = min(box[lab, 0], y)
        box[lab, 1] = max(box[lab, 1], y + 1)
        box[lab, 2] = min(box[lab, 2], a)
        box[lab, 3] = max(box[lab, 3], b + 1)
        for x in range(a, b + 1):
            label_image[y, x] = lab
    offsets = np.zeros(n_labels + 1, dtype=np.int64)
    for lab in range(1, n_labels + 1):
        offsets[lab] = offsets[lab - 1] + counts[lab]
    pix = np.empty(offsets[n_labels], dtype=np.int64)
    cursor = offsets.copy()
    for r in range(runs.shape[0]):
        lab = run_label[r]
        y, a, b = runs[r, 0], runs[r, 1], runs[r, 2]
        c = cursor[lab - 1]
        for x in range(a, b + 1):
            pix[c] = y * nx + x
            c += 1
        cursor[lab - 1] = c
    return pix, offsets, counts[1:], box[1:]


@numba.njit(**_OPTS)
def set_bits_on_runs(mask, runs, bit):
    """``mask |= bit`` on every pixel of ``runs``."""
    for r in range(runs.shape[0]):
        y = runs[r, 0]
        for x in range(runs[r, 1], runs[r, 2] + 1):
            mask[y, x] |= bit


@numba.njit(**_OPTS)
def keep_runs(runs, keep_label, run_label):
    """The runs whose label is kept."""
    out = np.empty_like(runs)
    n = 0
    for r in range(runs.shape[0]):
        if keep_label[run_label[r]]:
            out[n] = runs[r]
            n += 1
    return out[:n].copy()


# -------------------------------------------------------------------------------- deblend


@numba.njit(**_OPTS)
def steepest_neighbour(labels, values, pix, fp_of, out):
    """For every pixel ``pix[k]`` of footprint ``fp_of[k]``: the flat index of the highest
    of itself and its 8 neighbours in the same footprint, in (value, flat index) order."""
    ny, nx = labels.shape
    for k in range(pix.size):
        p = pix[k]
        y, x = p // nx, p % nx
        f = fp_of[k]
        best_v = values[y, x]
        best = p
        for dy in range(-1, 2):
            yy = y + dy
            if yy < 0 or yy >= ny:
                continue
            for dx in range(-1, 2):
                xx = x + dx
                if (dy == 0 and dx == 0) or xx < 0 or xx >= nx or labels[yy, xx] != f:
                    continue
                v = values[yy, xx]
                j = yy * nx + xx
                if v > best_v or (v == best_v and j > best):
                    best_v = v
                    best = j
        out[k] = best


@numba.njit(**_OPTS)
def basin_saddles(labels, pos, pix, fp_of, node, val):
    """Neighbouring pixel pairs of one footprint in different basins.

    Returns ``(min node, max node, min value)`` per pair (each unordered pair
    once: right, down-left, down, down-right neighbours); ``pos`` maps a flat
    index of a footprint pixel to its position in ``pix``.
    """
    ny, nx = labels.shape
    n = pix.size
    cap = 4 * n
    a = np.empty(cap, dtype=node.dtype)
    b = np.empty(cap, dtype=node.dtype)
    s = np.empty(cap, dtype=val.dtype)
    m = 0
    for k in range(n):
        p = pix[k]
        y, x = p // nx, p % nx
        f = fp_of[k]
        for d in range(4):
            dy, dx = (0, 1) if d == 0 else ((1, -1) if d == 1 else ((1, 0) if d == 2 else (1, 1)))
            yy, xx = y + dy, x + dx
            if yy >= ny or xx < 0 or xx >= nx or labels[yy, xx] != f:
                continue
            q = pos[yy * nx + xx]
            na, nb = node[k], node[q]
            if na != nb:
                a[m] = min(na, nb)
                b[m] = max(na, nb)
                s[m] = min(val[k], val[q])
                m += 1
    return a[:m].copy(), b[:m].copy(), s[:m].copy()
