"""Read params.yaml, the single source of every stage's settings.

DVC tracks each stage's section of the same file, so the CLI and `dvc repro` agree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pianola.errors import PianolaError

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


@dataclass(frozen=True)
class Setting:
    """What one params.yaml key accepts, said the way an error message says it."""

    kind: type | tuple[type, ...]
    expected: str  # "an integer >= 2"
    check: Callable[[Any], bool] = lambda value: True


def _int(low: int | None = None) -> Setting:
    return Setting(int, "an integer" + (f" >= {low}" if low is not None else ""), lambda v: low is None or v >= low)


def _number(low: float, high: float | None = None, *, open_low: bool = True) -> Setting:
    above = f"> {low:g}" if open_low else f">= {low:g}"
    said = f"a number {above}" + (f" and <= {high:g}" if high is not None else "")
    return Setting((int, float), said, lambda v: (v > low if open_low else v >= low) and (high is None or v <= high))


TEXT = Setting(str, "a path or text")
NAME = Setting(str, "a name")  # one of a list its command knows: see check_params' `choices`
OPTIONAL_TEXT = Setting((str, type(None)), "a path, or null")
FLAGS = Setting(dict, "a mapping of switch names to true/false", lambda v: all(isinstance(x, bool) for x in v.values()))
NAMES = Setting(list, "a non-empty list of names", lambda v: bool(v) and all(isinstance(x, str) for x in v))
SCHEMA: dict[str, dict[str, Setting]] = {
    "ingest": {"source": TEXT, "out": TEXT, "max_bytes": _int(1), "limit": _int(0)},
    "tokenize": {"tokenizer": NAME, "out": TEXT, "steps_per_quarter": _int(1), "frames_per_quarter": _int(1)},
    "corpus_plots": {"out": TEXT},
    "sequences": {"out": TEXT, "window": _int(2), "valid_fraction": _number(0.0, 1.0), "seed": _int()},
    "train": {"model": NAME, "preset": NAME, "out": TEXT, "seed": _int()},
    "evaluate": {"out": TEXT, "curves": TEXT},
    "generate": {"n": _int(1), "length": _int(1), "strategy": NAME, "temperature": _number(0.0), "top_k": _int(1),
                 "top_p": _number(0.0, 1.0), "repetition_penalty": _number(1.0, open_low=False), "seed": _int(),
                 "tempo": _number(0.0), "out": TEXT, "flags": FLAGS, "metrics": TEXT},
    "monitor": {"reference": TEXT, "current": TEXT, "threshold": _number(0.0), "features": NAMES,
                "out": OPTIONAL_TEXT, "served": OPTIONAL_TEXT},
}


def check_params(path: str | Path = DEFAULT_PARAMS, choices: Mapping[str, Sequence[str]] | None = None) -> None:
    """Raise a PianolaError naming the first wrong key of params.yaml and what it accepts: an unknown section or
    key, a wrong type, a value out of range, or a name not among `choices` ("tokenize.tokenizer" -> the
    tokenizers; each command passes the lists it knows, so that checking stays cheap)."""
    path = Path(path)
    try:
        params = load_params(path)
    except (yaml.YAMLError, ValueError) as e:
        raise PianolaError(f"{path}: not valid YAML of stage sections ({str(e).splitlines()[0]})") from None
    for name, given in params.items():
        if name not in SCHEMA:
            raise PianolaError(f"{path}: unknown section {name!r}; the sections are {', '.join(SCHEMA)}")
        if not isinstance(given, dict):
            raise PianolaError(f"{path}: {name} must be a mapping of settings, got {given!r}")
        for key, value in given.items():
            setting, where = SCHEMA[name].get(key), f"{path}: {name}.{key}"
            if setting is None:
                raise PianolaError(f"{where}: unknown setting; {name} has {', '.join(SCHEMA[name])}")
            kinds = setting.kind if isinstance(setting.kind, tuple) else (setting.kind,)
            if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds) or not setting.check(value):
                raise PianolaError(f"{where}: expected {setting.expected}, got {value!r}")  # (YAML's yes is no number)
            known = (choices or {}).get(f"{name}.{key}")
            if known is not None and value not in known:
                raise PianolaError(f"{where}: {value!r} is not one of {', '.join(known)}")
