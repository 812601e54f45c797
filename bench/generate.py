"""Benchmark: generation speed, pianola's stateful batched generation against the paper's loop.

The paper generated each note with `model.predict` over the whole 100-token window, one piece at
a time. Speed does not depend on the weights, so the models are built untrained, with the `best`
preset's architecture and the vocabulary size of the paper tokenizer on the piano corpus (or load a
trained bundle with --model). Everything runs in one process, side by side.

    .venv/bin/python bench/generate.py [--model BUNDLE] [--vocab 446] [--length 500] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # the project, not bench/: bench/tokenize.py would shadow the standard library

import numpy as np  # noqa: E402

from pianola.data.vocab import Vocabulary  # noqa: E402
from pianola.generation.generate import generate_ids
from pianola.generation.sampling import Sampling  # noqa: E402
from pianola.io import atomic_write_json  # noqa: E402
from pianola.models import build_model  # noqa: E402
from pianola.models.bundle import Bundle, load_bundle  # noqa: E402
from pianola.training.train import preset_config  # noqa: E402

WINDOW = 100


def untrained_bundle(name: str, vocab_size: int) -> Bundle:
    """A bundle of `name` with the best preset's architecture and random weights."""
    vocab = Vocabulary(("<unk>", *[f"t{i}" for i in range(vocab_size - 1)]))
    options = preset_config(name, "best").model_options
    pitches = [None, *(21 + i % 88 for i in range(vocab_size - 1))]  # pitch classes need a pitch per token
    model = build_model(name, vocab_size, WINDOW, pitches=pitches, **options)
    kind = "tokens" if name == "lstm" else "scalar"
    return Bundle(model, vocab, {"name": "paper"}, WINDOW, name, kind)


def paper_loop(bundle: Bundle, primer: np.ndarray, length: int) -> float:
    """The paper's generation: model.predict on the whole window for every note, greedy. Seconds."""
    pattern = list(primer)
    vocab_size = len(bundle.vocab)
    started = time.perf_counter()
    for _ in range(length):
        x = np.reshape(pattern, (1, len(pattern), 1)) / float(vocab_size)
        prediction = bundle.model.predict(x, verbose=0)
        pattern.append(int(np.argmax(prediction)))
        pattern = pattern[1:]
    return time.perf_counter() - started


def best_of(repeats: int, run) -> float:
    """Fastest of `repeats` runs, in seconds (the least disturbed by other processes)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a trained lstm bundle (default: the best architecture, untrained)")
    parser.add_argument("--vocab", type=int, default=446, help="vocabulary size of the untrained models")
    parser.add_argument("--length", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paper-notes", type=int, default=100, help="notes timed for the slow paper loop")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "generate.json")
    args = parser.parse_args()

    lstm = load_bundle(args.model) if args.model else untrained_bundle("lstm", args.vocab)
    paper = untrained_bundle("paper-3b", len(lstm.vocab))
    rng = np.random.default_rng(0)
    sampling = Sampling()
    rows = []

    def ours(bundle: Bundle, n: int, length: int) -> None:
        primers = rng.integers(1, len(bundle.vocab), size=(n, WINDOW)).astype(np.int32)
        rows.append({
            "model": bundle.model_name, "method": "pianola (stateful, batched)" if bundle.input_kind == "tokens"
            else "pianola (sliding window, batched)", "pieces": n, "tokens": length,
            "seconds": round(best_of(args.repeats, lambda: generate_ids(bundle, primers, length, sampling, seed=0)), 3),
        })

    generate_ids(lstm, np.ones((1, WINDOW), np.int32), 5, sampling, seed=0)  # warm-up: first calls trace
    ours(lstm, 1, args.length)
    ours(lstm, 32, args.length)
    generate_ids(paper, np.ones((32, WINDOW), np.int32), 2, sampling, seed=0)
    ours(paper, 32, args.paper_notes)
    paper.model.predict(np.zeros((1, WINDOW, 1)), verbose=0)
    seconds = paper_loop(paper, rng.integers(1, len(paper.vocab), size=WINDOW), args.paper_notes)
    rows.append({"model": "paper-3b", "method": "paper's loop (predict per note)", "pieces": 1,
                 "tokens": args.paper_notes, "seconds": round(seconds, 3)})
    for row in rows:
        row["notes_per_second"] = round(row["pieces"] * row["tokens"] / row["seconds"], 1)
    baseline = rows[-1]["notes_per_second"]

    atomic_write_json(args.out, {"vocab": len(lstm.vocab), "rows": rows})
    print("| model | method | pieces x tokens | seconds | notes/s | vs paper's loop |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['method']} | {row['pieces']} x {row['tokens']} | {row['seconds']:.2f} | "
              f"{row['notes_per_second']:,.0f} | {row['notes_per_second'] / baseline:,.0f}x |")


if __name__ == "__main__":
    main()
