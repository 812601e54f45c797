"""The `pianola` command line: one sub-command per stage of the data flow.

Heavy libraries (TensorFlow, music21, matplotlib) are imported inside the commands that need
them, so `pianola tokenize` starts in a fraction of a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pianola.errors import PianolaError
from pianola.generation.sampling import STRATEGIES, Sampling
from pianola.midi.validate import DEFAULT_MAX_BYTES
from pianola.params import DEFAULT_PARAMS, check_params

app = typer.Typer(
    help="Learn to compose classical piano music with LSTMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command()
def ingest(
    source: Annotated[
        str, typer.Option(help="music21:COMPOSER[,COMPOSER...] (works bundled with music21) or a local folder")
    ] = "music21:bach",
    out: Annotated[Path, typer.Option(help="Folder for the validated MIDI files and manifest.json")] = Path("data/raw"),
    max_bytes: Annotated[int, typer.Option(help="Reject files larger than this")] = DEFAULT_MAX_BYTES,
    limit: Annotated[int, typer.Option(help="Stop after this many files are ingested (0: all)")] = 0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
) -> None:
    """Gather MIDI files from SOURCE, validate them, drop duplicates, write them and a manifest to OUT."""
    from pianola.data.ingest import ingest as run_ingest

    report = run_ingest(source, out, max_bytes=max_bytes, limit=limit, progress=progress)
    typer.echo(report.summary())


@app.command()
def tokenize(
    tokenizer: Annotated[str, typer.Option(help="timed (onsets, durations, voicings), remi (REMI: bars, positions, pitches, durations), paper (the paper's note/chord tokens) or roll (piano-roll frames)")] = "timed",
    in_dir: Annotated[Path, typer.Option("--in", help="Folder of MIDI files")] = Path("data/raw"),
    out: Annotated[Path, typer.Option(help="Folder for tokens.jsonl, vocab.json and stats.json")] = Path("data/tokens"),
    steps_per_quarter: Annotated[int, typer.Option(help="Grid of the timed and remi tokenizers")] = 12,
    frames_per_quarter: Annotated[int, typer.Option(help="Grid of the roll tokenizer (2: eighth notes)")] = 2,
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
) -> None:
    """Turn every MIDI file of IN into a token sequence (`pianola corpus-plots` draws the corpus from OUT)."""
    from pianola.data.corpus import tokenize_corpus
    from pianola.tokenizers import TOKENIZERS, stage_tokenizer

    check_choices({"tokenize.tokenizer": TOKENIZERS})
    chosen = stage_tokenizer(tokenizer, steps_per_quarter=steps_per_quarter, frames_per_quarter=frames_per_quarter)
    report = tokenize_corpus(in_dir, out, chosen, progress=progress)
    typer.echo(report.summary())


@app.command()
def corpus_plots(
    in_dir: Annotated[Path, typer.Option("--in", help="Output of `pianola tokenize`")] = Path("data/tokens"),
    midi: Annotated[Path, typer.Option(help="The folder of MIDI files it tokenized (the first piece is drawn)")] = Path("data/raw"),
    out: Annotated[Path, typer.Option(help="Folder for the PNG files")] = Path("data/plots"),
) -> None:
    """The paper's corpus figures: token frequency, pitch-class frequency, pitch against offset of the first piece."""
    from pianola.plots import corpus_plots as draw

    typer.echo(f"drew {', '.join(str(path) for path in draw(in_dir, midi, out))}")


