"""The roll-lstm's frame likelihood is exact, and whole-piece scoring carries the state correctly."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest

from pianola.benchmark.likelihood import frame_nlls, log_softmax, score, serialise
from pianola.models.roll import (
    CHANNELS,
    HISTORY_DECAY,
    RollLSTMConfig,
    build_roll_lstm,
    grammar_table,
    mixture_of,
)

KEYS = 3


def bold(model: keras.Model, seed: int) -> keras.Model:
    """Random weights are too timid to test much: scale each head so the distribution is far from uniform."""
    rng = np.random.default_rng(seed)
    for head in [layer for layer in model.layers if layer.name.endswith("logits")]:
        kernel, bias = head.get_weights()
        head.set_weights([kernel * 3, rng.normal(0, 1, bias.shape)])
    return model


@pytest.fixture(scope="module", params=[1, 2], ids=["one network", "two members"])
def tiny_model(request) -> keras.Model:
    keras.utils.set_random_seed(1)
    return bold(build_roll_lstm(RollLSTMConfig(keys=KEYS, embed_dim=4, units=8, layers=2, dropout=0.0,
                                               members=request.param)), 1)


def test_serialise_lists_each_frame_low_to_high_then_end_of_frame() -> None:
    roll = np.array([[0, 1, 1], [0, 0, 0], [1, 0, 1]], dtype=bool)  # keys 1,2 | empty | keys 0,2
    s = serialise(roll)
    eof, bos = KEYS, KEYS + 1
    assert s.targets.tolist() == [1, 2, eof, eof, 0, 2, eof]
    assert s.inputs.tolist() == [bos, 1, 2, eof, eof, 0, 2]
    assert s.frames.tolist() == [0, 0, 0, 1, 2, 2, 2]
    # Each position sees, per key: the frame before its target's frame and the one before that (nothing
    # before the first), a decayed history, the keys already written in its frame and the key just written;
    # then the target frame's grid position.
    context = s.context()
    planes = context[:, : KEYS * len(CHANNELS)].reshape(len(context), KEYS, len(CHANNELS))
    channel = {name: planes[:, :, i] for i, name in enumerate(CHANNELS)}
    assert channel["previous"].tolist() == [[0, 0, 0]] * 3 + [[0, 1, 1]] + [[0, 0, 0]] * 3
    assert channel["before_previous"].tolist() == [[0, 0, 0]] * 4 + [[0, 1, 1]] * 3
    assert channel["so_far"].tolist() == [[0, 0, 0], [0, 1, 0], [0, 1, 1], [0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 0, 1]]
    assert channel["last"].tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 1]]
    d = HISTORY_DECAY  # frame 1 remembers frame 0; frame 2 remembers frame 0 a frame further back
    np.testing.assert_allclose(channel["history"][3], [0, 1 - d, 1 - d], rtol=1e-6)
    np.testing.assert_allclose(channel["history"][4], [0, (1 - d) * d, (1 - d) * d], rtol=1e-6)
    assert np.argmax(context[:, KEYS * len(CHANNELS) :], axis=1).tolist() == s.frames.tolist()
    # A crop's context is the whole piece's, cut: even a crop that starts inside a frame knows its keys so far.
    for start, stop in [(1, 7), (2, 5), (5, 6), (6, 7)]:
        np.testing.assert_array_equal(s.context(slice(start, stop)), context[start:stop])


def test_grammar_allows_only_higher_keys_or_end_of_frame() -> None:
    table = grammar_table(KEYS)
    assert table[1].tolist() == [False, False, True, True]  # after key 1: key 2 or EOF
    assert table[KEYS - 1].tolist() == [False, False, False, True]  # after the top key: EOF only
    assert table[KEYS].all() and table[KEYS + 1].all()  # after EOF or BOS: anything


def test_probabilities_of_all_frames_sum_to_one(tiny_model: keras.Model) -> None:
    # Whatever came before, the model's probabilities of the 2**KEYS possible next frames sum to 1:
    # the frame NLL is an exact likelihood, not a bound.
    rng = np.random.default_rng(0)
    for context_frames in (0, 1, 4):
        context = rng.random((context_frames, KEYS)) < 0.5
        frames = [np.array(bits, dtype=bool) for bits in itertools.product([0, 1], repeat=KEYS)]
        pieces = [np.vstack([context, frame[None, :]]) for frame in frames]
        last = np.array([nll[-1] for nll in frame_nlls(tiny_model, pieces, batch_size=4, chunk=3)])
        assert np.exp(-last).sum() == pytest.approx(1.0, abs=1e-5)
        assert np.exp(-last).max() < 0.9  # and the test means something: no frame takes it all


def test_whole_piece_stateful_score_matches_a_windowed_reference(tiny_model: keras.Model) -> None:
    # The reference scores frame f by running the model afresh on the piece's first f + 1 frames (a
    # window holding the whole prefix). Chunked scoring with carried states must agree, batched with
    # pieces of other lengths and with chunks that cut frames in two.
    rng = np.random.default_rng(3)
    piece = rng.random((9, KEYS)) < 0.5
    others = [rng.random((n, KEYS)) < 0.5 for n in (2, 14)]

    def reference(roll: np.ndarray) -> np.ndarray:
        nlls = []
        for f in range(len(roll)):
            s = serialise(roll[: f + 1])
            logits = tiny_model.predict_on_batch([s.inputs[None], s.context()[None]])[0]
            logp = log_softmax(np.asarray(logits))
            token_nll = -logp[np.arange(len(s.targets)), s.targets]
            nlls.append(token_nll[s.frames == f].sum())
        return np.array(nlls)

    scored = frame_nlls(tiny_model, [others[0], piece, others[1]], batch_size=2, chunk=5)
    np.testing.assert_allclose(scored[1], reference(piece), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scored[2], reference(others[1]), rtol=1e-5, atol=1e-5)


def test_score_reports_both_conventions(tiny_model: keras.Model) -> None:
    rng = np.random.default_rng(5)
    pieces = [rng.random((n, KEYS)) < 0.4 for n in (3, 6)]
    per_piece = frame_nlls(tiny_model, pieces)
    result = score(tiny_model, pieces, "valid")
    assert result.frames == 9 and result.pieces == 2
    assert result.nll_per_frame == pytest.approx(sum(p.sum() for p in per_piece) / 9, abs=1e-6)
    assert result.nll_per_frame_first_excluded == pytest.approx(sum(p[1:].sum() for p in per_piece) / 7, abs=1e-6)


def test_a_mixture_averages_its_members_distributions() -> None:
    # Two networks trained apart, mixed: the output is the log of the mean of their softmaxes, with each
    # network's weights in its member.
    config = RollLSTMConfig(keys=KEYS, embed_dim=4, units=8, layers=1, dropout=0.0)
    networks = []
    for seed in (2, 3):
        keras.utils.set_random_seed(seed)
        networks.append(bold(build_roll_lstm(config), seed))
    mixture = mixture_of(config, networks)
    s = serialise(np.random.default_rng(4).random((6, KEYS)) < 0.5)
    inputs = [s.inputs[None], s.context()[None]]
    each = np.stack([np.exp(log_softmax(np.asarray(n.predict_on_batch(inputs))[0])) for n in networks])
    assert np.abs(each[0] - each[1]).max() > 0.1  # two different networks
    mixed = np.exp(log_softmax(np.asarray(mixture.predict_on_batch(inputs))[0]))
    np.testing.assert_allclose(mixed, each.mean(axis=0), atol=1e-6)
