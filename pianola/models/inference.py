"""A trained model's next-token probabilities: for a batch of windows (every model), or step by step
carrying the LSTM's state in NumPy (the `lstm` model). Evaluation and generation both call here.
"""

from __future__ import annotations

import numpy as np

from pianola.models import advance, zero_states
from pianola.models.lstm import memory_features
from pianola.models.bundle import Bundle


def next_token_probs(bundle: Bundle, windows: np.ndarray) -> np.ndarray:
    """(B, V) probabilities of the token after each (B, window) window of ids."""
    if bundle.input_kind == "tokens":

        step = bundle.step_model()
        probs, _ = advance(step, windows, zero_states(step, len(windows)))
        return probs
    x = (windows[:, :, None] / len(bundle.vocab)).astype("float32")  # (B, T, 1), the paper's scalar input
    return np.asarray(bundle.model.predict_on_batch(x))


class LSTMStepper:
    """The `lstm` model's forward pass for one token, in NumPy, carrying its recurrent state.

    Generation is a long chain of tiny steps, where a framework's per-call overhead costs more
    than the arithmetic; a NumPy step is a few matrix products. The state is a list of tuples of
    (B, ...) arrays: with pitch classes first the memory's (counts,), then (h, c) for every LSTM layer.
    Tested against the Keras model.
    """

    def __init__(self, model) -> None:
        import keras

        names = {layer.name for layer in model.layers}
        self.embedding = np.asarray(model.get_layer("embed").embeddings, dtype=np.float32)  # (V, E)
        self.layers = []
        for layer in model.layers:
            if isinstance(layer, keras.layers.LSTM):
                kernel, recurrent, bias = (np.asarray(w, dtype=np.float32) for w in layer.get_weights())
                # One product per step: [x, h] @ [[kernel], [recurrent]]  -> (B, 4H), gates i, f, c, o.
                self.layers.append((np.concatenate([kernel, recurrent]), bias, layer.units))
        dense = model.get_layer("logits")
        self.out_kernel, self.out_bias = (np.asarray(w, dtype=np.float32) for w in dense.get_weights())
        self.memory = None
        if "pitch_class_of" in names:  # pitch classes (LSTMConfig.pitch_classes): the tables fold together
            table = np.asarray(model.get_layer("pitch_class_of").embeddings, dtype=np.float32)  # (V, 12)
            self.embedding = self.embedding + table @ np.asarray(model.get_layer("embed_pc").kernel, dtype=np.float32)
            pc_kernel, pc_bias = (np.asarray(w, dtype=np.float32) for w in model.get_layer("logits_pc").get_weights())
            spread = np.asarray(model.get_layer("pc_to_tokens").kernel, dtype=np.float32)  # (12, V)
            self.out_kernel = self.out_kernel + pc_kernel @ spread  # (H + M, V)
            self.out_bias = self.out_bias + pc_bias @ spread
            kernel, recurrent = (np.asarray(w, dtype=np.float32) for w in model.get_layer("pc_memory").get_weights())
            self.memory = (table @ kernel, recurrent)  # (V, M): each token's count added; (M, M): the decay

    def zero_state(self, batch: int) -> list[tuple[np.ndarray, ...]]:
        lstms = [(np.zeros((batch, units), np.float32), np.zeros((batch, units), np.float32)) for _, _, units in self.layers]
        if self.memory is None:
            return lstms
        return [(np.zeros((batch, self.memory[1].shape[0]), np.float32),), *lstms]

    def step(self, ids: np.ndarray, state: list[tuple[np.ndarray, ...]]):
        """Feed (B,) ids: (probs of the next token (B, V), the new state)."""
        x = self.embedding[ids]  # (B, E)
        new_state = []
        states = iter(state)
        if self.memory is not None:
            (counts,) = next(states)
            counts = counts @ self.memory[1] + self.memory[0][ids]  # (B, M)
            features = memory_features(counts, np)
            x = np.concatenate([x, features], axis=1)
            new_state.append((counts,))
        for (weights, bias, units), (h, c) in zip(self.layers, states):
            z = np.concatenate([x, h], axis=1) @ weights + bias  # (B, 4H)
            i = _sigmoid(z[:, :units])
            f = _sigmoid(z[:, units : 2 * units])
            g = np.tanh(z[:, 2 * units : 3 * units])
            o = _sigmoid(z[:, 3 * units :])
            c = f * c + i * g  # (B, H)
            h = o * np.tanh(c)  # (B, H)
            new_state.append((h, c))
            x = h
        if self.memory is not None:
            x = np.concatenate([x, features], axis=1)
        logits = x @ self.out_kernel + self.out_bias  # (B, V)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True), new_state

    def run(self, primers: np.ndarray):
        """Feed (B, T) primers: (probs after the last token, state)."""
        state = self.zero_state(len(primers))
        probs = None
        for t in range(primers.shape[1]):
            probs, state = self.step(primers[:, t], state)
        return probs, state


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # = 1 / (1 + e^-x), without overflow
