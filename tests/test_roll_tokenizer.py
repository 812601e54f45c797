"""The roll tokenizer: the benchmark's piano rolls as tokens, and back to MIDI and to rolls exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import make_midi
from pianola.benchmark.data import load_rolls
from pianola.midi import KEYS, LOWEST_PITCH, load_score, write_score
from pianola.tokenizers import TOKENIZERS, get_tokenizer, tokenizer_from_config
from pianola.tokenizers.roll import (
    END_OF_FRAME,
    RollTokenizer,
    roll_of_score,
    roll_to_tokens,
    score_of_roll,
    tokens_to_roll,
)


def roll_of(frames: list[list[int]]) -> np.ndarray:
    """A (frames, 88) bool roll from frames of MIDI pitches."""
    out = np.zeros((len(frames), KEYS), dtype=bool)
    for f, pitches in enumerate(frames):
        out[f, [p - LOWEST_PITCH for p in pitches]] = True
    return out


def through_midi(roll: np.ndarray, frames_per_quarter: int, path: Path) -> np.ndarray:
    """`roll` written as a MIDI file and read back as a roll."""
    write_score(score_of_roll(roll, frames_per_quarter, 120.0), path)
    return roll_of_score(load_score(path), frames_per_quarter)


def notes_of(score) -> list[tuple[int, int, int]]:
    """Sorted (onset tick, duration ticks, pitch) of every note of a score."""
    return sorted((n.time, n.duration, n.pitch) for t in score.tracks for n in t.notes)


def test_frames_list_keys_low_to_high_then_end() -> None:
    roll = roll_of([[64, 60, 67], [], [21, 108]])
    assert roll_to_tokens(roll) == ["note:60", "note:64", "note:67", "frame", "frame", "note:21", "note:108", "frame"]
    assert END_OF_FRAME == "frame"


def test_hand_made_roll_round_trips_through_midi(tmp_path: Path) -> None:
    roll = roll_of([
        [],              # leading silence: the grid is absolute
        [48, 60],
        [48, 60, 64],    # 48 and 60 held, 64 joins
        [48],
        [],              # an empty frame in the middle
        [],
        [60, 108],       # 60 struck again after a gap; the top key
        [21, 60],
    ])
    score = score_of_roll(roll, 2, 120.0)
    assert notes_of(score) == [
        (240, 480, 60), (240, 720, 48), (480, 240, 64), (1440, 240, 108), (1440, 480, 60), (1680, 240, 21),
    ]
    assert np.array_equal(through_midi(roll, 2, tmp_path / "hand.mid"), roll)


@pytest.mark.parametrize("file, frames_per_quarter", [("JSB_Chorales.mat", 1), ("Piano_midi.mat", 2)])
def test_real_pieces_round_trip_through_midi(tmp_path: Path, poly_dir: Path, file: str, frames_per_quarter: int) -> None:
    pieces = load_rolls(poly_dir / file).split("valid")
    for i in (0, 5, len(pieces) - 1):
        roll = pieces[i]
        assert np.array_equal(through_midi(roll, frames_per_quarter, tmp_path / f"{i}.mid"), roll), f"piece {i}"
        assert np.array_equal(tokens_to_roll(roll_to_tokens(roll)), roll)


def test_midi_on_the_grid_round_trips(tmp_path: Path) -> None:
    # Eighth-note grid at 960 ticks per quarter: a held chord, a re-struck note, a rest, a long note.
    q = 960
    notes = [
        (0, q, 60), (0, q, 64), (0, 2 * q, 48),
        (q, q // 2, 62), (3 * q // 2, q // 2, 62),  # the same pitch struck twice in a row: one held note in a roll
        (4 * q, 3 * q, 72),
    ]
    original = make_midi(tmp_path / "in.mid", notes, tpq=q)
    tokenizer = RollTokenizer(frames_per_quarter=2)
    tokens = tokenizer.encode(original)
    restored = tmp_path / "out.mid"
    write_score(tokenizer.decode(tokens), restored)
    back = load_score(restored)
    assert [(t / back.ticks_per_quarter, d / back.ticks_per_quarter, p) for t, d, p in notes_of(back)] == [
        (0, 1, 60), (0, 1, 64), (0, 2, 48), (1, 1, 62), (4, 3, 72),
    ]
    assert tokenizer.encode(restored) == tokens


def test_frames_follow_rounded_onsets_and_ends(tmp_path: Path) -> None:
    # At 480 ticks per quarter and 2 frames per quarter a frame is 240 ticks.
    path = make_midi(tmp_path / "off.mid", [(250, 10, 60), (230, 500, 64), (960, 0, 67), (0, 240, 10), (0, 240, 120)])
    roll = roll_of_score(load_score(path), 2)
    assert [(np.flatnonzero(f) + LOWEST_PITCH).tolist() for f in roll] == [[], [60, 64], [64], [], [67]]
    # 60: a short note still sounds one frame; 64: 230..730 -> frames 1..2; 67: zero length -> one frame;
    # pitches 10 and 120 are off the keyboard and dropped (and do not extend the roll).


def test_tracks_merge_and_drums_are_ignored(tmp_path: Path) -> None:
    doubled = make_midi(tmp_path / "doubled.mid", [(0, 480, 60)], tracks=2)
    assert RollTokenizer().encode(doubled) == ["note:60", "frame", "note:60", "frame"]
    drums = make_midi(tmp_path / "drums.mid", [(0, 480, 38)], drum=True)
    assert RollTokenizer().encode(drums) == []


def test_decode_tolerates_tokens_out_of_place() -> None:
    tokens = ["<unk>", "note:64", "note:60", "note:64", "frame",  # out of order and repeated
              "bogus", "note:200", "note:x", "note:²", "frame",  # unknown, off the keyboard, not a number
              "note:67"]  # an unfinished last frame
    roll = tokens_to_roll(tokens)
    assert [(np.flatnonzero(f) + LOWEST_PITCH).tolist() for f in roll] == [[60, 64], [], [67]]
    score = RollTokenizer(frames_per_quarter=4).decode(tokens, tempo_qpm=90)
    assert notes_of(score) == [(0, 120, 60), (0, 120, 64), (240, 120, 67)]
    assert score.tempos[0].qpm == pytest.approx(90, rel=1e-4)
    assert score.tracks[0].program == 0 and score.ticks_per_quarter == 480
    assert all(n.velocity == 80 for n in score.tracks[0].notes)
    assert notes_of(RollTokenizer().decode([])) == []


def test_transpose_keeps_notes_on_the_keyboard() -> None:
    tokenizer = RollTokenizer()
    assert tokenizer.transpose("note:60", 5) == "note:65"
    assert tokenizer.transpose("note:105", 3) == "note:108"
    assert tokenizer.transpose("note:105", 4) is None
    assert tokenizer.transpose("note:22", -2) is None
    assert tokenizer.transpose("frame", 7) == "frame" and tokenizer.transpose("<unk>", 7) == "<unk>"


def test_registered_and_rebuilt_from_config() -> None:
    assert "roll" in TOKENIZERS
    tokenizer = get_tokenizer("roll", frames_per_quarter=1)
    rebuilt = tokenizer_from_config(tokenizer.config())
    assert isinstance(rebuilt, RollTokenizer) and rebuilt.config() == {"name": "roll", "frames_per_quarter": 1}
    assert get_tokenizer("roll").frames_per_quarter == 2


@pytest.mark.parametrize("frames_per_quarter", [0, -2, 7])
def test_grid_must_divide_the_output_resolution(frames_per_quarter: int) -> None:
    with pytest.raises(ValueError, match="frames_per_quarter"):
        RollTokenizer(frames_per_quarter=frames_per_quarter)
