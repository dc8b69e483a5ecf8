"""``simulate_survey``: draw a survey, render it and write it through the store.

What lands in the repository
----------------------------
* dimension records: ``instrument``, ``band``, ``physical_filter``,
  ``detector`` (with gain, read noise, saturation, focal-plane position),
  ``day_obs``, ``visit`` (header boresight and rotation, times, airmass,
  footprint polygon) and ``visit_detector_region`` (detector corners through
  the header WCS, like a butler's ``define-visits``);
* run ``raw``: ``post_isr_image`` (instrument, visit, detector), Exposure;
* run ``refcats``: ``reference_catalog`` (healpix), one shard per pixel;
* run ``truth``: ``truth_object`` (instrument), and per visit
  ``truth_visit_detector``, ``truth_psf_grid``, ``truth_artefact``
  (instrument, visit), see :mod:`sample_data.truth`;
* chained collection ``inputs = [raw, refcats]``.

Failure
-------
Everything that can be checked is checked before anything is written:
preset and visit count, the configuration, the reference-catalog coverage
of every visit, the run and chain names (none may exist), and existing
dimension records (identical ones, e.g. from an interrupted run with the
same seed, are reused; different ones are an error).  Image files are
written atomically by the rendering workers and registered by the parent
with one ``register_files`` commit per visit; if anything fails, the runs
created so far are removed and unregistered image files deleted, so no
dataset of a half-simulated survey stays registered.  Dimension records
inserted before the failure stay (the store cannot delete them); they are
reused by a retry with the same seed.

Speed
-----
Detector-visits are rendered and written in a pool of ``n_workers``
processes (forked where the platform allows, so they inherit the plan) while
the parent registers them; the files do not depend on the number of workers.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from store.errors import ConflictingDefinitionError

from .config import SurveyConfig, get_preset
from .plan import SurveyPlan, plan_survey
from .refcat import reference_catalog
from .scene import render_exposure
from .truth import artefact_table, object_table, psf_grid_table, visit_detector_table

__all__ = ["DATASET_TYPES", "RunNames", "SurveyResult", "simulate_survey"]

_log = logging.getLogger(__name__)

#: Dataset types written by the simulator: name -> (dimensions, storage class).
DATASET_TYPES: dict[str, tuple[tuple[str, ...], str]] = {
    "post_isr_image": (("instrument", "visit", "detector"), "Exposure"),
    "reference_catalog": (("healpix",), "ArrowTable"),
    "truth_object": (("instrument",), "ArrowTable"),
    "truth_visit_detector": (("instrument", "visit"), "ArrowTable"),
    "truth_psf_grid": (("instrument", "visit"), "ArrowTable"),
    "truth_artefact": (("instrument", "visit"), "ArrowTable"),
}

@dataclass(frozen=True)
class RunNames:
    """Collections the simulator creates (none may exist beforehand)."""

    raw: str = "raw"
    refcats: str = "refcats"
    truth: str = "truth"
    chain: str = "inputs"


@dataclass
class SurveyResult:
    """What :func:`simulate_survey` did.

    Attributes
    ----------
    plan : SurveyPlan
        The in-memory truth of the survey.
    runs : RunNames
        The collections written.
    n_images : int
        ``post_isr_image`` datasets written.
    n_shards : int
        ``reference_catalog`` shards written.
    seconds : dict of str to float
        Wall time of ``plan``, ``render_and_write`` (images and per-visit
        truth) and ``total``.
    max_rss_mb : dict of str to float
        Peak resident memory of the parent (``self``) and of the largest
        worker (``workers``), MB.
    """

    plan: SurveyPlan
    runs: RunNames
    n_images: int = 0
    n_shards: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    max_rss_mb: dict[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"SurveyResult({self.plan.config.name!r}, seed={self.plan.seed}, "
                f"{self.n_images} images, {self.n_shards} refcat shards, "
                f"{self.seconds.get('total', float('nan')):.1f} s)")


# -- worker side ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Job:
    """What a rendering worker needs besides the task: the plan and where to write."""

    plan: SurveyPlan
    root: Path
    run: str
    durable: bool


_JOB: _Job | None = None


def _init_worker(job: _Job) -> None:
    global _JOB
    _JOB = job


def _image_path(plan: SurveyPlan, run: str, visit_index: int, detector: int) -> tuple[dict, str]:
    from store.datastore import dataset_relpath

    data_id = {"instrument": plan.instrument, "visit": plan.visits[visit_index].id,
               "detector": detector}
    return data_id, dataset_relpath(run, "post_isr_image", data_id, ".fits")


def _render_task(task: tuple[int, int], job: _Job | None = None):
    """Render one detector-visit, write its image file, return the file record and truth rows.

    Runs in a worker (or in-process): the worker writes the file atomically
    (as pipeline workers do) and the parent registers it.
    """
    from store.datastore import atomic_replace
    from store.formats.fits import write_exposure

    job = job if job is not None else _JOB
    plan = job.plan
    visit_index, detector = task
    rendered = render_exposure(plan, visit_index, detector)
    data_id, rel = _image_path(plan, job.run, visit_index, detector)
    size, checksum = atomic_replace(job.root / rel,
                                    lambda f: write_exposure(rendered.exposure, f),
                                    durable=job.durable)
    record = {"dataset_type": "post_isr_image", "data_id": data_id, "path": rel,
              "size": size, "checksum": checksum}
    visit = plan.visits[visit_index]
    return (visit_index, detector, record,
            visit_detector_table(plan, visit, [detector]),
            psf_grid_table(plan, visit, [detector]),
            artefact_table(plan, rendered))


def _ordered_results(job: _Job, tasks: list[tuple[int, int]], n_workers: int):
    """Yield task results in task order, rendering ahead in a process pool."""
    if n_workers <= 1:
        for task in tasks:
            yield _render_task(task, job)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fork: workers inherit the plan and the imported modules (no pickling, no
    # re-import of __main__); they only run numpy code and leave with os._exit.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    with ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(job,)) as pool:
        pending: deque = deque()
        try:
            for task in tasks:
                pending.append(pool.submit(_render_task, task))
                if len(pending) >= 4 * n_workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()


# -- dimension records ----------------------------------------------------------------------
def _records(plan: SurveyPlan) -> list[tuple[str, list[dict]]]:
    cam, cfg = plan.camera, plan.camera.config
    bands = sorted({v.band for v in plan.visits})
    out: list[tuple[str, list[dict]]] = [
        ("instrument", [{"instrument": cam.name, "pixel_scale": cfg.pixel_scale,
                         "n_detectors": len(cam.detectors), "description": cfg.description}]),
        ("band", [{"band": b} for b in bands]),
        ("physical_filter", [{"instrument": cam.name, "physical_filter": cfg.physical_filters[b],
                              "band": b} for b in bands]),
        ("detector", [{"instrument": cam.name, "detector": d.id, "name": d.name, "x0": 0,
                       "y0": 0, "width": d.width, "height": d.height, "gain": d.gain,
                       "read_noise": d.read_noise, "saturation": d.saturation,
                       "fp_x": d.fp_x, "fp_y": d.fp_y} for d in cam.detectors]),
        ("day_obs", [{"instrument": cam.name, "day_obs": day}
                     for day in sorted({v.day_obs for v in plan.visits})]),
    ]
    visits, regions = [], []
    for v in plan.visits:
        outline = cam.outline()
        ra, dec = _header_sky(plan, v, outline[:, 0], outline[:, 1])
        visits.append({
            "instrument": cam.name, "visit": v.id, "band": v.band,
            "physical_filter": v.physical_filter, "day_obs": v.day_obs, "ra": v.header_ra,
            "dec": v.header_dec, "sky_rotation": v.header_rotation,
            "exposure_time": v.exposure_time, "dark_time": v.dark_time,
            "obs_start_mjd": v.mjd_begin, "exp_midpt_mjd": v.mjd, "airmass": v.airmass,
            "zenith_distance": v.zenith_distance, "azimuth": v.azimuth,
            "altitude": v.altitude, "region": np.column_stack([ra, dec]),
        })
        for det in cam.detectors:
            corners = np.array([[-0.5, -0.5], [det.width - 0.5, -0.5],
                                [det.width - 0.5, det.height - 0.5], [-0.5, det.height - 0.5]])
            fx, fy = cam.pixel_to_focal_plane(det.id, corners[:, 0], corners[:, 1])
            ra, dec = _header_sky(plan, v, fx, fy)
            regions.append({"instrument": cam.name, "visit": v.id, "detector": det.id,
                            "region": np.column_stack([ra, dec])})
    out.append(("visit", visits))
    out.append(("visit_detector_region", regions))
    return out


def _header_sky(plan: SurveyPlan, visit, fx, fy):
    """Sky positions of focal-plane points through the pointing model (header) geometry."""
    from .optics import distort, field_to_sky

    tx, ty = distort(fx, fy, plan.camera.config.distortion)
    return field_to_sky(tx, ty, visit.header_ra, visit.header_dec, visit.header_rotation,
                        plan.camera.plate_scale)


def _same(a, b) -> bool:
    if isinstance(a, float | np.floating) or isinstance(b, float | np.floating):
        return bool(np.isclose(float(a), float(b), rtol=1e-9, atol=1e-12))
    return a == b


def _new_records(repo, element: str, records: list[dict]) -> list[dict]:
    """Records not yet in the registry; raise if an existing one differs."""
    from store.dimensions import ELEMENTS

    keys = ELEMENTS[element].primary_key
    existing = repo.dimension_records(element).to_pylist()
    if not existing:
        return records
    index = {tuple(r[k] for k in keys): r for r in existing}
    fresh = []
    for rec in records:
        old = index.get(tuple(rec[k] for k in keys))
        if old is None:
            fresh.append(rec)
            continue
        for col, value in rec.items():
            if col == "region" or col not in old:
                continue
            if not _same(value, old[col]):
                ident = {k: rec[k] for k in keys}
                raise ConflictingDefinitionError(
                    f"{element} record {ident} already exists with {col}={old[col]!r} "
                    f"(this survey has {value!r}); simulate into a new repository or "
                    f"change the seed-independent settings (instrument name, start_mjd)")
    return fresh


# -- the entry point ------------------------------------------------------------------------
def _resolve_config(preset: str | SurveyConfig, n_visits: int | None) -> SurveyConfig:
    config = preset if isinstance(preset, SurveyConfig) else get_preset(preset)
    if n_visits is not None:
        if isinstance(n_visits, bool) or not isinstance(n_visits, int | np.integer) or n_visits < 1:
            raise ValueError(f"n_visits must be a positive integer, got {n_visits!r}")
        config = config.with_visits(int(n_visits))
    return config


def _open(repo):
    from store import Repo

    if isinstance(repo, Repo):
        return repo
    if isinstance(repo, str | os.PathLike):
        return Repo(Path(repo))
    raise TypeError(f"repo must be a store.Repo or a path, got {type(repo).__name__}")


def simulate_survey(repo, preset: str | SurveyConfig = "demo", *, seed: int = 0,
                    n_visits: int | None = None, n_workers: int | None = None,
                    runs: RunNames = RunNames(),
                    progress: Callable[[int, int], None] | None = None,
                    durable: bool = True) -> SurveyResult:
    """Simulate a survey and write it into a repository.

    Parameters
    ----------
    repo : store.Repo or path-like
        An existing repository.
    preset : str or SurveyConfig
        ``"demo"``, ``"comcam"`` (see :data:`sample_data.PRESETS`) or a configuration.
    seed : int
        Non-negative; the same seed gives byte-identical files.
    n_visits : int, optional
        Override the preset's number of visits.
    n_workers : int, optional
        Rendering processes (default: up to 2, one per CPU); 1 renders in-process.
    runs : RunNames
        Names of the collections to create.
    progress : callable, optional
        Called as ``progress(done, total)`` (detector-visits) each time a
        visit's images have been registered.
    durable : bool
        fsync every file (turn off for throw-away test repositories).

    Returns
    -------
    SurveyResult

    Raises
    ------
    ValueError
        Unknown preset, bad visit count or configuration, field outside the
        reference catalog's coverage.
    store.errors.ConflictingDefinitionError
        A run or chain name already exists, or existing dimension records
        differ from this survey's.
    """
    t0 = time.perf_counter()
    config = _resolve_config(preset, n_visits)
    if n_workers is None:
        n_workers = min(2, os.cpu_count() or 1)
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
    repo = _open(repo)
    plan = plan_survey(config, seed)
    t_plan = time.perf_counter() - t0
    existing = set(repo.collections().column("name").to_pylist())
    for name in (runs.raw, runs.refcats, runs.truth, runs.chain):
        if name in existing:
            raise ConflictingDefinitionError(
                f"collection {name!r} already exists; choose other run names (RunNames) "
                "or a new repository")
    if len({runs.raw, runs.refcats, runs.truth, runs.chain}) != 4:
        raise ValueError(f"run names must differ, got {runs}")
    records = [(element, _new_records(repo, element, recs)) for element, recs in _records(plan)]

    known = {t.name: t for t in repo.dataset_types()}
    for name, (dims, storage_class) in DATASET_TYPES.items():
        have = known.get(name)
        if have is None or have.storage_class != storage_class or set(have.dimensions) != set(dims):
            repo.register_dataset_type(name, dims, storage_class)  # conflicts raise here
    for element, recs in records:
        if recs:
            repo.insert_dimension_records(element, recs)

    created: list[str] = []
    result = SurveyResult(plan=plan, runs=runs)
    try:
        for name, doc in ((runs.refcats, "simulated reference catalog"),
                          (runs.truth, "truth of the simulated survey"),
                          (runs.raw, "simulated post-ISR images")):
            repo.register_run(name, doc)
            created.append(name)
        shards = reference_catalog(plan)
        repo.put_many([(table, "reference_catalog", {"healpix": pix})
                       for pix, table in shards.items()], run=runs.refcats, durable=durable)
        result.n_shards = len(shards)
        t1 = time.perf_counter()
        result.n_images = _render_and_write(repo, plan, runs, n_workers, progress, durable)
        t_render = time.perf_counter() - t1
        repo.register_chain(runs.chain, [runs.raw, runs.refcats])
    except BaseException:
        _log.warning("simulate_survey failed; removing runs %s", created)
        _cleanup(repo, created)
        raise
    result.seconds = {"plan": t_plan, "render_and_write": t_render,
                      "total": time.perf_counter() - t0}
    result.max_rss_mb = {
        "self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "workers": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0,
    }
    _log.info("%r", result)
    return result


def _cleanup(repo, created: list[str]) -> None:
    for name in reversed(created):
        try:
            repo.remove_run(name)
        except Exception as err:  # keep cleaning; the original error is re-raised
            _log.error("could not remove %s: %s", name, err)


def _render_and_write(repo, plan: SurveyPlan, runs: RunNames, n_workers: int,
                      progress: Callable[[int, int], None] | None, durable: bool) -> int:
    n_det = len(plan.camera.detectors)
    tasks = [(v, d) for v in range(len(plan.visits)) for d in range(n_det)]
    job = _Job(plan=plan, root=Path(repo.root), run=runs.raw, durable=durable)
    inst = plan.instrument
    records: list[dict] = []
    truth: dict[str, list[pa.Table]] = {"vd": [], "psf": [], "art": []}
    truth_items = [(object_table(plan), "truth_object", {"instrument": inst})]
    done = 0
    results = _ordered_results(job, tasks, n_workers)
    try:
        for visit_index, detector, record, vd, psf, art in results:
            records.append(record)
            truth["vd"].append(vd)
            truth["psf"].append(psf)
            truth["art"].append(art)
            if detector < n_det - 1:
                continue
            # One registry commit per visit for its images.
            repo.register_files(records, run=runs.raw)
            done += len(records)
            records = []
            did = {"instrument": inst, "visit": plan.visits[visit_index].id}
            truth_items += [(pa.concat_tables(truth["vd"]), "truth_visit_detector", did),
                            (pa.concat_tables(truth["psf"]), "truth_psf_grid", did),
                            (pa.concat_tables(truth["art"]), "truth_artefact", did)]
            truth = {"vd": [], "psf": [], "art": []}
            if progress is not None:
                progress(done, len(tasks))
        # The truth tables are small: one commit for all of them.
        repo.put_many(truth_items, run=runs.truth, durable=durable)
    except BaseException:
        # Stop the pool (waiting for running tasks), then remove every image
        # file this survey could have written: unregistered files are orphans.
        results.close()
        for v, d in tasks:
            (job.root / _image_path(plan, runs.raw, v, d)[1]).unlink(missing_ok=True)
        raise
    return done
