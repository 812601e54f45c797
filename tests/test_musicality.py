"""Musicality (Yang & Lerch 2018): known features of hand-made MIDI, self-similarity, random notes far below humans."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_midi
from pianola.cli import app
from pianola.data.sequences import split_pieces
from pianola.errors import PianolaError
from pianola.evaluation.musicality import (
    NOTE_LENGTHS,
    excerpt_features,
    excerpts,
    musicality_report,
    ngram_keys,
    note_length_classes,
    notes_of_folder,
)
from pianola.midi.notes import load_notes

Q = 480  # ticks per quarter of the test files


def sorted_notes(onsets, durations, pitches) -> np.ndarray:
    notes = np.stack([np.asarray(onsets, float), np.asarray(durations, float), np.asarray(pitches, float)], axis=1)
    return notes[np.lexsort((notes[:, 2], notes[:, 0]))]


def tune(rng: np.random.Generator, quarters: int = 48) -> np.ndarray:
    """A human-like toy piece: a stepwise C-major melody in eighths and quarters over a held bass, one note per beat."""
    major = np.array([0, 2, 4, 5, 7, 9, 11])
    onsets, durations, pitches = [], [], []
    t, degree = 0.0, int(rng.integers(7, 14))
    while t < quarters:
        length = float(rng.choice([0.5, 1.0], p=[0.6, 0.4]))
        degree = int(np.clip(degree + rng.choice([-2, -1, 1, 2]), 3, 18))
        onsets.append(t), durations.append(length), pitches.append(60 + 12 * (degree // 7) + major[degree % 7] - 12)
        t += length
    for beat in range(quarters):
        onsets.append(float(beat)), durations.append(1.0), pitches.append(36 + int(major[int(rng.integers(0, 3)) * 2]))
    return sorted_notes(onsets, durations, pitches)


def random_notes(rng: np.random.Generator, count: int = 150, quarters: int = 48) -> np.ndarray:
    """Uniformly random notes of C major over five octaves, at random onsets of a 16th grid, random lengths."""
    major = [0, 2, 4, 5, 7, 9, 11]
    keys = [36 + 12 * octave + step for octave in range(5) for step in major]
    return sorted_notes(rng.integers(0, quarters * 4, count) / 4, rng.integers(1, 16, count) / 4, rng.choice(keys, count))


def toy_sets(seed: int = 0, pieces: int = 30):
    rng = np.random.default_rng(seed)
    return {f"{seed}-{i}": tune(rng) for i in range(pieces)}


def test_hand_made_midi_gives_the_known_features(tmp_path: Path) -> None:
    # Beats 0 and 1: a C-major triad of quarters; beat 2: a G half note. 7 notes at 3 onsets, 4 quarters long.
    chord = [(beat * Q, Q, p) for beat in (0, 1) for p in (60, 64, 67)]
    notes = load_notes(make_midi(tmp_path / "known.mid", chord + [(2 * Q, 2 * Q, 67)]))
    [(excerpt, length)] = excerpts(notes)
    f = excerpt_features(excerpt, length)
    assert length == 4.0
    assert f["pitch_count"] == 3 and f["pitch_range"] == 7
    assert f["polyphony"] == pytest.approx(7 / 3) and f["onsets_per_beat"] == pytest.approx(3 / 4)
    assert f["ioi_mean"] == 1.0 and f["ioi_std"] == 0.0
    assert f["top_line_interval"] == 0.0  # the top line holds G
    histogram = np.zeros(12)
    histogram[[0, 4, 7]] = [2 / 7, 2 / 7, 3 / 7]
    np.testing.assert_allclose(f["pitch_class_histogram"], histogram)
    transitions = f["pitch_class_transition"].reshape(12, 12)  # 9 pairs from onset 0 to 1, 3 from 1 to 2
    assert transitions[0, 4] == pytest.approx(1 / 12) and transitions[7, 7] == pytest.approx(2 / 12)
    assert transitions.sum() == pytest.approx(1.0)
    lengths = f["note_length_histogram"]  # 6 quarters (class 2) and one half (class 1)
    assert lengths[2] == pytest.approx(6 / 7) and lengths[1] == pytest.approx(1 / 7)


def test_melody_interval_and_rhythm_spread() -> None:
    # C E G C' as eighth, eighth, quarter, half: top-line steps 4, 3, 5; IOIs 0.5, 0.5, 1.
    f = excerpt_features(sorted_notes([0, 0.5, 1, 2], [0.5, 0.5, 1, 2], [60, 64, 67, 72]), 4.0)
    assert f["top_line_interval"] == pytest.approx(4.0)
    assert f["ioi_mean"] == pytest.approx(2 / 3) and f["ioi_std"] == pytest.approx(np.std([0.5, 0.5, 1]))
    transitions = f["note_length_transition"].reshape(12, 12)  # 8th->8th, 8th->quarter, quarter->half
    assert transitions[3, 3] == transitions[3, 2] == transitions[2, 1] == pytest.approx(1 / 3)


def test_note_length_classes_are_the_nearest_of_yang_and_lerch() -> None:
    assert list(note_length_classes(NOTE_LENGTHS)) == list(range(12))
    assert list(note_length_classes(np.array([8.0, 0.26, 1 / 3 + 0.01]))) == [0, 4, 11]


def test_long_pieces_are_cut_into_excerpts_and_a_short_tail_is_dropped() -> None:
    notes = sorted_notes(np.arange(0, 150, 1.0), np.ones(150), np.full(150, 60))
    cuts = excerpts(notes, 64)
    assert [len(c) for c, _ in cuts] == [64, 64]  # the last 22 quarters are under half an excerpt
    assert all(c[0, 0] == 0 and length == 64 for c, length in cuts)
    assert len(excerpts(sorted_notes(np.arange(0, 100, 1.0), np.ones(100), np.full(100, 60)), 64)) == 2


def test_a_set_compared_with_itself_overlaps_almost_entirely() -> None:
    reference = toy_sets(0)
    report = musicality_report(reference, reference, toy_sets(1), seed=0).report
    assert report["mean_oa"]["generated"] >= 0.95
    assert min(row["generated"]["oa"] for row in report["features"].values()) >= 0.9


def test_random_notes_score_far_below_the_human_baseline() -> None:
    rng = np.random.default_rng(5)
    noise = {f"noise{i}": random_notes(rng) for i in range(30)}
    report = musicality_report(noise, toy_sets(0), toy_sets(1), seed=0).report
    assert report["mean_oa"]["human"] >= 0.85
    assert report["mean_oa"]["ratio"] < 0.6
    assert report["features"]["top_line_interval"]["ratio"] < 0.4  # leaps of random notes, steps of the tunes


def test_the_same_music_in_other_pieces_scores_as_human(tmp_path: Path) -> None:
    report = musicality_report(toy_sets(2), toy_sets(0), toy_sets(1), seed=0).report
    assert report["mean_oa"]["ratio"] >= 0.95
    assert set(report["groups"]["generated"]) == {"pitch", "rhythm", "texture"}


def test_novelty_is_the_share_of_ngrams_copied_from_training() -> None:
    training = toy_sets(1)
    fresh = toy_sets(2)
    copies = {f"copy-{name}": notes for name, notes in list(training.items())[:10]}
    report = musicality_report(copies, toy_sets(0), training, seed=0).report
    assert report["novelty"]["generated"] == 1.0
    assert report["novelty"]["human"] < 0.5  # the toy reference shares some 8-grams by chance, not all
    assert musicality_report(fresh, toy_sets(0), training, seed=0).report["novelty"]["generated"] < 0.5
    # A transposed copy is not verbatim.
    moved = training["1-0"] + [0, 0, 2]
    assert not ngram_keys(moved) & ngram_keys(training["1-0"])


def test_a_baseline_holding_reference_pieces_is_refused() -> None:
    reference = toy_sets(0)
    with pytest.raises(PianolaError, match="must not hold reference pieces"):
        musicality_report(toy_sets(2), reference, toy_sets(1), baseline={"0-1": reference["0-1"]})


def test_random_notes_against_the_piano_corpus(corpus_dir: Path) -> None:
    pieces = notes_of_folder(corpus_dir)
    train, valid = split_pieces(list(pieces), 0.1, 42)
    rng = np.random.default_rng(0)
    noise = {f"noise{i}": random_notes(rng, count=1000, quarters=240) for i in range(20)}
    report = musicality_report(noise, {n: pieces[n] for n in valid}, {n: pieces[n] for n in train}, seed=0).report
    assert report["mean_oa"]["human"] >= 0.85
    assert report["mean_oa"]["ratio"] < 0.75


def write_set(folder: Path, sets: dict[str, np.ndarray]) -> Path:
    for name, notes in sets.items():
        make_midi(folder / f"{name}.mid", [(int(on * Q), max(1, int(d * Q)), int(p)) for on, d, p in notes])
    return folder


def test_musicality_command_writes_json_and_plot(tmp_path: Path) -> None:
    generated = write_set(tmp_path / "gen", toy_sets(2, pieces=8))
    reference = write_set(tmp_path / "ref", toy_sets(0, pieces=8))
    train = write_set(tmp_path / "train", toy_sets(1, pieces=8))
    out, plot = tmp_path / "m.json", tmp_path / "m.png"
    result = CliRunner().invoke(app, ["musicality", str(generated), "--reference", str(reference), "--train", str(train),
                                      "--json", "--out", str(out), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed == json.loads(out.read_text())
    assert printed["sets"]["generated"]["pieces"] == 8 and printed["mean_oa"]["ratio"] > 0.8
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_musicality_command_names_a_missing_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["musicality", str(tmp_path / "nowhere"), "--reference", str(tmp_path),
                                      "--train", str(tmp_path)])
    assert result.exit_code != 0
    assert "nowhere" in str(result.exception)
