"""PSF quality: a focal-plane map of the PSF model of one visit, and reserved-star residuals.

Focal-plane map
    The PSF model of every detector of one visit (from its ``visit_summary``
    components) is evaluated on a grid of positions: the ``truth_psf_grid``
    positions when the simulator's truth is there (so model and truth compare
    point by point), else a 5 x 5 grid per detector.  Adaptive second moments of
    the model kernel (:func:`processing.algorithms.moments.psf_moments`, pixel^2)
    are carried to the sky with the local Jacobian ``J`` of the detector's WCS
    (arcsec per pixel, by finite differences): ``M_sky = J M J^T`` in the tangent
    plane of the visit centre (xi to the east, eta to the north).  Size is the
    moments FWHM ``sqrt(8 ln 2) det(M_sky)^(1/4)``; ellipticity ``e1 = (Mxx - Myy) /
    (Mxx + Myy)``, ``e2 = 2 Mxy / (Mxx + Myy)`` in that frame, drawn as headless
    whiskers of length ``|e|`` at the position angle ``atan2(e2, e1) / 2`` from
    east through north.  The map is drawn with east to the left, as the sky is seen.

Reserved stars
    ``single_visit_star`` rows hold each star's adaptive moments (``slot_Shape``)
    and the model's at its position (``slot_PsfShape``).  Stars flagged
    ``calib_psf_reserved`` were held out of the fit, so their residuals
    ``de = e_star - e_model`` and ``dT/T = (T_star - T_model) / T_model`` (``T =
    Ixx + Iyy``) test the model where it was not fitted; the used stars' residuals
    are shown for comparison (a model that fits its own stars much better than
    the reserved ones is over-fitted).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from store.calib import AB_ZERO_NJY

from .data import ReportData
from .render import Figure, Section, new_figure, robust_sigma, to_png

__all__ = ["PsfMap", "StarResiduals", "collect_psf_map", "collect_star_residuals",
           "pick_visit", "psf_section"]

_FWHM_PER_SIGMA = float(np.sqrt(8.0 * np.log(2.0)))
_GRID = 5  # positions per detector side without truth


@dataclass(frozen=True)
class PsfMap:
    """The PSF model of one visit on the focal plane (arrays of shape ``(n,)``).

    Attributes
    ----------
    visit : int
    band : str
    detector : numpy.ndarray of int
    xi, eta : numpy.ndarray
        Tangent-plane position about the visit centre, degrees (east, north).
    fwhm : numpy.ndarray
        Model moments FWHM, arcsec.
    e1, e2 : numpy.ndarray
        Model ellipticity in the (east, north) frame.
    outlines : dict of int to numpy.ndarray
        Detector -> ``(5, 2)`` closed outline (xi, eta), degrees.
    true_fwhm, true_e1, true_e2 : numpy.ndarray or None
        The same for the true PSF (simulations only).
    """

    visit: int
    band: str
    detector: np.ndarray
    xi: np.ndarray
    eta: np.ndarray
    fwhm: np.ndarray
    e1: np.ndarray
    e2: np.ndarray
    outlines: dict
    true_fwhm: np.ndarray | None = None
    true_e1: np.ndarray | None = None
    true_e2: np.ndarray | None = None


@dataclass(frozen=True)
class StarResiduals:
    """Star-minus-model moments of PSF stars (arrays of shape ``(n,)``).

    Attributes
    ----------
    reserved : numpy.ndarray of bool
        Held out of the PSF fit (else used in it).
    de1, de2 : numpy.ndarray
        Ellipticity residuals.
    dsize : numpy.ndarray
        Fractional trace residual ``(T_star - T_model) / T_model``.
    mag : numpy.ndarray
        PSF magnitude, AB.
    """

    reserved: np.ndarray
    de1: np.ndarray
    de2: np.ndarray
    dsize: np.ndarray
    mag: np.ndarray


def _gnomonic(ra, dec, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Tangent-plane (xi east, eta north) coordinates about (ra0, dec0), degrees."""
    ra, dec = np.radians(ra), np.radians(dec)
    a0, d0 = np.radians(ra0), np.radians(dec0)
    cosc = np.sin(d0) * np.sin(dec) + np.cos(d0) * np.cos(dec) * np.cos(ra - a0)
    xi = np.cos(dec) * np.sin(ra - a0) / cosc
    eta = (np.cos(d0) * np.sin(dec) - np.sin(d0) * np.cos(dec) * np.cos(ra - a0)) / cosc
    return np.degrees(xi), np.degrees(eta)


