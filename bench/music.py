"""Benchmark: musical quality of generated pieces, greedy decoding (the paper's) against our default.

Generates --n pieces of --length tokens per strategy from one bundle, primed with random windows of
the training corpus, and reports loops (longest exact repeated segment), pitch-class distance to the
corpus against the spread of the corpus's own pieces, scale consistency and distinct 4-grams.

    .venv/bin/python bench/music.py --model BUNDLE_OR_MODELS_URI [--corpus ../shared/corpus/piano-midi] [--n 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # the project, not bench/: bench/tokenize.py would shadow the standard library

from pianola.bundle import load_bundle  # noqa: E402
from pianola.generate import Sampling, generate_pieces, summarize  # noqa: E402
from pianola.io import atomic_write_json  # noqa: E402

STRATEGIES = {
    "greedy (the paper's)": Sampling("greedy", repetition_penalty=1.0),
    "top_p 0.95, no repetition penalty": Sampling(repetition_penalty=1.0),
    "top_p 0.95, repetition penalty 1.3 (default)": Sampling(),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus" / "piano-midi")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--length", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "music.json")
    args = parser.parse_args()

    bundle = load_bundle(args.model)
    results = {}
    for label, sampling in STRATEGIES.items():
        with tempfile.TemporaryDirectory() as folder:
            pieces = generate_pieces(bundle, folder, n=args.n, length=args.length, sampling=sampling,
                                     seed=args.seed, corpus_dir=args.corpus)
        results[label] = summarize(pieces)
    atomic_write_json(args.out, {"model": args.model, "n": args.n, "length": args.length, "results": results})
    print(f"| strategy | longest repeat, max (mean) | pieces looping > 1/4 | pitch-class distance (mean) "
          f"| within corpus spread | scale consistency | distinct 4-grams |")
    print("|---|---|---|---|---|---|---|")
    for label, s in results.items():
        print(f"| {label} | {s['longest_repeat_fraction_max']:.0%} ({s['longest_repeat_fraction_mean']:.0%}) | "
              f"{s['pieces_looping_over_quarter']}/{s['pieces']} | {s['pitch_class_distance_mean']:.3f} | "
              f"{s['pieces_within_corpus_spread']}/{s['pieces']} | {s['scale_consistency_mean']:.3f} | "
              f"{s['distinct_4gram_ratio_mean']:.3f} |")


if __name__ == "__main__":
    main()
