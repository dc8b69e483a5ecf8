"""What the report reads: a collection's datasets, through SQL where a table exists.

The report must show one collection (``--collection``), not the repository's
default one that the Rubin-named SQL tables (``CcdVisit``, ``Source``...) show,
and it must not change the default collection (a write, and a surprise to
other users).  So it reads the SQL copies of the table dataset types directly:
every table dataset type ``T`` has a table ``main.ds_T`` holding the rows of
all its datasets, each row tagged with ``_dataset_id``.  :meth:`ReportData.table`
keeps the rows of the datasets the collection *finds*: for each data ID, the
dataset in the first run of the collection's search order that has one
(Butler's find-first rule, as :meth:`store.Repo.query_datasets` applies it).
That is one SQL query whatever the number of datasets (a ``Source`` table of a
million rows costs tens of milliseconds), instead of opening one Parquet file
per detector.

Datasets that are not tables (exposures, images, cell coadds), and the table
columns that are not copied to SQL (the visit summary's PSF and WCS
components), are found with :meth:`store.Repo.query_datasets` and read with
:meth:`store.Repo.get`.

Inputs that a processing collection need not contain (the ``reference_catalog``
shards, the simulator's ``truth_*`` tables) are looked for in the collection
first and, failing that, in every run of the repository (newest first), so a
report on ``demo/DR1`` finds the ``refcats`` and ``truth`` runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

__all__ = ["INPUT_TYPES", "ReportData"]

#: Dataset types also looked for outside the collection (see the module notes).
INPUT_TYPES = frozenset({"reference_catalog", "truth_object", "truth_visit_detector",
                         "truth_psf_grid", "truth_artefact"})


#: Data-ID columns a visit implies, read from the visit record when a table lacks them.
_VISIT_IMPLIED = frozenset({"band", "physical_filter", "day_obs"})


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _runs_newest_first(repo) -> list[str]:
    table = repo.collections()
    rows = [r for r in table.to_pylist() if r["type"] == "RUN"]
    return [r["name"] for r in sorted(rows, key=lambda r: r["created"], reverse=True)]


class ReportData:
    """Read access to one collection of a repository, for the report.

    Parameters
    ----------
    repo : store.Repo
        The repository.
    collection : str, optional
        Collection to report on (default: the repository's default
        collection, or every run, newest first, when it has none).

    Raises
    ------
    store.errors.CollectionError
        The collection does not exist.
    """

    def __init__(self, repo, collection: str | None = None):
        self.repo = repo
        self.collection = collection if collection is not None else repo.default_collection
        self.runs: list[str] = repo.collection_runs(self.collection)
        self._all_runs = _runs_newest_first(repo)
        self._types = {t.name: t for t in repo.dataset_types()}
        self._columns: dict[str, dict[str, str]] = {}
        self._runs_of: dict[str, list[str]] = {}

    def __repr__(self) -> str:
        return f"ReportData({self.repo!r}, collection={self.collection!r})"

    @property
    def label(self) -> str:
        """The collection's name as the report shows it."""
        return self.collection or "the repository (all runs, no default collection)"

    # -- what exists ----------------------------------------------------------------------
    def sql_columns(self, dataset_type: str) -> dict[str, str]:
        """Lower-cased column name -> stored name of ``main.ds_<type>`` (empty when absent)."""
        if dataset_type not in self._columns:
            rows = self.repo.sql(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'main' "
                "AND table_name = $t", {"t": f"ds_{dataset_type}"}, adql=False)
            self._columns[dataset_type] = {c.lower(): c for c in
                                           rows.column("column_name").to_pylist()}
        return self._columns[dataset_type]

    def runs_for(self, dataset_type: str) -> list[str]:
        """The runs searched for ``dataset_type`` (collection first, see the module notes)."""
        if dataset_type in self._runs_of:
            return self._runs_of[dataset_type]
        runs = self.runs
        if dataset_type in INPUT_TYPES and self.count(dataset_type, runs) == 0:
            runs = self._all_runs
        self._runs_of[dataset_type] = runs
        return runs

    def count(self, dataset_type: str, runs: Sequence[str] | None = None) -> int:
        """Number of datasets of a type in the runs (default: :meth:`runs_for`)."""
        if dataset_type not in self._types:
            return 0
        runs = list(self.runs_for(dataset_type) if runs is None else runs)
        if not runs:
            return 0
        rows = self.repo.sql(
            "SELECT count(DISTINCT data_id_key) AS n FROM main.dataset "
            "WHERE dataset_type = $t AND list_contains($runs, run)",
            {"t": dataset_type, "runs": runs}, adql=False)
        return int(rows.column("n")[0].as_py())

    def has(self, dataset_type: str) -> bool:
        """Whether the collection (or, for inputs, the repository) has such datasets."""
        return self.count(dataset_type) > 0

    # -- reading --------------------------------------------------------------------------
    def table(self, dataset_type: str, columns: Sequence[str], *, where: str | None = None,
              bind: Mapping[str, Any] | None = None, optional: Sequence[str] = ()
              ) -> pa.Table:
        """Rows of the datasets the collection finds, from the SQL copy.

        Parameters
        ----------
        dataset_type : str
            A table dataset type (``visit_summary``, ``src``, ``source``...).
        columns : sequence of str
            Columns to return; each must exist, except ``band``, ``physical_filter``
            and ``day_obs``, which come from the visit record when the table has a
            ``visit`` column but not them.
        where : str, optional
            Extra SQL condition on the rows (alias ``s``), ``$name`` placeholders
            bound from ``bind``.
        optional : sequence of str
            Columns returned as NULL when the table lacks them.

        Returns
        -------
        pyarrow.Table
            Empty (with no columns) when the type has no SQL table.

        Raises
        ------
        store.errors.InvalidQueryError
            A requested column is missing or ``where`` is malformed.
        """
        stored = self.sql_columns(dataset_type)
        if not stored:
            return pa.table({})
        parts, join = [], ""
        for name in columns:
            if name.lower() in stored:
                parts.append(f"s.{_quote(stored[name.lower()])} AS {_quote(name)}")
            elif name.lower() in _VISIT_IMPLIED and {"visit", "instrument"} <= set(stored):
                # A table need not repeat what its visit implies: take it from the visit.
                parts.append(f"v.{_quote(name.lower())} AS {_quote(name)}")
                join = (" LEFT JOIN main.visit AS v ON v.instrument = s.instrument "
                        "AND v.visit = s.visit")
            elif name in optional:
                parts.append(f"NULL AS {_quote(name)}")
            else:
                parts.append(f"s.{_quote(name)} AS {_quote(name)}")  # DuckDB names it
        sql = (f"SELECT {', '.join(parts)} FROM main.{_quote('ds_' + dataset_type)} AS s{join} "
               "WHERE s._dataset_id IN (SELECT id FROM main.dataset WHERE dataset_type = $_t "
               "AND list_contains($_runs, run) QUALIFY row_number() OVER "
               "(PARTITION BY data_id_key ORDER BY list_position($_runs, run)) = 1)")
        if where:
            sql += f" AND ({where})"
        params = {"_t": dataset_type, "_runs": list(self.runs_for(dataset_type)), **(bind or {})}
        return self.repo.sql(sql, params, adql=False)

    def refs(self, dataset_type: str, where: str | None = None,
             bind: Mapping[str, Any] | None = None) -> list:
        """References of the datasets the collection finds (find-first), in data-ID order."""
        if dataset_type not in self._types:
            return []
        runs = self.runs_for(dataset_type)
        if not runs:
            return []
        return list(self.repo.query_datasets(dataset_type, where, bind=bind, collections=runs))

    def get(self, ref, **parameters: Any) -> Any:
        """Read one dataset (``parameters`` go to the reader: ``bbox``, ``columns``)."""
        return self.repo.get(ref, parameters=parameters or None)
