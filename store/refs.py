"""Dataset types, data IDs and dataset references."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from .dimensions import DIMENSION_ORDER, ELEMENTS, KEY_TYPES, canonical_order
from .errors import DataIdError, DatasetTypeError

__all__ = [
    "DatasetQueryResult",
    "DatasetRef",
    "DatasetType",
    "data_id_key",
    "normalize_data_id",
]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_RESERVED = set(ELEMENTS) | {
    "dataset", "dataset_type", "collection", "collection_chain", "registry_meta", "migration",
    "default_dataset", "column_meta", "quantum",
}


@dataclass(frozen=True)
class DatasetType:
    """A kind of dataset: name, dimensions of its data IDs, storage class.

    Parameters
    ----------
    name : str
        Lower-case identifier, e.g. ``post_isr_image``.
    dimensions : tuple of str
        Required data-ID keys, in canonical order.
    storage_class : str
        Key of :data:`store.formats.STORAGE_CLASSES`.
    """

    name: str
    dimensions: tuple[str, ...]
    storage_class: str

    def __post_init__(self):
        if not _NAME.match(self.name):
            raise DatasetTypeError(
                f"dataset type name {self.name!r} must be lower-case letters, digits and _"
            )
        if self.name in _RESERVED:
            raise DatasetTypeError(f"dataset type name {self.name!r} is reserved by the registry")
        try:
            object.__setattr__(self, "dimensions", canonical_order(self.dimensions))
        except KeyError as err:
            raise DatasetTypeError(
                f"dataset type {self.name!r}: unknown dimension(s) {err.args[0]}; known: "
                f"{', '.join(DIMENSION_ORDER)}"
            ) from None

    @property
    def sql_table(self) -> str:
        """Name of the table holding all rows of this type (all runs)."""
        return f"ds_{self.name}"


def _cast(key: str, value: Any) -> Any:
    if value is None:
        raise DataIdError(f"data ID value for {key!r} is None")
    kind = KEY_TYPES[key]
    try:
        if kind in ("INTEGER", "BIGINT"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        return str(value)
    except (TypeError, ValueError):
        raise DataIdError(f"data ID value {value!r} for {key!r} is not a valid {kind}") from None


def normalize_data_id(dataset_type: DatasetType, data_id: Mapping[str, Any] | None = None,
                      **kwargs: Any) -> dict[str, Any]:
    """Validate a data ID against a dataset type and return it in canonical form.

    Extra keys naming dimensions outside the type (e.g. ``band`` for a
    per-visit dataset) are allowed and dropped; keys that are not dimensions
    are an error.

    Returns
    -------
    dict
        Keys exactly ``dataset_type.dimensions`` in canonical order, values cast.
    """
    merged = dict(data_id or {})
    merged.update(kwargs)
    unknown = [k for k in merged if k not in KEY_TYPES]
    if unknown:
        raise DataIdError(
            f"unknown data ID key(s) {', '.join(map(repr, unknown))} for {dataset_type.name}; "
            f"dimensions are {', '.join(dataset_type.dimensions)}"
        )
    missing = [k for k in dataset_type.dimensions if k not in merged]
    if missing:
        raise DataIdError(
            f"data ID {dict(merged)} for {dataset_type.name} lacks required key(s) "
            f"{', '.join(missing)}"
        )
    return {k: _cast(k, merged[k]) for k in dataset_type.dimensions}


def data_id_key(data_id: Mapping[str, Any]) -> str:
    """Canonical string of a normalised data ID (unique key in the registry)."""
    return ",".join(f"{k}={v}" for k, v in data_id.items())


@dataclass(frozen=True)
class DatasetRef:
    """A resolved dataset: its identity, type, data ID, run and file."""

    id: uuid.UUID
    dataset_type: str
    data_id: dict[str, Any] = field(hash=False)
    run: str = ""
    path: str = ""
    size: int | None = None
    checksum: str | None = None
    external: bool = False

    def __repr__(self) -> str:
        did = ", ".join(f"{k}={v!r}" for k, v in self.data_id.items())
        return f"DatasetRef({self.dataset_type}, {{{did}}}, run={self.run!r}, id={self.id})"


class DatasetQueryResult(Sequence[DatasetRef]):
    """Query results held as an Arrow table; refs are built on demand.

    Behaves like a sequence of :class:`DatasetRef`; :attr:`table` gives the
    rows (data-ID columns, run, path, checksum...) for vectorised use.
    """

    def __init__(self, table: pa.Table, dimensions: dict[str, tuple[str, ...]]):
        self.table = table
        self._dimensions = dimensions
        self._cols: dict[str, list] | None = None

    def _columns(self) -> dict[str, list]:
        if self._cols is None:
            self._cols = self.table.to_pydict()
        return self._cols

    def __len__(self) -> int:
        return self.table.num_rows

    def _ref(self, i: int) -> DatasetRef:
        c = self._columns()
        dt = c["dataset_type"][i]
        return DatasetRef(
            id=c["id"][i] if isinstance(c["id"][i], uuid.UUID) else uuid.UUID(str(c["id"][i])),
            dataset_type=dt,
            data_id={k: c[k][i] for k in self._dimensions[dt]},
            run=c["run"][i], path=c["path"][i], size=c["size"][i], checksum=c["checksum"][i],
            external=bool(c["external"][i]),
        )

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._ref(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._ref(index)

    def __iter__(self) -> Iterator[DatasetRef]:
        for i in range(len(self)):
            yield self._ref(i)

    def __repr__(self) -> str:
        return f"DatasetQueryResult({len(self)} datasets)"

    def data_ids(self) -> list[dict[str, Any]]:
        """The data IDs of all results."""
        return [r.data_id for r in self]
