"""Drift monitoring as a user sees it: a corpus against itself, moved up two octaves, played slower, as tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import symusic
from typer.testing import CliRunner

from conftest import make_midi, motif_notes
from pianola.cli import app
from pianola.data.corpus import tokenize_corpus
from pianola.data.ingest import merge_new_pieces
from pianola.errors import PianolaError
from pianola.monitoring.drift import measure_drift, monitor_settings
from pianola.tokenizers import get_tokenizer

THRESHOLD = 0.5


def transposed(src: Path, dst: Path, semitones: int) -> Path:
    """A copy of every MIDI file of `src` in `dst`, moved by `semitones`."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.glob("*.mid")):
        symusic.Score(str(path)).shift_pitch(semitones).dump_midi(str(dst / path.name))
    return dst


def varied_rhythm(key: int, stretch: int = 1) -> list[tuple[int, int, int]]:
    """Quarter-note onsets with sixteenth, eighth and quarter lengths (times `stretch`): a spread of durations."""
    lengths = [120, 240, 480]
    return [(i * 480, lengths[i % 3] * stretch, 48 + key + (i % 5)) for i in range(48)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("drift") / "corpus"
    for key in range(4):
        make_midi(folder / f"piece{key}.mid", motif_notes(key))
    return folder


def test_a_corpus_has_not_drifted_from_itself(corpus: Path) -> None:
    report = measure_drift(corpus, corpus, threshold=THRESHOLD)
    assert not report.drifted and report.score == pytest.approx(0.0, abs=1e-9)
    assert set(report.features) == {"pitch", "duration", "ioi"}
    assert report.reason.startswith("no feature moved more than the threshold 0.5")


def test_two_octaves_up_is_drift_in_pitch_only(corpus: Path, tmp_path: Path) -> None:
    report = measure_drift(corpus, transposed(corpus, tmp_path / "up", 24), threshold=THRESHOLD)
    pitch = report.features["pitch"]
    assert report.drifted and report.score == pitch.normalised
    assert pitch.distance == pytest.approx(24.0)  # every note moved 24 semitones
    assert pitch.normalised == pytest.approx(24.0 / pitch.reference_std)
    assert pitch.current_mean - pitch.reference_mean == pytest.approx(24.0)
    assert report.features["duration"].distance == report.features["ioi"].distance == 0.0
    assert report.reason == (
        f"pitch moved {pitch.normalised:.2f} reference standard deviations (threshold 0.5): "
        f"mean pitch {pitch.current_mean:.1f} now, {pitch.reference_mean:.1f} in the reference"
    )


def test_a_small_transposition_stays_under_the_threshold(corpus: Path, tmp_path: Path) -> None:
    report = measure_drift(corpus, transposed(corpus, tmp_path / "up", 1), threshold=THRESHOLD)
    assert not report.drifted and 0 < report.score < THRESHOLD


def test_longer_notes_are_duration_drift_also_from_timed_tokens(tmp_path: Path) -> None:
    for key in range(3):
        make_midi(tmp_path / "reference" / f"piece{key}.mid", varied_rhythm(key))
        make_midi(tmp_path / "slower" / f"piece{key}.mid", varied_rhythm(key, stretch=2))
    tokenize_corpus(tmp_path / "slower", tmp_path / "tokens", get_tokenizer("timed"))

    from_midi = measure_drift(tmp_path / "reference", tmp_path / "slower", threshold=THRESHOLD)
    from_tokens = measure_drift(tmp_path / "reference", tmp_path / "tokens", threshold=THRESHOLD)
    for report in (from_midi, from_tokens):
        duration = report.features["duration"]
        assert report.drifted and report.score == duration.normalised
        assert duration.current_mean == pytest.approx(2 * duration.reference_mean)
        assert report.features["pitch"].distance == report.features["ioi"].distance == 0.0
        assert report.reason.startswith("duration moved")
    assert from_tokens.current.kind == "timed tokens"
    assert from_tokens.features["duration"].distance == pytest.approx(from_midi.features["duration"].distance)


def test_a_reference_of_equal_lengths_measures_in_grid_steps(corpus: Path, tmp_path: Path) -> None:
    for key in range(2):  # every corpus note is an eighth: its duration spread is zero
        make_midi(tmp_path / "slow" / f"piece{key}.mid", [(s * 2, d * 2, p) for s, d, p in motif_notes(key)])
    report = measure_drift(corpus, tmp_path / "slow", threshold=THRESHOLD)
    duration = report.features["duration"]
    assert duration.reference_std == 0.0 and duration.normalised == pytest.approx(0.5 * 12)  # an eighth in twelfths
    assert "twelfths of a quarter note" in report.reason


@pytest.mark.parametrize("tokenizer", ["timed", "remi", "roll"])
def test_tokens_read_back_as_their_midi(corpus: Path, tmp_path: Path, tokenizer: str) -> None:
    # Every tokenizer that keeps timing is decoded by itself (roll tokens also hold `note:P`, but no durations).
    tokenize_corpus(corpus, tmp_path / "tokens", get_tokenizer(tokenizer))
    report = measure_drift(tmp_path / "tokens" / "tokens.jsonl", corpus, threshold=THRESHOLD)
    assert report.reference.kind == f"{tokenizer} tokens" and report.score == pytest.approx(0.0, abs=1e-9)


def test_paper_tokens_give_pitch_from_notes_and_skip_chords(corpus: Path, tmp_path: Path) -> None:
    chords = [(i * 480 + offset, 480, pitch) for i in range(16) for offset, pitch in ((0, 60), (0, 64), (0, 67), (240, 84))]
    make_midi(tmp_path / "with_chords" / "chords.mid", chords)
    tokenize_corpus(tmp_path / "with_chords", tmp_path / "tokens", get_tokenizer("paper"))
    report = measure_drift(corpus, tmp_path / "tokens", threshold=THRESHOLD)
    assert report.current.kind == "paper tokens"
    assert set(report.features) == {"pitch"}
    assert report.not_measured == {"duration": "paper tokens carry no timing", "ioi": "paper tokens carry no timing"}
    # Only the lone C6 notes count: the C-major triads have no octave.
    assert report.features["pitch"].current_mean == 84.0
    assert "chord token" in report.current.skipped[0]["reason"]
    assert report.drifted


def test_cli_writes_the_report_and_prints_json(corpus: Path, tmp_path: Path) -> None:
    up = transposed(corpus, tmp_path / "up", 24)
    out = tmp_path / "metrics" / "drift.json"
    result = CliRunner().invoke(app, ["drift", "--reference", str(corpus), "--current", str(up),
                                      "--threshold", "0.5", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert json.loads(result.output) == written
    assert written["drifted"] is True and written["aggregate"] == "max" and written["threshold"] == 0.5
    assert written["score"] == written["features"]["pitch"]["normalised"]
    assert written["features"]["pitch"]["distance"] == 24.0 and written["features"]["pitch"]["drifted"] is True
    assert written["reason"].startswith("pitch moved")
    assert written["current"]["path"] == str(up.resolve()) and written["current"]["pieces"] == 4


def test_settings_come_from_params_then_options(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("monitor:\n  current: data/new\n  threshold: 0.8\n  features: [pitch]\n")
    settings = monitor_settings(params, threshold=1.5)
    assert (settings.reference, settings.current, settings.threshold, settings.features) == ("data/raw", "data/new", 1.5, ["pitch"])
    with pytest.raises(PianolaError, match="unknown drift feature"):
        monitor_settings(params, features=["tempo"])
    with pytest.raises(PianolaError, match="must be a positive number"):
        monitor_settings(params, threshold=0.0)


def test_missing_and_empty_inputs_are_clear_errors(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(PianolaError, match=r"current set .*nowhere: not found; pass a folder of MIDI files"):
        measure_drift(corpus, tmp_path / "nowhere", threshold=THRESHOLD)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PianolaError, match="reference .*empty: holds no MIDI files and no tokens.jsonl"):
        measure_drift(tmp_path / "empty", corpus, threshold=THRESHOLD)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "bad.mid").write_bytes(b"not a MIDI file")
    with pytest.raises(PianolaError, match="no notes could be read .*bad.mid"):
        measure_drift(corpus, tmp_path / "broken", threshold=THRESHOLD)


def test_new_pieces_merge_into_the_source_once_and_overwrite_nothing(corpus: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_midi(source / "incoming" / "piece0.mid", motif_notes(11))  # same name, other music
    written = merge_new_pieces(corpus, source)
    assert len(written) == 4 and all(p.parent == source / "corpus" for p in written)
    assert merge_new_pieces(corpus, source) == []  # the same bytes are already there
    incoming = transposed(corpus, tmp_path / "incoming", 24)
    written = merge_new_pieces(incoming, source)
    assert (source / "incoming" / "piece0.mid").read_bytes() != (incoming / "piece0.mid").read_bytes()
    assert any(p.name.startswith("piece0-") for p in written) and len(written) == 4
    for not_a_folder in ("music21:bach", ""):
        with pytest.raises(PianolaError, match=f"the corpus source '{not_a_folder}' is not a folder"):
            merge_new_pieces(incoming, not_a_folder)
    with pytest.raises(PianolaError, match="tokens.jsonl: no MIDI files to add to the corpus"):
        merge_new_pieces(tmp_path / "tokens.jsonl", source)
