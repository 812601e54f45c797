"""Shared test fixtures: small MIDI files made by the tests, and the shared corpus location."""

from __future__ import annotations

from pathlib import Path

import pytest
import symusic

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "piano-midi"


def make_midi(
    path: Path,
    notes: list[tuple[int, int, int]],
    *,
    tpq: int = 480,
    drum: bool = False,
    tracks: int = 1,
) -> Path:
    """Write a MIDI file of (start_tick, duration_ticks, pitch) notes, copied on `tracks` tracks."""
    score = symusic.Score(tpq)
    for i in range(tracks):
        track = symusic.Track(name=f"track {i}", program=0, is_drum=drum)
        for start, duration, pitch in notes:
            track.notes.append(symusic.Note(start, duration, pitch, 80))
        score.tracks.append(track)
    path.parent.mkdir(parents=True, exist_ok=True)
    score.dump_midi(str(path))
    return path


def scale_notes(n: int = 16, start_pitch: int = 60, step: int = 240) -> list[tuple[int, int, int]]:
    """A C-major run of `n` eighth notes (at 480 ticks per quarter)."""
    major = [0, 2, 4, 5, 7, 9, 11]
    return [(i * step, step, start_pitch + major[i % 7] + 12 * (i // 7)) for i in range(n)]


@pytest.fixture
def corpus_dir() -> Path:
    """The paper's piano corpus in ../shared (skips where it is absent, e.g. on a user's machine)."""
    if not CORPUS.is_dir():
        pytest.skip(f"shared piano corpus not found at {CORPUS}")
    return CORPUS
