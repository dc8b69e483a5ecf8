"""Benchmark: cell-based coadd of one patch against the plain weighted-mean coadd.

Run ``python tests/benchmarks/bench_cell_coadd.py [--smoke] [--inputs N] [--workdir DIR]``;
prints one JSON object.

The full run uses one patch of the default cell sky map (3400 x 3400 pixels,
22 x 22 cells of 150 + 2 x 50 pixels) and 20 input warps (FITS files, ~2.8 GB,
in ``--workdir`` or a temporary directory; kept and reused with ``--workdir``).
Each input is a visit of a 2 x 2 mosaic of 2048 x 2048 detectors with its own
pointing dither, rotation and Gaussian PSF, drawn directly in the tract frame
(stars and noise inside each detector's valid region, NO_DATA in the chip
gaps and outside, a few BAD columns), with the visit summary the cell coadd
needs (detector WCS, box, PSF, meanVar).  ``--smoke`` uses a 1/5-scale patch
(22 x 22 cells of 30 + 2 x 10 pixels) and 4 inputs, and finishes in seconds.

Timed, each in a fresh child process (numba kernels compiled beforehand, a
small warm-up run excluded from the timing), wall-clock and CPU seconds and
the process's peak resident memory:

* ``cell``: ``AssembleCellCoaddTask.run`` on the warp files plus writing its
  three outputs (``deep_coadd_cell`` bundle, stitched exposure, cell index);
* ``mean``: ``AssembleCoaddTask(statistic="MEAN").run`` on the same files
  plus writing the coadd (the plain weighted mean).

The ratio ``cell / mean`` of the wall times is the figure of merit (target: at
most 2).  Each timing is the minimum of ``--repeat`` runs (the machine may be
shared); numba runs on ``--threads`` threads (default 1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RA0, DEC0 = 53.1, -28.1


def skymap(smoke: bool):
    from processing.skymap import DiscreteSkyMap

    if smoke:
        return DiscreteSkyMap([[RA0, DEC0]], [0.03], patch_inner=600, patch_border=40,
                              cell_inner=30, cell_border=10)
    return DiscreteSkyMap([[RA0, DEC0]], [0.12])


def _tan(ra, dec, crpix, rot_deg, scale=0.2):
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


def _stars(box, rng, n):
    """Star positions (tract pixels) and fluxes (nJy) over a box."""
    x = rng.uniform(box.x0, box.x1, n)
    y = rng.uniform(box.y0, box.y1, n)
    return x, y, 10 ** rng.uniform(3.0, 5.0, n)


def make_inputs(work: Path, n_inputs: int, smoke: bool, seed: int = 1):
    """Warp files (drp exposures in the tract frame) and visit-summary files."""
    import pyarrow.parquet as pq

    from processing.algorithms.polygons import box_outline, fill_spans, polygon_spans
    from processing.algorithms.summary_fields import ExposureSummaryStats
    from processing.algorithms.warp import transform_pixels
    from processing.visit_summary import DetectorSummary, VisitSummaryCatalog
    from store.calib import PhotoCalib
    from store.exposure import DetectorInfo, Exposure, VisitInfo
    from store.formats.fits import write_exposure
    from store.geom import Box
    from store.masks import bits
    from store.psf import GaussianPsf

    rng = np.random.default_rng(seed)
    sm = skymap(smoke)
    tract = sm[0]
    patch = tract.patch(tract.num_patches[0] // 2, tract.num_patches[1] // 2)
    box = patch.outer_bbox
    det_size = 410 if smoke else 2048
    gap = 6 if smoke else 30
    sx, sy, sf = _stars(box, rng, (box.area // 40000) or 50)
    pc_ra, pc_dec = tract.wcs.all_pix2world([box.center[0]], [box.center[1]], 0)
    half = 12
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
    paths, summaries = [], []
    for v in range(n_inputs):
        sigma = float(rng.uniform(1.5, 2.5))
        psf = GaussianPsf(sigma, size=41)
        noise = 10.0 * (1 + 0.05 * v)
        rot = float(rng.uniform(-20, 20))
        dra, ddec = rng.uniform(-0.1, 0.1, 2) * det_size * 0.2 / 3600.0
        image = np.full(box.shape, np.nan, np.float32)
        variance = np.full(box.shape, np.inf, np.float32)
        mask = np.full(box.shape, bits("NO_DATA"), np.int32)
        label = np.full(box.shape, -1, np.int32)
        entries, metadata = [], {"BAND": "r", "NINPUTS": 4}
        for det, (i, j) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)]):
            off = np.array([(i - 1) * (det_size + gap) + gap / 2,
                            (j - 1) * (det_size + gap) + gap / 2])
            wcs = _tan(float(pc_ra[0]) + dra, float(pc_dec[0]) + ddec, -off, rot)
            x, y = box_outline(2, 2, det_size - 3, det_size - 3)
            px, py = transform_pixels(tract.wcs, wcs, x, y)
            fill_spans(label, *polygon_spans(px, py, box), det)
            metadata[f"INPUT_DET{det}"] = det
            vi = VisitInfo(visit=v, instrument="Cam", band="r", physical_filter="r_01",
                           exposure_time=30.0, mjd=60000.0 + v)
            dinfo = DetectorInfo(det, name=f"S{det}", bbox=Box(0, 0, det_size, det_size),
                                 gain=1.0, read_noise=5.0, saturation=1e5)
            stats = ExposureSummaryStats(psfSigma=sigma, pixelScale=0.2, meanVar=noise ** 2)
            entries.append(DetectorSummary(detector=dinfo, bbox=dinfo.bbox, summary=stats,
                                           visit_info=vi, wcs=wcs, psf=psf,
                                           photo_calib=PhotoCalib(1.0)))
        inside = label >= 0
        image[inside] = rng.standard_normal(int(inside.sum()), dtype=np.float32) * noise
        variance[inside] = noise * noise
        mask[inside] = 0
        for x, y, f in zip(sx, sy, sf, strict=True):
            ix, iy = int(x) - box.x0, int(y) - box.y0
            if half <= ix < box.width - half and half <= iy < box.height - half:
                g = np.exp(-0.5 * ((xx + int(x) - x) ** 2 + (yy + int(y) - y) ** 2) / sigma ** 2)
                image[iy - half:iy + half + 1, ix - half:ix + half + 1] += np.float32(f) * g / g.sum()
        for col in rng.integers(0, box.width - 6, 3):
            rows = slice(*sorted(rng.integers(0, box.height, 2)))
            mask[rows, col:col + 6] |= bits("BAD")
        image[~inside] = np.nan
        metadata["MEANVAR"] = float(noise ** 2)
        exp = Exposure(image, mask, variance, wcs=tract.wcs, psf=psf,
                       photo_calib=PhotoCalib(1.0), units="nJy",
                       visit_info=VisitInfo(visit=v, instrument="Cam", band="r"),
                       xy0=(box.x0, box.y0), metadata=metadata)
        path = work / f"warp{v:02d}.fits"
        with open(path, "wb") as fh:
            write_exposure(exp, fh)
        spath = work / f"summary{v:02d}.parquet"
        pq.write_table(VisitSummaryCatalog.from_detectors(entries).to_table(), spath)
        paths.append(path)
        summaries.append(spath)
    return paths, summaries


def run_cell(paths, summaries, smoke: bool, out: Path):
    import pyarrow.parquet as pq

    from processing.tasks.assemble_cell_coadd import AssembleCellCoaddTask
    from store.formats.fits import write_bundle, write_exposure
    from store.formats.parquet import write_table

    sm = skymap(smoke)
    tract = sm[0]
    patch = tract.patch(tract.num_patches[0] // 2, tract.num_patches[1] // 2)
    res = AssembleCellCoaddTask().run(
        {("Cam", i): p for i, p in enumerate(paths)}, sky_info=patch,
        visit_summaries=[pq.read_table(s) for s in summaries], band="r", skymap="bench")
    with open(out / "cell.fits", "wb") as fh:
        write_bundle(res["coadd"].to_bundle(), fh)
    with open(out / "stitched.fits", "wb") as fh:
        write_exposure(res["stitched"], fh)
    with open(out / "index.parquet", "wb") as fh:
        write_table(res["index"], fh)
    return res


def run_mean(paths, smoke: bool, out: Path):
    from processing.tasks.assemble_coadd import AssembleCoaddTask
    from store.formats.fits import write_exposure, write_image

    sm = skymap(smoke)
    tract = sm[0]
    patch = tract.patch(tract.num_patches[0] // 2, tract.num_patches[1] // 2)
    res = AssembleCoaddTask(statistic="MEAN", write_artifact_masks=False).run(
        {("Cam", i): p for i, p in enumerate(paths)}, patch_bbox=patch.outer_bbox,
        tract_wcs=tract.wcs, band="r")
    with open(out / "mean.fits", "wb") as fh:
        write_exposure(res["coadd"], fh)
    with open(out / "n_image.fits", "wb") as fh:
        write_image(res["n_image"], fh)
    return res


_CHILD = """
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.benchmarks import bench_cell_coadd as b
paths = [Path(p) for p in {paths!r}]
summaries = [Path(p) for p in {summaries!r}]
warm_paths = [Path(p) for p in {warm_paths!r}]
warm_summaries = [Path(p) for p in {warm_summaries!r}]
out = Path({out!r})
# Warm-up on tiny inputs (imports, numba kernels loaded from the cache), not timed.
{warm}
c0, t0 = time.process_time(), time.perf_counter()
res = {call}
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({{"wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "metadata": {{k: v for k, v in res.metadata.items()
                               if isinstance(v, (int, float, str))}}}}))
