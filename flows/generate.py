"""Batch generation as a Prefect run: N pieces from the champion, logged to MLflow, optionally published to S3.

Served on demand by flows/serve.py and run once by `python -m flows.generate` (the options of `pianola generate`).
"""

from datetime import UTC, datetime
from typing import Annotated

import typer
from prefect import flow

from flows import cli
from pianola.cli import (
    CHAMPION_URI,
    DEFAULT_SAMPLING,
    Corpus,
    ModelRef,
    PieceCount,
    PieceLength,
    Primer,
    RepetitionPenalty,
    Seed,
    SoundFont,
    StrategyName,
    Temperature,
    Tempo,
    TopK,
    TopP,
    Track,
    Wav,
)
from pianola.generation.sampling import Sampling
from tasks.artifacts import leave_summary, table
from tasks.generate import generate_batch, publish_batch, storage_publisher

# Not outputs/generated: that folder is the DVC generate stage's output, and writing it would dirty `dvc status`.
BATCHES = "outputs/batches"


@flow(name="generate", log_prints=True)
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
    out: Annotated[str | None, typer.Option(help=f"Folder for the pieces (default: {BATCHES}/UTC-TIME)")] = None,
    wav: Wav = False,
    soundfont: SoundFont = None,
    track: Track = True,
    publish: Annotated[str | None, typer.Option(help="Also upload the batch to this s3://BUCKET/PREFIX")] = None,
) -> dict:
    """Generate a batch of pieces; log them to MLflow and, with --publish, upload them to S3."""
    if publish:
        storage_publisher(publish)  # fail before generating, not after
    out = out or f"{BATCHES}/{datetime.now(UTC):%Y%m%d-%H%M%S}"
    sampling = Sampling(strategy, temperature, top_k, top_p, repetition_penalty)
    batch = generate_batch(model, out, n=n, length=length, sampling=sampling, seed=seed, primer=primer, corpus_dir=corpus,
                           tempo_qpm=tempo, wav=wav, soundfont=soundfont, track=track)
    published = publish_batch(out, publish) if publish else None
    leave_summary(
        "pianola-generate", f"Generated {len(batch.pieces)} piece(s) from {model}",
        table({"folder": f"`{out}`", "MLflow run": f"`{batch.run_id}`" if batch.run_id else "not tracked",
               "published to": published or "not published"}),
        table(batch.summary),
    )
    print(batch.describe())
    return {"out": out, "midi": [str(p.midi) for p in batch.pieces], "summary": batch.summary, "run_id": batch.run_id,
            "published_to": published}


if __name__ == "__main__":
    cli(generate)
