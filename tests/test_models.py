"""Model tests: every zoo model trains a step, the paper's size is matched, `lstm` is causal and its
step model generates exactly what the full model predicts."""

from __future__ import annotations

import numpy as np
import pytest

from pianola.errors import PianolaError
from pianola.models import (
    MODEL_NAMES,
    advance,
    build_model,
    count_params,
    model_spec,
    step_model,
    windows_to_xy,
    zero_states,
)

VOCAB = 313  # the paper's vocabulary, at which it reports Model 0's size
WINDOW = 8  # tiny windows keep the training steps fast; sizes do not depend on the window


def random_windows(batch: int, window: int, vocab: int, seed: int = 0) -> np.ndarray:
    """(batch, window + 1) random token ids, as the sequences stage hands them out."""
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, window + 1), dtype=np.int32)


PITCHES = [None, None, *range(48, 69)]  # 23 tokens: <unk>, a time step, then 21 pitches over two octaves


def small_lstm(vocab: int = 23, pitch_classes: bool = False):
    """A small `lstm` model for behaviour tests, dropout on (it must not matter at inference)."""
    return build_model("lstm", vocab, embed_dim=8, units=16, layers=2, dropout=0.3, pitch_classes=pitch_classes,
                       pitches=PITCHES if pitch_classes else None)


def test_model_names_are_the_papers_nine_and_ours():
    assert MODEL_NAMES == (
        "paper-0", "paper-0b", "paper-1", "paper-1b", "paper-1c", "paper-2", "paper-2b", "paper-3", "paper-3b", "lstm",
    )


def test_paper_0_has_the_papers_parameter_count():
    assert count_params("paper-0", VOCAB, window=100) == 5_467_961


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_takes_a_training_step(name):
    spec = model_spec(name)
    model = build_model(name, VOCAB, window=WINDOW)
    model.run_eagerly = True  # one step: tracing would cost seconds a model on 2 cores (compiled: below)
    x, y = windows_to_xy(random_windows(4, WINDOW, VOCAB), spec.input_kind, VOCAB)
    loss, accuracy = model.train_on_batch(x, y)
    assert np.isfinite(loss) and 0.0 <= accuracy <= 1.0
    # An untrained model is near uniform: the loss is about log(V), not off by a factor.
    assert 0.5 * np.log(VOCAB) < loss < 2.0 * np.log(VOCAB)
    probs = model.predict_on_batch(x)
    expected = (4, VOCAB) if spec.input_kind == "scalar" else (4, WINDOW, VOCAB)
    assert probs.shape == expected
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)


