"""The model zoo: the paper's nine models and ours (`lstm`), built and compiled by name.

Training and evaluation turn windows into inputs with `windows_to_xy` (`windows_to_xy_tf` in a tf.data
pipeline); generation with `lstm` uses `step_model` / `advance`. Keras 3 APIs only, so any Keras backend runs them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any, Callable

import keras
import numpy as np

from pianola.errors import PianolaError
from pianola.models import paper
from pianola.models.lstm import LSTMConfig, advance, build_lstm, step_model, zero_states

__all__ = [
    "MODEL_NAMES",
    "LSTMConfig",
    "ModelSpec",
    "advance",
    "build_model",
    "count_params",
    "list_models",
    "model_spec",
    "step_model",
    "windows_to_xy",
    "windows_to_xy_tf",
    "zero_states",
]

INPUT_KINDS = ("scalar", "tokens")


@dataclass(frozen=True)
class ModelSpec:
    """What a zoo model is, what it eats, and how the paper (or we) train it."""

    name: str
    description: str
    # "scalar": x = ids[:, :window, None] / vocab_size, y = the id after the window (paper models).
    # "tokens": x = ids[:, :window], y = ids[:, 1:window + 1], a target at every position (lstm).
    input_kind: str
    # epochs, batch_size, optimizer, learning_rate, window (+ clipnorm for lstm)
    preset: dict[str, Any] = field(default_factory=dict)
    # Table 1's "average loss" in nats (validation); None for ours.
    paper_loss: float | None = None


def _paper(
    name: str, description: str, epochs: int, loss: float, optimizer: str = "rmsprop", batch_size: int = 128
) -> ModelSpec:
    """A paper model's spec; learning rates are Keras's defaults, as the paper sets none."""
    learning_rate = {"rmsprop": 1e-3, "adam": 1e-3, "sgd": 1e-2}[optimizer]
    preset = dict(epochs=epochs, batch_size=batch_size, optimizer=optimizer, learning_rate=learning_rate, window=100)
    return ModelSpec(name, description, "scalar", preset, loss)


# Epochs are Table 1's column (what was trained); the text disagrees for Model 2 (16, then "around
# epoch 50") and Model 3 ("around 50"; Table 1 says 18). Model 2b: the text says SGD, then repeats
# Model 2's "Rmsprop" sentence; we take SGD, the change the section is about, with batch 64.
_SPECS = {
    spec.name: spec
    for spec in [
        _paper("paper-0", "BiLSTM 512 (rec. dropout) -> LSTM 512 -> BN -> Dense 256 ReLU -> BN -> Dropout", 50, 5.402),
        _paper("paper-0b", "BiLSTM 512 -> LSTM 512 x2 -> Dropout -> Dense 256 ReLU -> BN -> Dropout", 20, 6.220),
        _paper("paper-1", "LSTM 512 x3 -> Dropout -> Dense 256 ReLU -> BN -> Dropout", 90, 4.803),
        _paper("paper-1b", "LSTM 256 -> Dropout -> LSTM 512 -> Dropout -> Dense 256 -> Dropout", 18, 4.823),
        _paper("paper-1c", "LSTM 256 -> Dropout -> LSTM 512 -> Dropout -> LSTM 256 -> Dense 256 -> Dropout 0.5", 23, 5.67),
        _paper("paper-2", "LSTM 512 -> Dropout -> LSTM 512 -> Flatten", 50, 4.723),
        _paper("paper-2b", "BiLSTM 512 -> Dropout -> LSTM 512 -> Flatten; SGD, batch 64", 50, 4.824, "sgd", 64),
        _paper("paper-3", "BiLSTM 512 -> attention -> Dropout -> LSTM 128 -> Dropout -> Dense 256 ReLU", 18, 4.81, "adam"),
        _paper("paper-3b", "BiLSTM 256 -> attention -> LSTM 128 -> Dropout", 21, 4.712, "adam"),
        # Adam at 2e-3 with the gradient norm clipped at 1: the usual char-RNN recipe for 2-layer LSTMs
        # (clipping guards against exploding gradients through 100 steps). 64 windows x 100 positions
        # = 6,400 targets a step.
        ModelSpec(
            "lstm",
            "ours: embedding -> stacked LSTM, a causal LM predicting every position",
            "tokens",
            dict(epochs=30, batch_size=64, optimizer="adam", learning_rate=2e-3, clipnorm=1.0, window=100),
        ),
    ]
}

_PAPER_BUILDERS: dict[str, Callable[[int, int], keras.Model]] = {
    "paper-0": paper.paper_0,
    "paper-0b": paper.paper_0b,
    "paper-1": paper.paper_1,
    "paper-1b": paper.paper_1b,
    "paper-1c": paper.paper_1c,
    "paper-2": paper.paper_2,
    "paper-2b": paper.paper_2b,
    "paper-3": paper.paper_3,
    "paper-3b": paper.paper_3b,
}

MODEL_NAMES: tuple[str, ...] = tuple(_SPECS)
_LSTM_FIELDS = tuple(f.name for f in dataclasses.fields(LSTMConfig))
_OPTIMIZERS = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}


def model_spec(name: str) -> ModelSpec:
    """The spec of a zoo model, by name."""
    if name not in _SPECS:
        raise PianolaError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    return _SPECS[name]


def _check_overrides(name: str, overrides: dict[str, Any]) -> None:
    """Refuse an override this model does not have, naming the ones it has."""
    allowed = {"optimizer", "learning_rate", "clipnorm"} | (set(_LSTM_FIELDS) if name == "lstm" else set())
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        choices = ", ".join(sorted(allowed))
        raise PianolaError(f"model {name!r} has no setting {', '.join(unknown)}; it takes: {choices}")


def _build(name: str, vocab_size: int, window: int, overrides: dict[str, Any],
           pitches: Sequence[int | None] | None = None) -> keras.Model:
    """The uncompiled model."""
    model_spec(name)
    _check_overrides(name, overrides)
    if vocab_size < 2:
        raise PianolaError(f"vocab_size must be at least 2, got {vocab_size}")
    if window < 1:
        raise PianolaError(f"window must be at least 1, got {window}")
    if name == "lstm":
        config = LSTMConfig(**{k: v for k, v in overrides.items() if k in _LSTM_FIELDS})
        if config.pitch_classes and pitches is None:
            raise PianolaError("pitch_classes needs the tokens' pitches: a tokenizer that has them (timed, remi, roll, paper)")
        return build_lstm(vocab_size, config, pitches)  # takes any T: window is a training setting only
    return _PAPER_BUILDERS[name](vocab_size, window)


def build_model(name: str, vocab_size: int, window: int = 100, *, pitches: Sequence[int | None] | None = None,
                **overrides: Any) -> keras.Model:
    """A zoo model compiled with its optimizer, loss and accuracy; overrides: optimizer, learning_rate,
    clipnorm, and for `lstm` the LSTMConfig fields (embed_dim, units, layers, dropout, pitch_classes, which
    needs `pitches`: each token's MIDI pitch or None)."""
    model = _build(name, vocab_size, window, overrides, pitches)
    preset = model_spec(name).preset | {k: v for k, v in overrides.items() if k not in _LSTM_FIELDS}
    if preset["optimizer"] not in _OPTIMIZERS:
        raise PianolaError(f"unknown optimizer {preset['optimizer']!r}; choose one of: {', '.join(_OPTIMIZERS)}")
    optimizer = _OPTIMIZERS[preset["optimizer"]](learning_rate=preset["learning_rate"], clipnorm=preset.get("clipnorm"))
    # Sparse categorical cross-entropy on integer targets is the paper's categorical cross-entropy on
    # one-hot targets, without the (B, V) one-hot arrays. For `lstm` it averages over all B x T positions.
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    return model


def count_params(name: str, vocab_size: int, window: int = 100) -> int:
    """Number of weights of a zoo model at this vocabulary size."""
    return _build(name, vocab_size, window, {}).count_params()


def list_models(vocab_size: int) -> list[tuple[str, str, int]]:
    """(name, description, parameters) of every zoo model, for `pianola models`."""
    return [(name, _SPECS[name].description, count_params(name, vocab_size)) for name in MODEL_NAMES]


def windows_to_xy(windows: np.ndarray, input_kind: str, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, window + 1) int windows -> (x, y) for a model of this input kind (see ModelSpec)."""
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[1] < 2:
        raise PianolaError(f"expected int windows of shape (batch, window + 1), got shape {windows.shape}")
    if input_kind == "scalar":
        x = (windows[:, :-1, None] / vocab_size).astype("float32")  # (B, T, 1)
        y = windows[:, -1].astype("int32")  # (B,)
    elif input_kind == "tokens":
        x = windows[:, :-1].astype("int32")  # (B, T)
        y = windows[:, 1:].astype("int32")  # (B, T)
    else:
        raise PianolaError(f"unknown input kind {input_kind!r}; expected one of: {', '.join(INPUT_KINDS)}")
    return x, y


def windows_to_xy_tf(windows, input_kind: str, vocab_size: int):
    """`windows_to_xy` in TensorFlow ops, for tf.data pipelines: a (B, window + 1) int tensor -> (x, y) tensors."""
    import tensorflow as tf

    if input_kind == "scalar":
        x = tf.cast(tf.cast(windows[:, :-1, None], tf.float64) / vocab_size, tf.float32)  # (B, T, 1), as NumPy divides
        y = tf.cast(windows[:, -1], tf.int32)  # (B,)
    elif input_kind == "tokens":
        x = tf.cast(windows[:, :-1], tf.int32)  # (B, T)
        y = tf.cast(windows[:, 1:], tf.int32)  # (B, T)
    else:
        raise PianolaError(f"unknown input kind {input_kind!r}; expected one of: {', '.join(INPUT_KINDS)}")
    return x, y
