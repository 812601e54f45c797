"""A piece's notes as one array: (N, 3) float64 (onset in quarters, duration in quarters, MIDI pitch), sorted.

What metrics, musicality and drift measure, read from a symusic score or a MIDI file.
"""

from __future__ import annotations

import os

import numpy as np
import symusic

from pianola.midi import load_score

PITCH_CLASS_NAMES = ["C", "C#", "D", "E-", "E", "F", "F#", "G", "G#", "A", "B-", "B"]
# Onsets and note ends are compared on this grid (in quarters), so that a note ending exactly
# where the next begins does not count as still sounding through floating-point error.
TIME_DECIMALS = 6


def score_notes(score: symusic.Score) -> np.ndarray:
    """(N, 3) float64 (onset quarters, duration quarters, pitch) of every pitched note, sorted.

    A pitch struck twice at the same onset (both hands, or doubled tracks) is one key on a
    piano: it is kept once, with its longest duration.
    """
    parts = [t.notes.numpy() for t in score.tracks if not t.is_drum and len(t.notes)]
    if not parts:
        return np.zeros((0, 3))
    # From ticks, in float64: symusic's own quarter unit is float32, too coarse late in long pieces.
    tpq = float(score.ticks_per_quarter)
    onset = np.concatenate([p["time"] for p in parts]) / tpq
    duration = np.concatenate([p["duration"] for p in parts]) / tpq
    pitch = np.concatenate([p["pitch"] for p in parts]).astype(np.float64)
    order = np.lexsort((-duration, pitch, onset))
    notes = np.stack([onset[order], duration[order], pitch[order]], axis=1)
    first = np.ones(len(notes), dtype=bool)
    first[1:] = (notes[1:, 0] != notes[:-1, 0]) | (notes[1:, 2] != notes[:-1, 2])
    return notes[first]


def load_notes(midi_path: str | os.PathLike) -> np.ndarray:
    """The notes of a MIDI file, as `score_notes`."""
    return score_notes(load_score(midi_path))

