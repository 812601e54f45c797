"""Monitoring of what the service served (the paper's section XI): input drift and prediction drift.

From the inference log of `pianola serve`:
- input drift: the primers users sent (their notes' features, as the log keeps them) against the training
  corpus, by the Wasserstein distance of `pianola.monitoring.drift`;
- prediction drift: the pieces the service generated against pieces the same model version generates from
  the training windows its bundle keeps, replaying the served requests' own settings and lengths, so that
  only where the pieces started differs.

A drifted check names the kind of drift and the features that moved. The pieces retraining adds to the
corpus are the primers users sent (the store's primers/ folder), never the model's own output.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pianola.errors import PianolaError
from pianola.generation.generate import compose, generate_each, piece_rng
from pianola.generation.sampling import Sampling
from pianola.io import atomic_write_json
from pianola.models.bundle import load_bundle
from pianola.monitoring.drift import (
    DriftReport,
    MonitorSettings,
    PieceSet,
    check_drift,
    compare,
    load_piece_set,
    note_features,
)
from pianola.serving.store import read_log

SAMPLING_FIELDS = ("strategy", "temperature", "top_k", "top_p", "repetition_penalty")
REPLAYED = 32  # pieces generated from training primers for the prediction-drift reference


@dataclass
class ServedDrift:
    """Both checks of a served log; a check that could not run says why in `not_measured`."""

    log: str
    records: int
    model_version: str | None
    reports: dict[str, DriftReport] = field(default_factory=dict)  # "input", "prediction"
    not_measured: dict[str, str] = field(default_factory=dict)
    primers: str = ""  # the folder of the primers users sent: what retraining adds to the corpus

    @property
    def drifted(self) -> bool:
        return any(r.drifted for r in self.reports.values())

    @property
    def worst(self) -> DriftReport | None:
        """The drifted report that moved most (the one the retrain event carries), or None."""
        drifted = [r for r in self.reports.values() if r.drifted]
        return max(drifted, key=lambda r: r.score) if drifted else None

    @property
    def reason(self) -> str:
        parts = [r.reason for r in self.reports.values()]
        parts += [f"{kind} drift not measured: {why}" for kind, why in self.not_measured.items()]
        return "; ".join(parts)

    def to_json(self) -> dict:
        return {
            "drifted": self.drifted,
            "kinds": [kind for kind, r in self.reports.items() if r.drifted],
            "reason": self.reason,
            "log": str(Path(self.log).resolve()),
            "records": self.records,
            "model_version": self.model_version,
            "reports": {kind: r.to_json() for kind, r in self.reports.items()},
            "not_measured": self.not_measured,
        }

    def event_payload(self) -> dict:
        """The drift event's payload: the worst report, its `current` the folder of primers users sent."""
        report = self.worst.to_json()
        report["current"] = report["current"] | {"path": str(Path(self.primers).resolve()), "kind": "served primers"}
        return report | {"served": self.to_json()}

    def summary(self) -> str:
        lines = [f"{'DRIFTED' if self.drifted else 'no drift'} in {self.records} served request(s) of {self.log}"]
        for report in self.reports.values():
            lines += ["  " + line for line in report.summary().splitlines()]
        lines += [f"  {kind} drift not measured: {why}" for kind, why in self.not_measured.items()]
        return "\n".join(lines)

    def markdown(self) -> str:
        parts = [f"Served log `{self.log}`: {self.records} request(s), model version {self.model_version}."]
        parts += [f"### {kind.capitalize()} drift\n\n{r.markdown()}" for kind, r in self.reports.items()]
        parts += [f"### {kind.capitalize()} drift\n\nNot measured: {why}." for kind, why in self.not_measured.items()]
        return "\n\n".join(parts)


def served_drift(
    store: str | os.PathLike, reference: str | os.PathLike, *, threshold: float, features: list[str] | None = None,
    log_path: str | os.PathLike | None = None, since: float | None = None, replayed: int = REPLAYED, seed: int = 0,
) -> ServedDrift:
    """Input and prediction drift of what the service with store folder `store` served (its log by default
    STORE/inference.jsonl; `since`: only records after this UNIX time), against the training corpus
    `reference` (any form `pianola drift` reads)."""
    store = Path(store)
    log_path = Path(log_path) if log_path else store / "inference.jsonl"
    records = list(read_log(log_path, since))
    if not records:
        raise PianolaError(f"{log_path}: no served requests to monitor (is this the log of `pianola serve`?)")
    latest = records[-1]
    version, uri = latest.get("model_version"), latest.get("model_uri")
    result = ServedDrift(str(log_path), len(records), version, primers=str(store / "primers"))

    sent = [features_of(r["primer"]["features"]) for r in records if r.get("primer", {}).get("features")]
    corpus = load_piece_set(reference, "reference")
    if sent:
        primers = PieceSet.of_pieces(str(store / "primers"), "served primers", sent)
        result.reports["input"] = compare(corpus, primers, threshold=threshold, features=features, kind="input")
    else:
        result.not_measured["input"] = "no request sent a primer of its own"

    served = [(r["settings"], piece) for r in records if r.get("model_version") == version for piece in r["pieces"]]
    if uri is None:
        result.not_measured["prediction"] = "the log does not name the model it served"
    else:
        current = PieceSet.of_pieces(str(store), f"served pieces (model version {version})",
                                     [features_of(piece["features"]) for _, piece in served])
        expected = PieceSet.of_pieces(uri, f"pieces of model version {version} from training primers",
                                      replay(uri, [settings for settings, _ in served], replayed, seed))
        result.reports["prediction"] = compare(expected, current, threshold=threshold, features=features,
                                               kind="prediction")
    skipped = Counter(r.get("model_version") for r in records if r.get("model_version") != version)
    if skipped:
        result.not_measured["older versions"] = ", ".join(f"{n} request(s) of version {v}" for v, n in skipped.items())
    return result


def features_of(logged: dict[str, list[float]]) -> dict[str, np.ndarray]:
    return {name: np.asarray(values, dtype=np.float64) for name, values in logged.items()}


def replay(uri: str, settings: list[dict], n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """The features of `n` pieces the model at `uri` generates from its training primers, each with the
    settings and length of a served piece drawn at random (`seed`)."""

    bundle = load_bundle(uri)
    if bundle.primers is None or not len(bundle.primers):
        raise PianolaError(f"{uri}: the model keeps no training primers, so its expected pieces cannot be generated")
    rng = np.random.default_rng(seed)
    picked = [settings[i] for i in rng.integers(len(settings), size=n)]
    primers = bundle.primers[rng.integers(len(bundle.primers), size=n)]
    samplings = [Sampling(**{k: s[k] for k in SAMPLING_FIELDS}) for s in picked]
    ids = generate_each(bundle, primers, [int(s["length"]) for s in picked], samplings,
                        [piece_rng(seed, i) for i in range(n)])
    pieces = [note_features(compose(bundle, row).notes) for row in ids]
    return [p for p in pieces if len(p["pitch"])]


def check(settings: MonitorSettings) -> DriftReport | ServedDrift:
    """The drift check `settings` ask for: of what a service served where `settings.served` names its store,
    else of `settings.current`; written to `settings.out` (when set)."""
    if not settings.served:
        return check_drift(settings)
    report = served_drift(settings.served, settings.reference, threshold=settings.threshold, features=settings.features)
    if settings.out:
        atomic_write_json(settings.out, report.to_json())
    return report
