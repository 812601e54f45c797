"""The paper's nine models (section VI of Rocco, Colangelo, Rosatelli), as the text describes them.

Input: (B, T, 1) floats, token id / vocabulary size. Output: softmax over the vocabulary for the
one token after the window. Where the text is ambiguous the choice is written beside the code.
"""

from __future__ import annotations

import keras
from keras import layers

DROPOUT = 0.3  # the paper's rate wherever it names a Dropout without one


def _inputs(window: int) -> keras.KerasTensor:
    """The paper's scalar input: one float (id / vocab size) per step."""
    return keras.Input(shape=(window, 1), name="notes")  # (B, T, 1)


def _softmax_head(x: keras.KerasTensor, vocab_size: int) -> keras.KerasTensor:
    """Dense over the vocabulary, then softmax (the paper's last two 'layers')."""
    x = layers.Dense(vocab_size, name="logits")(x)  # (B, V)
    return layers.Activation("softmax", dtype="float32", name="probs")(x)


def _self_attention(h: keras.KerasTensor) -> keras.KerasTensor:
    """Scaled dot-product self-attention over the window, no parameters: every step mixes all steps.

    The paper shows no code; its Keras 2 era usually meant keras-self-attention's SeqSelfAttention.
    keras.layers.Attention is plain dot-product, so the query is scaled by 1/sqrt(D) first: unscaled
    dot products of 1024-wide BiLSTM outputs saturate the softmax into attending to itself only.
    """
    q = layers.Rescaling(h.shape[-1] ** -0.5, name="attention_query")(h)  # (B, T, D)
    return layers.Attention(name="attention")([q, h])  # (B, T, D): query, value (= key)


def paper_0(vocab_size: int, window: int) -> keras.Model:
    """Model 0: BiLSTM 512 -> LSTM 512 -> BN -> Dense 256 -> ReLU -> BN -> Dropout -> Dense -> softmax."""
    notes = _inputs(window)
    x = layers.Bidirectional(layers.LSTM(512, return_sequences=True, recurrent_dropout=0.3))(notes)  # (B, T, 1024)
    x = layers.LSTM(512)(x)  # (B, 512)
    x = layers.BatchNormalization()(x)
    x = layers.Dense(256)(x)  # (B, 256)
    x = layers.Activation("relu")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Dropout(DROPOUT)(x)
    return keras.Model(notes, _softmax_head(x, vocab_size), name="paper-0")


def _three_lstms(vocab_size: int, window: int, *, bidirectional: bool, name: str) -> keras.Model:
    """Models 0b and 1: LSTM 512 x3 -> Dropout -> Dense 256 -> ReLU -> BN -> Dropout -> Dense -> softmax.

    The text says Model 1's first LSTM was tried "both Bidirectional and Unidirectional" and shows
    the figure of Model 0b in that section: we read 0b as the bidirectional try, 1 as the other.
    Dense 256 is Model 0's size (the text gives none). No recurrent dropout: the text names it
    for Model 0 only.
    """
    notes = _inputs(window)
    first = layers.LSTM(512, return_sequences=True)
    x = layers.Bidirectional(first)(notes) if bidirectional else first(notes)  # (B, T, 1024) or (B, T, 512)
    x = layers.LSTM(512, return_sequences=True)(x)  # (B, T, 512)
    x = layers.LSTM(512)(x)  # (B, 512)
    x = layers.Dropout(DROPOUT)(x)
    x = layers.Dense(256)(x)  # (B, 256)
    x = layers.Activation("relu")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Dropout(DROPOUT)(x)
    return keras.Model(notes, _softmax_head(x, vocab_size), name=name)


def paper_0b(vocab_size: int, window: int) -> keras.Model:
    """Model 0b: Model 1 with a bidirectional first LSTM."""
    return _three_lstms(vocab_size, window, bidirectional=True, name="paper-0b")


def paper_1(vocab_size: int, window: int) -> keras.Model:
    """Model 1: three unidirectional LSTMs of 512."""
    return _three_lstms(vocab_size, window, bidirectional=False, name="paper-1")


