"""Benchmark: training throughput and time to a held-out cross-entropy, paper-3b against lstm.

Both models train on the same machine, in one run, on ../shared/corpus/piano-midi tokenized with
`--tokenizer` (the paper's by default), with the `best` preset and the same time budget. After every epoch a probe
scores the paper's held-out cross-entropy (the token after each window of 100) on a fixed sample
of validation windows, so the time to reach the target is read off the curve.

    .venv/bin/python bench/train.py [--minutes 30] [--models lstm,paper-3b] [--target 4.5] [--tokenizer paper|timed]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # the project, not bench/: bench/tokenize.py would shadow the standard library

import keras  # noqa: E402
import numpy as np  # noqa: E402

from pianola.data.corpus import tokenize_corpus  # noqa: E402
from pianola.data.sequences import EncodedSplit, build_sequences  # noqa: E402
from pianola.data.vocab import Vocabulary  # noqa: E402
from pianola.evaluation.heldout import held_out_metrics  # noqa: E402
from pianola.io import atomic_write_json  # noqa: E402
from pianola.models import model_spec  # noqa: E402
from pianola.models.bundle import Bundle  # noqa: E402
from pianola.tokenizers import get_tokenizer  # noqa: E402
from pianola.training.train import preset_config, train  # noqa: E402


class Probe(keras.callbacks.Callback):
    """Per epoch: seconds of training so far, targets seen, and held-out cross-entropy on a sample."""

    def __init__(self, sequences: Path, model_name: str, batch_size: int, sample: int, seed: int = 0):
        super().__init__()
        self.batch_size = batch_size
        self.vocab = Vocabulary.load(sequences / "vocab.json")
        self.window = json.loads((sequences / "meta.json").read_text())["window"]
        self.kind = model_spec(model_name).input_kind
        self.name = model_name
        self.tokenizer_config = json.loads((sequences / "tokenizer.json").read_text())
        valid = EncodedSplit.load(sequences / "valid.npz")
        # Whole validation pieces' tokens per MIDI note: the sample's mean NLL per token times this
        # estimates the NLL per note each epoch (the final figure is exact, from all tokens).
        self.tokens_per_note = (len(valid.ids) - len(valid.pieces)) / int(valid.notes.sum())
        starts = valid.window_starts(self.window)
        picked = np.sort(np.random.default_rng(seed).choice(starts, size=min(sample, len(starts)), replace=False))
        # A split of the sampled windows alone, laid end to end, evaluates exactly those windows.
        rows = valid.windows(picked, self.window)
        self.sample = EncodedSplit(rows.reshape(-1), np.arange(len(rows) + 1) * (self.window + 1), ["sample"] * len(rows))
        self.train_seconds = 0.0
        self.targets = 0
        self.curve: list[dict] = []

    def on_train_batch_begin(self, batch, logs=None):
        self.batch_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.train_seconds += time.perf_counter() - self.batch_start

    def on_epoch_end(self, epoch, logs=None):
        # Full batches assumed: the last batch of an epoch may be short, a sub-1% overcount.
        self.targets += self.params["steps"] * self.batch_size * (self.window if self.kind == "tokens" else 1)
        bundle = Bundle(self.model, self.vocab, self.tokenizer_config, self.window, self.name, self.kind)
        ce = held_out_metrics(bundle, self.sample).cross_entropy
        per_note = round(ce * self.tokens_per_note, 4)
        self.curve.append({"epoch": epoch, "train_seconds": round(self.train_seconds, 1),
                           "targets": self.targets, "heldout_ce": ce, "nll_per_note_estimate": per_note})
        print(f"[bench] {self.name} epoch {epoch + 1}: {self.train_seconds:.0f}s of training, held-out CE {ce:.4f} "
              f"(~{per_note:.3f} nats/note)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus" / "piano-midi")
    parser.add_argument("--models", default="lstm,paper-3b")
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget per model")
    parser.add_argument("--target", type=float, default=4.5, help="held-out cross-entropy to reach (nats)")
    parser.add_argument("--sample", type=int, default=2000, help="validation windows scored by the per-epoch probe")
    parser.add_argument("--tokenizer", default="paper", help="the encoding trained on: paper, timed, ...")
    parser.add_argument("--out", type=Path, help="default: bench/results/train-TOKENIZER.json")
    args = parser.parse_args()
    args.out = args.out or ROOT / "bench" / "results" / f"train-{args.tokenizer}.json"

    work = Path(tempfile.mkdtemp(prefix="pianola-bench-train-"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    tokenize_corpus(args.corpus, work / "tokens", get_tokenizer(args.tokenizer))
    build_sequences(work / "tokens", work / "sequences", window=100, valid_fraction=0.1, seed=42)
    os.chdir(work)

    rows = []
    for name in args.models.split(","):
        config = preset_config(name, "best", max_minutes=args.minutes)
        probe = Probe(work / "sequences", name, config.batch_size, args.sample)
        started = time.perf_counter()
        result = train(work / "sequences", work / f"bundle-{name}", config, register=False, verbose=2,
                       extra_callbacks=[probe])
        wall = time.perf_counter() - started
        reached = next((p["train_seconds"] for p in probe.curve if p["heldout_ce"] <= args.target), None)
        rows.append({
            "model": name,
            "parameters": int(result_params(work / f"bundle-{name}")),
            "targets_per_second": round(probe.targets / probe.train_seconds) if probe.train_seconds else None,
            "epochs": len(probe.curve),
            f"train_seconds_to_{args.target}": reached,
            "heldout_cross_entropy": result.metrics["cross_entropy"],
            "heldout_accuracy": result.metrics["accuracy"],
            "heldout_nll_per_note": result.metrics["nll_per_note"],
            "wall_seconds": round(wall),
            "bundle": str(work / f"bundle-{name}"),  # for bench/music.py --model
            "curve": probe.curve,
        })

    atomic_write_json(args.out, {"corpus": str(args.corpus), "tokenizer": args.tokenizer, "minutes": args.minutes, "target": args.target, "results": rows})
    print(f"\n| model | parameters | targets/s | epochs | training s to <= {args.target} nats | held-out CE (all validation windows) | accuracy |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        reached = r[f"train_seconds_to_{args.target}"]
        print(f"| {r['model']} | {r['parameters']:,} | {r['targets_per_second']:,} | {r['epochs']} | "
              f"{'not reached' if reached is None else f'{reached:.0f}'} | {r['heldout_cross_entropy']:.3f} | {r['heldout_accuracy']:.1%} |")
    print(f"\nwritten {args.out}; bundles: " + ", ".join(r["bundle"] for r in rows))


def result_params(bundle_dir: Path) -> int:
    return keras.saving.load_model(bundle_dir / "model.keras").count_params()


if __name__ == "__main__":
    main()
