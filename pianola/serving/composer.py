"""Requests for pieces, checked and turned into primers; generated ids turned back into pieces.

One path for every way of asking a registered model for music: the MLflow pyfunc model
(`mlflow models serve`), `pianola serve` and its page. A request's settings are bounded by `Limits`;
a primer is MIDI (only piano music: it must be readable and hold pitched, non-drum notes) or tokens of
the model's vocabulary. Without a primer, a piece starts from one of the windows of training music the
bundle keeps, chosen by the seed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pianola.errors import BadRequest, PianolaError
from pianola.generation.generate import Composition, compose, generate_ids, primer_ids
from pianola.generation.sampling import Sampling
from pianola.midi.validate import validate_midi
from pianola.models.bundle import Bundle

SETTINGS = ("n", "length", "strategy", "temperature", "top_k", "top_p", "repetition_penalty", "seed")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_n: int = 8
    max_length: int = 2000
    max_primer_bytes: int = 1_000_000  # a primer MIDI file, decoded
    max_primer_tokens: int = 10_000
    timeout_s: float = 60.0  # generation time one request may take


@dataclass(frozen=True)
class GenerationRequest:
    """What a client asks for; every field has a default."""

    n: int = 1
    length: int = 500
    sampling: Sampling = field(default_factory=Sampling)
    seed: int = 0
    primer_midi: bytes | None = None
    primer_tokens: list[str] | None = None

    @classmethod
    def parse(cls, fields: dict, limits: Limits) -> GenerationRequest:
        """A request from JSON-like fields (`SETTINGS`, `primer_midi` in base64, `primer_tokens`), checked;
        BadRequest names the field that is wrong."""
        unknown = set(fields) - set(SETTINGS) - {"primer_midi", "primer_tokens"}
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}; known: {', '.join(SETTINGS)}, "
                             "primer_midi, primer_tokens")
        given = {k: v for k, v in fields.items() if v is not None}
        defaults = Sampling()
        n = _integer(given, "n", 1, 1, limits.max_n)
        length = _integer(given, "length", min(cls.length, limits.max_length), 1, limits.max_length)
        seed = _integer(given, "seed", 0, 0, 2**63 - 1)
        strategy = given.get("strategy", defaults.strategy)
        if not isinstance(strategy, str):
            raise BadRequest(f"strategy must be a string, got {strategy!r}")
        try:
            sampling = Sampling(
                strategy,
                _number(given, "temperature", defaults.temperature),
                _integer(given, "top_k", defaults.top_k, 1, 100_000),
                _number(given, "top_p", defaults.top_p),
                _number(given, "repetition_penalty", defaults.repetition_penalty),
            )
        except PianolaError as e:
            raise BadRequest(str(e)) from e
        midi = given.get("primer_midi")
        tokens = given.get("primer_tokens")
        if midi is not None and tokens is not None:
            raise BadRequest("give primer_midi or primer_tokens, not both")
        if midi is not None:
            midi = decode_midi(midi, limits)
        if tokens is not None:
            if not isinstance(tokens, list | tuple) or not all(isinstance(t, str) for t in tokens):
                raise BadRequest("primer_tokens must be a list of token strings")
            if not tokens:
                raise BadRequest("primer_tokens is empty")
            if len(tokens) > limits.max_primer_tokens:
                raise BadRequest(f"primer_tokens has {len(tokens):,} tokens, over the cap of {limits.max_primer_tokens:,}",
                                 status=413)
            tokens = list(tokens)
        return cls(n, length, sampling, seed, midi, tokens)

    def settings(self) -> dict:
        """The settings as the log and the response report them."""
        return {"n": self.n, "length": self.length, "seed": self.seed} | asdict(self.sampling)


def _integer(given: dict, name: str, default: int, low: int, high: int) -> int:
    value = given.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise BadRequest(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low:,} and {high:,}, got {value:,}")
    return int(value)


def _number(given: dict, name: str, default: float) -> float:
    value = given.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float | np.number) or not np.isfinite(value):
        raise BadRequest(f"{name} must be a finite number, got {value!r}")
    return float(value)


def decode_midi(text: object, limits: Limits) -> bytes:
    """A base64 primer's bytes, refused unless it is a MIDI file of piano music under the size cap."""
    if not isinstance(text, str | bytes):
        raise BadRequest("primer_midi must be a MIDI file in base64")
    if len(text) > limits.max_primer_bytes * 4 // 3 + 4:
        raise BadRequest(f"primer_midi is over the cap of {limits.max_primer_bytes:,} bytes", status=413)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"primer_midi is not valid base64 ({e})") from e
    return check_primer_midi(data, limits)