@app.command()
def sequences(
    in_dir: Annotated[Path, typer.Option("--in", help="Folder holding tokens.jsonl")] = Path("data/tokens"),
    out: Annotated[Path, typer.Option(help="Folder for vocab.json, train.npz, valid.npz, meta.json")] = Path("data/sequences"),
    window: Annotated[int, typer.Option(help="Tokens of context before each target")] = 100,
    valid_fraction: Annotated[float, typer.Option(help="Fraction of pieces held out for validation")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the piece-level split")] = 42,
) -> None:
    """Map tokens to ids, split by piece, and store the windows."""
    from pianola.data.sequences import build_sequences

    meta = build_sequences(in_dir, out, window=window, valid_fraction=valid_fraction, seed=seed)
    typer.echo(
        f"vocabulary {meta['vocab_size']}; train {len(meta['train']['pieces'])} pieces, {meta['train']['windows']:,} windows; "
        f"valid {len(meta['valid']['pieces'])} pieces, {meta['valid']['windows']:,} windows (OOV {meta['valid']['oov_rate']:.2%})"
    )


@app.command()
def models(
    vocab: Annotated[int, typer.Option(help="Vocabulary size the parameter counts assume")] = 313,
) -> None:
    """List the model zoo with parameter counts."""
    from pianola.models import list_models

    rows = list_models(vocab)
    width = max(len(name) for name, _, _ in rows)
    for name, description, params in rows:
        typer.echo(f"{name:<{width}}  {params:>11,}  {description}")


@app.command()
def train(
    model: Annotated[str, typer.Option(help="A zoo model: see `pianola models`")] = "lstm",
    preset: Annotated[str, typer.Option(help="demo (minutes), paper (the paper's settings), best (ours)")] = "demo",
    sequences_dir: Annotated[Path, typer.Option("--sequences", help="Output of `pianola sequences`")] = Path("data/sequences"),
    out: Annotated[Path, typer.Option(help="Folder for the trained bundle")] = Path("models/candidate"),
    epochs: Annotated[int | None, typer.Option(help="Override the preset's epochs")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Override the preset's time budget")] = None,
    transpose: Annotated[int | None, typer.Option(help="Override the preset's random transposition (+-semitones)")] = None,
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
    register: Annotated[bool, typer.Option(help="Register the bundle in the MLflow Model Registry as candidate")] = True,
    workers: Annotated[int, typer.Option(min=1, help="Train as a cluster of this many worker processes on this "
                                                     "machine (see docs/distributed.md)")] = 1,
) -> None:
    """Train a model, track it in MLflow, save it as a bundle and register it as `candidate`.

    With TF_CONFIG set, this process is one worker of a cluster (docs/distributed.md)."""
    import os
    import sys

    from pianola.models import MODEL_NAMES
    from pianola.training.train import PRESETS, preset_config
    from pianola.training.train import train as run_train

    check_choices({"train.model": MODEL_NAMES, "train.preset": PRESETS})
    overrides = {"epochs": epochs, "max_minutes": max_minutes, "transpose": transpose}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    config = preset_config(model, preset, seed=seed, **overrides)
    if workers > 1:
        from pianola.training.distributed import run_local_cluster

        if os.environ.get("TF_CONFIG"):
            raise PianolaError("--workers starts a cluster of its own: unset TF_CONFIG, or leave --workers out")
        options = {"--model": model, "--preset": preset, "--sequences": sequences_dir, "--out": out, "--epochs": epochs,
                   "--max-minutes": max_minutes, "--transpose": transpose, "--seed": seed}
        command = [sys.executable, "-m", "pianola.cli", "train", "--register" if register else "--no-register"]
        command += [str(part) for name, value in options.items() if value is not None for part in (name, value)]
        run_local_cluster(command, workers, Path("logs"))  # the chief prints the summary
        return
    result = run_train(sequences_dir, out, config, register=register)
    typer.echo(result.summary() if result else "worker done: the chief (worker 0) saves and registers the bundle")


@app.command()
def evaluate(
    model: Annotated[str, typer.Option(help="A bundle folder or an MLflow URI such as models:/pianola@champion")] = "models:/pianola@champion",
    midi: Annotated[Path, typer.Option(help="Folder of MIDI files to evaluate on")] = Path("data/raw"),
    valid_of: Annotated[Path | None, typer.Option(help="Only the validation pieces of this sequences folder")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
    out: Annotated[Path | None, typer.Option(help="Also write the JSON metrics to this file")] = None,
    curves: Annotated[Path | None, typer.Option(help="Also write the bundle's training curves (CSV) here")] = None,
) -> None:
    """Held-out cross-entropy of the token after every window, perplexity, accuracy, OOV rate."""
    import json

    from pianola.evaluation.heldout import (
        evaluate_midi,
        validation_pieces,
        write_training_curves,
    )
    from pianola.io import atomic_write_json
    from pianola.models.bundle import load_bundle

    bundle = load_bundle(model)
    metrics = evaluate_midi(bundle, midi, validation_pieces(valid_of) if valid_of else None)
    if out:
        atomic_write_json(out, metrics.to_json())
    if curves:
        write_training_curves(bundle, curves)
    typer.echo(json.dumps(metrics.to_json()) if as_json else metrics.summary())


@app.command()
def promote(
    midi: Annotated[Path, typer.Option(help="Folder holding the validation pieces' MIDI files")] = Path("data/raw"),
) -> None:
    """Move alias `champion` to `candidate` only if it has a lower held-out cross-entropy."""
    from pianola.evaluation.promotion import promote as run_promote

    typer.echo(run_promote(midi).summary())


# Options of `pianola generate`, shared with its Prefect twin `python -m flows.generate`.
ModelRef = Annotated[str, typer.Option(help="A bundle folder or an MLflow URI")]
PieceCount = Annotated[int, typer.Option(help="Number of pieces, generated in one batch")]
PieceLength = Annotated[int, typer.Option(help="Tokens per piece")]
StrategyName = Annotated[str, typer.Option(help="greedy | temperature | top_k | top_p")]
Temperature = Annotated[float, typer.Option(help="Softmax temperature (all but greedy)")]
TopK = Annotated[int, typer.Option(help="Tokens kept by top_k")]
TopP = Annotated[float, typer.Option(help="Probability mass kept by top_p")]
RepetitionPenalty = Annotated[float, typer.Option(help="Divides the probability of each recent repeat (1: off)")]
Primer = Annotated[str, typer.Option(help="random (a window of the training corpus) or a MIDI file")]
Corpus = Annotated[str, typer.Option(help="The training corpus: random primers and the metrics' reference")]
Seed = Annotated[int, typer.Option(help="The same seed gives the same files")]
Tempo = Annotated[float, typer.Option(help="Tempo of the written MIDI, quarter notes per minute")]
Wav = Annotated[bool, typer.Option("--wav", help="Also render WAV with FluidSynth")]
SoundFont = Annotated[str | None, typer.Option(help="SoundFont for --wav (default: the system's General MIDI one)")]
Track = Annotated[bool, typer.Option(help="Log the pieces and metrics to an MLflow run")]
CHAMPION_URI = "models:/pianola@champion"
DEFAULT_SAMPLING = Sampling()


@app.command()
def generate(
    model: ModelRef = CHAMPION_URI,
    n: PieceCount = 1,
    length: PieceLength = 500,
    strategy: StrategyName = DEFAULT_SAMPLING.strategy,
    temperature: Temperature = DEFAULT_SAMPLING.temperature,
    top_k: TopK = DEFAULT_SAMPLING.top_k,
    top_p: TopP = DEFAULT_SAMPLING.top_p,
    repetition_penalty: RepetitionPenalty = DEFAULT_SAMPLING.repetition_penalty,
    primer: Primer = "random",
    corpus: Corpus = "data/raw",
    seed: Seed = 0,
    tempo: Tempo = 120.0,
    out: Annotated[Path, typer.Option(help="Folder for the pieces")] = Path("outputs/generated"),
    wav: Wav = False,
    soundfont: SoundFont = None,
    metrics: Annotated[Path | None, typer.Option(help="Also write the batch's metrics (JSON) here")] = None,
    track: Track = True,
) -> None:
    """Generate N pieces as MIDI (and WAV), with piano rolls, music metrics and musicality against held-out pieces."""
    from pianola.generation.generate import generate_batch

    check_choices({"generate.strategy": STRATEGIES})
    result = generate_batch(model, out, n=n, length=length, sampling=Sampling(strategy, temperature, top_k, top_p, repetition_penalty),
                            seed=seed, primer=primer, corpus_dir=corpus, tempo_qpm=tempo, wav=wav, soundfont=soundfont,
                            metrics_path=metrics, track=track)
    typer.echo(result.describe())


@app.command()
def register(
    model: Annotated[Path, typer.Option(help="A bundle folder that `pianola train` saved but could not register")] = Path("models/candidate"),
) -> None:
    """Record a trained bundle in its MLflow run and register it (alias candidate): what `pianola train` asks for when
    the tracking server went away at its end."""
    from pianola.training.train import register_trained

    typer.echo(f"{model}: registered as version {register_trained(model)} (alias candidate)")


@app.command()
def serve(
    model: Annotated[str, typer.Option(help="An MLflow URI (an alias is followed as it moves) or a bundle folder")] = CHAMPION_URI,
    host: Annotated[str, typer.Option(help="Address to bind (keep 127.0.0.1 behind a reverse proxy: docs/serving.md)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port")] = 8000,
    store: Annotated[Path, typer.Option(help="Folder for the served pieces, the uploaded primers and the inference log")] = Path("outputs/served"),
    log: Annotated[Path | None, typer.Option(help="The inference log (default: STORE/inference.jsonl)")] = None,
    poll: Annotated[float, typer.Option(help="Seconds between checks of the model alias")] = 10.0,
    max_n: Annotated[int, typer.Option(help="Most pieces per request")] = 8,
    max_length: Annotated[int, typer.Option(help="Most tokens per piece")] = 2000,
    max_primer_bytes: Annotated[int, typer.Option(help="Largest primer MIDI file accepted")] = 1_000_000,
    timeout: Annotated[float, typer.Option(help="Most seconds of generation per request (then 503)")] = 60.0,
) -> None:
    """Serve the model over HTTP: a JSON API (/docs), a page to listen on (/), and an inference log for `monitor`."""
    from pianola.serving.app import serve as run_service
    from pianola.serving.composer import Limits

    limits = Limits(max_n=max_n, max_length=max_length, max_primer_bytes=max_primer_bytes, timeout_s=timeout)
    run_service(model, host, port, store, log, limits, poll)


@app.command()
def musicality(
    generated: Annotated[Path, typer.Argument(help="Folder of generated MIDI files")],
    reference: Annotated[Path, typer.Option(help="Folder of held-out human pieces to compare with")],
    train_dir: Annotated[Path, typer.Option("--train", help="Folder of the training pieces (novelty; the human baseline by default)")],
    baseline: Annotated[Path | None, typer.Option(help="Folder of human pieces, not in the reference, for the human baseline (default: a sample of --train)")] = None,
    excerpt: Annotated[float, typer.Option(help="Excerpt length in quarter notes: features are computed per excerpt")] = 64.0,
    seed: Annotated[int, typer.Option(help="Seed of the baseline sample and of the distance samples")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object")] = False,
    out: Annotated[Path | None, typer.Option(help="Also write the JSON report here")] = None,
    plot: Annotated[Path | None, typer.Option(help="Also draw each feature's distance densities to this PNG")] = None,
) -> None:
    """Yang & Lerch musicality of GENERATED against held-out human pieces, beside a human baseline, and novelty."""
    import json

    from pianola.evaluation.musicality import musicality_report, notes_of_folder
    from pianola.io import atomic_write_json

    report = musicality_report(notes_of_folder(generated), notes_of_folder(reference), notes_of_folder(train_dir),
                               notes_of_folder(baseline) if baseline else None, quarters=excerpt, seed=seed)
    if out:
        atomic_write_json(out, report.report)
    if plot:
        from pianola.evaluation.musicality import distance_densities

        distance_densities(report, plot)
    typer.echo(json.dumps(report.report) if as_json else report.summary())


@app.command()
def render(
    midi: Annotated[list[Path], typer.Argument(help="MIDI files; each WAV is written beside its MIDI")],
    soundfont: Annotated[str | None, typer.Option(help="SoundFont (default: the system's General MIDI one)")] = None,
) -> None:
    """Render MIDI files to 44.1 kHz WAV with FluidSynth."""
    from pianola.generation.render import render_many

    for path in render_many(midi, soundfont=soundfont):
        typer.echo(str(path))


@app.command()
def drift(
    reference: Annotated[str | None, typer.Option(help="The training corpus: a folder of MIDI files, a tokens.jsonl or a folder holding one (default: params.yaml monitor.reference)")] = None,
    current: Annotated[str | None, typer.Option(help="The set to compare, in the same forms (default: monitor.current)")] = None,
    threshold: Annotated[float | None, typer.Option(help="Drifted when the largest normalised distance exceeds this (default: monitor.threshold)")] = None,
    feature: Annotated[list[str] | None, typer.Option("--feature", help="pitch, duration or ioi; repeat for several (default: monitor.features)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object")] = False,
    out: Annotated[Path | None, typer.Option(help="Write the JSON report here (default: monitor.out)")] = None,
    served: Annotated[str | None, typer.Option(help="A `pianola serve` store folder: input and prediction drift of what it served, instead of CURRENT")] = None,
) -> None:
    """Wasserstein drift of CURRENT (or of what a service served) from REFERENCE on pitch, duration and inter-onset interval."""
    import json

    from pianola.monitoring.drift import monitor_settings
    from pianola.monitoring.served import check

    settings = monitor_settings(reference=reference, current=current, threshold=threshold, features=feature,
                                out=str(out) if out else None, served=served)
    report = check(settings)
    typer.echo(json.dumps(report.to_json()) if as_json else report.summary())


@app.command()
def publish(
    folder: Annotated[Path, typer.Argument(help="A folder to upload, e.g. a generated batch")],
    to: Annotated[str, typer.Option(help="Destination: s3://bucket/prefix (endpoint and credentials from AWS_* variables)")],
) -> None:
    """Upload a folder (generated pieces, reports) to S3 or an S3-compatible store."""
    from pianola.storage import publish as run_publish

    keys = run_publish(folder, to)
    typer.echo(f"uploaded {len(keys)} file(s) to {to}")


benchmark_app = typer.Typer(help="The polyphonic-music likelihood benchmark (Piano-midi.de, Nottingham, MuseData, JSB).",
                             no_args_is_help=True)
app.add_typer(benchmark_app, name="benchmark")


@benchmark_app.command("train")
def benchmark_train(
    data: Annotated[Path, typer.Option(help="A dataset file: .mat (traindata/validdata) or the original .pickle")],
    out: Annotated[Path, typer.Option(help="Folder for the trained model")],
    preset: Annotated[str, typer.Option(help="demo (a minute) | best (at most 28 minutes of training on 2 CPU cores)")] = "best",
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
    max_minutes: Annotated[float | None, typer.Option(help="Override the preset's time budget")] = None,
    track: Annotated[bool, typer.Option(help="Track the run in MLflow and register the model as pianola-bench-DATASET")] = True,
) -> None:
    """Train a roll-lstm on the train split, early-stopped on the exact valid NLL per frame."""
    from pianola.benchmark.train import train_benchmark

    overrides = {"max_minutes": max_minutes} if max_minutes is not None else {}
    typer.echo(train_benchmark(data, out, preset, seed=seed, track=track, verbose=2, **overrides).summary())


@benchmark_app.command("evaluate")
def benchmark_evaluate(
    model: Annotated[str, typer.Option(help="A folder from `benchmark train`, or an MLflow URI (models:/pianola-bench-jsb/1)")],
    data: Annotated[Path, typer.Option(help="A dataset file (.mat or .pickle)")],
    split: Annotated[str, typer.Option(help="valid | test (| train)")] = "valid",
    as_json: Annotated[bool, typer.Option("--json", help="End with one JSON line")] = False,
) -> None:
    """The exact negative log-likelihood per frame (nats) of a split, every frame of every piece."""
    import json

    from pianola.benchmark.likelihood import evaluate_benchmark

    result = evaluate_benchmark(model, str(data), split)
    typer.echo(f"{result['dataset']} {split}: {result['nll_per_frame']:.4f} nats per frame over {result['frames']} frames "
               f"of {result['pieces']} pieces ({result['nll_per_frame_first_excluded']:.4f} with each first frame excluded)")
    if as_json:
        typer.echo(json.dumps(result))


def check_choices(choices: dict[str, tuple[str, ...]]) -> None:
    """In a project, its params.yaml's names for this command (a tokenizer, a model...) among those it knows."""
    if Path(DEFAULT_PARAMS).exists():
        check_params(DEFAULT_PARAMS, choices)


def main() -> None:
    """Entry point: run the app, turning PianolaError into a one-line message and exit code 1. In a project (a
    params.yaml here, as where DVC runs the stages), a wrong setting is named before any work starts."""
    try:
        if Path(DEFAULT_PARAMS).exists():
            check_params(DEFAULT_PARAMS)
        app()
    except PianolaError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
