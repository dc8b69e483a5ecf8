"""What a data release contains: table and image specifications, export settings.

A release has three parts, chosen with ``what``:

* ``catalogs``: the source-level tables (``Source``, ``PsfStar``, the coadd cell table);
* ``visits``: the visit-level tables (``Visit``, ``CcdVisit``);
* ``images``: the image datasets (``visit_image``, ``deep_coadd``, cell coadds) as FITS
  with an ObsCore index.

Tables are read through the repository's SQL surface (``Repo.sql``) by name, so any
view or table the registry defines can be exported; a table that does not exist is
skipped with a notice.  Everything here is plain data, validated once on construction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import DrpError

__all__ = [
    "BAND_WAVELENGTHS_M",
    "DEFAULT_IMAGES",
    "DEFAULT_TABLES",
    "PARTS",
    "ExportConfig",
    "ImageSpec",
    "ReleaseError",
    "ReleaseExistsError",
    "TableSpec",
]

#: The parts a release can hold (``--what``).
PARTS = ("catalogs", "visits", "images")

#: Approximate bandpass edges (metres) of the LSST filters, for ObsCore ``em_min/em_max``.
BAND_WAVELENGTHS_M: dict[str, tuple[float, float]] = {
    "u": (3.30e-7, 4.00e-7), "g": (4.02e-7, 5.52e-7), "r": (5.52e-7, 6.91e-7),
    "i": (6.91e-7, 8.18e-7), "z": (8.18e-7, 9.22e-7), "y": (9.22e-7, 1.06e-6),
}

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_COMPRESSIONS = ("zstd", "snappy", "lz4", "gzip", "none")
_TRANSFERS = ("copy", "hardlink")


class ReleaseError(DrpError, ValueError):
    """A release export, import or check was asked something it cannot do."""


class ReleaseExistsError(DrpError, FileExistsError):
    """The export target already exists (pass ``overwrite=True`` to replace it)."""


def _check_type(owner: str, name: str, value, kinds, kind_text: str) -> None:
    # bool is an int subclass; a flag where a count is expected is a mistake.
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise ReleaseError(f"{owner}.{name} must be {kind_text}, got {value!r}")
    if not isinstance(value, kinds):
        raise ReleaseError(f"{owner}.{name} must be {kind_text}, got {type(value).__name__} "
                           f"{value!r}")


def _str_tuple(owner: str, name: str, value) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (tuple, list)):
        raise ReleaseError(f"{owner}.{name} must be a tuple of strings, got {value!r}")
    for v in value:
        _check_type(owner, name, v, str, "a tuple of strings")
    return tuple(value)


@dataclass(frozen=True)
class TableSpec:
    """One exported table.

    Parameters
    ----------
    name : str
        Name in the release (file ``catalogs/<name>.parquet``, HATS ``hats/<name>``) and,
        unless ``query`` is given, the SQL table or view read (case-insensitive).
    part : {"catalogs", "visits"}
        Which part of the release the table belongs to.
    query : str, optional
        A read-only SELECT giving the rows (default ``SELECT * FROM "<name>"``).
    order_by : tuple of str
        Key columns that order the rows, so a re-export is byte-identical; when any is
        missing the rows are ordered by all columns.  Ignored with a custom ``query``.
    ra_column, dec_column : str, optional
        Sky position columns (degrees) for the HATS catalog; default: the first pair
        present among ``coord_ra/coord_dec``, ``ra/dec``, ``s_ra/s_dec``.  A table
        without positions is exported as Parquet only.
    hats_type : {"object", "source"}
        HATS catalog type (``source`` for detections, several per object).
    dataset_types : tuple of str
        Table dataset types the rows derive from, copied into the release so
        ``drp import`` rebuilds the table; types a view reads are found as well.
    description : str
        One line for the README and schema.
    """

    name: str
    part: str = "catalogs"
    query: str | None = None
    order_by: tuple[str, ...] = ()
    ra_column: str | None = None
    dec_column: str | None = None
    hats_type: str = "object"
    dataset_types: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self):
        _check_type("TableSpec", "name", self.name, str, "a string")
        if not _NAME.match(self.name):
            raise ReleaseError(f"table name {self.name!r} must be letters, digits and _ "
                               "starting with a letter")
        if self.part not in ("catalogs", "visits"):
            raise ReleaseError(f"table {self.name}: part must be 'catalogs' or 'visits', "
                               f"got {self.part!r}")
        if self.query is not None:
            _check_type("TableSpec", "query", self.query, str, "a string")
        object.__setattr__(self, "order_by", _str_tuple("TableSpec", "order_by", self.order_by))
        object.__setattr__(self, "dataset_types",
                           _str_tuple("TableSpec", "dataset_types", self.dataset_types))
        if (self.ra_column is None) != (self.dec_column is None):
            raise ReleaseError(f"table {self.name}: give both ra_column and dec_column or neither")
        if self.hats_type not in ("object", "source"):
            raise ReleaseError(f"table {self.name}: hats_type must be 'object' or 'source', "
                               f"got {self.hats_type!r}")

    @property
    def sql(self) -> str:
        """The SELECT that reads the rows (ordered when no custom query is given)."""
        return self.query if self.query is not None else f'SELECT * FROM "{self.name}"'


@dataclass(frozen=True)
class ImageSpec:
    """One exported image dataset type.

    Parameters
    ----------
    dataset_type : str
        Registered dataset type with a FITS storage class.
    calib_level : int
        ObsCore calibration level (2 calibrated single visit, 3 coadd).
    subtype : str, optional
        ObsCore ``dataproduct_subtype`` (default ``lsst.<dataset_type>``).
    """

    dataset_type: str
    calib_level: int = 2
    subtype: str | None = None

    def __post_init__(self):
        _check_type("ImageSpec", "dataset_type", self.dataset_type, str, "a string")
        _check_type("ImageSpec", "calib_level", self.calib_level, int, "an integer 0-4")
        if not 0 <= self.calib_level <= 4:
            raise ReleaseError(f"ImageSpec.calib_level must be 0-4, got {self.calib_level}")

    @property
    def obscore_subtype(self) -> str:
        """``dataproduct_subtype`` written in the ObsCore index."""
        return self.subtype or f"lsst.{self.dataset_type}"


#: Tables exported by default, named as the Rubin data model names them.
DEFAULT_TABLES: tuple[TableSpec, ...] = (
    TableSpec("Source", "catalogs", order_by=("sourceId",), hats_type="source",
              dataset_types=("source",),
              description="every source measured on the calibrated visit images"),
    TableSpec("PsfStar", "catalogs", order_by=("sourceId",), hats_type="source",
              dataset_types=("single_visit_star",),
              description="the stars used to model the PSF of each detector-visit"),
    TableSpec("CoaddCells", "catalogs", order_by=("tract", "patch", "band", "cell_x", "cell_y"),
              description="per-cell summary of the cell-based coadds"),
    TableSpec("Visit", "visits", order_by=("visit",),
              description="one row per visit: pointing, time and filter"),
    TableSpec("CcdVisit", "visits", order_by=("ccdVisitId",),
              dataset_types=("visit_summary",),
              description="one row per detector-visit: geometry, PSF, depth, photometric zero point"),
)

#: Image dataset types exported by default.
DEFAULT_IMAGES: tuple[ImageSpec, ...] = (
    ImageSpec("visit_image", 2),
    ImageSpec("deep_coadd", 3),
    ImageSpec("deep_coadd_cell", 3),
)


@dataclass(frozen=True)
class ExportConfig:
    """Settings of :func:`store.release.export_release`.

    Parameters
    ----------
    what : tuple of str
        Parts to export, a subset of :data:`PARTS`.
    tables : tuple of TableSpec
        Candidate tables (those of the chosen parts that exist are exported).
    images : tuple of ImageSpec
        Candidate image dataset types (registered ones are exported).
    hats_max_rows : int
        Largest number of rows in one HATS partition.
    hats_highest_order : int
        Finest HEALPix order a HATS partition may have (0-13).
    hats_lowest_order : int
        Coarsest HEALPix order of a partition (0-13).
    compression : str
        Parquet compression codec (``zstd``, ``snappy``, ``lz4``, ``gzip``, ``none``).
    include_datasets : bool
        Copy the datasets behind the release (table datasets the exported tables
        derive from, image files) with their registry records, so ``drp import``
        can rebuild a repository.  The ObsCore index points at those image files.
    transfer : {"copy", "hardlink"}
        How dataset files enter the release (``hardlink`` shares the repository's
        files when both are on one filesystem).
    durable : bool
        Flush the release to disk before it is renamed into place.
    """

    what: tuple[str, ...] = PARTS
    tables: tuple[TableSpec, ...] = DEFAULT_TABLES
    images: tuple[ImageSpec, ...] = DEFAULT_IMAGES
    hats_max_rows: int = 1_000_000
    hats_highest_order: int = 10
    hats_lowest_order: int = 0
    compression: str = "zstd"
    include_datasets: bool = True
    transfer: str = "copy"
    durable: bool = True

    def __post_init__(self):
        what = (self.what,) if isinstance(self.what, str) else self.what
        what = _str_tuple("ExportConfig", "what", what)
        bad = [w for w in what if w not in PARTS]
        if bad or not what:
            raise ReleaseError(f"unknown release part(s) {', '.join(map(repr, bad)) or '(none)'}"
                               f"; choose from {', '.join(PARTS)}")
        object.__setattr__(self, "what", tuple(p for p in PARTS if p in what))
        for name, kind in (("tables", TableSpec), ("images", ImageSpec)):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or not all(isinstance(v, kind) for v in value):
                raise ReleaseError(f"ExportConfig.{name} must be a tuple of {kind.__name__}, "
                                   f"got {value!r}")
            object.__setattr__(self, name, tuple(value))
        names = [t.name.lower() for t in self.tables]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ReleaseError(f"table name(s) given twice: {', '.join(dup)}")
        _check_type("ExportConfig", "hats_max_rows", self.hats_max_rows, int, "a positive integer")
        if self.hats_max_rows < 1:
            raise ReleaseError(f"ExportConfig.hats_max_rows must be positive, got "
                               f"{self.hats_max_rows}")
        for name in ("hats_highest_order", "hats_lowest_order"):
            value = getattr(self, name)
            _check_type("ExportConfig", name, value, int, "an integer 0-13")
            if not 0 <= value <= 13:
                raise ReleaseError(f"ExportConfig.{name} must be 0-13, got {value}")
        if self.hats_lowest_order > self.hats_highest_order:
            raise ReleaseError(f"hats_lowest_order {self.hats_lowest_order} exceeds "
                               f"hats_highest_order {self.hats_highest_order}")
        if self.compression not in _COMPRESSIONS:
            raise ReleaseError(f"unknown compression {self.compression!r}; choose from "
                               f"{', '.join(_COMPRESSIONS)}")
        if self.transfer not in _TRANSFERS:
            raise ReleaseError(f"unknown transfer {self.transfer!r}; choose from "
                               f"{', '.join(_TRANSFERS)}")
        for name in ("include_datasets", "durable"):
            _check_type("ExportConfig", name, getattr(self, name), bool, "True or False")

    def selected_tables(self) -> tuple[TableSpec, ...]:
        """The table specs of the chosen parts."""
        return tuple(t for t in self.tables if t.part in self.what)

