"""Read params.yaml, the single source of every stage's settings.

DVC tracks each stage's section of the same file, so the CLI and `dvc repro` agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEFAULT_PARAMS = Path("params.yaml")


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """All sections of params.yaml, or {} where the file does not exist (library use)."""
    path = Path(path)
    if not path.exists():
        return {}
    with open(path) as f:
        params = yaml.safe_load(f) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping of stage sections, got {type(params).__name__}")
    return params


def section(name: str, path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """One stage's section of params.yaml ({} where absent)."""
    return dict(load_params(path).get(name) or {})
