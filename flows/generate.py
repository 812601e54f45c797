"""Batch generation as a Prefect run: N pieces from the champion, logged to MLflow, optionally published to S3.

Served on demand by flows/serve.py and run once by `python -m flows.generate` (the options of `pianola generate`).
"""

from datetime import UTC, datetime
from typing import Annotated

import typer
from prefect import flow

from flows import cli
from tasks.artifacts import leave_summary, table
from tasks.generate import generate_batch, publish_batch, storage_publisher

# Not outputs/generated: that folder is the DVC generate stage's output, and writing it would dirty `dvc status`.
BATCHES = "outputs/batches"


@flow(name="generate", log_prints=True)
def generate(
    model: Annotated[str, typer.Option(help="A bundle folder or an MLflow URI")] = "models:/pianola@champion",
    n: Annotated[int, typer.Option(help="Number of pieces, generated in one batch")] = 1,
    length: Annotated[int, typer.Option(help="Tokens per piece")] = 500,
    strategy: Annotated[str, typer.Option(help="greedy | temperature | top_k | top_p")] = "top_p",
    temperature: Annotated[float, typer.Option(help="Softmax temperature (all but greedy)")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Tokens kept by top_k")] = 20,
    top_p: Annotated[float, typer.Option(help="Probability mass kept by top_p")] = 0.95,
    primer: Annotated[str, typer.Option(help="random (a window of the training corpus) or a MIDI file")] = "random",
    corpus: Annotated[str, typer.Option(help="The training corpus: random primers and the metrics' reference")] = "data/raw",
    seed: Annotated[int, typer.Option(help="The same seed gives the same files")] = 0,
    tempo: Annotated[float, typer.Option(help="Tempo of the written MIDI, quarter notes per minute")] = 120.0,
    out: Annotated[str | None, typer.Option(help=f"Folder for the pieces (default: {BATCHES}/UTC-TIME)")] = None,
    wav: Annotated[bool, typer.Option("--wav", help="Also render WAV with FluidSynth")] = False,
    soundfont: Annotated[str | None, typer.Option(help="SoundFont for --wav (default: the system's General MIDI one)")] = None,
    track: Annotated[bool, typer.Option(help="Log the pieces and metrics to an MLflow run")] = True,
    publish: Annotated[str | None, typer.Option(help="Also upload the batch to this s3://BUCKET/PREFIX")] = None,
) -> dict:
    """Generate a batch of pieces; log them to MLflow and, with --publish, upload them to S3."""
    if publish:
        storage_publisher(publish)  # fail before generating, not after
    out = out or f"{BATCHES}/{datetime.now(UTC):%Y%m%d-%H%M%S}"
    batch = generate_batch(model, out, n=n, length=length, strategy=strategy, temperature=temperature,
                           top_k=top_k, top_p=top_p, primer=primer, corpus=corpus, seed=seed, tempo=tempo,
                           wav=wav, soundfont=soundfont, track=track)
    batch["published_to"] = publish_batch(out, publish) if publish else None
    leave_summary(
        "pianola-generate", f"Generated {len(batch['midi'])} piece(s) from {model}",
        table({"folder": f"`{out}`", "MLflow run": f"`{batch['run_id']}`" if batch["run_id"] else "not tracked",
               "published to": batch["published_to"] or "not published"}),
        table({name: value for name, value in batch["summary"].items()}),
    )
    print(f"wrote {len(batch['midi'])} piece(s) to {out}")
    return batch


if __name__ == "__main__":
    cli(generate)
