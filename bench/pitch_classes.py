"""Benchmark: does the `lstm` model know the key? Pitch-class prediction with and without pitch classes.

Two `lstm` models of the `best` architecture, one plain and one with pitch classes (LSTMConfig.pitch_classes),
train side by side in one run for the same number of batches on the piano corpus (`timed` by default). On the
validation pieces, each note's pitch class is scored under the model's distribution (the probabilities of
the note tokens of that class, renormalised over note tokens), from 100 tokens of context. Beside them, two
references that need no training: the uniform distribution over 12 classes, and a running histogram of the
last 40 notes' classes (add-0.5 smoothing), a model that knows the key and nothing else.

    .venv/bin/python bench/pitch_classes.py [--steps 800] [--tokenizer timed] [--corpus ../shared/corpus/piano-midi]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # the project, not bench/: bench/tokenize.py would shadow the standard library

import numpy as np  # noqa: E402

from pianola.data.corpus import tokenize_corpus  # noqa: E402
from pianola.data.sequences import EncodedSplit, build_sequences  # noqa: E402
from pianola.data.vocab import Vocabulary  # noqa: E402
from pianola.io import atomic_write_json  # noqa: E402
from pianola.models import build_model  # noqa: E402
from pianola.tokenizers import get_tokenizer  # noqa: E402
from pianola.training.train import preset_config  # noqa: E402

WINDOW = 100
HISTORY = 40  # notes in the running histogram


def scored_windows(split: EncodedSplit) -> np.ndarray:
    """(N, 2 * WINDOW + 1) windows of the validation pieces; the last WINDOW + 1 positions are scored."""
    starts = split.window_starts(2 * WINDOW)
    return split.windows(starts[:: WINDOW], 2 * WINDOW)


def class_nll(probs: np.ndarray, targets: np.ndarray, pitches: list[int | None]) -> float:
    """Mean NLL of the pitch class of every note target under probs (N, T, V), over note tokens only."""
    is_note = np.array([p is not None for p in pitches])
    classes = np.array([p % 12 if p is not None else 0 for p in pitches])
    notes = probs * is_note
    notes /= notes.sum(axis=-1, keepdims=True)
    by_class = np.stack([notes[..., (classes == k) & is_note].sum(axis=-1) for k in range(12)], axis=-1)
    hit = np.take_along_axis(by_class, classes[targets][..., None], axis=-1)[..., 0]
    return float(-np.log(np.maximum(hit, 1e-12))[is_note[targets]].mean())


def histogram_nll(split: EncodedSplit, pitches: list[int | None]) -> float:
    """Mean NLL of each note's class under the running histogram of the previous HISTORY notes' classes."""
    nll = []
    for i in range(len(split.pieces)):
        classes = [pitches[t] % 12 for t in split.piece_ids(i) if pitches[t] is not None]
        for k in range(HISTORY, len(classes)):
            counts = np.bincount(classes[k - HISTORY : k], minlength=12) + 0.5
            nll.append(-math.log(counts[classes[k]] / counts.sum()))
    return float(np.mean(nll))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus" / "piano-midi")
    parser.add_argument("--tokenizer", default="timed")
    parser.add_argument("--steps", type=int, default=800, help="training batches per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pitch_classes.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pianola-bench-pc-"))
    tokenizer = get_tokenizer(args.tokenizer)
    tokenize_corpus(args.corpus, work / "tokens", tokenizer)
    build_sequences(work / "tokens", work / "sequences", window=WINDOW, valid_fraction=0.1, seed=42)
    vocab = Vocabulary.load(work / "sequences" / "vocab.json")
    train_split = EncodedSplit.load(work / "sequences" / "train.npz")
    valid_split = EncodedSplit.load(work / "sequences" / "valid.npz")
    pitches = [tokenizer.pitch(token) for token in vocab.tokens]
    config = preset_config("lstm", "best")
    scored = scored_windows(valid_split)

    variants = {"plain": False, "pitch classes": True}
    models = {name: build_model("lstm", len(vocab), WINDOW, pitches=pitches,
                                **(config.model_options | {"pitch_classes": on})) for name, on in variants.items()}
    rng = np.random.default_rng(args.seed)
    starts = train_split.window_starts(WINDOW)
    seconds = dict.fromkeys(variants, 0.0)
    for _ in range(args.steps):  # the same batches for both, interleaved: a busy machine slows both alike
        batch = train_split.windows(rng.choice(starts, config.batch_size), WINDOW)
        for name, model in models.items():
            began = time.perf_counter()
            model.train_on_batch(batch[:, :-1], batch[:, 1:])
            seconds[name] += time.perf_counter() - began

    rows = {}
    for name, model in models.items():
        probs = model.predict(scored[:, :-1], batch_size=64, verbose=0)[:, WINDOW - 1 :]  # (N, WINDOW + 1, V)
        targets = scored[:, WINDOW:]
        token_nll = -np.log(np.maximum(np.take_along_axis(probs, targets[..., None], axis=-1)[..., 0], 1e-12))
        rows[name] = {"heldout_ce": round(float(token_nll.mean()), 4),
                      "pitch_class_nll": round(class_nll(probs, targets, pitches), 4),
                      "parameters": model.count_params(), "train_seconds": round(seconds[name], 1)}
    rows["uniform"] = {"pitch_class_nll": round(math.log(12), 4)}
    rows[f"running histogram of {HISTORY} notes"] = {"pitch_class_nll": round(histogram_nll(valid_split, pitches), 4)}

    atomic_write_json(args.out, {"corpus": str(args.corpus), "tokenizer": args.tokenizer, "steps": args.steps,
                                 "batch_size": config.batch_size, "results": rows})
    print("\n| model | held-out CE (nats/token) | pitch-class NLL (nats/note) | training s |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r.get('heldout_ce', '')} | {r['pitch_class_nll']} | {r.get('train_seconds', '')} |")
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
