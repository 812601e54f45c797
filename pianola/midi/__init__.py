"""MIDI: reading and writing (here), validation (`validate`), notes as arrays (`notes`).

Shared by every stage. symusic (a C++ reader) parses a file in about a millisecond, where music21 needs seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import symusic

from pianola.errors import PianolaError
from pianola.io import atomic_path

PIANO_PROGRAM = 0
MIDI_SUFFIXES = (".mid", ".midi")  # the file names every stage takes for MIDI
LOWEST_PITCH = 21  # A0, the lowest key of a piano
KEYS = 88  # A0..C8


def load_score(path: str | os.PathLike) -> symusic.Score:
    """Parse a MIDI file in ticks (symusic's default time unit)."""
    return symusic.Score(str(path))


def write_score(score: symusic.Score, path: str | os.PathLike) -> None:
    """Write `score` as a MIDI file, atomically."""
    with atomic_path(path) as tmp:
        score.dump_midi(str(tmp))


def midi_files(folder: str | os.PathLike) -> list[Path]:
    """The MIDI files directly in `folder`, sorted by name (symlinks are not followed)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PianolaError(f"{folder}: no such folder; run `pianola ingest` first or pass --in")
    return sorted(
        p for p in folder.iterdir() if p.suffix.lower() in MIDI_SUFFIXES and p.is_file() and not p.is_symlink()
    )

