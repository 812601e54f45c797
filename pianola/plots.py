"""PNG plots: the paper's corpus figures, training curves, piano rolls and musicality densities.

matplotlib is imported here only, on first use, so commands that draw nothing start fast.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np

from pianola.data.corpus import iter_pieces, tokens_file
from pianola.errors import PianolaError
from pianola.io import atomic_path
from pianola.midi import load_score
from pianola.midi.notes import PITCH_CLASS_NAMES


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


CORPUS_PLOTS = ("token_frequency.png", "pitch_class_frequency.png", "pitch_offset.png")


def _png(fig) -> bytes:
    """`fig` as PNG bytes, then closed. Margins are the figure's own (subplots_adjust), not measured from its
    text with bbox_inches="tight", which costs a second rendering."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    pyplot().close(fig)
    return buffer.getvalue()


def save_figure(fig, path: str | os.PathLike, *, tight: bool = True) -> None:
    """Save a matplotlib figure as PNG atomically (cropped to what it draws where `tight`), then close it."""
    with atomic_path(path) as tmp:
        if tight:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
            pyplot().close(fig)
        else:
            Path(tmp).write_bytes(_png(fig))


def corpus_plots(tokens_dir: str | os.PathLike, midi_dir: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """The paper's corpus figures of a tokenized corpus, in `out_dir`: token_frequency.png (from vocab.json),
    pitch_class_frequency.png (stats.json) and pitch_offset.png (the first piece of tokens.jsonl, read from its MIDI
    file in `midi_dir`). Returns the files written."""
    tokens_dir, out_dir = Path(tokens_dir), Path(out_dir)
    try:
        counts = json.loads((tokens_dir / "vocab.json").read_text())
        pitch_classes = json.loads((tokens_dir / "stats.json").read_text())["pitch_class_counts"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PianolaError(f"{tokens_dir}: no tokenized corpus to draw ({e}); run `pianola tokenize` first") from e
    first = next((piece for _, piece in iter_pieces(tokens_dir)), None)
    if first is None:
        raise PianolaError(f"{tokens_file(tokens_dir)}: holds no piece to draw")
    example = Path(midi_dir) / first.name
    if not example.is_file():
        raise PianolaError(f"{example}: not found; pass --midi, the folder `pianola tokenize` read")
    counts_plots(out_dir, counts, pitch_classes)
    save_figure(piece_figure(example), out_dir / "pitch_offset.png", tight=False)
    return [out_dir / name for name in CORPUS_PLOTS]


def counts_plots(out_dir: Path, counts: dict[str, int], pitch_classes: list[int]) -> None:
    """token_frequency.png (the 40 most frequent of `counts`: token -> occurrences, most frequent first, as
    vocab.json holds them) and pitch_class_frequency.png (notes per pitch class, C first)."""
    plt = pyplot()
    top = list(counts.items())[:40]
    longest = max((len(t) for t, _ in top), default=1)
    fig, ax = plt.subplots(figsize=(12, 4))
    ax.bar(range(len(top)), [c for _, c in top])
    ax.set_xticks(range(len(top)), [t for t, _ in top], rotation=90, fontsize=7)
    ax.set_title(f"Token frequency (40 most frequent of {len(counts)})")
    ax.set_ylabel("count")
    # room under the axis for the longest label, upright: about 0.055 inch a character at 7 points
    fig.subplots_adjust(left=0.07, right=0.99, top=0.92, bottom=min(0.6, 0.08 + 0.055 * longest / 4))
    save_figure(fig, out_dir / "token_frequency.png", tight=False)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(PITCH_CLASS_NAMES, pitch_classes)
    ax.set_title("Pitch-class frequency")
    ax.set_ylabel("notes")
    fig.subplots_adjust(left=0.15, right=0.97, top=0.92, bottom=0.08)
    save_figure(fig, out_dir / "pitch_class_frequency.png", tight=False)


def piece_figure(example: Path):
    """The paper's pitch against offset plot of one piece."""
    plt = pyplot()
    score = load_score(example)
    fig, ax = plt.subplots(figsize=(12, 4))
    for track in score.tracks:
        if track.is_drum or not len(track.notes):
            continue
        notes = track.notes.numpy()
        ax.scatter(notes["time"] / score.ticks_per_quarter, notes["pitch"], s=2, label=track.name or None)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(markerscale=4, fontsize=8)
    ax.set_title(f"Pitch against offset: {example.name}")
    ax.set_xlabel("offset (quarters)")
    ax.set_ylabel("MIDI pitch")
    fig.subplots_adjust(left=0.06, right=0.99, top=0.92, bottom=0.13)
    return fig


def training_curves(history: list[dict], path: str | os.PathLike, title: str) -> None:
    """Loss and accuracy per epoch, training against validation."""
    plt = pyplot()
    epochs = [row["epoch"] + 1 for row in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("loss", "train"), ("val_loss", "validation")):
        loss_ax.plot(epochs, [row.get(key) for row in history], marker="o", label=label)
    for key, label in (("accuracy", "train"), ("val_accuracy", "validation")):
        acc_ax.plot(epochs, [row.get(key) for row in history], marker="o", label=label)
    loss_ax.set(title=f"{title}: cross-entropy", xlabel="epoch", ylabel="nats per token")
    acc_ax.set(title=f"{title}: accuracy", xlabel="epoch", ylabel="top-1 accuracy")
    loss_ax.legend()
    acc_ax.legend()
    save_figure(fig, path)


def piano_roll(midi_path: str | os.PathLike, png_path: str | os.PathLike, title: str | None = None) -> None:
    """Piano roll of a MIDI file: one bar per note, time in seconds across, MIDI pitch up."""
    from matplotlib.collections import PolyCollection

    plt = pyplot()
    score = load_score(midi_path).to("second")
    empty = {"time": np.zeros(0), "duration": np.zeros(0), "pitch": np.zeros(0)}
    parts = [t.notes.numpy() for t in score.tracks if not t.is_drum and len(t.notes)] or [empty]
    start = np.concatenate([p["time"] for p in parts]).astype(np.float64)
    end = start + np.concatenate([p["duration"] for p in parts])
    pitch = np.concatenate([p["pitch"] for p in parts]).astype(np.float64)
    # One collection of rectangles (N, 4 corners, xy) draws thousands of notes in one call,
    # where a bar per note would take seconds.
    low, high = pitch - 0.4, pitch + 0.4
    corners = np.stack([np.stack(c, axis=1) for c in ((start, low), (end, low), (end, high), (start, high))], axis=1)
    fig, ax = plt.subplots(figsize=(12, 4))
    ax.add_collection(PolyCollection(corners, facecolors="tab:blue", edgecolors="none"))
    if len(pitch):
        ax.set_xlim(0, max(float(end.max()), 1e-3))
        ax.set_ylim(pitch.min() - 2, pitch.max() + 2)
    ax.set_title(title or f"Piano roll: {Path(midi_path).name}")
    ax.set_xlabel("time (seconds)")
    ax.set_ylabel("MIDI pitch")
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, png_path)

