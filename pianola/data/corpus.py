"""The tokenize stage: a folder of MIDI files -> one token sequence per piece, plus corpus statistics.

Writes tokens.jsonl (one `{"piece", "tokens"}` line per file), vocab.json (token counts) and
stats.json; the paper's corpus plots are drawn from them by `pianola corpus-plots` (pianola.plots), a stage
of its own. A file that cannot be read is reported and skipped.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pianola.data.shards import (
    PROGRESS_MIN_ITEMS,
    SHARD_FILES,
    ShardMap,
    map_in_order,
    progress_bar,
    shards_of,
)
from pianola.errors import PianolaError
from pianola.io import atomic_path, atomic_write_json, scratch_folder
from pianola.midi import load_score, midi_files
from pianola.midi.notes import score_notes
from pianola.tokenizers.base import Tokenizer

TOKENS_FILE = "tokens.jsonl"
COPY_CHUNK = 1 << 20


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
        f.writelines(piece_line(piece) for piece in pieces)


def read_pieces(path: str | os.PathLike) -> list[Piece]:
    """Pieces of a tokens.jsonl file (a folder holding one is accepted too)."""
    return [piece for _, piece in iter_pieces(path)]


def tokens_file(path: str | os.PathLike) -> Path:
    """The tokens.jsonl of `path` (the file, or a folder holding one); a clear error where there is none."""
    path = Path(path)
    if path.is_dir():
        path = path / TOKENS_FILE
    if not path.exists():
        raise PianolaError(f"{path}: not found; run `pianola tokenize` first")
    return path


def parse_piece(line: bytes | str, path: Path, number: int) -> Piece:
    """One tokens.jsonl line (number `number` of `path`, named in the error of a malformed one)."""
    try:
        record = json.loads(line)
        notes = record.get("notes")
        return Piece(str(record["piece"]), list(record["tokens"]), None if notes is None else int(notes))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as e:
        raise PianolaError(f"{path}:{number}: not a tokens.jsonl record ({e})") from e


def iter_pieces(path: str | os.PathLike) -> Iterator[tuple[int, Piece]]:
    """(byte offset of its line, piece) of each line of a tokens.jsonl, read one line at a time."""
    path = tokens_file(path)
    with open(path, "rb") as f:
        offset = 0
        for number, line in enumerate(f, 1):
            yield offset, parse_piece(line, path, number)
            offset += len(line)


def unigram_entropy(counts: Counter) -> float:
    """Entropy in nats of the token frequency table: the loss of a model that ignores context."""
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values()) if total else 0.0


@dataclass
class TokenizedShard:
    """What tokenizing some files gives: their tokens.jsonl lines, and the counts the corpus statistics sum."""

    part: Path  # the file holding one `{"piece", "tokens", "notes"}` JSON line per piece tokenized, in file order
    lengths: list[int]  # tokens of each piece
    counts: Counter  # token -> occurrences
    pitch_histogram: np.ndarray  # (128,) notes per MIDI pitch
    skipped: list[dict]


def piece_line(piece: Piece) -> str:
    """`piece` as a tokens.jsonl line."""
    record = {"piece": piece.name, "tokens": piece.tokens}
    if piece.notes is not None:
        record["notes"] = piece.notes
    return json.dumps(record) + "\n"


def tokenize_files(paths: list[Path], tokenizer_config: dict, parts: Path) -> TokenizedShard:
    """Tokenize `paths` in order with the tokenizer of `tokenizer_config`: the work of one shard, on any worker.

    The lines go to a file of their own in the folder `parts` (named after the first path), not back to the
    caller: workers write in parallel, and the caller joins the files. A file that cannot be read or holds no
    pitched notes is skipped with its reason.
    """
    from pianola.tokenizers import tokenizer_from_config

    tokenizer = tokenizer_from_config(tokenizer_config)
    lines, lengths, skipped = [], [], []
    counts: Counter = Counter()
    pitch_histogram = np.zeros(128, dtype=np.int64)
    for path in paths:
        try:
            tokens = tokenizer.encode(path)
            score = load_score(path)
        except Exception as e:  # noqa: BLE001 - one unreadable file must not stop the corpus
            skipped.append({"piece": path.name, "reason": str(e) or type(e).__name__})
            continue
        if not tokens:
            skipped.append({"piece": path.name, "reason": "no pitched notes"})
            continue
        lines.append(piece_line(Piece(path.name, tokens, len(score_notes(score)))))
        lengths.append(len(tokens))
        counts.update(tokens)
        for track in score.tracks:
            if not track.is_drum:
                pitch_histogram += np.bincount(track.notes.numpy()["pitch"].astype(np.int64), minlength=128)
    part = parts / f"{paths[0].name}.jsonl"
    with open(part, "w") as f:  # inside the caller's scratch folder, discarded whole if anything is cut short
        f.writelines(lines)
    return TokenizedShard(part, lengths, counts, pitch_histogram, skipped)


def tokenize_corpus(
    in_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    tokenizer: Tokenizer,
    *,
    map_shards: ShardMap | None = None,
    shard_files: int = SHARD_FILES,
    progress: bool = False,
) -> TokenizeReport:
    """Tokenize every MIDI file of `in_dir` into `out_dir`.

    The files go in shards of `shard_files` through `map_shards` (default: one after another, here), and the
    shards' lines are written in file order as they come, so only the statistics are held, never every piece's
    tokens. The output is the same whatever runs the shards.
    """
    out_dir = Path(out_dir)
    files = midi_files(in_dir)
    map_shards = map_shards or map
    skipped: list[dict] = []
    lengths: list[int] = []
    counts: Counter = Counter()
    pitch_histogram = np.zeros(128, dtype=np.int64)
    # the shards' files go to a scratch folder beside tokens.jsonl, joined into it in order as they come
    with (scratch_folder(out_dir / TOKENS_FILE) as parts, atomic_path(out_dir / TOKENS_FILE) as tmp, open(tmp, "wb") as f,
          progress_bar(progress and len(files) > PROGRESS_MIN_ITEMS, f"tokenize {in_dir}", len(files)) as advance):
        work = functools.partial(tokenize_files, tokenizer_config=tokenizer.config(), parts=parts)
        for shard, done in map_in_order(map_shards, work, shards_of(files, shard_files)):
            with open(done.part, "rb") as part:
                shutil.copyfileobj(part, f, COPY_CHUNK)
            done.part.unlink()
            lengths += done.lengths
            counts.update(done.counts)
            pitch_histogram += done.pitch_histogram
            skipped += done.skipped
            advance(len(shard), f"{len(lengths)} pieces, {len(skipped)} skipped")
        if not lengths:
            reasons = "; ".join(f"{s['piece']}: {s['reason']}" for s in skipped[:3])
            raise PianolaError(f"{in_dir}: no MIDI file could be tokenized" + (f" ({reasons})" if reasons else ""))

    atomic_write_json(out_dir / "vocab.json", dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))))
    atomic_write_json(
        out_dir / "stats.json",
        {
            "tokenizer": tokenizer.config(),
            "pieces": len(lengths),
            "tokens": sum(lengths),
            "distinct_tokens": len(counts),
            "unigram_entropy_nats": round(unigram_entropy(counts), 4),
            "tokens_per_piece": {"min": min(lengths), "median": int(np.median(lengths)), "max": max(lengths)},
            "pitch_class_counts": [int(pitch_histogram[pc::12].sum()) for pc in range(12)],
            "skipped": skipped,
        },
    )
    return TokenizeReport(len(lengths), sum(lengths), skipped)
