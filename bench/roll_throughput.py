"""Benchmark: training tokens per second of the benchmark's roll-lstm, float32 against bfloat16.

Both set-ups train the `best` preset's model on MuseData crops in one process, taking turns for
`--rounds` rounds of `--steps` batches each (one warm-up round not counted), so that the shared
machine's noise falls on both alike; the median of each is reported.

    .venv/bin/python bench/roll_throughput.py [--rounds 4] [--steps 6] [--data ../shared/benchmarks/poly/MuseData.mat]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # the project, not bench/: bench/tokenize.py would shadow the standard library

import dataclasses  # noqa: E402  (it imports tokenize)
import statistics  # noqa: E402

import keras  # noqa: E402

from pianola.benchmark.data import load_rolls  # noqa: E402
from pianola.benchmark.train import PRESETS, RollCrops  # noqa: E402
from pianola.io import atomic_write_json  # noqa: E402
from pianola.models.roll import build_roll_lstm  # noqa: E402

# (name, precision, batch size): the earlier `best` set-up, then the current one.
SETUPS = [("float32, batch 64", "float32", 64), ("mixed_bfloat16, batch 128", "mixed_bfloat16", 128)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "benchmarks" / "poly" / "MuseData.mat")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "roll_throughput.json")
    args = parser.parse_args()
    best = PRESETS["best"]
    pieces = load_rolls(args.data).split("train")
    runs = []
    for name, precision, batch in SETUPS:
        model = build_roll_lstm(best.model, precision)
        model.compile(optimizer=keras.optimizers.Adam(best.learning_rate),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        crops = RollCrops(pieces, best.window, batch, args.steps, best.transpose, seed=0)
        runs.append((name, model, crops, batch * best.window * args.steps, []))
    for round_ in range(args.rounds + 1):
        for name, model, crops, tokens, rates in runs:
            started = time.perf_counter()
            model.fit(crops, epochs=1, verbose=0)
            if round_:  # the first round compiles and warms up
                rates.append(tokens / (time.perf_counter() - started))
    results = {name: {"tokens_per_second": round(statistics.median(rates)), "rounds": [round(r) for r in rates]}
               for name, _, _, _, rates in runs}
    for name, entry in results.items():
        print(f"{name}: {entry['tokens_per_second']} tokens/s (rounds {entry['rounds']})")
    atomic_write_json(args.results, {"model": dataclasses.asdict(best.model), "window": best.window, "results": results})


if __name__ == "__main__":
    main()
