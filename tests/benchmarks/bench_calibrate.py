"""Calibrate benchmark: one ComCam-sized detector beside SExtractor and sep.

Usage::

    python tests/benchmarks/bench_calibrate.py [--smoke] [--threads 1]

Renders one 4072 x 4000 detector of the ``comcam`` preset with the simulator,
then times, on one core and in the same run:

* drp: background + detection (5 sigma, PSF-smoothed) + deblending +
  measurement (centroids, adaptive shapes, PSF fluxes, 10 apertures, ...);
* SExtractor (``source-extractor``, Debian): background, detection (5 sigma,
  Gaussian filter of the PSF's FWHM), aperture photometry (same radii);
* sep: background, extraction, ``sum_circle`` photometry;

and the whole ``CalibrateTask.run``.  Completeness against the simulator's
truth (point sources by true PSF-optimal S/N bin) is reported for drp and
SExtractor.  Prints one JSON document.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

RADII = (3.0, 6.0, 9.0, 12.0, 17.0)


def _render(smoke: bool):
    from sample_data import PRESETS, plan_survey, render_exposure
    from sample_data.refcat import reference_catalog

    comcam = PRESETS["comcam"]
    camera, sky = comcam.camera, comcam.sky
    if smoke:  # a small detector needs a denser star field for its calibration
        camera = dataclasses.replace(camera, n_x=1, n_y=1, width=1024, height=1024)
        sky = dataclasses.replace(sky, star_density=8000.0)
    config = dataclasses.replace(
        comcam, camera=camera, sky=sky,
        observing=dataclasses.replace(comcam.observing, n_visits=1, bands=("r",)))
    plan = plan_survey(config, seed=3)
    detector = 4 if camera.n_x * camera.n_y > 4 else 0
    rendered = render_exposure(plan, 0, detector)
    return plan, rendered, reference_catalog(plan), detector


def _timed(func):
    t0, c0 = time.perf_counter(), time.process_time()
    out = func()
    return out, time.perf_counter() - t0, time.process_time() - c0


def _drp_detect_measure(exposure, psf, sigma):
    from processing.algorithms.background import estimate_background
    from processing.algorithms.deblend import deblend
    from processing.algorithms.detection import detect_sources
    from processing.algorithms.measure import measure_sources
    from processing.tasks.single_frame import prepare_planes

    image, variance, mask = prepare_planes(exposure)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bkg = estimate_background(image, mask)
        work = image - bkg.evaluate()
        det = detect_sources(work, variance, mask, sigma)
        blend = deblend(det, work, variance, sigma)
        cat = blend.catalog
        table = measure_sources(work, variance, det.mask, psf, cat["peak_x"], cat["peak_y"],
                                segmentation=blend.segmentation, ids=cat["id"],
                                parents=cat["parent"])
    return table


def _sextractor(image_path: Path, workdir: Path, fwhm_pix: float, gain: float):
    exe = shutil.which("source-extractor") or shutil.which("sex")
    if exe is None:
        return None, None
    (workdir / "sex.param").write_text("\n".join([
        "NUMBER", "X_IMAGE", "Y_IMAGE", f"FLUX_APER({len(RADII)})",
        f"FLUXERR_APER({len(RADII)})", "FLAGS"]) + "\n")
    # A normalised Gaussian filter of the PSF FWHM, as drp's matched filter.
    sigma = fwhm_pix / 2.3548
    half = int(np.ceil(3 * sigma))
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    kernel = np.exp(-0.5 * (xx**2 + yy**2) / sigma**2)
    rows = "\n".join(" ".join(f"{v:.6f}" for v in row) for row in kernel)
    (workdir / "gauss.conv").write_text(f"CONV NORM\n{rows}\n")
    # SExtractor's threshold is in units of the unfiltered background RMS; drp's 5 sigma
    # is in units of the filtered image's noise, lower by sqrt(sum k^2) / sum k.
    thresh = 5.0 * float(np.sqrt((kernel**2).sum()) / kernel.sum())
    cmd = [exe, str(image_path), "-c", "/dev/null",
           "-PARAMETERS_NAME", str(workdir / "sex.param"),
           "-FILTER_NAME", str(workdir / "gauss.conv"), "-FILTER", "Y",
           "-DETECT_THRESH", f"{thresh:.4f}", "-ANALYSIS_THRESH", f"{thresh:.4f}",
           "-DETECT_MINAREA", "1",
           "-THRESH_TYPE", "RELATIVE", "-BACK_SIZE", "128", "-BACK_FILTERSIZE", "3",
           "-PHOT_APERTURES", ",".join(str(2 * r) for r in RADII), "-GAIN", str(gain),
           "-CATALOG_TYPE", "ASCII_HEAD", "-CATALOG_NAME", str(workdir / "sex.cat"),
           "-VERBOSE_TYPE", "QUIET", "-NTHREADS", "1", "-CHECKIMAGE_TYPE", "NONE",
           "-WRITE_XML", "N"]
    _, wall, _ = _timed(lambda: subprocess.run(cmd, check=True, capture_output=True))
    data = np.loadtxt(workdir / "sex.cat", comments="#", ndmin=2)
    return data, wall


def _sep(image, variance, mask, fwhm_pix):
    import sep

    def work():
        data = np.ascontiguousarray(image, dtype=np.float32)
        bad = (mask & 1) != 0
        bkg = sep.Background(data, mask=bad, bw=128, bh=128)
        sub = data - bkg
        sigma = fwhm_pix / 2.3548
        half = int(np.ceil(3 * sigma))
        yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
        kernel = np.exp(-0.5 * (xx**2 + yy**2) / sigma**2)
        sep.set_extract_pixstack(5_000_000)
        sep.set_sub_object_limit(4096)
        thresh = 5.0 * float(np.sqrt((kernel**2).sum()) / kernel.sum())  # as for SExtractor
        objects = sep.extract(sub, thresh, err=bkg.globalrms, mask=bad, filter_kernel=kernel,
                              filter_type="conv")
        for r in RADII:
            sep.sum_circle(sub, objects["x"], objects["y"], r, err=bkg.globalrms)
        return objects

    objects, wall, cpu = _timed(work)
    return objects, wall, cpu


def _completeness(x_true, y_true, snr_true, x_found, y_found, radius=2.0):
    from scipy.spatial import cKDTree

    if len(x_found) == 0:
        found = np.zeros(len(x_true), dtype=bool)
    else:
        dist, _ = cKDTree(np.c_[x_found, y_found]).query(np.c_[x_true, y_true])
        found = dist < radius
    out = {}
    for lo, hi in ((3, 5), (5, 7), (7, 10), (10, 20), (20, np.inf)):
        sel = (snr_true >= lo) & (snr_true < hi)
        out[f"snr_{lo}_{hi}"] = {"n": int(sel.sum()),
                                 "completeness": round(float(found[sel].mean()), 4)
                                 if sel.any() else None}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a 1024x1024 detector")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    from astropy.io import fits

    from processing.algorithms.moments import determinant_radius, psf_moments_at
    from processing.tasks.calibrate import CalibrateTask
    from sample_data.sky import KIND_STAR

    plan, rendered, refcat, _ = _render(args.smoke)
    exposure = rendered.exposure
    out: dict = {"benchmark": "calibrate", "shape": list(exposure.image.shape),
                 "threads": args.threads}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result, wall, cpu = _timed(lambda: CalibrateTask().run(exposure, refcat))
    out["calibrate_wall_s"], out["calibrate_cpu_s"] = round(wall, 3), round(cpu, 3)
    out["calibrate_steps_cpu_s"] = result.metadata.get("cpu_seconds")
    psf = result.exposure.psf
    cx, cy = exposure.bbox.center
    sigma = float(determinant_radius(*psf_moments_at(psf, cx, cy)))
    fwhm = sigma * 2.3548

    table, wall, cpu = _timed(lambda: _drp_detect_measure(exposure, psf, sigma))
    out["drp_detect_measure_wall_s"], out["drp_detect_measure_cpu_s"] = round(wall, 3), round(
        cpu, 3)
    out["drp_n_sources"] = table.num_rows

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        image_path = tmp / "image.fits"
        fits.PrimaryHDU(exposure.image).writeto(image_path)
        gain = exposure.detector.gain if exposure.detector else 1.0
        sex, sex_wall = _sextractor(image_path, tmp, fwhm, gain)
    if sex is not None:
        out["sextractor_wall_s"] = round(sex_wall, 3)
        out["sextractor_n_sources"] = len(sex)
        out["ratio_drp_over_sextractor"] = round(out["drp_detect_measure_wall_s"] / sex_wall, 2)
    objects, wall, cpu = _sep(exposure.image, exposure.variance, exposure.mask, fwhm)
    out["sep_wall_s"], out["sep_n_sources"] = round(wall, 3), len(objects)
    out["ratio_drp_over_sep"] = round(out["drp_detect_measure_wall_s"] / wall, 2)

    # Completeness of point sources by true PSF-optimal S/N (flux / sqrt(var * 4 pi sigma^2)).
    kind = plan.catalog.kind[rendered.rows]
    stars = (kind == KIND_STAR) & np.isfinite(rendered.flux_adu)
    noise = float(np.median(exposure.variance))
    snr = rendered.flux_adu / np.sqrt(noise * 4 * np.pi * sigma**2)
    inside = ((rendered.x > 20) & (rendered.x < exposure.image.shape[1] - 20)
              & (rendered.y > 20) & (rendered.y < exposure.image.shape[0] - 20))
    sel = stars & inside
    xs, ys = table.column("x").to_numpy(), table.column("y").to_numpy()
    out["completeness_drp"] = _completeness(rendered.x[sel], rendered.y[sel], snr[sel], xs, ys)
    if sex is not None:
        out["completeness_sextractor"] = _completeness(
            rendered.x[sel], rendered.y[sel], snr[sel], sex[:, 1] - 1, sex[:, 2] - 1)
    out["completeness_sep"] = _completeness(rendered.x[sel], rendered.y[sel], snr[sel],
                                            objects["x"], objects["y"])
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