def _sky_frame(wcs, x, y, ra0, dec0):
    """Tangent-plane positions (deg) and Jacobians (arcsec/pixel, ``(n, 2, 2)``) at pixels."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    px = np.concatenate([x, x + 0.5, x - 0.5, x, x])
    py = np.concatenate([y, y, y, y + 0.5, y - 0.5])
    ra, dec = wcs.all_pix2world(px, py, 0)
    xi, eta = _gnomonic(ra, dec, ra0, dec0)
    xi, eta = xi.reshape(5, -1) * 3600.0, eta.reshape(5, -1) * 3600.0
    jac = np.empty((x.size, 2, 2))
    jac[:, 0, 0], jac[:, 1, 0] = xi[1] - xi[2], eta[1] - eta[2]  # d/dx
    jac[:, 0, 1], jac[:, 1, 1] = xi[3] - xi[4], eta[3] - eta[4]  # d/dy
    return xi[0] / 3600.0, eta[0] / 3600.0, jac


def _shape(jac, ixx, iyy, ixy):
    """(FWHM arcsec, e1, e2) of pixel moments carried to the sky by ``jac``."""
    m = np.empty((len(ixx), 2, 2))
    m[:, 0, 0], m[:, 1, 1] = ixx, iyy
    m[:, 0, 1] = m[:, 1, 0] = ixy
    s = jac @ m @ np.transpose(jac, (0, 2, 1))
    sxx, syy, sxy = s[:, 0, 0], s[:, 1, 1], s[:, 0, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        fwhm = _FWHM_PER_SIGMA * (sxx * syy - sxy**2) ** 0.25
        return fwhm, (sxx - syy) / (sxx + syy), 2.0 * sxy / (sxx + syy)


def pick_visit(data: ReportData) -> int | None:
    """The visit to map: among those with the most detectors, the one of median seeing."""
    table = data.table("visit_summary", ["visit", "psfSigma"])
    if table.num_rows == 0:
        return None
    visit = table.column("visit").to_numpy(zero_copy_only=False).astype(np.int64)
    sigma = np.asarray(table.column("psfSigma").to_numpy(zero_copy_only=False), dtype=float)
    visits, inverse, counts = np.unique(visit, return_inverse=True, return_counts=True)
    med = np.array([np.nanmedian(sigma[inverse == i]) if np.isfinite(sigma[inverse == i]).any()
                    else np.inf for i in range(len(visits))])
    full = np.flatnonzero(counts == counts.max())
    order = full[np.argsort(med[full], kind="stable")]
    return int(visits[order[(len(order) - 1) // 2]])


def _truth_grid(data: ReportData, visit: int):
    if not data.has("truth_psf_grid"):
        return None
    grid = data.table("truth_psf_grid", ["detector", "x", "y", "ixx", "iyy", "ixy"],
                      where="s.visit = $v", bind={"v": visit})
    return grid if grid.num_rows else None


def collect_psf_map(data: ReportData, visit: int) -> PsfMap | None:
    """The PSF model of ``visit`` on the focal plane (None without a usable summary).

    Raises
    ------
    store.errors.DrpError
        The summary file cannot be read.
    """
    from processing.algorithms.moments import psf_moments
    from processing.visit_summary import VisitSummaryCatalog

    refs = data.refs("visit_summary", "visit = $v", {"v": visit})
    if not refs:
        return None
    catalog = VisitSummaryCatalog.from_table(data.get(refs[0]))
    truth = _truth_grid(data, visit)
    rows = catalog.to_table()
    ra0 = float(np.nanmedian(rows.column("boresightRa").to_numpy(zero_copy_only=False)))
    dec0 = float(np.nanmedian(rows.column("boresightDec").to_numpy(zero_copy_only=False)))
    if not (np.isfinite(ra0) and np.isfinite(dec0)):
        ra0 = float(np.nanmean(rows.column("ra").to_numpy(zero_copy_only=False)))
        dec0 = float(np.nanmean(rows.column("dec").to_numpy(zero_copy_only=False)))
    parts: dict[str, list] = {k: [] for k in ("det", "xi", "eta", "fwhm", "e1", "e2",
                                              "tf", "te1", "te2")}
    outlines = {}
    for det in catalog.detectors():
        psf, wcs, box = catalog.psf(det), catalog.wcs(det), catalog.bbox(det)
        if psf is None or wcs is None:
            continue
        if truth is not None:
            sel = np.asarray(truth.column("detector").to_numpy(zero_copy_only=False)) == det
            x = np.asarray(truth.column("x").to_numpy(zero_copy_only=False))[sel]
            y = np.asarray(truth.column("y").to_numpy(zero_copy_only=False))[sel]
        else:
            sel = None
            fx = (np.arange(_GRID) + 0.5) / _GRID
            gx, gy = np.meshgrid(box.x0 + fx * box.width - 0.5, box.y0 + fx * box.height - 0.5)
            x, y = gx.ravel(), gy.ravel()
        if x.size == 0:
            continue
        xi, eta, jac = _sky_frame(wcs, x, y, ra0, dec0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            fwhm, e1, e2 = _shape(jac, *psf_moments(psf, x, y))
        for key, value in (("det", np.full(x.size, det)), ("xi", xi), ("eta", eta),
                           ("fwhm", fwhm), ("e1", e1), ("e2", e2)):
            parts[key].append(value)
        if sel is not None:
            moments = [np.asarray(truth.column(c).to_numpy(zero_copy_only=False))[sel]
                       for c in ("ixx", "iyy", "ixy")]
            for key, value in zip(("tf", "te1", "te2"), _shape(jac, *moments), strict=True):
                parts[key].append(value)
        cx, cy = box.corners()[:, 0], box.corners()[:, 1]
        oxi, oeta = _gnomonic(*wcs.all_pix2world(cx, cy, 0), ra0, dec0)
        outlines[det] = np.column_stack([np.append(oxi, oxi[0]), np.append(oeta, oeta[0])])
    if not parts["det"]:
        return None
    cat = {k: np.concatenate(v) if v else None for k, v in parts.items()}
    band = rows.column("band")[0].as_py()
    return PsfMap(visit=int(visit), band=str(band), detector=cat["det"], xi=cat["xi"],
                  eta=cat["eta"], fwhm=cat["fwhm"], e1=cat["e1"], e2=cat["e2"],
                  outlines=outlines, true_fwhm=cat["tf"], true_e1=cat["te1"],
                  true_e2=cat["te2"])


def _whiskers(ax, xi, eta, e1, e2, scale, color, label, width=0.004):
    mod = np.hypot(e1, e2)
    theta = 0.5 * np.arctan2(e2, e1)
    u, v = mod * np.cos(theta), mod * np.sin(theta)
    return ax.quiver(xi, eta, u, v, angles="xy", scale_units="xy", scale=1.0 / scale,
                     headwidth=0, headlength=0, headaxislength=0, pivot="middle", width=width,
                     color=color, label=label)


def _plot_map(pmap: PsfMap) -> bytes:
    has_truth = pmap.true_fwhm is not None
    ncols = 3 if has_truth else 2
    fig, axes = new_figure(4.4 * ncols, 4.4, 1, ncols, margins=(0.7, 0.2, 0.55, 0.3), wspace=0.45)
    span = max(np.ptp(pmap.xi), np.ptp(pmap.eta), 1e-3)
    scale = 0.12 * span / 0.1  # a whisker of |e| = 0.1 spans 12% of the field
    ax = axes[0, 0]
    im = ax.scatter(pmap.xi, pmap.eta, c=pmap.fwhm, s=(160.0 / np.sqrt(len(pmap.xi))) ** 2 * 2,
                    marker="s", cmap="viridis")
    fig.colorbar(im, ax=ax, label="model PSF FWHM [arcsec]", shrink=0.85)
    ax.set_title(f"PSF size, visit {pmap.visit} ({pmap.band})", fontsize=10)
    ax = axes[0, 1]
    if has_truth:  # truth drawn wide underneath, so agreement shows as black on red
        _whiskers(ax, pmap.xi, pmap.eta, pmap.true_e1, pmap.true_e2, scale, "tab:red", "truth",
                  width=0.012)
    _whiskers(ax, pmap.xi, pmap.eta, pmap.e1, pmap.e2, scale, "k", "model")
    if has_truth:
        ax.legend(fontsize=8, loc="upper right")
    ax.set_title("PSF ellipticity (whisker length ∝ |e|)", fontsize=10)
    x_key, y_key = np.min(pmap.xi) + 0.1 * span, np.min(pmap.eta) - 0.08 * span
    ax.quiver([x_key], [y_key], [0.05], [0.0], angles="xy", scale_units="xy", scale=1.0 / scale,
              headwidth=0, headlength=0, headaxislength=0, pivot="middle", width=0.004)
    ax.annotate("|e| = 0.05", (x_key, y_key), xytext=(0, 6), textcoords="offset points",
                ha="center", fontsize=8)
    if has_truth:
        ax = axes[0, 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = 100.0 * (pmap.fwhm / pmap.true_fwhm - 1.0)
        lim = max(float(np.nanmax(np.abs(rel))) if np.isfinite(rel).any() else 1.0, 0.5)
        im = ax.scatter(pmap.xi, pmap.eta, c=rel, s=(160.0 / np.sqrt(len(pmap.xi))) ** 2 * 2,
                        marker="s", cmap="RdBu_r", vmin=-lim, vmax=lim)
        fig.colorbar(im, ax=ax, label="model / true FWHM − 1 [%]", shrink=0.85)
        ax.set_title("model − truth size", fontsize=10)
    for ax in axes[0]:
        for outline in pmap.outlines.values():
            ax.plot(outline[:, 0], outline[:, 1], color="0.5", lw=0.8)
        ax.set_aspect("equal", adjustable="datalim")
        ax.xaxis.set_inverted(True)  # east to the left
        ax.set_xlabel("ξ (east) [deg]")
        ax.set_ylabel("η (north) [deg]")
    return to_png(fig)


def collect_star_residuals(data: ReportData) -> StarResiduals | None:
    """Moments residuals of the collection's PSF stars (None without ``single_visit_star``)."""
    cols = ["slot_Shape_xx", "slot_Shape_yy", "slot_Shape_xy", "slot_PsfShape_xx",
            "slot_PsfShape_yy", "slot_PsfShape_xy", "calib_psf_reserved", "calib_psf_used",
            "psfFlux"]
    stored = data.sql_columns("single_visit_star")
    if not {c.lower() for c in cols[:-1]} <= set(stored):
        return None
    where = "(s.calib_psf_reserved OR s.calib_psf_used)"
    if "slot_shape_flag" in stored:
        where += " AND NOT coalesce(s.slot_Shape_flag, false)"
    table = data.table("single_visit_star", cols, optional=["psfFlux"], where=where)
    if table.num_rows == 0:
        return None
    get = {c: np.asarray(table.column(c).to_numpy(zero_copy_only=False), dtype=float)
           for c in cols if c not in ("calib_psf_reserved", "calib_psf_used")}
    reserved = np.asarray(table.column("calib_psf_reserved").to_numpy(zero_copy_only=False),
                          dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        ts = get["slot_Shape_xx"] + get["slot_Shape_yy"]
        tp = get["slot_PsfShape_xx"] + get["slot_PsfShape_yy"]
        de1 = (get["slot_Shape_xx"] - get["slot_Shape_yy"]) / ts - \
            (get["slot_PsfShape_xx"] - get["slot_PsfShape_yy"]) / tp
        de2 = 2.0 * get["slot_Shape_xy"] / ts - 2.0 * get["slot_PsfShape_xy"] / tp
        dsize = ts / tp - 1.0
        mag = -2.5 * np.log10(get["psfFlux"] / AB_ZERO_NJY)
    good = np.isfinite(de1) & np.isfinite(de2) & np.isfinite(dsize)
    if not good.any():
        return None
    return StarResiduals(reserved=reserved[good], de1=de1[good], de2=de2[good],
                         dsize=dsize[good], mag=mag[good])


def _stats(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return (float(np.median(v)) if v.size else float("nan")), robust_sigma(v)


def _plot_residuals(res: StarResiduals) -> bytes:
    fig, axes = new_figure(13.0, 3.6, 1, 4, margins=(0.2, 0.15, 0.55, 0.1), wspace=0.3)
    for ax, (values, label, lim) in zip(axes[0, :3], (
            (res.de1, "$e_1$(star) − $e_1$(model)", 0.1),
            (res.de2, "$e_2$(star) − $e_2$(model)", 0.1),
            (res.dsize, "$T_{star}/T_{model} - 1$", 0.1)), strict=True):
        width = max(lim, 4 * robust_sigma(values)) if np.isfinite(robust_sigma(values)) else lim
        bins = np.linspace(-width, width, 41)
        ax.hist(values[~res.reserved], bins=bins, density=True, histtype="step", color="0.3",
                lw=1.2, label=f"used ({int((~res.reserved).sum())})")
        if res.reserved.any():
            ax.hist(values[res.reserved], bins=bins, density=True, alpha=0.5,
                    color="tab:orange", label=f"reserved ({int(res.reserved.sum())})")
        ax.axvline(0.0, color="k", lw=0.8)
        ax.set_xlabel(label)
        ax.set_yticks([])
    axes[0, 0].legend(fontsize=8)
    ax = axes[0, 3]
    ax.plot(res.mag[~res.reserved], res.dsize[~res.reserved], ".", color="0.6", ms=3,
            label="used")
    ax.plot(res.mag[res.reserved], res.dsize[res.reserved], "o", color="tab:orange", ms=3,
            label="reserved")
    ax.axhline(0.0, color="k", lw=0.8)
    lim = max(0.05, 5 * robust_sigma(res.dsize)) if np.isfinite(robust_sigma(res.dsize)) else 0.1
    ax.set_ylim(-lim, lim)
    ax.set_xlabel("PSF magnitude [AB]")
    ax.set_ylabel("$T_{star}/T_{model} - 1$")
    ax.legend(fontsize=8)
    return to_png(fig)


def psf_section(data: ReportData, visit: int | None = None) -> Section:
    """The "PSF" section: focal-plane map of ``visit`` (default :func:`pick_visit`) and residuals."""
    section = Section("PSF model",
                      "Size and shape of the PSF model across the focal plane of one visit, "
                      "and how well the model predicts stars that were not used to fit it.")
    visit = pick_visit(data) if visit is None else int(visit)
    pmap = collect_psf_map(data, visit) if visit is not None else None
    if pmap is None:
        section.note(f"No visit_summary with PSF models in {data.label}"
                     + (f" for visit {visit}" if visit is not None else "")
                     + ": the focal-plane PSF map needs update_visit_summary's output.")
    else:
        with np.errstate(invalid="ignore"):
            text = (f"Visit {pmap.visit} ({pmap.band}): the model FWHM ranges "
                    f"{np.nanmin(pmap.fwhm):.2f}-{np.nanmax(pmap.fwhm):.2f}\" and its median "
                    f"|e| is {np.nanmedian(np.hypot(pmap.e1, pmap.e2)):.3f}.")
            if pmap.true_fwhm is not None:
                rel = pmap.fwhm / pmap.true_fwhm - 1.0
                de = np.hypot(pmap.e1 - pmap.true_e1, pmap.e2 - pmap.true_e2)
                text += (f" Against the simulated truth: FWHM {100 * np.nanmedian(rel):+.2f}% "
                         f"(scatter {100 * robust_sigma(rel):.2f}%), median |Δe| "
                         f"{np.nanmedian(de):.4f}.")
        caption = (
            "Left: PSF-model FWHM on a grid over each detector (grey outlines), in the tangent "
            "plane of the visit centre, east to the left. Middle: model ellipticity whiskers "
            "(length ∝ |e|, along the major axis; red: truth where simulated)"
            + ("; right: model/true FWHM − 1" if pmap.true_fwhm is not None else "")
            + ". Good: size and ellipticity vary smoothly across the field and are continuous "
            "from one detector to the next (a jump at a detector edge points to a bad fit), "
            "|e| of a few percent, and the model within ~1% of the true size. " + text)
        section.items.append(Figure(f"Focal-plane PSF map, visit {pmap.visit}", caption,
                                    _plot_map(pmap)))
    res = collect_star_residuals(data)
    if res is None:
        section.note(f"No PSF stars (single_visit_star) in {data.label}: run calibrate to get "
                     "PSF-model residuals.")
        return section
    parts = []
    for name, sel in (("reserved", res.reserved), ("used", ~res.reserved)):
        if sel.any():
            m1, s1 = _stats(res.de1[sel])
            m2, s2 = _stats(res.de2[sel])
            mt, st = _stats(res.dsize[sel])
            parts.append(f"{name} ({int(sel.sum())} stars): median Δe1 {m1:+.4f} (σ {s1:.4f}), "
                         f"Δe2 {m2:+.4f} (σ {s2:.4f}), ΔT/T {100 * mt:+.2f}% (σ {100 * st:.2f}%)")
    caption = (
        "Star minus PSF-model adaptive moments at each PSF star: ellipticity residuals, "
        "fractional size residual, and size residual against magnitude. Orange: reserved stars "
        "(held out of the fit); grey: stars used in the fit. Good: reserved and used "
        "distributions centred on zero (|median Δe| ≲ 0.002, |median ΔT/T| ≲ 0.5%) with "
        "similar widths, and no trend of size with magnitude (a brighter-fatter trend shows "
        "as larger bright stars). " + "; ".join(parts) + ".")
    section.items.append(Figure("PSF-model residuals of PSF stars", caption,
                                _plot_residuals(res)))
    return section
