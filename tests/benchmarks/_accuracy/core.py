"""Pure helpers of the accuracy script: statistics, matching, PSF truth, artefact geometry.

No file I/O here: everything takes numpy arrays, so ``tests/test_accuracy_script.py``
checks each function on tiny inputs whose answer is known.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

__all__ = [
    "FWHM_PER_SIGMA",
    "PolyField",
    "artefact_samples",
    "disk_mask",
    "figure",
    "isolated",
    "jacobian",
    "match_nearest",
    "mixture_moments",
    "null_figure",
    "offsets_mas",
    "rel_moment_errors",
    "robust_sigma",
    "snr_limit_magnitude",
    "spread",
    "transform_moments",
    "weighted_mean_moments",
]

FWHM_PER_SIGMA = math.sqrt(8.0 * math.log(2.0))


# ------------------------------------------------------------------------ output records
def _num(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def figure(value, n: int, target: str, ok: bool | None = None, **extra) -> dict:
    """One figure: ``value``, its sample size ``n``, the ``target`` and ``pass``.

    ``extra`` values (numbers, dicts, strings) are kept as siblings; NaN
    becomes null.
    """
    out = {"value": _num(value), "n": int(n), "target": target,
           "pass": None if ok is None or _num(value) is None else bool(ok)}
    for k, v in extra.items():
        out[k] = _num(v) if isinstance(v, (float, np.floating)) else v
    return out


def null_figure(reason: str, target: str, n: int = 0) -> dict:
    """A figure that could not be computed, with the reason."""
    return {"value": None, "n": int(n), "target": target, "pass": None, "reason": reason}


def robust_sigma(x) -> float:
    """1.4826 times the median absolute deviation from the median (NaN for no data)."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan")
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def spread(values) -> dict:
    """``median`` and ``max`` of ``|values|`` and the count, for per-unit figures."""
    a = np.abs(np.asarray(values, float))
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"median": None, "max": None, "n_units": 0}
    return {"median": float(np.median(a)), "max": float(a.max()), "n_units": int(a.size)}


# ------------------------------------------------------------------------------ matching
def _unit(ra, dec) -> np.ndarray:
    r, d = np.radians(ra), np.radians(dec)
    return np.column_stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)])


