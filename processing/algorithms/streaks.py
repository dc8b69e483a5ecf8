"""Satellite and meteor streaks in one exposure: long, thin detections masked STREAK.

A streak is a straight line of light crossing much of the detector: a
satellite trail (out of focus, so wider than the PSF) or a meteor.  In a coadd
it is an artefact of one epoch, which the coadd's safe-clip cannot recognise
where fewer than three epochs overlap (most of a patch edge, chip gaps,
shallow surveys), so it is found here, in the single exposure, and masked
STREAK (Rubin's ``MaskStreaksTask`` does the same on difference images, with a
Canny edge map and a kernel Hough transform).  The coadd assembly treats STREAK
as a bad plane.

On the detection mask of the exposure (footprints above 5 sigma):

1. **Line search**: the mask is binned ``bin x bin`` (a block is detected when
   half of its pixels are; pixels within 3 PSF sigmas of BAD, SAT or NO_DATA
   pixels are left out: bad columns and bleed trails are lines too) and a Hough
   transform of the detected blocks counts, for every line
   ``x cos(theta) + y sin(theta) = rho`` (``theta`` steps that move the line by
   one block at the image corners, ``rho`` steps of one block), the detected
   blocks on it.  Lines with at least ``min_length`` pixels of detected blocks
   covering at least ``search_coverage`` of their chord across the image are
   candidates, strongest first; a star or a galaxy covers a few per cent of any
   chord through it, a streak crossing the detector nearly all of it.
2. **Fit** on the full-resolution image, in a band of ``half_window_sigma`` PSF
   sigmas around the line cut into ``segment``-pixel pieces along it: each
   piece's cross-section is the median of its pixels at each offset, and the
   median of those over the pieces (robust to the sources the streak crosses)
   gives the Gaussian width, amplitude and offset;
   the amplitude of each piece (the profile fitted linearly) says where the
   streak is detected (S/N above ``min_segment_snr``); the centroids of the
   detected pieces, fitted with a straight line (clipped at 3 sigma), refine
   ``theta`` and ``rho``.  Three iterations.
3. **Accept** when the width lies within ``[min_width_sigma, max_width_sigma]``
   PSF sigmas (cosmic-ray tracks are sharper than the PSF, extended galaxies
   are not lines), the median profile is detected in a typical piece, the
   detected pieces (those as bright as the median profile within a factor 3)
   sum to ``min_length`` pixels or more, cover ``min_coverage`` of the span
   between the first and the last one and have nearly the same amplitude
   (``max_amplitude_scatter``): sources strung along a line do not.
4. **Mask** STREAK within ``n_sigma_mask`` fitted widths plus ``mask_margin``
   pixels of the line (>= 99.7% of a Gaussian cross-section's flux), from the
   first to the last detected piece, extended to the image edge when only
   pieces that the edge cuts through the streak's core (or one piece) lie
   beyond: detection does not search the edge pixels.  The accepted streak's
   blocks leave the Hough transform, which is searched again (``max_streaks``
   at most).

Decisions: the search uses the detection mask (its 5-sigma footprints find
every trail of the simulator: peak S/N 3 per pixel and above); the fit assumes
a background-subtracted image; the mask is the band, not a per-pixel model
threshold, so pixels of a star the streak crosses are masked with it.  Streaks
detected over less than ``min_length`` pixels (a corner clipped) are not found.
On the demo survey (2048 x 2048 detectors): 6 of 6 trail segments found, >=
99.97% of their flux masked, no STREAK in the 42 exposures without a trail,
0.1-0.7 s per exposure (one core).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numba
import numpy as np

from store.masks import bits

from .detection import grow_mask

__all__ = ["Streak", "StreakConfig", "StreakResult", "find_streaks", "mask_streaks"]


@dataclass(frozen=True)
class StreakConfig:
    """Settings of :func:`find_streaks`.

    Attributes
    ----------
    bin : int
        Block size of the binned detection mask searched for lines, pixels.
    min_length : float
        Smallest detected length of a streak, pixels.
    search_coverage : float
        Smallest fraction of a line's chord across the image covered by
        detected blocks, for the search.
    min_coverage : float
        Smallest fraction of the pieces detected between the first and the
        last detected one, for the fit.
    segment : float
        Length of the pieces the fit cuts the line into, pixels.
    half_window_sigma : float
        Half width of the band around a line that the fit uses, PSF sigmas.
    min_width_sigma, max_width_sigma : float
        Accepted Gaussian sigmas of the cross-section, PSF sigmas.
    min_segment_snr : float
        S/N of a piece's fitted amplitude for the streak to be detected there.
    min_profile_snr : float
        S/N of the median profile's amplitude in a typical piece.
    max_amplitude_scatter : float
        Largest robust scatter of the detected pieces' amplitudes, relative to
        their median (a streak is nearly uniform; sources strung along a line
        are not).
    n_sigma_mask : float
        Half width of the STREAK band, fitted streak sigmas (plus ``mask_margin``).
    mask_margin : float
        Pixels added to the half width and to both ends of the band.
    max_streaks : int
        Most streaks per exposure.
    max_candidates : int
        Most Hough candidates fitted per exposure.
    bad_mask_planes : tuple of str
        Pixels left out of the fit.
    """

    bin: int = 8
    min_length: float = 150.0
    search_coverage: float = 0.5
    min_coverage: float = 0.8
    segment: float = 48.0
    half_window_sigma: float = 10.0
    min_width_sigma: float = 0.6
    max_width_sigma: float = 4.0
    min_segment_snr: float = 5.0
    min_profile_snr: float = 10.0
    max_amplitude_scatter: float = 0.25
    n_sigma_mask: float = 3.0
    mask_margin: float = 2.0
    max_streaks: int = 8
    max_candidates: int = 24
    bad_mask_planes: tuple[str, ...] = ("BAD", "SAT", "NO_DATA")

    def __post_init__(self):
        if self.bin < 1:
            raise ValueError(f"bin must be >= 1, got {self.bin}")
        if not (0 < self.min_coverage <= 1 and 0 < self.search_coverage <= 1):
            raise ValueError("min_coverage and search_coverage must be in (0, 1], got "
                             f"{self.min_coverage} and {self.search_coverage}")
        if not 0 < self.min_width_sigma < self.max_width_sigma:
            raise ValueError("need 0 < min_width_sigma < max_width_sigma, got "
                             f"{self.min_width_sigma} and {self.max_width_sigma}")
        if self.segment < 4 or self.min_length < self.segment:
            raise ValueError(f"need segment >= 4 and min_length >= segment, got "
                             f"{self.segment} and {self.min_length}")
        bits(self.bad_mask_planes)


@dataclass(frozen=True)
class Streak:
    """One fitted streak (pixel coordinates of the exposure's arrays).

    Attributes
    ----------
    theta, rho : float
        The line ``x cos(theta) + y sin(theta) = rho`` (radians, pixels).
    width : float
        Gaussian sigma of the cross-section, pixels.
    amplitude : float
        Peak surface brightness on the line (image units per pixel).
    length : float
        Detected length, pixels.
    t0, t1 : float
        Ends of the masked span along the line (``t`` increases along
        ``(-sin(theta), cos(theta))`` from the foot of the normal).
    half_width : float
        Half width of the masked band, pixels.
    """

    theta: float
    rho: float
    width: float
    amplitude: float
    length: float
    t0: float
    t1: float
    half_width: float

    @property
    def endpoints(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` of the masked span's axis."""
        c, s = np.cos(self.theta), np.sin(self.theta)
        return (self.rho * c - self.t0 * s, self.rho * s + self.t0 * c,
                self.rho * c - self.t1 * s, self.rho * s + self.t1 * c)


@dataclass(eq=False)
class StreakResult:
    """Output of :func:`find_streaks`: the STREAK pixels and the streaks."""

    mask: np.ndarray
    streaks: list[Streak] = field(default_factory=list)


@numba.njit(cache=True, nogil=True)
def _hough(ys, xs, cos_t, sin_t, offset, acc):
    """Add one vote per point to ``acc[theta, round(x cos + y sin + offset)]``."""
    n_rho = acc.shape[1]
    for i in range(ys.size):
        x = xs[i]
        y = ys[i]
        for j in range(cos_t.size):
            r = int(np.floor(x * cos_t[j] + y * sin_t[j] + offset + 0.5))
            if 0 <= r < n_rho:
                acc[j, r] += 1


def _chord(theta, rho, nx: float, ny: float) -> np.ndarray:
    """Length of the line ``x cos + y sin = rho`` inside ``[-0.5, nx - 0.5] x [-0.5, ny - 0.5]``."""
    c, s = np.cos(theta), np.sin(theta)
    px, py = rho * c, rho * s  # foot of the normal; direction (-s, c)
    lo = np.full(np.broadcast(theta, rho).shape, -np.inf)
    hi = np.full(lo.shape, np.inf)
    for p, d, a, b in ((px, -s, -0.5, nx - 0.5), (py, c, -0.5, ny - 0.5)):
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (a - p) / d, (b - p) / d
        flat = np.abs(d) < 1e-12
        inside = (p >= a) & (p <= b)
        lo = np.where(flat, np.where(inside, lo, np.inf), np.maximum(lo, np.minimum(t1, t2)))
        hi = np.where(flat, np.where(inside, hi, -np.inf), np.minimum(hi, np.maximum(t1, t2)))
    return np.maximum(hi - lo, 0.0)


def _binned_detections(detected: np.ndarray, b: int) -> np.ndarray:
    """Blocks of ``b x b`` pixels of which at least half are detected."""
    ny, nx = detected.shape
    hb, wb = -(-ny // b), -(-nx // b)
    pad = np.zeros((hb * b, wb * b), np.uint8)
    pad[:ny, :nx] = detected
    counts = pad.reshape(hb, b, wb, b).sum(axis=(1, 3))
    return 2 * counts >= b * b


def _band(shape, theta: float, rho: float, half: float):
    """Pixels within ``half`` of the line: ``(iy, ix, d, t)`` (d across, t along)."""
    ny, nx = shape
    c, s = np.cos(theta), np.sin(theta)
    if abs(c) >= abs(s):  # steep: columns around the line in each row
        rows = np.arange(ny, dtype=float)
        centre = (rho - rows * s) / c
        reach = half / abs(c)
        lo = np.clip(np.floor(centre - reach), 0, nx).astype(np.int64)
        hi = np.clip(np.ceil(centre + reach) + 1, 0, nx).astype(np.int64)
        counts = np.maximum(hi - lo, 0)
        iy = np.repeat(np.arange(ny), counts)
        ix = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        ix += np.repeat(lo, counts)
    else:  # shallow: rows around the line in each column
        cols = np.arange(nx, dtype=float)
        centre = (rho - cols * c) / s
        reach = half / abs(s)
        lo = np.clip(np.floor(centre - reach), 0, ny).astype(np.int64)
        hi = np.clip(np.ceil(centre + reach) + 1, 0, ny).astype(np.int64)
        counts = np.maximum(hi - lo, 0)
        ix = np.repeat(np.arange(nx), counts)
        iy = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        iy += np.repeat(lo, counts)
    d = ix * c + iy * s - rho
    t = -ix * s + iy * c
    keep = np.abs(d) <= half
    return iy[keep], ix[keep], d[keep], t[keep]


def _grouped_median(group: np.ndarray, values: np.ndarray, n: int):
    """Median of ``values`` in each of ``n`` groups (NaN where empty) and the counts."""
    order = np.lexsort((values, group))
    v = values[order]
    cnt = np.bincount(group, minlength=n)
    start = np.cumsum(cnt) - cnt
    out = np.full(n, np.nan)
    has = cnt > 0
    lo = start[has] + (cnt[has] - 1) // 2
    hi = start[has] + cnt[has] // 2
    out[has] = 0.5 * (v[lo] + v[hi])
    return out, cnt


def _gaussian_profile(d_bins: np.ndarray, profile: np.ndarray, psf_sigma: float):
    """Moments fit of a Gaussian bump on a flat background: ``(amplitude, centre, sigma)``."""
    good = np.isfinite(profile)
    if good.sum() < 5:
        return None
    x, p = d_bins[good], profile[good]
    outer = np.abs(x) >= 0.7 * np.abs(x).max()
    bg = float(np.median(p[outer])) if outer.any() else 0.0
    p = p - bg
    peak = int(np.argmax(p))
    centre, amp = float(x[peak]), float(p[peak])
    if amp <= 0:
        return None
    sigma = max(psf_sigma, 1.0)
    for _ in range(3):  # moments within 2.5 sigma of the current centre, then deweight
        near = np.abs(x - centre) <= max(2.5 * sigma, 2.0)
        w = np.clip(p[near], 0, None)
        if w.sum() <= 0:
            return None
        centre = float(np.sum(w * x[near]) / w.sum())
        var = float(np.sum(w * (x[near] - centre) ** 2) / w.sum())
        # A Gaussian truncated at +-2.5 sigma keeps 0.787 of its variance.
        sigma = float(np.sqrt(max(var / 0.787, 0.25)))
    g = np.exp(-0.5 * ((x - centre) / sigma) ** 2)
    amp = float(np.sum(g * p) / np.sum(g * g))
    return amp, centre, sigma


class _LineFit:
    """Fit of one candidate line on the full-resolution image (see the module docstring)."""

    def __init__(self, image, variance, usable, theta, rho, psf_sigma, config: StreakConfig):
        self.ok = False
        self.theta, self.rho = float(theta), float(rho)
        half = config.half_window_sigma * psf_sigma
        for _ in range(3):
            if not self._fit(image, variance, usable, half, psf_sigma, config):
                return
            if self.snr < 0.5 * config.min_segment_snr or not self.on.any():
                return  # nothing like a streak here: no need to refine
        self.ok = self._accept(psf_sigma, config)

    def _fit(self, image, variance, usable, half, psf_sigma, config) -> bool:
        iy, ix, d, t = _band(image.shape, self.theta, self.rho, half)
        good = usable[iy, ix]
        if good.sum() < config.min_length:
            return False
        iy, ix, d, t = iy[good], ix[good], d[good], t[good]
        val = image[iy, ix].astype(float)
        var = variance[iy, ix].astype(float)
        seg_len = config.segment
        t_lo = float(t.min())
        seg = ((t - t_lo) // seg_len).astype(np.int64)
        n_seg = int(seg.max()) + 1
        n_d = int(2 * np.ceil(half)) + 1
        dbin = np.clip(np.floor(d + 0.5 + n_d // 2), 0, n_d - 1).astype(np.int64)
        # Cross-section of each piece: the median of its pixels at each offset (1-pixel
        # bins), robust to the sources the streak crosses; its variance ~ pi/2 var / n.
        med, cnt = _grouped_median(seg * n_d + dbin, val, n_seg * n_d)
        med, cnt = med.reshape(n_seg, n_d), cnt.reshape(n_seg, n_d)
        mvar = (np.pi / 2) * np.bincount(seg * n_d + dbin, weights=var, minlength=n_seg * n_d
                                         ).reshape(n_seg, n_d)
        with np.errstate(invalid="ignore", divide="ignore"):
            mvar /= np.maximum(cnt, 1) ** 2
        d_bins = np.arange(n_d) - n_d // 2
        outer = np.abs(d_bins) >= 0.7 * n_d // 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # pieces without outer data
            bg = np.nanmedian(np.where(cnt[:, outer] > 0, med[:, outer], np.nan), axis=1)
        prof = med - np.nan_to_num(bg)[:, None]
        filled = ((cnt > 0).sum(axis=1) >= 0.8 * n_d) & np.isfinite(bg)
        if filled.sum() < 2:
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            fit = _gaussian_profile(d_bins, np.nanmedian(prof[filled], axis=0), psf_sigma)
        if fit is None:
            return False
        amp, centre, sigma = fit
        # Each piece: amplitude of the fitted profile (linear), its S/N and centroid.
        g = np.exp(-0.5 * ((d_bins - centre) / sigma) ** 2)
        ok = cnt > 0
        gv = np.where(ok, g[None, :] ** 2 / np.where(ok, mvar, 1.0), 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            den = gv.sum(axis=1)
            a_seg = np.where(ok, g[None, :] * np.nan_to_num(prof) / np.where(ok, mvar, 1.0),
                             0.0).sum(axis=1) / den
            snr = a_seg * np.sqrt(den)
        core = (np.abs(d_bins - centre) <= 2.0 * sigma)[None, :] & ok
        w = np.where(core, np.clip(np.nan_to_num(prof), 0, None), 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            c_seg = (w * d_bins[None, :]).sum(axis=1) / w.sum(axis=1)
        t_seg = t_lo + (np.arange(n_seg) + 0.5) * seg_len
        # Detected pieces: data across the core (a piece cut by the image edge keeps its
        # core), significant, and as bright as the median profile (a streak's surface
        # brightness hardly changes along it; a source it meets is brighter).
        has_core = ok[:, np.abs(d_bins - centre) <= 2.0 * sigma].all(axis=1)
        on = (has_core & np.isfinite(snr) & (snr >= config.min_segment_snr)
              & (a_seg > 0.3 * amp) & (a_seg < 3.0 * amp))
        # S/N of the median profile's amplitude in a typical piece.
        self.snr = float(amp * np.sqrt(np.median(den[filled]))) if filled.any() else 0.0
        self.amplitude, self.width = amp, sigma
        self.on, self.t_seg, self.n_seg, self.has_core = on, t_seg, n_seg, has_core
        a_on = a_seg[on]
        self.scatter = (float(1.4826 * np.median(np.abs(a_on - np.median(a_on)))
                              / np.median(a_on)) if a_on.size else np.inf)
        self.t_min, self.t_max = t_lo, float(t.max())
        # Straight-line fit of the detected pieces' centroids, clipped at 3 sigma.
        use = on & np.isfinite(c_seg)
        a, slope = centre, 0.0
        for _ in range(3):
            if use.sum() < 3:
                break
            slope, a = np.polyfit(t_seg[use], c_seg[use], 1)
            r = c_seg - (a + slope * t_seg)
            scatter = 1.4826 * np.median(np.abs(r[use])) + 0.05
            new = on & np.isfinite(c_seg) & (np.abs(r) <= 3 * scatter)
            if np.array_equal(new, use):
                break
            use = new
        # The true axis is d = a + slope * t: rotate the normal and move the line onto it.
        c, s = np.cos(self.theta), np.sin(self.theta)
        nx_, ny_ = c + slope * s, s - slope * c
        norm = np.hypot(nx_, ny_)
        self.theta = float(np.arctan2(ny_ / norm, nx_ / norm))
        self.rho = float((self.rho + a) / norm)
        return True

    def _accept(self, psf_sigma: float, config: StreakConfig) -> bool:
        if self.snr < config.min_profile_snr:
            return False
        if not (config.min_width_sigma * psf_sigma <= self.width
                <= config.max_width_sigma * psf_sigma):
            return False
        on = np.flatnonzero(self.on)
        if on.size == 0:
            return False
        seg = config.segment
        self.length = float(on.size * seg)
        span = on[-1] - on[0] + 1
        if (self.length < config.min_length or on.size < config.min_coverage * span
                or self.scatter > config.max_amplitude_scatter):
            return False
        t0 = self.t_seg[on[0]] - 0.5 * seg - config.mask_margin
        t1 = self.t_seg[on[-1]] + 0.5 * seg + config.mask_margin
        # Detection does not search the edge pixels: a streak detected up to the pieces
        # the image edge cuts (or to within one piece of the end) goes on to the edge.
        cut = ~self.has_core
        if on[0] <= 1 or cut[:on[0]][1:].all():
            t0 = self.t_min - config.mask_margin
        if on[-1] >= self.n_seg - 2 or cut[on[-1] + 1:][:-1].all():
            t1 = self.t_max + config.mask_margin
        self.t0, self.t1 = float(t0), float(t1)
        self.half_width = float(config.n_sigma_mask * self.width + config.mask_margin)
        return True

    def streak(self) -> Streak:
        return Streak(theta=self.theta, rho=self.rho, width=self.width,
                      amplitude=self.amplitude, length=self.length, t0=self.t0, t1=self.t1,
                      half_width=self.half_width)


def find_streaks(image: np.ndarray, variance: np.ndarray, mask: np.ndarray,
                 detected: np.ndarray, psf_sigma: float,
                 config: StreakConfig | None = None) -> StreakResult:
    """Find the streaks of an exposure and the pixels to mask STREAK.

    Parameters
    ----------
    image, variance : numpy.ndarray
        ``(ny, nx)`` background-subtracted image and its variance.
    mask : numpy.ndarray
        ``(ny, nx)`` int mask; ``config.bad_mask_planes`` pixels are not fitted.
    detected : numpy.ndarray
        ``(ny, nx)`` bool: the detection footprints (the DETECTED plane).
    psf_sigma : float
        Gaussian sigma of the PSF, pixels.
    config : StreakConfig, optional

    Returns
    -------
    StreakResult
        ``mask``: bool ``(ny, nx)``, True on streak pixels; ``streaks``: the fits.
    """
    config = config or StreakConfig()
    ny, nx = image.shape
    out = np.zeros((ny, nx), dtype=bool)
    if not (np.isfinite(psf_sigma) and psf_sigma > 0):
        raise ValueError(f"psf_sigma must be positive, got {psf_sigma}")
    usable = (np.isfinite(image) & np.isfinite(variance) & (variance > 0)
              & ((mask & bits(config.bad_mask_planes)) == 0))
    b = int(config.bin)
    # Bad columns and saturated bleed trails are lines too, but not streaks: their
    # pixels and the detection footprints grown around them are not searched.
    near_bad = grow_mask(~usable, int(np.ceil(3.0 * psf_sigma)) + 1)
    blocks = _binned_detections(np.asarray(detected, bool) & ~near_bad, b)
    hb, wb = blocks.shape
    # Coordinates about the centre: a theta step of 2 / diagonal moves the far ends by one block.
    xc, yc = 0.5 * (wb - 1), 0.5 * (hb - 1)
    diag = float(np.hypot(hb, wb))
    n_theta = int(np.ceil(0.5 * np.pi * diag))
    theta = np.arange(n_theta) * (np.pi / n_theta)
    offset = np.ceil(0.5 * diag) + 1
    n_rho = int(2 * offset) + 1
    rho_c = np.arange(n_rho) - offset
    rho_blocks = rho_c[None, :] + xc * np.cos(theta)[:, None] + yc * np.sin(theta)[:, None]
    chord = _chord(theta[:, None], rho_blocks, wb, hb)
    min_votes = config.min_length / b
    streaks: list[Streak] = []
    tried = 0
    while len(streaks) < config.max_streaks and tried < config.max_candidates:
        ys, xs = (a.astype(np.float64) for a in np.nonzero(blocks))
        if ys.size < min_votes:
            break
        acc = np.zeros((n_theta, n_rho), np.int32)
        _hough(ys - yc, xs - xc, np.cos(theta), np.sin(theta), float(offset), acc)
        score = np.where((acc >= min_votes) & (acc >= config.search_coverage * chord), acc, 0)
        found = False
        while tried < config.max_candidates:
            j, r = np.unravel_index(int(np.argmax(score)), score.shape)
            if score[j, r] == 0:
                break
            tried += 1
            # Block centres: pixel (b - 1) / 2 + b * index.
            th = float(theta[j])
            rh = float(rho_blocks[j, r] * b + 0.5 * (b - 1) * (np.cos(th) + np.sin(th)))
            fit = _LineFit(image, variance, usable, th, rh, psf_sigma, config)
            if fit.ok:
                s = fit.streak()
                streaks.append(s)
                iy, ix, _, t = _band((ny, nx), s.theta, s.rho, s.half_width)
                inside = (t >= s.t0) & (t <= s.t1)
                out[iy[inside], ix[inside]] = True
                # Its blocks leave the search, out to the fit's window (the streak's
                # detection footprint is wider than the mask).
                iy, ix, _, t = _band((ny, nx), s.theta, s.rho,
                                     max(2 * s.half_width, config.half_window_sigma * psf_sigma))
                inside = (t >= s.t0) & (t <= s.t1)
                wide = np.zeros((ny, nx), dtype=bool)
                wide[iy[inside], ix[inside]] = True
                blocks &= ~_binned_band(wide, b)
                found = True
                break
            # Not a streak: suppress this peak's neighbourhood and try the next.
            dj, dr = max(2, n_theta // 180), 3
            score[max(j - dj, 0):j + dj + 1, max(r - dr, 0):r + dr + 1] = 0
        if not found:
            break
    return StreakResult(out, streaks)


def _binned_band(mask: np.ndarray, b: int) -> np.ndarray:
    """Blocks holding any pixel of ``mask``."""
    ny, nx = mask.shape
    hb, wb = -(-ny // b), -(-nx // b)
    pad = np.zeros((hb * b, wb * b), bool)
    pad[:ny, :nx] = mask
    return pad.reshape(hb, b, wb, b).any(axis=(1, 3))


def mask_streaks(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, psf_sigma: float,
                 config: StreakConfig | None = None) -> StreakResult:
    """Find the streaks among the DETECTED footprints of ``mask`` and set STREAK there, in place.

    Returns the :class:`StreakResult` of :func:`find_streaks`.
    """
    detected = (mask & bits("DETECTED")) != 0
    res = find_streaks(image, variance, mask, detected, psf_sigma, config)
    if res.streaks:
        mask[res.mask] |= mask.dtype.type(bits("STREAK"))
    return res
