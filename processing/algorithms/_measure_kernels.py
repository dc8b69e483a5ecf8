"""Compiled per-source loops of :mod:`processing.algorithms.measure` and its plugins (numba).

Kept apart from the public modules so that the orchestration stays readable.
Every kernel loops over sources and, inside, over the pixels of one stamp, and
does the arithmetic of the numpy code it replaced in the same order where it
matters (float32 versus float64 steps, which pixels count, NaN propagation);
sums may be accumulated in another order, which changes results by rounding
only.  Kernels that read the full-frame planes directly (local background,
variance, pixel flags) avoid cutting large stamps at all.

Optional arrays are passed as ``None``: numba compiles one specialisation per
combination and prunes the ``is None`` branches.

The selection helpers (:func:`select_ranks`, :func:`_select`) are also compiled
into kernels of ``_background_kernels`` and ``_stats_kernels``.  numba's
on-disk cache only watches a kernel's own source file, so after editing them
delete those modules' ``__pycache__/*.nbi``/``*.nbc`` files as well.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__: list[str] = []  # private helpers

# error_model="numpy": divisions by zero give inf/NaN as in the numpy code, not exceptions.
_OPTS = {"cache": True, "nogil": True, "error_model": "numpy"}


# ----------------------------------------------------------------------------------- stamps


@numba.njit(**_OPTS)
def cut_into(array, ix, iy, half, fill, out, on):
    """``out[s]`` = the ``(2 half + 1)``-square of ``array`` centred on ``(ix[s], iy[s])``.

    Pixels off the array get ``fill``; ``on`` (same shape as ``out``, or None)
    records which pixels are on the array.
    """
    ny, nx = array.shape
    size = 2 * half + 1
    for s in range(ix.size):
        x0 = ix[s] - half
        y0 = iy[s] - half
        full_x = x0 >= 0 and x0 + size <= nx
        for j in range(size):
            y = y0 + j
            if 0 <= y < ny and full_x:
                for i in range(size):
                    out[s, j, i] = array[y, x0 + i]
                if on is not None:
                    for i in range(size):
                        on[s, j, i] = True
                continue
            for i in range(size):
                x = x0 + i
                inside = 0 <= y < ny and 0 <= x < nx
                out[s, j, i] = array[y, x] if inside else fill
                if on is not None:
                    on[s, j, i] = inside


@numba.njit(**_OPTS)
def family_at(labels, lut, y, x):
    """Family of the pixel: ``lut[label]`` for labels inside ``lut``, else the label itself."""
    v = labels[y, x]
    if lut is not None and 0 <= v < lut.size:
        return lut[v]
    return v


@numba.njit(**_OPTS)
def clean_into(image, model_index, model_tiles, labels, lut, noise, ix, iy, half, family,
               subtract, own, out, on, border_own):
    """Neighbour-cleaned float64 stamps (see ``Scene.stamps``).

    ``out = image - subtract * model + own`` (``model`` tiled, see
    :func:`tiled_at`); where the family of the pixel (:func:`family_at`) is
    another than ``family[s]`` the value is ``noise`` instead.  Off the image
    the image, model, family and noise are 0.  The model (with ``subtract``),
    ``own``, ``labels``/``lut``, ``noise`` and ``border_own`` may be None;
    ``border_own[s]`` tells whether a pixel of the stamp's outer ring belongs to
    family ``family[s]`` (the source continues beyond the stamp).
    """
    ny, nx = image.shape
    size = 2 * half + 1
    for s in range(ix.size):
        x0 = ix[s] - half
        y0 = iy[s] - half
        if border_own is not None:
            border_own[s] = False
        sub = False
        if model_index is not None:
            sub = subtract[s]
        for j in range(size):
            y = y0 + j
            for i in range(size):
                x = x0 + i
                inside = 0 <= y < ny and 0 <= x < nx
                v = 0.0
                f = 0
                if inside:
                    v = np.float64(image[y, x])
                    if model_index is not None:
                        if sub:
                            v -= np.float64(tiled_at(model_index, model_tiles, y, x))
                    if labels is not None:
                        f = family_at(labels, lut, y, x)
                if own is not None:
                    v += own[s, j, i]
                if noise is not None:
                    if f != 0 and f != family[s]:
                        v = np.float64(noise[y, x])
                out[s, j, i] = v
                on[s, j, i] = inside
                if border_own is not None and f == family[s]:
                    if j == 0 or j == size - 1 or i == 0 or i == size - 1:
                        border_own[s] = True


@numba.njit(**_OPTS)
def tiled_at(index, tiles, y, x):
    """Value of a tiled image at ``(y, x)``: 0 in tiles that were never allocated."""
    t = tiles.shape[1]
    k = index[y // t, x // t]
    if k < 0:
        return np.float32(0.0)
    return tiles[k, y % t, x % t]


@numba.njit(**_OPTS)
def tile_index(ny, nx, t, k, ox, oy, index):
    """Number the tiles of side ``t`` touched by ``k``-square stamps at ``(ox, oy)``.

    ``index`` (``ceil(ny / t) x ceil(nx / t)``, all -1) receives tile numbers
    in order of first use; returns their count.
    """
    count = 0
    for s in range(ox.size):
        y0, y1 = max(oy[s], 0), min(oy[s] + k, ny) - 1
        x0, x1 = max(ox[s], 0), min(ox[s] + k, nx) - 1
        if y1 < y0 or x1 < x0:
            continue
        for ty in range(y0 // t, y1 // t + 1):
            for tx in range(x0 // t, x1 // t + 1):
                if index[ty, tx] < 0:
                    index[ty, tx] = count
                    count += 1
    return count


@numba.njit(**_OPTS)
def add_stamps(index, tiles, ny, nx, stamps, amp, ox, oy):
    """Tiled image ``+= float32(stamps[s] * amp[s])`` placed at ``(ox, oy)``, inside ``ny x nx``."""
    t = tiles.shape[1]
    k = stamps.shape[1]
    for s in range(stamps.shape[0]):
        a = amp[s]
        for j in range(k):
            y = oy[s] + j
            if y < 0 or y >= ny:
                continue
            for i in range(k):
                x = ox[s] + i
                if 0 <= x < nx:
                    tiles[index[y // t, x // t], y % t, x % t] += np.float32(
                        np.float64(stamps[s, j, i]) * a)


@numba.njit(**_OPTS)
def subtract_unlabelled(image, index, tiles, labels, out):
    """``out = image - model`` (float32) in the model's tiles where ``labels == 0`` (or None)."""
    ny, nx = image.shape
    t = tiles.shape[1]
    for ty in range(index.shape[0]):
        for tx in range(index.shape[1]):
            k = index[ty, tx]
            if k < 0:
                continue
            for y in range(ty * t, min((ty + 1) * t, ny)):
                for x in range(tx * t, min((tx + 1) * t, nx)):
                    if labels is None or labels[y, x] == 0:
                        out[y, x] = image[y, x] - tiles[k, y - ty * t, x - tx * t]


