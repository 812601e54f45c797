"""Held-out evaluation in the paper's sense: for every window of `window` tokens of every piece,
the cross-entropy (nats) of the token that follows it, with perplexity, top-1 accuracy and OOV rate.

Beside it, the likelihood per NOTE, which ranks encodings: a piece's token NLL summed over all its
tokens (each predicted from up to `window` tokens before it), divided by its number of MIDI notes.
A token costs little in an encoding that spends many tokens on a note; per note, encodings of the
same pieces are compared on one scale. The paper's models see only full windows, so their opening
tokens cannot be scored: their figure is the mean over the scored tokens times the tokens per note.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pianola.data.corpus import Piece
from pianola.data.sequences import EncodedSplit
from pianola.errors import PianolaError
from pianola.io import atomic_write_text
from pianola.midi import midi_files
from pianola.midi.notes import load_notes
from pianola.models.bundle import Bundle
from pianola.models.inference import next_token_probs

_EPS = 1e-12  # a float32 softmax can round a probability to 0


@dataclass
class HeldOutMetrics:
    cross_entropy: float  # nats per predicted token
    perplexity: float
    accuracy: float  # top-1
    oov_rate: float  # share of predicted tokens outside the vocabulary (<unk>)
    tokens: int  # tokens predicted: one per window
    nll_per_note: float | None = None  # nats per MIDI note over whole pieces; None where notes are unknown
    notes: int | None = None  # MIDI notes of the pieces

    def to_json(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        line = (
            f"cross-entropy {self.cross_entropy:.4f} nats/token, perplexity {self.perplexity:.2f}, "
            f"accuracy {self.accuracy:.2%}, OOV {self.oov_rate:.2%}, {self.tokens:,} tokens"
        )
        if self.nll_per_note is not None:
            line += f"; {self.nll_per_note:.4f} nats/note over {self.notes:,} notes"
        return line


def held_out_metrics(bundle: Bundle, split: EncodedSplit, *, batch_size: int = 512) -> HeldOutMetrics:
    """Metrics over every window of every piece of `split` (ids in the bundle's vocabulary)."""
    window = bundle.window
    starts = split.window_starts(window)
    if not len(starts):
        raise PianolaError(f"no piece is longer than the model's window ({window} tokens): nothing to evaluate")
    nll = 0.0
    correct = 0
    for begin in range(0, len(starts), batch_size):
        rows = split.windows(starts[begin : begin + batch_size], window)  # (B, window + 1)
        probs = next_token_probs(bundle, rows[:, :-1])  # (B, V)
        targets = rows[:, -1]
        nll -= float(np.log(np.maximum(probs[np.arange(len(targets)), targets], _EPS)).sum())
        correct += int((probs.argmax(axis=1) == targets).sum())
    targets = split.ids[starts + window]
    ce = nll / len(starts)
    per_note = None
    if split.notes is not None and split.notes.sum() > 0:
        opening, scored = opening_nll(bundle, split) if bundle.input_kind == "tokens" else (0.0, 0)
        scored += len(starts)
        predictable = int(np.maximum(np.diff(split.offsets) - 1, 0).sum())  # every token but each piece's first
        per_note = round((nll + opening) / scored * predictable / int(split.notes.sum()), 6)
    return HeldOutMetrics(
        cross_entropy=round(ce, 6),
        perplexity=round(math.exp(ce), 4),
        accuracy=round(correct / len(starts), 6),
        oov_rate=round(float(np.mean(targets == 0)), 6),
        tokens=int(len(starts)),
        nll_per_note=per_note,
        notes=None if split.notes is None else int(split.notes.sum()),
    )


def opening_nll(bundle: Bundle, split: EncodedSplit) -> tuple[float, int]:
    """NLL summed over the tokens no full window precedes (positions 1 .. window - 1 of each piece), and their count.

    A causal model predicts them from the piece's start in one pass over its first window.
    """
    import keras

    window = bundle.window
    nll, count = 0.0, 0
    openings = [split.piece_ids(i)[:window] for i in range(len(split.pieces))]
    full = [ids for ids in openings if len(ids) == window]
    batches = [np.stack(full)] if full else []
    batches += [ids[None, :] for ids in openings if 1 < len(ids) < window]
    for x in batches:  # (B, T)
        # A direct call, not predict_on_batch: under a distribution strategy that splits and re-joins the batch.
        probs = keras.ops.convert_to_numpy(bundle.model(x.astype("int32"), training=False))  # (B, T, V)
        hit = np.take_along_axis(probs[:, :-1], x[:, 1:, None].astype(np.int64), axis=2)[:, :, 0]  # (B, T - 1)
        nll -= float(np.log(np.maximum(hit, _EPS)).sum())
        count += hit.size
    return nll, count


def encode_midi(bundle: Bundle, midi_dir: str | os.PathLike, pieces: list[str] | None = None) -> EncodedSplit:
    """The MIDI files of `midi_dir` (only `pieces`, when given) in the bundle's own tokenizer and vocabulary."""

    files = midi_files(midi_dir)
    if pieces is not None:
        wanted = set(pieces)
        missing = wanted - {p.name for p in files}
        if missing:
            raise PianolaError(f"{midi_dir}: missing validation piece(s) {', '.join(sorted(missing)[:5])}")
        files = [p for p in files if p.name in wanted]
    if not files:
        raise PianolaError(f"{midi_dir}: no MIDI files to evaluate")

    tokenizer = bundle.tokenizer
    encoded = []
    for path in files:
        try:
            encoded.append(Piece(path.name, tokenizer.encode(path), len(load_notes(path))))
        except PianolaError:
            raise
        except Exception as e:
            raise PianolaError(f"{path}: cannot be tokenized ({e})") from e
    return EncodedSplit.encode(encoded, bundle.vocab)


def evaluate_midi(bundle: Bundle, midi_dir: str | os.PathLike, pieces: list[str] | None = None) -> HeldOutMetrics:
    """Held-out metrics of `bundle` on the MIDI files of `midi_dir`."""
    return held_out_metrics(bundle, encode_midi(bundle, midi_dir, pieces))


def validation_pieces(sequences_dir: str | os.PathLike) -> list[str]:
    """The validation piece names recorded by the sequences stage."""
    import json

    meta_path = Path(sequences_dir) / "meta.json"
    try:
        return list(json.loads(meta_path.read_text())["valid"]["pieces"])
    except FileNotFoundError as e:
        raise PianolaError(f"{meta_path}: not found; run `pianola sequences` first") from e


def write_training_curves(bundle: Bundle, path: str | os.PathLike) -> None:
    """The bundle's per-epoch losses as CSV (epoch, loss, val_loss, accuracy, val_accuracy), for DVC plots."""

    columns = ["epoch", "loss", "val_loss", "accuracy", "val_accuracy"]
    lines = [",".join(columns)]
    for row in bundle.info.get("history", []):
        lines.append(",".join("" if row.get(c) is None else str(row[c]) for c in columns))
    atomic_write_text(path, "\n".join(lines) + "\n")
