"""The `roll-lstm` model: an LSTM over a serialised piano roll whose frame likelihood is exact.

A piece is written frame by frame: each frame's sounding keys from low to high, then an
end-of-frame token (the serialisation of Walder 2016). With `keys` keys (88 for the piano):

    ids 0 .. keys-1   key k (MIDI pitch 21 + k on a piano)
    id  keys          end of frame (EOF)
    id  keys + 1      start of piece (BOS): an input only, never predicted

Two things on top of a plain token LSTM:

- **The grammar.** After key k, only a higher key or EOF can follow (keys ascend within a frame);
  after EOF or BOS, anything can. The logits of the other tokens are masked before the softmax, so
  each step is a distribution over the continuations that exist, every path ends within keys + 1
  steps, and the probabilities of all frames sum to 1: the NLL is an exact likelihood, not a bound.
- **The context of the frame being written.** Every position also sees the keys of the frame before
  it and where that frame falls in the piece's grid (its index modulo 16, one-hot), at the LSTM's
  input and beside its output: whether a key sounded a frame ago is the best single clue to whether
  it sounds now (held notes), the grid position tells strong beats from weak ones, and a direct path
  to the logits lets the model learn both at once instead of through its memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from keras import layers, ops

PIANO_KEYS = 88
GRID = 16  # frame positions told apart: index modulo 16 (two 4/4 bars of eighths, four of quarters)
MASKED = -1e9  # a masked logit: exp(MASKED - max) is exactly 0 in float32


def end_of_frame(keys: int) -> int:
    return keys


def start_of_piece(keys: int) -> int:
    return keys + 1


def context_width(keys: int) -> int:
    """Features per position of the `context` input: the previous frame's keys, then the grid position."""
    return keys + GRID


def grammar_table(keys: int) -> np.ndarray:
    """(keys + 2, keys + 1) bool: row = the input token, True where the next token may follow it."""
    table = np.ones((keys + 2, keys + 1), dtype=bool)
    for key in range(keys):
        table[key, : key + 1] = False  # the next key must be higher; EOF (the last column) stays allowed
    return table


@keras.saving.register_keras_serializable(package="pianola")
class FrameGrammar(layers.Layer):
    """Masks the logits of tokens that cannot follow the input token (see `grammar_table`)."""

    def __init__(self, keys: int, **kwargs):
        super().__init__(**kwargs)
        self.keys = keys
        self.table = grammar_table(keys)

    def call(self, logits, tokens):
        allowed = ops.take(ops.convert_to_tensor(self.table), tokens, axis=0)  # (B, T, V)
        return ops.where(allowed, ops.cast(logits, "float32"), MASKED)

    def get_config(self) -> dict:
        return {**super().get_config(), "keys": self.keys}


@dataclass(frozen=True)
class RollLSTMConfig:
    """Sizes of the `roll-lstm` model."""

    keys: int = PIANO_KEYS
    embed_dim: int = 64
    units: int = 384
    layers: int = 2
    dropout: float = 0.3


def build_roll_lstm(config: RollLSTMConfig, precision: str = "float32") -> keras.Model:
    """[tokens (B, T), context (B, T, keys + GRID)] -> masked next-token logits (B, T, keys + 1); any T.

    `precision` is a Keras dtype policy: "mixed_bfloat16" trains about twice as fast on CPUs with
    bfloat16 units (weights stay float32, so they load into a float32 model for exact scoring).
    """
    keys = config.keys
    layers_dtype = {"dtype": keras.DTypePolicy(precision)}
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")  # (B, T)
    context = keras.Input(shape=(None, context_width(keys)), dtype="float32", name="context")  # (B, T, C)
    x = layers.Embedding(keys + 2, config.embed_dim, name="embed", **layers_dtype)(tokens)  # (B, T, E)
    x = layers.Concatenate(name="with_context", **layers_dtype)([x, context])  # (B, T, E + C)
    for i in range(config.layers):
        x = layers.Dropout(config.dropout, name=f"dropout_{i}", **layers_dtype)(x)
        # return_state is unused here; it makes the same layer usable by `stateful_twin`.
        x, _, _ = layers.LSTM(config.units, return_sequences=True, return_state=True, name=f"lstm_{i}",
                              **layers_dtype)(x)  # (B, T, H)
    x = layers.Dropout(config.dropout, name=f"dropout_{config.layers}", **layers_dtype)(x)
    x = layers.Concatenate(name="head_with_context", **layers_dtype)([x, context])  # (B, T, H + C)
    logits = layers.Dense(keys + 1, name="logits", **layers_dtype)(x)  # (B, T, K + 1)
    masked = FrameGrammar(keys, name="grammar")(logits, tokens)
    return keras.Model([tokens, context], masked, name="roll_lstm")


def stateful_twin(model: keras.Model) -> keras.Model:
    """The chunk-by-chunk twin of a built `roll-lstm` model, sharing its layers (and so its weights).

    Inputs: [tokens (B, T), context (B, T, C), h_0, c_0, h_1, c_1, ...]; outputs: [logits (B, T, K + 1),
    h_0', c_0', ...]. Feeding a piece chunk after chunk with the states carried over gives the same
    logits as one pass over the whole piece, at a fixed input shape (one compiled function).
    """
    lstms = [layer for layer in model.layers if isinstance(layer, layers.LSTM)]
    if model.name != "roll_lstm" or not lstms:
        raise ValueError(f"stateful_twin needs a model built by build_roll_lstm, got {model.name!r}")
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    keys = model.get_layer("grammar").keys
    context = keras.Input(shape=(None, context_width(keys)), dtype="float32", name="context")
    x = model.get_layer("with_context")([model.get_layer("embed")(tokens), context])
    states_in, states_out = [], []
    for lstm in lstms:
        h = keras.Input(shape=(lstm.units,), name=f"{lstm.name}_h")
        c = keras.Input(shape=(lstm.units,), name=f"{lstm.name}_c")
        x, h_new, c_new = lstm(x, initial_state=[h, c])
        states_in += [h, c]
        states_out += [h_new, c_new]
    x = model.get_layer("head_with_context")([x, context])
    logits = model.get_layer("grammar")(model.get_layer("logits")(x), tokens)
    return keras.Model([tokens, context, *states_in], [logits, *states_out], name="roll_lstm_stateful")
