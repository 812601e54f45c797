"""The timed tokenizer keeps what the paper drops: onsets, durations and voicings survive a round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import make_midi
from pianola.midi import load_score, write_score
from pianola.tokenizers import get_tokenizer, tokenizer_from_config
from pianola.tokenizers.timed import TimedTokenizer


def notes_in_quarters(path: Path) -> list[tuple[float, float, int]]:
    """Sorted (onset, duration, pitch) of every note, in quarters."""
    score = load_score(path)
    tpq = score.ticks_per_quarter
    return sorted((n.time / tpq, n.duration / tpq, n.pitch) for t in score.tracks for n in t.notes)


def test_round_trip_keeps_pitches_onsets_and_durations(tmp_path: Path) -> None:
    # 16ths, eighth-note triplets, a chord with octaves, a long rest and a long note, at tpq 960.
    q = 960
    notes = [
        (0, q // 4, 60), (q // 4, q // 4, 62), (q // 2, q // 2, 64),     # 16th, 16th, eighth
        (q, q // 3, 67), (q + q // 3, q // 3, 69), (q + 2 * q // 3, q // 3, 71),  # triplet
        (2 * q, 2 * q, 48), (2 * q, 2 * q, 55), (2 * q, q, 64), (2 * q, 2 * q, 76),  # voiced chord
        (13 * q, 6 * q, 36),  # after a 7-quarter gap (longer than one shift), a 6-quarter note
    ]
    original = make_midi(tmp_path / "in.mid", notes, tpq=q)
    tokenizer = TimedTokenizer(steps_per_quarter=12)
    tokens = tokenizer.encode(original)
    restored = tmp_path / "out.mid"
    write_score(tokenizer.decode(tokens), restored)
    assert notes_in_quarters(restored) == notes_in_quarters(original)
    assert tokenizer.encode(restored) == tokens


def test_chord_is_listed_low_to_high_at_one_onset(tmp_path: Path) -> None:
    path = make_midi(tmp_path / "chord.mid", [(0, 480, 67), (0, 480, 60), (0, 480, 64), (480, 240, 72)])
    tokens = TimedTokenizer().encode(path)
    assert tokens == ["note:60", "dur:12", "note:64", "dur:12", "note:67", "dur:12", "shift:12", "note:72", "dur:6"]


def test_same_pitch_on_two_tracks_is_one_note(tmp_path: Path) -> None:
    path = make_midi(tmp_path / "doubled.mid", [(0, 480, 60)], tracks=2)
    assert TimedTokenizer().encode(path) == ["note:60", "dur:12"]


def test_drum_tracks_are_ignored(tmp_path: Path) -> None:
    path = make_midi(tmp_path / "drums.mid", [(0, 480, 38)], drum=True)
    assert TimedTokenizer().encode(path) == []


def test_decode_skips_tokens_out_of_place() -> None:
    score = TimedTokenizer().decode(["dur:4", "<unk>", "note:60", "shift:3", "dur:5", "note:62", "dur:6"], tempo_qpm=90)
    notes = [(n.time, n.duration, n.pitch) for n in score.tracks[0].notes]
    assert notes == [(120, 240, 62)]  # 3 steps of 40 ticks; the orphan dur and the unfinished note are dropped
    assert score.tempos[0].qpm == pytest.approx(90, rel=1e-4)
    assert score.tracks[0].program == 0


def test_config_rebuilds_the_same_tokenizer() -> None:
    tokenizer = get_tokenizer("timed", steps_per_quarter=24)
    rebuilt = tokenizer_from_config(tokenizer.config())
    assert isinstance(rebuilt, TimedTokenizer) and rebuilt.config() == tokenizer.config()


def test_grid_must_divide_the_output_resolution() -> None:
    with pytest.raises(ValueError, match="steps_per_quarter"):
        TimedTokenizer(steps_per_quarter=7)


def test_corpus_piece_round_trips_on_the_grid(corpus_dir: Path, tmp_path: Path) -> None:
    tokenizer = TimedTokenizer()
    path = corpus_dir / "mz_545_1.mid"
    grid = tokenizer.grid_notes(load_score(path))
    restored = tmp_path / "mz.mid"
    write_score(tokenizer.decode(tokenizer.encode(path)), restored)
    again = tokenizer.grid_notes(load_score(restored))
    # decode starts the piece at its first onset
    grid[:, 0] -= grid[0, 0]
    np.testing.assert_array_equal(again, grid)
