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
def clean_into(image, model, fam, noise, ix, iy, half, family, subtract, own, out, on, fam_out):
    """Neighbour-cleaned float64 stamps (see ``Scene.stamps``).

    ``out = image - subtract * model + own``; where ``fam`` labels another
    family than ``family[s]`` the value is ``noise`` instead.  Off the image the
    image, model, family and noise are 0.  ``model``/``subtract``, ``own``,
    ``fam``, ``noise`` and ``fam_out`` may be None.
    """
    ny, nx = image.shape
    size = 2 * half + 1
    for s in range(ix.size):
        x0 = ix[s] - half
        y0 = iy[s] - half
        sub = False
        if model is not None:
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
                    if model is not None:
                        if sub:
                            v -= np.float64(model[y, x])
                    if fam is not None:
                        f = fam[y, x]
                if own is not None:
                    v += own[s, j, i]
                if noise is not None:
                    if f != 0 and f != family[s]:
                        v = np.float64(noise[y, x])
                out[s, j, i] = v
                on[s, j, i] = inside
                if fam_out is not None:
                    fam_out[s, j, i] = f


@numba.njit(**_OPTS)
def add_stamps(target, stamps, amp, ox, oy):
    """``target[oy + j, ox + i] += float32(stamps[s, j, i] * amp[s])`` inside ``target``."""
    ny, nx = target.shape
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
                    target[y, x] += np.float32(np.float64(stamps[s, j, i]) * a)


@numba.njit(**_OPTS)
def removed_into(image, model, fam, noise, out):
    """``out = image - model`` (float32), replaced by ``noise`` where ``fam != 0``."""
    ny, nx = image.shape
    for y in range(ny):
        for x in range(nx):
            if noise is not None and fam[y, x] != 0:
                out[y, x] = noise[y, x]
            elif model is not None:
                out[y, x] = image[y, x] - model[y, x]
            else:
                out[y, x] = image[y, x]


@numba.njit(**_OPTS)
def family_image(seg, lut, out, counts):
    """``out = lut[seg]`` where ``0 <= seg < lut.size``, else ``seg`` (unknown labels).

    ``counts[v]`` (zeroed, ``lut.size`` long) receives the number of pixels of label ``v``.
    """
    ny, nx = seg.shape
    n = lut.size
    for y in range(ny):
        for x in range(nx):
            v = seg[y, x]
            if 0 <= v < n:
                out[y, x] = lut[v]
                counts[v] += 1
            else:
                out[y, x] = v


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
def _min_of(a, lo, hi):
    out = a[lo]
    for i in range(lo + 1, hi):
        if a[i] < out:
            out = a[i]
    return out


@numba.njit(**_OPTS)
def _quantiles(a, count, probs, out):
    """Linearly interpolated quantiles (numpy's rule) of ``a[:count]``, ``probs`` ascending.

    ``a`` is reordered.  Each quantile needs the order statistics at
    ``floor(p (count - 1))`` and the next; they are found by successive
    selections, each in the part of ``a`` above the previous one.
    """
    last = max(count - 1, 0)
    start = 0
    for q in range(probs.size):
        pos = last * probs[q]
        lo = math.floor(pos)
        hi = min(lo + 1, last)
        frac = pos - lo
        if lo >= start:
            _select(a, start, count, lo)
        v_lo = a[lo]
        v_hi = v_lo if hi == lo else _min_of(a, lo + 1, count)
        out[q] = np.float64(v_lo) * (1 - frac) + np.float64(v_hi) * frac
        start = lo + 1


@numba.njit(**_OPTS)
def local_background_loop(planes, mask, fam, bad_bits, index, ix, iy, dx, dy, n_sigma, n_iter,
                          value, stdev, n_used):
    """Clipped mean of the annulus pixels ``(ix + dx, iy + dy)`` of ``planes[index[s]]``.

    See ``photometry.local_background``.  A pixel is used when it is on the
    plane, has none of ``bad_bits`` in ``mask`` and (if ``fam`` is given)
    belongs to no footprint.  Values are float32 as in the numpy version; sums
    are float64.
    """
    _, ny, nx = planes.shape
    m = dx.size
    vals = np.empty(m, dtype=np.float32)
    probs = np.array([0.25, 0.5, 0.75])
    quart = np.empty(3)
    for s in range(ix.size):
        k = index[s]
        count = 0
        for a in range(m):
            x, y = ix[s] + dx[a], iy[s] + dy[a]
            if 0 <= x < nx and 0 <= y < ny and (mask[k, y, x] & bad_bits) == 0:
                if fam is None or fam[k, y, x] == 0:
                    vals[count] = np.float32(planes[k, y, x])
                    count += 1
        used = vals[:count]
        if count > 0:
            _quantiles(used, count, probs, quart)
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
def variance_median_loop(variance, mask, fam, bad_bits, ix, iy, half, median, empty):
    """Median variance of the unmasked, unlabelled pixels of the ``2 half + 1`` square."""
    ny, nx = variance.shape
    size = 2 * half + 1
    vals = np.empty(size * size)
    for s in range(ix.size):
        count = 0
        for y in range(iy[s] - half, iy[s] + half + 1):
            if y < 0 or y >= ny:
                continue
            for x in range(ix[s] - half, ix[s] + half + 1):
                if 0 <= x < nx and (mask[y, x] & bad_bits) == 0:
                    if fam is None or fam[y, x] == 0:
                        vals[count] = variance[y, x]
                        count += 1
        empty[s] = count == 0
        if count == 0:
            median[s] = np.nan
            continue
        lo = (count - 1) // 2
        _select(vals, 0, count, lo)
        v_hi = vals[lo] if count % 2 else _min_of(vals, lo + 1, count)
        median[s] = 0.5 * (vals[lo] + v_hi)


@numba.njit(**_OPTS)
def pixel_flag_bits(mask, seg, fam, ix, iy, half, ids, family, is_parent, radius2,
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
                        label = fam[y, x] if inside else 0
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