def check_primer_midi(data: bytes, limits: Limits) -> bytes:
    """`data`, refused with the reason unless it is readable MIDI holding pitched notes, under the size cap."""
    reason = validate_midi(data, max_bytes=limits.max_primer_bytes)
    if reason is not None:
        status = 413 if reason.startswith("over the size cap") else 422
        raise BadRequest(f"primer refused, only piano MIDI is accepted: {reason}", status=status)
    return data


@dataclass(frozen=True)
class Primer:
    """Where the pieces of a request start."""

    source: str  # "training" (windows the bundle keeps), "midi" or "tokens"
    ids: np.ndarray  # (n, window) the windows each piece continues
    tokens: list[str]  # a user primer's tokens, as the model read them (empty for training primers)
    fingerprint: str | None  # sha256 of the primer MIDI or of its tokens; None for training primers
    labels: list[str]  # each piece's primer, in words


class Composer:
    """A bundle ready to serve requests: it turns them into primers and generated ids into pieces."""

    def __init__(self, bundle: Bundle, version: str, limits: Limits | None = None) -> None:
        self.bundle = bundle
        self.version = version
        self.limits = limits or Limits()

    def primer(self, request: GenerationRequest) -> Primer:
        """The request's primer: its own (MIDI or tokens), or training windows picked by its seed."""
        bundle, n = self.bundle, request.n
        if request.primer_midi is not None:
            tokens = self._midi_tokens(request.primer_midi)
            ids, _ = primer_ids(bundle, tokens, n)
            return Primer("midi", ids, tokens, hashlib.sha256(request.primer_midi).hexdigest(), ["uploaded MIDI"] * n)
        if request.primer_tokens is not None:
            unknown = sorted({t for t in request.primer_tokens if t not in bundle.vocab})
            if unknown:
                shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
                raise BadRequest(f"primer_tokens holds {len(unknown)} token(s) the model does not know: {shown}")
            ids, _ = primer_ids(bundle, request.primer_tokens, n)
            digest = hashlib.sha256("\n".join(request.primer_tokens).encode()).hexdigest()
            return Primer("tokens", ids, list(request.primer_tokens), digest, ["given tokens"] * n)
        kept = bundle.primers
        if kept is None or not len(kept):
            raise BadRequest("this model keeps no training primers (it was trained before they were kept): "
                             "give primer_midi or primer_tokens", status=409)
        picked = [int(i) for i in np.random.default_rng(request.seed).integers(len(kept), size=n)]
        return Primer("training", kept[picked], [], None, [f"training window {i}" for i in picked])

    def _midi_tokens(self, data: bytes) -> list[str]:
        with tempfile.TemporaryDirectory(prefix="pianola-primer-") as folder:
            path = Path(folder) / "primer.mid"
            path.write_bytes(data)
            try:
                tokens = self.bundle.tokenizer.encode(path)
            except Exception as e:  # noqa: BLE001 - a tokenizer may fail on any odd file: the client is told why
                raise BadRequest(f"primer refused: it cannot be read as music ({e})") from e
        if not tokens:
            raise BadRequest("primer refused: it has no notes the model can read")
        known = sum(t in self.bundle.vocab for t in tokens)
        if not known:
            raise BadRequest("primer refused: none of its notes are in the model's vocabulary")
        return tokens

    def pieces(self, ids: np.ndarray) -> list[Composition]:
        """Generated (n, length) ids -> pieces with their metrics."""
        return [compose(self.bundle, row) for row in ids]

    def describe(self) -> dict:
        """The model: version, name, tokenizer, window, training facts."""
        info = self.bundle.info
        return {
            "version": self.version,
            "model": self.bundle.model_name,
            "tokenizer": self.bundle.tokenizer_config,
            "window": self.bundle.window,
            "vocab_size": len(self.bundle.vocab),
            "preset": info.get("preset"),
            "run_id": info.get("run_id"),
            "heldout": info.get("heldout"),
            "training_primers": 0 if self.bundle.primers is None else len(self.bundle.primers),
            "limits": asdict(self.limits),
            "defaults": GenerationRequest().settings(),
        }


def generate_request(composer: Composer, request: GenerationRequest) -> tuple[Primer, list[Composition]]:
    """Serve one request in this thread (the pyfunc model): primer, generation, pieces."""

    primer = composer.primer(request)
    ids = generate_ids(composer.bundle, primer.ids, request.length, request.sampling, request.seed)
    return primer, composer.pieces(ids)


def piece_json(composition: Composition, piece_id: str | None = None) -> dict:
    """A piece as the APIs answer it: MIDI in base64, tokens, metrics (and its id where it is stored)."""
    record = {"midi": base64.b64encode(composition.midi()).decode("ascii"), "tokens": composition.tokens,
              "metrics": composition.metrics}
    return ({"id": piece_id} if piece_id else {}) | record
