"""``write_report``: the data-release QA report of one collection, as one HTML file.

The sections, in order: an inventory of the collection's datasets (what is
there, what is missing and which task makes it), observing conditions per
visit, the PSF model, calibration against the reference catalog, coadds, and
(simulations) the comparison with the truth.  A section whose inputs are
missing says so in a note instead of a figure; a dataset that cannot be read
(:class:`store.errors.DrpError`) becomes a note and a warning, so one broken
file does not cost the whole report.  Programming errors still raise.
"""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from store.errors import DrpError

from .calibration import calibration_section
from .coadds import coadd_section
from .data import ReportData
from .html import render_html
from .psf import psf_section
from .render import Section, Table
from .truth import truth_section
from .visits import visit_section

__all__ = ["Report", "ReportError", "build_report", "write_report"]


class ReportError(DrpError, OSError):
    """The report cannot be written where it was asked to go."""


#: Dataset types of the inventory, with the task (or step) that makes them.
_INVENTORY = (
    ("post_isr_image", "ingest / simulate"),
    ("reference_catalog", "reference catalog ingest"),
    ("preliminary_visit_image", "calibrate"),
    ("src", "calibrate"),
    ("single_visit_star", "calibrate"),
    ("preliminary_visit_summary", "consolidate_visit_summary"),
    ("visit_summary", "update_visit_summary"),
    ("visit_image", "reprocess_visit_image"),
    ("source", "reprocess_visit_image"),
    ("direct_warp", "make_warp"),
    ("deep_coadd", "assemble_coadd"),
    ("deep_coadd_n_image", "assemble_coadd"),
    ("deep_coadd_cell", "assemble_cell_coadd"),
    ("truth_object", "simulator (truth run)"),
)


@dataclass
class Report:
    """A built report: its sections and how long each took (seconds)."""

    title: str
    subtitle: list[str]
    sections: list[Section]
    timings: dict[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        n_fig = sum(len(s.figures) for s in self.sections)
        n_note = sum(len(s.notes) for s in self.sections)
        return f"Report({self.title!r}, {len(self.sections)} sections, {n_fig} figures, " \
               f"{n_note} notes)"

    @property
    def notes(self) -> list[str]:
        """Every note of every section (what is missing)."""
        return [n.text for s in self.sections for n in s.notes]

    def to_html(self) -> str:
        """The self-contained HTML page."""
        return render_html(self.sections, title=self.title, subtitle=self.subtitle,
                           footer="Made by drp report. Figures: matplotlib (Agg).")

    def write(self, path: str | os.PathLike) -> Path:
        """Write the page to ``path`` atomically (see :func:`write_report`); returns the path."""
        target = Path(path).expanduser().absolute()
        _check_target(target)
        text = self.to_html()
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                       dir=target.parent)
        except OSError as err:
            raise ReportError(f"cannot write the report to {target}: {err.strerror or err}"
                              ) from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target


def _inventory(data: ReportData) -> Section:
    section = Section("Datasets", "What the collection holds (inputs such as the reference "
                      "catalog and the truth are also looked for in the other runs).")
    rows, missing = [], []
    for name, task in _INVENTORY:
        n = data.count(name)
        if name == "truth_object" and n == 0:
            continue  # only simulations have truth; its absence is not a defect
        rows.append((name, str(n), task if n else f"missing: run {task}"))
        if n == 0:
            missing.append(name)
    section.items.append(Table(f"Datasets in {data.label} (runs: {', '.join(data.runs) or 'none'})",
                               ("dataset type", "datasets", "made by"), tuple(rows)))
    if len(missing) == len(rows):
        where = data.label[0].upper() + data.label[1:]
        section.note(f"{where} holds no processed data: run the pipeline (drp run REPO "
                     "-i inputs -o OUTPUT) and report on its output collection.")
    return section


def _guarded(title: str, make: Callable[[], Section | None]) -> Section | None:
    """Run a section builder; a dataset that cannot be read becomes a note."""
    try:
        return make()
    except DrpError as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        warnings.warn(f"report section {title!r}: {message}", stacklevel=2)
        section = Section(title)
        section.note(f"This section could not be made: {message}")
        return section


def build_report(repo, *, collection: str | None = None, visit: int | None = None,
                 max_patches: int = 6) -> Report:
    """Compute every section of the QA report of one collection.

    Parameters
    ----------
    repo : store.Repo
        The repository.
    collection : str, optional
        Collection to report on (default: the repository's default collection).
    visit : int, optional
        Visit of the focal-plane PSF map (default: the median-seeing visit of
        those with the most detectors).
    max_patches : int
        Coadd patches shown per band, the best-covered first (each costs ~0.3 s
        of reading a 3400 x 3400 coadd).

    Returns
    -------
    Report

    Raises
    ------
    store.errors.CollectionError
        The collection does not exist.
    """
    data = ReportData(repo, collection)
    timings: dict[str, float] = {}
    sections: list[Section] = []
    builders = (("Datasets", lambda: _inventory(data)),
                ("Observing conditions per visit", lambda: visit_section(data)),
                ("PSF model", lambda: psf_section(data, visit)),
                ("Calibration against the reference catalog",
                 lambda: calibration_section(data)),
                ("Coadds", lambda: coadd_section(data, max_patches=max_patches)),
                ("Against the simulated truth", lambda: truth_section(data)))
    for title, make in builders:
        t0 = time.perf_counter()
        section = _guarded(title, make)
        timings[title] = time.perf_counter() - t0
        if section is not None:
            sections.append(section)
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = [f"Repository: {repo.root}", f"Collection: {data.label}",
                f"Generated {now} in {sum(timings.values()):.1f} s"]
    return Report(title="drp data-release QA report", subtitle=subtitle, sections=sections,
                  timings=timings)


def _check_target(path: Path) -> None:
    """Fail fast (before minutes of work) when the report cannot be written at ``path``."""
    if path.is_dir():
        raise ReportError(f"cannot write the report to {path}: it is a directory")
    parent = path.parent
    if not parent.is_dir():
        raise ReportError(f"cannot write the report to {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ReportError(f"cannot write the report to {path}: permission denied")


def write_report(repo, path: str | os.PathLike, *, collection: str | None = None,
                 visit: int | None = None, max_patches: int = 6) -> Path:
    """Write the QA report of a collection as one self-contained HTML file.

    Parameters
    ----------
    repo : store.Repo
        The repository.
    path : path-like
        The HTML file to write (replaced if it exists; written aside and renamed,
        so a reader never sees half a report).
    collection : str, optional
        Collection to report on (default: the repository's default collection).
    visit : int, optional
        Visit of the focal-plane PSF map (see :func:`build_report`).
    max_patches : int
        Coadd patches shown per band (see :func:`build_report`).

    Returns
    -------
    pathlib.Path
        The absolute path written.

    Raises
    ------
    ReportError
        ``path`` is a directory, its directory does not exist or is not writable.
    store.errors.CollectionError
        The collection does not exist.
    """
    target = Path(path).expanduser().absolute()
    _check_target(target)  # before minutes of work, not after
    return build_report(repo, collection=collection, visit=visit,
                        max_patches=max_patches).write(target)
