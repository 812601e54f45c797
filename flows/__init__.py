"""Prefect flows: pipeline, generate, monitor, retrain, and serve (all of them as deployments).

Run them from the project root: each runs once as `python -m flows.NAME --option ...`, and `cli` turns a
flow's own signature into that command, so the options, their help and Prefect's parameters never diverge.
"""

import atexit
import functools
import json
import os
import sys
from collections.abc import Callable

# Prefect's settings, read when prefect is imported and handed to the temporary server it starts. Defaults only:
# a variable already set wins.
# Without a Prefect server, a flow starts a temporary one; its first start creates the database,
# which on a busy 2-core machine outlasts Prefect's 20 s default wait.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
# The server's telemetry service writes a session row at start-up (racing the run's first writes on a new SQLite
# database: "database is locked", a traceback of a hundred lines) and then posts to Prefect's servers (offline: an
# ERROR line). Off, as is the client's usage reporting (DO_NOT_TRACK, which Prefect reads).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Coloured log lines on a terminal only; in a file or a pipe, plain text.
if not getattr(sys.stderr, "isatty", lambda: False)():
    os.environ.setdefault("PREFECT_LOGGING_COLORS", "false")

import typer  # noqa: E402
from prefect import Flow  # noqa: E402

from pianola.errors import PianolaError  # noqa: E402
from tasks.dvc import DvcError  # noqa: E402


def cli(flow: Flow, summary: Callable[[dict], str] | None = None) -> None:
    """Run `flow` once with its parameters as command-line options and print its result as JSON.

    `summary(result)`, when given, is a closing summary for people: printed on stderr (stdout holds only the
    JSON) as the very last output, after what Prefect prints on exit (stopping its temporary server).

    As with `pianola`, an error meant for people (a PianolaError, a failed dvc command) prints as one
    line on stderr and exits with code 1; Prefect has already logged the details.
    """
    closing: list[str] = []
    # Registered before the run, so it runs after the exit handlers Prefect registers during it (atexit: last in, first out).
    atexit.register(lambda: closing and print(*closing, sep="\n", file=sys.stderr, flush=True))

    @functools.wraps(flow.fn)
    def command(**parameters: object) -> None:
        try:
            result = flow(**parameters)
        except (PianolaError, DvcError) as e:
            typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
            raise SystemExit(1) from None
        if summary is not None:
            closing.append(summary(result))  # made now: an error at exit would print a traceback
        typer.echo(json.dumps(result, indent=2, default=str))

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(command)
    app()