@numba.njit(**_OPTS)
def label_counts(labels, n, counts):
    """``counts[v]`` += number of pixels with label ``v``, for ``0 <= v < n``."""
    ny, nx = labels.shape
    for y in range(ny):
        for x in range(nx):
            v = labels[y, x]
            if 0 <= v < n:
                counts[v] += 1


# -------------------------------------------------------------------------------- PSF flux


@numba.njit(**_OPTS)
def psf_flux_sums(stamps, variance, good, models, off_image, out, npix, edge):
    """Per-source sums of the unweighted PSF fit (see ``photometry.psf_flux``).

    ``out[s]`` = (flux, err, area, chi2, spp); ``variance * 0`` terms are kept so
    that an infinite variance under a masked pixel propagates as before.
    """
    n, h, w = stamps.shape
    for s in range(n):
        spp = 0.0
        sp = 0.0
        spi = 0.0
        sppv = 0.0
        sii = 0.0
        sip = 0.0
        spp_iv = 0.0
        cnt = 0
        e = False
        for j in range(h):
            for i in range(w):
                g = good[s, j, i]
                p = models[s, j, i]
                pg = p if g else 0.0
                v = variance[s, j, i]
                img = stamps[s, j, i]
                spp += pg * p
                sp += pg
                spi += pg * img
                sppv += pg * pg * v
                if g:
                    cnt += 1
                    if v > 0:
                        iv = 1.0 / v
                        sii += iv * img * img
                        sip += iv * img * p
                        spp_iv += iv * p * p
                if off_image is not None:
                    e = e or off_image[s, j, i]
        flux = spi / spp
        out[s, 0] = flux
        out[s, 1] = math.sqrt(sppv) / spp
        out[s, 2] = sp * sp / spp
        out[s, 3] = sii - 2 * flux * sip + flux * flux * spp_iv
        out[s, 4] = spp
        npix[s] = cnt
        edge[s] = e


