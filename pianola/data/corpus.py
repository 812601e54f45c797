"""The tokenize stage: a folder of MIDI files -> one token sequence per piece, plus corpus statistics.

Writes tokens.jsonl (one `{"piece", "tokens"}` line per file), vocab.json (token counts),
stats.json and the paper's corpus plots. A file that cannot be read is reported and skipped.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pianola.errors import PianolaError
from pianola.io import atomic_path, atomic_write_json
from pianola.midi import load_score, midi_files
from pianola.midi.notes import score_notes
from pianola.plots import PlotWorker
from pianola.tokenizers.base import Tokenizer

MIDI_SUFFIXES = {".mid", ".midi"}
TOKENS_FILE = "tokens.jsonl"


@dataclass
class Piece:
    name: str
    tokens: list[str]
    # Notes of the MIDI file as music_metrics.score_notes counts them: the denominator of the held-out
    # likelihood per note, the same whatever the encoding. None where the tokens came without it.
    notes: int | None = None


@dataclass
class TokenizeReport:
    pieces: int
    tokens: int
    skipped: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        line = f"tokenized {self.pieces} pieces into {self.tokens:,} tokens"
        if self.skipped:
            line += f"; skipped {len(self.skipped)} unreadable file(s)"
        return line


def write_pieces(path: str | os.PathLike, pieces: list[Piece]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for piece in pieces:
            record = {"piece": piece.name, "tokens": piece.tokens}
            if piece.notes is not None:
                record["notes"] = piece.notes
            f.write(json.dumps(record) + "\n")


def read_pieces(path: str | os.PathLike) -> list[Piece]:
    """Pieces of a tokens.jsonl file (a folder holding one is accepted too)."""
    path = Path(path)
    if path.is_dir():
        path = path / TOKENS_FILE
    if not path.exists():
        raise PianolaError(f"{path}: not found; run `pianola tokenize` first")
    pieces = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            try:
                record = json.loads(line)
                notes = record.get("notes")
                pieces.append(Piece(str(record["piece"]), list(record["tokens"]), None if notes is None else int(notes)))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise PianolaError(f"{path}:{number}: not a tokens.jsonl record ({e})") from e
    return pieces


def unigram_entropy(counts: Counter) -> float:
    """Entropy in nats of the token frequency table: the loss of a model that ignores context."""
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values()) if total else 0.0


def tokenize_corpus(
    in_dir: str | os.PathLike, out_dir: str | os.PathLike, tokenizer: Tokenizer, *, plots: bool = True
) -> TokenizeReport:
    """Tokenize every MIDI file of `in_dir` into `out_dir`."""
    out_dir = Path(out_dir)
    files = midi_files(in_dir)
    plotter = PlotWorker() if plots else None
    try:
        return _tokenize_files(in_dir, files, out_dir, tokenizer, plotter)
    finally:
        if plotter is not None:
            plotter.close()


def _tokenize_files(
    in_dir: str | os.PathLike, files: list[Path], out_dir: Path, tokenizer: Tokenizer, plotter: PlotWorker | None
) -> TokenizeReport:
    pieces: list[Piece] = []
    example: Path | None = None  # the first readable piece, drawn as pitch against offset
    skipped: list[dict] = []
    pitch_histogram = np.zeros(128, dtype=np.int64)
    for path in files:
        try:
            tokens = tokenizer.encode(path)
            score = load_score(path)
        except Exception as e:  # one unreadable file must not stop the corpus
            skipped.append({"piece": path.name, "reason": str(e) or type(e).__name__})
            continue
        if not tokens:
            skipped.append({"piece": path.name, "reason": "no pitched notes"})
            continue
        pieces.append(Piece(path.name, tokens, len(score_notes(score))))
        example = example or path
        for track in score.tracks:
            if not track.is_drum:
                pitch_histogram += np.bincount(track.notes.numpy()["pitch"].astype(np.int64), minlength=128)
    if not pieces:
        reasons = "; ".join(f"{s['piece']}: {s['reason']}" for s in skipped[:3])
        raise PianolaError(f"{in_dir}: no MIDI file could be tokenized" + (f" ({reasons})" if reasons else ""))

    counts = Counter(t for piece in pieces for t in piece.tokens)
    write_pieces(out_dir / TOKENS_FILE, pieces)
    atomic_write_json(out_dir / "vocab.json", dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))))
    lengths = [len(p.tokens) for p in pieces]
    atomic_write_json(
        out_dir / "stats.json",
        {
            "tokenizer": tokenizer.config(),
            "pieces": len(pieces),
            "tokens": sum(lengths),
            "distinct_tokens": len(counts),
            "unigram_entropy_nats": round(unigram_entropy(counts), 4),
            "tokens_per_piece": {"min": min(lengths), "median": int(np.median(lengths)), "max": max(lengths)},
            "pitch_class_counts": [int(pitch_histogram[pc::12].sum()) for pc in range(12)],
            "skipped": skipped,
        },
    )
    if plotter is not None:
        plotter.draw(out_dir, counts, pitch_histogram, example)
    return TokenizeReport(len(pieces), sum(lengths), skipped)
