"""Benchmark: what each part of the `roll-lstm` is worth, one variant per CPU core, side by side.

Each variant is a `pianola benchmark train` run (preset `best` with overrides, no MLflow) in a process of its own,
pinned to one core with one TensorFlow thread, all started together under the same wall-clock budget, so that they
get the same machine. A variant may run the code of another checkout (`--code DIR`, e.g. an earlier commit
unpacked with `git archive COMMIT | tar -x -C DIR`) to compare against an earlier model. Writes the valid NLL after
every epoch of each variant to bench/results/roll_ablation.json.

    .venv/bin/python bench/roll_ablation.py --variant 'relative head=' --variant 'no relative head={"model": {"relative_filters": 0}}' \
        [--variant 'before=/tmp/base0:{"batch_size": 32}'] [--data ../shared/benchmarks/poly/JSB_Chorales.mat] [--minutes 12]

A variant is NAME=OVERRIDES or NAME=DIR:OVERRIDES (OVERRIDES: JSON for BenchmarkPreset fields; "model" holds
RollLSTMConfig fields; empty: none).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs in each variant's process: the code of `code` (the project's editable install set aside), one thread.
CHILD = r"""
import dataclasses, json, sys
code, data, minutes, out, overrides = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5] or "{}")
sys.meta_path = [f for f in sys.meta_path if "editable" not in getattr(f, "__name__", type(f).__name__).lower()]
sys.path.insert(0, code)
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
from pianola.benchmark.train import PRESETS, train_benchmark
if "model" in overrides:
    overrides["model"] = dataclasses.replace(PRESETS["best"].model, **overrides["model"])
# One network per variant, on its one core, unless the variant says otherwise (earlier code, run with --code, has
# no mixtures and no such field).
if "small_split_members" in PRESETS["best"].params():
    overrides.setdefault("small_split_members", 1)
result = train_benchmark(data, out, "best", track=False, max_minutes=minutes, **overrides)
print(json.dumps({"valid": result.valid.to_json(), "history": result.history}))
"""


def parse_variant(text: str) -> tuple[str, Path, str]:
    name, _, rest = text.partition("=")
    code, overrides = ROOT, rest
    if rest and not rest.lstrip().startswith("{"):
        folder, _, overrides = rest.partition(":")
        code = Path(folder)
    json.loads(overrides or "{}")  # a typo fails here, before any training
    return name, code, overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", required=True, help="NAME=OVERRIDES or NAME=DIR:OVERRIDES")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "benchmarks" / "poly" / "JSB_Chorales.mat")
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "roll_ablation.json")
    args = parser.parse_args()
    variants = [parse_variant(v) for v in args.variant]
    cores = sorted(os.sched_getaffinity(0))
    if len(variants) > len(cores):
        raise SystemExit(f"{len(variants)} variants need as many cores; this machine gives {len(cores)}")
    with tempfile.TemporaryDirectory() as scratch:
        runs = [(name, code, subprocess.Popen(
                    ["taskset", "-c", str(core), sys.executable, "-c", CHILD, str(code), str(args.data), str(args.minutes),
                     str(Path(scratch) / f"model-{i}"), overrides], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
                for i, ((name, code, overrides), core) in enumerate(zip(variants, cores))]
        results = {}
        for name, code, process in runs:
            out, _ = process.communicate()
            if process.returncode:
                raise SystemExit(f"variant {name!r} failed (exit {process.returncode})")
            results[name] = {"code": str(code), **json.loads(out.strip().splitlines()[-1])}
            print(f"{name}: valid {results[name]['valid']['nll_per_frame']:.3f} nats/frame after "
                  f"{len(results[name]['history'])} epochs")
    sys.path.insert(0, str(ROOT))
    from pianola.io import atomic_write_json

    atomic_write_json(args.results, {"data": str(args.data), "minutes": args.minutes, "results": results})


if __name__ == "__main__":
    main()
