"""Promotion: the candidate becomes champion only if it is better on the held-out pieces (the registry's aliases).

Reads the MLflow registry through pianola.tracking; the last step of the pipeline before the push.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from pianola.errors import PianolaError
from pianola.evaluation.heldout import evaluate_midi
from pianola.models.bundle import load_bundle
from pianola.tracking import (
    CANDIDATE,
    CHAMPION,
    REGISTERED_MODEL,
    alias_version,
    setup,
    tracking_uri,
)


@dataclass
class Promotion:
    candidate: str
    champion_before: str | None
    candidate_cross_entropy: float
    champion_cross_entropy: float | None
    promoted: bool

    def summary(self) -> str:
        if self.champion_before is None:
            return f"version {self.candidate} is the first champion (cross-entropy {self.candidate_cross_entropy:.4f})"
        verdict = "promoted to champion" if self.promoted else "not promoted"
        return (
            f"candidate version {self.candidate} ({self.candidate_cross_entropy:.4f} nats) vs champion version "
            f"{self.champion_before} ({self.champion_cross_entropy:.4f} nats): {verdict}"
        )


def promote(midi_dir: str | os.PathLike, pieces: list[str] | None = None) -> Promotion:
    """Move `champion` to `candidate` only if the candidate's held-out cross-entropy is lower.

    Both models are evaluated now, on the same MIDI files (`pieces` of `midi_dir`; by default the
    candidate's validation pieces), each through its own tokenizer and vocabulary.
    """

    setup()
    candidate = alias_version(CANDIDATE)
    if candidate is None:
        raise PianolaError(f"no model has the alias '{CANDIDATE}' in {tracking_uri()}; run `pianola train` first")
    champion = alias_version(CHAMPION)
    candidate_bundle = load_bundle(f"models:/{REGISTERED_MODEL}/{candidate}")
    if pieces is None:
        pieces = candidate_bundle.info.get("valid_pieces")
    candidate_ce = evaluate_midi(candidate_bundle, midi_dir, pieces).cross_entropy
    champion_ce = None
    if champion is not None and champion != candidate:
        champion_ce = evaluate_midi(load_bundle(f"models:/{REGISTERED_MODEL}/{champion}"), midi_dir, pieces).cross_entropy
    elif champion == candidate:
        champion_ce = candidate_ce
    promoted = champion is None or (champion_ce is not None and candidate_ce < champion_ce)
    client = MlflowClient()
    client.set_model_version_tag(REGISTERED_MODEL, candidate, "heldout_cross_entropy", f"{candidate_ce:.6f}")
    if promoted:
        client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, candidate)
    return Promotion(candidate, champion, candidate_ce, champion_ce, promoted)
