"""Astrometric and photometric residuals of the calibration stars against the reference catalog.

The ``src`` catalogs of calibrate flag the sources that entered the astrometric
fit (``calib_astrometry_used``) and the zero-point fit
(``calib_photometry_used``).  Each is matched to its nearest reference star
within ``match_radius`` (1 arcsec; a KD-tree on unit vectors).  Residuals are
source minus reference: ``dRA* = (ra_src - ra_ref) cos(dec)`` and ``dDec``, in
milliarcseconds, and ``dmag = m_PSF(src) - m_ref(band)`` with both fluxes in nJy
(AB magnitudes).  A calibration that worked leaves residuals centred on zero:
the astrometric ones at the level of centroid noise and reference-catalog
errors, the photometric ones within a few millimagnitudes per visit.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from store.calib import AB_ZERO_NJY
from store.sphgeom import radec_to_xyz

from .data import ReportData
from .render import Figure, Section, band_color, new_figure, robust_sigma, to_png

__all__ = ["RefMatches", "calibration_section", "collect_reference_matches", "match_sky"]

_MAS_PER_DEG = 3.6e6


@dataclass(frozen=True)
class RefMatches:
    """Calibration sources matched to reference stars (arrays of shape ``(n,)``).

    Attributes
    ----------
    visit : numpy.ndarray of int
    band : numpy.ndarray of str
    dra, ddec : numpy.ndarray
        Source minus reference position, mas (``dra`` includes ``cos(dec)``).
    ref_mag : numpy.ndarray
        Reference AB magnitude in the source's band (NaN without a flux).
    dmag : numpy.ndarray
        Source PSF magnitude minus reference magnitude.
    astrometry, photometry : numpy.ndarray of bool
        The source was used by the astrometric / photometric fit.
    """

    visit: np.ndarray
    band: np.ndarray
    dra: np.ndarray
    ddec: np.ndarray
    ref_mag: np.ndarray
    dmag: np.ndarray
    astrometry: np.ndarray
    photometry: np.ndarray

    def __len__(self) -> int:
        return len(self.visit)


def match_sky(ra1, dec1, ra2, dec2, radius_arcsec: float) -> tuple[np.ndarray, np.ndarray]:
    """Nearest neighbour in catalog 2 of each point of catalog 1 within a radius.

    Parameters
    ----------
    ra1, dec1, ra2, dec2 : array_like
        Positions, degrees.
    radius_arcsec : float
        Largest separation, arcsec.

    Returns
    -------
    index : numpy.ndarray of int
        ``(n1,)`` index into catalog 2, -1 where nothing lies within the radius.
    separation : numpy.ndarray
        ``(n1,)`` separation, arcsec (inf where unmatched).
    """
    p1 = radec_to_xyz(np.asarray(ra1, float), np.asarray(dec1, float)).reshape(-1, 3)
    p2 = radec_to_xyz(np.asarray(ra2, float), np.asarray(dec2, float)).reshape(-1, 3)
    if len(p1) == 0 or len(p2) == 0:
        return np.full(len(p1), -1), np.full(len(p1), np.inf)
    chord = 2.0 * np.sin(np.radians(radius_arcsec / 3600.0) / 2.0)
    dist, index = cKDTree(p2).query(p1, distance_upper_bound=chord)
    found = np.isfinite(dist)
    sep = np.where(found, np.degrees(2.0 * np.arcsin(np.minimum(dist, 2.0) / 2.0)) * 3600.0,
                   np.inf)
    return np.where(found, index, -1), sep


def _np(table, name, dtype=float):
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=dtype)


def _reference(data: ReportData, ra, dec, bands) -> tuple[np.ndarray, np.ndarray, dict]:
    """Reference stars around the sources: ra, dec (deg) and band -> flux (nJy)."""
    stored = data.sql_columns("reference_catalog")
    flux_cols = [f"{b}_flux" for b in bands if f"{b}_flux".lower() in stored]
    pad = 2.0 / 3600.0
    d0, d1 = float(np.min(dec)) - pad, float(np.max(dec)) + pad
    where, bind = "s.coord_dec BETWEEN $d0 AND $d1", {"d0": d0, "d1": d1}
    r0, r1 = float(np.min(ra)), float(np.max(ra))
    if r1 - r0 < 180.0:  # no RA wrap in the footprint: cut in RA too
        cosd = max(np.cos(np.radians(max(abs(d0), abs(d1)))), 1e-3)
        where += " AND s.coord_ra BETWEEN $r0 AND $r1"
        bind |= {"r0": r0 - pad / cosd, "r1": r1 + pad / cosd}
    table = data.table("reference_catalog", ["coord_ra", "coord_dec", *flux_cols], where=where,
                       bind=bind)
    fluxes = {c[:-5]: _np(table, c) for c in flux_cols}
    return _np(table, "coord_ra"), _np(table, "coord_dec"), fluxes


def collect_reference_matches(data: ReportData, *, match_radius: float = 1.0
                              ) -> RefMatches | None:
    """Match the collection's calibration sources to the reference catalog.

    Parameters
    ----------
    data : ReportData
    match_radius : float
        Largest source-reference separation, arcsec.

    Returns
    -------
    RefMatches or None
        None without flagged ``src`` sources or without a reference catalog.
    """
    needed = {"coord_ra", "coord_dec", "psfflux", "calib_astrometry_used",
              "calib_photometry_used"}
    if not needed <= set(data.sql_columns("src")) or not data.sql_columns("reference_catalog"):
        return None
    src = data.table("src", ["visit", "band", "coord_ra", "coord_dec", "psfFlux",
                             "calib_astrometry_used", "calib_photometry_used"],
                     where="s.calib_astrometry_used OR s.calib_photometry_used")
    if src.num_rows == 0:
        return None
    ra, dec = _np(src, "coord_ra"), _np(src, "coord_dec")
    band = np.asarray(src.column("band").to_pylist(), dtype=object).astype(str)
    ref_ra, ref_dec, ref_flux = _reference(data, ra, dec, sorted(set(band)))
    index, _ = match_sky(ra, dec, ref_ra, ref_dec, match_radius)
    ok = index >= 0
    if not ok.any():
        return None
    idx = index[ok]
    dra = (ra[ok] - ref_ra[idx] + 180.0) % 360.0 - 180.0
    dra *= np.cos(np.radians(dec[ok])) * _MAS_PER_DEG
    ddec = (dec[ok] - ref_dec[idx]) * _MAS_PER_DEG
    ref_mag = np.full(idx.size, np.nan)
    for b, flux in ref_flux.items():
        sel = band[ok] == b
        with np.errstate(invalid="ignore", divide="ignore"):
            ref_mag[sel] = -2.5 * np.log10(flux[idx[sel]] / AB_ZERO_NJY)
    with np.errstate(invalid="ignore", divide="ignore"):
        dmag = -2.5 * np.log10(_np(src, "psfFlux")[ok] / AB_ZERO_NJY) - ref_mag
    return RefMatches(visit=_np(src, "visit", np.int64)[ok], band=band[ok], dra=dra, ddec=ddec,
                      ref_mag=ref_mag, dmag=dmag,
                      astrometry=_np(src, "calib_astrometry_used", bool)[ok],
                      photometry=_np(src, "calib_photometry_used", bool)[ok])


def _per_visit(visit, band, values, stat):
    """(visits in id order, their band, ``stat`` of their finite values)."""
    order = np.argsort(visit, kind="stable")
    visits, starts = np.unique(visit[order], return_index=True)
    groups = np.split(order, starts[1:])
    out = np.full(visits.size, np.nan)
    for i, rows in enumerate(groups):
        finite = values[rows][np.isfinite(values[rows])]
        if finite.size:
            out[i] = stat(finite)
    return visits, np.asarray(band)[order[starts]].astype(str), out


def _rms(v) -> float:
    return float(np.sqrt(np.mean(np.square(v))))


def _plot_astrometry(m: RefMatches) -> bytes:
    sel = m.astrometry
    dra, ddec = m.dra[sel], m.ddec[sel]
    fig, axes = new_figure(13.0, 4.0, 1, 3, margins=(0.7, 0.15, 0.55, 0.15), wspace=0.28)
    ax = axes[0, 0]
    # Wide enough for the scatter and for an offset of the whole cloud.
    lim = max(5.0 * max(robust_sigma(dra), robust_sigma(ddec))
              + max(abs(np.median(dra)), abs(np.median(ddec))), 10.0)
    for b in sorted(set(m.band[sel])):
        bsel = m.band[sel] == b
        ax.plot(dra[bsel], ddec[bsel], ".", ms=2, alpha=0.5, color=band_color(b), label=b)
    ax.axhline(0, color="k", lw=0.6)
    ax.axvline(0, color="k", lw=0.6)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("ΔRA cos δ [mas]")
    ax.set_ylabel("ΔDec [mas]")
    ax.legend(fontsize=8, markerscale=4)
    ax = axes[0, 1]
    bins = np.linspace(-lim, lim, 51)
    ax.hist(dra, bins=bins, histtype="step", lw=1.3, label=f"ΔRA*  σ={robust_sigma(dra):.1f}")
    ax.hist(ddec, bins=bins, histtype="step", lw=1.3, label=f"ΔDec σ={robust_sigma(ddec):.1f}")
    ax.set_xlabel("source − reference [mas]")
    ax.legend(fontsize=8)
    ax = axes[0, 2]
    visits, bands, rms = _per_visit(m.visit[sel], m.band[sel], np.hypot(dra, ddec), _rms)
    _, _, med_ra = _per_visit(m.visit[sel], m.band[sel], dra, np.median)
    _, _, med_dec = _per_visit(m.visit[sel], m.band[sel], ddec, np.median)
    x = np.arange(visits.size)
    for b in sorted(set(bands)):
        bsel = bands == b
        ax.plot(x[bsel], rms[bsel], "o", color=band_color(b), label=f"{b} RMS")
    ax.plot(x, np.hypot(med_ra, med_dec), "k_", ms=10, label="|median offset|")
    ax.set_xlabel("visit (in id order)")
    ax.set_ylabel("per-visit offset [mas]")
    top = np.nanmax(rms) if np.isfinite(rms).any() else 1.0
    ax.set_ylim(0, 1.2 * top)
    ax.legend(fontsize=8)
    return to_png(fig)


def _plot_photometry(m: RefMatches) -> bytes:
    sel = m.photometry & np.isfinite(m.dmag)
    fig, axes = new_figure(13.0, 4.0, 1, 2, width_ratios=(1.6, 1.0),
                           margins=(0.75, 0.15, 0.55, 0.15), wspace=0.15)
    ax = axes[0, 0]
    for b in sorted(set(m.band[sel])):
        bsel = sel & (m.band == b)
        ax.plot(m.ref_mag[bsel], m.dmag[bsel], ".", ms=3, alpha=0.6, color=band_color(b),
                label=f"{b} (median {np.median(m.dmag[bsel]):+.4f})")
        edges = np.arange(np.floor(m.ref_mag[bsel].min()), m.ref_mag[bsel].max() + 0.5, 0.5)
        centers, medians = [], []
        for lo, hi in itertools.pairwise(edges):
            in_bin = bsel & (m.ref_mag >= lo) & (m.ref_mag < hi)
            if in_bin.sum() >= 5:
                centers.append(0.5 * (lo + hi))
                medians.append(np.median(m.dmag[in_bin]))
        ax.plot(centers, medians, "-", color=band_color(b), lw=2)
    ax.axhline(0, color="k", lw=0.7)
    lim = max(0.05, 5 * robust_sigma(m.dmag[sel]))
    ax.set_ylim(-lim, lim)
    ax.set_xlabel("reference magnitude [AB]")
    ax.set_ylabel("PSF mag − reference mag")
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    visits, bands, med = _per_visit(m.visit[sel], m.band[sel], m.dmag[sel], np.median)
    _, _, scatter = _per_visit(m.visit[sel], m.band[sel], m.dmag[sel], robust_sigma)
    x = np.arange(visits.size)
    for b in sorted(set(bands)):
        bsel = bands == b
        ax.errorbar(x[bsel], 1000 * med[bsel], yerr=1000 * scatter[bsel], fmt="o",
                    color=band_color(b), capsize=2, label=b)
    ax.axhline(0, color="k", lw=0.7)
    ax.set_xlabel("visit (in id order)")
    ax.set_ylabel("median Δmag per visit [mmag] (bars: σ)")
    ax.legend(fontsize=8)
    return to_png(fig)


def calibration_section(data: ReportData) -> Section:
    """The "Calibration against the reference catalog" section."""
    section = Section("Calibration against the reference catalog",
                      "Positions and fluxes of the stars used by the astrometric and "
                      "photometric fits of calibrate, compared with the reference catalog.")
    if not data.has("src"):
        section.note(f"No src catalogs in {data.label}: run calibrate to get calibration "
                     "residuals.")
        return section
    if not data.has("reference_catalog"):
        section.note("No reference_catalog in the repository: astrometric and photometric "
                     "residuals need the reference stars.")
        return section
    m = collect_reference_matches(data)
    if m is None or not (m.astrometry.any() or m.photometry.any()):
        section.note(f"No src source flagged calib_astrometry_used or calib_photometry_used in "
                     f"{data.label} matches a reference star within 1 arcsec.")
        return section
    if m.astrometry.any():
        dra, ddec = m.dra[m.astrometry], m.ddec[m.astrometry]
        caption = (
            f"{int(m.astrometry.sum())} sources used by the astrometric fits, minus their "
            "reference stars. Left: offsets by band; middle: distributions (σ = robust "
            "scatter); right: per-visit RMS offset and the size of the median offset. Good: "
            "the cloud is round and centred on zero (median offsets of a few mas at most), the "
            "scatter is that of centroid noise plus reference errors (tens of mas or less), and "
            "no visit stands out. Measured: median ΔRA* "
            f"{np.median(dra):+.1f} mas, ΔDec {np.median(ddec):+.1f} mas, robust σ "
            f"{robust_sigma(dra):.1f} / {robust_sigma(ddec):.1f} mas.")
        section.items.append(Figure("Astrometric residuals", caption, _plot_astrometry(m)))
    else:
        section.note("No source flagged calib_astrometry_used matches a reference star.")
    sel = m.photometry & np.isfinite(m.dmag)
    if sel.any():
        caption = (
            f"{int(sel.sum())} sources used by the zero-point fits: calibrated PSF magnitude "
            "minus reference magnitude against reference magnitude (lines: medians in 0.5 mag "
            "bins), and the median per visit (bars: robust scatter). Good: flat at zero across "
            "magnitude (a slope means non-linearity or a background error; a bright-end dip, "
            "saturation), per-visit medians within ±5 mmag, scatter rising only at the faint "
            f"end. Measured: median {1000 * np.median(m.dmag[sel]):+.1f} mmag, robust σ "
            f"{1000 * robust_sigma(m.dmag[sel]):.1f} mmag.")
        section.items.append(Figure("Photometric residuals", caption, _plot_photometry(m)))
    else:
        section.note("No source flagged calib_photometry_used matches a reference star with a "
                     "flux in its band.")
    return section
