"""Generation: a primer -> N new token sequences, sampled step by step, then MIDI.

`lstm` carries its recurrent state (constant work per token) in NumPy, all pieces in one batch;
the paper's models keep their sliding window of 100 tokens, batched across pieces.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import symusic

from pianola.errors import PianolaError
from pianola.evaluation.heldout import encode_midi
from pianola.evaluation.metrics import CorpusReference, corpus_reference, piece_metrics
from pianola.evaluation.musicality import (
    MusicalityReport,
    distance_densities,
    musicality_report,
    notes_of_folder,
)
from pianola.generation.render import find_fluidsynth, find_soundfont, render_wav
from pianola.generation.sampling import (
    REPETITION_WINDOW,
    RowSampling,
    Sampling,
    sample_rows,
)
from pianola.io import atomic_write_json
from pianola.midi import midi_files, write_score
from pianola.midi.notes import score_notes
from pianola.models.bundle import Bundle, load_bundle
from pianola.models.inference import LSTMStepper, next_token_probs
from pianola.plots import piano_roll

MUSICALITY_PLOT = "musicality.png"


class LSTMDecoder:
    """The `lstm` model as a decoder: its state is each row's recurrent state (see LSTMStepper)."""

    def __init__(self, bundle: Bundle) -> None:
        self.stepper = LSTMStepper(bundle.model)

    def start(self, primers: np.ndarray):
        """The state of len(primers) new rows once each has read its (B, P) primer but for the last token, which
        the rows' first step feeds; read in one pass, before the rows join the batch."""
        state = self.stepper.zero_state(len(primers))
        for t in range(primers.shape[1] - 1):
            _, state = self.stepper.step(primers[:, t], state)
        return state

    def step(self, ids: np.ndarray, state):
        return self.stepper.step(ids, state)

    @staticmethod
    def take(state, rows: np.ndarray):
        return [tuple(part[rows] for part in layer) for layer in state]

    @staticmethod
    def join(state, other):
        return [tuple(np.concatenate(pair) for pair in zip(mine, theirs)) for mine, theirs in zip(state, other)]


class WindowDecoder:
    """The paper's models as a decoder: the state is each row's window, which slides by one token a step."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle

    def start(self, primers: np.ndarray):
        # The window holds the primer but for its last token, which the first step feeds: the model then sees
        # exactly the primer, as the paper primed.
        return np.concatenate([primers[:, :1], primers[:, :-1]], axis=1).astype(np.int32)

    def step(self, ids: np.ndarray, state):

        windows = np.concatenate([state[:, 1:], ids[:, None].astype(np.int32)], axis=1)  # (B, T)
        return next_token_probs(self.bundle, windows), windows

    @staticmethod
    def take(state, rows: np.ndarray):
        return state[rows]

    @staticmethod
    def join(state, other):
        return np.concatenate([state, other])


def generate_ids(bundle: Bundle, primers: np.ndarray, length: int, sampling: Sampling, seed: int) -> np.ndarray:
    """(B, length) new token ids continuing each of the (B, window) primers; piece i draws from piece_rng(seed, i)."""
    n = len(primers)
    return np.stack(generate_each(bundle, primers, [length] * n, [sampling] * n, [piece_rng(seed, i) for i in range(n)]))


def generate_each(bundle: Bundle, primers: np.ndarray, lengths: list[int], samplings: list[Sampling],
                  rngs: list[np.random.Generator]) -> list[np.ndarray]:
    """Pieces generated together, each with its own length, settings and random stream: piece i continues
    primers[i] (a window of ids) and is lengths[i] ids long."""
    from threadpoolctl import threadpool_limits

    stream = Stream(bundle)
    rows = stream.add(primers, lengths, samplings, rngs)
    # The products of one step are too small to share between threads: OpenBLAS's threads
    # spin-wait for each other and, on a busy machine, run several times slower than one.
    with threadpool_limits(limits=1, user_api="blas"):
        while stream.rows:
            stream.step()
    return [row.out for row in rows]


def decoder_for(bundle: Bundle) -> LSTMDecoder | WindowDecoder:
    return LSTMDecoder(bundle) if bundle.input_kind == "tokens" else WindowDecoder(bundle)


@dataclass
class Row:
    """One piece being generated: what it has drawn, and how it draws."""

    length: int
    sampling: Sampling
    rng: np.random.Generator
    tag: object = None  # whatever the caller needs to find its piece again
    out: np.ndarray = field(init=False)
    made: int = 0

    def __post_init__(self) -> None:
        self.out = np.zeros(self.length, dtype=np.int32)


def piece_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of piece `index` of a batch seeded `seed`: the same piece whatever else is generated
    beside it (`pianola generate`, the service's batches)."""
    return np.random.default_rng([seed, index])


