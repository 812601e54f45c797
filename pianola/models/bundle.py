"""A model bundle: weights + vocabulary + tokenizer config + window + model name, in one folder.

A bundle is loaded whole, so a model can never run with another vocabulary: the vocabulary's
fingerprint is written into bundle.json and checked, with the model's output size, on load.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pianola.data.vocab import Vocabulary
from pianola.errors import PianolaError
from pianola.io import atomic_folder, atomic_write_json
from pianola.models import model_spec, step_model
from pianola.tokenizers import tokenizer_from_config
from pianola.tokenizers.base import Tokenizer

BUNDLE_FILE = "bundle.json"
MODEL_FILE = "model.keras"
VOCAB_FILE = "vocab.json"
PRIMERS_FILE = "primers.npy"
PRIMERS = 64  # training windows a bundle keeps, to prime generation where no corpus is at hand (a service)


@dataclass
class Bundle:
    """A trained model and everything needed to feed it."""

    model: Any  # keras.Model
    vocab: Vocabulary
    tokenizer_config: dict[str, Any]
    window: int
    model_name: str
    input_kind: str
    info: dict[str, Any] = field(default_factory=dict)  # training facts: validation pieces, metrics, run id
    primers: np.ndarray | None = None  # (PRIMERS, window) int32: windows of the training pieces
    _step: Any = field(default=None, init=False, repr=False)

    def step_model(self) -> Any:
        """The step-by-step twin of an `lstm` model (see pianola.models.step_model), built once."""
        if self._step is None:

            self._step = step_model(self.model)
        return self._step

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        return tokenizer_from_config(self.tokenizer_config)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the bundle to `folder`, replacing it whole only once every file is written."""
        folder = Path(folder)
        with atomic_folder(folder) as staging:
            self.model.save(staging / MODEL_FILE)
            self.vocab.save(staging / VOCAB_FILE)
            if self.primers is not None:
                np.save(staging / PRIMERS_FILE, np.asarray(self.primers, dtype=np.int32))
            atomic_write_json(
                staging / BUNDLE_FILE,
                {
                    "model_name": self.model_name,
                    "input_kind": self.input_kind,
                    "window": self.window,
                    "tokenizer": self.tokenizer_config,
                    "vocab_size": len(self.vocab),
                    "vocab_fingerprint": self.vocab.fingerprint,
                    "info": self.info,
                },
            )
        return folder


def training_primers(split, window: int, seed: int, count: int = PRIMERS) -> np.ndarray:
    """(count, window) windows drawn from a split's pieces (an EncodedSplit), for Bundle.primers; fewer when the
    split has fewer windows, none when no piece is longer than `window`."""
    starts = split.window_starts(window - 1)
    if not len(starts):
        return np.zeros((0, window), dtype=np.int32)
    picked = np.random.default_rng(seed).choice(starts, size=min(count, len(starts)), replace=False)
    return split.windows(np.sort(picked), window - 1).astype(np.int32)


def read_bundle_meta(folder: Path) -> dict[str, Any]:
    path = folder / BUNDLE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise PianolaError(f"{folder}: not a pianola bundle (no {BUNDLE_FILE})") from e
    except json.JSONDecodeError as e:
        raise PianolaError(f"{path}: damaged ({e})") from e


def load_bundle(ref: str | os.PathLike) -> Bundle:
    """A bundle from a folder, or from MLflow (`models:/pianola@champion`, `runs:/ID/model`)."""
    folder = resolve_bundle_folder(ref)
    meta = read_bundle_meta(folder)
    vocab = Vocabulary.load(folder / VOCAB_FILE)
    if vocab.fingerprint != meta.get("vocab_fingerprint"):
        raise PianolaError(
            f"{folder}: its vocabulary is not the one the model was trained with "
            f"(fingerprint {vocab.fingerprint[:12]} != {str(meta.get('vocab_fingerprint'))[:12]})"
        )
    import keras

    try:
        model = keras.saving.load_model(folder / MODEL_FILE)
    except (OSError, ValueError) as e:
        raise PianolaError(f"{folder / MODEL_FILE}: cannot load the model ({e})") from e
    primers = None
    if (folder / PRIMERS_FILE).exists():
        try:
            primers = np.load(folder / PRIMERS_FILE)
        except (OSError, ValueError) as e:
            raise PianolaError(f"{folder / PRIMERS_FILE}: damaged ({e})") from e
        if primers.ndim != 2 or primers.shape[1] != int(meta["window"]) or primers.size and (
                primers.min() < 0 or primers.max() >= len(vocab)):
            raise PianolaError(f"{folder / PRIMERS_FILE}: not windows of {meta['window']} ids of the bundle's vocabulary")
    outputs = model.outputs[0].shape[-1]
    if outputs != len(vocab):
        raise PianolaError(f"{folder}: the model predicts {outputs} tokens but the vocabulary has {len(vocab)}")
    return Bundle(
        model=model,
        vocab=vocab,
        tokenizer_config=meta["tokenizer"],
        window=int(meta["window"]),
        model_name=meta["model_name"],
        input_kind=model_spec(meta["model_name"]).input_kind,
        info=meta.get("info", {}),
        primers=primers,
    )


def resolve_bundle_folder(ref: str | os.PathLike) -> Path:
    """A local folder holding bundle.json, downloading it from MLflow for a `models:/` or `runs:/` URI."""
    text = str(ref)
    if text.startswith(("models:/", "runs:/")):
        from pianola.tracking import download_bundle

        return download_bundle(text)
    folder = Path(ref)
    if not folder.is_dir():
        raise PianolaError(f"{folder}: no such bundle folder (or give an MLflow URI such as models:/pianola@champion)")
    return folder
