"""Comparison with the simulator's truth: completeness, flux accuracy, measured conditions.

Present only when the repository holds the ``truth_*`` tables of
:mod:`sample_data` (run ``truth``).

Completeness and flux accuracy
    For every detector-visit with sources (``source``, else ``src``; sky sources
    excluded), the truth objects inside the detector's sky footprint (the visit
    summary's corners, else the registry's ``visit_detector_region``) are
    matched to that detector-visit's sources within ``match_radius`` (1 arcsec,
    nearest source).  A transient counts only in its own visit.  Completeness is
    the detected fraction in 0.25-mag bins of the true magnitude in the visit's
    band; flux accuracy is ``psfFlux / true flux - 1`` of matched stars.

Measured against true conditions
    Per detector-visit: the visit summary's seeing (``psfSigma * pixelScale *
    sqrt(8 ln 2)``) against the median moments FWHM of ``truth_psf_grid`` on that
    detector (both adaptive moments of the pixelised PSF), and ``zeroPoint``
    against ``truth_visit_detector.zero_point`` (both the AB magnitude of one ADU
    in the exposure).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from store.sphgeom import ConvexPolygon

from .calibration import match_sky
from .data import ReportData
from .render import Figure, Section, band_color, new_figure, robust_sigma, to_png

__all__ = ["TruthMatches", "collect_truth_matches", "completeness_curve", "truth_section"]

_FWHM_PER_SIGMA = float(np.sqrt(8.0 * np.log(2.0)))
_BIN = 0.25  # mag


@dataclass(frozen=True)
class TruthMatches:
    """Truth objects in detector footprints and their detections (arrays of shape ``(n,)``).

    Attributes
    ----------
    band : numpy.ndarray of str
        Band of the visit.
    mag : numpy.ndarray
        True AB magnitude in that band.
    is_star : numpy.ndarray of bool
    detected : numpy.ndarray of bool
        A source lies within the match radius.
    flux_ratio : numpy.ndarray
        Matched source ``psfFlux`` / true flux (NaN when undetected).
    source_type : str
        ``source`` or ``src``: the catalog the detections came from.
    """

    band: np.ndarray
    mag: np.ndarray
    is_star: np.ndarray
    detected: np.ndarray
    flux_ratio: np.ndarray
    source_type: str

    def __len__(self) -> int:
        return len(self.band)


def _np(table, name, dtype=float):
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=dtype)


def _footprints(data: ReportData) -> dict[tuple[int, int], tuple[list, list]]:
    """(visit, detector) -> (ra corners, dec corners), degrees."""
    if {"racorners", "deccorners"} <= set(data.sql_columns("visit_summary")):
        table = data.table("visit_summary", ["visit", "detector", "raCorners", "decCorners"])
        cols = ("raCorners", "decCorners")
    else:
        table = data.repo.sql("SELECT visit, detector, region_ra, region_dec FROM "
                              "main.visit_detector_region", adql=False)
        cols = ("region_ra", "region_dec")
    out = {}
    for v, d, ra, dec in zip(*(table.column(c).to_pylist() for c in ("visit", "detector", *cols)),
                             strict=True):
        if ra and dec and all(x is not None and np.isfinite(x) for x in (*ra, *dec)):
            out[(int(v), int(d))] = (ra, dec)
    return out


def collect_truth_matches(data: ReportData, *, match_radius: float = 1.0) -> TruthMatches | None:
    """Match truth objects to the collection's sources, detector-visit by detector-visit.

    Parameters
    ----------
    data : ReportData
    match_radius : float
        Largest truth-source separation, arcsec.

    Returns
    -------
    TruthMatches or None
        None without truth objects, sources or footprints.
    """
    source_type = "source" if data.has("source") else "src" if data.has("src") else None
    if source_type is None or not data.has("truth_object"):
        return None
    stored = data.sql_columns(source_type)
    where = "NOT coalesce(s.sky_source, false)" if "sky_source" in stored else None
    src = data.table(source_type, ["visit", "detector", "band", "coord_ra", "coord_dec",
                                   "psfFlux"], where=where)
    truth_cols = data.sql_columns("truth_object")
    bands = sorted(set(src.column("band").to_pylist()) if src.num_rows else ())
    mag_cols = [b for b in bands if f"{b}_mag" in truth_cols and f"{b}_flux" in truth_cols]
    truth = data.table("truth_object", ["ra", "dec", "type", "visit",
                                        *(f"{b}_mag" for b in mag_cols),
                                        *(f"{b}_flux" for b in mag_cols)],
                       optional=["visit", "type"])
    footprints = _footprints(data)
    if src.num_rows == 0 or truth.num_rows == 0 or not footprints or not mag_cols:
        return None
    by_dec = np.argsort(_np(truth, "dec"), kind="stable")  # dec-sorted: a band is a slice
    truth = truth.take(pa.array(by_dec))
    t_ra, t_dec = _np(truth, "ra"), _np(truth, "dec")
    t_visit = np.asarray([-1 if v is None else v for v in truth.column("visit").to_pylist()],
                         dtype=np.int64)
    t_star = np.asarray([t == "star" for t in truth.column("type").to_pylist()], dtype=bool)
    s_visit, s_det = _np(src, "visit", np.int64), _np(src, "detector", np.int64)
    s_ra, s_dec, s_flux = _np(src, "coord_ra"), _np(src, "coord_dec"), _np(src, "psfFlux")
    s_band = np.asarray(src.column("band").to_pylist(), dtype=object).astype(str)
    order = np.lexsort((s_det, s_visit))
    keys = np.stack([s_visit[order], s_det[order]], axis=1)
    starts = np.flatnonzero(np.r_[True, np.any(keys[1:] != keys[:-1], axis=1)])
    ends = np.r_[starts[1:], len(order)]
    out: dict[str, list] = {k: [] for k in ("band", "mag", "star", "det", "ratio")}
    for a, b in zip(starts, ends, strict=True):
        rows = order[a:b]
        key = (int(s_visit[rows[0]]), int(s_det[rows[0]]))
        band = s_band[rows[0]]
        if key not in footprints or band not in mag_cols:
            continue
        ra_c, dec_c = footprints[key]
        lo, hi = np.searchsorted(t_dec, [min(dec_c) - 0.01, max(dec_c) + 0.01])
        cand = np.arange(lo, hi)
        cand = cand[(t_visit[cand] < 0) | (t_visit[cand] == key[0])]
        inside = cand[ConvexPolygon(ra_c, dec_c).contains(t_ra[cand], t_dec[cand])]
        if inside.size == 0:
            continue
        index, _ = match_sky(t_ra[inside], t_dec[inside], s_ra[rows], s_dec[rows], match_radius)
        found = index >= 0
        true_flux = _np(truth, f"{band}_flux")[inside]
        ratio = np.full(inside.size, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio[found] = s_flux[rows][index[found]] / true_flux[found]
        out["band"].append(np.full(inside.size, band))
        out["mag"].append(_np(truth, f"{band}_mag")[inside])
        out["star"].append(t_star[inside])
        out["det"].append(found)
        out["ratio"].append(ratio)
    if not out["band"]:
        return None
    return TruthMatches(band=np.concatenate(out["band"]), mag=np.concatenate(out["mag"]),
                        is_star=np.concatenate(out["star"]), detected=np.concatenate(out["det"]),
                        flux_ratio=np.concatenate(out["ratio"]), source_type=source_type)


def completeness_curve(mag, detected, *, bin_width: float = _BIN, min_count: int = 5):
    """Detected fraction in magnitude bins.

    Parameters
    ----------
    mag : array_like
        ``(n,)`` true magnitudes (non-finite ones ignored).
    detected : array_like of bool
        ``(n,)`` detection flags.
    bin_width : float
        Bin width, mag.
    min_count : int
        Bins with fewer objects are dropped.

    Returns
    -------
    centers, fraction, counts : numpy.ndarray
        Bin centres (mag), detected fraction and number of objects per kept bin.
    """
    mag = np.asarray(mag, dtype=float)
    detected = np.asarray(detected, dtype=bool)
    ok = np.isfinite(mag)
    if not ok.any():
        return np.array([]), np.array([]), np.array([], dtype=int)
    lo = np.floor(mag[ok].min() / bin_width) * bin_width
    idx = np.floor((mag[ok] - lo) / bin_width).astype(int)
    counts = np.bincount(idx)
    hits = np.bincount(idx, weights=detected[ok].astype(float), minlength=counts.size)
    keep = counts >= min_count
    centers = lo + (np.arange(counts.size) + 0.5) * bin_width
    with np.errstate(invalid="ignore"):
        return centers[keep], hits[keep] / counts[keep], counts[keep]


def _level_mag(centers, fraction, level: float) -> float:
    """Faintest bin centre where the completeness still reaches ``level``... interpolated."""
    above = np.flatnonzero(fraction >= level)
    if above.size == 0 or above[-1] == fraction.size - 1:
        return float("nan")
    i = above[-1]
    f0, f1 = fraction[i], fraction[i + 1]
    t = (f0 - level) / (f0 - f1) if f0 != f1 else 0.0
    return float(centers[i] + t * (centers[i + 1] - centers[i]))


def _plot_completeness(m: TruthMatches, mag_lim: dict[str, float]) -> tuple[bytes, list[str]]:
    fig, axes = new_figure(13.0, 4.2, 1, 2, margins=(0.7, 0.15, 0.55, 0.15), wspace=0.18)
    notes = []
    ax = axes[0, 0]
    for b in sorted(set(m.band)):
        sel = m.band == b
        c, f, _ = completeness_curve(m.mag[sel], m.detected[sel])
        ax.plot(c, f, "-o", ms=3, color=band_color(b), label=f"{b}, all objects")
        cs, fs, _ = completeness_curve(m.mag[sel & m.is_star], m.detected[sel & m.is_star])
        ax.plot(cs, fs, ":", color=band_color(b), label=f"{b}, stars")
        m50 = _level_mag(c, f, 0.5)
        if b in mag_lim and np.isfinite(mag_lim[b]):
            ax.axvline(mag_lim[b], color=band_color(b), ls="--", lw=0.9)
        notes.append(f"{b}: 50% at {m50:.2f} mag (median 5σ depth "
                     f"{mag_lim.get(b, float('nan')):.2f})")
    ax.axhline(0.5, color="0.5", lw=0.7)
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("true magnitude in the visit's band [AB]")
    ax.set_ylabel("fraction detected")
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    stars = m.is_star & m.detected & np.isfinite(m.flux_ratio)
    for b in sorted(set(m.band[stars])):
        sel = stars & (m.band == b)
        dev = m.flux_ratio[sel] - 1.0
        ax.plot(m.mag[sel], dev, ".", ms=2, alpha=0.3, color=band_color(b))
        edges = np.arange(np.floor(m.mag[sel].min()), m.mag[sel].max() + 0.5, 0.5)
        cen, med, lo, hi = [], [], [], []
        for e0, e1 in itertools.pairwise(edges):
            in_bin = (m.mag[sel] >= e0) & (m.mag[sel] < e1)
            if in_bin.sum() >= 5:
                cen.append(0.5 * (e0 + e1))
                q = np.percentile(dev[in_bin], [16, 50, 84])
                lo.append(q[0])
                med.append(q[1])
                hi.append(q[2])
        ax.plot(cen, med, "-", color=band_color(b), lw=2, label=f"{b} median")
        ax.fill_between(cen, lo, hi, color=band_color(b), alpha=0.15)
    ax.axhline(0, color="k", lw=0.7)
    ax.set_ylim(-0.3, 0.3)
    ax.set_xlabel("true magnitude [AB]")
    ax.set_ylabel("psfFlux / true flux − 1 (stars)")
    ax.legend(fontsize=8)
    return to_png(fig), notes


def _conditions(data: ReportData):
    """Measured and true (seeing, zero point) per detector-visit, or None."""
    if not (data.has("truth_visit_detector") and data.sql_columns("visit_summary")):
        return None
    meas = data.table("visit_summary", ["visit", "detector", "band", "psfSigma", "pixelScale",
                                        "zeroPoint"])
    true_zp = data.table("truth_visit_detector", ["visit", "detector", "zero_point"])
    grid = (data.table("truth_psf_grid", ["visit", "detector", "fwhm"])
            if data.has("truth_psf_grid") else None)
    if meas.num_rows == 0 or true_zp.num_rows == 0:
        return None
    zp_of = dict(zip(zip(true_zp.column("visit").to_pylist(),
                         true_zp.column("detector").to_pylist(), strict=True),
                     true_zp.column("zero_point").to_pylist(), strict=True))
    fwhm_of: dict = {}
    if grid is not None:
        for v, d, f in zip(*(grid.column(c).to_pylist() for c in ("visit", "detector", "fwhm")),
                           strict=True):
            fwhm_of.setdefault((v, d), []).append(f)
    rows = []
    for v, d, b, sig, scale, zp in zip(*(meas.column(c).to_pylist() for c in (
            "visit", "detector", "band", "psfSigma", "pixelScale", "zeroPoint")), strict=True):
        if (v, d) not in zp_of:
            continue
        seeing = sig * scale * _FWHM_PER_SIGMA if sig is not None and scale is not None \
            else np.nan
        true_fwhm = float(np.median(fwhm_of[(v, d)])) if (v, d) in fwhm_of else np.nan
        rows.append((b, seeing, true_fwhm, np.nan if zp is None else zp, zp_of[(v, d)]))
    if not rows:
        return None
    band = np.array([r[0] for r in rows])
    values = np.array([r[1:] for r in rows], dtype=float)
    return band, values[:, 0], values[:, 1], values[:, 2], values[:, 3]


def _plot_conditions(band, seeing, true_fwhm, zp, true_zp) -> bytes:
    fig, axes = new_figure(11.0, 4.0, 1, 2, margins=(0.8, 0.35, 0.55, 0.15), wspace=0.25)
    for b in sorted(set(band)):
        sel = band == b
        axes[0, 0].plot(true_fwhm[sel], 100 * (seeing[sel] / true_fwhm[sel] - 1), "o", ms=4,
                        color=band_color(b), label=b)
        axes[0, 1].plot(true_zp[sel], 1000 * (zp[sel] - true_zp[sel]), "o", ms=4,
                        color=band_color(b), label=b)
    axes[0, 0].axhline(0, color="k", lw=0.7)
    axes[0, 0].set_xlabel("true PSF FWHM (moments, detector median) [arcsec]")
    axes[0, 0].set_ylabel("measured / true seeing − 1 [%]")
    axes[0, 1].axhline(0, color="k", lw=0.7)
    axes[0, 1].set_xlabel("true zero point [AB mag of 1 ADU]")
    axes[0, 1].set_ylabel("measured − true zero point [mmag]")
    for ax in axes[0]:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return to_png(fig)


def _median_mag_lim(data: ReportData) -> dict[str, float]:
    if "maglim" not in data.sql_columns("visit_summary"):
        return {}
    table = data.table("visit_summary", ["band", "magLim"])
    band = np.asarray(table.column("band").to_pylist(), dtype=object).astype(str)
    mag = _np(table, "magLim")
    return {b: float(np.nanmedian(mag[band == b])) for b in set(band)
            if np.isfinite(mag[band == b]).any()}


def truth_section(data: ReportData) -> Section | None:
    """The "Against the simulated truth" section (None when the repository has no truth)."""
    if not data.has("truth_object") and not data.has("truth_visit_detector"):
        return None
    section = Section("Against the simulated truth",
                      "The repository holds the simulator's truth: detections, fluxes, PSF "
                      "sizes and zero points are compared with what was simulated.")
    m = collect_truth_matches(data)
    if m is None:
        section.note(f"No source catalogs (source or src) with footprints in {data.label} to "
                     "compare with truth_object: run calibrate / reprocess_visit_image.")
    else:
        png, notes = _plot_completeness(m, _median_mag_lim(data))
        stars = m.is_star & m.detected & np.isfinite(m.flux_ratio) & (m.mag < np.nanmedian(
            m.mag[m.detected]) if m.detected.any() else False)
        bright = (f" Bright stars (brighter than the median detected magnitude): median "
                  f"psfFlux/true − 1 = {100 * np.median(m.flux_ratio[stars] - 1):+.2f}%, robust "
                  f"σ {100 * robust_sigma(m.flux_ratio[stars]):.2f}%." if stars.any() else "")
        caption = (
            f"Left: fraction of the {len(m)} truth objects inside the detector footprints "
            f"matched by a source of the {m.source_type} catalogs within 1\" (solid: all "
            "objects; dotted: stars), per "
            "band; dashed lines: median 5σ depth (magLim) of the visits. Right: PSF flux of "
            "matched stars over their true flux (line: median; band: 16-84th percentiles). "
            "Good: completeness near 100% at bright magnitudes, falling through 50% close to "
            "the 5σ depth; flux ratio within ~1% of unity at the bright end (an offset is a "
            "zero-point or aperture-correction error), its spread growing only as the noise "
            f"does. {'; '.join(notes)}.{bright}")
        section.items.append(Figure("Completeness and flux accuracy", caption, png))
    cond = _conditions(data)
    if cond is not None:
        band, seeing, true_fwhm, zp, true_zp = cond
        with np.errstate(invalid="ignore", divide="ignore"):
            ds = seeing / true_fwhm - 1
            dz = zp - true_zp
        caption = (
            f"{len(band)} detector-visits. Left: visit-summary seeing over the true PSF FWHM "
            "(both adaptive-moment FWHMs; truth: median over the detector's truth grid). "
            "Right: measured minus true zero point. Good: seeing within ~1-2% of the truth "
            "with no trend against FWHM; zero points within ~10 mmag (the reference aperture "
            "misses a few mmag of flux). Measured: seeing "
            f"{100 * np.nanmedian(ds):+.2f}% (σ {100 * robust_sigma(ds):.2f}%), zero point "
            f"{1000 * np.nanmedian(dz):+.1f} mmag (σ {1000 * robust_sigma(dz):.1f} mmag).")
        section.items.append(Figure("Measured against true PSF size and zero point", caption,
                                    _plot_conditions(*cond)))
    elif data.has("truth_visit_detector"):
        section.note(f"No visit_summary in {data.label} to compare with truth_visit_detector.")
    return section
