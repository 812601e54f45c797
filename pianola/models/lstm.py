"""Our model: an embedding + stacked-LSTM causal language model, and its step-by-step twin for generation.

Trained on every position of a window (T targets per pass instead of the paper's one); the step
model shares its weights and carries the recurrent states, so generating a token costs the same at
step 10 as at step 10,000.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import layers


@dataclass(frozen=True)
class LSTMConfig:
    """Sizes of the `lstm` model.

    Defaults for a ~300-token vocabulary and a ~150k-token corpus on a 2-core CPU: 2 x 384 units is
    ~2.1M parameters (~14 per training token, which dropout 0.3 keeps from memorising; 3 x 512 is
    ~5.5M and mostly memorises), and a 128-wide embedding is ample for ~300 symbols.
    """

    embed_dim: int = 128
    units: int = 384
    layers: int = 2
    # On the non-recurrent connections only (embedding -> LSTM -> LSTM -> head): recurrent_dropout
    # would rule out the fused cuDNN kernel and is several times slower.
    dropout: float = 0.3
    # Pitch classes: a token's pitch class adds a learned vector to its embedding; the LSTMs and the head also
    # read decayed histograms of the pitch classes struck so far (PITCH_CLASS_DECAYS); and the head adds 12
    # pitch-class logits to every token of that class. Without them the model learns register but not key:
    # its pitch-class predictions stay near uniform and its pieces wander chromatically (README, "Music").
    # Needs each token's pitch (Tokenizer.pitch).
    pitch_classes: bool = False


# The pitch-class memory's decay per token: a short (about 10 tokens) and a long (about 100 tokens) histogram.
PITCH_CLASS_DECAYS = (0.9, 0.99)
_MEMORY = 12 * len(PITCH_CLASS_DECAYS)


def pitch_class_table(pitches: Sequence[int | None]) -> np.ndarray:
    """(V, 12) one-hot pitch class of each token, a row of zeros where the token strikes no single pitch."""
    table = np.zeros((len(pitches), 12), dtype=np.float32)
    for row, pitch in enumerate(pitches):
        if pitch is not None:
            table[row, pitch % 12] = 1.0
    return table


def memory_weights() -> tuple[np.ndarray, np.ndarray]:
    """The fixed (kernel, recurrent kernel) of the pitch-class memory: counts_t = counts_{t-1} @ R + onehot_t @ K."""
    kernel = np.tile(np.eye(12, dtype=np.float32), len(PITCH_CLASS_DECAYS))  # (12, M): each histogram counts
    recurrent = np.diag(np.repeat(np.array(PITCH_CLASS_DECAYS, dtype=np.float32), 12))  # (M, M): and decays
    return kernel, recurrent


def memory_features(counts, ops: Any = keras.ops):
    """Decayed counts (..., M) -> each histogram normalised to sum 1 (all zeros before the first note), with
    `ops` keras.ops (in the model) or numpy (the NumPy stepper)."""
    blocks = [counts[..., 12 * i : 12 * (i + 1)] for i in range(len(PITCH_CLASS_DECAYS))]
    return ops.concatenate([b / (ops.sum(b, axis=-1, keepdims=True) + 1e-6) for b in blocks], axis=-1)


def build_lstm(vocab_size: int, config: LSTMConfig, pitches: Sequence[int | None] | None = None) -> keras.Model:
    """Token ids (B, T) -> next-token probabilities at every position (B, T, V); any T. `pitches`: each
    token's MIDI pitch or None (`Tokenizer.pitch`), needed by `config.pitch_classes`."""
    named = {
        "embed": layers.Embedding(vocab_size, config.embed_dim, name="embed"),
        "logits": layers.Dense(vocab_size, name="logits"),
        "probs": layers.Activation("softmax", dtype="float32", name="probs"),
    }
    if config.pitch_classes:
        if pitches is None or len(pitches) != vocab_size:
            raise ValueError(f"pitch_classes needs the pitch of each of the {vocab_size} tokens")
        named |= {
            # Fixed tables and the fixed linear recurrence of the memory (set below, saved with the weights);
            # the learned pitch-class weights.
            "pitch_class_of": layers.Embedding(vocab_size, 12, trainable=False, name="pitch_class_of"),
            "pc_memory": layers.SimpleRNN(_MEMORY, activation="linear", use_bias=False, trainable=False,
                                          return_sequences=True, return_state=True, name="pc_memory"),
            "embed_pc": layers.Dense(config.embed_dim, use_bias=False, name="embed_pc"),
            "logits_pc": layers.Dense(12, name="logits_pc"),
            "pc_to_tokens": layers.Dense(vocab_size, use_bias=False, trainable=False, name="pc_to_tokens"),
        }
    layer = named.get
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")  # (B, T)
    x, memory, _ = _embedded(layer, tokens)  # (B, T, E [+ M]), (B, T, M) or None
    for i in range(config.layers):
        x = layers.Dropout(config.dropout, name=f"dropout_{i}")(x)
        # return_state is unused here; it makes the same layer usable by step_model.
        x, _, _ = layers.LSTM(config.units, return_sequences=True, return_state=True, name=f"lstm_{i}")(x)  # (B, T, H)
    x = layers.Dropout(config.dropout, name=f"dropout_{config.layers}")(x)
    model = keras.Model(tokens, _probs(layer, x, memory), name="lstm")  # (B, T, V)
    if config.pitch_classes:
        table = pitch_class_table(pitches)
        named["pitch_class_of"].set_weights([table])
        named["pc_memory"].set_weights(list(memory_weights()))
        named["pc_to_tokens"].set_weights([table.T])
    return model


