"""Prefect flows: pipeline, generate, monitor, retrain, and serve (all of them as deployments).

Run them from the project root: each runs once as `python -m flows.NAME --option ...`, and `cli` turns a
flow's own signature into that command, so the options, their help and Prefect's parameters never diverge.
"""

import functools
import json
import os

# Without a Prefect server, a flow starts a temporary one; its first start creates the database,
# which on a busy 2-core machine outlasts Prefect's 20 s default wait.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")

import typer  # noqa: E402
from prefect import Flow  # noqa: E402

from pianola.errors import PianolaError  # noqa: E402
from tasks.dvc import DvcError  # noqa: E402


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
