"""Exact negative log-likelihood per frame of a `roll-lstm` model on whole pieces.

A frame's NLL is the sum of its tokens' NLL (its keys low to high, then end-of-frame); the model's
grammar makes that an exact likelihood of the frame (see pianola.models.roll). Every piece is
scored from its first frame, conditioned on the start token, to its last, with the LSTM state
carried through the whole piece however long it is: pieces go through in fixed-size chunks, the
states passed from one chunk to the next, so no window ever truncates the context.

The benchmark's figure is the mean over every frame of every piece of a split; the TCN paper's
convention (Bai et al. 2018) leaves each piece's first frame out.
"""

import weakref
from dataclasses import asdict, dataclass
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import scipy.signal

from pianola.benchmark.bundle import load_benchmark_model
from pianola.benchmark.data import load_rolls, roll_of_frames
from pianola.errors import PianolaError
from pianola.models.roll import (
    CHANNELS,
    GRID,
    HISTORY_DECAY,
    context_width,
    end_of_frame,
    start_of_piece,
    stateful_twin,
)


@dataclass(frozen=True)
class Serialised:
    """One piece as the model reads it: position t reads inputs[t] and its context, predicts targets[t]."""

    inputs: np.ndarray  # (L,) int32: the start token, then every target but the last
    targets: np.ndarray  # (L,) int32: each frame's keys low to high, then end-of-frame
    frames: np.ndarray  # (L,) int32: the frame each target belongs to
    roll: np.ndarray  # (frames, keys) bool: the piece
    history: np.ndarray  # (frames, keys) float32: at frame f, the decayed mean of frames 0 .. f - 1

    def context(self, positions: slice = slice(None), shift: int = 0) -> np.ndarray:
        """(positions, context_width) float32: for each key the channels of `CHANNELS` (key-major), then the
        grid position of the target's frame (its index modulo GRID, one-hot). Only what precedes the target.
        `shift` moves every key's channels by that many keys (the piece transposed; the grid position stays)."""
        start, stop, _ = positions.indices(len(self.targets))
        if start >= stop:
            return np.zeros((0, context_width(self.roll.shape[1])), dtype=np.float32)
        # The keys written so far in a frame need the frame from its start: work from there.
        begin = int(np.searchsorted(self.frames, self.frames[start]))
        frames, inputs, targets = self.frames[begin:stop], self.inputs[begin:stop], self.targets[begin:stop]
        n, keys = len(frames), self.roll.shape[1]
        planes = np.zeros((n, keys, len(CHANNELS)), dtype=np.float32)
        for channel, back in ((CHANNELS.index("previous"), 1), (CHANNELS.index("before_previous"), 2)):
            there = frames >= back
            planes[there, :, channel] = self.roll[frames[there] - back]
        planes[:, :, CHANNELS.index("history")] = self.history[frames]
        rows = np.flatnonzero(inputs < keys)  # positions whose input is a key: one of the target's own frame
        planes[rows, inputs[rows], CHANNELS.index("last")] = 1.0
        # A key written in a frame counts from the position after it (where it is the input) through the
        # frame's end-of-frame: a running sum of +1 there and -1 after (n: the range stops inside the frame).
        ends = np.append(np.flatnonzero(targets == end_of_frame(keys)), n)
        so_far = np.zeros((n + 2, keys), dtype=np.float32)
        np.add.at(so_far, (rows, inputs[rows]), 1.0)
        np.add.at(so_far, (ends[np.searchsorted(ends, rows)] + 1, inputs[rows]), -1.0)
        planes[:, :, CHANNELS.index("so_far")] = np.cumsum(so_far, axis=0)[:n]
        context = np.zeros((n, context_width(keys)), dtype=np.float32)
        context[:, : keys * len(CHANNELS)] = (np.roll(planes, shift, axis=1) if shift else planes).reshape(n, -1)
        context[np.arange(n), keys * len(CHANNELS) + frames % GRID] = 1.0
        return context[start - begin :]


