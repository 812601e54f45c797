"""Sequences: ids, windows, and a split by whole pieces with a training-only vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pianola.data.corpus import Piece, write_pieces
from pianola.data.sequences import EncodedSplit, build_sequences, split_pieces
from pianola.data.vocab import UNK, Vocabulary
from pianola.errors import PianolaError


def make_tokens(folder: Path, pieces: dict[str, list[str]]) -> Path:
    write_pieces(folder / "tokens.jsonl", [Piece(name, tokens) for name, tokens in pieces.items()])
    (folder / "stats.json").write_text(json.dumps({"tokenizer": {"name": "timed", "steps_per_quarter": 12}}))
    return folder


def test_split_is_by_whole_piece_seeded_and_disjoint() -> None:
    names = [f"piece{i:02d}.mid" for i in range(20)]
    train, valid = split_pieces(names, 0.2, seed=7)
    assert len(valid) == 4 and len(train) == 16
    assert not set(train) & set(valid) and set(train) | set(valid) == set(names)
    assert split_pieces(list(reversed(names)), 0.2, seed=7) == (train, valid)  # input order does not matter
    assert split_pieces(names, 0.2, seed=8) != (train, valid)


def test_split_keeps_one_piece_each_side_when_it_can() -> None:
    assert split_pieces(["a", "b"], 0.1, seed=0)[1] != []
    assert split_pieces(["a", "b"], 0.9, seed=0)[0] != []
    assert split_pieces(["a"], 0.1, seed=0) == (["a"], [])


def test_no_validation_window_comes_from_a_training_piece(tmp_path: Path) -> None:
    # Each piece uses its own private tokens, so a window's tokens tell which piece it came from.
    pieces = {f"p{i}.mid": [f"t{i}_{j % 5}" for j in range(30 + i)] for i in range(10)}
    meta = build_sequences(make_tokens(tmp_path, pieces), tmp_path / "seq", window=8, valid_fraction=0.3, seed=1)
    train = EncodedSplit.load(tmp_path / "seq" / "train.npz")
    valid = EncodedSplit.load(tmp_path / "seq" / "valid.npz")
    assert set(train.pieces) == set(meta["train"]["pieces"]) and set(valid.pieces) == set(meta["valid"]["pieces"])
    assert not set(train.pieces) & set(valid.pieces)
    vocab = Vocabulary.load(tmp_path / "seq" / "vocab.json")
    # Validation tokens were never seen in training: all map to <unk>.
    assert (valid.ids == 0).all() and meta["valid"]["oov_rate"] == 1.0
    assert (train.ids != 0).all()
    windows = train.windows(train.window_starts(8), 8)
    assert windows.shape == (meta["train"]["windows"], 9)
    for row in windows:  # a window never straddles two pieces
        assert len({vocab.tokens[i].split("_")[0] for i in row}) == 1


def test_windows_slide_by_one_inside_each_piece() -> None:
    vocab = Vocabulary.build([["a", "b", "c", "d", "e"]])
    split = EncodedSplit.encode([Piece("x", list("abcde")), Piece("y", list("ab")), Piece("z", list("cdec"))], vocab)
    starts = split.window_starts(3)
    assert starts.tolist() == [0, 1, 7]  # x gives 2 windows, y is too short, z gives 1
    np.testing.assert_array_equal(split.windows(starts, 3)[2], vocab.encode(list("cdec")))


def test_vocabulary_orders_by_frequency_and_maps_unseen_to_unk(tmp_path: Path) -> None:
    vocab = Vocabulary.build([["b", "a", "b"], ["c", "b", "a"]])
    assert vocab.tokens == (UNK, "b", "a", "c")
    assert vocab.encode(["a", "zzz"]).tolist() == [2, 0]
    vocab.save(tmp_path / "v.json")
    assert Vocabulary.load(tmp_path / "v.json") == vocab


def test_edited_vocabulary_file_is_refused(tmp_path: Path) -> None:
    Vocabulary.build([["a", "b"]]).save(tmp_path / "v.json")
    data = json.loads((tmp_path / "v.json").read_text())
    data["tokens"][1], data["tokens"][2] = data["tokens"][2], data["tokens"][1]
    (tmp_path / "v.json").write_text(json.dumps(data))
    with pytest.raises(PianolaError, match="fingerprint"):
        Vocabulary.load(tmp_path / "v.json")


def test_too_short_corpus_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PianolaError, match="longer than the window"):
        build_sequences(make_tokens(tmp_path, {"a.mid": ["x"] * 5, "b.mid": ["y"] * 5}), tmp_path / "s", window=100)


def test_missing_tokens_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PianolaError, match="pianola tokenize"):
        build_sequences(tmp_path / "nothing", tmp_path / "s")


def test_damaged_tokens_line_names_file_and_line(tmp_path: Path) -> None:
    make_tokens(tmp_path, {})
    (tmp_path / "tokens.jsonl").write_text('{"piece": "a.mid", "tokens": ["C4"]}\n{"piece": \n')
    with pytest.raises(PianolaError, match=r"tokens.jsonl:2"):
        build_sequences(tmp_path, tmp_path / "s", window=1)
