"""The `pianola` command line: one sub-command per stage of the data flow.

Heavy libraries (TensorFlow, music21, matplotlib) are imported inside the commands that need
them, so `pianola tokenize` starts in a fraction of a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pianola.errors import PianolaError

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
    max_bytes: Annotated[int, typer.Option(help="Reject files larger than this")] = 4_000_000,
    limit: Annotated[int, typer.Option(help="Stop after this many files are ingested (0: all)")] = 0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
) -> None:
    """Gather MIDI files from SOURCE, validate them, drop duplicates, write them and a manifest to OUT."""
    from pianola.ingest import ingest as run_ingest

    report = run_ingest(source, out, max_bytes=max_bytes, limit=limit, progress=progress)
    typer.echo(report.summary())


@app.command()
def tokenize(
    tokenizer: Annotated[str, typer.Option(help="paper (the paper's note/chord tokens) or timed (onsets and durations)")] = "paper",
    in_dir: Annotated[Path, typer.Option("--in", help="Folder of MIDI files")] = Path("data/raw"),
    out: Annotated[Path, typer.Option(help="Folder for tokens.jsonl, vocab.json, stats.json and plots")] = Path("data/tokens"),
    steps_per_quarter: Annotated[int, typer.Option(help="Grid of the timed tokenizer")] = 12,
    plots: Annotated[bool, typer.Option(help="Draw the corpus plots")] = True,
) -> None:
    """Turn every MIDI file of IN into a token sequence."""
    from pianola.corpus import tokenize_corpus
    from pianola.tokenizers import get_tokenizer

    config = {"steps_per_quarter": steps_per_quarter} if tokenizer == "timed" else {}
    try:
        chosen = get_tokenizer(tokenizer, **config)
    except ValueError as e:
        raise PianolaError(str(e)) from e
    report = tokenize_corpus(in_dir, out, chosen, plots=plots)
    typer.echo(report.summary())


@app.command()
def sequences(
    in_dir: Annotated[Path, typer.Option("--in", help="Folder holding tokens.jsonl")] = Path("data/tokens"),
    out: Annotated[Path, typer.Option(help="Folder for vocab.json, train.npz, valid.npz, meta.json")] = Path("data/sequences"),
    window: Annotated[int, typer.Option(help="Tokens of context before each target")] = 100,
    valid_fraction: Annotated[float, typer.Option(help="Fraction of pieces held out for validation")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the piece-level split")] = 42,
) -> None:
    """Map tokens to ids, split by piece, and store the windows."""
    from pianola.sequences import build_sequences

    meta = build_sequences(in_dir, out, window=window, valid_fraction=valid_fraction, seed=seed)
    typer.echo(
        f"vocabulary {meta['vocab_size']}; train {len(meta['train']['pieces'])} pieces, {meta['train']['windows']:,} windows; "
        f"valid {len(meta['valid']['pieces'])} pieces, {meta['valid']['windows']:,} windows (OOV {meta['valid']['oov_rate']:.2%})"
    )


def main() -> None:
    """Entry point: run the app, turning PianolaError into a one-line message and exit code 1."""
    try:
        app()
    except PianolaError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
