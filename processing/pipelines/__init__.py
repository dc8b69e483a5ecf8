"""Pipeline definitions (Python, not YAML: tasks are classes, configs are dataclasses).

``get_pipeline("drp")`` returns the data-release pipeline; a path to a Python
file defining ``PIPELINE`` loads a user's own.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from store.errors import DrpError

__all__ = ["get_pipeline", "pipeline_names"]

_BUILTIN = {"drp": "processing.pipelines.drp"}


def pipeline_names() -> list[str]:
    """Names of the built-in pipelines."""
    return sorted(_BUILTIN)


def get_pipeline(name: str):
    """A built-in pipeline by name, or the ``PIPELINE`` of a Python file."""
    if name in _BUILTIN:
        module = importlib.import_module(_BUILTIN[name])
        return module.PIPELINE
    path = Path(name)
    if path.suffix == ".py" and path.exists():
        spec = importlib.util.spec_from_file_location(f"drp_user_pipeline_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not hasattr(module, "PIPELINE"):
            raise DrpError(f"{path} does not define PIPELINE")
        return module.PIPELINE
    raise DrpError(f"unknown pipeline {name!r}; built-in pipelines: {', '.join(pipeline_names())}"
                   " (or give a .py file defining PIPELINE)")