def test_compiled_attention_model_trains():
    model = build_model("paper-3b", VOCAB, window=WINDOW)
    x, y = windows_to_xy(random_windows(4, WINDOW, VOCAB), "scalar", VOCAB)
    losses = [model.train_on_batch(x, y)[0] for _ in range(3)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_specs_carry_the_paper_presets():
    assert model_spec("paper-0").preset == {
        "epochs": 50, "batch_size": 128, "optimizer": "rmsprop", "learning_rate": 1e-3, "window": 100,
    }
    assert model_spec("paper-2b").preset["optimizer"] == "sgd"
    assert model_spec("paper-2b").preset["batch_size"] == 64
    assert model_spec("paper-3b").preset["optimizer"] == "adam"
    assert all(model_spec(n).input_kind == "scalar" for n in MODEL_NAMES if n.startswith("paper-"))
    assert model_spec("lstm").input_kind == "tokens"


def test_build_model_uses_the_presets_optimizer_and_overrides():
    model = build_model("paper-2b", 11, window=WINDOW)
    assert type(model.optimizer).__name__ == "SGD"
    model = build_model("lstm", 11, units=12, layers=3, learning_rate=5e-4)
    assert [layer.units for layer in model.layers if layer.name.startswith("lstm_")] == [12, 12, 12]
    assert float(model.optimizer.learning_rate) == pytest.approx(5e-4)


def test_unknown_names_and_settings_are_refused_with_the_choices():
    with pytest.raises(PianolaError, match="paper-3b"):
        build_model("paper-4", VOCAB)
    with pytest.raises(PianolaError, match="learning_rate"):
        build_model("paper-0", VOCAB, units=64)


def test_windows_to_xy_scalar_is_the_papers_normalised_input():
    windows = random_windows(5, 100, VOCAB)
    x, y = windows_to_xy(windows, "scalar", VOCAB)
    assert x.shape == (5, 100, 1) and x.dtype == np.float32
    assert y.shape == (5,)
    np.testing.assert_allclose(x[:, :, 0] * VOCAB, windows[:, :100], atol=1e-3)
    np.testing.assert_array_equal(y, windows[:, 100])


def test_windows_to_xy_tokens_shifts_by_one():
    windows = random_windows(5, 100, VOCAB)
    x, y = windows_to_xy(windows, "tokens", VOCAB)
    assert x.shape == y.shape == (5, 100)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    np.testing.assert_array_equal(y[:, -1], windows[:, 100])
    with pytest.raises(PianolaError, match="window"):
        windows_to_xy(windows[0], "tokens", VOCAB)


def test_lstm_is_causal():
    model = small_lstm()
    tokens = random_windows(2, 12, 23)[:, :12]
    changed = tokens.copy()
    changed[:, 7:] = (changed[:, 7:] + 5) % 23
    before, after = model.predict_on_batch(tokens), model.predict_on_batch(changed)
    np.testing.assert_allclose(before[:, :7], after[:, :7], atol=1e-6)
    assert not np.allclose(before[:, 7:], after[:, 7:], atol=1e-4)


@pytest.mark.parametrize("pitch_classes", [False, True])
def test_step_model_matches_the_full_model_token_by_token(pitch_classes: bool):
    model = small_lstm(pitch_classes=pitch_classes)
    model.train_on_batch(*windows_to_xy(random_windows(4, 12, 23), "tokens", 23))  # weights off their init
    step = step_model(model)
    tokens = random_windows(3, 12, 23, seed=1)[:, :12]
    full = model.predict_on_batch(tokens)  # (B, T, V)
    states = zero_states(step, 3)
    for t in range(tokens.shape[1]):
        probs, states = advance(step, tokens[:, t : t + 1], states)
        np.testing.assert_allclose(probs, full[:, t], atol=1e-5)


@pytest.mark.parametrize("pitch_classes", [False, True])
def test_step_model_primes_a_whole_primer_at_once(pitch_classes: bool):
    model = small_lstm(pitch_classes=pitch_classes)
    step = step_model(model)
    tokens = random_windows(2, 10, 23, seed=2)[:, :10]
    probs, states = advance(step, tokens[:, :6], zero_states(step, 2))
    np.testing.assert_allclose(probs, model.predict_on_batch(tokens[:, :6])[:, -1], atol=1e-5)
    probs, states = advance(step, tokens[:, 6:7], states)
    np.testing.assert_allclose(probs, model.predict_on_batch(tokens[:, :7])[:, -1], atol=1e-5)


@pytest.mark.parametrize("pitch_classes", [False, True])
def test_step_model_shares_the_weights_of_the_full_model(pitch_classes: bool):
    model = small_lstm(pitch_classes=pitch_classes)
    step = step_model(model)
    assert {id(w) for w in step.weights} <= {id(w) for w in model.weights}
    with pytest.raises(ValueError, match="lstm"):
        step_model(build_model("paper-3b", 11, window=WINDOW))


def test_pitch_classes_give_every_octave_of_a_class_the_same_boost() -> None:
    model = small_lstm(pitch_classes=True)
    logits = model.get_layer("logits")
    logits.set_weights([np.zeros_like(w) for w in logits.get_weights()])  # only the pitch-class head speaks
    model.get_layer("logits_pc").set_weights([w + 0.5 for w in model.get_layer("logits_pc").get_weights()])
    probs = model.predict_on_batch(random_windows(2, 6, 23)[:, :6])  # (B, T, V)
    for low in range(2, 11):  # 48..56 and the same classes an octave up, 60..68
        np.testing.assert_allclose(probs[..., low], probs[..., low + 12], rtol=1e-5)
    np.testing.assert_allclose(probs[..., 0], probs[..., 1], rtol=1e-5)  # no pitch, no boost
    assert not np.allclose(probs[..., 0], probs[..., 2], rtol=1e-3)
    # Training moves the learned weights, never the one-hot tables.
    fixed = ("pitch_class_of", "pc_memory", "pc_to_tokens")
    before = [[np.array(w) for w in model.get_layer(name).get_weights()] for name in fixed]
    model.train_on_batch(*windows_to_xy(random_windows(4, 6, 23), "tokens", 23))
    for name, weights in zip(fixed, before):
        for now, then in zip(model.get_layer(name).get_weights(), weights):
            np.testing.assert_array_equal(now, then)
    table = weights[0]  # pc_to_tokens: (12, V)
    assert table.sum() == 21 and table[:, 0].sum() == 0  # one class per pitch; the two pitchless tokens have none


def test_pitch_classes_need_the_pitch_of_every_token() -> None:
    with pytest.raises(PianolaError, match="pitches"):
        build_model("lstm", 23, pitch_classes=True)
    with pytest.raises(ValueError, match="23 tokens"):
        build_model("lstm", 23, pitch_classes=True, pitches=PITCHES[:-1])


def test_the_pitch_class_memory_counts_the_classes_struck_so_far() -> None:
    from pianola.models.lstm import PITCH_CLASS_DECAYS, memory_features

    model = small_lstm(pitch_classes=True)
    tokens = np.array([[2, 1, 14, 4]], dtype=np.int32)  # pitches 48 (class 0), none, 60 (class 0), 50 (class 2)
    onehot = model.get_layer("pitch_class_of")(tokens)
    counts, _ = model.get_layer("pc_memory")(onehot)
    counts = np.asarray(counts)[0]  # (T, M)
    short, long = PITCH_CLASS_DECAYS
    np.testing.assert_allclose(counts[3, :12][[0, 2]], [short ** 3 + short, 1.0], rtol=1e-6)
    np.testing.assert_allclose(counts[3, 12:][[0, 2]], [long ** 3 + long, 1.0], rtol=1e-6)
    features = np.asarray(memory_features(counts, np))
    np.testing.assert_allclose(features[:, :12].sum(axis=1), 1.0, rtol=1e-5)
    assert features[0, 0] == pytest.approx(1.0, rel=1e-5) and features[3, 2] > 0
