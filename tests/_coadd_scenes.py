"""Synthetic multi-visit star fields on a small sky map, for the coadd tests.

A discrete sky map with one small tract; each visit is a 2 x 2 mosaic of small
detectors with its own pointing dither, rotation and Gaussian PSF, rendered in
nJy with Gaussian noise of known variance, plus optional artefacts (a satellite
trail, cosmic rays) whose injected flux is recorded.  Each visit also gets a
visit-summary catalog with the columns the coadd-input query reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from astropy.wcs import WCS

from processing.algorithms.summary_fields import ExposureSummaryStats
from processing.skymap import DiscreteSkyMap
from processing.visit_summary import DetectorSummary, VisitSummaryCatalog
from store.calib import PhotoCalib
from store.exposure import DetectorInfo, Exposure, VisitInfo
from store.geom import Box
from store.masks import bits
from store.psf import GaussianPsf

RA0, DEC0 = 150.0, 2.0
PIXEL_SCALE = 0.2  # arcsec


def make_skymap() -> DiscreteSkyMap:
    """One tract of ~1700 px with 400-px patches (outer 440 px)."""
    return DiscreteSkyMap([[RA0, DEC0]], [0.03], pixel_scale=PIXEL_SCALE, patch_inner=400,
                          patch_border=20, cell_inner=50, cell_border=20)


def patch_record_table(skymap, name: str = "test") -> pa.Table:
    """The registry's ``patch`` rows (with polygon and cap columns) for every patch."""
    from store.registry import region_columns

    rows = [{"skymap": name, **p.dimension_record()} for t in skymap for p in t.patches()]
    regions = [r.pop("region") for r in rows]
    table = pa.Table.from_pylist(rows)
    for col, values in region_columns(regions).items():
        table = table.append_column(col, pa.array(values))
    return table


def tan_wcs(ra, dec, crpix, rot_deg, scale=PIXEL_SCALE) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [crpix[0] + 1.0, crpix[1] + 1.0]
    s = scale / 3600.0
    t = np.radians(rot_deg)
    w.wcs.cd = np.array([[-s * np.cos(t), s * np.sin(t)], [s * np.sin(t), s * np.cos(t)]])
    w.wcs.set()
    return w


def render_gaussians(shape, x, y, flux, psf: GaussianPsf, half: int = 15) -> np.ndarray:
    """Stars sampled from the PSF model at pixel centres, each stamp normalised to ``flux``."""
    img = np.zeros(shape)
    ixx, iyy, ixy = psf.moments()
    det = ixx * iyy - ixy * ixy
    ny, nx = shape
    for xi, yi, fi in zip(np.atleast_1d(x), np.atleast_1d(y), np.atleast_1d(flux), strict=True):
        cx, cy = int(np.floor(xi + 0.5)), int(np.floor(yi + 0.5))
        if cx < -half or cy < -half or cx >= nx + half or cy >= ny + half:
            continue
        yy, xx = np.mgrid[cy - half: cy + half + 1, cx - half: cx + half + 1].astype(float)
        dx, dy = xx - xi, yy - yi
        g = np.exp(-0.5 * (iyy * dx * dx - 2 * ixy * dx * dy + ixx * dy * dy) / det)
        g *= fi / g.sum()
        ys = slice(max(cy - half, 0), min(cy + half + 1, ny))
        xs = slice(max(cx - half, 0), min(cx + half + 1, nx))
        img[ys, xs] += g[ys.start - (cy - half): ys.stop - (cy - half),
                         xs.start - (cx - half): xs.stop - (cx - half)]
    return img


@dataclass
class Scene:
    """Everything a coadd test needs: inputs, truth and geometry."""

    skymap: DiscreteSkyMap
    tract: object
    patch: object
    exposures: dict[int, dict[int, Exposure]]  # visit -> detector -> Exposure
    summaries: dict[int, VisitSummaryCatalog]
    star_ra: np.ndarray
    star_dec: np.ndarray
    star_flux: np.ndarray
    psfs: dict[int, GaussianPsf]
    sky_sigma: dict[int, float]
    artefact_flux: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)
    variable: np.ndarray | None = None  # flux per visit of the variable star(s) (n_visit, n_var)

    def summary_table(self) -> pa.Table:
        return pa.concat_tables([s.to_table() for _, s in sorted(self.summaries.items())])


