"""The `roll-lstm` model: an LSTM over a serialised piano roll whose frame likelihood is exact.

A piece is written frame by frame: each frame's sounding keys from low to high, then an
end-of-frame token (the serialisation of Walder 2016). With `keys` keys (88 for the piano):

    ids 0 .. keys-1   key k (MIDI pitch 21 + k on a piano)
    id  keys          end of frame (EOF)
    id  keys + 1      start of piece (BOS): an input only, never predicted

On top of a plain token LSTM:

- **The grammar.** After key k, only a higher key or EOF can follow (keys ascend within a frame);
  after EOF or BOS, anything can. The logits of the other tokens are masked before the softmax, so
  each step is a distribution over the continuations that exist, every path ends within keys + 1
  steps, and the probabilities of all frames sum to 1: the NLL is an exact likelihood, not a bound.
- **The context of the token being written**, given at every position (`context` input, built by
  `pianola.benchmark.likelihood.Serialised.context`): per key, the channels of `CHANNELS` (the
  frame before, the frame before that, a decayed history of all earlier frames, the keys already
  written in this frame, the key just written), then the frame's grid position (its index modulo
  16, one-hot). Whether a key sounded a frame ago is the best single clue to whether it sounds now
  (held notes); the grid position tells strong beats from weak ones. The context reaches the LSTM
  (through a projection) and the head, so the model need not learn to remember any of it.
- **A relative head** (`RelativeHead`): the same small convolution reads every key's
  neighbourhood (an octave each way) in those channels, and the LSTM's state weighs its filters
  into a logit per key. What the convolution learns ("a third above the key just written", "the
  key held a frame ago") holds in every key, as music does under transposition (the idea of
  Johnson 2017's tied parallel networks, here at the cost of one convolution).
- **Members** (`members` > 1): that many networks of the same shape, trained independently, whose
  next-token distributions are averaged (`MemberMixture`). Each member's distribution is normalised
  over the same allowed tokens, so the average is too: the mixture's frame likelihood is as exact
  as a single network's.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers, ops

PIANO_KEYS = 88
GRID = 16  # frame positions told apart: index modulo 16 (two 4/4 bars of eighths, four of quarters)
# The per-key channels of the context, in their order within a key (feature index key * len(CHANNELS) + channel).
CHANNELS = ("previous", "before_previous", "history", "so_far", "last")
HISTORY_DECAY = 0.8  # per frame: the history channel weighs the frame j frames back by (1 - d) * d**(j - 1)
MASKED = -1e9  # a masked logit: exp(MASKED - max) is exactly 0 in float32


def end_of_frame(keys: int) -> int:
    return keys


def start_of_piece(keys: int) -> int:
    return keys + 1


def context_width(keys: int) -> int:
    """Features per position of the `context` input: `CHANNELS` for each key (key-major), then the grid position."""
    return keys * len(CHANNELS) + GRID


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


@keras.saving.register_keras_serializable(package="pianola")
class RelativeHead(layers.Layer):
    """[context (B, T, C), hidden (B, T, H)] -> logits (B, T, keys + 1), EOF's always 0.

    A convolution over the keys of the context's per-key channels gives `filters` features per key,
    the same function of a key's neighbourhood wherever the key is; `hidden` weighs them into one
    logit per key.
    """

    def __init__(self, keys: int, filters: int, width: int, **kwargs):
        super().__init__(**kwargs)
        self.keys, self.filters, self.width = keys, filters, width
        self.conv = layers.Conv2D(filters, (1, width), padding="same", activation="relu", name="conv",
                                  dtype=self.dtype_policy)
        self.gate = layers.Dense(filters, name="gate", dtype=self.dtype_policy)

    def build(self, context_shape, hidden_shape):
        self.conv.build((None, None, self.keys, len(CHANNELS)))
        self.gate.build(hidden_shape)

    def call(self, context, hidden):
        shape = ops.shape(context)
        planes = ops.reshape(context[..., : self.keys * len(CHANNELS)], (shape[0], shape[1], self.keys, len(CHANNELS)))
        features = self.conv(ops.cast(planes, self.compute_dtype))  # (B, T, K, F)
        per_key = ops.einsum("btkf,btf->btk", features, self.gate(hidden))  # (B, T, K)
        return ops.pad(per_key, [[0, 0], [0, 0], [0, 1]])  # nothing for EOF

    def get_config(self) -> dict:
        return {**super().get_config(), "keys": self.keys, "filters": self.filters, "width": self.width}


@dataclass(frozen=True)
class RollLSTMConfig:
    """Sizes of the `roll-lstm` model (`relative_filters` 0: no relative head)."""

    keys: int = PIANO_KEYS
    embed_dim: int = 64
    context_dim: int = 128
    units: int = 384
    layers: int = 2
    dropout: float = 0.3
    relative_filters: int = 32
    relative_width: int = 25
    members: int = 1  # networks whose next-token distributions are averaged (each trained on its own)


@keras.saving.register_keras_serializable(package="pianola")
class MemberMixture(layers.Layer):
    """[masked logits of each member (B, T, V)] -> the log of the mean of their softmaxes (B, T, V).

    Log-probabilities, already normalised: a softmax of them gives them back, so scoring treats them as logits.
    """

    def call(self, logits):
        each = ops.stack([ops.log_softmax(ops.cast(member, "float32"), axis=-1) for member in logits])
        return ops.logsumexp(each, axis=0) - math.log(len(logits))


def member_prefix(member: int, members: int) -> str:
    """The prefix of a member's layer names: none for a single network (the names of earlier models)."""
    return "" if members == 1 else f"m{member}_"


