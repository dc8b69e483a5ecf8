"""Benchmark: measure_sources on a 4096 x 4096 image with ~5,000 sources; apertures vs sep.

Run: ``python -m tests.benchmarks.bench_measure [n_sources] [size] [--fast]``
(``--fast`` skips the slow numpy aperture fallback).

The scene: Moffat stars (FWHM 4.5 px, beta 3) at random positions, 10% of them
in deblended pairs 3 FWHM apart, a segmentation image (10 px discs), Gaussian
noise.  Prints the best of 3 wall-clock times of ``measure_sources`` (after a
warm-up call that compiles the numba aperture loop), a per-stage profile, and the
time of the ten Rubin apertures on the whole image with the numba loop, the
numpy fallback and ``sep.sum_circle(subpix=0)``, and their largest flux
difference.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time

import numpy as np

from processing.algorithms.apertures import APERTURE_RADII, aperture_flux
from processing.algorithms.measure import MeasurementConfig, measure_sources
from store.psf import PixelBasisPsf
from tests._moffat_stars import moffat_kernel, moffat_stamp


def make_scene(n_sources: int, size: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    fwhm, beta = 4.5, 3.0
    n_pairs = n_sources // 20
    n_single = n_sources - 2 * n_pairs
    x = rng.uniform(5, size - 5, n_single + n_pairs)
    y = rng.uniform(5, size - 5, n_single + n_pairs)
    x2, y2 = x[n_single:] + 3 * fwhm, y[n_single:] + rng.uniform(-1, 1, n_pairs)
    xs, ys = np.r_[x, x2], np.r_[y, y2]
    flux = 10 ** rng.uniform(3, 5, xs.size)
    # All stars share one sub-pixel-integrated template per phase bin: fast rendering.
    image = np.zeros((size, size), dtype=np.float32)
    half = 15
    for k in range(xs.size):
        st, x0, y0 = moffat_stamp(xs[k], ys[k], fwhm, beta, half=half, oversample=2)
        ya, yb = max(y0, 0), min(y0 + 2 * half + 1, size)
        xa, xb = max(x0, 0), min(x0 + 2 * half + 1, size)
        if yb > ya and xb > xa:
            image[ya:yb, xa:xb] += flux[k] * st[ya - y0 : yb - y0, xa - x0 : xb - x0]
    var = (30.0 + image).astype(np.float32)
    image += rng.normal(size=image.shape).astype(np.float32) * np.sqrt(var)
    ids = np.arange(1, xs.size + 1)
    parents = np.zeros(xs.size, dtype=np.int64)
    parent_ids = 10_000_000 + np.arange(n_pairs)
    parents[n_single : n_single + n_pairs] = parent_ids
    parents[n_single + n_pairs :] = parent_ids
    seg = np.zeros((size, size), dtype=np.int64)
    yy, xx = np.mgrid[-10:11, -10:11]
    disc = xx * xx + yy * yy < 100
    for k in range(xs.size):
        cy, cx = np.floor(ys[k] + 0.5).astype(int) + yy[disc], np.floor(xs[k] + 0.5).astype(
            int) + xx[disc]
        ok = (cy >= 0) & (cy < size) & (cx >= 0) & (cx < size)
        seg[cy[ok], cx[ok]] = ids[k]
    psf = PixelBasisPsf(moffat_kernel(fwhm, beta, 41)[None], 0, (0, 0, size - 1, size - 1))
    mask = np.zeros((size, size), dtype=np.int32)
    return image, var, mask, psf, np.round(xs), np.round(ys), seg, ids, parents


def main(n_sources: int = 5000, size: int = 4096) -> None:
    t0 = time.perf_counter()
    image, var, mask, psf, px, py, seg, ids, parents = make_scene(n_sources, size)
    print(f"scene: {px.size} sources ({(parents != 0).sum()} blend children) on {size}^2, "
          f"built in {time.perf_counter() - t0:.1f} s")
    args = (image, var, mask, psf, px, py)
    kwargs = dict(segmentation=seg, ids=ids, parents=parents)
    measure_sources(*args[:4], px[:50], py[:50])  # warm-up (numba compile/cache load)
    times, cpu = [], []
    for _ in range(3):
        t, c = time.perf_counter(), time.process_time()
        table = measure_sources(*args, **kwargs)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    print(f"measure_sources: best {min(times):.2f} s wall, {min(cpu):.2f} s CPU, of "
          f"{[round(v, 2) for v in times]} ({table.num_rows} rows, {table.num_columns} columns)")
    for label, kw in (("no segmentation/blends", {}),
                      ("radii <= 17 px only", dict(kwargs, config=MeasurementConfig(
                          radii=(3.0, 4.5, 6.0, 9.0, 12.0, 17.0))))):
        t, c = time.perf_counter(), time.process_time()
        measure_sources(*args, **kw)
        print(f"measure_sources, {label}: {time.perf_counter() - t:.2f} s wall, "
              f"{time.process_time() - c:.2f} s CPU")
    prof = cProfile.Profile()
    prof.enable()
    measure_sources(*args, **kwargs)
    prof.disable()
    pstats.Stats(prof).sort_stats("cumulative").print_stats(
        r"measure|photometry|apertures|moments|centroid|psf_images", 14)

    x = table.column("x").to_numpy()
    y = table.column("y").to_numpy()
    for engine in ("numba", "numpy")[: 1 if "--fast" in sys.argv else 2]:
        t, c = time.perf_counter(), time.process_time()
        ours = aperture_flux(image, var, None, x, y, APERTURE_RADII, engine=engine)
        print(f"apertures ({engine}), 10 radii: {time.perf_counter() - t:.2f} s wall, "
              f"{time.process_time() - c:.2f} s CPU")
    try:
        import sep
    except ImportError:
        return
    img64, var64 = image.astype(float), var.astype(float)
    t, c = time.perf_counter(), time.process_time()
    worst = 0.0
    for r, ap in zip(APERTURE_RADII, ours, strict=True):
        flux, _, _ = sep.sum_circle(img64, x, y, r, var=var64, subpix=0)
        inside = (x > r) & (x < size - 1 - r) & (y > r) & (y < size - 1 - r)
        worst = max(worst, float(np.max(np.abs(flux - ap.flux)[inside] / np.abs(flux[inside]))))
    print(f"sep.sum_circle(subpix=0), 10 radii: {time.perf_counter() - t:.2f} s wall, "
          f"{time.process_time() - c:.2f} s CPU; largest relative flux difference {worst:.1e}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:] if not a.startswith("--")))
