"""Music metrics of a generated piece, and the corpus reference it is judged against: generation reports.

Pure functions over notes, an (N, 3) float array of (onset in quarters, duration in quarters,
MIDI pitch) sorted by onset then pitch, and over token lists; `load_notes` reads one from MIDI.

Definitions:
- pitch-class histogram: notes per pitch class (C=0 .. B=11), each struck note counted once
  whatever its length, normalised to sum 1; the corpus histogram pools every note of every piece.
- pitch-class distance: Jensen-Shannon distance (square root of the JS divergence, base 2),
  in [0, 1]: symmetric, a true metric, and finite when a piece never uses some pitch class.
- corpus spread: each corpus piece's distance to the rest of the corpus (leave one out, as a
  generated piece is not part of the corpus either); a generated piece is typical when it is no
  farther than the corpus's farthest piece (being closer than the closest is no fault).
- polyphony: at each distinct onset, the number of notes sounding (struck then or still held);
  mean and max over onsets. A melody scores 1.0, a piece of held triads 3.0.
- scale consistency (Mogren 2016, C-RNN-GAN): the largest fraction of notes that fall in one of
  the 24 major and harmonic-minor scales. Natural minor adds nothing: its notes are those of its
  relative major.
- distinct n-gram ratio: distinct token n-grams / all token n-grams (1.0: no n-gram repeats).
- longest repeat: the length of the longest token substring occurring at least twice
  (occurrences may overlap, so a piece looping a p-token phrase scores length - p), and that
  length as a fraction of the piece: near 1.0 means the generator fell into a loop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import rel_entr

from pianola.errors import PianolaError
from pianola.midi.notes import PITCH_CLASS_NAMES, TIME_DECIMALS

MAJOR = (0, 2, 4, 5, 7, 9, 11)
HARMONIC_MINOR = (0, 2, 3, 5, 7, 8, 11)
SCALE_NAMES = [f"{PITCH_CLASS_NAMES[tonic]} {mode}" for mode in ("major", "minor") for tonic in range(12)]
SCALE_MASKS = np.array(
    [[(pc - tonic) % 12 in steps for pc in range(12)] for steps in (MAJOR, HARMONIC_MINOR) for tonic in range(12)]
)  # (24, 12)
SPREAD_PERCENTILES = {"min": 0, "p5": 5, "p25": 25, "median": 50, "p75": 75, "p95": 95, "max": 100}


def pitch_class_counts(notes: np.ndarray) -> np.ndarray:
    """(12,) int: notes per pitch class."""
    return np.bincount(notes[:, 2].astype(np.int64) % 12, minlength=12)


def pitch_class_histogram(notes: np.ndarray) -> np.ndarray:
    """(12,) float: share of notes per pitch class (all zeros for no notes)."""
    counts = pitch_class_counts(notes)
    return counts / counts.sum() if counts.sum() else counts.astype(np.float64)


def pitch_class_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two pitch-class histograms or count vectors."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("a pitch-class distance needs two histograms with at least one note each")
    p, q = p / p.sum(), q / q.sum()
    middle = (p + q) / 2
    divergence = (rel_entr(p, middle).sum() + rel_entr(q, middle).sum()) / (2 * math.log(2))
    return math.sqrt(max(float(divergence), 0.0))  # rounding can dip a hair below zero


def pitch_range(notes: np.ndarray) -> tuple[int, int, int] | None:
    """(lowest, highest, span) MIDI pitch, or None for no notes."""
    if not len(notes):
        return None
    low, high = int(notes[:, 2].min()), int(notes[:, 2].max())
    return low, high, high - low


def sounding_at_onsets(notes: np.ndarray) -> np.ndarray:
    """(distinct onsets,) int: notes sounding at each distinct onset, those struck there included."""
    onsets = np.round(notes[:, 0], TIME_DECIMALS)
    ends = np.round(notes[:, 0] + notes[:, 1], TIME_DECIMALS)
    groups = np.unique(onsets)
    started = np.searchsorted(np.sort(onsets), groups, side="right")
    # A note has stopped by time t if it ends at or before t, except that a zero-length note
    # still counts at its own onset (a chord of grace notes is a chord).
    held = notes[:, 1] > 0
    stopped = np.searchsorted(np.sort(ends[held]), groups, side="right")
    stopped += np.searchsorted(np.sort(onsets[~held]), groups, side="left")
    return started - stopped


def scale_consistency(notes: np.ndarray) -> tuple[float, str] | None:
    """(largest share of notes in one major or harmonic-minor scale, that scale's name), or None for no notes."""
    counts = pitch_class_counts(notes)
    if not counts.sum():
        return None
    fit = SCALE_MASKS @ counts / counts.sum()  # (24,)
    best = int(np.argmax(fit))
    return float(fit[best]), SCALE_NAMES[best]


def _token_ids(tokens: Sequence[str]) -> np.ndarray:
    """Tokens as dense ints in order of first appearance (equal tokens, equal ids)."""
    ids: dict[str, int] = {}
    return np.fromiter((ids.setdefault(t, len(ids)) for t in tokens), dtype=np.int64, count=len(tokens))


def distinct_ngram_ratio(tokens: Sequence[str], n: int = 4) -> float | None:
    """Distinct n-grams / all n-grams of `tokens`, or None when there are fewer than `n` tokens."""
    ids = _token_ids(tokens).tolist()
    total = len(ids) - n + 1
    if total <= 0:
        return None
    return len(set(zip(*(ids[i : i + total] for i in range(n))))) / total


def _prefix_ranks(ids: np.ndarray) -> list[np.ndarray]:
    """Level j: each position's rank among the windows of 2**j tokens starting there, up to the level that
    tells all positions apart (prefix doubling; a window running past the end sorts first)."""
    length = len(ids)
    ranks = [np.unique(ids, return_inverse=True)[1].astype(np.int64)]
    step = 1
    while length and ranks[-1].max() < length - 1:
        rank = ranks[-1]
        # A window of 2*step tokens is (its first `step` tokens, the next `step`), as one int64 key.
        second = np.zeros(length, dtype=np.int64)  # 0: past the end
        second[: length - step] = rank[step:] + 1
        ranks.append(np.unique(rank * (length + 1) + second, return_inverse=True)[1].astype(np.int64))
        step *= 2
    return ranks


def suffix_array(ids: np.ndarray) -> np.ndarray:
    """Start positions of the suffixes of `ids` in sorted order, O(L log^2 L)."""
    return np.argsort(_prefix_ranks(ids)[-1])


def longest_repeat(tokens: Sequence[str]) -> int:
    """Length of the longest token substring that occurs at least twice (occurrences may overlap)."""
    ids = _token_ids(tokens)
    if len(ids) < 2:
        return 0
    ranks = _prefix_ranks(ids)
    order = np.argsort(ranks[-1])
    # The longest repeat is the longest common prefix of two suffixes adjacent in sorted order.
    # Each pair's common prefix is built from the largest power of two down, comparing
    # 2**j-token windows by their rank: O(L log L) in numpy, no per-token Python loop.
    first, second = order[1:], order[:-1]
    shared = np.zeros(len(ids) - 1, dtype=np.int64)
    for level in reversed(range(len(ranks) - 1)):  # the top level tells all windows apart
        rank = np.append(ranks[level], -1)  # position L, past the end, equals nothing
        shared += (rank[first + shared] == rank[second + shared]).astype(np.int64) << level
    return int(shared.max())


def _spread(values: Sequence[float]) -> dict[str, float]:
    """Min, percentiles and max of `values`."""
    return {name: float(np.percentile(values, q)) for name, q in SPREAD_PERCENTILES.items()}


@dataclass
class CorpusReference:
    """What a generated piece is compared with: the corpus pitch-class histogram and its own pieces' spread."""

    pitch_class_histogram: np.ndarray  # (12,) all corpus notes pooled, sums to 1
    distances: dict[str, float]  # each piece's pitch-class distance to the rest of the corpus
    distance_spread: dict[str, float]  # of `distances`: min, p5 ... p95, max
    metrics: dict[str, dict[str, float]]  # spread of the corpus pieces' note metrics, by metric

    def within_spread(self, distance: float) -> bool:
        """Whether a piece at `distance` is no farther from the corpus than the corpus's farthest piece."""
        return distance <= self.distance_spread["max"]

    def to_json(self) -> dict[str, Any]:
        return {
            "pitch_class_histogram": [round(float(x), 6) for x in self.pitch_class_histogram],
            "distances": {name: round(d, 6) for name, d in self.distances.items()},
            "distance_spread": self.distance_spread,
            "metrics": self.metrics,
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> CorpusReference:
        return cls(
            np.asarray(record["pitch_class_histogram"], dtype=np.float64),
            dict(record["distances"]),
            dict(record["distance_spread"]),
            {name: dict(spread) for name, spread in record["metrics"].items()},
        )


def corpus_reference(pieces: Mapping[str, np.ndarray]) -> CorpusReference:
    """The reference of a corpus given each piece's notes by name; pieces without notes are left out."""
    with_notes = {name: notes for name, notes in pieces.items() if len(notes)}
    if not with_notes:
        raise PianolaError("the corpus has no pitched notes: nothing to compare generated pieces with")
    counts = {name: pitch_class_counts(notes) for name, notes in with_notes.items()}
    total = np.sum(list(counts.values()), axis=0)
    distances = {}
    for name, own in counts.items():
        rest = total - own
        # A one-piece corpus has no rest: the piece is then compared with itself.
        distances[name] = pitch_class_distance(own, rest if rest.sum() else total)
    metrics = {
        "scale_consistency": _spread([scale_consistency(notes)[0] for notes in with_notes.values()]),
        "polyphony_mean": _spread([float(sounding_at_onsets(notes).mean()) for notes in with_notes.values()]),
        "pitch_span": _spread([pitch_range(notes)[2] for notes in with_notes.values()]),
    }
    return CorpusReference(total / total.sum(), distances, _spread(list(distances.values())), metrics)


def piece_metrics(
    tokens: Sequence[str], notes: np.ndarray, *, reference: CorpusReference | None = None, n: int = 4
) -> dict[str, Any]:
    """Every metric of one piece, JSON-ready; with `reference`, its pitch-class distance to the corpus too.

    A metric a piece is too short or empty for is None.
    """
    span = pitch_range(notes)
    sounding = sounding_at_onsets(notes)
    scale = scale_consistency(notes)
    repeat = longest_repeat(tokens)
    histogram = pitch_class_histogram(notes)
    metrics: dict[str, Any] = {
        "tokens": len(tokens),
        "notes": len(notes),
        "pitch_min": span[0] if span else None,
        "pitch_max": span[1] if span else None,
        "pitch_span": span[2] if span else None,
        "polyphony_mean": _rounded(float(sounding.mean()) if len(sounding) else None),
        "polyphony_max": int(sounding.max()) if len(sounding) else None,
        "scale_consistency": _rounded(scale[0] if scale else None),
        "scale": scale[1] if scale else None,
        f"distinct_{n}gram_ratio": _rounded(distinct_ngram_ratio(tokens, n)),
        "longest_repeat": repeat,
        "longest_repeat_fraction": _rounded(repeat / len(tokens) if len(tokens) else None),
        "pitch_class_histogram": [_rounded(float(x)) for x in histogram],
    }
    if reference is not None:
        distance = pitch_class_distance(histogram, reference.pitch_class_histogram) if len(notes) else None
        metrics["pitch_class_distance"] = _rounded(distance)
        metrics["pitch_class_distance_within_corpus"] = None if distance is None else reference.within_spread(distance)
    return metrics


def _rounded(value: float | None) -> float | None:
    """`value` to 4 decimals for a report (None stays None)."""
    return None if value is None else round(value, 4)
