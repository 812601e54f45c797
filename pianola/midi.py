"""MIDI reading and writing shared by the tokenizers, generation and metrics.

symusic (a C++ reader) parses a file in about a millisecond, where music21 needs seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import symusic

from pianola.io import atomic_path

PIANO_PROGRAM = 0


def load_score(path: str | os.PathLike) -> symusic.Score:
    """Parse a MIDI file in ticks (symusic's default time unit)."""
    return symusic.Score(str(path))


def write_score(score: symusic.Score, path: str | os.PathLike) -> None:
    """Write `score` as a MIDI file, atomically."""
    with atomic_path(path) as tmp:
        score.dump_midi(str(tmp))
