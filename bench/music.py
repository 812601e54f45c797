"""Benchmark: how close each encoding's model comes to held-out human pieces, and what a likelihood per note says.

For each bundle (`--model ENCODING=BUNDLE`, e.g. the `best` lstm of bench/train.py on each encoding), on the
bundle's own validation pieces of the corpus: the held-out NLL per token (the paper's sense) and per note
(comparable across encodings), then --n pieces of about --minutes each at 120 quarters per minute, primed
with random windows of the training pieces, judged by the musicality report (Yang & Lerch 2018) beside the
human baseline (as many training pieces), n-gram novelty, and loops. With --strategies, the greedy decoding
of the paper and sampling without the repetition penalty are judged too.

    .venv/bin/python bench/music.py --model timed=BUNDLE --model paper=BUNDLE [--corpus ../shared/corpus/piano-midi]
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # the project, not bench/: bench/tokenize.py would shadow the standard library

from pianola.evaluation.heldout import evaluate_midi  # noqa: E402
from pianola.evaluation.musicality import GROUPS, notes_of_folder  # noqa: E402
from pianola.generation.generate import generate_pieces, summarize
from pianola.generation.sampling import Sampling  # noqa: E402
from pianola.io import atomic_write_json  # noqa: E402
from pianola.models.bundle import Bundle, load_bundle  # noqa: E402

DEFAULT = "top_p 0.95, repetition penalty 1.3 (default)"
STRATEGIES = {
    "greedy (the paper's)": Sampling("greedy", repetition_penalty=1.0),
    "top_p 0.95, no repetition penalty": Sampling(repetition_penalty=1.0),
    "top_p 0.9, no repetition penalty": Sampling(top_p=0.9, repetition_penalty=1.0),
    "top_p 0.95 at temperature 0.9, repetition penalty 1.3": Sampling(temperature=0.9),
    DEFAULT: Sampling(),
}
TEMPO = 120.0


def tokens_for(bundle: Bundle, corpus: Path, minutes: float) -> int:
    """Tokens that decode to about `minutes` at TEMPO, from how long the bundle's tokenizer decodes corpus pieces."""
    tokenizer = bundle.tokenizer
    held_out = set(bundle.info.get("valid_pieces", []))
    files = [p for p in sorted(corpus.glob("*.mid")) if p.name not in held_out][:10]
    tokens = quarters = 0
    for path in files:
        encoded = tokenizer.encode(path)
        score = tokenizer.decode(encoded)
        tokens += len(encoded)
        quarters += score.end() / score.ticks_per_quarter
    return math.ceil(minutes * TEMPO * tokens / quarters)


def judge(bundle: Bundle, corpus: Path, out: Path, sampling: Sampling, n: int, length: int, seed: int) -> dict:
    batch = generate_pieces(bundle, out, n=n, length=length, sampling=sampling, seed=seed, corpus_dir=corpus,
                            tempo_qpm=TEMPO)
    notes = notes_of_folder(out)
    minutes = [float((v[:, 0] + v[:, 1]).max()) / TEMPO for v in notes.values() if len(v)]
    return {"summary": summarize(batch.pieces), "musicality": batch.musicality.report,
            "minutes_mean": round(sum(minutes) / len(minutes), 2), "folder": str(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="ENCODING=BUNDLE_OR_MODELS_URI; repeat")
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus" / "piano-midi")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=2.0, help="length of a piece at 120 quarters per minute")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategies", action="store_true", help="also greedy, and sampling without the repetition penalty or cooler")
    parser.add_argument("--pieces", type=Path, default=Path("/tmp/pianola-bench-music"), help="where the pieces go")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "music.json")
    args = parser.parse_args()

    results = {}
    for spec in args.model:
        encoding, _, ref = spec.partition("=")
        bundle = load_bundle(ref)
        held_out = evaluate_midi(bundle, args.corpus, bundle.info["valid_pieces"])
        length = tokens_for(bundle, args.corpus, args.minutes)
        runs = {}
        for label, sampling in STRATEGIES.items():
            if label == DEFAULT or args.strategies:
                folder = args.pieces / encoding / re.sub(r"[^a-z0-9.]+", "-", label.lower()).strip("-")
                runs[label] = judge(bundle, args.corpus, folder, sampling, args.n, length, args.seed)
                print(f"[bench] {encoding}, {label}: {runs[label]['summary']['pieces']} pieces in {folder}", flush=True)
        results[encoding] = {"model": ref, "length_tokens": length, "heldout": held_out.to_json(), "strategies": runs}
    atomic_write_json(args.out, {"corpus": str(args.corpus), "n": args.n, "minutes": args.minutes, "results": results})

    print("\n| pieces | NLL/token | NLL/note | mean OA (x human) | " + " | ".join(GROUPS) +
          " | lowest feature (x human) | n-grams found in training | loops > 1/4 | minutes |")
    print("|---|---|---|---|" + "---|" * len(GROUPS) + "---|---|---|---|")
    human = None
    for encoding, r in results.items():
        for label, run in r["strategies"].items():
            m, s = run["musicality"], run["summary"]
            human = m
            name = f"`{encoding}` best" + ("" if label == DEFAULT else f", {label}")
            groups = " | ".join(f"{m['groups']['generated'][g]:.3f}" for g in GROUPS)
            novelty = m["novelty"]["generated"]
            print(f"| {name} | {r['heldout']['cross_entropy']:.3f} | {r['heldout']['nll_per_note']:.3f} | "
                  f"{m['mean_oa']['generated']:.3f} ({m['mean_oa']['ratio']:.2f}x) | {groups} | "
                  f"{m['min_feature_ratio']['feature']} ({m['min_feature_ratio']['ratio']:.2f}x) | "
                  f"{novelty:.2%} | {s['pieces_looping_over_quarter']}/{s['pieces']} | {run['minutes_mean']:.1f} |")
    groups = " | ".join(f"{human['groups']['human'][g]:.3f}" for g in GROUPS)
    print(f"| human (training pieces) | | | {human['mean_oa']['human']:.3f} | {groups} | | "
          f"{human['novelty']['human']:.2%} (validation pieces) | | |")


if __name__ == "__main__":
    main()
