"""Musicality: how close a set of generated pieces comes to held-out human pieces, after Yang & Lerch 2018
("On the evaluation of generative models in music"). Run by the generate stage and `pianola musicality`.

The method:
- Every piece is cut into excerpts of `excerpt_quarters` (a trailing part shorter than half of that is
  dropped; a piece shorter than one excerpt is used whole), so a 10-minute sonata and a 2-minute
  generated piece are compared on equal lengths, and each feature below is computed per excerpt.
- Intra-set distances: between every two reference excerpts of DIFFERENT pieces (two excerpts of one
  piece are more alike than two pieces are). Inter-set distances: between every reference excerpt and
  every excerpt of the set judged. A scalar feature's distance is |a - b|, a histogram's or a
  transition matrix's the Euclidean distance.
- Both distance sets are smoothed by a Gaussian KDE on one common grid; the overlapped area (OA,
  1.0 = the set judged is as far from the reference as the reference is from itself) and the KL
  divergence KL(intra || inter) are reported per feature.
- The human baseline gives the numbers their meaning: the same report for human pieces that are not
  in the reference (by default as many pieces as the generated set holds, drawn from the training
  pieces), shown beside the model's.
- Novelty: the share of the 8-note n-grams (pitches and onset intervals, on a 12-per-quarter grid)
  of a set that occur verbatim in the training pieces, for the generated pieces and for the
  reference pieces (held-out human music): copying the corpus shows as a share far above the human one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pianola.errors import PianolaError
from pianola.midi import midi_files
from pianola.midi.notes import TIME_DECIMALS, load_notes
from pianola.plots import pyplot, save_figure

EXCERPT_QUARTERS = 64.0  # 16 bars of 4/4: long enough for a phrase, short enough for many per piece
NGRAM = 8
NGRAM_STEPS_PER_QUARTER = 12  # onsets of n-grams are compared on the `timed` grid
GRID_POINTS = 512
MAX_DISTANCES = 20_000  # distances kept per set (a seeded sample): the KDE needs no more
# Yang & Lerch's 12 note-length classes, in quarters: whole, half, quarter, 8th, 16th; the dotted
# half, quarter, 8th and 16th; the half-, quarter- and 8th-note triplets.
NOTE_LENGTHS = np.array([4, 2, 1, 1 / 2, 1 / 4, 3, 3 / 2, 3 / 4, 3 / 8, 4 / 3, 2 / 3, 1 / 3])


@dataclass(frozen=True)
class Feature:
    name: str
    group: str  # pitch | rhythm | texture: the README's columns
    label: str


FEATURES = {
    f.name: f
    for f in (
        Feature("pitch_count", "pitch", "distinct pitches"),
        Feature("pitch_range", "pitch", "pitch range (semitones)"),
        Feature("pitch_class_histogram", "pitch", "pitch-class histogram"),
        Feature("pitch_class_transition", "pitch", "pitch-class transition matrix"),
        Feature("top_line_interval", "pitch", "mean top-line interval (semitones)"),
        Feature("ioi_mean", "rhythm", "mean inter-onset interval (quarters)"),
        Feature("ioi_std", "rhythm", "inter-onset interval spread (quarters)"),
        Feature("note_length_histogram", "rhythm", "note-length histogram"),
        Feature("note_length_transition", "rhythm", "note-length transition matrix"),
        Feature("onsets_per_beat", "rhythm", "onsets per beat"),
        Feature("polyphony", "texture", "notes per onset"),
    )
}
GROUPS = ("pitch", "rhythm", "texture")


def excerpts(notes: np.ndarray, quarters: float = EXCERPT_QUARTERS) -> list[tuple[np.ndarray, float]]:
    """(notes rebased to the excerpt's start, excerpt length in quarters) for each excerpt of one piece."""
    if not len(notes):
        return []
    start = notes[0, 0]
    end = float(np.max(notes[:, 0] + notes[:, 1]))
    length = end - start
    if length <= quarters:
        return [(notes - [start, 0, 0], max(length, 1e-9))]
    cuts = []
    begin = start
    while end - begin >= quarters / 2:
        inside = (notes[:, 0] >= begin) & (notes[:, 0] < begin + quarters)
        if inside.any():
            cuts.append((notes[inside] - [begin, 0, 0], quarters))
        begin += quarters
    return cuts


def note_length_classes(durations: np.ndarray) -> np.ndarray:
    """Index into NOTE_LENGTHS of each duration: the nearest class on a log scale."""
    logs = np.log2(np.maximum(durations, 1e-6))
    return np.abs(logs[:, None] - np.log2(NOTE_LENGTHS)[None, :]).argmin(axis=1)


def _normalised(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else counts.astype(np.float64)


def excerpt_features(notes: np.ndarray, length: float) -> dict[str, Any]:
    """Every feature of one excerpt: (N, 3) (onset, duration, pitch) notes sorted by onset then pitch."""
    onsets, first, per_onset = np.unique(np.round(notes[:, 0], TIME_DECIMALS), return_index=True, return_counts=True)
    pitch = notes[:, 2].astype(np.int64)
    pitch_class = pitch % 12
    # Consecutive onsets: every pitch class struck at one onset to every one struck at the next.
    group = np.repeat(np.arange(len(onsets)), per_onset)  # onset index of each note
    pc_by_onset = np.zeros((len(onsets), 12))
    np.add.at(pc_by_onset, (group, pitch_class), 1)
    pc_transition = (pc_by_onset[:-1].T @ pc_by_onset[1:]) if len(onsets) > 1 else np.zeros((12, 12))
    # The top line: the highest note struck at each onset (the ends of the `first` groups).
    top = pitch[np.append(first[1:], len(notes)) - 1]
    lengths = note_length_classes(notes[:, 1])
    length_transition = np.zeros((12, 12))
    np.add.at(length_transition, (lengths[:-1], lengths[1:]), 1)
    ioi = np.diff(onsets)
    return {
        "pitch_count": float(len(np.unique(pitch))),
        "pitch_range": float(pitch.max() - pitch.min()),
        "pitch_class_histogram": _normalised(np.bincount(pitch_class, minlength=12).astype(np.float64)),
        "pitch_class_transition": _normalised(pc_transition).ravel(),
        "top_line_interval": float(np.abs(np.diff(top)).mean()) if len(top) > 1 else 0.0,
        "ioi_mean": float(ioi.mean()) if len(ioi) else 0.0,
        "ioi_std": float(ioi.std()) if len(ioi) else 0.0,
        "note_length_histogram": _normalised(np.bincount(lengths, minlength=12).astype(np.float64)),
        "note_length_transition": _normalised(length_transition).ravel(),
        "onsets_per_beat": len(onsets) / length,
        "polyphony": float(per_onset.mean()),
    }


@dataclass
class FeatureSet:
    """Per-excerpt features of a set of pieces: values[feature] is (excerpts,) or (excerpts, dims)."""

    pieces: int
    piece_of: np.ndarray  # (excerpts,) index of the piece each excerpt comes from
    values: dict[str, np.ndarray]

    @classmethod
    def of(cls, pieces: Mapping[str, np.ndarray], quarters: float = EXCERPT_QUARTERS) -> FeatureSet:
        rows, piece_of = [], []
        with_notes = [notes for notes in pieces.values() if len(notes)]
        for index, notes in enumerate(with_notes):
            for excerpt, length in excerpts(notes, quarters):
                rows.append(excerpt_features(excerpt, length))
                piece_of.append(index)
        if not rows:
            raise PianolaError("a set of pieces has no notes: nothing to measure")
        values = {name: np.array([row[name] for row in rows], dtype=np.float64) for name in FEATURES}
        return cls(len(with_notes), np.array(piece_of), values)

    @property
    def excerpts(self) -> int:
        return len(self.piece_of)

    def means(self) -> dict[str, float]:
        """The mean of each scalar feature: what a reader compares at a glance."""
        return {name: round(float(v.mean()), 4) for name, v in self.values.items() if v.ndim == 1}


def _distances(a: np.ndarray, b: np.ndarray, pairs: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Distance of each (i, j) pair: |a_i - b_j| for scalars, the Euclidean distance for vectors."""
    diff = a[pairs[0]] - b[pairs[1]]
    return np.abs(diff) if diff.ndim == 1 else np.sqrt((diff**2).sum(axis=1))


def _sample(pairs: tuple[np.ndarray, np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if len(pairs[0]) <= MAX_DISTANCES:
        return pairs
    keep = rng.choice(len(pairs[0]), size=MAX_DISTANCES, replace=False)
    return pairs[0][keep], pairs[1][keep]


def intra_pairs(reference: FeatureSet, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) with i < j over reference excerpts of different pieces (all pairs, where it has one piece)."""
    i, j = np.triu_indices(reference.excerpts, k=1)
    different = reference.piece_of[i] != reference.piece_of[j]
    if different.any():
        i, j = i[different], j[different]
    if not len(i):
        raise PianolaError("the reference needs at least two excerpts to measure how far its pieces lie apart")
    return _sample((i, j), rng)


def inter_pairs(reference: FeatureSet, other: FeatureSet, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.meshgrid(np.arange(reference.excerpts), np.arange(other.excerpts), indexing="ij")
    return _sample((i.ravel(), j.ravel()), rng)


def _bandwidth(values: np.ndarray, scale: float) -> float:
    """Silverman's rule; a set of equal distances gets a bandwidth of 1% of the grid's scale."""
    std = float(values.std())
    return 1.06 * std * len(values) ** -0.2 if std > 0 else 0.01 * scale


def kde(values: np.ndarray, grid: np.ndarray, bandwidth: float) -> np.ndarray:
    """A Gaussian KDE of `values` on `grid`, normalised to integrate to 1 over the grid."""
    density = np.zeros_like(grid)
    for chunk in np.array_split(values, max(1, len(values) // 2000)):
        density += np.exp(-0.5 * ((grid[:, None] - chunk[None, :]) / bandwidth) ** 2).sum(axis=1)
    area = np.trapezoid(density, grid)
    return density / area if area > 0 else density


@dataclass
class Densities:
    """The intra-set and inter-set distance densities of one feature on their common grid."""

    grid: np.ndarray
    intra: np.ndarray
    inter: np.ndarray

    @classmethod
    def of(cls, intra: np.ndarray, inter: np.ndarray) -> Densities:
        low, high = min(intra.min(), inter.min()), max(intra.max(), inter.max())
        scale = max(high - low, abs(high), 1e-6)
        bandwidths = _bandwidth(intra, scale), _bandwidth(inter, scale)
        pad = 3 * max(bandwidths)
        grid = np.linspace(low - pad, high + pad, GRID_POINTS)
        return cls(grid, kde(intra, grid, bandwidths[0]), kde(inter, grid, bandwidths[1]))

    def overlapped_area(self) -> float:
        return float(np.clip(np.trapezoid(np.minimum(self.intra, self.inter), self.grid), 0.0, 1.0))

    def kl_divergence(self) -> float:
        """KL(intra || inter) in nats, with both densities floored at 1e-10 (finite where they do not meet)."""
        p, q = np.maximum(self.intra, 1e-10), np.maximum(self.inter, 1e-10)
        return float(max(np.trapezoid(p * np.log(p / q), self.grid), 0.0))


def compare(reference: FeatureSet, other: FeatureSet, seed: int = 0) -> dict[str, Densities]:
    """Per feature, the densities of reference-to-reference and reference-to-`other` distances."""
    rng = np.random.default_rng(seed)
    intra, inter = intra_pairs(reference, rng), inter_pairs(reference, other, rng)
    return {
        name: Densities.of(_distances(reference.values[name], reference.values[name], intra),
                           _distances(reference.values[name], other.values[name], inter))
        for name in FEATURES
    }


def ngram_keys(notes: np.ndarray, n: int = NGRAM) -> set[bytes]:
    """The n-note n-grams of one piece, each as (pitches, onset intervals in grid steps) packed in bytes."""
    if len(notes) < n:
        return set()
    pitch = notes[:, 2].astype(np.int64)
    ioi = np.diff(np.rint(notes[:, 0] * NGRAM_STEPS_PER_QUARTER).astype(np.int64), prepend=0)
    windows = np.lib.stride_tricks.sliding_window_view(np.stack([pitch, ioi], axis=1), n, axis=0)  # (W, 2, n)
    windows = windows.copy()
    windows[:, 1, 0] = 0  # the interval before an n-gram is not part of it
    return set(map(bytes, windows.reshape(len(windows), -1)))


def copied_share(pieces: Mapping[str, np.ndarray], training: set[bytes]) -> float | None:
    """Share of the n-grams of `pieces` (pooled) that occur verbatim in `training`; None without any."""
    found = total = 0
    for notes in pieces.values():
        keys = ngram_keys(notes)
        total += len(keys)
        found += len(keys & training)
    return found / total if total else None


def _oa_table(densities: dict[str, Densities]) -> dict[str, dict[str, float]]:
    return {name: {"oa": round(d.overlapped_area(), 4), "kl": round(d.kl_divergence(), 4)} for name, d in densities.items()}


def _group_means(table: dict[str, dict[str, float]]) -> dict[str, float]:
    means = {g: float(np.mean([table[n]["oa"] for n, f in FEATURES.items() if f.group == g])) for g in GROUPS}
    return {g: round(v, 4) for g, v in means.items()}


def _ratio(value: float | None, human: float | None) -> float | None:
    return round(value / human, 4) if value is not None and human else None


@dataclass
class MusicalityReport:
    """The report of a generated set against a reference, beside the human baseline's."""

    report: dict[str, Any]
    generated: dict[str, Densities]
    human: dict[str, Densities]

    def metrics(self) -> dict[str, float]:
        """The flat numbers for DVC and MLflow metrics."""
        r = self.report
        flat = {
            "musicality_mean_oa": r["mean_oa"]["generated"],
            "musicality_mean_oa_human": r["mean_oa"]["human"],
            "musicality_oa_ratio": r["mean_oa"]["ratio"],
            "musicality_min_feature_ratio": r["min_feature_ratio"]["ratio"],
            "novelty_copied_share": r["novelty"]["generated"],
            "novelty_copied_share_human": r["novelty"]["human"],
        }
        flat |= {f"oa_{name}": row["generated"]["oa"] for name, row in r["features"].items()}
        return {k: v for k, v in flat.items() if v is not None}

    def summary(self) -> str:
        r = self.report
        novelty = r["novelty"]
        return (
            f"mean OA {r['mean_oa']['generated']:.3f} against the human {r['mean_oa']['human']:.3f} "
            f"({r['mean_oa']['ratio']:.2f}x); lowest feature {r['min_feature_ratio']['feature']} "
            f"({r['min_feature_ratio']['ratio']:.2f}x); n-grams found in training: "
            + (f"{novelty['generated']:.1%} (human {novelty['human']:.1%})" if novelty["generated"] is not None else "none")
        )


def musicality_report(
    generated: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    training: Mapping[str, np.ndarray],
    baseline: Mapping[str, np.ndarray] | None = None,
    *,
    quarters: float = EXCERPT_QUARTERS,
    seed: int = 0,
) -> MusicalityReport:
    """The report of `generated` against `reference`; pieces given as name -> (N, 3) notes.

    `baseline` (human pieces not in the reference) defaults to as many `training` pieces as there are
    generated ones, drawn with `seed`; novelty counts n-grams found in `training`.
    """
    overlap = set(reference) & (set(baseline) if baseline is not None else set())
    if overlap:
        raise PianolaError(f"the human baseline must not hold reference pieces: {', '.join(sorted(overlap)[:3])}")
    if baseline is None:
        names = sorted(set(training) - set(reference))
        if not names:
            raise PianolaError("no human piece outside the reference to form the human baseline")
        picked = np.random.default_rng(seed).choice(len(names), size=min(len(generated), len(names)), replace=False)
        baseline = {names[i]: training[names[i]] for i in sorted(picked)}
    ref_set = FeatureSet.of(reference, quarters)
    sets = {"generated": FeatureSet.of(generated, quarters), "human": FeatureSet.of(baseline, quarters)}
    densities = {label: compare(ref_set, s, seed) for label, s in sets.items()}
    tables = {label: _oa_table(d) for label, d in densities.items()}
    features = {}
    for name, feature in FEATURES.items():
        gen, human = tables["generated"][name], tables["human"][name]
        features[name] = {"group": feature.group, "generated": gen, "human": human, "ratio": _ratio(gen["oa"], human["oa"])}
    mean = {label: round(float(np.mean([row["oa"] for row in t.values()])), 4) for label, t in tables.items()}
    weakest = min(features, key=lambda n: features[n]["ratio"] if features[n]["ratio"] is not None else np.inf)
    grams: set[bytes] = set()
    for name, notes in training.items():
        if name not in reference:
            grams |= ngram_keys(notes)
    novelty = {"generated": copied_share(generated, grams), "human": copied_share(reference, grams)}
    report = {
        "method": "Yang & Lerch 2018: per-excerpt features, intra-set (reference) against inter-set distances, "
                  "KDE overlapped area (OA) and KL(intra || inter)",
        "excerpt_quarters": quarters,
        "sets": {"reference": {"pieces": ref_set.pieces, "excerpts": ref_set.excerpts, "means": ref_set.means()}}
                | {label: {"pieces": s.pieces, "excerpts": s.excerpts, "means": s.means()} for label, s in sets.items()},
        "features": features,
        "groups": {label: _group_means(t) for label, t in tables.items()},
        "mean_oa": mean | {"ratio": _ratio(mean["generated"], mean["human"])},
        "min_feature_ratio": {"feature": weakest, "ratio": features[weakest]["ratio"]},
        "novelty": {k: None if v is None else round(v, 4) for k, v in novelty.items()}
                   | {"ratio": _ratio(novelty["generated"], novelty["human"]), "ngram": NGRAM},
    }
    return MusicalityReport(report, densities["generated"], densities["human"])


def notes_of_folder(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """name -> notes of the MIDI files of `folder`; an unreadable file is an error that names it."""

    pieces = {}
    for path in midi_files(folder):
        try:
            pieces[path.name] = load_notes(path)
        except Exception as e:
            raise PianolaError(f"{path}: cannot be read ({e})") from e
    if not pieces:
        raise PianolaError(f"{Path(folder)}: no MIDI files")
    return pieces


def distance_densities(result: MusicalityReport, path: str | os.PathLike, title: str | None = None) -> None:
    """One panel per feature: the intra-set density, the generated and the human inter-set densities."""
    plt = pyplot()
    columns = 4
    rows = -(-len(FEATURES) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.8 * rows))
    for ax, (name, feature) in zip(axes.ravel(), FEATURES.items()):
        gen, human = result.generated[name], result.human[name]
        row = result.report["features"][name]
        ax.plot(gen.grid, gen.intra, color="black", label="reference (intra-set)")
        ax.plot(gen.grid, gen.inter, color="tab:red", label=f"generated, OA {row['generated']['oa']:.2f}")
        ax.plot(human.grid, human.inter, color="tab:blue", linestyle="--", label=f"human, OA {row['human']['oa']:.2f}")
        ax.set_title(feature.label, fontsize=9)
        ax.set_xlabel("distance", fontsize=8)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(FEATURES):]:
        ax.axis("off")
    fig.suptitle(title or "Distance densities per feature (Yang & Lerch 2018)")
    fig.tight_layout()
    save_figure(fig, path)
