"""Benchmark: Lanczos-3 warp of one 4096 x 4096 float32 image, drp vs SWarp.

Run ``python tests/benchmarks/bench_warp_quick.py [--numpy] [--size N]``; prints one
JSON object.  Timings are wall-clock and CPU seconds on one core (drp's loop is
single-threaded; SWarp runs with ``NTHREADS 1``).  SWarp's figures include
reading and writing its FITS files, so a NEAREST run of SWarp is also timed as
its I/O-and-setup baseline.  When ``/usr/bin/SWarp`` is missing the comparison
is skipped (the JSON says so).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from processing.algorithms.warp import WarpConfig, transform_pixels, warp_image
from store.geom import Box
from store.masks import bits


def make_wcs(ra, dec, crpix, scale_arcsec, rot_deg=0.0):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [crpix[0] + 1.0, crpix[1] + 1.0]
    s = scale_arcsec / 3600.0
    t = np.radians(rot_deg)
    w.wcs.cd = np.array([[-s * np.cos(t), s * np.sin(t)], [s * np.sin(t), s * np.cos(t)]])
    return w


def scene(n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, 10.0, (n, n)).astype(np.float32)
    # A few hundred Gaussian stars, added as small stamps.
    for x, y, f in zip(rng.uniform(20, n - 20, 400), rng.uniform(20, n - 20, 400),
                       rng.uniform(1e3, 1e5, 400), strict=True):
        ix, iy = int(x), int(y)
        yy, xx = np.mgrid[iy - 10: iy + 11, ix - 10: ix + 11]
        g = np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / 2.0**2)
        image[iy - 10: iy + 11, ix - 10: ix + 11] += (f * g / g.sum()).astype(np.float32)
    variance = np.full((n, n), 100.0, dtype=np.float32)
    mask = np.zeros((n, n), dtype=np.int32)
    mask[:, :16] |= bits("EDGE")
    mask[:, -16:] |= bits("EDGE")
    mask[rng.integers(0, n, 2000), rng.integers(0, n, 2000)] |= bits("BAD")
    return image, variance, mask


REPEAT = 1


def timed(fn):
    """Run ``fn`` REPEAT times; the minimum wall and CPU times (the machine is shared)."""
    walls, cpus = [], []
    for _ in range(REPEAT):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return out, min(walls), min(cpus)


def run_swarp(workdir: Path, image, src_wcs, dst_wcs, n, resampling: str):
    inp = workdir / "in.fits"
    if not inp.exists():
        fits.PrimaryHDU(image, header=src_wcs.to_header()).writeto(inp)
        head = dst_wcs.to_header()
        head["NAXIS"] = 2
        head["NAXIS1"] = n
        head["NAXIS2"] = n
        (workdir / "out.head").write_text(head.tostring(sep="\n") + "\nEND\n")
    cmd = ["SWarp", str(inp), "-IMAGEOUT_NAME", str(workdir / "out.fits"),
           "-WEIGHTOUT_NAME", str(workdir / "outw.fits"), "-NTHREADS", "1",
           "-RESAMPLING_TYPE", resampling, "-COMBINE", "N", "-SUBTRACT_BACK", "N",
           "-FSCALASTRO_TYPE", "NONE", "-WEIGHT_TYPE", "NONE", "-WRITE_XML", "N",
           "-MEM_MAX", "4096", "-VERBOSE_TYPE", "QUIET", "-RESAMPLE_DIR", str(workdir),
           "-DELETE_TMPFILES", "N"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=workdir, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, workdir / "in.resamp.fits"


def swarp_best(*args):
    """Minimum wall and CPU time of REPEAT SWarp runs."""
    runs = [run_swarp(*args) for _ in range(REPEAT)]
    return min(r[0] for r in runs), min(r[1] for r in runs), runs[-1][2]


def compare_with_swarp(resamp: Path, ours: np.ndarray, dst_wcs) -> dict:
    """Median and 99th-percentile |drp - SWarp| on the common good pixels, in noise sigma."""
    with fits.open(resamp) as hdul:
        data = hdul[0].data.astype(float)
        crpix = np.array([hdul[0].header["CRPIX1"], hdul[0].header["CRPIX2"]])
    # SWarp writes the resampled frame as a sub-grid of the output header: same
    # projection, CRPIX shifted by the sub-grid origin.
    dx, dy = np.round(dst_wcs.wcs.crpix - crpix).astype(int)
    ny, nx = data.shape
    sub = ours[dy: dy + ny, dx: dx + nx]
    ok = np.isfinite(sub) & (data != 0)
    diff = np.abs(sub[ok] - data[ok]) / 10.0
    return {"offset_px": [int(dx), int(dy)], "n_compared": int(ok.sum()),
            "median_abs_diff_sigma": float(np.median(diff)),
            "p99_abs_diff_sigma": float(np.percentile(diff, 99))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--numpy", action="store_true", help="also time the numpy engine")
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing (minimum kept)")
    args = parser.parse_args()
    global REPEAT
    REPEAT = args.repeat
    n = args.size
    image, variance, mask = scene(n)
    src_wcs = make_wcs(10.0, -30.0, (n / 2, n / 2), 0.2, rot_deg=20.0)
    dst_wcs = make_wcs(10.01, -30.01, (n / 2 - 48, n / 2 - 48), 0.2)
    box = Box(0, 0, n, n)
    result = {"size": n, "kernel": "lanczos3", "cores": 1, "repeat_min_of": REPEAT}

    # The first calls compile the numba loop (or load it from numba's cache): time them apart.
    c = n // 2
    cut = (slice(c - 64, c + 64), slice(c - 64, c + 64))
    small = Box(c - 64, c - 64, 128, 128)
    xd, yd = transform_pixels(dst_wcs, src_wcs, c, c)
    dsmall = Box(int(xd) - 32, int(yd) - 32, 64, 64)
    t0 = time.perf_counter()
    first = warp_image(image[cut], None, None, small, src_wcs, dst_wcs, dsmall)
    warp_image(image[cut], variance[cut], mask[cut], small, src_wcs, dst_wcs, dsmall)
    result["drp_first_calls_s"] = round(time.perf_counter() - t0, 3)
    assert first.good.any()
    out, wall, cpu = timed(lambda: warp_image(image, None, None, box, src_wcs, dst_wcs, box))
    result["drp_image_only"] = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                                "good_fraction": round(float(out.good.mean()), 4)}
    _, wall, cpu = timed(lambda: warp_image(image, variance, mask, box, src_wcs, dst_wcs, box))
    result["drp_image_variance_mask"] = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}
    if args.numpy:
        _, wall, cpu = timed(lambda: warp_image(image, variance, mask, box, src_wcs, dst_wcs, box,
                                                WarpConfig(engine="numpy")))
        result["drp_numpy_engine_image_variance_mask"] = {"wall_s": round(wall, 3),
                                                          "cpu_s": round(cpu, 3)}

    if shutil.which("SWarp"):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            wall, cpu, resamp = swarp_best(work, image, src_wcs, dst_wcs, n, "LANCZOS3")
            result["swarp_lanczos3_incl_io"] = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}
            result["swarp_vs_drp"] = compare_with_swarp(resamp, out.image, dst_wcs)
            for f in work.glob("*resamp*"):
                os.remove(f)
            wall, cpu, _ = swarp_best(work, image, src_wcs, dst_wcs, n, "NEAREST")
            result["swarp_nearest_incl_io"] = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}
    else:
        result["swarp"] = "not installed (/usr/bin/SWarp missing): comparison skipped"
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