class Stream:
    """Pieces generated together, one token of every piece per step: continuous batching.

    Rows may join between any two steps (a new request does not wait for the pieces in flight) and leave as
    soon as they are done. A row joins having read its primer but for the last token (`decoder.start`, one pass
    over the new rows); its first step feeds that token and draws, every later step feeds what it drew last.
    """

    def __init__(self, bundle: Bundle) -> None:
        self.decoder = decoder_for(bundle)
        self.penalised = pitch_tokens(bundle)
        self.rows: list[Row] = []
        self.state = None
        self.inputs = np.zeros(0, dtype=np.int32)  # (B,) the token each row is fed next
        self.recent = np.full((0, REPETITION_WINDOW), -1, dtype=np.int64)  # (B, R) each row's last draws, -1: none
        self.sampling = RowSampling.of([])

    def add(self, primers: np.ndarray, lengths: list[int], samplings: list[Sampling], rngs: list[np.random.Generator],
            tags: list | None = None) -> list[Row]:
        """Start len(primers) rows continuing the (B, window) primers, row i `lengths[i]` tokens long."""
        primers = np.asarray(primers, dtype=np.int32)
        state = self.decoder.start(primers)
        rows = [Row(length, sampling, rng, tag)
                for length, sampling, rng, tag in zip(lengths, samplings, rngs, tags or [None] * len(primers))]
        self.state = state if self.state is None else self.decoder.join(self.state, state)
        self.inputs = np.concatenate([self.inputs, primers[:, -1]])
        self.recent = np.concatenate([self.recent, np.full((len(rows), REPETITION_WINDOW), -1, dtype=np.int64)])
        self._rows(self.rows + rows)
        return rows

    def drop(self, keep: list[bool]) -> None:
        """Keep only the rows where `keep` is true."""
        index = np.flatnonzero(keep)
        self.state = self.decoder.take(self.state, index) if len(index) else None
        self.inputs, self.recent = self.inputs[index], self.recent[index]
        self._rows([self.rows[i] for i in index])

    def _rows(self, rows: list[Row]) -> None:
        self.rows = rows
        self.sampling = RowSampling.of([row.sampling for row in rows])

    def step(self) -> list[Row]:
        """Advance every row by one token; the rows this step finished, which leave the stream."""
        if not self.rows:
            return []
        probs, self.state = self.decoder.step(self.inputs, self.state)  # (B, V): each row's next token
        draws = np.array([row.rng.random() for row in self.rows])
        drawn = sample_rows(probs, self.sampling, draws, self.recent, self.penalised)  # (B,)
        self.inputs = drawn.astype(np.int32)
        self.recent = np.concatenate([self.recent[:, 1:], drawn[:, None]], axis=1)
        done = []
        for row, token in zip(self.rows, drawn):
            row.out[row.made] = token
            row.made += 1
            done.append(row.made == row.length)
        finished = [row for row, d in zip(self.rows, done) if d]
        if finished:
            self.drop([not d for d in done])
        return finished


