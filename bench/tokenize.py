"""Benchmark: the tokenize stage, pianola's `paper` tokenizer against the paper's music21 parsing.

music21 runs in this process, one file after another, its import included, as the paper's
script did. pianola runs as the whole `pianola tokenize --tokenizer paper` command in a fresh
process (start-up, imports, tokens.jsonl, vocab and stats included: all the tokenize stage writes; the
corpus figures are the `corpus-plots` stage's, drawn by `pianola corpus-plots`). Both are timed on the
same files (music21 once: it takes minutes; pianola's best of a few runs); agreement is the share
of music21's tokens that pianola reproduces in order.

    .venv/bin/python bench/tokenize.py [--corpus DIR] [--out FILE.json] [--limit N] [--repeats 3]
"""

from __future__ import annotations

import sys
from pathlib import Path

# this script shares its name with the standard library's `tokenize` (which inspect and linecache
# import): keep its own folder off the import path, and put the repository on it
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

import argparse  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from pianola.io import atomic_write_json  # noqa: E402
from pianola.tokenizers.paper import PaperTokenizer  # noqa: E402
from pianola.tokenizers.reference import agreement, music21_tokens  # noqa: E402

# stands in for the CLI where the `pianola` console script is not installed
FALLBACK = (
    "import sys; from pathlib import Path; from pianola.tokenizers.paper import PaperTokenizer; "
    "t = PaperTokenizer(); "
    "print(sum(len(t.encode(f)) for f in sorted(Path(sys.argv[1]).glob('*.mid'))))"
)


def pianola_command(corpus: Path, out_dir: Path) -> tuple[list[str], str]:
    """The command timed for pianola, and what it is."""
    cli = shutil.which("pianola") or str(ROOT / ".venv" / "bin" / "pianola")
    if Path(cli).exists():
        return [cli, "tokenize", "--tokenizer", "paper", "--in", str(corpus), "--out", str(out_dir)], "pianola tokenize"
    return [sys.executable, "-c", FALLBACK, str(corpus)], "python -c (encode only: no pianola CLI found)"


def time_music21(files: list[Path]) -> tuple[list[list[str]], float]:
    """music21's tokens of every file and the seconds taken, the import of music21 included."""
    started = time.perf_counter()
    tokens = [music21_tokens(f) for f in files]  # music21 is imported by the first call
    return tokens, time.perf_counter() - started


def time_pianola(corpus: Path, repeats: int) -> tuple[float, str]:
    """Seconds the whole pianola command takes, process start included: the fastest of `repeats`
    runs (the least disturbed by other processes)."""
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="pianola-bench-") as tmp:
            command, label = pianola_command(corpus, Path(tmp) / "tokens")
            started = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
            times.append(time.perf_counter() - started)
    return min(times), label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus" / "piano-midi")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tokenize.json")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N files (0: all)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the pianola command (fastest kept)")
    args = parser.parse_args()

    files = sorted(args.corpus.glob("*.mid"))
    if args.limit:
        files = files[: args.limit]
    if not files:
        sys.exit(f"{args.corpus}: no .mid files")

    reference, music21_seconds = time_music21(files)
    with tempfile.TemporaryDirectory(prefix="pianola-bench-corpus-") as subset:
        corpus = args.corpus
        if args.limit:  # the command reads a whole folder (and skips symlinks): copy the subset
            corpus = Path(subset)
            for f in files:
                shutil.copy(f, corpus / f.name)
        pianola_seconds, command = time_pianola(corpus, args.repeats)
    tokenizer = PaperTokenizer()
    started = time.perf_counter()
    ours = [tokenizer.encode(f) for f in files]
    encode_seconds = time.perf_counter() - started

    tokens = sum(len(t) for t in reference)
    ours_tokens = sum(len(t) for t in ours)
    result = {
        "corpus": str(args.corpus),
        "files": len(files),
        "music21_tokens": tokens,
        "pianola_tokens": ours_tokens,
        "music21_seconds": round(music21_seconds, 3),
        "pianola_command": command,
        "pianola_seconds": round(pianola_seconds, 3),
        "pianola_encode_ms_per_file": round(1000 * encode_seconds / len(files), 3),
        "music21_tokens_per_second": round(tokens / music21_seconds, 1),
        "pianola_tokens_per_second": round(ours_tokens / pianola_seconds, 1),
        "agreement": round(agreement(reference, ours), 6),
    }
    result["speed_ratio"] = round(result["pianola_tokens_per_second"] / result["music21_tokens_per_second"], 1)
    atomic_write_json(args.out, result)

    print("| files | tokens | music21 tok/s | pianola tok/s | speed ratio | agreement |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {len(files)} | {tokens:,} | {result['music21_tokens_per_second']:,.0f} | "
        f"{result['pianola_tokens_per_second']:,.0f} | {result['speed_ratio']:,.0f}x | {result['agreement']:.4f} |"
    )
    print(f"pianola: `{command}`, {pianola_seconds:.2f} s; encode alone {result['pianola_encode_ms_per_file']:.2f} ms/file")


if __name__ == "__main__":
    main()
