"""Benchmark: background, cosmic rays, detection, deblending and sky sources on one image.

Usage::

    python tests/benchmarks/bench_detection.py [--size 4096] [--n-stars 5000] [--repeat 3]

Simulates a sky-limited image (sky 100 ADU, gain 1, so the sky noise is 10 ADU;
a gradient; Gaussian stars of sigma 2 px with S/N 5-500 log-uniform; Poisson
variance), then times each step (best of ``--repeat`` runs, one core) and, on
the same image in the same process, ``sep`` (SExtractor as a library): its
background, and its detection with the same 15x15 Gaussian matched filter and
no deblending (the like-for-like comparison), and with its defaults (3x3
filter, 32-level deblending).  Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from processing.algorithms.background import estimate_background
from processing.algorithms.cosmic_rays import find_cosmic_rays
from processing.algorithms.deblend import deblend
from processing.algorithms.detection import detect_sources, gaussian_kernel
from processing.algorithms.sky_sources import place_sky_sources

PSF_SIGMA = 2.0
SKY = 100.0


def make_scene(size: int, n_stars: int, seed: int = 1):
    """Stars as (n, k, k) stamps added with one scatter-add; returns image, variance, truth."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(10, size - 10, n_stars)
    y = rng.uniform(10, size - 10, n_stars)
    snr = 10 ** rng.uniform(np.log10(5), np.log10(500), n_stars)
    flux = snr * np.sqrt(SKY) * np.sqrt(4 * np.pi) * PSF_SIGMA
    half = int(np.ceil(5 * PSF_SIGMA))
    off = np.arange(-half, half + 1)
    ix, iy = np.round(x).astype(int), np.round(y).astype(int)
    gx = np.exp(-0.5 * ((ix[:, None] + off - x[:, None]) / PSF_SIGMA) ** 2)
    gy = np.exp(-0.5 * ((iy[:, None] + off - y[:, None]) / PSF_SIGMA) ** 2)
    stamps = flux[:, None, None] * gy[:, :, None] * gx[:, None, :] / (2 * np.pi * PSF_SIGMA**2)
    yy = np.broadcast_to(iy[:, None, None] + off[None, :, None], stamps.shape)
    xx = np.broadcast_to(ix[:, None, None] + off[None, None, :], stamps.shape)
    model = np.zeros((size, size), np.float64)
    inside = ((yy >= 0) & (yy < size) & (xx >= 0) & (xx < size)).ravel()  # edge stars
    np.add.at(model, (yy.ravel()[inside], xx.ravel()[inside]), stamps.ravel()[inside])
    ramp = np.linspace(0, 20, size)
    sky = SKY + ramp[None, :] + 0.5 * ramp[:, None]
    variance = (sky + model).astype(np.float32)
    image = (sky + model + rng.normal(size=model.shape) * np.sqrt(variance)).astype(np.float32)
    return image, variance, {"x": x, "y": y, "snr": snr, "sky": sky}


def best_of(repeat: int, func, *args, **kwargs):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = func(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--n-stars", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    image, variance, truth = make_scene(args.size, args.n_stars)
    mask = np.zeros(image.shape, np.int32)
    t = {}

    def background_step():
        model = estimate_background(image, mask)
        return model, image - model.evaluate()

    t["background"], (bg_model, sub) = best_of(args.repeat, background_step)
    t["cosmic_rays"], cr = best_of(args.repeat, find_cosmic_rays, sub, variance, mask, PSF_SIGMA)
    t["detection"], det = best_of(args.repeat, detect_sources, sub, variance, mask, PSF_SIGMA)
    t["deblend"], blend = best_of(args.repeat, deblend, det, sub, variance, PSF_SIGMA)
    t["sky_sources"], (sky_x, _) = best_of(args.repeat, place_sky_sources, det.mask, seed=1)
    t["background+detection+deblend"] = t["background"] + t["detection"] + t["deblend"]

    # Completeness of the detections against the injected stars (peak within 2 px).
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(np.column_stack([det.peaks["x"], det.peaks["y"]])).query(
        np.column_stack([truth["x"], truth["y"]]))
    found = dist < 2.0
    bright = truth["snr"] > 10

    out = {
        "image": f"{args.size}x{args.size} float32", "n_stars": args.n_stars,
        "psf_sigma_px": PSF_SIGMA, "repeat": args.repeat,
        "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
        "seconds": {k: round(v, 3) for k, v in t.items()},
        "results": {
            "sky_level_adu": round(bg_model.sky_level(), 2),
            # First-pass background (no DETECTED mask yet), against the true sky.
            "background_error_rms_over_sky_noise": round(float(
                np.sqrt(np.mean((bg_model.evaluate() - truth["sky"]) ** 2)) / np.sqrt(SKY)), 4),
            "cosmic_ray_pixels": int(cr.sum()),
            "footprints": det.n_positive, "peaks": len(det.peaks),
            "blended_parents": int((blend.catalog["deblend_nChild"] > 0).sum()),
            "children": blend.n_children, "sky_sources": len(sky_x),
            "completeness_snr_gt_10": round(float(found[bright].mean()), 4),
        },
    }
    try:
        import sep
    except ImportError:  # sep is optional
        out["sep"] = "not installed"
    else:
        sep.set_extract_pixstack(20_000_000)
        sep.set_sub_object_limit(4096)
        k = gaussian_kernel(PSF_SIGMA).astype(np.float64)
        kernel2d = np.outer(k, k)
        err = np.sqrt(variance)
        s = {}
        s["background"], _ = best_of(args.repeat, lambda: sep.Background(image, bw=128, bh=128).back())
        s["extract_gauss15_nodeblend"], objs = best_of(
            args.repeat, sep.extract, sub, 5.0, err=err, minarea=1, filter_kernel=kernel2d,
            deblend_cont=1.0, clean=False)
        s["extract_defaults"], objs_def = best_of(args.repeat, sep.extract, sub, 5.0, err=err)
        out["sep"] = {
            "version": sep.__version__,
            "seconds": {key: round(v, 3) for key, v in s.items()},
            "objects": {"gauss15_nodeblend": len(objs), "defaults": len(objs_def)},
            "ratio_sep_over_drp": {
                "detection_like_for_like": round(s["extract_gauss15_nodeblend"] / t["detection"], 2),
                "detection+deblend_vs_sep_defaults": round(
                    s["extract_defaults"] / (t["detection"] + t["deblend"]), 2),
                "background": round(s["background"] / t["background"], 2),
            },
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