def paper_1b(vocab_size: int, window: int) -> keras.Model:
    """Model 1b: (LSTM 256 -> Dropout) -> (LSTM 512 -> Dropout) -> Dense 256 -> Dropout -> Dense -> softmax.

    "Remove the middle activation": the Dense 256 is linear, as the text says (two stacked linear
    layers, a rank-256 factorisation of one). Block dropouts are 0.3 (the text gives no rate).
    """
    notes = _inputs(window)
    x = layers.LSTM(256, return_sequences=True)(notes)  # (B, T, 256)
    x = layers.Dropout(DROPOUT)(x)
    x = layers.LSTM(512)(x)  # (B, 512)
    x = layers.Dropout(DROPOUT)(x)
    x = layers.Dense(256)(x)  # (B, 256)
    x = layers.Dropout(DROPOUT)(x)
    return keras.Model(notes, _softmax_head(x, vocab_size), name="paper-1b")


def paper_1c(vocab_size: int, window: int) -> keras.Model:
    """Model 1c: Model 1b with a third LSTM of 256 and Dropout 0.5 before the last Dense.

    The Dense 256 stays linear, as in 1b, which 1c extends.
    """
    notes = _inputs(window)
    x = layers.LSTM(256, return_sequences=True)(notes)  # (B, T, 256)
    x = layers.Dropout(DROPOUT)(x)
    x = layers.LSTM(512, return_sequences=True)(x)  # (B, T, 512)
    x = layers.Dropout(DROPOUT)(x)
    x = layers.LSTM(256)(x)  # (B, 256)
    x = layers.Dense(256)(x)  # (B, 256)
    x = layers.Dropout(0.5)(x)
    return keras.Model(notes, _softmax_head(x, vocab_size), name="paper-1c")


def _two_lstms(vocab_size: int, window: int, *, bidirectional: bool, name: str) -> keras.Model:
    """Models 2 and 2b: LSTM 512 -> Dropout -> LSTM 512 -> Flatten -> Dense -> softmax.

    The text ends with the second LSTM's return_sequences "toggled to false", so the Flatten is a
    no-op on (B, 512); it stays because the paper's model has it (it owns no weights).
    """
    notes = _inputs(window)
    first = layers.LSTM(512, return_sequences=True)
    x = layers.Bidirectional(first)(notes) if bidirectional else first(notes)  # (B, T, 1024) or (B, T, 512)
    x = layers.Dropout(DROPOUT)(x)
    x = layers.LSTM(512)(x)  # (B, 512)
    x = layers.Flatten()(x)  # (B, 512)
    return keras.Model(notes, _softmax_head(x, vocab_size), name=name)


def paper_2(vocab_size: int, window: int) -> keras.Model:
    """Model 2: two unidirectional LSTMs of 512."""
    return _two_lstms(vocab_size, window, bidirectional=False, name="paper-2")


def paper_2b(vocab_size: int, window: int) -> keras.Model:
    """Model 2b: Model 2 with a bidirectional first LSTM (trained with SGD, batch 64)."""
    return _two_lstms(vocab_size, window, bidirectional=True, name="paper-2b")


def paper_3(vocab_size: int, window: int) -> keras.Model:
    """Model 3: BiLSTM 512 -> attention -> Dropout -> LSTM 128 -> Dropout -> Dense 256 ReLU -> Dense -> softmax.

    The text gives no BiLSTM size: 512, since 3b is "a smaller model" with 256. The ReLU Dense is
    256, Model 0's size.
    """
    notes = _inputs(window)
    x = layers.Bidirectional(layers.LSTM(512, return_sequences=True))(notes)  # (B, T, 1024)
    x = _self_attention(x)  # (B, T, 1024)
    x = layers.Dropout(DROPOUT)(x)
    x = layers.LSTM(128)(x)  # (B, 128)
    x = layers.Dropout(DROPOUT)(x)
    x = layers.Dense(256, activation="relu")(x)  # (B, 256)
    return keras.Model(notes, _softmax_head(x, vocab_size), name="paper-3")


def paper_3b(vocab_size: int, window: int) -> keras.Model:
    """Model 3b: BiLSTM 256 -> attention -> LSTM 128 -> Dropout -> Dense -> softmax."""
    notes = _inputs(window)
    x = layers.Bidirectional(layers.LSTM(256, return_sequences=True))(notes)  # (B, T, 512)
    x = _self_attention(x)  # (B, T, 512)
    x = layers.LSTM(128)(x)  # (B, 128)
    x = layers.Dropout(DROPOUT)(x)
    return keras.Model(notes, _softmax_head(x, vocab_size), name="paper-3b")
