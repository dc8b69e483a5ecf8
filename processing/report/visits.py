"""Per-visit observing conditions against time: seeing, zero point, sky, depth, per band.

One point per visit: the median over its detectors of the ``visit_summary``
statistics (``reference/algorithms.md`` 1.5):

* seeing = ``psfSigma * pixelScale * sqrt(8 ln 2)`` (PSF FWHM, arcsec), as the
  ``CcdVisit.seeing`` column;
* the one-second zero point ``zeroPoint - 2.5 log10(expTime)`` (AB mag of
  1 ADU/s), so visits of different exposure times compare directly;
* the sky surface brightness ``zeroPoint - 2.5 log10(skyBg / pixelScale^2)``
  (AB mag/arcsec^2; ``skyBg`` is the per-pixel sky of the whole exposure, ADU);
* ``magLim``, the 5-sigma point-source depth (AB mag).

A visit is flagged when one of these lies more than 3 robust sigmas (and more
than a floor: 0.1", 0.05 mag, 0.2 mag/arcsec^2, 0.2 mag) from its band's median.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .data import ReportData
from .render import Figure, Section, Table, band_color, new_figure, robust_sigma, to_png

__all__ = ["VisitConditions", "collect_visit_conditions", "visit_section"]

_FWHM_PER_SIGMA = float(np.sqrt(8.0 * np.log(2.0)))

#: (attribute, axis label, plain name, outlier floor) of the four panels.
_PANELS = (
    ("seeing", "seeing FWHM [arcsec]", "seeing", 0.1),
    ("zero_point", "zero point, 1 s [AB mag]", "zero point", 0.05),
    ("sky", "sky [AB mag/arcsec$^2$]", "sky", 0.2),
    ("mag_lim", "5$\\sigma$ depth [AB mag]", "depth", 0.2),
)


@dataclass(frozen=True)
class VisitConditions:
    """Per-visit medians over detectors; every array has shape ``(n_visits,)``.

    Attributes
    ----------
    visit : numpy.ndarray of int
    band : numpy.ndarray of str
    mjd : numpy.ndarray
        Exposure mid-point, TAI MJD.
    seeing : numpy.ndarray
        PSF FWHM, arcsec.
    zero_point : numpy.ndarray
        One-second zero point, AB mag of 1 ADU/s.
    sky : numpy.ndarray
        Sky surface brightness, AB mag/arcsec^2.
    mag_lim : numpy.ndarray
        5-sigma point-source depth, AB mag.
    n_detectors : numpy.ndarray of int
        Detectors with a summary row.
    """

    visit: np.ndarray
    band: np.ndarray
    mjd: np.ndarray
    seeing: np.ndarray
    zero_point: np.ndarray
    sky: np.ndarray
    mag_lim: np.ndarray
    n_detectors: np.ndarray

    def __len__(self) -> int:
        return len(self.visit)

    def outliers(self) -> dict[int, list[str]]:
        """Visits whose value lies > 3 robust sigma (and > the floor) from the band median.

        Returns visit -> names of the flagged quantities (``seeing``, ``zero point``,
        ``sky``, ``depth``).
        """
        flagged: dict[int, list[str]] = {}
        for attr, _, name, floor in _PANELS:
            values = getattr(self, attr)
            for band in np.unique(self.band):
                sel = np.flatnonzero((self.band == band) & np.isfinite(values))
                if sel.size < 3:
                    continue
                med = np.median(values[sel])
                limit = max(3.0 * robust_sigma(values[sel]), floor)
                for i in sel[np.abs(values[sel] - med) > limit]:
                    flagged.setdefault(int(self.visit[i]), []).append(name)
        return flagged


def _column(table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=float)


def collect_visit_conditions(data: ReportData) -> VisitConditions | None:
    """Per-visit conditions from the collection's ``visit_summary`` rows (None when absent)."""
    table = data.table("visit_summary", ["visit", "band", "expMidptMJD", "psfSigma",
                                         "pixelScale", "zeroPoint", "skyBg", "magLim",
                                         "expTime"])
    if table.num_rows == 0:
        return None
    visit = table.column("visit").to_numpy(zero_copy_only=False).astype(np.int64)
    band = np.asarray(table.column("band").to_pylist(), dtype=object).astype(str)
    scale = _column(table, "pixelScale")
    zp = _column(table, "zeroPoint")
    with np.errstate(divide="ignore", invalid="ignore"):
        per_row = {
            "mjd": _column(table, "expMidptMJD"),
            "seeing": _column(table, "psfSigma") * scale * _FWHM_PER_SIGMA,
            "zero_point": zp - 2.5 * np.log10(_column(table, "expTime")),
            "sky": zp - 2.5 * np.log10(_column(table, "skyBg") / scale**2),
            "mag_lim": _column(table, "magLim"),
        }
    visits, first, inverse, counts = np.unique(visit, return_index=True, return_inverse=True,
                                               return_counts=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    out = {}
    for name, values in per_row.items():
        grouped = values[order]
        with np.errstate(invalid="ignore"):
            med = [np.nanmedian(grouped[a:b]) if np.isfinite(grouped[a:b]).any() else np.nan
                   for a, b in itertools.pairwise(bounds)]
        out[name] = np.asarray(med, dtype=float)
    by_time = np.argsort(out["mjd"], kind="stable")
    return VisitConditions(visit=visits[by_time], band=band[first][by_time],
                           n_detectors=counts[by_time],
                           **{k: v[by_time] for k, v in out.items()})


def _plot(cond: VisitConditions) -> bytes:
    fig, axes = new_figure(9.0, 8.0, 4, 1, sharex=True, margins=(0.8, 0.15, 0.55, 0.1),
                           hspace=0.08)
    mjd0 = float(np.floor(np.nanmin(cond.mjd))) if np.isfinite(cond.mjd).any() else 0.0
    t = cond.mjd - mjd0
    flagged = cond.outliers()
    for ax, (attr, label, name, _) in zip(axes[:, 0], _PANELS, strict=True):
        values = getattr(cond, attr)
        is_flagged = np.array([name in flagged.get(int(v), ()) for v in cond.visit])
        for band in sorted(np.unique(cond.band)):
            sel = cond.band == band
            ax.plot(t[sel], values[sel], "o", ms=5, color=band_color(band))
            med = np.nanmedian(values[sel]) if np.isfinite(values[sel]).any() else np.nan
            if np.isfinite(med):
                ax.axhline(med, color=band_color(band), lw=0.8, ls="--", alpha=0.6)
        if is_flagged.any():
            ax.plot(t[is_flagged], values[is_flagged], "o", ms=11, mfc="none", mec="k",
                    mew=1.2)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0, 0].yaxis.set_inverted(True)  # seeing: better (smaller) at the top, like the others
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", color=band_color(b), label=b)
               for b in sorted(np.unique(cond.band))]
    if flagged:
        handles.append(Line2D([], [], ls="", marker="o", ms=11, mfc="none", mec="k",
                              label="flagged"))
    axes[0, 0].legend(handles=handles, ncols=8, fontsize=8, loc="best")
    axes[-1, 0].set_xlabel(f"MJD − {mjd0:.0f} [days]")
    return to_png(fig)


