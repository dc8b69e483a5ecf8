"""Benchmark: summary statistics of one full-size detector (4072 x 4000 pixels).

Run: ``python tests/benchmarks/bench_summary_stats.py [kernel_size]``.
Prints the best of 3 wall-clock times (s) of each group of
``processing.algorithms.summary_stats`` and of ``compute_summary_stats``, for a
degree-3 ``PixelBasisPsf`` (grid of 1,806 points), 150 PSF stars, a TAN WCS and
a 2-layer background.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pyarrow as pa
from astropy.wcs import WCS

from processing.algorithms.background import BackgroundList, BackgroundModel
from processing.algorithms.summary_stats import (
    ExposureSummaryStats,
    compute_summary_stats,
    update_masked_image_stats,
    update_psf_stats,
    update_wcs_stats,
)
from store.calib import PhotoCalib
from store.exposure import DetectorInfo, Exposure, VisitInfo
from store.psf import PixelBasisPsf


def _scene(k: int):
    rng = np.random.default_rng(0)
    shape = (4000, 4072)
    half = k // 2
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    basis = rng.normal(0, 1e-5, (10, k, k))
    for t, s in enumerate((2.4, 2.6, 2.5)):
        g = np.exp(-0.5 * (xx**2 + yy**2) / s**2)
        basis[t] += (1.0 if t == 0 else 0.05) * g / g.sum()
    psf = PixelBasisPsf(basis, 3, (0, 0, 4071, 3999))
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [53.1, -28.1]
    wcs.wcs.crpix = [2036.5, 2000.5]
    wcs.wcs.cd = np.diag([-0.2, 0.2]) / 3600
    image = rng.normal(0, 25.0, shape).astype(np.float32)
    n = 150
    stars = pa.table({
        "calib_psf_used": np.ones(n, bool), "slot_Shape_flag": np.zeros(n, bool),
        "slot_PsfFlux_flag": np.zeros(n, bool),
        "slot_PsfFlux_instFlux": np.full(n, 1e4), "slot_PsfFlux_instFluxErr": np.full(n, 50.0),
        "slot_Shape_xx": rng.normal(5.8, 0.1, n), "slot_Shape_yy": rng.normal(5.8, 0.1, n),
        "slot_Shape_xy": rng.normal(0, 0.1, n), "slot_PsfShape_xx": np.full(n, 5.76),
        "slot_PsfShape_yy": np.full(n, 5.76), "slot_PsfShape_xy": np.zeros(n),
        "slot_Centroid_x": rng.uniform(0, 4072, n), "slot_Centroid_y": rng.uniform(0, 4000, n),
    })
    stats = np.full((32, 32), 600.0, np.float32)
    layer = BackgroundModel(stats, np.ones((32, 32), np.int32), np.arange(32) * 128.0 + 64,
                            np.arange(32) * 128.0 + 64, 128, 128, shape)
    exposure = Exposure(image, variance=np.full(shape, 625.0, np.float32), wcs=wcs, psf=psf,
                        photo_calib=PhotoCalib.from_zero_point(31.4),
                        visit_info=VisitInfo(visit=1, band="r", exposure_time=30.0, mjd=60640.3),
                        detector=DetectorInfo(0, gain=1.6, read_noise=6.0))
    return exposure, stars, BackgroundList([layer, layer])


def _best(fn, repeat=3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    k = int(sys.argv[1]) if len(sys.argv) > 1 else 41
    exposure, stars, bg = _scene(k)
    s = ExposureSummaryStats()
    bbox = exposure.bbox
    print(f"kernel {k}x{k}, grid points {(-(-4000 // 96)) * (-(-4072 // 96))}")
    print(f"A psf model only       {_best(lambda: update_psf_stats(s, exposure.psf, bbox)):.3f} s")
    print("A psf + grid + stars   "
          f"{_best(lambda: update_psf_stats(s, exposure.psf, bbox, stars, exposure.mask)):.3f} s")
    print("B wcs (+ zenith)       "
          f"{_best(lambda: update_wcs_stats(s, exposure.wcs, bbox, exposure.visit_info)):.3f} s")
    print("E masked image         {:.3f} s".format(_best(lambda: update_masked_image_stats(
        s, exposure.image, exposure.mask, exposure.variance))))
    print(f"compute_summary_stats  {_best(lambda: compute_summary_stats(exposure, stars, bg)):.3f} s")


if __name__ == "__main__":
    main()
