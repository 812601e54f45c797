"""The `roll` tokenizer: a piano roll on a grid of `frames_per_quarter` frames, frame by frame.

The benchmark's own encoding (pianola.benchmark): each frame lists the keys sounding in it, low
to high, then ends; an empty frame is the end token alone. Two frames of an eighth-note grid:

    note:48 note:60 note:64 frame note:48 frame ...

A held note and a note struck again in the next frame give the same frames: a roll does not
tell them apart, so decoding joins consecutive frames of a pitch into one held note.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import symusic

from pianola.midi import KEYS, LOWEST_PITCH, PIANO_PROGRAM, load_score
from pianola.tokenizers.base import Tokenizer
from pianola.tokenizers.timed import TICKS_PER_QUARTER_OUT

END_OF_FRAME = "frame"
VELOCITY = 80


class RollTokenizer(Tokenizer):
    """Sounding keys per frame; roll -> MIDI -> roll is exact, and MIDI on the grid survives a round trip."""

    name = "roll"

    def __init__(self, frames_per_quarter: int = 2):
        if frames_per_quarter <= 0 or TICKS_PER_QUARTER_OUT % frames_per_quarter:
            raise ValueError(
                f"frames_per_quarter must be positive and divide {TICKS_PER_QUARTER_OUT}, got {frames_per_quarter}"
            )
        self.frames_per_quarter = frames_per_quarter

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "frames_per_quarter": self.frames_per_quarter}

    def encode(self, path: str | os.PathLike) -> list[str]:
        return roll_to_tokens(roll_of_score(load_score(path), self.frames_per_quarter))

    def pitch(self, token: str) -> int | None:
        return _note_pitch(token)

    def transpose(self, token: str, semitones: int) -> str | None:
        pitch = self.pitch(token)
        if pitch is None:
            return token
        moved = pitch + semitones
        return f"note:{moved}" if LOWEST_PITCH <= moved < LOWEST_PITCH + KEYS else None

    def decode(self, tokens: list[str], tempo_qpm: float = 120.0) -> symusic.Score:
        """A piano score of `tokens`; tokens out of place (`<unk>`, a pitch off the keyboard) are skipped."""
        return score_of_roll(tokens_to_roll(tokens), self.frames_per_quarter, tempo_qpm)


def roll_of_score(score: symusic.Score, frames_per_quarter: int) -> np.ndarray:
    """(frames, 88) bool roll of every non-drum note on the piano's keys, from time 0 to the last sounding frame.

    A note sounds from frame round(onset) to round(end) exclusive, in frames, and in at least one frame.
    """
    scale = frames_per_quarter / score.ticks_per_quarter
    parts = [t.notes.numpy() for t in score.tracks if not t.is_drum and len(t.notes)]
    if not parts:
        return np.zeros((0, KEYS), dtype=bool)
    onset = np.concatenate([p["time"] for p in parts]).astype(np.int64)
    end = onset + np.concatenate([p["duration"] for p in parts]).astype(np.int64)
    key = np.concatenate([p["pitch"] for p in parts]).astype(np.int64) - LOWEST_PITCH
    on_keyboard = (key >= 0) & (key < KEYS)
    first = np.rint(onset[on_keyboard] * scale).astype(np.int64)
    stop = np.maximum(first + 1, np.rint(end[on_keyboard] * scale).astype(np.int64))
    key = key[on_keyboard]
    if not len(key):
        return np.zeros((0, KEYS), dtype=bool)
    # +1 where a note starts, -1 where it stops: the running sum counts the notes sounding on each
    # key, so overlapping notes of one pitch (two hands, two tracks) merge.
    change = np.zeros((int(stop.max()) + 1, KEYS), dtype=np.int64)
    np.add.at(change, (first, key), 1)
    np.add.at(change, (stop, key), -1)
    return np.cumsum(change, axis=0)[:-1] > 0


def roll_to_tokens(roll: np.ndarray) -> list[str]:
    """Tokens of a (frames, 88) roll: each frame's keys low to high as `note:P`, then `frame`."""
    roll = np.asarray(roll, dtype=bool)
    if roll.ndim != 2 or roll.shape[1] != KEYS:
        raise ValueError(f"a roll is (frames, {KEYS}), got shape {roll.shape}")
    tokens: list[str] = []
    for frame in roll:
        tokens.extend(f"note:{LOWEST_PITCH + k}" for k in np.flatnonzero(frame))
        tokens.append(END_OF_FRAME)
    return tokens


def tokens_to_roll(tokens: list[str]) -> np.ndarray:
    """(frames, 88) bool roll of `tokens`; notes after the last `frame` make one more frame.

    Tolerant of what a model may emit: notes in any order or repeated within a frame count once,
    anything that is neither a piano key's `note:P` nor `frame` is skipped.
    """
    frames: list[list[int]] = []
    keys: list[int] = []
    for token in tokens:
        if token == END_OF_FRAME:
            frames.append(keys)
            keys = []
            continue
        pitch = _note_pitch(token)
        if pitch is not None and LOWEST_PITCH <= pitch < LOWEST_PITCH + KEYS:
            keys.append(pitch - LOWEST_PITCH)
    if keys:
        frames.append(keys)
    roll = np.zeros((len(frames), KEYS), dtype=bool)
    for f, frame_keys in enumerate(frames):
        roll[f, frame_keys] = True
    return roll


def score_of_roll(roll: np.ndarray, frames_per_quarter: int, tempo_qpm: float = 120.0) -> symusic.Score:
    """A one-track piano score of `roll`: each run of consecutive frames of a pitch is one held note.

    Silent frames after the last note leave nothing in MIDI, so they do not come back when it is read.
    """
    ticks_per_frame = TICKS_PER_QUARTER_OUT // frames_per_quarter
    roll = np.asarray(roll, dtype=bool)
    edges = np.diff(np.pad(roll, ((1, 1), (0, 0))).astype(np.int8), axis=0)  # (frames + 1, 88)
    # Transposed, nonzero walks key by key, frames ascending: the k-th start and stop of a key pair up.
    start_key, start = np.nonzero(edges.T == 1)
    _, stop = np.nonzero(edges.T == -1)
    order = np.lexsort((start_key, start))  # notes in time order, low to high at one onset
    score = symusic.Score(TICKS_PER_QUARTER_OUT)
    score.tempos.append(symusic.Tempo(0, tempo_qpm))
    track = symusic.Track(name="Piano", program=PIANO_PROGRAM, is_drum=False)
    for i in order.tolist():
        onset, duration = int(start[i]) * ticks_per_frame, int(stop[i] - start[i]) * ticks_per_frame
        track.notes.append(symusic.Note(onset, duration, LOWEST_PITCH + int(start_key[i]), VELOCITY))
    score.tracks.append(track)
    return score


def _note_pitch(token: str) -> int | None:
    """P of a `note:P` token, None for any other token."""
    kind, _, value = token.partition(":")
    return int(value) if kind == "note" and value.isascii() and value.isdigit() else None
