"""The remi tokenizer: REMI bars and positions that keep onsets, durations and voicings through a round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import symusic

from conftest import make_midi
from pianola.midi import load_score, write_score
from pianola.tokenizers import get_tokenizer, tokenizer_from_config
from pianola.tokenizers.remi import RemiTokenizer


def notes_in_quarters(path: Path) -> list[tuple[float, float, int]]:
    """Sorted (onset, duration, pitch) of every note, in quarters."""
    score = load_score(path)
    tpq = score.ticks_per_quarter
    return sorted((n.time / tpq, n.duration / tpq, n.pitch) for t in score.tracks for n in t.notes)


def two_hands(path: Path, right: list[tuple[int, int, int]], left: list[tuple[int, int, int]], tpq: int) -> Path:
    """A MIDI file with the right hand and the left hand on two tracks."""
    score = symusic.Score(tpq)
    for name, notes in (("right", right), ("left", left)):
        track = symusic.Track(name=name, program=0, is_drum=False)
        for start, duration, pitch in notes:
            track.notes.append(symusic.Note(start, duration, pitch, 80))
        score.tracks.append(track)
    score.dump_midi(str(path))
    return path


def test_round_trip_keeps_pitches_onsets_and_durations(tmp_path: Path) -> None:
    q = 960
    right = [
        (0, q // 4, 72), (q // 4, q // 4, 74), (q // 2, q // 2, 76),                 # 16th, 16th, eighth
        (q, q // 3, 79), (q + q // 3, q // 3, 81), (q + 2 * q // 3, q // 3, 83),     # eighth-note triplet
        (2 * q, 2 * q, 64), (2 * q, q, 67), (2 * q, 2 * q, 72),                      # chord across the bar line
        (11 * q, 6 * q, 60),  # after a rest of 7 quarters (over all of bar 1), a 6-quarter note
    ]
    left = [(0, 2 * q, 36), (2 * q, 2 * q, 48), (7 * q // 2, q // 4, 43)]
    original = two_hands(tmp_path / "in.mid", right, left, tpq=q)
    tokenizer = RemiTokenizer(steps_per_quarter=12)
    tokens = tokenizer.encode(original)
    restored = tmp_path / "out.mid"
    write_score(tokenizer.decode(tokens), restored)
    assert notes_in_quarters(restored) == notes_in_quarters(original)
    assert tokenizer.encode(restored) == tokens
    assert tokens.count("Bar_None") == 3  # bars 0..2: the empty bar 1 still has its Bar
    assert {t.split("_")[0] for t in tokens} == {"Bar", "Position", "Pitch", "Duration"}


def test_tokens_are_miditok_remi_strings(tmp_path: Path) -> None:
    path = make_midi(tmp_path / "chord.mid", [(0, 480, 67), (0, 480, 60), (0, 240, 64), (720, 160, 72)])
    assert RemiTokenizer().encode(path) == [
        "Bar_None", "Position_0", "Pitch_60", "Duration_1.0.12", "Pitch_64", "Duration_0.6.12",
        "Pitch_67", "Duration_1.0.12", "Position_18", "Pitch_72", "Duration_0.4.12",
    ]


def test_empty_bars_before_the_first_note_are_dropped(tmp_path: Path) -> None:
    path = make_midi(tmp_path / "late.mid", [(9 * 480, 480, 60)])  # in bar 2, one quarter in
    assert RemiTokenizer().encode(path) == ["Bar_None", "Position_12", "Pitch_60", "Duration_1.0.12"]


def test_two_tracks_merge_and_a_doubled_pitch_keeps_its_longest_duration(tmp_path: Path) -> None:
    path = two_hands(tmp_path / "doubled.mid", [(0, 480, 60)], [(0, 960, 60), (0, 480, 48)], tpq=480)
    assert RemiTokenizer().encode(path) == ["Bar_None", "Position_0", "Pitch_48", "Duration_1.0.12", "Pitch_60", "Duration_2.0.12"]


def test_long_notes_are_cut_and_off_keyboard_pitches_dropped(tmp_path: Path) -> None:
    path = make_midi(tmp_path / "long.mid", [(0, 480 * 20, 60), (0, 480, 10), (0, 480, 120)])
    assert RemiTokenizer(max_duration_quarters=4).encode(path) == ["Bar_None", "Position_0", "Pitch_60", "Duration_4.0.12"]


def test_drums_and_empty_files_give_no_tokens(tmp_path: Path) -> None:
    assert RemiTokenizer().encode(make_midi(tmp_path / "drums.mid", [(0, 480, 38)], drum=True)) == []
    assert RemiTokenizer().encode(make_midi(tmp_path / "empty.mid", [])) == []


def test_transpose_moves_pitches_and_refuses_to_leave_the_keyboard() -> None:
    tokenizer = RemiTokenizer()
    assert tokenizer.transpose("Pitch_60", 2) == "Pitch_62"
    assert tokenizer.transpose("Pitch_107", 2) is None
    assert tokenizer.transpose("Pitch_22", -2) is None
    for token in ("Bar_None", "Position_6", "Duration_1.0.12", "<unk>"):
        assert tokenizer.transpose(token, 2) == token


def test_decode_skips_tokens_out_of_place() -> None:
    tokens = [
        "Duration_1.0.12", "<unk>", "Pitch_60", "Position_3", "Duration_0.6.12",  # orphan duration, unfinished note
        "Bar_None", "Position_6", "Pitch_62", "Duration_0.6.12",                   # kept: bar 0, step 6
        "Position_99", "Pitch_64", "Duration_x.1.12", "Pitch_200", "Duration_1.0.12",  # bad position, duration, pitch
        "Bar_None", "Pitch_65", "Duration_1.0.0", "Pitch_67", "Duration_0.4.12",    # kept: bar 1, step 0
        "Pitch_69",                                                                 # no duration after it
    ]
    score = RemiTokenizer().decode(tokens, tempo_qpm=90)
    assert [(n.time, n.duration, n.pitch) for n in score.tracks[0].notes] == [(240, 240, 62), (1920, 160, 67)]
    assert score.ticks_per_quarter == 480
    assert score.tempos[0].qpm == pytest.approx(90, rel=1e-4)
    assert len(score.tracks) == 1 and score.tracks[0].program == 0
    assert all(n.velocity == 80 for n in score.tracks[0].notes)


def test_config_rebuilds_the_same_tokenizer(tmp_path: Path) -> None:
    tokenizer = get_tokenizer("remi", steps_per_quarter=24, max_duration_quarters=4)
    rebuilt = tokenizer_from_config(tokenizer.config())
    assert isinstance(rebuilt, RemiTokenizer) and rebuilt.config() == tokenizer.config()
    path = make_midi(tmp_path / "fine.mid", [(0, 20, 60), (20, 480 * 6, 62)])  # a 24th, then a long note
    assert rebuilt.encode(path) == ["Bar_None", "Position_0", "Pitch_60", "Duration_0.1.24", "Position_1", "Pitch_62", "Duration_4.0.24"]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="steps_per_quarter"):
        RemiTokenizer(steps_per_quarter=7)
    with pytest.raises(ValueError, match="max_duration_quarters"):
        RemiTokenizer(max_duration_quarters=0)


def test_corpus_pieces_round_trip_on_the_grid(corpus_dir: Path) -> None:
    tokenizer = RemiTokenizer()
    steps_per_bar = 4 * tokenizer.steps_per_quarter
    for path in sorted(corpus_dir.glob("*.mid"))[:3]:
        grid = tokenizer._grid.grid_notes(load_score(path))
        grid = grid[(grid[:, 2] >= 21) & (grid[:, 2] <= 108)]
        # The decoded score itself, not a MIDI file of it: a file cannot hold two overlapping notes of one
        # pitch, and the corpus has a few.
        again = tokenizer._grid.grid_notes(tokenizer.decode(tokenizer.encode(path)))
        assert len(again) == len(grid), path.name
        grid[:, 0] -= grid[0, 0] // steps_per_bar * steps_per_bar  # decode starts at the first note's bar
        np.testing.assert_array_equal(again, grid)
