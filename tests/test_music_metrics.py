"""Music metrics: exact values on hand-made pieces, and the corpus reference on the shared corpus."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_midi, scale_notes
from pianola.evaluation.metrics import (
    CorpusReference,
    corpus_reference,
    distinct_ngram_ratio,
    longest_repeat,
    piece_metrics,
    pitch_class_distance,
    pitch_class_histogram,
    pitch_range,
    scale_consistency,
    sounding_at_onsets,
    suffix_array,
)
from pianola.midi import midi_files
from pianola.midi.notes import load_notes
from pianola.tokenizers.timed import TimedTokenizer


def notes_of(*rows: tuple[float, float, int]) -> np.ndarray:
    """(onset quarters, duration quarters, pitch) rows as a notes array."""
    return np.array(rows, dtype=np.float64).reshape(-1, 3)


def brute_longest_repeat(tokens: list[str]) -> int:
    """The definition, quadratic: longest common prefix of any two distinct suffixes."""
    best = 0
    for i in range(len(tokens)):
        for j in range(i + 1, len(tokens)):
            k = 0
            while j + k < len(tokens) and tokens[i + k] == tokens[j + k]:
                k += 1
            best = max(best, k)
    return best


def test_load_notes_in_quarters_sorted_and_doubled_keys_merged(tmp_path: Path) -> None:
    # Two tracks strike the same keys: a piano has one key per pitch, so each note is kept once.
    midi = make_midi(tmp_path / "s.mid", [(480, 240, 64), (0, 960, 60), (0, 480, 67)], tracks=2)
    assert load_notes(midi).tolist() == [[0.0, 2.0, 60.0], [0.0, 1.0, 67.0], [1.0, 0.5, 64.0]]


def test_c_major_scale_is_fully_consistent(tmp_path: Path) -> None:
    notes = load_notes(make_midi(tmp_path / "c.mid", scale_notes(15)))
    assert scale_consistency(notes) == (1.0, "C major")
    assert pitch_range(notes) == (60, 84, 24)


def test_scale_consistency_tells_minor_from_major_and_counts_strays() -> None:
    a_harmonic_minor = [57, 59, 60, 62, 64, 65, 68]  # G# is in A minor, in no major scale with F
    assert scale_consistency(notes_of(*[(i, 1, p) for i, p in enumerate(a_harmonic_minor)])) == (1.0, "A minor")
    chromatic = notes_of(*[(i, 1, 60 + i) for i in range(12)])
    assert scale_consistency(chromatic) == (7 / 12, "C major")
    assert scale_consistency(notes_of()) is None


def test_polyphony_of_chords_melody_and_overlaps() -> None:
    triads = notes_of(*[(t, 1, p) for t in range(4) for p in (60, 64, 67)])
    assert sounding_at_onsets(triads).tolist() == [3, 3, 3, 3]
    legato = notes_of((0, 1, 60), (1, 1, 62), (2, 1, 64))  # each note ends as the next begins
    assert sounding_at_onsets(legato).tolist() == [1, 1, 1]
    # A held bass under a melody: the bass is still sounding at each melody onset.
    held = notes_of((0, 4, 48), (0, 1, 72), (1, 1, 74), (2, 1, 76), (3, 1, 77))
    assert sounding_at_onsets(held).tolist() == [2, 2, 2, 2]
    thirds = notes_of(*[(t / 3, 1 / 3, 60) for t in range(3000)])  # legato triplets, float ends
    assert set(sounding_at_onsets(thirds).tolist()) == {1}
    assert sounding_at_onsets(notes_of((0, 0, 60), (0, 0, 64))).tolist() == [2]  # zero-length chord


def test_distinct_ngram_ratio() -> None:
    assert distinct_ngram_ratio(["C4"] * 100, n=4) == 1 / 97
    assert distinct_ngram_ratio([str(i) for i in range(100)], n=4) == 1.0
    assert distinct_ngram_ratio(list("abcabc"), n=3) == 3 / 4
    assert distinct_ngram_ratio(["a", "b"], n=4) is None


def test_longest_repeat_finds_a_looped_motif() -> None:
    motif = ["C4", "E4", "G4", "0.4.7", "F4", "A4"]
    prelude = [f"x{i}" for i in range(50)]
    tokens = prelude + motif * 10
    # Occurrences may overlap, so ten loops of a 6-token motif repeat 54 tokens.
    assert longest_repeat(tokens) == 6 * 10 - 6
    assert longest_repeat(["C4"] * 500) == 499
    assert longest_repeat([str(i) for i in range(100)]) == 0
    assert longest_repeat(list("banana")) == 3
    assert longest_repeat([]) == longest_repeat(["a"]) == 0


def test_longest_repeat_agrees_with_the_definition_on_random_sequences() -> None:
    rng = random.Random(7)
    for _ in range(200):
        tokens = [rng.choice("abc") for _ in range(rng.randint(0, 40))]
        assert longest_repeat(tokens) == brute_longest_repeat(tokens), tokens


def test_suffix_array_sorts_suffixes() -> None:
    rng = random.Random(3)
    ids = [rng.randint(0, 3) for _ in range(300)]
    assert suffix_array(np.array(ids)).tolist() == sorted(range(len(ids)), key=lambda i: ids[i:])


def test_longest_repeat_is_fast_on_long_pieces() -> None:
    rng = random.Random(1)
    long_random = [f"note:{rng.randint(40, 80)}" for _ in range(20_000)]
    start = time.perf_counter()
    assert longest_repeat(long_random) < 10
    assert longest_repeat(["note:60"] * 20_000) == 19_999
    assert longest_repeat(long_random[:10_000] * 2) == 10_000
    assert time.perf_counter() - start < 2.0


def test_pitch_class_distance() -> None:
    corpus = pitch_class_histogram(notes_of(*[(i, 1, 60 + i % 12) for i in range(100)]))
    assert pitch_class_distance(corpus, corpus) == 0.0
    assert pitch_class_distance([1] + [0] * 11, [0] * 11 + [1]) == pytest.approx(1.0)  # disjoint: the maximum
    assert pitch_class_distance([2, 1] + [0] * 10, [4, 2] + [0] * 10) == 0.0  # counts or shares alike
    p, q = [3, 1] + [0] * 10, [1, 3] + [0] * 10
    assert pitch_class_distance(p, q) == pytest.approx(pitch_class_distance(q, p))
    with pytest.raises(ValueError):
        pitch_class_distance([0] * 12, p)


def test_a_corpus_of_identical_pieces_has_zero_spread() -> None:
    piece = notes_of(*[(i, 1, p) for i, p in enumerate([60, 62, 64, 65, 67])])
    reference = corpus_reference({"a.mid": piece, "b.mid": piece.copy(), "empty.mid": notes_of()})
    assert reference.distances == {"a.mid": 0.0, "b.mid": 0.0}
    assert reference.distance_spread["min"] == reference.distance_spread["max"] == 0.0
    assert pitch_class_distance(reference.pitch_class_histogram, pitch_class_histogram(piece)) == 0.0


def test_piece_metrics_of_a_looping_generation() -> None:
    tokens = ["C4", "E4", "G4", "0.4.7"] * 25
    notes = notes_of(*[(i * 0.5, 0.5, 60 + (i % 3) * 4 - 12 * (i % 2)) for i in range(100)])
    reference = corpus_reference({"c.mid": notes})
    metrics = piece_metrics(tokens, notes, reference=reference)
    assert metrics["tokens"] == 100 and metrics["notes"] == 100
    assert metrics["distinct_4gram_ratio"] == round(4 / 97, 4)
    assert metrics["longest_repeat"] == 96 and metrics["longest_repeat_fraction"] == 0.96
    assert metrics["scale_consistency"] == 1.0
    assert metrics["polyphony_mean"] == 1.0 and metrics["polyphony_max"] == 1
    assert metrics["pitch_class_distance"] == 0.0 and metrics["pitch_class_distance_within_corpus"] is True
    json.dumps(metrics)  # ready for a report


def test_piece_metrics_of_an_empty_generation() -> None:
    reference = corpus_reference({"c.mid": notes_of((0, 1, 60))})
    metrics = piece_metrics([], notes_of(), reference=reference)
    assert metrics["notes"] == 0 and metrics["pitch_span"] is None and metrics["scale_consistency"] is None
    assert metrics["pitch_class_distance"] is None and metrics["longest_repeat_fraction"] is None
    json.dumps(metrics)


def test_corpus_reference_on_the_shared_corpus(corpus_dir: Path) -> None:
    start = time.perf_counter()
    tokenizer = TimedTokenizer()
    pieces = {path.name: load_notes(path) for path in midi_files(corpus_dir)}
    reference = corpus_reference(pieces)
    rows = {}
    for name, notes in pieces.items():
        rows[name] = piece_metrics(tokenizer.encode(corpus_dir / name), notes, reference=reference)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"metrics of {len(pieces)} pieces took {elapsed:.1f} s"

    assert reference.pitch_class_histogram.sum() == pytest.approx(1.0)
    assert set(reference.distances) == set(pieces)
    for name, distance in reference.distances.items():
        assert reference.distance_spread["min"] <= distance <= reference.distance_spread["max"]
        # Against the whole corpus, itself included, a piece is never farther than against the rest.
        assert rows[name]["pitch_class_distance"] <= round(distance, 4) + 1e-4
        assert rows[name]["pitch_class_distance_within_corpus"] is True
    # Real music: mostly in one key, chords, no piece a single loop.
    assert reference.metrics["scale_consistency"]["median"] > 0.8
    assert reference.metrics["polyphony_mean"]["median"] > 1.5
    assert max(row["longest_repeat_fraction"] for row in rows.values()) < 0.6
    reread = CorpusReference.from_json(json.loads(json.dumps(reference.to_json())))
    assert reread.distance_spread == reference.distance_spread and reread.within_spread(0.0)

