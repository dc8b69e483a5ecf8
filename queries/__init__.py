"""Named SQL dataset queries: ``queries/*.sql`` files with ``$name`` parameters.

A query file starts with a comment header: free text (the docstring shown by
``drp query --list``) and one ``@param`` line per parameter::

    -- Visits whose PSF FWHM is below a cut.
    -- @param band str            band to select
    -- @param max_fwhm float = 1.7 PSF FWHM cut [arcsec]
    SELECT ... WHERE band = $band AND seeing < $max_fwhm

Values are bound by DuckDB (never formatted into the SQL text); declared types
are checked first, so a wrong type is a one-line error naming the parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["NamedQuery", "Param", "QueryParameterError", "list_queries", "load"]

_DIR = Path(__file__).parent
_PARAM_LINE = re.compile(
    r"^--\s*@param\s+(?P<name>\w+)\s+(?P<type>\w+)(?:\s*=\s*(?P<default>\S+))?\s*(?P<doc>.*)$")
_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


class QueryParameterError(ValueError):
    """A named-query parameter is missing, unknown or of the wrong type."""


@dataclass(frozen=True)
class Param:
    """A declared query parameter."""

    name: str
    type: str
    default: Any = None
    doc: str = ""
    required: bool = True

    def convert(self, value: Any) -> Any:
        """Check/convert a value to the declared type (strings from the CLI are parsed)."""
        if value is None:
            return None
        kind = _TYPES[self.type]
        if kind is bool and isinstance(value, str):
            if value.lower() in ("true", "1", "yes"):
                return True
            if value.lower() in ("false", "0", "no"):
                return False
        elif isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
        elif kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        elif isinstance(value, str) and kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
        raise QueryParameterError(
            f"parameter ${self.name} must be {self.type}, got {value!r} ({type(value).__name__})")


@dataclass(frozen=True)
class NamedQuery:
    """A parsed query file."""

    name: str
    sql: str
    doc: str
    params: dict[str, Param] = field(default_factory=dict)
    path: Path | None = None

    @property
    def summary(self) -> str:
        """First line of the docstring."""
        return self.doc.splitlines()[0] if self.doc else ""

    def bind(self, values: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        """Parameter values for DuckDB: declared defaults, overridden and type-checked.

        Raises
        ------
        QueryParameterError
            Unknown or missing parameters, or values of the wrong type.
        """
        given = dict(values or {})
        given.update(kwargs)
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            raise QueryParameterError(
                f"query {self.name!r} has no parameter(s) {', '.join(unknown)}; "
                f"it takes {', '.join(self.params) or 'none'}")
        out = {}
        for p in self.params.values():
            if p.name in given:
                out[p.name] = p.convert(given[p.name])
            elif p.required:
                raise QueryParameterError(f"query {self.name!r} needs parameter ${p.name} "
                                          f"({p.type}: {p.doc})")
            else:
                out[p.name] = p.default
        used = set(re.findall(r"\$(\w+)", self.sql))
        return {k: v for k, v in out.items() if k in used}


def _parse(name: str, text: str, path: Path | None) -> NamedQuery:
    doc_lines: list[str] = []
    params: dict[str, Param] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("--"):
            if stripped:
                break
            continue
        m = _PARAM_LINE.match(stripped)
        if m:
            kind = m.group("type")
            if kind not in _TYPES:
                raise ValueError(f"{path or name}: unknown parameter type {kind!r}")
            raw = m.group("default")
            if raw is None:
                param = Param(m.group("name"), kind, None, m.group("doc").strip(), True)
            else:
                default = None if raw.lower() == "null" else Param(
                    m.group("name"), kind).convert(raw.strip("'\""))
                param = Param(m.group("name"), kind, default, m.group("doc").strip(), False)
            params[param.name] = param
        else:
            doc_lines.append(stripped[2:].strip())
    doc = "\n".join(doc_lines).strip()
    return NamedQuery(name, text, doc, params, path)


def load(name_or_path: str | Path) -> NamedQuery:
    """Load a named query (``coadd_inputs``) or a query file path.

    Raises
    ------
    FileNotFoundError
        With the list of known query names.
    """
    path = Path(name_or_path)
    if path.suffix != ".sql" or not path.exists():
        path = _DIR / f"{name_or_path}.sql"
    if not path.exists():
        known = ", ".join(q.name for q in list_queries())
        raise FileNotFoundError(f"no query named {str(name_or_path)!r}; known: {known}")
    return _parse(path.stem, path.read_text(), path)


def list_queries() -> list[NamedQuery]:
    """Every query shipped in ``queries/``."""
    return [_parse(p.stem, p.read_text(), p) for p in sorted(_DIR.glob("*.sql"))]