@numba.njit(**_OPTS)
def blend_normal_equations(image, good, gv, models, rx, ry, mat, rhs, cov):
    """Normal matrix, right-hand side and pixel covariance of a joint PSF fit.

    ``mat[a, b] = sum P_a P_b g``, ``rhs[a] = sum P_a g I``, ``cov[a, b] = sum
    P_a P_b (g V)`` over the region pixels where both models are non-zero
    (model pixels outside the region do not count).
    """
    height, width = image.shape
    m, k, _ = models.shape
    for a in range(m):
        r = 0.0
        for j in range(k):
            y = ry[a] + j
            if y < 0 or y >= height:
                continue
            for i in range(k):
                x = rx[a] + i
                p = models[a, j, i]
                if p != 0.0 and 0 <= x < width:
                    r += p * good[y, x] * image[y, x]
        rhs[a] = r
        for b in range(a, m):
            xa = max(max(rx[a], rx[b]), 0)
            xb = min(min(rx[a], rx[b]) + k, width)
            ya = max(max(ry[a], ry[b]), 0)
            yb = min(min(ry[a], ry[b]) + k, height)
            s_m = 0.0
            s_c = 0.0
            for y in range(ya, yb):
                for x in range(xa, xb):
                    pa = models[a, y - ry[a], x - rx[a]]
                    pb = models[b, y - ry[b], x - rx[b]]
                    if pa != 0.0 and pb != 0.0:
                        s_m += pa * pb * good[y, x]
                        s_c += pa * pb * gv[y, x]
            mat[a, b] = s_m
            mat[b, a] = s_m
            cov[a, b] = s_c
            cov[b, a] = s_c


@numba.njit(**_OPTS)
def blend_residual_sums(image, variance, good, models, rx, ry, flux, chi2, sp, spp, npix):
    """Per-child chi2, sum P, sum P^2 and pixel count of a joint PSF fit.

    As the sparse formulation this replaces, a child's chi2 and pixel count
    run over every region pixel where its model is non-zero; its sums of P over
    the good ones.
    """
    height, width = image.shape
    m, k, _ = models.shape
    total = np.zeros((height, width))
    for c in range(m):
        for j in range(k):
            y = ry[c] + j
            for i in range(k):
                x = rx[c] + i
                p = models[c, j, i]
                if p != 0.0 and 0 <= y < height and 0 <= x < width:
                    total[y, x] += p * flux[c]
    for c in range(m):
        s_chi = 0.0
        s_p = 0.0
        s_pp = 0.0
        cnt = 0
        for j in range(k):
            y = ry[c] + j
            for i in range(k):
                x = rx[c] + i
                p = models[c, j, i]
                if p != 0.0 and 0 <= y < height and 0 <= x < width:
                    r = image[y, x] - total[y, x]
                    s_chi += r * r / variance[y, x]
                    if good[y, x]:
                        s_p += p
                        s_pp += p * p
                    cnt += 1
        chi2[c] = s_chi
        sp[c] = s_p
        spp[c] = s_pp
        npix[c] = cnt


