"""Errors meant for people: each says what was wrong, where, and what to do.

The CLI prints a PianolaError's message without a traceback and exits non-zero.
"""


class PianolaError(Exception):
    """A failure the user can act on (bad input, missing data, missing tool)."""
