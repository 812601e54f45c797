"""The sequences stage: token pieces -> integer ids, windows, and a split by piece.

A validation piece is never seen in training: the split draws whole pieces, and the
vocabulary is built from the training pieces alone (unseen tokens map to `<unk>`).
Arrays hold each piece's ids end to end; a window is a view into them, not a copy.
"""

from __future__ import annotations

import json
import os
import random
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pianola.data.corpus import Piece, iter_pieces, parse_piece, tokens_file
from pianola.data.vocab import Vocabulary
from pianola.errors import PianolaError
from pianola.io import atomic_path, atomic_write_json

SPLITS = ("train", "valid")


def split_pieces(names: list[str], valid_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, valid) piece names: a seeded shuffle of whole pieces, at least one in each when possible."""
    if not 0.0 <= valid_fraction < 1.0:
        raise PianolaError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    ordered = sorted(names)
    random.Random(seed).shuffle(ordered)
    n_valid = round(len(ordered) * valid_fraction)
    if valid_fraction > 0 and len(ordered) >= 2:
        n_valid = min(max(n_valid, 1), len(ordered) - 1)
    return sorted(ordered[n_valid:]), sorted(ordered[:n_valid])


@dataclass
class EncodedSplit:
    """The ids of some pieces laid end to end; piece i is ids[offsets[i]:offsets[i+1]]."""

    ids: np.ndarray  # (total,) int32
    offsets: np.ndarray  # (pieces + 1,) int64
    pieces: list[str]
    notes: np.ndarray | None = None  # (pieces,) int64: each piece's MIDI notes (see corpus.Piece), if known

    @classmethod
    def encode(cls, pieces: list[Piece], vocab: Vocabulary) -> EncodedSplit:
        arrays = [vocab.encode(p.tokens) for p in pieces]
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum([len(a) for a in arrays], out=offsets[1:])
        ids = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int32)
        known = bool(pieces) and all(p.notes is not None for p in pieces)
        notes = np.array([p.notes for p in pieces], dtype=np.int64) if known else None
        return cls(ids.astype(np.int32), offsets, [p.name for p in pieces], notes)

    def window_starts(self, window: int) -> np.ndarray:
        """Start index of every window of `window` inputs + 1 target lying inside one piece."""
        starts = [
            np.arange(begin, end - window, dtype=np.int64)
            for begin, end in zip(self.offsets[:-1], self.offsets[1:])
            if end - begin > window
        ]
        return np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)

    def windows(self, starts: np.ndarray, window: int) -> np.ndarray:
        """(len(starts), window + 1) int32: the inputs of each window and the token after it."""
        return self.ids[starts[:, None] + np.arange(window + 1)]

    def piece_ids(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def save(self, path: str | os.PathLike) -> None:
        lengths = np.diff(self.offsets)
        write_split(path, self.pieces, lengths, self.notes, (self.piece_ids(i) for i in range(len(self.pieces))))

    @classmethod
    def load(cls, path: str | os.PathLike) -> EncodedSplit:
        try:
            with np.load(path) as data:
                notes = data["notes"] if "notes" in data.files else None
                return cls(data["ids"], data["offsets"], [str(p) for p in data["pieces"]], notes)
        except FileNotFoundError as e:
            raise PianolaError(f"{path}: not found; run `pianola sequences` first") from e
        except (KeyError, ValueError, OSError) as e:
            raise PianolaError(f"{path}: not a pianola sequences file ({e})") from e


def write_split(
    path: str | os.PathLike, pieces: list[str], lengths: np.ndarray, notes: np.ndarray | None, ids: Iterable[np.ndarray]
) -> int:
    """Write a split file (what EncodedSplit.load reads: a compressed .npz) from each piece's ids in turn, so the
    whole split is never held; returns how many ids are 0 (`<unk>`). `ids` must give `lengths` ids per piece."""
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    small = {"offsets": offsets, "pieces": np.array(pieces, dtype=str)}
    if notes is not None:
        small["notes"] = np.asarray(notes, dtype=np.int64)
    unknown = written = 0
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        with archive.open("ids.npy", "w", force_zip64=True) as member:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.int32)), "fortran_order": False,
                      "shape": (int(offsets[-1]),)}
            np.lib.format.write_array_header_1_0(member, header)
            for piece_ids in ids:
                piece_ids = np.ascontiguousarray(piece_ids, dtype=np.int32)
                member.write(piece_ids.tobytes())
                unknown += int(np.count_nonzero(piece_ids == 0))
                written += len(piece_ids)
        if written != offsets[-1]:
            raise PianolaError(f"{path}: {written} ids written where the pieces' lengths add up to {offsets[-1]}")
        for name, array in small.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    return unknown


def build_sequences(
    tokens: str | os.PathLike, out_dir: str | os.PathLike, *, window: int = 100, valid_fraction: float = 0.1, seed: int = 42
) -> dict:
    """Write vocab.json, train.npz, valid.npz and meta.json to `out_dir`; return the meta.

    tokens.jsonl is read three times, a line at a time: the pieces' names and lengths (to split them), the training
    pieces' tokens (the vocabulary), then each split's pieces in order (their ids, written as they come). Only
    per-piece numbers and the vocabulary are held, whatever the size of the corpus.
    """
    if window < 1:
        raise PianolaError(f"window must be at least 1, got {window}")
    out_dir = Path(out_dir)
    path = tokens_file(tokens)
    tokenizer_config = read_tokenizer_config(tokens)
    # name -> (line offset, line number, tokens, notes); a name given twice keeps its last line
    index: dict[str, tuple[int, int, int, int | None]] = {
        piece.name: (offset, number, len(piece.tokens), piece.notes)
        for number, (offset, piece) in enumerate(iter_pieces(path), 1)
    }
    train_names, valid_names = split_pieces(list(index), valid_fraction, seed)
    with open(path, "rb") as f:
        vocab = Vocabulary.build(_read_at(f, path, *index[name][:2]).tokens for name in train_names)
        meta: dict = {"window": window, "valid_fraction": valid_fraction, "seed": seed, "vocab_size": len(vocab)}
        for split, names in zip(SPLITS, (train_names, valid_names)):
            lengths = np.array([index[n][2] for n in names], dtype=np.int64)
            notes = [index[n][3] for n in names]
            known = bool(names) and all(n is not None for n in notes)
            unknown = write_split(out_dir / f"{split}.npz", names, lengths, np.array(notes, dtype=np.int64) if known else None,
                                  (vocab.encode(_read_at(f, path, *index[n][:2]).tokens) for n in names))
            meta[split] = {
                "pieces": names,
                "tokens": int(lengths.sum()),
                "windows": int(np.maximum(lengths - window, 0).sum()),
                "oov_rate": round(unknown / lengths.sum() if lengths.sum() else 0.0, 6),
                "notes": int(sum(notes)) if known else None,
            }
    if meta["train"]["windows"] == 0:
        raise PianolaError(
            f"{tokens}: no training piece is longer than the window ({window} tokens); add data or lower sequences.window"
        )
    vocab.save(out_dir / "vocab.json")
    atomic_write_json(out_dir / "tokenizer.json", tokenizer_config)
    atomic_write_json(out_dir / "meta.json", meta)
    return meta


def _read_at(f, path: Path, offset: int, number: int) -> Piece:
    """The piece of line `number` of tokens.jsonl, at byte `offset` of the open file `f`."""
    f.seek(offset)
    return parse_piece(f.readline(), path, number)


def read_tokenizer_config(tokens: str | os.PathLike) -> dict:
    """The tokenizer config the tokenize stage recorded in stats.json beside tokens.jsonl."""
    tokens = Path(tokens)
    stats = (tokens if tokens.is_dir() else tokens.parent) / "stats.json"
    try:
        return dict(json.loads(stats.read_text())["tokenizer"])
    except FileNotFoundError as e:
        raise PianolaError(f"{stats}: not found; run `pianola tokenize` first") from e
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise PianolaError(f"{stats}: no tokenizer config in it ({e})") from e