@numba.njit(**_OPTS)
def recentroid_stamps(image, variance, models, rx, ry, flux, cx, cy, half, out, out_var, out_on):
    """Stamps of a blend region minus every child's fitted model but the stamp's own.

    ``out[c]`` is centred on the region pixel ``(cx[c], cy[c])``; outside the
    region the image and variance are 0 and ``out_on`` is False.
    """
    height, width = image.shape
    m, k, _ = models.shape
    total = np.zeros((height, width))
    for c in range(m):
        for j in range(k):
            y = ry[c] + j
            for i in range(k):
                x = rx[c] + i
                if 0 <= y < height and 0 <= x < width:
                    total[y, x] += flux[c] * models[c, j, i]
    size = 2 * half + 1
    for c in range(m):
        for j in range(size):
            y = cy[c] - half + j
            for i in range(size):
                x = cx[c] - half + i
                if 0 <= y < height and 0 <= x < width:
                    v = image[y, x] - total[y, x]
                    mj, mi = y - ry[c], x - rx[c]
                    if 0 <= mj < k and 0 <= mi < k:
                        v += flux[c] * models[c, mj, mi]
                    out[c, j, i] = v
                    out_var[c, j, i] = variance[y, x]
                    out_on[c, j, i] = True
                else:
                    out[c, j, i] = 0.0
                    out_var[c, j, i] = 0.0
                    out_on[c, j, i] = False


# ------------------------------------------------------------------------- adaptive moments


@numba.njit(**_OPTS)
def gauss_row(out, x0, a, b, c):
    """``out[i] = exp(-((a dx^2 + c) + b dx) / 2)`` with ``dx = i - x0``, for a row of pixels.

    With ``a > 0`` the exponent is a parabola: the pixel nearest its vertex is
    evaluated directly and the others by the exact recurrence of Gaussian
    ratios (``w[i+1] = w[i] g[i]``, ``g[i+1] = g[i] exp(-a)``) walking outwards,
    where both factors only shrink (three exponentials per row instead of one
    per pixel; relative error ~ n * 1e-16).  Otherwise every pixel is evaluated.
    """
    n = out.size
    if not (a > 0.0 and math.isfinite(a) and math.isfinite(b) and math.isfinite(c)):
        for i in range(n):
            dx = i - x0
            out[i] = math.exp(-0.5 * ((a * dx * dx + c) + b * dx))
        return
    vertex = x0 - b / (2.0 * a)
    top = 0 if not vertex > 0.0 else (n - 1 if not vertex < n - 1 else round(vertex))
    dx = top - x0
    w_top = math.exp(-0.5 * ((a * dx * dx + c) + b * dx))
    out[top] = w_top
    shrink = math.exp(-a)
    w = w_top
    g = math.exp(-0.5 * (a * (2.0 * dx + 1.0) + b))  # w[i + 1] / w[i] at i = top
    for i in range(top + 1, n):
        w *= g
        g *= shrink
        out[i] = w
    w = w_top
    g = math.exp(-0.5 * (a * (1.0 - 2.0 * dx) - b))  # w[i - 1] / w[i] at i = top
    for i in range(top - 1, -1, -1):
        w *= g
        g *= shrink
        out[i] = w


