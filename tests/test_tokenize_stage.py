"""The tokenize stage as a user runs it: `pianola tokenize` on a folder of MIDI files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_midi, scale_notes

PNGS = ("token_frequency.png", "pitch_class_frequency.png", "pitch_offset.png")


def pianola(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pianola.cli", *args], capture_output=True, text=True)


@pytest.fixture
def midi_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "raw"
    make_midi(folder / "a.mid", scale_notes(24))
    make_midi(folder / "b.mid", [(0, 480, 60), (0, 480, 64), (0, 480, 67), (480, 480, 62)])
    (folder / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x01")
    (folder / "notes.txt").write_text("not a MIDI file name; ignored")
    return folder


@pytest.mark.parametrize("tokenizer", ["paper", "timed"])
def test_tokenize_writes_tokens_vocab_and_stats(midi_folder: Path, tmp_path: Path, tokenizer: str) -> None:
    out = tmp_path / "tokens"
    result = pianola("tokenize", "--tokenizer", tokenizer, "--in", str(midi_folder), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "tokenized 2 pieces" in result.stdout and "skipped 1" in result.stdout
    lines = [json.loads(line) for line in (out / "tokens.jsonl").read_text().splitlines()]
    assert [line["piece"] for line in lines] == ["a.mid", "b.mid"]
    assert all(line["tokens"] for line in lines)
    vocab = json.loads((out / "vocab.json").read_text())
    assert sum(vocab.values()) == sum(len(line["tokens"]) for line in lines)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["tokenizer"]["name"] == tokenizer and stats["pieces"] == 2
    assert [s["piece"] for s in stats["skipped"]] == ["broken.mid"] and stats["skipped"][0]["reason"]
    assert sum(stats["pitch_class_counts"]) == 24 + 4
    assert sorted(p.name for p in out.iterdir()) == ["stats.json", "tokens.jsonl", "vocab.json"]  # no plots, no .tmp


def test_corpus_plots_draws_the_tokenized_corpus(midi_folder: Path, tmp_path: Path) -> None:
    tokens, plots = tmp_path / "tokens", tmp_path / "plots"
    assert pianola("tokenize", "--in", str(midi_folder), "--out", str(tokens)).returncode == 0
    result = pianola("corpus-plots", "--in", str(tokens), "--midi", str(midi_folder), "--out", str(plots))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in plots.iterdir()) == sorted(PNGS)  # no .tmp left
    for png in PNGS:
        assert (plots / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_corpus_plots_without_the_tokenized_corpus_or_its_midi_fails_clearly(midi_folder: Path, tmp_path: Path) -> None:
    result = pianola("corpus-plots", "--in", str(tmp_path / "nope"), "--midi", str(midi_folder), "--out", str(tmp_path / "p"))
    assert result.returncode == 1 and "run `pianola tokenize` first" in result.stderr and "Traceback" not in result.stderr
    tokens = tmp_path / "tokens"
    assert pianola("tokenize", "--in", str(midi_folder), "--out", str(tokens)).returncode == 0
    result = pianola("corpus-plots", "--in", str(tokens), "--midi", str(tmp_path), "--out", str(tmp_path / "p"))
    assert result.returncode == 1 and "a.mid: not found" in result.stderr
    assert not (tmp_path / "p").exists()


def test_paper_tokens_are_notes_and_chords(midi_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "tokens"
    assert pianola("tokenize", "--tokenizer", "paper", "--in", str(midi_folder), "--out", str(out)).returncode == 0
    pieces = {json.loads(line)["piece"]: json.loads(line)["tokens"] for line in (out / "tokens.jsonl").read_text().splitlines()}
    assert pieces["b.mid"] == ["0.4.7", "D4"]


def test_the_default_tokenizer_keeps_rhythm(midi_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "tokens"
    assert pianola("tokenize", "--in", str(midi_folder), "--out", str(out)).returncode == 0
    assert json.loads((out / "stats.json").read_text())["tokenizer"]["name"] == "timed"


def test_folder_without_readable_midi_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "x.mid").write_bytes(b"garbage")
    result = pianola("tokenize", "--in", str(tmp_path / "raw"), "--out", str(tmp_path / "t"))
    assert result.returncode == 1
    assert "no MIDI file could be tokenized" in result.stderr and "x.mid" in result.stderr
    assert not (tmp_path / "t" / "tokens.jsonl").exists()


def test_missing_folder_fails_clearly(tmp_path: Path) -> None:
    result = pianola("tokenize", "--in", str(tmp_path / "nope"), "--out", str(tmp_path / "t"))
    assert result.returncode == 1 and "no such folder" in result.stderr


def test_unknown_tokenizer_fails_clearly(midi_folder: Path, tmp_path: Path) -> None:
    result = pianola("tokenize", "--tokenizer", "octuple", "--in", str(midi_folder), "--out", str(tmp_path / "t"))
    assert result.returncode == 1 and "unknown tokenizer 'octuple'" in result.stderr


def test_tokenize_does_not_import_tensorflow_or_music21(midi_folder: Path, tmp_path: Path) -> None:
    # Start-up time is part of the tokenizer's speed: a command that does not train must stay light.
    code = (
        "import sys\n"
        "from pianola.cli import app\n"
        f"try:\n    app(['tokenize', '--in', {str(midi_folder)!r}, '--out', {str(tmp_path / 't')!r}])\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'music21', 'matplotlib') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
