"""Every accuracy figure of the pipeline against the simulator's truth, as one JSON document.

Run ``python tests/benchmarks/accuracy_demo.py REPO [--collection demo/DR1] [--out figures.json]``
on a repository made by ``drp demo`` (truth tables in the run ``truth``).  Only the
repository's datasets and truth tables are read; nothing is written to it.

Every figure is ``{"value", "n", "target", "pass", ...}`` (``value`` null with a
``reason`` when it cannot be computed):

1. ``calibrate``, per detector-visit then median / max over the survey: src PSF flux
   over the true flux of isolated, unsaturated true stars with S/N > 100, the robust
   scatter of their pulls, their astrometric residuals, the PSF model moments against
   the true moments (at the reserved stars and on the truth grid), the zero point.
2. ``visit_summary``: seeing, zero point, sky and magLim of CcdVisit against the truth.
3. ``visit_image``: source PSF flux of bright isolated stars; sky-source fluxes.
4. ``deep_coadd``: forced PSF flux of bright stars, empty-sky noise against the variance
   plane, CLIPPED pixels near true stars, exclusion of truth satellite trails and cosmic
   rays, coadd PSF moments against the inputs' true PSFs.
5. ``deep_coadd_cell``: cell PSF moments against the inputs' true PSFs, star fluxes with
   the cell PSF, stitched image against the inner cells.

The helpers live in ``tests/benchmarks/_accuracy`` (pure functions in ``core``, tested by
``tests/test_accuracy_script.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``tests.benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks._accuracy.cells import cell_figures
from tests.benchmarks._accuracy.coadd import coadd_figures
from tests.benchmarks._accuracy.truth import Truth
from tests.benchmarks._accuracy.visits import visit_figures

__all__ = ["evaluate", "main"]


def _guard(name: str, fn, *args, **kwargs) -> dict:
    """Run one figure group; a failure becomes a null entry with the reason."""
    t0 = time.perf_counter()
    try:
        out = fn(*args, **kwargs)
    except Exception as err:  # one broken product must not hide the other figures
        out = {"value": None, "reason": f"{type(err).__name__}: {err}"}
    out["elapsed_s"] = round(time.perf_counter() - t0, 1)
    return out


def evaluate(repo, collection: str = "demo/DR1", *, truth_collection: str = "truth",
             max_patches: int | None = None, where: str | None = None) -> dict:
    """All figures of a processed repository (see the module docstring).

    Parameters
    ----------
    repo : store.Repo
        The repository.
    collection : str
        The processed collection.
    truth_collection : str
        Where the truth tables are.
    max_patches : int, optional
        Use only the first patches (data-ID order) of each coadd type.
    where : str, optional
        Condition on the coadds' data IDs (``"tract = 5063 AND patch = 14"``).
    """
    truth = Truth(repo, truth_collection)
    return {
        "repo": str(repo.root), "collection": collection,
        "calibrate": _guard("calibrate", visit_figures, repo, collection, truth),
        "deep_coadd": _guard("deep_coadd", coadd_figures, repo, collection, truth,
                             max_patches, where),
        "deep_coadd_cell": _guard("deep_coadd_cell", cell_figures, repo, collection, truth,
                                  max_patches, where),
    }


def _regroup(result: dict) -> dict:
    """Figures 2 and 3 come out of the per-detector-visit pass; give them their own keys."""
    cal = result["calibrate"]
    return {"repo": result["repo"], "collection": result["collection"],
            "1_calibrate": {k: v for k, v in cal.items() if k not in ("visit_summary",
                                                                      "visit_image")},
            "2_visit_summary": cal.get("visit_summary"), "3_visit_image": cal.get("visit_image"),
            "4_deep_coadd": result["deep_coadd"], "5_deep_coadd_cell": result["deep_coadd_cell"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo")
    parser.add_argument("--collection", default="demo/DR1")
    parser.add_argument("--truth-collection", default="truth")
    parser.add_argument("--max-patches", type=int, default=None)
    parser.add_argument("--where", default=None, help="condition on the coadd data IDs")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    from store import Repo

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        repo = Repo(args.repo)
        result = _regroup(evaluate(repo, args.collection, truth_collection=args.truth_collection,
                                   max_patches=args.max_patches, where=args.where))
    result["elapsed_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
