"""How the next token is drawn from a model's distribution: greedy, temperature, top-k, top-p, with a
repetition penalty on pitch tokens; each row of a batch by its own settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pianola.errors import PianolaError

STRATEGIES = ("greedy", "temperature", "top_k", "top_p")


REPETITION_WINDOW = 8  # generated tokens the repetition penalty looks back on


@dataclass(frozen=True)
class Sampling:
    """How the next token is drawn from the model's distribution."""

    strategy: str = "top_p"
    temperature: float = 1.0
    top_k: int = 20
    top_p: float = 0.95  # wide enough that a piece does not settle into a loop (bench/music.py)
    # A pitch token's probability is divided by this once for each time it is among the last
    # REPETITION_WINDOW generated tokens: without it, one piece in twenty settles on a pedal
    # note for most of its length (bench/music.py). 1.0 turns it off.
    repetition_penalty: float = 1.3

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise PianolaError(f"unknown strategy {self.strategy!r}; choose one of: {', '.join(STRATEGIES)}")
        if self.temperature <= 0:
            raise PianolaError(f"temperature must be positive, got {self.temperature}")
        if self.top_k < 1:
            raise PianolaError(f"top-k must be at least 1, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise PianolaError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty < 1:
            raise PianolaError(f"repetition penalty must be at least 1 (1: off), got {self.repetition_penalty}")


def sample_next(
    probs: np.ndarray, sampling: Sampling, rng: np.random.Generator, recent: np.ndarray | None = None,
    penalised: np.ndarray | None = None,
) -> np.ndarray:
    """(B,) token ids drawn from (B, V) probabilities, every row with the same `sampling`; see `sample_rows`."""
    return sample_rows(probs, RowSampling.of([sampling] * len(probs)), rng.random(len(probs)), recent, penalised)


@dataclass(frozen=True)
class RowSampling:
    """One `Sampling` per row of a batch, as arrays: rows of one batch may ask for different strategies."""

    greedy: np.ndarray  # (B,) bool
    temperature: np.ndarray  # (B,) float
    top_k: np.ndarray  # (B,) int, 0 where the row's strategy is not top_k
    top_p: np.ndarray  # (B,) float, 1.0 where the row's strategy is not top_p
    penalty: np.ndarray  # (B,) float

    @classmethod
    def of(cls, samplings: list[Sampling]) -> RowSampling:
        return cls(
            np.array([s.strategy == "greedy" for s in samplings], dtype=bool),
            np.array([s.temperature for s in samplings], dtype=np.float64),
            np.array([s.top_k if s.strategy == "top_k" else 0 for s in samplings], dtype=np.int64),
            np.array([s.top_p if s.strategy == "top_p" else 1.0 for s in samplings], dtype=np.float64),
            np.array([s.repetition_penalty for s in samplings], dtype=np.float64),
        )


def sample_rows(
    probs: np.ndarray, rows: RowSampling, draws: np.ndarray, recent: np.ndarray | None = None,
    penalised: np.ndarray | None = None,
) -> np.ndarray:
    """(B,) token ids drawn from (B, V) probabilities, row b by its own settings in `rows` and its uniform
    draw `draws[b]` in [0, 1); `<unk>` (id 0) is never drawn.

    `recent` (B, R) holds the ids each row generated last (-1: none yet), which the repetition penalty makes
    less likely; `penalised` (V,) bool limits it to some tokens (all, when None).
    """
    p = np.asarray(probs, dtype=np.float64).copy()  # (B, V)
    batch, vocab = p.shape
    index = np.arange(batch)
    if recent is not None and (rows.penalty != 1.0).any():
        for column in range(recent.shape[1]):
            ids = recent[:, column]  # (B,)
            valid = ids >= 0
            ids = np.where(valid, ids, 0)
            hit = valid if penalised is None else valid & penalised[ids]
            p[index, ids] /= np.where(hit, rows.penalty, 1.0)
    p[:, 0] = 0.0
    if (rows.temperature != 1.0).any():
        exponent = (1.0 / rows.temperature)[:, None]  # (B, 1)
        p = np.power(np.maximum(p, 1e-300), exponent) * (p > 0)
    if (rows.top_k > 0).any() or (rows.top_p < 1.0).any():
        sorted_p = -np.sort(-p, axis=1)  # (B, V), most likely first
        # top-k: every token at least as likely as the k-th most likely one.
        kth = sorted_p[index, np.clip(rows.top_k, 1, vocab) - 1]  # (B,)
        # top-p: the smallest prefix whose mass reaches top_p ends at the first position where it does;
        # every token at least as likely as that one stays (values, not positions: no argsort needed).
        cumulative = np.cumsum(sorted_p, axis=1) / sorted_p.sum(axis=1, keepdims=True)
        last = np.minimum((cumulative < rows.top_p[:, None]).sum(axis=1), vocab - 1)  # (B,)
        floor = np.where(rows.top_k > 0, kth, np.where(rows.top_p < 1.0, sorted_p[index, last], 0.0))
        p = np.where(p >= floor[:, None], p, 0.0)
    cumulative = np.cumsum(p, axis=1)  # (B, V)
    drawn = np.minimum((cumulative < (draws * cumulative[:, -1])[:, None]).sum(axis=1), vocab - 1)
    return np.where(rows.greedy, p.argmax(axis=1), drawn)