def match_nearest(x1, y1, x2, y2, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Unique nearest pairs between two point sets within ``radius`` (same units).

    Pairs are taken in order of increasing distance, each point at most once.

    Returns
    -------
    i1, i2 : numpy.ndarray
        Indices into the first and second set, same length.
    """
    x1, y1, x2, y2 = (np.asarray(v, float) for v in (x1, y1, x2, y2))
    if x1.size == 0 or x2.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    dist, j = cKDTree(np.column_stack([x2, y2])).query(np.column_stack([x1, y1]), k=4,
                                                        distance_upper_bound=radius)
    i = np.repeat(np.arange(x1.size), dist.shape[1])
    dist, j = dist.ravel(), j.ravel()
    ok = np.isfinite(dist)
    i, j, dist = i[ok], j[ok], dist[ok]
    order = np.argsort(dist, kind="stable")
    used1 = np.zeros(x1.size, bool)
    used2 = np.zeros(x2.size, bool)
    out1, out2 = [], []
    for a, b in zip(i[order], j[order], strict=True):
        if not used1[a] and not used2[b]:
            used1[a] = used2[b] = True
            out1.append(a)
            out2.append(b)
    return np.asarray(out1, np.int64), np.asarray(out2, np.int64)


def isolated(ra, dec, flux, hlr_arcsec, candidates, *, radius_arcsec: float = 3.0,
             max_fraction: float = 0.01) -> np.ndarray:
    """Whether each candidate has no neighbour brighter than ``max_fraction`` of it nearby.

    A neighbour counts within ``radius_arcsec`` plus twice its half-light
    radius (extended galaxies reach farther).

    Parameters
    ----------
    ra, dec, flux, hlr_arcsec : array_like
        ``(n,)`` every object (deg, deg, any flux unit, arcsec; NaN radius = point).
    candidates : array_like
        Indices of the objects to test.

    Returns
    -------
    numpy.ndarray
        Boolean, one per candidate.
    """
    flux = np.asarray(flux, float)
    hlr = np.nan_to_num(np.asarray(hlr_arcsec, float), nan=0.0)
    cand = np.asarray(candidates, np.int64)
    if cand.size == 0:
        return np.zeros(0, bool)
    xyz = _unit(ra, dec)
    reach = radius_arcsec + 2.0 * hlr
    chord = 2.0 * np.sin(np.radians(reach.max() / 3600.0) / 2.0)
    tree = cKDTree(xyz)
    ok = np.ones(cand.size, bool)
    for k, nbrs in enumerate(tree.query_ball_point(xyz[cand], chord)):
        nbrs = np.asarray(nbrs, np.int64)
        nbrs = nbrs[nbrs != cand[k]]
        if nbrs.size == 0:
            continue
        sep = np.degrees(2 * np.arcsin(np.linalg.norm(xyz[nbrs] - xyz[cand[k]], axis=1) / 2)) * 3600
        close = sep < reach[nbrs]
        ok[k] = not np.any(flux[nbrs][close] > max_fraction * flux[cand[k]])
    return ok


def offsets_mas(ra, dec, ra_ref, dec_ref) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (East, North) in milliarcseconds of ``(ra, dec)`` from the reference (deg)."""
    d_ra = (np.asarray(ra, float) - np.asarray(ra_ref, float) + 180.0) % 360.0 - 180.0
    east = d_ra * np.cos(np.radians(dec_ref)) * 3.6e6
    north = (np.asarray(dec, float) - np.asarray(dec_ref, float)) * 3.6e6
    return east, north


# --------------------------------------------------------------------------- PSF moments
class PolyField:
    """Least-squares tensor-product polynomial of several quantities over a detector.

    Interpolates the truth PSF grid (a few nodes per side) to any pixel.

    Parameters
    ----------
    x, y : array_like
        ``(n,)`` node positions, pixels.
    values : array_like
        ``(n, k)`` quantities at the nodes.
    degree : int
        Degree per axis (lowered to fit the number of distinct node coordinates).
    """

    def __init__(self, x, y, values, degree: int = 3):
        x, y = np.asarray(x, float), np.asarray(y, float)
        values = np.asarray(values, float)
        self.values_shape = values.shape[1:]
        values = values.reshape(len(x), -1)
        self.degree = int(min(degree, np.unique(x).size - 1, np.unique(y).size - 1))
        self._c = ((x.min() + x.max()) / 2, (y.min() + y.max()) / 2)
        self._s = (max((x.max() - x.min()) / 2, 1.0), max((y.max() - y.min()) / 2, 1.0))
        design = self._design(x, y)
        self._coef, *_ = np.linalg.lstsq(design, values, rcond=None)
        resid = design @ self._coef - values
        #: Largest absolute fit residual at the nodes, per quantity.
        self.max_residual = np.abs(resid).max(axis=0).reshape(self.values_shape)

    def _design(self, x, y) -> np.ndarray:
        u = (np.asarray(x, float) - self._c[0]) / self._s[0]
        v = (np.asarray(y, float) - self._c[1]) / self._s[1]
        d = self.degree
        return np.stack([u ** i * v ** j for j in range(d + 1) for i in range(d + 1)], axis=-1)

    def __call__(self, x, y) -> np.ndarray:
        """``(m, k)`` values at ``(m,)`` positions."""
        out = self._design(np.atleast_1d(x), np.atleast_1d(y)) @ self._coef
        return out.reshape(-1, *self.values_shape)

    def __repr__(self) -> str:
        return f"PolyField(degree={self.degree}, quantities={self.values_shape})"


def rel_moment_errors(got, want) -> np.ndarray:
    """``(n, 3)`` relative errors of ``(Ixx, Iyy, Ixy)``; Ixy relative to half the trace."""
    got, want = np.atleast_2d(got), np.atleast_2d(want)
    half = 0.5 * (want[:, 0] + want[:, 1])
    return np.column_stack([(got[:, 0] - want[:, 0]) / want[:, 0],
                            (got[:, 1] - want[:, 1]) / want[:, 1],
                            (got[:, 2] - want[:, 2]) / half])


def transform_moments(moments, a) -> np.ndarray:
    """Second moments ``(n, 3)`` mapped by the local linear maps ``a`` ``(n, 2, 2)``: A M A^T."""
    m = np.atleast_2d(moments)
    mat = np.stack([np.stack([m[:, 0], m[:, 2]], -1), np.stack([m[:, 2], m[:, 1]], -1)], -2)
    out = a @ mat @ np.swapaxes(a, -1, -2)
    return np.column_stack([out[:, 0, 0], out[:, 1, 1], out[:, 0, 1]])


def jacobian(mapping, x, y, step: float = 0.5) -> np.ndarray:
    """``(n, 2, 2)`` derivatives ``d(u, v) / d(x, y)`` of ``mapping(x, y) -> (u, v)``.

    Central differences with ``step`` pixels; ``mapping`` must take arrays.
    """
    x, y = np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))
    n = x.size
    xs = np.concatenate([x + step, x - step, x, x])
    ys = np.concatenate([y, y, y + step, y - step])
    u, v = (np.asarray(a, float) for a in mapping(xs, ys))
    du_dx, dv_dx = (u[:n] - u[n:2 * n]) / (2 * step), (v[:n] - v[n:2 * n]) / (2 * step)
    du_dy, dv_dy = (u[2 * n:3 * n] - u[3 * n:]) / (2 * step), (v[2 * n:3 * n] - v[3 * n:]) / (2 * step)
    return np.stack([np.stack([du_dx, du_dy], -1), np.stack([dv_dx, dv_dy], -1)], -2)