def _member_logits(get, tokens, context, n_lstms: int, relative: bool, lstm_states=None):
    """One member's graph from its layers (`get(name)`), with its LSTMs started from `lstm_states`
    ([h_0, c_0, h_1, c_1, ...]; None: zeros). -> (masked logits, the LSTMs' final states)."""
    x = get("with_context")([get("embed")(tokens), get("context_in")(context)])
    states = []
    for i in range(n_lstms):
        x = get(f"dropout_{i}")(x)
        initial = None if lstm_states is None else lstm_states[2 * i : 2 * i + 2]
        x, h, c = get(f"lstm_{i}")(x, initial_state=initial)
        states += [h, c]
    hidden = get(f"dropout_{n_lstms}")(x)
    logits = get("logits")(get("head_with_context")([hidden, context]))
    if relative:
        logits = get("with_relative")([logits, get("relative")(context, hidden)])
    return get("grammar")(logits, tokens), states


def _logits(get, tokens, context, members: int, n_lstms: int, relative: bool, lstm_states=None):
    """The whole graph: every member's masked logits, mixed when there are several. -> (output, states)."""
    outputs, states = [], []
    for m in range(members):
        prefix = member_prefix(m, members)
        own = None if lstm_states is None else lstm_states[2 * n_lstms * m : 2 * n_lstms * (m + 1)]
        logits, member_states = _member_logits(
            lambda name, prefix=prefix: get(name if name == "grammar" else prefix + name),  # the grammar is shared
            tokens, context, n_lstms, relative, own)
        outputs.append(logits)
        states += member_states
    return (get("mixture")(outputs) if members > 1 else outputs[0]), states


def build_roll_lstm(config: RollLSTMConfig, precision: str = "float32") -> keras.Model:
    """[tokens (B, T), context (B, T, context_width)] -> masked next-token logits (B, T, keys + 1); any T.

    With `members` > 1, the output is the mixture's log-probabilities (see `MemberMixture`; the members are
    trained one by one as single networks, and their weights copied in: `pianola.benchmark.train`).
    `precision` is a Keras dtype policy: "mixed_bfloat16" trains about twice as fast on CPUs with bfloat16 units
    (weights stay float32, so they load into a float32 model for exact scoring).
    """
    keys = config.keys
    policy = {"dtype": keras.DTypePolicy(precision)}
    made = [FrameGrammar(keys, name="grammar"), MemberMixture(name="mixture")]
    for m in range(config.members):
        p = member_prefix(m, config.members)
        made += [layers.Embedding(keys + 2, config.embed_dim, name=f"{p}embed", **policy),
                 layers.Dense(config.context_dim, name=f"{p}context_in", **policy),
                 layers.Concatenate(name=f"{p}with_context", **policy),
                 layers.Concatenate(name=f"{p}head_with_context", **policy),
                 layers.Dense(keys + 1, name=f"{p}logits", **policy)]
        for i in range(config.layers):
            # return_state is unused by this model; it makes the same layer usable by `stateful_twin`.
            made.append(layers.LSTM(config.units, return_sequences=True, return_state=True, name=f"{p}lstm_{i}", **policy))
        made += [layers.Dropout(config.dropout, name=f"{p}dropout_{i}", **policy) for i in range(config.layers + 1)]
        if config.relative_filters:
            made += [RelativeHead(keys, config.relative_filters, config.relative_width, name=f"{p}relative", **policy),
                     layers.Add(name=f"{p}with_relative", **policy)]
    by_name = {layer.name: layer for layer in made}
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")  # (B, T)
    context = keras.Input(shape=(None, context_width(keys)), dtype="float32", name="context")  # (B, T, C)
    output, _ = _logits(by_name.__getitem__, tokens, context, config.members, config.layers,
                        bool(config.relative_filters))
    return keras.Model([tokens, context], output, name="roll_lstm")


def mixture_of(config: RollLSTMConfig, networks: list[keras.Model]) -> keras.Model:
    """The float32 mixture of `networks` (single networks of `config`'s shape, trained apart), their weights copied in."""
    mixture = build_roll_lstm(dataclasses.replace(config, members=len(networks)))
    for m, network in enumerate(networks):
        for layer in network.layers:
            if layer.weights:
                mixture.get_layer(member_prefix(m, len(networks)) + layer.name).set_weights(layer.get_weights())
    return mixture


def stateful_twin(model: keras.Model) -> keras.Model:
    """The chunk-by-chunk twin of a built `roll-lstm` model, sharing its layers (and so its weights).

    Inputs: [tokens (B, T), context (B, T, C), h_0, c_0, h_1, c_1, ...]; outputs: [logits (B, T, K + 1),
    h_0', c_0', ...]. Feeding a piece chunk after chunk with the states carried over gives the same
    logits as one pass over the whole piece, at a fixed input shape (one compiled function).
    """
    lstms = [layer for layer in model.layers if isinstance(layer, layers.LSTM)]
    if model.name != "roll_lstm" or not lstms:
        raise ValueError(f"stateful_twin needs a model built by build_roll_lstm, got {model.name!r}")
    members = sum(isinstance(layer, layers.Embedding) for layer in model.layers)
    keys = model.get_layer("grammar").keys
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    context = keras.Input(shape=(None, context_width(keys)), dtype="float32", name="context")
    states_in = []
    for lstm in lstms:
        states_in += [keras.Input(shape=(lstm.units,), name=f"{lstm.name}_h"),
                      keras.Input(shape=(lstm.units,), name=f"{lstm.name}_c")]
    relative = any(isinstance(layer, RelativeHead) for layer in model.layers)
    logits, states_out = _logits(model.get_layer, tokens, context, members, len(lstms) // members, relative,
                                 lstm_states=states_in)
    return keras.Model([tokens, context, *states_in], [logits, *states_out], name="roll_lstm_stateful")
