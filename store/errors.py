"""One exception hierarchy for drp.

Every error a user can cause derives from :class:`DrpError`; each subclass also
inherits the builtin it refines, so ``except LookupError`` keeps working for
callers that do not know about drp.  Messages are one line and name the
offending value, so the CLI can print them as they are.
"""

from __future__ import annotations

__all__ = [
    "ChecksumMismatchError",
    "CollectionError",
    "ConflictingDefinitionError",
    "DataIdError",
    "DatasetExistsError",
    "DatasetNotFoundError",
    "DatasetTypeError",
    "DrpError",
    "FormatError",
    "InvalidQueryError",
    "NoWorkFound",
    "ReadOnlyError",
    "RegistryLockedError",
    "RepositoryNotFoundError",
    "UnsupportedConstructError",
]


class DrpError(Exception):
    """Base class of every error drp raises on purpose."""


class RepositoryNotFoundError(DrpError, FileNotFoundError):
    """The path does not hold a drp repository."""


class RegistryLockedError(DrpError, TimeoutError):
    """Another process held the registry past the retry budget."""


class DatasetTypeError(DrpError, KeyError):
    """Unknown dataset type, or a dataset type used inconsistently."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConflictingDefinitionError(DrpError, ValueError):
    """A definition (dataset type, collection) clashes with an existing one."""


class DataIdError(DrpError, KeyError):
    """A data ID misses a required key, has an unknown key, or names an unknown record."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DatasetNotFoundError(DrpError, LookupError):
    """No dataset matches the requested type, data ID and collections."""


class DatasetExistsError(DrpError, ValueError):
    """A dataset with the same (type, data ID, run) already exists."""


class CollectionError(DrpError, LookupError):
    """Unknown collection, or a collection of the wrong kind."""


class ChecksumMismatchError(DrpError, OSError):
    """A file no longer matches the checksum recorded when it was written."""


class FormatError(DrpError, ValueError):
    """A file is missing, corrupt, or not in the expected format."""


class InvalidQueryError(DrpError, ValueError):
    """Malformed SQL, or a query that cannot be answered."""


class UnsupportedConstructError(InvalidQueryError):
    """An ADQL construct that drp does not translate (named in the message)."""


class ReadOnlyError(DrpError, PermissionError):
    """A write was attempted on a read-only connection."""


class NoWorkFound(DrpError):  # named as in the Rubin middleware
    """A task has nothing to do for this data ID (not a failure)."""