@numba.njit(**_OPTS)
def _moment_sums(img, good, var, cx, cy, mxx, myy, mxy, sums, row):
    """Moment sums of ``w I`` about ``(cx, cy)``: s0, sx, sy, sxx, syy, sxy, sum w^2 V."""
    ky, kx = img.shape
    det = mxx * myy - mxy * mxy
    ixx, iyy, ixy = myy / det, mxx / det, -mxy / det
    s0 = sx = sy = sxx = syy = sxy = sw2v = 0.0
    for j in range(ky):
        dy = j - cy
        gauss_row(row, cx, ixx, 2.0 * ixy * dy, iyy * dy * dy)
        r0 = r1 = r2 = 0.0
        for i in range(kx):
            w = row[i]
            if good is not None and not good[j, i]:
                w = 0.0
            if var is not None:
                sw2v += w * w * var[j, i]
            wi = w * img[j, i]
            dx = i - cx
            r0 += wi
            r1 += wi * dx
            r2 += wi * dx * dx
            sxy += wi * dx * dy
        s0 += r0
        sx += r1
        sxx += r2
        sy += r0 * dy
        syy += r0 * dy * dy
    sums[0], sums[1], sums[2], sums[3] = s0, sx, sy, sxx
    sums[4], sums[5], sums[6] = syy, sxy, sw2v


@numba.njit(**_OPTS)
def adaptive_moments_loop(stamps, good, variance, cx, cy, mxx, myy, mxy, max_iter, tol1, tol2,
                          recentre, max_step, max_trace, n_iter, converged, bad, flux, sw2v):
    """The iteration of ``moments.adaptive_moments``, one source at a time.

    ``cx, cy, mxx, myy, mxy`` hold the start and are updated in place; the
    final weight's ``2 sum(w I)`` goes to ``flux`` and ``sum(w^2 V)`` to ``sw2v``.
    """
    n, _, kx = stamps.shape
    sums = np.empty(7)
    row = np.empty(kx)
    for s in range(n):
        g = good[s] if good is not None else None
        for it in range(1, max_iter + 1):
            axx, ayy, axy = mxx[s], myy[s], mxy[s]
            _moment_sums(stamps[s], g, None, cx[s], cy[s], axx, ayy, axy, sums, row)
            s0 = sums[0]
            mx, my = sums[1] / s0, sums[2] / s0
            qxx = sums[3] / s0 - mx * mx
            qyy = sums[4] / s0 - my * my
            qxy = sums[5] / s0 - mx * my
            qdet = qxx * qyy - qxy * qxy
            qixx, qiyy, qixy = qyy / qdet, qxx / qdet, -qxy / qdet
            wdet = axx * ayy - axy * axy
            pxx = qixx - ayy / wdet
            pyy = qiyy - axx / wdet
            pxy = qixy - (-axy / wdet)
            pdet = pxx * pyy - pxy * pxy
            cxx, cyy, cxy = pyy / pdet, pxx / pdet, -pxy / pdet
            n_iter[s] = it
            ok = (s0 > 0 and pxx > 0 and pdet > 0 and math.isfinite(cxx + cyy + cxy)
                  and (cxx + cyy) < max_trace)
            if not ok:
                bad[s] = True
                break
            step_x = step_y = 0.0
            if recentre:
                ux, uy = qixx * mx + qixy * my, qixy * mx + qiyy * my
                step_x = cxx * ux + cxy * uy
                step_y = cxy * ux + cyy * uy
                step = math.hypot(step_x, step_y)
                if step > max_step:
                    scale = max_step / step
                    step_x, step_y = step_x * scale, step_y * scale
            t_old, t_new = axx + ayy, cxx + cyy
            de1 = (cxx - cyy) / t_new - (axx - ayy) / t_old
            de2 = 2 * cxy / t_new - 2 * axy / t_old
            done = (abs(de1) < tol1 and abs(de2) < tol1 and abs(t_new / t_old - 1.0) < tol2
                    and (step_x * step_x + step_y * step_y) < tol2 * tol2 * t_new)
            mxx[s], myy[s], mxy[s] = cxx, cyy, cxy
            cx[s] += step_x
            cy[s] += step_y
            if done:
                converged[s] = True
                break
        v = variance[s] if variance is not None else None
        _moment_sums(stamps[s], g, v, cx[s], cy[s], mxx[s], myy[s], mxy[s], sums, row)
        flux[s] = 2.0 * sums[0]
        sw2v[s] = sums[6]


