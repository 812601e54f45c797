"""Benchmark: exact NLL per frame on the four polyphonic datasets, beside the published figures.

For each dataset in ../shared/benchmarks/poly/ it trains a roll-lstm with `pianola benchmark train`
(preset `best` unless told otherwise, at most the given minutes), scores the valid split (and the
test split where the file holds one), and writes bench/results/benchmark.json plus the Markdown
table that README.md shows.

    .venv/bin/python bench/benchmark.py [--datasets jsb,piano-midi,nottingham,musedata] [--minutes 28]
                                        [--preset best] [--out /tmp/pianola-benchmark]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)

from pianola.benchmark.likelihood import evaluate_benchmark  # noqa: E402
from pianola.benchmark.train import train_benchmark  # noqa: E402
from pianola.errors import PianolaError  # noqa: E402
from pianola.io import atomic_write_json, atomic_write_text  # noqa: E402

DATA = ROOT.parent / "shared" / "benchmarks" / "poly"
FILES = {"piano-midi": "Piano_midi.mat", "nottingham": "Nottingham.mat", "musedata": "MuseData.mat", "jsb": "JSB_Chorales.mat"}
ORDER = ["piano-midi", "nottingham", "musedata", "jsb"]

# Published TEST-split NLL per frame (nats), exact likelihoods of left-to-right models.
PUBLISHED = [
    ("RNN-NADE (HF)", "Boulanger-Lewandowski et al. 2012, quoted by Pascanu et al. 2013",
     {"piano-midi": 7.05, "nottingham": 2.31, "musedata": 5.60, "jsb": 5.56}),
    ("GRU (independent notes)", "Chung et al. 2014, Table 2",
     {"piano-midi": 8.82, "nottingham": 3.23, "musedata": 5.99, "jsb": 8.54}),
    ("LSTM", "Bai, Kolter, Koltun 2018, Table 1", {"nottingham": 3.29, "jsb": 8.45}),
    ("TCN", "Bai, Kolter, Koltun 2018, Table 1", {"nottingham": 3.07, "jsb": 8.10}),
]


def table(results: dict) -> str:
    """README's table: our valid (and test) figures, then the published test figures."""
    head = "| model | split | " + " | ".join(ORDER) + " |\n|---|---|" + "---|" * len(ORDER) + "\n"
    rows = []
    presets = ", ".join(f"`{p}`" for p in sorted({entry["preset"] for entry in results.values()}))
    for split in ("valid", "test"):
        cells = [f"{results[d][split]['nll_per_frame']:.2f}" if d in results and split in results[d] else "" for d in ORDER]
        if any(cells):
            rows.append(f"| pianola roll-lstm ({presets}) | {split} | " + " | ".join(cells) + " |")
    minutes = [f"{results[d]['train_minutes']:.0f}" if d in results else "" for d in ORDER]
    rows.append("| ... its training, wall-clock minutes on 2 CPU cores | | " + " | ".join(minutes) + " |")
    for model, source, figures in PUBLISHED:
        cells = [f"{figures[d]:.2f}" if d in figures else "" for d in ORDER]
        rows.append(f"| {model} ({source}) | test | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the members of a mixture train in processes of their own)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(["jsb", "piano-midi", "nottingham", "musedata"]))
    parser.add_argument("--minutes", default="28", help="training budget, one figure or one per dataset (comma-separated)")
    parser.add_argument("--preset", default="best")
    parser.add_argument("--out", type=Path, default=Path("/tmp/pianola-benchmark"), help="where the trained models go")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "benchmark.json")
    args = parser.parse_args()
    datasets = args.datasets.split(",")
    budgets = [float(m) for m in args.minutes.split(",")]
    budgets = budgets * len(datasets) if len(budgets) == 1 else budgets
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{args.out / 'mlflow.db'}")
    args.out.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.results.read_text())["results"] if args.results.exists() else {}
    for name, minutes in zip(datasets, budgets):
        data = DATA / FILES[name]
        started_cpu = cpu_seconds()
        trained = train_benchmark(data, args.out / name, args.preset, max_minutes=minutes, verbose=0)
        entry = {"preset": args.preset, "budget_minutes": minutes, "train_minutes": round(trained.minutes, 1),
                 "cpu_minutes": round((cpu_seconds() - started_cpu) / 60, 1),
                 "epochs": 1 + max(row["epoch"] for row in trained.history),  # per member, when there are several
                 "model": str(trained.out), "valid": {"dataset": name, **trained.valid.to_json()},
                 "history": trained.history}
        try:
            entry["test"] = evaluate_benchmark(str(trained.out), str(data), "test")
        except PianolaError as e:  # the shared files hold no test split: it is scored independently
            entry["test_unavailable"] = str(e)
        results[name] = entry
        print(f"{name}: valid {entry['valid']['nll_per_frame']:.4f} nats/frame in {entry['train_minutes']} min", flush=True)
        atomic_write_json(args.results, {"results": results,
                                         "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)})
    atomic_write_text(args.results.with_suffix(".md"), table(results))
    print(table(results))


if __name__ == "__main__":
    main()