"""


def child(kind: str, paths, summaries, smoke: bool, out: Path, threads: int, warm) -> dict:
    """Time one run in a fresh process; ``warm`` = (paths, summaries) of tiny inputs."""
    if kind == "cell":
        call = f"b.run_cell(paths, summaries, {smoke}, out)"
        warm_call = "b.run_cell(warm_paths, warm_summaries, True, out)"
    else:
        call = f"b.run_mean(paths, {smoke}, out)"
        warm_call = "b.run_mean(warm_paths, True, out)"
    code = _CHILD.format(root=str(Path(__file__).resolve().parents[2]),
                         paths=[str(p) for p in paths], summaries=[str(s) for s in summaries],
                         warm_paths=[str(p) for p in warm[0]],
                         warm_summaries=[str(s) for s in warm[1]],
                         out=str(out), warm=warm_call, call=call)
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, "-c", code], check=True, env=env,
                          capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="1/5-scale patch, 4 inputs")
    parser.add_argument("--inputs", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="keep the inputs here (default: temp)")
    args = parser.parse_args()
    n_inputs = args.inputs or (4 if args.smoke else 20)
    repeat = args.repeat or (1 if args.smoke else 2)
    tmp = None
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_cell_coadd_")
        work = Path(tmp.name)
    result = {"smoke": args.smoke, "threads": args.threads, "n_inputs": n_inputs}
    try:
        t0 = time.perf_counter()
        warm_dir = work / "warm"
        warm_dir.mkdir(exist_ok=True)
        warm = make_inputs(warm_dir, 2, True, seed=2)
        result["warm_inputs_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        tag = "smoke" if args.smoke else "full"
        inputs = work / f"inputs_{tag}_{n_inputs}"
        inputs.mkdir(exist_ok=True)
        paths = sorted(inputs.glob("warp*.fits"))
        summaries = sorted(inputs.glob("summary*.parquet"))
        if len(paths) != n_inputs or len(summaries) != n_inputs:
            paths, summaries = make_inputs(inputs, n_inputs, args.smoke)
        result["inputs_prepared_s"] = round(time.perf_counter() - t0, 1)
        result["input_bytes"] = int(sum(p.stat().st_size for p in paths))
        for kind in ("cell", "mean"):
            runs = [child(kind, paths, summaries, args.smoke, work, args.threads, warm)
                    for _ in range(repeat)]
            best = min(runs, key=lambda r: r["wall_s"])
            best["cpu_s"] = min(r["cpu_s"] for r in runs)
            best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
            result[kind] = best
        result["ratio_cell_over_mean_wall"] = round(result["cell"]["wall_s"]
                                                    / result["mean"]["wall_s"], 2)
        result["ratio_cell_over_mean_cpu"] = round(result["cell"]["cpu_s"]
                                                   / result["mean"]["cpu_s"], 2)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
