"""The `timed` tokenizer: what the paper drops, kept — onsets, durations, voicings with octaves.

A piece is a stream of events on a grid of `steps_per_quarter` steps (12 by default: 16ths and
triplets both land on it). Notes sounding together share an onset and are listed low to high:

    note:60 dur:6 note:64 dur:6 shift:6 note:67 dur:12 ...

`shift:K` advances time by K steps (longer gaps chain several shifts), `note:P` starts MIDI
pitch P at the current time, `dur:K` gives the note just started a length of K steps.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import symusic

from pianola.midi import PIANO_PROGRAM, load_score
from pianola.tokenizers.base import Tokenizer

TICKS_PER_QUARTER_OUT = 480


class TimedTokenizer(Tokenizer):
    """Onset/duration/pitch events on a fixed grid; a MIDI -> tokens -> MIDI round trip is lossless on the grid."""

    name = "timed"

    def __init__(self, steps_per_quarter: int = 12, max_shift: int = 48, max_duration: int = 96):
        if steps_per_quarter <= 0 or TICKS_PER_QUARTER_OUT % steps_per_quarter:
            raise ValueError(f"steps_per_quarter must divide {TICKS_PER_QUARTER_OUT}, got {steps_per_quarter}")
        self.steps_per_quarter = steps_per_quarter
        self.max_shift = max_shift
        self.max_duration = max_duration  # longer notes are cut to this many steps

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "steps_per_quarter": self.steps_per_quarter,
            "max_shift": self.max_shift,
            "max_duration": self.max_duration,
        }

    def grid_notes(self, score: symusic.Score) -> np.ndarray:
        """(N, 3) int array of (onset step, duration steps, pitch) of every pitched note, sorted."""
        scale = self.steps_per_quarter / score.ticks_per_quarter
        parts = [t.notes.numpy() for t in score.tracks if not t.is_drum and len(t.notes)]
        if not parts:
            return np.zeros((0, 3), dtype=np.int64)
        onset = np.rint(np.concatenate([p["time"] for p in parts]) * scale).astype(np.int64)
        duration = np.rint(np.concatenate([p["duration"] for p in parts]) * scale).astype(np.int64)
        duration = np.clip(duration, 1, self.max_duration)
        pitch = np.concatenate([p["pitch"] for p in parts]).astype(np.int64)
        # Sort by onset, pitch, then longest first, so that a pitch struck twice at once
        # (both hands, or two tracks) keeps its longest duration when deduplicated below.
        order = np.lexsort((-duration, pitch, onset))
        notes = np.stack([onset[order], duration[order], pitch[order]], axis=1)
        first = np.ones(len(notes), dtype=bool)
        first[1:] = (notes[1:, 0] != notes[:-1, 0]) | (notes[1:, 2] != notes[:-1, 2])
        return notes[first]

    def encode(self, path: str | os.PathLike) -> list[str]:
        return self.encode_notes(self.grid_notes(load_score(path)))

    def encode_notes(self, notes: np.ndarray) -> list[str]:
        """Tokens of (onset, duration, pitch) grid notes sorted by onset then pitch."""
        tokens: list[str] = []
        now = int(notes[0, 0]) if len(notes) else 0  # a piece starts at its first note
        for onset, duration, pitch in notes.tolist():
            gap = onset - now
            while gap > 0:
                step = min(gap, self.max_shift)
                tokens.append(f"shift:{step}")
                gap -= step
            now = onset
            tokens.append(f"note:{pitch}")
            tokens.append(f"dur:{duration}")
        return tokens

    def pitch(self, token: str) -> int | None:
        kind, _, value = token.partition(":")
        return int(value) if kind == "note" and value.isdigit() else None

    def transpose(self, token: str, semitones: int) -> str | None:
        pitch = self.pitch(token)
        if pitch is None:
            return token
        pitch += semitones
        return f"note:{pitch}" if 0 <= pitch <= 127 else None

    def decode(self, tokens: list[str], tempo_qpm: float = 120.0) -> symusic.Score:
        """A piano score of `tokens`; tokens out of place (a `dur` with no note before it, `<unk>`) are skipped."""
        ticks_per_step = TICKS_PER_QUARTER_OUT // self.steps_per_quarter
        score = symusic.Score(TICKS_PER_QUARTER_OUT)
        score.tempos.append(symusic.Tempo(0, tempo_qpm))
        track = symusic.Track(name="Piano", program=PIANO_PROGRAM, is_drum=False)
        now = 0
        pending_pitch: int | None = None
        for token in tokens:
            kind, _, value = token.partition(":")
            if not value.isdigit():
                pending_pitch = None
                continue
            number = int(value)
            if kind == "shift":
                now += number
                pending_pitch = None
            elif kind == "note" and 0 <= number <= 127:
                pending_pitch = number
            elif kind == "dur" and pending_pitch is not None and number > 0:
                track.notes.append(symusic.Note(now * ticks_per_step, number * ticks_per_step, pending_pitch, 80))
                pending_pitch = None
            else:
                pending_pitch = None
        score.tracks.append(track)
        return score