def weighted_mean_moments(moments, weights, groups, n_groups: int) -> np.ndarray:
    """``(n_groups, 3)`` weighted means of ``(n, 3)`` moments by group index ``(n,)``."""
    m = np.atleast_2d(moments)
    w = np.asarray(weights, float)
    g = np.asarray(groups, np.int64)
    wsum = np.bincount(g, w, minlength=n_groups)
    out = np.stack([np.bincount(g, w * m[:, k], minlength=n_groups) for k in range(3)], -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return out / wsum[:, None]


def mixture_moments(cont_moments, beta, weights, groups, n_groups: int, *, size: int = 25
                    ) -> np.ndarray:
    """Adaptive moments of weighted means of pixel-integrated Moffat PSFs.

    The exact truth for a coadd PSF: each input's true PSF (continuous
    moments already in the coadd frame, Moffat index ``beta``) integrated over
    the coadd pixels, averaged with the coadd weights, then measured like a
    PSF model.

    Parameters
    ----------
    cont_moments : array_like
        ``(n, 3)`` continuous-profile moments (pixel^2) of each input.
    beta, weights, groups : array_like
        ``(n,)`` Moffat index, weight and output group of each input.
    n_groups : int
        Number of outputs.
    size : int
        Odd stamp side, pixels.

    Returns
    -------
    numpy.ndarray
        ``(n_groups, 3)`` adaptive ``(Ixx, Iyy, Ixy)``; NaN for empty groups.
    """
    from processing.algorithms.moments import adaptive_moments
    from sample_data.psf import moffat_pixels

    m = np.atleast_2d(cont_moments)
    half = size // 2
    grid = np.arange(-half, half + 1, dtype=float)
    out = np.zeros((n_groups, size, size))
    # 25 pixels and 3 x 3 quadrature points per pixel: moments within 3e-5 of 41 and 4 x 4
    g = np.asarray(groups, np.int64)
    w = np.asarray(weights, float)
    beta = np.broadcast_to(np.asarray(beta, float), g.shape)
    for b in np.unique(beta):  # moffat_pixels takes one beta
        sel = np.flatnonzero(beta == b)
        for chunk in np.array_split(sel, max(1, sel.size // 2000)):
            img = moffat_pixels(grid[None, None, :], grid[None, :, None],
                                m[chunk, 0, None, None], m[chunk, 1, None, None],
                                m[chunk, 2, None, None], float(b), n_gauss=3)
            img /= img.sum(axis=(1, 2), keepdims=True)
            np.add.at(out, g[chunk], w[chunk, None, None] * img)
    res = np.full((n_groups, 3), np.nan)
    has = np.bincount(g, w, minlength=n_groups) > 0
    if has.any():
        stamps = out[has] / out[has].sum(axis=(1, 2), keepdims=True)
        am = adaptive_moments(stamps, np.full(has.sum(), half, float),
                              np.full(has.sum(), half, float), initial=4.0)
        res[has] = np.column_stack([am.xx, am.yy, am.xy])
    return res


# ---------------------------------------------------------------------------- depth
def snr_limit_magnitude(mag, snr, *, snr_min: float = 5.0, snr_max: float = 50.0,
                        at: float = 5.0) -> tuple[float, float, int]:
    """Magnitude where a straight-line fit of ``log10(S/N)`` against magnitude gives ``at``.

    Only points with ``snr_min <= S/N <= snr_max`` enter the fit.

    Returns
    -------
    mag_at, slope, n
        The magnitude (NaN with fewer than 5 points), the fitted slope
        (d log10 S/N / d mag, -0.4 for background-limited point sources) and
        the number of points used.
    """
    mag, snr = np.asarray(mag, float), np.asarray(snr, float)
    ok = np.isfinite(mag) & np.isfinite(snr) & (snr >= snr_min) & (snr <= snr_max)
    n = int(ok.sum())
    if n < 5:
        return float("nan"), float("nan"), n
    slope, icpt = np.polyfit(mag[ok], np.log10(snr[ok]), 1)
    return float((math.log10(at) - icpt) / slope), float(slope), n


# ------------------------------------------------------------------------ pixel geometry
def artefact_samples(kind: str, x0: float, y0: float, x1: float, y1: float, size: float,
                     value: float, step: float = 0.5) -> tuple[np.ndarray, ...]:
    """Points covering one truth artefact, with the share of its flux each carries.

    A cosmic ray is its track (charge spread evenly along it); a satellite
    trail is a Gaussian of sigma ``size`` across the segment, sampled to
    +-3 sigma; anything else is one point.

    Returns
    -------
    x, y, w : numpy.ndarray
        Positions (pixels of the artefact's detector) and flux weights summing
        to ``value``.
    """
    length = math.hypot(x1 - x0, y1 - y0)
    t = (np.arange(max(1, math.ceil(length / step))) + 0.5) / max(1, math.ceil(length / step))
    if kind == "cosmic_ray":
        x, y = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
        return x, y, np.full(t.size, value / t.size)
    if kind == "satellite" and length > 0 and size > 0:
        nx, ny = -(y1 - y0) / length, (x1 - x0) / length
        across = np.arange(-3.0 * size, 3.0 * size + step / 2, step)
        prof = np.exp(-0.5 * (across / size) ** 2)
        x = (x0 + t[:, None] * (x1 - x0) + across[None, :] * nx).ravel()
        y = (y0 + t[:, None] * (y1 - y0) + across[None, :] * ny).ravel()
        w = np.broadcast_to(prof[None, :], (t.size, across.size)).ravel()
        return x, y, value * w / w.sum()
    return np.array([x0]), np.array([y0]), np.array([float(value)])


def disk_mask(shape: tuple[int, int], x, y, radius) -> np.ndarray:
    """Boolean image, True within ``radius`` (per point) of any ``(x, y)`` (array pixels).

    Disks are centred on the nearest pixel and radii rounded up to half pixels
    (exact enough for masks, and a few stamp offsets serve every point).
    """
    out = np.zeros(shape, bool)
    x, y = np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))
    r = np.broadcast_to(np.asarray(radius, float), x.shape)
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(r) & (r >= 0)
    ix = np.floor(x[keep] + 0.5).astype(np.int64)
    iy = np.floor(y[keep] + 0.5).astype(np.int64)
    r2 = np.ceil(2 * r[keep]) / 2
    for rad in np.unique(r2):
        sel = r2 == rad
        n = int(rad)
        oy, ox = np.mgrid[-n:n + 1, -n:n + 1]
        disk = ox ** 2 + oy ** 2 <= rad ** 2
        ox, oy = ox[disk], oy[disk]
        for chunk in np.array_split(np.flatnonzero(sel), max(1, sel.sum() * ox.size // 2_000_000)):
            px = (ix[chunk, None] + ox[None, :]).ravel()
            py = (iy[chunk, None] + oy[None, :]).ravel()
            on = (px >= 0) & (px < shape[1]) & (py >= 0) & (py < shape[0])
            out[py[on], px[on]] = True
    return out