@numba.njit(**_OPTS)
def gaussian_flux_loop(stamps, variance, good, x, y, ixx, iyy, ixy, flux, err):
    """``2 sum(w I)`` and ``2 sqrt(sum(w^2 V))`` with the elliptical Gaussian weight of moments."""
    n, h, w = stamps.shape
    row = np.empty(w)
    for s in range(n):
        det = ixx[s] * iyy[s] - ixy[s] * ixy[s]
        axx, ayy, axy = iyy[s] / det, ixx[s] / det, -ixy[s] / det
        f = 0.0
        v = 0.0
        for j in range(h):
            dy = j - y[s]
            gauss_row(row, x[s], axx, 2.0 * axy * dy, ayy * dy * dy)
            for i in range(w):
                wt = row[i]
                if good is not None and not good[s, j, i]:
                    wt = 0.0
                f += wt * stamps[s, j, i]
                v += wt * wt * variance[s, j, i]
        if det > 0:
            flux[s] = 2.0 * f
            err[s] = 2.0 * math.sqrt(v)
        else:
            flux[s] = np.nan
            err[s] = np.nan


# ------------------------------------------------------------ statistics on full-frame planes


@numba.njit(**_OPTS)
def _select(a, lo, hi, k):
    """Reorder ``a[lo:hi]`` so that ``a[k]`` is its ``(k - lo)``-th smallest value.

    Values before ``k`` are <= ``a[k]`` and values after are >= it (quickselect,
    median-of-three pivots; no NaNs).
    """
    hi -= 1
    while hi > lo:
        mid = (lo + hi) // 2
        if a[mid] < a[lo]:
            a[mid], a[lo] = a[lo], a[mid]
        if a[hi] < a[lo]:
            a[hi], a[lo] = a[lo], a[hi]
        if a[hi] < a[mid]:
            a[hi], a[mid] = a[mid], a[hi]
        pivot = a[mid]
        i, j = lo, hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            return


