"""Tokenizers turn a MIDI file into a list of string tokens and back.

`paper`: the paper's note/chord encoding (music21-compatible); `timed`: keeps onsets, durations, octaves;
`remi`: the field's standard REMI (Bar, Position, Pitch, Duration), via miditok; `roll`: the sounding keys
frame by frame, the polyphonic benchmark's piano roll.
"""

from __future__ import annotations

from typing import Any

from pianola.errors import PianolaError
from pianola.tokenizers.base import Tokenizer

TOKENIZERS = ("paper", "timed", "remi", "roll")


def get_tokenizer(name: str, **config: Any) -> Tokenizer:
    """The tokenizer called `name`, built with its config (as saved in a bundle)."""
    if name == "paper":
        from pianola.tokenizers.paper import PaperTokenizer

        return PaperTokenizer(**config)
    if name == "timed":
        from pianola.tokenizers.timed import TimedTokenizer

        return TimedTokenizer(**config)
    if name == "remi":
        from pianola.tokenizers.remi import RemiTokenizer

        return RemiTokenizer(**config)
    if name == "roll":
        from pianola.tokenizers.roll import RollTokenizer

        return RollTokenizer(**config)
    raise ValueError(f"unknown tokenizer {name!r}: choose one of {', '.join(TOKENIZERS)}")


def stage_tokenizer(name: str, *, steps_per_quarter: int, frames_per_quarter: int) -> Tokenizer:
    """The tokenizer the tokenize stage builds from its settings (params.yaml tokenize), each taking its own."""
    config = ({"steps_per_quarter": steps_per_quarter} if name in ("timed", "remi")
              else {"frames_per_quarter": frames_per_quarter} if name == "roll" else {})
    try:
        return get_tokenizer(name, **config)
    except ValueError as e:
        raise PianolaError(str(e)) from e


def tokenizer_from_config(config: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from `Tokenizer.config()`."""
    config = dict(config)
    return get_tokenizer(config.pop("name"), **config)