def serialise(roll: np.ndarray) -> Serialised:
    """The token stream of a (frames, keys) 0/1 roll."""
    roll = np.asarray(roll, dtype=bool)
    n_frames, keys = roll.shape
    counts = roll.sum(axis=1)
    length = int(counts.sum()) + n_frames
    targets = np.empty(length, dtype=np.int32)
    ends = np.cumsum(counts + 1) - 1  # the end-of-frame position of each frame
    is_key = np.ones(length, dtype=bool)
    is_key[ends] = False
    targets[ends] = end_of_frame(keys)
    targets[is_key] = np.nonzero(roll)[1]  # row-major: frame by frame, keys ascending
    inputs = np.concatenate([[start_of_piece(keys)], targets[:-1]]).astype(np.int32)
    # history[f] = (1 - d) * sum over j < f of d**(f - 1 - j) * roll[j]: a first-order filter, shifted a frame.
    decayed = scipy.signal.lfilter([1 - HISTORY_DECAY], [1, -HISTORY_DECAY], roll.astype(np.float32), axis=0)
    history = np.vstack([np.zeros((1, keys)), decayed[:-1]]).astype(np.float32)
    return Serialised(inputs, targets, np.repeat(np.arange(n_frames, dtype=np.int32), counts + 1), roll, history)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log p over the last axis, in float64 (masked logits give -inf-like values, never NaN)."""
    logits = logits.astype(np.float64)
    top = logits.max(axis=-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))


_TWINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _twin(model):
    """The stateful twin of `model`, built once per model: validation after every epoch reuses it
    (and its compiled predict function) instead of rebuilding and retracing."""
    if model not in _TWINS:
        _TWINS[model] = stateful_twin(model)
    return _TWINS[model]


def frame_nlls(model, pieces: list[np.ndarray], *, batch_size: int = 16, chunk: int = 512) -> list[np.ndarray]:
    """Per piece, the NLL in nats of each of its frames, (frames,) float64, under `model`.

    Pieces are sorted by length and scored `batch_size` at a time, `chunk` tokens per call, with
    the LSTM states carried from chunk to chunk; the padding after a piece's end is never read.
    """
    twin = _twin(model)
    keys = model.get_layer("grammar").keys
    state_sizes = [int(s.shape[-1]) for s in twin.inputs[2:]]
    serial = [serialise(roll) for roll in pieces]
    results: list[np.ndarray | None] = [None] * len(pieces)
    order = sorted(range(len(pieces)), key=lambda i: len(serial[i].targets))
    for start in range(0, len(order), batch_size):
        group = order[start : start + batch_size]
        longest = max(len(serial[i].targets) for i in group)
        padded = -(-longest // chunk) * chunk
        tokens = np.full((batch_size, padded), end_of_frame(keys), dtype=np.int32)
        context = np.zeros((batch_size, padded, context_width(keys)), dtype=np.float32)
        targets = np.zeros((batch_size, padded), dtype=np.int64)
        for row, i in enumerate(group):
            n = len(serial[i].targets)
            tokens[row, :n] = serial[i].inputs
            context[row, :n] = serial[i].context()
            targets[row, :n] = serial[i].targets
        states = [np.zeros((batch_size, size), dtype=np.float32) for size in state_sizes]
        token_nll = np.empty((batch_size, padded), dtype=np.float64)
        for at in range(0, padded, chunk):
            window = slice(at, at + chunk)
            logits, *states = twin.predict_on_batch([tokens[:, window], context[:, window], *states])
            logp = log_softmax(np.asarray(logits))
            token_nll[:, window] = -np.take_along_axis(logp, targets[:, window, None], axis=-1)[..., 0]
        for row, i in enumerate(group):
            s = serial[i]
            results[i] = np.bincount(s.frames, weights=token_nll[row, : len(s.targets)], minlength=len(pieces[i]))
    return results  # type: ignore[return-value]


@dataclass(frozen=True)
class FrameScore:
    """The benchmark figures of one split."""

    split: str
    pieces: int
    frames: int
    nll_per_frame: float  # every frame, each piece's first conditioned on the start token
    nll_per_frame_first_excluded: float  # TCN's convention: each piece's first frame left out

    def to_json(self) -> dict:
        return asdict(self)


def score(model, pieces: list[np.ndarray], split: str, **options) -> FrameScore:
    """The mean frame NLL of `pieces` (a split), both conventions."""
    per_piece = frame_nlls(model, pieces, **options)
    total = float(sum(p.sum() for p in per_piece))
    frames = sum(len(p) for p in per_piece)
    later = frames - len(per_piece)
    first_excluded = (total - float(sum(p[0] for p in per_piece))) / later if later else float("nan")
    return FrameScore(split, len(pieces), frames, round(total / frames, 6), round(first_excluded, 6))


def evaluate_benchmark(model_ref: str, data: str, split: str) -> dict:
    """`pianola benchmark evaluate`: the figures of a trained model on one split of a dataset file."""

    dataset = load_rolls(data)
    pieces = dataset.split(split)
    model, _ = load_benchmark_model(model_ref)
    keys = model.get_layer("grammar").keys
    if pieces[0].shape[1] != keys:
        raise PianolaError(f"{data}: its pieces have {pieces[0].shape[1]} keys but the model was trained on {keys}")
    return {"dataset": dataset.name, **score(model, pieces, split).to_json()}


class RollScorer(mlflow.pyfunc.PythonModel):
    """The pyfunc face of a benchmark model: a `frames` column of pieces -> their NLL per frame."""

    def load_context(self, context: Any) -> None:
        self.model, self.meta = load_benchmark_model(context.artifacts["model"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        rolls = [roll_of_frames([[int(p) for p in frame] for frame in piece], f"piece {i}")
                 for i, piece in enumerate(model_input["frames"])]
        nlls = frame_nlls(self.model, rolls)
        return pd.DataFrame({"frames": [len(n) for n in nlls], "nll_per_frame": [float(n.mean()) for n in nlls]})
