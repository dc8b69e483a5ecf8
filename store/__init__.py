"""drp store: the embedded repository of a survey's data products.

``Repo`` is the entry point; the data classes (``Exposure``, PSF models,
``PhotoCalib``) describe what image datasets hold.  Heavy dependencies
(astropy) are imported only when an image is read or written.
"""

from .calib import ApCorrMap, ChebyshevField, PhotoCalib
from .errors import (
    ChecksumMismatchError,
    CollectionError,
    ConflictingDefinitionError,
    DataIdError,
    DatasetExistsError,
    DatasetNotFoundError,
    DatasetTypeError,
    DrpError,
    FormatError,
    InvalidQueryError,
    NoWorkFound,
    ReadOnlyError,
    RegistryLockedError,
    RepositoryNotFoundError,
    UnsupportedConstructError,
)
from .exposure import DetectorInfo, Exposure, VisitInfo
from .geom import Box
from .psf import GaussianPsf, GridPsf, PixelBasisPsf, Psf
from .refs import DatasetQueryResult, DatasetRef, DatasetType
from .repo import Repo, VerifyReport
from .sphgeom import Circle, ConvexPolygon

__all__ = [
    "ApCorrMap", "Box", "ChebyshevField", "ChecksumMismatchError", "Circle", "CollectionError",
    "ConflictingDefinitionError", "ConvexPolygon", "DataIdError", "DatasetExistsError",
    "DatasetNotFoundError", "DatasetQueryResult", "DatasetRef", "DatasetType", "DatasetTypeError",
    "DetectorInfo", "DrpError", "Exposure", "FormatError", "GaussianPsf", "GridPsf",
    "InvalidQueryError", "NoWorkFound", "PhotoCalib", "PixelBasisPsf", "Psf", "ReadOnlyError",
    "RegistryLockedError", "Repo", "RepositoryNotFoundError", "UnsupportedConstructError",
    "VerifyReport", "VisitInfo",
]