def make_scene(*, n_visits: int = 5, det_size: int = 260, gap: int = 12, seed: int = 1,
               n_stars: int = 25, sky_sigma: float = 10.0, sigmas=None, trail_visit: int | None = None,
               n_cosmics: int = 0, variable_star: bool = False, band: str = "r",
               patch_index=(2, 2), bright_grid: int = 4) -> Scene:
    """A star field seen by ``n_visits`` 2 x 2 mosaics covering one patch.

    Stars: ``n_stars`` at random positions in the patch plus a ``bright_grid``
    square grid of bright ones (2e5 nJy); fluxes in nJy.  Noise: Gaussian with variance ``sky_sigma**2``
    (nJy^2, scaled by 1 + visit/10 to vary the weights).  ``trail_visit`` gets a
    satellite trail across the patch; every visit gets ``n_cosmics`` cosmic rays.
    """
    rng = np.random.default_rng(seed)
    skymap = make_skymap()
    tract = skymap[0]
    patch = tract.patch(*patch_index)
    inner = patch.inner_bbox
    # Stars in tract pixels, converted to the sky.
    xs = rng.uniform(inner.x0 + 10, inner.x1 - 10, n_stars)
    ys = rng.uniform(inner.y0 + 10, inner.y1 - 10, n_stars)
    flux = 10 ** rng.uniform(3.0, 4.5, n_stars)
    gx, gy = np.meshgrid(np.linspace(inner.x0 + 50, inner.x1 - 50, bright_grid),
                         np.linspace(inner.y0 + 50, inner.y1 - 50, bright_grid))
    nb = bright_grid * bright_grid
    xs = np.concatenate([xs, gx.ravel() + rng.uniform(-0.5, 0.5, nb)])
    ys = np.concatenate([ys, gy.ravel() + rng.uniform(-0.5, 0.5, nb)])
    flux = np.concatenate([flux, np.full(nb, 2e5)])
    star_ra, star_dec = tract.pixel_to_sky(xs, ys)
    var_flux = None
    if variable_star:
        var_flux = np.full(n_visits, 3e4)
        var_flux[n_visits // 2] = 1.5e5  # an outburst in one visit
    if sigmas is None:
        sigmas = 1.6 + 0.8 * rng.random(n_visits)
    pc_ra, pc_dec = tract.pixel_to_sky(*patch.outer_bbox.center)
    exposures: dict[int, dict[int, Exposure]] = {}
    summaries = {}
    psfs = {}
    noise = {}
    artefact_flux: dict[int, dict[int, np.ndarray]] = {}
    for v in range(n_visits):
        psf = GaussianPsf(float(sigmas[v]), size=41, axis_ratio=0.85 + 0.1 * rng.random(),
                          theta=rng.uniform(0, np.pi))
        psfs[v] = psf
        sig = sky_sigma * (1 + v / 10)
        noise[v] = sig
        rot = rng.uniform(-30, 30)
        dra, ddec = rng.uniform(-8, 8, 2) / 3600.0
        span = det_size + gap
        # Boresight at the focal-plane origin; detector (i, j) spans [off, off + det_size).
        trail = None
        if trail_visit == v:
            trail = (rng.uniform(0, np.pi), rng.uniform(-30, 30))  # angle, offset (px)
        exposures[v] = {}
        artefact_flux[v] = {}
        entries = []
        for det, (i, j) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
            off = np.array([(i - 1) * span + gap / 2, (j - 1) * span + gap / 2])
            wcs = tan_wcs(pc_ra + dra, pc_dec + ddec, -off, rot)
            x, y = wcs.all_world2pix(star_ra, star_dec, 0)
            img = render_gaussians((det_size, det_size), x, y, flux, psf)
            if var_flux is not None:
                vx, vy = wcs.all_world2pix([pc_ra + 4e-4], [pc_dec - 3e-4], 0)
                img += render_gaussians(img.shape, vx, vy, [var_flux[v]], psf)
            art = np.zeros_like(img)
            if trail is not None:
                yy, xx = np.indices(img.shape, dtype=float)
                # Trail through the patch centre direction in focal-plane pixels.
                cx, cy = wcs.all_world2pix([pc_ra], [pc_dec], 0)
                ang, dist = trail
                d = -(xx - cx[0]) * np.sin(ang) + (yy - cy[0]) * np.cos(ang) - dist
                art += 150.0 * np.exp(-0.5 * (d / 2.5) ** 2)
            for _ in range(n_cosmics):
                px, py = rng.integers(5, det_size - 5, 2)
                length = rng.integers(1, 6)
                for k in range(length):
                    art[py, min(px + k, det_size - 1)] += rng.uniform(800, 3000)
            img += art + rng.normal(0.0, sig, img.shape)
            artefact_flux[v][det] = art
            mask = np.zeros(img.shape, np.int32)
            mask[:2, :] |= bits("EDGE")
            mask[-2:, :] |= bits("EDGE")
            mask[:, :2] |= bits("EDGE")
            mask[:, -2:] |= bits("EDGE")
            bad_col = rng.integers(20, det_size - 20)
            mask[:, bad_col] |= bits("BAD")
            img[:, bad_col] = 1e4  # garbage under the BAD mask
            variance = np.full(img.shape, sig * sig, np.float32)
            vi = VisitInfo(visit=v, instrument="Cam", band=band, physical_filter=f"{band}_01",
                           exposure_time=30.0, mjd=60000.0 + v)
            dinfo = DetectorInfo(det, name=f"S{det}", bbox=Box(0, 0, det_size, det_size),
                                 gain=1.0, read_noise=5.0, saturation=1e5)
            exp = Exposure(img.astype(np.float32), mask, variance, wcs=wcs, psf=psf,
                           photo_calib=PhotoCalib(1.0), visit_info=vi, detector=dinfo,
                           units="nJy")
            exposures[v][det] = exp
            corners = Box(0, 0, det_size, det_size).corners()
            cra, cdec = wcs.all_pix2world(corners[:, 0], corners[:, 1], 0)
            stats = ExposureSummaryStats(
                psfSigma=float(np.sqrt(psf.sigma ** 2 * psf.axis_ratio)), pixelScale=PIXEL_SCALE,
                zeroPoint=31.4, skyNoise=sig, meanVar=sig * sig, skyBg=0.0, nPsfStar=40,
                psfStarDeltaE1Median=0.001, psfStarDeltaE2Median=-0.002,
                psfStarScaledDeltaSizeScatter=0.01, psfTraceRadiusDelta=0.1,
                psfApFluxDelta=0.05, psfApCorrSigmaScaledDelta=0.05, starEMedian=0.1,
                starUnNormalizedEMedian=0.5, raCorners=tuple(cra), decCorners=tuple(cdec),
                expTime=30.0, effTime=30.0, magLim=25.0)
            entries.append(DetectorSummary(detector=dinfo, bbox=exp.bbox, summary=stats,
                                           visit_info=vi, wcs=wcs, psf=psf,
                                           photo_calib=PhotoCalib(1.0)))
        summaries[v] = VisitSummaryCatalog.from_detectors(entries)
    return Scene(skymap, tract, patch, exposures, summaries, star_ra, star_dec, flux, psfs,
                 noise, artefact_flux, var_flux)


def isolated(x, y, flux, radius: float = 20.0, fraction: float = 0.01) -> np.ndarray:
    """Stars without a neighbour brighter than ``fraction`` of their flux within ``radius`` px."""
    d = np.hypot(x[:, None] - x[None], y[:, None] - y[None])
    np.fill_diagonal(d, np.inf)
    matters = flux[None, :] > fraction * flux[:, None]
    return ~np.any((d < radius) & matters, axis=1)


def warp_scene(scene, task=None):
    """Warps of every visit, and warps of the injected artefacts alone (same geometry)."""
    from processing.tasks.make_warp import MakeWarpTask

    task = task or MakeWarpTask()
    warps, artefacts = {}, {}
    for v, exps in scene.exposures.items():
        out = task.run(exps, scene.summaries[v], tract_wcs=scene.tract.wcs,
                       patch_bbox=scene.patch.outer_bbox)
        warps[("Cam", v)] = out["warp"]
        if any(np.any(a) for a in scene.artefact_flux[v].values()):
            only = {d: Exposure(scene.artefact_flux[v][d].astype(np.float32), None,
                                np.ones(e.image.shape, np.float32), wcs=e.wcs, psf=e.psf,
                                units="nJy") for d, e in exps.items()}
            art = task.run(only, None, tract_wcs=scene.tract.wcs,
                           patch_bbox=scene.patch.outer_bbox)["warp"].image
            artefacts[("Cam", v)] = np.nan_to_num(art)
    return warps, artefacts