@numba.njit(**_OPTS)
def select_ranks(a, n, ranks, out, work):
    """``out[q]`` = the ``ranks[q]``-th smallest of ``a[:n]`` (``ranks`` ascending; ``a`` kept).

    A sorted sub-sample brackets the requested ranks with a value window; one
    pass histograms the values into up to 1024 buckets over it, a second gathers the
    buckets holding the ranks into ``work`` and each rank is selected exactly
    there.  Ranks outside the window (unlucky sample) fall back to quickselect
    on a copy.  Branchy quickselect over all values was 3x slower.
    """
    m = ranks.size
    if n <= 256:
        work[:n] = a[:n]
        _select_sequential(work, n, ranks, out)
        return
    step = max(n // 512, 16)  # a sample of 512 values (at most n / 16)
    ns = n // step
    sample = np.sort(a[0 : ns * step : step])
    margin = 4 * int(math.sqrt(ns)) + 2  # ~4 sigma of the sample rank scatter
    i_lo = max(ranks[0] * ns // n - margin, 0)
    i_hi = min(ranks[m - 1] * ns // n + margin, ns - 1)
    w_lo, w_hi = np.float64(sample[i_lo]), np.float64(sample[i_hi])
    nb = min(1024, max(n // 8, 16))
    scale = nb / (w_hi - w_lo) if w_hi > w_lo else 0.0
    # Bucket of every value (0: below the window, nb + 1: above), branch-free.
    bidx = np.empty(n, dtype=np.int32)
    for i in range(n):
        v = np.float64(a[i])
        inside = min(int(max((v - w_lo) * scale, 0.0)), nb - 1) + 1
        bidx[i] = inside if (v >= w_lo) & (v <= w_hi) else (0 if v < w_lo else nb + 1)
    full_counts = np.zeros(nb + 2, dtype=np.int64)
    for i in range(n):
        full_counts[bidx[i]] += 1
    under = full_counts[0]
    counts = full_counts[1 : nb + 1]
    bucket = np.empty(m, dtype=np.int64)
    within = np.empty(m, dtype=np.int64)
    ok = True
    cum = under
    b = 0
    for q in range(m):
        if ranks[q] < under:
            ok = False
            break
        while b < nb and cum + counts[b] <= ranks[q]:
            cum += counts[b]
            b += 1
        if b == nb:
            ok = False
            break
        bucket[q] = b
        within[q] = ranks[q] - cum
    if not ok:
        work[:n] = a[:n]
        _select_sequential(work, n, ranks, out)
        return
    slot = np.full(nb, -1, dtype=np.int64)
    start = np.zeros(m + 1, dtype=np.int64)
    n_slots = 0
    for q in range(m):
        if slot[bucket[q]] < 0:
            slot[bucket[q]] = n_slots
            start[n_slots + 1] = start[n_slots] + counts[bucket[q]]
            n_slots += 1
    fill = start[:n_slots].copy()
    slot_of = np.full(nb + 2, -1, dtype=np.int64)
    slot_of[1 : nb + 1] = slot
    for i in range(n):
        k = slot_of[bidx[i]]
        if k >= 0:
            work[fill[k]] = a[i]
            fill[k] += 1
    for q in range(m):
        k = slot[bucket[q]]
        j = start[k] + within[q]
        _select(work, start[k], start[k + 1], j)
        out[q] = work[j]


@numba.njit(**_OPTS)
def _select_sequential(a, n, ranks, out):
    """Quickselect of ascending ranks in ``a[:n]`` (reordered), each above the previous."""
    begin = 0
    for q in range(ranks.size):
        if ranks[q] >= begin:
            _select(a, begin, n, ranks[q])
            begin = ranks[q] + 1
        out[q] = a[ranks[q]]


@numba.njit(**_OPTS)
def _quantiles(a, count, probs, out, work):
    """Linearly interpolated quantiles (numpy's rule) of ``a[:count]``, ``probs`` ascending.

    ``v[lo] (1 - f) + v[hi] f`` with ``lo + f = p (count - 1)``; the order
    statistics come from :func:`select_ranks` (``a`` is kept, ``work`` is scratch).
    """
    last = max(count - 1, 0)
    m = probs.size
    ranks = np.empty(2 * m, dtype=np.int64)
    for q in range(m):
        lo = math.floor(last * probs[q])
        ranks[2 * q] = lo
        ranks[2 * q + 1] = min(lo + 1, last)
    values = np.empty(2 * m, dtype=a.dtype)
    select_ranks(a, count, ranks, values, work)
    for q in range(m):
        pos = last * probs[q]
        frac = pos - ranks[2 * q]
        out[q] = np.float64(values[2 * q]) * (1 - frac) + np.float64(values[2 * q + 1]) * frac


@numba.njit(**_OPTS)
def local_background_loop(planes, mask, labels, bad_bits, index, ix, iy, dx, dy, n_sigma, n_iter,
                          value, stdev, n_used):
    """Clipped mean of the annulus pixels ``(ix + dx, iy + dy)`` of ``planes[index[s]]``.

    See ``photometry.local_background``.  A pixel is used when it is on the
    plane, has none of ``bad_bits`` in ``mask`` and (if ``labels`` is given)
    belongs to no footprint (label 0).  Values are float32 as in the numpy version; sums
    are float64.
    """
    _, ny, nx = planes.shape
    m = dx.size
    vals = np.empty(m, dtype=np.float32)
    work = np.empty(m, dtype=np.float32)
    probs = np.array([0.25, 0.5, 0.75])
    quart = np.empty(3)
    for s in range(ix.size):
        k = index[s]
        count = 0
        for a in range(m):
            x, y = ix[s] + dx[a], iy[s] + dy[a]
            if 0 <= x < nx and 0 <= y < ny and (mask[k, y, x] & bad_bits) == 0:
                if labels is None or labels[k, y, x] == 0:
                    vals[count] = np.float32(planes[k, y, x])
                    count += 1
        used = vals[:count]
        if count > 0:
            _quantiles(used, count, probs, quart, work)
            centre = quart[1]
            iqr = quart[2] - quart[0]
        else:
            centre = iqr = np.nan
        half = n_sigma * 0.741301109252802 * iqr
        mean = var = np.nan
        cnt = 0
        for _ in range(max(n_iter, 1)):
            total = 0.0
            cnt = 0
            for a in range(count):
                if abs(np.float64(used[a]) - centre) <= half:
                    total += used[a]
                    cnt += 1
            mean = total / cnt
            m32 = np.float32(mean)
            ss = 0.0
            for a in range(count):
                if abs(np.float64(used[a]) - centre) <= half:
                    d = np.float64(used[a] - m32)
                    ss += d * d
            var = ss / (cnt - 1)
            centre, half = mean, n_sigma * math.sqrt(var)
        n_used[s] = cnt
        value[s] = mean if cnt > 0 else np.nan
        stdev[s] = math.sqrt(var) if cnt > 1 else np.nan


@numba.njit(**_OPTS)
def variance_median_loop(variance, mask, labels, bad_bits, ix, iy, half, median, empty):
    """Median variance of the unmasked, unlabelled (label 0) pixels of the ``2 half + 1`` square."""
    ny, nx = variance.shape
    size = 2 * half + 1
    vals = np.empty(size * size)
    work = np.empty(size * size)
    ranks = np.empty(2, dtype=np.int64)
    mid = np.empty(2)
    for s in range(ix.size):
        count = 0
        for y in range(iy[s] - half, iy[s] + half + 1):
            if y < 0 or y >= ny:
                continue
            for x in range(ix[s] - half, ix[s] + half + 1):
                if 0 <= x < nx and (mask[y, x] & bad_bits) == 0:
                    if labels is None or labels[y, x] == 0:
                        vals[count] = variance[y, x]
                        count += 1
        empty[s] = count == 0
        if count == 0:
            median[s] = np.nan
            continue
        ranks[0] = (count - 1) // 2
        ranks[1] = count // 2
        select_ranks(vals, count, ranks, mid, work)
        median[s] = 0.5 * (mid[0] + mid[1])


@numba.njit(**_OPTS)
def pixel_flag_bits(mask, seg, labels, lut, ix, iy, half, ids, family, is_parent, radius2,
                    foot_bits, centre_bits, edge):
    """Mask bits over each source's footprint and central 3x3, and footprint-at-edge.

    The footprint is, within the ``2 half + 1`` square: the family's pixels
    (parents) or the source's own segment, or without ``seg`` the disc
    ``dx^2 + dy^2 <= radius2``; the central pixel always belongs.  ``edge`` is
    True when a footprint pixel is off the image or on its outermost rows/columns.
    """
    ny, nx = mask.shape
    for s in range(ix.size):
        fb = 0
        cb = 0
        e = False
        for j in range(-half, half + 1):
            y = iy[s] + j
            for i in range(-half, half + 1):
                x = ix[s] + i
                inside = 0 <= y < ny and 0 <= x < nx
                if seg is not None:
                    if is_parent[s]:
                        label = family_at(labels, lut, y, x) if inside else 0
                        foot = label == family[s]
                    else:
                        label = seg[y, x] if inside else 0
                        foot = label == ids[s]
                else:
                    foot = i * i + j * j <= radius2
                foot = foot or (i == 0 and j == 0)
                if inside:
                    mv = mask[y, x]
                    if foot:
                        fb |= mv
                    if -1 <= i <= 1 and -1 <= j <= 1:
                        cb |= mv
                if foot and (not inside or y == 0 or y == ny - 1 or x == 0 or x == nx - 1):
                    e = True
        foot_bits[s] = fb
        centre_bits[s] = cb
        edge[s] = e
