"""Truth tables: what every measurement of the simulated survey should find.

Four tables (pyarrow, units in the field metadata), written to the ``truth``
run by :func:`sample_data.simulate_survey`:

``truth_object`` (instrument)
    One row per object: ``id``, ``type`` (star, galaxy, transient), true
    ``ra``/``dec`` (deg), galaxy shape (``sersic_n``, ``half_light_radius``
    arcsec semi-major axis, ``axis_ratio``, ``position_angle`` deg E of N),
    ``visit`` (transients only) and ``{band}_mag`` (AB) / ``{band}_flux``
    (nJy) in u, g, r, i, z, y.
``truth_visit_detector`` (instrument, visit)
    One row per detector: true zero point (AB mag of 1 ADU) and calibration
    (nJy/ADU), sky (ADU/pixel at the detector centre and its gradient,
    ADU/pixel/pixel), PSF at the detector centre (seeing, Moffat beta,
    continuous moments and ellipticity, adaptive moments of the
    pixel-integrated PSF), electronics, true and header boresights, and the
    true and header WCS as FITS header strings.
``truth_psf_grid`` (instrument, visit)
    Long format: the PSF of every detector on an ``n x n`` grid of pixel
    positions: adaptive moments ``ixx, iyy, ixy`` (pixels^2) of the
    pixel-integrated PSF (what a pipeline measuring stars should find),
    the continuous-profile moments, ellipticity and moments FWHM.
``truth_artefact`` (instrument, visit)
    One row per artefact on a detector: ``kind`` (cosmic_ray, satellite,
    ghost, transient), end points or centre (pixels), ``size`` (track
    length, trail sigma or ghost outer radius, pixels), ``value`` (e-:
    deposited charge, peak surface brightness, total flux) and ``object_id``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from store.calib import AB_ZERO_NJY
from store.formats.parquet import with_units

from .config import BANDS
from .moments import adaptive_moments
from .observing import Visit
from .plan import SurveyPlan
from .psf import FWHM_PER_SIGMA, moffat_pixels
from .scene import RenderedExposure
from .sky import KIND_NAMES, KIND_TRANSIENT
from .wcs import wcs_to_header_string

__all__ = [
    "artefact_table",
    "object_table",
    "psf_grid",
    "psf_grid_table",
    "visit_detector_table",
]


def object_table(plan: SurveyPlan) -> pa.Table:
    """The ``truth_object`` table of a survey."""
    cat = plan.catalog
    names = np.array([KIND_NAMES[int(k)] for k in range(3)])
    cols: dict[str, object] = {
        "id": cat.id, "type": names[cat.kind.astype(int)], "ra": cat.ra, "dec": cat.dec,
        "sersic_n": cat.sersic_n, "half_light_radius": cat.half_light_radius,
        "axis_ratio": cat.axis_ratio, "position_angle": cat.position_angle,
        "visit": pa.array(cat.visit, mask=cat.visit < 0),
    }
    units = {"ra": "deg", "dec": "deg", "half_light_radius": "arcsec", "position_angle": "deg"}
    for band in BANDS:
        mag = cat.mag[band]
        cols[f"{band}_mag"] = mag
        cols[f"{band}_flux"] = AB_ZERO_NJY * 10 ** (-0.4 * mag)
        units[f"{band}_mag"] = "mag"
        units[f"{band}_flux"] = "nJy"
    return with_units(pa.table(cols), units, {
        "type": "star, galaxy or transient",
        "visit": "for transients, the only visit the object appears in",
        "half_light_radius": "semi-major axis of the untruncated Sersic profile",
        "position_angle": "major axis, East of North",
    })


def psf_grid(plan: SurveyPlan, visit: Visit, detector: int, n: int = 5) -> dict[str, np.ndarray]:
    """The true PSF on an ``n x n`` grid of a detector.

    Returns
    -------
    dict of str to numpy.ndarray
        ``x, y`` (pixels), ``ixx, iyy, ixy`` (adaptive moments of the
        pixel-integrated PSF, pixels^2), ``ixx_cont, iyy_cont, ixy_cont``
        (continuous profile), ``e1, e2`` and ``fwhm`` (moments FWHM of the
        pixel-integrated PSF, arcsec).
    """
    det = plan.camera.detectors[detector]
    gx = (np.arange(n) + 0.5) * det.width / n - 0.5
    gy = (np.arange(n) + 0.5) * det.height / n - 0.5
    xx, yy = (m.ravel() for m in np.meshgrid(gx, gy))
    fx, fy = plan.camera.pixel_to_focal_plane(detector, xx, yy)
    mxx, myy, mxy = visit.psf.moments(fx, fy)
    half = int(np.ceil(8.0 * np.sqrt(max(mxx.max(), myy.max()))))
    grid = np.arange(-half, half + 1, dtype=float)
    kernels = moffat_pixels(grid[None, None, :], grid[None, :, None], mxx[:, None, None],
                            myy[:, None, None], mxy[:, None, None], visit.psf.beta, n_gauss=4)
    m = adaptive_moments(kernels, half, half, np.sqrt(0.5 * (mxx + myy)))
    trace = m.ixx + m.iyy
    return {"x": xx, "y": yy, "ixx": m.ixx, "iyy": m.iyy, "ixy": m.ixy,
            "ixx_cont": mxx, "iyy_cont": myy, "ixy_cont": mxy,
            "e1": (m.ixx - m.iyy) / trace, "e2": 2 * m.ixy / trace,
            "fwhm": m.sigma * FWHM_PER_SIGMA * plan.camera.config.pixel_scale}


def psf_grid_table(plan: SurveyPlan, visit: Visit, detectors=None, n: int = 5) -> pa.Table:
    """The ``truth_psf_grid`` rows of a visit (all detectors unless given)."""
    detectors = range(len(plan.camera.detectors)) if detectors is None else detectors
    parts = []
    for d in detectors:
        g = psf_grid(plan, visit, d, n)
        size = g["x"].size
        parts.append({"visit": np.full(size, visit.id, np.int64),
                      "detector": np.full(size, d, np.int32), **g})
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    units = {k: "pixel**2" for k in ("ixx", "iyy", "ixy", "ixx_cont", "iyy_cont", "ixy_cont")}
    units.update(x="pixel", y="pixel", fwhm="arcsec")
    return with_units(pa.table(cols), units, {
        "ixx": "adaptive moment of the pixel-integrated PSF",
        "ixx_cont": "adaptive moment of the continuous PSF (before pixel integration)",
        "fwhm": "2.3548 (Ixx Iyy - Ixy^2)^(1/4) pixel_scale of the pixel-integrated PSF",
    })


def visit_detector_table(plan: SurveyPlan, visit: Visit, detectors=None) -> pa.Table:
    """The ``truth_visit_detector`` rows of a visit (all detectors unless given)."""
    detectors = list(range(len(plan.camera.detectors)) if detectors is None else detectors)
    cam = plan.camera
    rows: dict[str, list] = {}
    for d in detectors:
        det = cam.detectors[d]
        gx, gy = visit.sky_gradient
        level = visit.sky_level * det.qe / det.gain
        centre = _psf_centre(plan, visit, d)
        zp = plan.zero_point(visit, d)
        row = {
            "visit": visit.id, "detector": d, "band": visit.band, "mjd": visit.mjd,
            "airmass": visit.airmass, "seeing": visit.seeing,
            "transparency": visit.transparency, "zero_point": zp,
            "calibration_mean": AB_ZERO_NJY * 10 ** (-0.4 * zp),
            "sky_mean": level * (1.0 + gx * det.fp_x + gy * det.fp_y),
            "sky_grad_x": level * gx * cam.config.pixel_size,
            "sky_grad_y": level * gy * cam.config.pixel_size,
            "sky_mag": visit.sky_mag, "psf_beta": visit.psf.beta,
            **centre,
            "gain": det.gain, "read_noise": det.read_noise, "saturation": det.saturation,
            "ra": visit.ra, "dec": visit.dec, "rotation": visit.rotation,
            "header_ra": visit.header_ra, "header_dec": visit.header_dec,
            "header_rotation": visit.header_rotation,
            "wcs": wcs_to_header_string(plan.true_wcs(visit, d)),
            "header_wcs": wcs_to_header_string(plan.header_wcs(visit, d)),
        }
        for k, v in row.items():
            rows.setdefault(k, []).append(v)
    table = pa.table(rows)
    units = {"mjd": "d", "seeing": "arcsec", "zero_point": "mag", "calibration_mean": "nJy/adu",
             "sky_mean": "adu", "sky_grad_x": "adu/pixel", "sky_grad_y": "adu/pixel",
             "sky_mag": "mag/arcsec**2", "psf_sigma": "pixel", "psf_fwhm": "arcsec",
             "psf_ixx": "pixel**2", "psf_iyy": "pixel**2", "psf_ixy": "pixel**2",
             "gain": "electron/adu", "read_noise": "electron", "saturation": "adu",
             "ra": "deg", "dec": "deg", "rotation": "deg", "header_ra": "deg",
             "header_dec": "deg", "header_rotation": "deg"}
    return with_units(table, units, {
        "zero_point": "AB magnitude of 1 ADU in this exposure",
        "sky_mean": "sky at the detector centre",
        "seeing": "moments FWHM of the PSF at the optical axis",
        "psf_fwhm": "FWHM of the Moffat profile at the detector centre",
        "psf_ixx": "adaptive moment of the pixel-integrated PSF at the detector centre",
        "wcs": "true TAN-SIP WCS (FITS cards, 0-based pixels via CRPIX-1)",
        "header_wcs": "WCS written in the post_isr_image header",
    })


def _psf_centre(plan: SurveyPlan, visit: Visit, detector: int) -> dict[str, float]:
    """PSF summary at the detector centre (continuous shape and pixel-integrated moments)."""
    det = plan.camera.detectors[detector]
    fx, fy = det.fp_x, det.fp_y
    sigma, e1, e2 = visit.psf.shape(fx, fy)
    g = psf_grid(plan, visit, detector, n=1)
    return {"psf_sigma": float(sigma), "psf_e1": float(e1), "psf_e2": float(e2),
            "psf_fwhm": float(visit.psf.profile_fwhm(fx, fy)) * plan.camera.config.pixel_scale,
            "psf_ixx": float(g["ixx"][0]), "psf_iyy": float(g["iyy"][0]),
            "psf_ixy": float(g["ixy"][0])}


def _segment_in_box(px, py, angle_deg, width, height):
    """End points of a line (through ``(px, py)`` at ``angle``) clipped to a pixel box, or None."""
    a = np.radians(angle_deg)
    dx, dy = np.cos(a), np.sin(a)
    t_lo, t_hi = -np.inf, np.inf
    for p, d, hi in ((px, dx, width - 0.5), (py, dy, height - 0.5)):
        if abs(d) < 1e-12:
            if not -0.5 <= p <= hi:
                return None
            continue
        t1, t2 = (-0.5 - p) / d, (hi - p) / d
        t_lo, t_hi = max(t_lo, min(t1, t2)), min(t_hi, max(t1, t2))
    if t_lo > t_hi:
        return None
    return px + t_lo * dx, py + t_lo * dy, px + t_hi * dx, py + t_hi * dy


def artefact_table(plan: SurveyPlan, rendered: RenderedExposure) -> pa.Table:
    """The ``truth_artefact`` rows of one rendered detector-visit."""
    visit, d = rendered.visit, rendered.detector
    det = plan.camera.detectors[d]
    p = plan.camera.config.pixel_size
    cr = rendered.cosmic_rays
    n = len(cr)
    kind = ["cosmic_ray"] * n
    x0, y0, x1, y1 = list(cr.x0), list(cr.y0), list(cr.x1), list(cr.y1)
    size = list(np.hypot(cr.x1 - cr.x0, cr.y1 - cr.y0))
    value = list(cr.charge)
    obj = [None] * n
    ox, oy = plan.camera.pixel_to_focal_plane(d, 0.0, 0.0)
    if visit.satellite is not None:
        t = visit.satellite
        seg = _segment_in_box((t.x - ox) / p, (t.y - oy) / p, t.angle, det.width, det.height)
        if seg is not None:
            kind.append("satellite")
            for lst, v in zip((x0, y0, x1, y1), seg, strict=True):
                lst.append(float(v))
            size.append(t.width)
            value.append(t.peak * det.qe)
            obj.append(None)
    if visit.ghost is not None:
        g = visit.ghost
        gx, gy = (g.x - ox) / p, (g.y - oy) / p
        if (-g.r_outer < gx < det.width + g.r_outer) and (-g.r_outer < gy < det.height + g.r_outer):
            star = int(np.flatnonzero(plan.catalog.id == g.star_id)[0])
            zp_e = visit.zero_point + 2.5 * np.log10(det.qe)
            flux = 10 ** (-0.4 * (plan.catalog.mag[visit.band][star] - zp_e)) * g.fraction
            kind.append("ghost")
            x0.append(gx)
            y0.append(gy)
            x1.append(gx)
            y1.append(gy)
            size.append(g.r_outer)
            value.append(flux)
            obj.append(g.star_id)
    cat = plan.catalog
    is_tr = (cat.kind[rendered.rows] == KIND_TRANSIENT)
    for i in np.flatnonzero(is_tr):
        xt, yt = float(rendered.x[i]), float(rendered.y[i])
        if -0.5 <= xt < det.width - 0.5 and -0.5 <= yt < det.height - 0.5:
            kind.append("transient")
            x0.append(xt)
            y0.append(yt)
            x1.append(xt)
            y1.append(yt)
            size.append(0.0)
            value.append(float(rendered.flux_adu[i] * det.gain))
            obj.append(int(cat.id[rendered.rows[i]]))
    m = len(kind)
    table = pa.table({
        "visit": pa.array([visit.id] * m, pa.int64()), "detector": pa.array([d] * m, pa.int32()),
        "kind": pa.array(kind, pa.string()), "x0": pa.array(x0, pa.float64()),
        "y0": pa.array(y0, pa.float64()), "x1": pa.array(x1, pa.float64()),
        "y1": pa.array(y1, pa.float64()), "size": pa.array(size, pa.float64()),
        "value": pa.array(value, pa.float64()), "object_id": pa.array(obj, pa.int64()),
    })
    return with_units(table, {"x0": "pixel", "y0": "pixel", "x1": "pixel", "y1": "pixel",
                              "size": "pixel", "value": "electron"}, {
        "size": "cosmic ray track length, satellite trail sigma, ghost outer radius",
        "value": "cosmic ray charge, trail peak per pixel, ghost or transient total flux",
    })
