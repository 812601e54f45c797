"""Errors meant for people: each says what was wrong, where, and what to do.

The CLI prints a PianolaError's message without a traceback and exits non-zero.
"""


class PianolaError(Exception):
    """A failure the user can act on (bad input, missing data, missing tool)."""


class BadRequest(PianolaError):
    """A request the generation service refuses; `status` is its HTTP status (4xx)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class SourceUnavailable(PianolaError):
    """The source itself failed while ingest read it (a store unreachable, or refusing): the run stops, and keeps
    the files it had already written."""
