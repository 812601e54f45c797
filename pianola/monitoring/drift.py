"""Monitoring, after training in the flow: how far a current set of pieces has moved from the training corpus.

`pianola drift` and the `monitor` flow write metrics/drift.json; a drifted report becomes the Prefect event
that starts the `retrain` flow, which begins by merging the new pieces into the corpus source.

How drift is measured:
- features: MIDI pitch of every note (semitones); note duration and inter-onset interval (time between
  successive distinct onsets within a piece), both in quarter notes. Notes are read as
  `music_metrics.load_notes` reads them: all pitched tracks, one key struck twice at once counted once.
- distance: the Wasserstein-1 distance (`scipy.stats.wasserstein_distance`) between the pooled values of
  the reference and of the current set: how far, in the feature's unit, the mass has to move.
- normalisation: each distance is divided by the reference's standard deviation of that feature, so one
  threshold means the same on any corpus ("moved half a typical spread"). A reference that barely varies
  (every note an eighth) would divide by ~0; its spread is floored at the smallest step that matters:
  one semitone, one twelfth of a quarter note (the `timed` grid).
- score: the LARGEST normalised distance, not the mean: a corpus moved up two octaves with its rhythm
  untouched has drifted, and a mean over three features would dilute that to a third.
- drifted: score > threshold.

Inputs: a folder of MIDI files, a MIDI file, a tokens.jsonl, or a folder holding one. From `timed` tokens
all three features are read back (on the tokenizer's grid, from stats.json beside the file). `paper`
tokens carry no timing, so only pitch is measured, and only from note tokens: a chord token holds pitch
classes without octaves, and placing it in octave 4 (as decoding does) would pull every corpus towards
middle C and hide the very register shifts drift must see; chords are counted and reported as skipped.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from scipy.stats import wasserstein_distance

from pianola.data.corpus import TOKENS_FILE, read_pieces
from pianola.errors import PianolaError
from pianola.io import atomic_write_json
from pianola.midi import MIDI_SUFFIXES, midi_files
from pianola.midi.notes import TIME_DECIMALS, load_notes, score_notes
from pianola.params import section
from pianola.tokenizers import tokenizer_from_config
from pianola.tokenizers.paper import NOTE_TOKENS
from pianola.tokenizers.timed import TimedTokenizer

INPUT_FORMS = "a folder of MIDI files, a MIDI file, a tokens.jsonl file or a folder holding one"
PAPER_NOTE_PITCH = {token: pitch for pitch, token in enumerate(NOTE_TOKENS)}
AGGREGATE = "max"


@dataclass(frozen=True)
class Feature:
    name: str
    label: str  # as a sentence names it
    unit: str
    floor: float  # the smallest reference spread a distance is divided by (see the module docstring)
    floor_unit: str  # `floor`, said in words
    decimals: int  # how precisely a sentence quotes its means


FEATURES = {
    f.name: f
    for f in (
        Feature("pitch", "pitch", "semitones", 1.0, "semitones", 1),
        Feature("duration", "duration", "quarter notes", 1 / 12, "twelfths of a quarter note", 2),
        Feature("ioi", "inter-onset interval", "quarter notes", 1 / 12, "twelfths of a quarter note", 2),
    )
}
TIMING_FEATURES = ("duration", "ioi")


@dataclass
class MonitorSettings:
    """What the drift check compares: params.yaml `monitor`, each field overridable."""

    reference: str = "data/raw"
    current: str = "data/incoming"
    threshold: float = 0.5
    features: list[str] = field(default_factory=lambda: list(FEATURES))
    out: str | None = "metrics/drift.json"
    served: str | None = None  # a `pianola serve` store folder: monitor what it served instead of `current`


def monitor_settings(params_path: str | os.PathLike = "params.yaml", **overrides: object) -> MonitorSettings:
    """The built-in defaults, then params.yaml's `monitor` section, then the `overrides` that are not None."""
    given = section("monitor", params_path) | {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - {f.name for f in fields(MonitorSettings)}
    if unknown:
        raise PianolaError(f"{params_path}: unknown monitor setting(s): {', '.join(sorted(unknown))}")
    settings = MonitorSettings(**given)
    if isinstance(settings.features, str):
        settings.features = [settings.features]
    bad = [f for f in settings.features if f not in FEATURES]
    if bad or not settings.features:
        raise PianolaError(f"unknown drift feature(s) {bad or '(none given)'}; choose from {', '.join(FEATURES)}")
    threshold = settings.threshold
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not threshold > 0:
        raise PianolaError(f"the drift threshold must be a positive number, got {threshold!r}")
    settings.threshold = float(threshold)
    return settings


@dataclass
class PieceSet:
    """Feature values pooled over a set of pieces; a feature its source cannot give is in `missing`."""

    path: str
    kind: str  # midi | paper tokens | TOKENIZER tokens (timed, remi, roll)
    pieces: int
    values: dict[str, np.ndarray]  # feature -> (n,) values
    missing: dict[str, str] = field(default_factory=dict)  # feature -> why it cannot be measured
    skipped: list[dict] = field(default_factory=list)  # {"piece", "reason"}: unreadable files, chords

    @classmethod
    def of_pieces(cls, path: str, kind: str, per_piece: list[dict[str, np.ndarray]]) -> PieceSet:
        """The set of pieces whose features are already known (the inference log's records)."""
        return cls(path, kind, len(per_piece), _pool(per_piece))

    def describe(self) -> dict:
        return {
            "path": str(Path(self.path).resolve()),  # the retraining a drift event starts may run elsewhere
            "kind": self.kind,
            "pieces": self.pieces,
            "notes": int(len(self.values["pitch"])),
            "skipped": self.skipped,
        }


def note_features(notes: np.ndarray) -> dict[str, np.ndarray]:
    """Pitch, duration and inter-onset intervals of one piece's (N, 3) (onset, duration, pitch) notes."""
    onsets = np.unique(np.round(notes[:, 0], TIME_DECIMALS))  # a chord is one onset
    return {"pitch": notes[:, 2], "duration": notes[:, 1], "ioi": np.diff(onsets)}


def _pool(per_piece: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Every feature's values over all pieces."""
    return {name: np.concatenate([p[name] for p in per_piece]) if per_piece else np.zeros(0) for name in FEATURES}


def read_midi_set(path: Path) -> PieceSet:
    """The features of a MIDI file or of the MIDI files directly in a folder; unreadable files are skipped."""
    files = [path] if path.is_file() else midi_files(path)
    per_piece, skipped = [], []
    for file in files:
        try:
            notes = load_notes(file)
        except Exception as e:  # symusic raises bare RuntimeErrors; one bad file must not stop monitoring
            skipped.append({"piece": file.name, "reason": str(e) or type(e).__name__})
            continue
        if not len(notes):
            skipped.append({"piece": file.name, "reason": "no pitched notes"})
            continue
        per_piece.append(note_features(notes))
    return PieceSet(str(path), "midi", len(per_piece), _pool(per_piece), skipped=skipped)


def read_token_set(path: Path) -> PieceSet:
    """The features of a tokens.jsonl (or the folder holding it), by the tokenizer that wrote it."""
    pieces = read_pieces(path)
    file = path / TOKENS_FILE if path.is_dir() else path
    stats_path = file.parent / "stats.json"
    config = json.loads(stats_path.read_text()).get("tokenizer", {}) if stats_path.exists() else {}
    # Without stats.json the tokens tell: the paper's tokenizer never writes `note:P`.
    if not config and any(t.startswith("note:") for p in pieces[:1] for t in p.tokens):
        config = TimedTokenizer().config()
    if config and config.get("name") != "paper":
        tokenizer = tokenizer_from_config(config)
        per_piece = [note_features(notes) for p in pieces if len(notes := score_notes(tokenizer.decode(p.tokens)))]
        return PieceSet(str(path), f"{tokenizer.name} tokens", len(per_piece), _pool(per_piece))
    pitches, skipped = [], []
    for piece in pieces:
        found = [PAPER_NOTE_PITCH[t] for t in piece.tokens if t in PAPER_NOTE_PITCH]
        if len(found) < len(piece.tokens):
            skipped.append({"piece": piece.name, "reason": f"{len(piece.tokens) - len(found)} chord token(s) without octaves"})
        pitches.append(np.array(found, dtype=np.float64))
    missing = {name: "paper tokens carry no timing" for name in TIMING_FEATURES}
    return PieceSet(str(path), "paper tokens", sum(len(p) > 0 for p in pitches),
                    {"pitch": np.concatenate(pitches) if pitches else np.zeros(0)}, missing, skipped)


def load_piece_set(path: str | os.PathLike, role: str = "pieces") -> PieceSet:
    """Read a set of pieces in any of the accepted forms, failing clearly (naming its `role`) when it holds no notes."""
    path = Path(path)
    if not path.exists():
        raise PianolaError(f"{role} {path}: not found; pass {INPUT_FORMS}")
    if (path.is_file() and path.suffix.lower() in MIDI_SUFFIXES) or (path.is_dir() and midi_files(path)):
        pieces = read_midi_set(path)
    elif path.is_file() or (path / TOKENS_FILE).exists():
        pieces = read_token_set(path)
    else:
        raise PianolaError(f"{role} {path}: holds no MIDI files and no {TOKENS_FILE}; pass {INPUT_FORMS}")
    if not len(pieces.values["pitch"]):
        reasons = "; ".join(f"{s['piece']}: {s['reason']}" for s in pieces.skipped[:3])
        raise PianolaError(f"{role} {path}: no notes could be read" + (f" ({reasons})" if reasons else ""))
    return pieces


@dataclass
class FeatureDrift:
    feature: str
    distance: float  # Wasserstein-1, in the feature's unit
    normalised: float  # distance / scale
    scale: float  # max(reference_std, the feature's floor)
    reference_std: float
    reference_mean: float
    current_mean: float
    unit: str

    def movement(self) -> str:
        """'pitch moved 3.9 reference standard deviations'."""
        spec = FEATURES[self.feature]
        units = "reference standard deviations" if self.reference_std >= spec.floor else (
            f"{spec.floor_unit} (the reference varies less than that)")
        return f"{spec.label} moved {self.normalised:.2f} {units}"

    def means(self) -> str:
        """'mean pitch 86.1 now, 62.3 in the reference'."""
        spec = FEATURES[self.feature]
        unit = "" if self.feature == "pitch" else f" {spec.unit}"
        return (f"mean {spec.label} {self.current_mean:.{spec.decimals}f}{unit} now, "
                f"{self.reference_mean:.{spec.decimals}f}{unit} in the reference")


def feature_drift(name: str, reference: np.ndarray, current: np.ndarray) -> FeatureDrift:
    """The raw and normalised Wasserstein distance of one feature."""
    distance = float(wasserstein_distance(reference, current))
    std = float(np.std(reference))
    scale = max(std, FEATURES[name].floor)
    return FeatureDrift(name, distance, distance / scale, scale, std, float(np.mean(reference)),
                        float(np.mean(current)), FEATURES[name].unit)


DRIFT_KINDS = {
    "corpus": "new pieces against the training corpus",
    "input": "the primers sent to the service against the training corpus",
    "prediction": "the pieces the service generated against those the same model version generates from training primers",
}


@dataclass
class DriftReport:
    reference: PieceSet
    current: PieceSet
    features: dict[str, FeatureDrift]
    not_measured: dict[str, str]  # feature -> why
    threshold: float
    kind: str = "corpus"  # a key of DRIFT_KINDS: what was compared with what

    @property
    def score(self) -> float:
        return max(f.normalised for f in self.features.values())

    @property
    def drifted(self) -> bool:
        return self.score > self.threshold

    @property
    def moved(self) -> list[str]:
        """The features that moved past the threshold, most first."""
        ranked = sorted(self.features.values(), key=lambda f: -f.normalised)
        return [f.feature for f in ranked if f.normalised > self.threshold]

    @property
    def reason(self) -> str:
        """Why it fired, or why not, in one sentence (naming the kind of drift, where it is not the corpus's)."""
        if self.moved:
            why = "; ".join(f"{f.movement()} (threshold {self.threshold:g}): {f.means()}"
                            for f in (self.features[m] for m in self.moved))
        else:
            largest = max(self.features.values(), key=lambda f: f.normalised)
            why = f"no feature moved more than the threshold {self.threshold:g}: the largest move, {largest.movement()}"
        if self.kind == "corpus":
            return why
        return f"{self.kind} drift: {why}" if self.moved else f"no {self.kind} drift, {why}"

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "compared": DRIFT_KINDS[self.kind],
            "drifted": self.drifted,
            "moved": self.moved,
            "score": round(self.score, 6),
            "aggregate": AGGREGATE,
            "threshold": self.threshold,
            "reason": self.reason,
            "features": {
                name: {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(f).items() if k != "feature"}
                | {"drifted": f.normalised > self.threshold}
                for name, f in self.features.items()
            },
            "not_measured": self.not_measured,
            "reference": self.reference.describe(),
            "current": self.current.describe(),
        }

    def event_payload(self) -> dict:
        """What the drift event carries: the report, `current.path` the pieces retraining adds."""
        return self.to_json()

    def summary(self) -> str:
        """A verdict line, then one line per feature (for the CLI)."""
        lines = [f"{'DRIFTED' if self.drifted else 'no drift'} (score {self.score:.3f}, threshold {self.threshold:g}): {self.reason}"]
        for name, f in self.features.items():
            lines.append(f"  {name:<9} distance {f.distance:9.4f} {f.unit:<14} normalised {f.normalised:7.3f}"
                         f"  (reference sd {f.reference_std:.4f})")
        lines += [f"  {name:<9} not measured: {why}" for name, why in self.not_measured.items()]
        return "\n".join(lines)

    def markdown(self) -> str:
        """The report as a Markdown table (for a Prefect artifact)."""
        rows = [f"| {name} | {f.distance:.4f} {f.unit} | {f.normalised:.3f} | {f.reference_mean:.3f} | {f.current_mean:.3f} |"
                for name, f in self.features.items()]
        rows += [f"| {name} | not measured: {why} | | | |" for name, why in self.not_measured.items()]
        return "\n".join([
            f"**{'Drifted' if self.drifted else 'No drift'}**: {self.reason}.",
            "",
            f"Compared: {DRIFT_KINDS[self.kind]}.",
            "",
            f"Score {self.score:.3f} ({AGGREGATE} of the normalised distances), threshold {self.threshold:g}. "
            f"Reference `{self.reference.path}` ({self.reference.kind}, {self.reference.pieces} pieces); "
            f"current `{self.current.path}` ({self.current.kind}, {self.current.pieces} pieces).",
            "",
            "| feature | Wasserstein distance | normalised | reference mean | current mean |",
            "|---|---|---|---|---|",
            *rows,
        ])


def measure_drift(
    reference: str | os.PathLike, current: str | os.PathLike, *, threshold: float, features: list[str] | None = None
) -> DriftReport:
    """Compare `current` with `reference` on `features` (default: all that both sides can give)."""
    return compare(load_piece_set(reference, "reference"), load_piece_set(current, "current set"),
                   threshold=threshold, features=features)


def compare(ref: PieceSet, cur: PieceSet, *, threshold: float, features: list[str] | None = None,
            kind: str = "corpus") -> DriftReport:
    """The drift of `cur` from `ref` on `features` (default: all that both sides can give)."""
    measured, not_measured = {}, {}
    for name in features or list(FEATURES):
        why = ref.missing.get(name) or cur.missing.get(name)
        if why is None and not (len(ref.values[name]) and len(cur.values[name])):
            why = f"no {FEATURES[name].label} values (every piece is a single chord)"
        if why:
            not_measured[name] = why
        else:
            measured[name] = feature_drift(name, ref.values[name], cur.values[name])
    if not measured:
        raise PianolaError(f"{kind} drift: no feature can be measured ({'; '.join(f'{k}: {v}' for k, v in not_measured.items())})")
    return DriftReport(ref, cur, measured, not_measured, threshold, kind)


def check_drift(settings: MonitorSettings) -> DriftReport:
    """Measure drift of `current` as `settings` say and write the report to `settings.out` (when set);
    `pianola.monitoring.served.check` also covers `settings.served`."""
    report = measure_drift(settings.reference, settings.current, threshold=settings.threshold, features=settings.features)
    if settings.out:
        atomic_write_json(settings.out, report.to_json())
    return report