def _embedded(layer: Callable[[str], Any], tokens, memory_state=None):
    """Token ids -> (the first LSTM's input, the memory's features, the memory's last counts), by the model's
    layers (`layer(name)`, None where the model has none; the last two are None without pitch classes). The
    memory starts from `memory_state` (B, M) where given, else from zeros."""
    x = layer("embed")(tokens)
    if layer("pitch_class_of") is None:
        return x, None, None
    onehot = layer("pitch_class_of")(tokens)
    x = x + layer("embed_pc")(onehot)
    counts, last = layer("pc_memory")(onehot, initial_state=memory_state)  # (B, T, M), (B, M)
    memory = memory_features(counts)
    return keras.ops.concatenate([x, memory], axis=-1), memory, last


def _probs(layer: Callable[[str], Any], h, memory=None):
    """The last LSTM's output (and the memory's features) -> next-token probabilities, by the model's layers."""
    if memory is not None:
        h = keras.ops.concatenate([h, memory], axis=-1)
    logits = layer("logits")(h)
    if layer("pitch_class_of") is not None:
        logits = logits + layer("pc_to_tokens")(layer("logits_pc")(h))
    return layer("probs")(logits)


def _layer_of(model: keras.Model) -> Callable[[str], Any]:
    names = {layer.name: layer for layer in model.layers}
    return names.get


def step_model(model: keras.Model) -> keras.Model:
    """The generation twin of a built `lstm` model, sharing its layers (and so its weights).

    Inputs: [tokens (B, T), *states]: with pitch classes first the memory's counts (B, M), then h_0, c_0,
    h_1, c_1, ..., each (B, units); T is 1 per generated token, or a whole primer at once. Outputs: [probs
    (B, V) for the token after the last one, *the states after it]. Start from `zero_states`; dropout is left
    out, being identity at inference.
    """
    lstms = [layer for layer in model.layers if isinstance(layer, layers.LSTM)]
    if model.name != "lstm" or not lstms:
        raise ValueError(f"step_model needs a model built by build_model('lstm', ...), got {model.name!r}")
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")  # (B, T)
    layer = _layer_of(model)
    states_in, states_out = [], []
    memory_state = None
    if layer("pc_memory") is not None:
        memory_state = keras.Input(shape=(_MEMORY,), name="pc_memory_counts")  # (B, M)
    x, _, counts = _embedded(layer, tokens, memory_state)  # (B, T, E [+ M]), (B, M)
    if memory_state is not None:
        states_in.append(memory_state)
        states_out.append(counts)
    for lstm in lstms:
        h = keras.Input(shape=(lstm.units,), name=f"{lstm.name}_h")  # (B, H)
        c = keras.Input(shape=(lstm.units,), name=f"{lstm.name}_c")  # (B, H)
        x, h_new, c_new = lstm(x, initial_state=[h, c])  # (B, T, H), (B, H), (B, H)
        states_in += [h, c]
        states_out += [h_new, c_new]
    # The last layer's h is its output at the last position: no slicing needed.
    memory = None if memory_state is None else memory_features(states_out[0])
    probs = _probs(layer, states_out[-2], memory)  # (B, V)
    return keras.Model([tokens, *states_in], [probs, *states_out], name="lstm_step")


def zero_states(step: keras.Model, batch_size: int) -> list[np.ndarray]:
    """The initial states of a step model (see `step_model`): zeros, as the full model starts from."""
    return [np.zeros((batch_size, state.shape[-1]), dtype="float32") for state in step.inputs[1:]]


def advance(step: keras.Model, tokens: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Feed tokens (B, T) from `states`: (probs of the next token (B, V), the states after them)."""
    # predict_on_batch runs a compiled function (traced once per T), several times faster than an
    # eager call for one token.
    probs, *new_states = step.predict_on_batch([np.asarray(tokens, dtype="int32"), *states])
    return probs, new_states
