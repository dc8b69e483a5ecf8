"""``drp demo``: simulate a small survey, run the whole pipeline, export a release.

What a newcomer runs first.  Every step goes through the same library calls a
user would make (:func:`sample_data.simulate_survey`,
:func:`processing.pipeline.run_pipeline`, :func:`store.release.export_release`),
so the demo also exercises the whole system end to end.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DemoResult", "run_demo"]

SKYMAP = "lsst_cells_v1"


@dataclass
class DemoResult:
    """What the demo made and how long each step took (seconds)."""

    repo: Path
    release: Path | None = None
    report: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    summary: Any = None
    dataset_counts: list[tuple[str, int]] = field(default_factory=list)
    per_band: list[dict] = field(default_factory=list)


def _say(echo, text: str) -> None:
    if echo is not None:
        echo(text)


def central_patches(repo, skymap, n: int = 4) -> tuple[int, list[int]]:
    """The tract and the ``n`` patches holding the most visit boresights.

    The demo coadds these patches only: a 12-visit field dithered over a few
    arcminutes touches ~14 patches of two tracts, and coadding all of them
    would triple the demo's time and disk for patches covered by a few visits.
    """
    from collections import Counter

    visits = repo.dimension_records("visit").select(["ra", "dec"]).to_pydict()
    tracts, patches = skymap.find_tract_and_patch(visits["ra"], visits["dec"])
    tract = Counter(tracts.tolist()).most_common(1)[0][0]
    counts = Counter(p for t, p in zip(tracts.tolist(), patches.tolist(), strict=True)
                     if t == tract)
    chosen = [p for p, _ in counts.most_common(n)]
    info = skymap[tract]
    if len(chosen) < n:  # pad with neighbours of the best patch
        best = info.patch(chosen[0])
        px, py = best.index
        for dy in (0, 1, -1):
            for dx in (0, 1, -1):
                x, y = px + dx, py + dy
                if 0 <= x < info.num_patches[0] and 0 <= y < info.num_patches[1]:
                    pid = info.num_patches[0] * y + x
                    if pid not in chosen and len(chosen) < n:
                        chosen.append(pid)
    return int(tract), sorted(int(p) for p in chosen)


def run_demo(directory: str | Path = "demo-repo", *, preset: str = "demo", seed: int = 0,
             jobs: int | None = None, n_visits: int | None = None, export: bool = True,
             report: bool = True, all_patches: bool = False, echo=print) -> DemoResult:
    """Simulate the demo survey into ``directory`` and process it completely.

    Parameters
    ----------
    directory : path-like
        New directory: the repository goes to ``<dir>/repo``, the release to
        ``<dir>/release``, the report to ``<dir>/report.html``.
    preset, seed, n_visits
        Survey to simulate (see :func:`sample_data.simulate_survey`).
    jobs : int, optional
        Worker processes (default: one per core).
    export, report : bool
        Also export a data release / write the QA report.
    all_patches : bool
        Coadd every patch the visits touch (default: the 4 central patches).
    echo : callable or None
        Progress messages.

    Returns
    -------
    DemoResult
    """
    from processing.pipeline import run_pipeline
    from processing.pipelines import get_pipeline
    from processing.skymap import RingsSkyMap
    from processing.skymap.register import register_skymap
    from sample_data import simulate_survey
    from store import Repo

    root = Path(directory)
    if root.exists() and any(root.iterdir()):
        from store.errors import DrpError

        raise DrpError(f"{root} exists and is not empty; choose a new directory for the demo")
    result = DemoResult(root / "repo")
    t0 = time.monotonic()
    repo = Repo.create(root / "repo")
    _say(echo, f"[1/4] simulating the {preset!r} survey into {repo.root} ...")
    t = time.monotonic()
    sim = simulate_survey(repo, preset=preset, seed=seed, n_visits=n_visits, n_workers=jobs)
    result.timings["simulate"] = time.monotonic() - t
    _say(echo, f"      {sim.n_images} images, {sim.n_shards} reference-catalog shards "
               f"({result.timings['simulate']:.0f} s)")
    skymap = RingsSkyMap(120)
    register_skymap(repo, SKYMAP, skymap)
    where = None
    if not all_patches:
        tract, patches = central_patches(repo, skymap)
        where = f"tract = {tract} AND patch IN ({', '.join(map(str, patches))})"
        _say(echo, f"      coadds: tract {tract}, patches {patches}")

    _say(echo, "[2/4] running the data-release pipeline ...")
    t = time.monotonic()
    summary = run_pipeline(repo, get_pipeline("drp"), inputs=["inputs"], output="demo/DR1",
                           where=where, jobs=jobs, progress=echo is not None)
    result.timings["pipeline"] = time.monotonic() - t
    result.summary = summary
    _say(echo, summary.format())

    if export:
        try:
            from store.release import export_release
        except ImportError:  # pragma: no cover - release support is part of the package
            export_release = None
        if export_release is not None:
            _say(echo, "[3/4] exporting the release ...")
            t = time.monotonic()
            from store.release.config import ExportConfig

            target = root / "release"
            # Dataset files are immutable once registered, so the release can share them
            # with the repository (hard links: measured 9 s instead of 29 s) when both
            # are on one file system.
            same_fs = os.stat(root).st_dev == os.stat(repo.root).st_dev
            export_release(repo, target, collection="demo/DR1",
                           config=ExportConfig(transfer="hardlink" if same_fs else "copy"))
            result.release = target
            result.timings["export"] = time.monotonic() - t
    if report:
        try:
            from processing.report import write_report
        except ImportError:
            write_report = None
        if write_report is not None:
            _say(echo, "[4/4] writing the QA report ...")
            t = time.monotonic()
            result.report = write_report(repo, root / "report.html", collection="demo/DR1")
            result.timings["report"] = time.monotonic() - t
    result.dataset_counts = [(r["dataset_type"], r["n"]) for r in repo.sql(
        "SELECT dataset_type, count(*) AS n FROM main.dataset GROUP BY 1 ORDER BY 1").to_pylist()]
    from store.errors import InvalidQueryError

    try:
        result.per_band = repo.sql(
            "SELECT band, count(DISTINCT visitId) AS visits, round(median(seeing), 3) AS seeing, "
            "round(median(magLim), 2) AS magLim, round(median(zeroPoint), 3) AS zeroPoint "
            "FROM CcdVisit GROUP BY band ORDER BY band").to_pylist()
    except InvalidQueryError:  # CcdVisit exists only once visit summaries do
        result.per_band = []
    repo.close()
    result.timings["total"] = time.monotonic() - t0
    return result


def _num(value, decimals: int) -> str:
    """A float with a fixed number of decimals ('nan' for a missing value)."""
    return "nan" if value is None else f"{value:.{decimals}f}"


def format_result(result: DemoResult) -> str:
    """The closing summary printed by ``drp demo``."""
    lines = ["", f"drp demo finished in {result.timings.get('total', 0):.0f} s", "",
             "datasets produced:"]
    lines += [f"  {name:<36} {n}" for name, n in result.dataset_counts]
    if result.per_band:
        lines += ["", "per band (medians over detectors):",
                  "  band  visits  seeing[\"]  depth(5sigma)  zeroPoint"]
        lines += [f"  {r['band']:<4}  {r['visits']:>6}  {_num(r['seeing'], 3):>9}  "
                  f"{_num(r['magLim'], 2):>13}  {_num(r['zeroPoint'], 3):>9}"
                  for r in result.per_band]
    lines += ["", f"repository: {result.repo}"]
    if result.release:
        lines.append(f"release:    {result.release}")
    if result.report:
        lines.append(f"QA report:  {result.report}")
    repo = result.repo
    lines += ["", "try:",
              f"  drp sql {repo} \"SELECT band, count(*), median(seeing) FROM CcdVisit "
              "GROUP BY band\"",
              f"  drp sql {repo} \"SELECT TOP 5 visitId, detector, seeing, magLim FROM dp1.CcdVisit "
              "ORDER BY seeing\"",
              f"  drp sql {repo} \"SELECT visit, count(*) AS n FROM Source WHERE "
              "CONTAINS(POINT('ICRS', coord_ra, coord_dec), CIRCLE('ICRS', 53.1, -28.1, 0.05)) = 1 "
              "GROUP BY visit\""]
    return "\n".join(lines)
