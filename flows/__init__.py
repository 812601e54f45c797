"""Prefect flows: pipeline, generate, monitor, retrain, and serve (all of them as deployments).

Run them from the project root: each runs once as `python -m flows.NAME --option ...`, and `cli` turns a
flow's own signature into that command, so the options, their help and Prefect's parameters never diverge.
"""

import functools
import json

import typer
from prefect import Flow

from pianola.errors import PianolaError
from tasks.dvc import DvcError


def cli(flow: Flow) -> None:
    """Run `flow` once with its parameters as command-line options and print its result as JSON.

    As with `pianola`, an error meant for people (a PianolaError, a failed dvc command) prints as one
    line on stderr and exits with code 1; Prefect has already logged the details.
    """

    @functools.wraps(flow.fn)
    def command(**parameters: object) -> None:
        try:
            result = flow(**parameters)
        except (PianolaError, DvcError) as e:
            typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
            raise SystemExit(1) from None
        typer.echo(json.dumps(result, indent=2, default=str))

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(command)
    app()