def _band_table(cond: VisitConditions) -> Table:
    rows = []
    for band in sorted(np.unique(cond.band)):
        sel = cond.band == band
        rows.append((str(band), str(int(sel.sum())),
                     *(f"{np.nanmedian(getattr(cond, a)[sel]):.3f}"
                       if np.isfinite(getattr(cond, a)[sel]).any() else "—"
                       for a, *_ in _PANELS)))
    return Table("Per-band medians over visits",
                 ("band", "visits", "seeing [arcsec]", "zero point 1 s [mag]",
                  "sky [mag/arcsec²]", "5σ depth [mag]"), tuple(rows))


def visit_section(data: ReportData) -> Section:
    """The "Observing conditions" section (a note when there are no visit summaries)."""
    section = Section("Observing conditions per visit",
                      "Seeing, photometric zero point, sky brightness and depth of every visit "
                      "against time, from the final visit summaries (median over detectors).")
    cond = collect_visit_conditions(data)
    if cond is None:
        section.note(f"No visit_summary datasets in {data.label}: run the pipeline through "
                     "update_visit_summary (drp run REPO -i inputs -o OUT) to get per-visit "
                     "conditions.")
        return section
    flagged = cond.outliers()
    flag_text = ("Flagged (circled): " + "; ".join(
        f"visit {v}: {', '.join(w)}" for v, w in sorted(flagged.items())) + "."
        if flagged else "No visit is an outlier of its band (> 3 robust sigma).")
    caption = (
        f"{len(cond)} visits, one point each (median over detectors), coloured by band; dashed "
        "lines are the band medians. Panels: PSF FWHM (axis inverted: better at the top), "
        "one-second zero point (AB mag of 1 ADU/s; a drop means cloud or extinction), sky "
        "surface brightness (smaller numbers = brighter sky: twilight, Moon), 5σ point-source "
        "depth. Good: within a band the zero point is flat to a few hundredths of a magnitude, "
        "seeing stays near the site median (DP1: 1.0-1.2\" in g-i), and depth follows seeing "
        f"and sky without isolated drops. {flag_text}")
    section.items.append(Figure("Seeing, zero point, sky and depth per visit", caption,
                                _plot(cond)))
    section.items.append(_band_table(cond))
    return section
