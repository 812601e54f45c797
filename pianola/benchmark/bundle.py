"""A benchmark model on disk and in MLflow: model.keras + benchmark.json, in one folder.

The folder is logged as a pyfunc model (`likelihood.RollScorer`) whose `predict` scores pieces (frames of MIDI
pitches) with their exact NLL per frame, and registered as `pianola-bench-DATASET`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pianola.errors import PianolaError
from pianola.io import atomic_folder, atomic_write_json

MODEL_FILE = "model.keras"
META_FILE = "benchmark.json"


def registered_name(dataset: str) -> str:
    return f"pianola-bench-{dataset}"


def save_benchmark_model(model, meta: dict[str, Any], folder: str | os.PathLike) -> Path:
    """Write the model and its facts to `folder`, replacing it whole once every file is written."""
    folder = Path(folder)
    with atomic_folder(folder) as staging:
        model.save(staging / MODEL_FILE)
        atomic_write_json(staging / META_FILE, meta)
    return folder


def load_benchmark_model(ref: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """(keras model, benchmark.json) from a folder or an MLflow URI (`models:/pianola-bench-jsb/1`)."""
    text = str(ref)
    if text.startswith(("models:/", "runs:/")):
        from pianola.tracking import download_bundle

        folder = download_bundle(text, marker=META_FILE)
    else:
        folder = Path(ref)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise PianolaError(f"{folder}: not a benchmark model folder (no {META_FILE}); train one with `pianola benchmark train`")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise PianolaError(f"{meta_path}: damaged ({e})") from e
    import keras

    from pianola.models.roll import context_width  # (importing it registers the model's layers)

    try:
        model = keras.saving.load_model(folder / MODEL_FILE)
    except (OSError, ValueError) as e:
        raise PianolaError(f"{folder / MODEL_FILE}: cannot load the model ({e})") from e
    width, expected = model.inputs[1].shape[-1], context_width(model.get_layer("grammar").keys)
    if width != expected:
        raise PianolaError(f"{folder / MODEL_FILE}: made by an earlier pianola (its context has {width} features a "
                           f"position, this version gives {expected}); retrain it with `pianola benchmark train`")
    return model, meta