def random_primers(bundle: Bundle, corpus_dir: str | os.PathLike, n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """n random windows of the training corpus (validation pieces excluded), as the paper primed."""

    held_out = set(bundle.info.get("valid_pieces", []))
    names = [p.name for p in midi_files(corpus_dir) if p.name not in held_out]
    split = encode_midi(bundle, corpus_dir, names)
    starts = split.window_starts(bundle.window - 1)  # windows of `window` tokens
    if not len(starts):
        raise PianolaError(f"{corpus_dir}: no training piece is longer than the model's window ({bundle.window} tokens)")
    picked = np.random.default_rng(seed).choice(starts, size=n, replace=len(starts) < n)
    piece_of = np.searchsorted(split.offsets, picked, side="right") - 1
    primers = split.windows(picked, bundle.window - 1)  # (n, window)
    return primers, [f"{split.pieces[i]}@{int(s - split.offsets[i])}" for i, s in zip(piece_of, picked)]


def file_primer(bundle: Bundle, midi: str | os.PathLike, n: int) -> tuple[np.ndarray, list[str]]:
    """The first `window` tokens of a MIDI file (see `primer_ids`), for n pieces."""
    path = Path(midi)
    try:
        tokens = bundle.tokenizer.encode(path)
    except PianolaError:
        raise
    except Exception as e:
        raise PianolaError(f"{path}: cannot be used as a primer ({e})") from e
    if not tokens:
        raise PianolaError(f"{path}: has no notes to prime with")
    return primer_ids(bundle, tokens, n)[0], [f"{path.name}@0"] * n


def primer_ids(bundle: Bundle, tokens: list[str], n: int) -> tuple[np.ndarray, int]:
    """(n, window) ids of the first `window` tokens (fewer: left-padded by repeating their start), and how many
    of them the vocabulary does not know (read as `<unk>`)."""
    ids = bundle.vocab.encode(tokens[: bundle.window])
    if len(ids) < bundle.window:
        ids = np.resize(ids, bundle.window)  # repeats the opening: the models expect a full window
    return np.repeat(ids[None, :], n, axis=0), int((ids == 0).sum())


@dataclass
class Composition:
    """A generated piece in memory: its tokens, its score, its notes and their metrics."""

    tokens: list[str]
    score: symusic.Score
    notes: np.ndarray  # (N, 3) onset, duration, pitch (see music_metrics)
    metrics: dict

    def midi(self) -> bytes:
        return self.score.dumps_midi()


def compose(bundle: Bundle, ids: np.ndarray, *, tempo_qpm: float = 120.0,
            reference: CorpusReference | None = None) -> Composition:
    """Generated ids -> a piece: decoded by the bundle's tokenizer, measured (against `reference` when given)."""
    tokens = bundle.vocab.decode(ids)
    score = bundle.tokenizer.decode(tokens, tempo_qpm=tempo_qpm)
    notes = score_notes(score)
    return Composition(tokens, score, notes, piece_metrics(tokens, notes, reference=reference))


@dataclass
class GeneratedPiece:
    name: str
    primer: str  # where the primer came from: "piece.mid@offset"
    tokens: list[str]
    midi: Path
    piano_roll: Path
    wav: Path | None = None
    metrics: dict = field(default_factory=dict)


@dataclass
class HeldOutSplit:
    """The notes of a corpus folder's pieces, split as the bundle was trained: name -> (N, 3) notes."""

    training: dict[str, np.ndarray]
    validation: dict[str, np.ndarray]

    @classmethod
    def of(cls, bundle: Bundle, corpus_dir: str | os.PathLike) -> HeldOutSplit:
        held_out = set(bundle.info.get("valid_pieces", []))
        notes = notes_of_folder(corpus_dir)
        return cls({k: v for k, v in notes.items() if k not in held_out}, {k: v for k, v in notes.items() if k in held_out})


@dataclass
class Batch:
    """A generated batch: its pieces, and their musicality against the held-out pieces (None without any)."""

    pieces: list[GeneratedPiece]
    musicality: MusicalityReport | None = None


def summarize(pieces: list[GeneratedPiece]) -> dict:
    """Batch-level figures of the per-piece metrics (for metrics/generate.json and MLflow)."""
    def values(key: str) -> list[float]:
        return [p.metrics[key] for p in pieces if p.metrics.get(key) is not None]

    repeats = values("longest_repeat_fraction")
    within = values("pitch_class_distance_within_corpus")
    return {
        "pieces": len(pieces),
        "longest_repeat_fraction_max": max(repeats, default=None),
        "longest_repeat_fraction_mean": round(float(np.mean(repeats)), 4) if repeats else None,
        "pieces_looping_over_quarter": sum(r > 0.25 for r in repeats),
        "pitch_class_distance_mean": round(float(np.mean(values("pitch_class_distance"))), 4) if within else None,
        "pieces_within_corpus_spread": int(sum(within)),
        "scale_consistency_mean": round(float(np.mean(values("scale_consistency"))), 4) if values("scale_consistency") else None,
        "distinct_4gram_ratio_mean": round(float(np.mean(values("distinct_4gram_ratio"))), 4) if values("distinct_4gram_ratio") else None,
        "polyphony_mean": round(float(np.mean(values("polyphony_mean"))), 4) if values("polyphony_mean") else None,
    }


def generate_pieces(
    bundle: Bundle,
    out_dir: str | os.PathLike,
    *,
    n: int,
    length: int,
    sampling: Sampling,
    seed: int,
    primer: str = "random",
    corpus_dir: str | os.PathLike = "data/raw",
    tempo_qpm: float = 120.0,
    wav: bool = False,
    soundfont: str | None = None,
) -> Batch:
    """Generate n pieces of `length` tokens into `out_dir`: MIDI, piano-roll PNG, metrics, WAV when asked, and
    their musicality against the bundle's validation pieces found in `corpus_dir`."""

    if n < 1 or length < 1:
        raise PianolaError(f"--n and --length must be at least 1 (got {n} and {length})")
    if wav:

        find_fluidsynth()  # fail before generating, not after
        soundfont = str(find_soundfont(soundfont))
    out_dir = Path(out_dir)
    if primer == "random":
        primers, origins = random_primers(bundle, corpus_dir, n, seed)
    else:
        primers, origins = file_primer(bundle, primer, n)
    ids = generate_ids(bundle, primers, length, sampling, seed)
    corpus = HeldOutSplit.of(bundle, corpus_dir)
    reference = corpus_reference(corpus.training)
    pieces, notes = [], {}
    for i, row in enumerate(ids):
        name = f"piece_{i:03d}"
        composition = compose(bundle, row, tempo_qpm=tempo_qpm, reference=reference)
        piece = GeneratedPiece(name, origins[i], composition.tokens, out_dir / f"{name}.mid", out_dir / f"{name}.png",
                               metrics=composition.metrics)
        write_score(composition.score, piece.midi)
        piano_roll(piece.midi, piece.piano_roll, title=f"{name} (primer {piece.primer})")
        notes[name] = composition.notes
        if wav:

            piece.wav = render_wav(piece.midi, out_dir / f"{name}.wav", soundfont=soundfont)
        pieces.append(piece)
    return Batch(pieces, musicality_against_held_out(notes, corpus, out_dir / MUSICALITY_PLOT, seed))


def musicality_against_held_out(generated: dict[str, np.ndarray], corpus: HeldOutSplit, plot: Path, seed: int):
    """The musicality report of `generated` against the validation pieces, its plot at `plot`; None when the
    corpus folder holds none of them (another corpus than the bundle's) or no generated piece has a note."""

    if not corpus.validation or not any(len(notes) for notes in generated.values()):
        return None
    report = musicality_report(generated, corpus.validation, corpus.training, seed=seed)
    distance_densities(report, plot)
    return report


def write_report(batch: Batch, out_dir: str | os.PathLike, settings: dict,
                 metrics_path: str | os.PathLike | None = None) -> dict:
    """generation.json in `out_dir` (settings, per-piece metrics, musicality) and the batch summary, also to
    `metrics_path`."""

    summary = summarize(batch.pieces) | (batch.musicality.metrics() if batch.musicality else {})
    atomic_write_json(Path(out_dir) / "generation.json", {
        "settings": settings,
        "summary": summary,
        "musicality": batch.musicality.report if batch.musicality else None,
        "pieces": [{"name": p.name, "primer": p.primer, "midi": p.midi.name, "wav": p.wav.name if p.wav else None,
                    "metrics": p.metrics} for p in batch.pieces],
    })
    if metrics_path:
        atomic_write_json(metrics_path, summary)
    return summary


@dataclass
class BatchResult:
    out: Path
    pieces: list[GeneratedPiece]
    settings: dict
    summary: dict
    run_id: str | None  # the MLflow run holding the batch; None untracked

    def describe(self) -> str:
        return f"wrote {len(self.pieces)} piece(s) to {self.out}: " + ", ".join(f"{k} {v}" for k, v in self.summary.items())


def generate_batch(model: str, out_dir: str | os.PathLike, *, n: int, length: int, sampling: Sampling, seed: int,
                   primer: str = "random", corpus_dir: str | os.PathLike = "data/raw", tempo_qpm: float = 120.0,
                   wav: bool = False, soundfont: str | None = None, metrics_path: str | os.PathLike | None = None,
                   track: bool = False) -> BatchResult:
    """What `pianola generate` and the generate flow do: load `model`, generate, write the report, and log the
    batch to an MLflow run when `track`."""
    batch = generate_pieces(load_bundle(model), out_dir, n=n, length=length, sampling=sampling, seed=seed, primer=primer,
                            corpus_dir=corpus_dir, tempo_qpm=tempo_qpm, wav=wav, soundfont=soundfont)
    settings = {"model": model, "n": n, "length": length, "seed": seed, "primer": primer, "tempo": tempo_qpm} | vars(sampling)
    summary = write_report(batch, out_dir, settings, metrics_path=metrics_path)
    run_id = None
    if track:
        from pianola.tracking import log_generation

        run_id = log_generation(Path(out_dir), settings, summary)
    return BatchResult(Path(out_dir), batch.pieces, settings, summary, run_id)


def pitch_tokens(bundle: Bundle) -> np.ndarray:
    """(V,) bool: the tokens that carry a pitch (those a transposition moves), which the repetition penalty
    applies to. Time shifts and durations repeat in any steady rhythm: penalising them breaks the rhythm."""
    tokenizer = bundle.tokenizer
    return np.array([tokenizer.transpose(token, 1) != token for token in bundle.vocab.tokens])
