"""Held-out likelihood: the paper's per-token figure, and the per-note figure that compares encodings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import make_midi, motif_notes
from pianola.data.corpus import Piece
from pianola.data.sequences import EncodedSplit
from pianola.data.vocab import Vocabulary
from pianola.evaluation.heldout import encode_midi, held_out_metrics
from pianola.models import build_model
from pianola.models.bundle import Bundle

WINDOW = 8


def untrained_bundle(vocab: Vocabulary, model: str = "lstm") -> Bundle:
    options = {"embed_dim": 8, "units": 16, "layers": 1} if model == "lstm" else {}
    kind = "tokens" if model == "lstm" else "scalar"
    return Bundle(build_model(model, len(vocab), WINDOW, **options), vocab, {"name": "timed"}, WINDOW, model, kind)


def brute_force_nll(bundle: Bundle, ids: np.ndarray) -> float:
    """Each token after the first, predicted by the full model from up to WINDOW tokens before it."""
    total = 0.0
    for t in range(1, len(ids)):
        context = ids[max(0, t - WINDOW) : t][None, :]  # (1, <= WINDOW)
        probs = np.asarray(bundle.model.predict_on_batch(context.astype("int32")))[0, -1]  # (V,)
        total -= float(np.log(probs[ids[t]]))
    return total


def test_nll_per_note_sums_every_token_of_every_piece_over_its_notes() -> None:
    rng = np.random.default_rng(0)
    tokens = [f"t{i}" for i in range(6)]
    vocab = Vocabulary.build([tokens])
    # A long piece (windows and an opening), a piece shorter than the window, a one-token piece.
    pieces = [Piece("long", list(rng.choice(tokens, 30)), 12), Piece("short", list(rng.choice(tokens, 5)), 3),
              Piece("one", ["t1"], 1)]
    split = EncodedSplit.encode(pieces, vocab)
    bundle = untrained_bundle(vocab)
    metrics = held_out_metrics(bundle, split)
    expected = sum(brute_force_nll(bundle, split.piece_ids(i)) for i in range(3)) / 16
    assert metrics.notes == 16
    assert metrics.nll_per_note == pytest.approx(expected, rel=1e-4)
    assert metrics.tokens == 30 - WINDOW  # the paper's figure is unchanged: one target per full window


def test_scalar_models_extrapolate_their_scored_mean_to_whole_pieces() -> None:
    tokens = [f"t{i}" for i in range(6)]
    vocab = Vocabulary.build([tokens])
    split = EncodedSplit.encode([Piece("p", tokens * 5, 10)], vocab)
    metrics = held_out_metrics(untrained_bundle(vocab, "paper-2"), split)
    assert metrics.nll_per_note == pytest.approx(metrics.cross_entropy * 29 / 10, rel=1e-4)


def test_without_note_counts_there_is_no_per_note_figure() -> None:
    tokens = [f"t{i}" for i in range(6)]
    vocab = Vocabulary.build([tokens])
    metrics = held_out_metrics(untrained_bundle(vocab), EncodedSplit.encode([Piece("p", tokens * 5)], vocab))
    assert metrics.nll_per_note is None and metrics.notes is None
    assert "nats/note" not in metrics.summary()


def test_every_encoding_divides_by_the_notes_of_the_midi_file(tmp_path: Path) -> None:
    from pianola.tokenizers import get_tokenizer

    midi = make_midi(tmp_path / "raw" / "a.mid", motif_notes(0, bars=4) + [(0, 480, 36)])
    for name in ("paper", "timed"):
        tokenizer = get_tokenizer(name)
        vocab = Vocabulary.build([tokenizer.encode(midi)])
        bundle = Bundle(None, vocab, tokenizer.config(), WINDOW, "lstm", "tokens")
        assert encode_midi(bundle, tmp_path / "raw").notes.tolist() == [33]
