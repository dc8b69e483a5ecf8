"""Benchmark: warping and coadd assembly, drp beside SWarp (``/usr/bin/SWarp``).

Run ``python tests/benchmarks/bench_coadd.py [--smoke] [--parts warp,mean,clip,memory]``;
prints one JSON object.  The full run uses 20 overlapping 4096 x 4096 inputs
(about 6.5 GB of temporary FITS files, in ``--workdir`` or a temporary
directory); ``--smoke`` uses 5 inputs of 512 x 512 and finishes in seconds.

* **warp**: one exposure (image, variance, mask) warped with Lanczos-3 by
  :func:`processing.algorithms.warp.warp_image`, against SWarp resampling the
  same exposure and its weight map (LANCZOS3, ``NTHREADS 1``).  SWarp's time
  includes its FITS I/O, so a NEAREST run is timed too and the ratio is also
  given against SWarp's LANCZOS3 - NEAREST difference (its resampling alone).
* **mean**: the 20-input weighted mean (``AssembleCoaddTask``, statistic MEAN,
  coadd written to FITS) against the memory-bandwidth floor: the time to read
  every input warp once, strip by strip, with the same reader.
* **clip**: MEANCLIP and SAFECLIP assemblies against SWarp's CLIPPED combine of
  the same already-resampled inputs (``RESAMPLE N``, weight maps 1/variance).
* **memory**: peak resident memory of the MEAN and SAFECLIP assemblies of 5,
  10 and 20 inputs (child processes), which should not grow with the inputs.

Timings are wall-clock and CPU seconds; drp's loops run on ``--threads``
numba threads (default 1) and SWarp with as many.  The machine may be shared:
each timing is the minimum of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SWARP = shutil.which("SWarp") or "/usr/bin/SWarp"


def make_wcs(ra, dec, crpix, rot_deg=0.0, scale=0.2):
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [crpix[0] + 1.0, crpix[1] + 1.0]
    s = scale / 3600.0
    t = np.radians(rot_deg)
    w.wcs.cd = np.array([[-s * np.cos(t), s * np.sin(t)], [s * np.sin(t), s * np.cos(t)]])
    w.wcs.set()
    return w


def render(n, rng, sigma, n_stars, noise, artefacts=False):
    """A star field in nJy with Gaussian noise (and a trail and cosmic rays if asked)."""
    image = rng.standard_normal((n, n), dtype=np.float32) * np.float32(noise)
    half = 12
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
    for x, y, f in zip(rng.uniform(half, n - half - 1, n_stars),
                       rng.uniform(half, n - half - 1, n_stars),
                       10 ** rng.uniform(3, 5.5, n_stars), strict=True):
        ix, iy = int(x), int(y)
        g = np.exp(-0.5 * ((xx + ix - x) ** 2 + (yy + iy - y) ** 2) / sigma ** 2)
        image[iy - half: iy + half + 1, ix - half: ix + half + 1] += np.float32(f) * g / g.sum()
    if artefacts:
        rows = np.arange(n, dtype=np.float32)
        angle = rng.uniform(0.2, 1.3)
        d = rows[None, :] * np.sin(angle) - rows[:, None] * np.cos(angle) + rng.uniform(0, n / 2)
        image += np.float32(15 * noise) * np.exp(-0.5 * (d / 2.5) ** 2).astype(np.float32)
        for _ in range(n * n // 200000 + 5):
            cx, cy = rng.integers(5, n - 5, 2)
            image[cy, cx: cx + rng.integers(1, 5)] += np.float32(rng.uniform(50, 300) * noise)
    return image


def make_inputs(work: Path, n_inputs: int, size: int, seed: int = 1):
    """Warps on a common grid (drp exposure files) and the same data for SWarp."""
    from processing.algorithms.stack import DEFAULT_BAD_MASK_PLANES
    from processing.algorithms.stats import clipped_stats
    from store.calib import PhotoCalib
    from store.exposure import Exposure, VisitInfo
    from store.formats.fits import write_exposure
    from store.masks import bits
    from store.psf import GaussianPsf

    rng = np.random.default_rng(seed)
    wcs = make_wcs(150.0, 2.0, (size / 2, size / 2))
    header = wcs.to_header()
    paths, swarp_images = [], []
    yy, xx = np.ogrid[:size, :size]
    bad = bits(DEFAULT_BAD_MASK_PLANES)
    for k in range(n_inputs):
        sigma = rng.uniform(1.6, 2.4)
        noise = 10.0 * (1 + 0.05 * k)
        image = render(size, rng, sigma, max(size * size // 40000, 20), noise,
                       artefacts=k % 4 == 1)
        variance = np.full((size, size), noise * noise, np.float32)
        mask = np.zeros((size, size), np.int32)
        # Each input covers the grid except a tilted strip along one edge (dithers).
        edge = (xx * np.cos(0.1 * k) + yy * np.sin(0.1 * k)) > size * (1.2 - 0.01 * k)
        image[edge] = np.nan
        variance[edge] = np.inf
        mask[edge] = bits("NO_DATA")
        for col in rng.integers(0, size, max(size // 512, 1)):
            mask[:, max(col - 3, 0): col + 3] |= bits("BAD")
        stats = clipped_stats(variance, n_sigma=3.0, n_iter=2, mask=mask, and_mask=bad)
        exp = Exposure(image, mask, variance, wcs=wcs, psf=GaussianPsf(sigma, size=25),
                       photo_calib=PhotoCalib(1.0), visit_info=VisitInfo(visit=k, band="r"),
                       units="nJy", metadata={"MEANVAR": float(stats.mean),
                                              "MEANVARMASK": int(bad)})
        path = work / f"warp{k:02d}.fits"
        with open(path, "wb") as f:
            write_exposure(exp, f)
        paths.append(path)
        # SWarp: image with NaN -> 0 and a weight map 1/variance, 0 where bad.
        from astropy.io import fits

        weight = np.where((mask & bad) == 0, 1.0 / variance, 0.0).astype(np.float32)
        img = np.where(np.isfinite(image), image, 0.0).astype(np.float32)
        fits.PrimaryHDU(img, header=header).writeto(work / f"sw{k:02d}.fits", overwrite=True)
        fits.PrimaryHDU(weight, header=header).writeto(work / f"sw{k:02d}.weight.fits",
                                                       overwrite=True)
        swarp_images.append(work / f"sw{k:02d}.fits")
    return wcs, paths, swarp_images


def run_swarp(args, work: Path, threads: int):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([SWARP, *args, "-NTHREADS", str(threads), "-WRITE_XML", "N",
                    "-VERBOSE_TYPE", "QUIET", "-SUBTRACT_BACK", "N", "-FSCALASTRO_TYPE", "NONE",
                    "-MEM_MAX", "8192", "-COMBINE_BUFSIZE", "4096", "-RESAMPLE_DIR", str(work)],
                   cwd=work, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def timed(fn, repeat):
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return out, round(min(walls), 3), round(min(cpus), 3)


def best(fn, repeat):
    runs = [fn() for _ in range(repeat)]
    return round(min(r[0] for r in runs), 3), round(min(r[1] for r in runs), 3)


def part_warp(work: Path, size: int, repeat: int, threads: int) -> dict:
    from astropy.io import fits

    from processing.algorithms.warp import warp_image
    from store.geom import Box
    from store.masks import bits

    rng = np.random.default_rng(7)
    image = render(size, rng, 2.0, max(size * size // 40000, 20), 10.0, artefacts=True)
    variance = np.full((size, size), 100.0, np.float32)
    mask = np.zeros((size, size), np.int32)
    mask[:, :16] |= bits("EDGE")
    mask[:, -16:] |= bits("EDGE")
    mask[rng.integers(0, size, 2000), rng.integers(0, size, 2000)] |= bits("BAD")
    src = make_wcs(150.0, 2.0, (size / 2, size / 2), rot_deg=20.0)
    dst = make_wcs(150.001, 2.001, (size / 2 - 20, size / 2 - 20))
    box = Box(0, 0, size, size)
    warp_image(image[:64, :64], variance[:64, :64], mask[:64, :64], Box(0, 0, 64, 64), src, dst,
               Box(0, 0, 32, 32))  # compile (or load) the numba loop outside the timing
    out, wall, cpu = timed(lambda: warp_image(image, variance, mask, box, src, dst, box), repeat)
    result = {"size": size, "drp_lanczos3_image_variance_mask": {"wall_s": wall, "cpu_s": cpu},
              "good_fraction": round(float(out.good.mean()), 3)}
    if not Path(SWARP).exists():
        result["swarp"] = "not installed: comparison skipped"
        return result
    fits.PrimaryHDU(image, header=src.to_header()).writeto(work / "one.fits", overwrite=True)
    weight = np.where(mask == 0, 1.0 / variance, 0.0).astype(np.float32)
    fits.PrimaryHDU(weight, header=src.to_header()).writeto(work / "one.weight.fits",
                                                            overwrite=True)
    head = dst.to_header()
    head["NAXIS"], head["NAXIS1"], head["NAXIS2"] = 2, size, size
    (work / "one_out.head").write_text(head.tostring(sep="\n") + "\nEND\n")
    common = ["one.fits", "-IMAGEOUT_NAME", "one_out.fits", "-WEIGHTOUT_NAME", "one_outw.fits",
              "-COMBINE", "N", "-WEIGHT_TYPE", "MAP_WEIGHT", "-WEIGHT_SUFFIX", ".weight.fits",
              "-DELETE_TMPFILES", "N"]
    lw, lc = best(lambda: run_swarp([*common, "-RESAMPLING_TYPE", "LANCZOS3"], work, threads),
                  repeat)
    nw, nc = best(lambda: run_swarp([*common, "-RESAMPLING_TYPE", "NEAREST"], work, threads),
                  repeat)
    result["swarp_lanczos3_with_weights_incl_io"] = {"wall_s": lw, "cpu_s": lc}
    result["swarp_nearest_incl_io"] = {"wall_s": nw, "cpu_s": nc}
    result["ratio_swarp_over_drp_cpu"] = round(lc / cpu, 2)
    result["ratio_swarp_resampling_only_over_drp_cpu"] = round(max(lc - nc, 1e-3) / cpu, 2)
    return result


def read_floor(paths, size: int, budget_mb: float) -> float:
    """Seconds to read every warp once, strip by strip, with the assembly's reader."""
    from processing.tasks._warp_io import FileWarp
    from store.geom import Box

    sources = [FileWarp(p) for p in paths]
    rows = int(np.clip(budget_mb * 1e6 // (len(paths) * size * 12), 16, size))
    img = np.empty((rows, size), np.float32)
    var = np.empty((rows, size), np.float32)
    msk = np.empty((rows, size), np.int32)
    t0 = time.perf_counter()
    for y0 in range(0, size, rows):
        box = Box(0, y0, size, min(rows, size - y0))
        for src in sources:
            src.read(box, img[:box.height], var[:box.height], msk[:box.height])
    elapsed = time.perf_counter() - t0
    for src in sources:
        src.close()
    return elapsed


def assemble(paths, size: int, statistic: str, out: Path, budget_mb: float):
    from processing.tasks.assemble_coadd import AssembleCoaddTask
    from store.formats.fits import write_exposure
    from store.geom import Box

    task = AssembleCoaddTask(statistic=statistic, memory_budget_mb=budget_mb,
                             write_artifact_masks=False)
    res = task.run({("Cam", i): p for i, p in enumerate(paths)}, patch_bbox=Box(0, 0, size, size),
                   band="r")
    with open(out, "wb") as f:
        write_exposure(res["coadd"], f)
    return res


def part_combine(work: Path, paths, swarp_inputs, size: int, repeat: int, threads: int,
                 budget_mb: float, statistics) -> dict:
    result = {"n_inputs": len(paths), "size": size, "memory_budget_mb": budget_mb}
    assemble(paths[:3], min(size, 256), "MEAN", work / "warmup.fits", budget_mb)  # compile
    assemble(paths[:3], min(size, 256), "SAFECLIP", work / "warmup.fits", budget_mb)
    read_floor(paths, size, budget_mb)  # bring the files into the page cache first
    floor = min(read_floor(paths, size, budget_mb) for _ in range(max(repeat, 2)))
    result["read_all_inputs_once_s"] = round(floor, 3)
    for statistic in statistics:
        _, wall, cpu = timed(lambda s=statistic: assemble(paths, size, s, work / "coadd.fits",
                                                          budget_mb), repeat)
        result[f"drp_{statistic.lower()}"] = {"wall_s": wall, "cpu_s": cpu,
                                              "ratio_to_read_floor": round(wall / floor, 2)}
    if Path(SWARP).exists():
        (work / "list.txt").write_text("\n".join(p.name for p in swarp_inputs))
        for ctype in ("WEIGHTED", "CLIPPED"):
            wall, cpu = best(lambda c=ctype: run_swarp(
                ["@list.txt", "-RESAMPLE", "N", "-COMBINE", "Y", "-COMBINE_TYPE", c,
                 "-WEIGHT_TYPE", "MAP_WEIGHT", "-WEIGHT_SUFFIX", ".weight.fits",
                 "-IMAGEOUT_NAME", "sw_coadd.fits", "-WEIGHTOUT_NAME", "sw_coaddw.fits"],
                work, threads), repeat)
            result[f"swarp_{ctype.lower()}_combine"] = {"wall_s": wall, "cpu_s": cpu}
        clipped = result["swarp_clipped_combine"]
        for statistic in statistics:
            if statistic != "MEAN":
                ours = result[f"drp_{statistic.lower()}"]
                ours["swarp_clipped_over_drp_wall"] = round(clipped["wall_s"] / ours["wall_s"], 2)
                ours["swarp_clipped_over_drp_cpu"] = round(clipped["cpu_s"] / ours["cpu_s"], 2)
    else:
        result["swarp"] = "not installed: comparison skipped"
    return result


def part_memory(paths, size: int, budget_mb: float, threads: int) -> dict:
    """Peak RSS of child processes assembling 5, 10 and 20 (or all) inputs."""
    counts = sorted({min(n, len(paths)) for n in (5, 10, 20)})
    out = {}
    for statistic in ("MEAN", "SAFECLIP"):
        for n in counts:
            code = (f"import sys, resource; sys.path.insert(0, {str(Path.cwd())!r});"
                    f"from tests.benchmarks.bench_coadd import assemble;"
                    f"from pathlib import Path;"
                    f"assemble([Path(p) for p in {[str(p) for p in paths[:n]]!r}], {size},"
                    f" {statistic!r}, Path({str(paths[0].parent / 'mem.fits')!r}), {budget_mb});"
                    f"print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
            env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
            rss_kb = int(subprocess.run([sys.executable, "-c", code], check=True, env=env,
                                        capture_output=True, text=True).stdout.split()[-1])
            out[f"{statistic.lower()}_{n}_inputs_peak_rss_mb"] = round(rss_kb / 1024, 1)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="5 inputs of 512 x 512")
    parser.add_argument("--parts", default="warp,mean,clip,memory")
    parser.add_argument("--inputs", type=int, default=None)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budget-mb", type=float, default=512.0)
    parser.add_argument("--workdir", default=None, help="keep the inputs here (default: temp)")
    args = parser.parse_args()
    n_inputs = args.inputs or (5 if args.smoke else 20)
    size = args.size or (512 if args.smoke else 4096)
    repeat = args.repeat or (1 if args.smoke else 2)
    import numba

    numba.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    tmp = None
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_coadd_")
        work = Path(tmp.name)
    result = {"smoke": args.smoke, "threads": args.threads, "swarp": SWARP}
    try:
        if "warp" in parts:
            result["warp"] = part_warp(work, size, repeat, args.threads)
        if parts & {"mean", "clip", "memory"}:
            t0 = time.perf_counter()
            have = sorted(work.glob("warp*.fits"))
            if len(have) >= n_inputs and not args.smoke:
                paths = have[:n_inputs]
                swarp_inputs = sorted(work.glob("sw??.fits"))[:n_inputs]
            else:
                _, paths, swarp_inputs = make_inputs(work, n_inputs, size)
            result["inputs_prepared_s"] = round(time.perf_counter() - t0, 1)
            stats = (["MEAN"] if "mean" in parts else []) + (
                ["MEANCLIP", "SAFECLIP"] if "clip" in parts else [])
            if stats:
                result["combine"] = part_combine(work, paths, swarp_inputs, size, repeat,
                                                 args.threads, args.budget_mb, stats)
            if "memory" in parts:
                result["memory"] = part_memory(paths, size, args.budget_mb, args.threads)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
