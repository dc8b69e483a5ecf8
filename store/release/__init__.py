"""Data releases: export a collection for other tools, check it, import it back.

A release directory holds the catalogs as Parquet and as HATS catalogs (for lsdb),
the images as FITS with an ObsCore index (Parquet and VOTable), a schema of every
table and column, a MANIFEST of sizes and checksums, a README, and the datasets
behind it so ``drp import`` can rebuild a repository.  ``hats`` is imported only
when a HATS catalog is written or checked.
"""

from .config import (
    DEFAULT_IMAGES,
    DEFAULT_TABLES,
    PARTS,
    ExportConfig,
    ImageSpec,
    ReleaseError,
    ReleaseExistsError,
    TableSpec,
)
from .export import ExportedTable, ReleaseSummary, export_release
from .importer import ImportSummary, import_release
from .verify import ReleaseVerifyReport, verify_release

__all__ = [
    "DEFAULT_IMAGES",
    "DEFAULT_TABLES",
    "PARTS",
    "ExportConfig",
    "ExportedTable",
    "ImageSpec",
    "ImportSummary",
    "ReleaseError",
    "ReleaseExistsError",
    "ReleaseSummary",
    "ReleaseVerifyReport",
    "TableSpec",
    "export_release",
    "import_release",
    "verify_release",
]
