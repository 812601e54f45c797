"""The `remi` tokenizer: REMI (Huang & Yang 2020), the field's standard encoding, via miditok.

A piece is a stream of bars; within a bar, `Position_K` gives the onset step of the notes after it
on a grid of `steps_per_quarter` steps (12 by default: 16ths and triplets both land on it), and
each note is a pitch then a duration, listed low to high at one onset:

    Bar_None Position_0 Pitch_60 Duration_0.6.12 Pitch_64 Duration_1.0.12 Position_6 ...

`Duration_Q.S.R` lasts Q quarters and S steps of R per quarter. Bars are taken as 4/4 whatever
the file's time signatures say (so `Position` runs over 4 quarters): simpler, and what most of the
corpus is. Only piano pitches 21..108 are kept; there are no velocity, tempo, chord, program or
rest tokens. Empty bars before the first note are dropped, so a piece starts in its first bar.
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import symusic

from pianola.midi import PIANO_PROGRAM, load_score
from pianola.tokenizers.base import Tokenizer
from pianola.tokenizers.timed import TICKS_PER_QUARTER_OUT, TimedTokenizer

if TYPE_CHECKING:
    import miditok

LOWEST_PITCH, HIGHEST_PITCH = 21, 108  # the 88 keys of a piano
QUARTERS_PER_BAR = 4


class RemiTokenizer(Tokenizer):
    """Bar/Position/Pitch/Duration tokens; a MIDI -> tokens -> MIDI round trip is lossless on the grid (in 4/4)."""

    name = "remi"

    def __init__(self, steps_per_quarter: int = 12, max_duration_quarters: int = 8):
        if max_duration_quarters <= 0:
            raise ValueError(f"max_duration_quarters must be positive, got {max_duration_quarters}")
        # The timed tokenizer's grid: same rounding, merging of tracks and deduplication, so that the
        # two encodings of a piece hold the same notes (and the same check of steps_per_quarter).
        self._grid = TimedTokenizer(steps_per_quarter, max_duration=max_duration_quarters * steps_per_quarter)
        self.steps_per_quarter = steps_per_quarter
        self.max_duration_quarters = max_duration_quarters  # longer notes are cut to this

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "steps_per_quarter": self.steps_per_quarter,
            "max_duration_quarters": self.max_duration_quarters,
        }

    @cached_property
    def _remi(self) -> miditok.REMI:
        """miditok's REMI on our grid; built on first use, as importing miditok takes most of a second."""
        from miditok import REMI, TokenizerConfig

        return REMI(TokenizerConfig(
            pitch_range=(LOWEST_PITCH, HIGHEST_PITCH),
            beat_res={(0, self.max_duration_quarters): self.steps_per_quarter},
            special_tokens=["PAD"],  # miditok requires it; pianola's vocabulary has its own <unk>
            use_velocities=False,
            use_time_signatures=False,
            use_pitchdrum_tokens=False,
        ))

    def encode(self, path: str | os.PathLike) -> list[str]:
        notes = self._grid.grid_notes(load_score(path))
        notes = notes[(notes[:, 2] >= LOWEST_PITCH) & (notes[:, 2] <= HIGHEST_PITCH)]
        if not len(notes):
            return []
        steps_per_bar = QUARTERS_PER_BAR * self.steps_per_quarter
        onset = notes[:, 0] - notes[0, 0] // steps_per_bar * steps_per_bar
        # One track at one tick per step, durations within range: what miditok's own preprocessing
        # would make of the file, so that is skipped.
        track = symusic.Track(name="Piano", program=PIANO_PROGRAM, is_drum=False)
        track.notes = symusic.Note.from_numpy(
            time=onset.astype(np.int32),
            duration=notes[:, 1].astype(np.int32),
            pitch=notes[:, 2].astype(np.int8),
            velocity=np.full(len(notes), 80, dtype=np.int8),
        )
        score = symusic.Score(self.steps_per_quarter)
        score.tracks.append(track)
        (sequence,) = self._remi.encode(score, no_preprocess_score=True)
        return sequence.tokens

    def pitch(self, token: str) -> int | None:
        kind, _, value = token.partition("_")
        return int(value) if kind == "Pitch" and value.isdigit() else None

    def transpose(self, token: str, semitones: int) -> str | None:
        pitch = self.pitch(token)
        if pitch is None:
            return token
        pitch += semitones
        return f"Pitch_{pitch}" if LOWEST_PITCH <= pitch <= HIGHEST_PITCH else None

    def decode(self, tokens: list[str], tempo_qpm: float = 120.0) -> symusic.Score:
        """A piano score of `tokens`; tokens out of place (a `Duration` with no pitch before it, `<unk>`) are skipped.

        Written here rather than left to miditok, whose decoder expects well-formed sequences of its
        own vocabulary, where a model's output may be anything.
        """
        ticks_per_step = TICKS_PER_QUARTER_OUT // self.steps_per_quarter
        steps_per_bar = QUARTERS_PER_BAR * self.steps_per_quarter
        score = symusic.Score(TICKS_PER_QUARTER_OUT)
        score.tempos.append(symusic.Tempo(0, tempo_qpm))
        track = symusic.Track(name="Piano", program=PIANO_PROGRAM, is_drum=False)
        bar_start = -steps_per_bar  # the first Bar opens bar 0
        now = 0
        pending_pitch: int | None = None
        for token in tokens:
            kind, _, value = token.partition("_")
            if kind == "Bar":
                bar_start += steps_per_bar
                now = bar_start
                pending_pitch = None
            elif kind == "Position" and value.isdigit() and int(value) < steps_per_bar:
                now = max(bar_start, 0) + int(value)  # a Position before any Bar is in bar 0
                pending_pitch = None
            elif kind == "Pitch" and value.isdigit() and LOWEST_PITCH <= int(value) <= HIGHEST_PITCH:
                pending_pitch = int(value)
            elif kind == "Duration" and pending_pitch is not None and (ticks := _duration_ticks(value)):
                track.notes.append(symusic.Note(now * ticks_per_step, ticks, pending_pitch, 80))
                pending_pitch = None
            else:
                pending_pitch = None
        score.tracks.append(track)
        return score


def _duration_ticks(value: str) -> int:
    """Output ticks of a `Duration_Q.S.R` value; 0 where it is malformed or empty."""
    parts = value.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or int(parts[2]) == 0:
        return 0
    quarters, steps, resolution = map(int, parts)
    return (quarters * resolution + steps) * TICKS_PER_QUARTER_OUT // resolution
