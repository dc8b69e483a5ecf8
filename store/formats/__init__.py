"""Storage classes: how each kind of Python object becomes a file and back.

A dataset type names one storage class; the datastore asks the class for the
file extension, a writer (object -> open binary file) and a reader
(path -> object).  Every storage class is declared here, once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import FormatError
from .fits import (
    FitsBundle,
    read_bundle,
    read_exposure,
    read_exposure_info,
    read_image,
    write_bundle,
    write_exposure,
    write_image,
)
from .parquet import as_arrow, read_table, write_table

__all__ = ["STORAGE_CLASSES", "FitsBundle", "StorageClass", "get_storage_class"]


@dataclass(frozen=True)
class StorageClass:
    """How one kind of object is stored.

    Attributes
    ----------
    name : str
        Name used in dataset type definitions.
    extension : str
        File extension including the dot.
    write : callable
        ``write(obj, fileobj)``.
    read : callable
        ``read(path, **parameters)``.
    is_table : bool
        True for tabular types, which also get a SQL table in the registry.
    """

    name: str
    extension: str
    write: Callable[[Any, Any], None]
    read: Callable[..., Any]
    is_table: bool = False


def _write_json(obj: Any, fileobj) -> None:
    fileobj.write(json.dumps(obj, indent=1, sort_keys=True, default=_json_default).encode())


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in JSON")


def _read_json(path, **_) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError) as err:
        raise FormatError(f"{path}: cannot read JSON ({err})") from err


def _write_table(obj, fileobj) -> None:
    write_table(as_arrow(obj), fileobj)


STORAGE_CLASSES: dict[str, StorageClass] = {
    sc.name: sc
    for sc in (
        StorageClass("Exposure", ".fits", write_exposure,
                     lambda path, bbox=None, components=False: (
                         read_exposure_info(path) if components
                         else read_exposure(path, bbox=bbox))),
        StorageClass("Image", ".fits", lambda obj, f: write_image(obj, f),
                     lambda path: read_image(path)),
        StorageClass("FitsBundle", ".fits", write_bundle, lambda path: read_bundle(path)),
        StorageClass("ArrowTable", ".parquet", _write_table,
                     lambda path, columns=None: read_table(path, columns=columns), is_table=True),
        StorageClass("StructuredData", ".json", _write_json, _read_json),
    )
}


def get_storage_class(name: str) -> StorageClass:
    """Look up a storage class by name (one-line error listing the known ones)."""
    try:
        return STORAGE_CLASSES[name]
    except KeyError:
        known = ", ".join(sorted(STORAGE_CLASSES))
        raise FormatError(f"unknown storage class {name!r}; known: {known}") from None
