"""Make a large corpus for scale tests: N distinct, valid MIDI files derived from the shared piano corpus.

File i is piece i mod P of the source corpus (P pieces), variant i div P of it: transposed by -5..+6
semitones, its tempo scaled by 0.8..1.2 and its velocities lowered by up to 8; one variant in four is also
cut to an excerpt of 30%..100% of the piece. Every variant of a piece differs in at least one of the first
three, and the files are checked distinct by SHA-256, so ingest keeps every one (no duplicates). The same N and source always give
the same files, byte for byte. symusic writes them; the work is split over the cores by file index.

    .venv/bin/python bench/make_corpus.py --n 20000 --out /tmp/corpus-20k [--source DIR] [--workers 2]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)

import argparse  # noqa: E402
import hashlib  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import symusic  # noqa: E402

from pianola.errors import PianolaError  # noqa: E402
from pianola.midi import midi_files  # noqa: E402

DEFAULT_SOURCE = ROOT.parent / "shared" / "corpus" / "piano-midi"
TRANSPOSITIONS = (0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6)  # 12 keys; variant 0 is the piece itself
TEMPO_FACTORS = (1.0, 0.8, 0.85, 0.9, 0.95, 1.05, 1.1, 1.15, 1.2)
VELOCITY_SHIFTS = tuple(range(0, -9, -1))  # softer only: the corpus has velocities 9..125
EXCERPT_EVERY = 4  # one variant in 4 is an excerpt: 30%..100% of the piece from a point in its first half

MIN_EXCERPT_NOTES = 100

_scores: list[symusic.Score] = []  # the source pieces, loaded once per worker process


def variant(v: int) -> tuple[int, float, int]:
    """(transposition, tempo factor, velocity shift) of variant v: distinct for distinct v < 12 * 9 * 9."""
    keys, tempi = len(TRANSPOSITIONS), len(TEMPO_FACTORS)
    return TRANSPOSITIONS[v % keys], TEMPO_FACTORS[(v // keys) % tempi], VELOCITY_SHIFTS[v // (keys * tempi)]


def derive(score: symusic.Score, v: int) -> symusic.Score:
    """Variant v of `score`: the unaltered piece for v = 0."""
    shift, factor, velocity = variant(v)
    out = score.copy()
    if v % EXCERPT_EVERY == EXCERPT_EVERY - 1:
        end = score.end()
        start = int(end * 0.5 * ((v * 37) % 100) / 100)
        length = int(end * (0.3 + 0.7 * ((v * 61) % 100) / 100))
        excerpt = score.clip(start, min(end, start + length), clip_end=True).shift_time(-start)
        out = excerpt if excerpt.note_num() >= MIN_EXCERPT_NOTES else out  # not a silent stretch
    out = out.shift_pitch(shift).shift_velocity(velocity)
    for tempo in out.tempos:
        tempo.qpm = tempo.qpm * factor
    return out


def _load(source: Path) -> None:
    global _scores
    _scores = [symusic.Score(str(p)) for p in midi_files(source)]


def _write(job: tuple[int, int, Path]) -> tuple[int, str]:
    """Write files [begin, end) of the corpus; return how many notes they hold and their hashes."""
    begin, end, out = job
    digests, notes = [], 0
    for i in range(begin, end):
        piece, v = i % len(_scores), i // len(_scores)
        score = derive(_scores[piece], v)
        data = score.dumps_midi()
        (out / f"{i:06d}.mid").write_bytes(data)
        digests.append(hashlib.sha256(data).hexdigest())
        notes += score.note_num()
    return notes, "\n".join(digests)


def make_corpus(n: int, out: Path, source: Path = DEFAULT_SOURCE, workers: int = 2) -> dict:
    """Write `n` files named 000000.mid ... into `out` (created; files of an earlier run are replaced)."""
    sources = midi_files(source)
    if not sources:
        raise PianolaError(f"{source}: no MIDI files to derive a corpus from")
    limit = len(sources) * len(TRANSPOSITIONS) * len(TEMPO_FACTORS) * len(VELOCITY_SHIFTS)
    if n > limit:
        raise PianolaError(f"{source}: {len(sources)} pieces give at most {limit:,} distinct variants, not {n:,}")
    out.mkdir(parents=True, exist_ok=True)
    for old in midi_files(out):
        old.unlink()
    started = time.perf_counter()
    chunk = max(1, -(-n // (workers * 8)))
    jobs = [(b, min(n, b + chunk), out) for b in range(0, n, chunk)]
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_load, initargs=(source,)) as pool:
        results = pool.map(_write, jobs)
    digests = [d for _, text in results for d in text.split("\n")]
    if len(set(digests)) != n:
        raise PianolaError(f"{out}: {n - len(set(digests))} files are duplicates of others")
    return {"files": n, "notes": sum(notes for notes, _ in results), "seconds": round(time.perf_counter() - started, 2),
            "bytes": sum(p.stat().st_size for p in os.scandir(out))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, required=True, help="files to write")
    parser.add_argument("--out", type=Path, required=True, help="folder to write them to")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the corpus they derive from")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    result = make_corpus(args.n, args.out, args.source, args.workers)
    print(f"wrote {result['files']:,} files ({result['bytes'] / 1e6:.1f} MB, {result['notes']:,} notes) "
          f"to {args.out} in {result['seconds']} s")


if __name__ == "__main__":
    main()
