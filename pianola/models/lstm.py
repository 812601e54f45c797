"""Our model: an embedding + stacked-LSTM causal language model, and its step-by-step twin for generation.

Trained on every position of a window (T targets per pass instead of the paper's one); the step
model shares its weights and carries the (h, c) states, so generating a token costs the same at
step 10 as at step 10,000.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def build_lstm(vocab_size: int, config: LSTMConfig) -> keras.Model:
    """Token ids (B, T) -> next-token probabilities at every position (B, T, V); any T."""
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")  # (B, T)
    x = layers.Embedding(vocab_size, config.embed_dim, name="embed")(tokens)  # (B, T, E)
    for i in range(config.layers):
        x = layers.Dropout(config.dropout, name=f"dropout_{i}")(x)
        # return_state is unused here; it makes the same layer usable by step_model.
        x, _, _ = layers.LSTM(config.units, return_sequences=True, return_state=True, name=f"lstm_{i}")(x)  # (B, T, H)
    x = layers.Dropout(config.dropout, name=f"dropout_{config.layers}")(x)
    x = layers.Dense(vocab_size, name="logits")(x)  # (B, T, V)
    probs = layers.Activation("softmax", dtype="float32", name="probs")(x)
    return keras.Model(tokens, probs, name="lstm")


def step_model(model: keras.Model) -> keras.Model:
    """The generation twin of a built `lstm` model, sharing its layers (and so its weights).

    Inputs: [tokens (B, T), h_0, c_0, h_1, c_1, ...], each state (B, units); T is 1 per generated
    token, or a whole primer at once. Outputs: [probs (B, V) for the token after the last one,
    h_0', c_0', ...]. Start from `zero_states`; dropout is left out, being identity at inference.
    """
    lstms = [layer for layer in model.layers if isinstance(layer, layers.LSTM)]
    if model.name != "lstm" or not lstms:
        raise ValueError(f"step_model needs a model built by build_model('lstm', ...), got {model.name!r}")
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")  # (B, T)
    x = model.get_layer("embed")(tokens)  # (B, T, E)
    states_in, states_out = [], []
    for lstm in lstms:
        h = keras.Input(shape=(lstm.units,), name=f"{lstm.name}_h")  # (B, H)
        c = keras.Input(shape=(lstm.units,), name=f"{lstm.name}_c")  # (B, H)
        x, h_new, c_new = lstm(x, initial_state=[h, c])  # (B, T, H), (B, H), (B, H)
        states_in += [h, c]
        states_out += [h_new, c_new]
    # The last layer's h is its output at the last position: no slicing needed.
    probs = model.get_layer("probs")(model.get_layer("logits")(states_out[-2]))  # (B, V)
    return keras.Model([tokens, *states_in], [probs, *states_out], name="lstm_step")


def zero_states(step: keras.Model, batch_size: int) -> list[np.ndarray]:
    """The initial [h_0, c_0, h_1, c_1, ...] of a step model: zeros, as the full model starts from."""
    return [np.zeros((batch_size, state.shape[-1]), dtype="float32") for state in step.inputs[1:]]


def advance(step: keras.Model, tokens: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Feed tokens (B, T) from `states`: (probs of the next token (B, V), the states after them)."""
    # predict_on_batch runs a compiled function (traced once per T), several times faster than an
    # eager call for one token.
    probs, *new_states = step.predict_on_batch([np.asarray(tokens, dtype="int32"), *states])
    return probs, new_states
