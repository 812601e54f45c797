"""The interface every tokenizer implements."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import symusic


class Tokenizer(ABC):
    """MIDI file -> list of string tokens -> MIDI score."""

    name: ClassVar[str]

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this tokenizer: `tokenizer_from_config(t.config())`."""
        return {"name": self.name}

    @abstractmethod
    def encode(self, path: str | os.PathLike) -> list[str]:
        """Tokens of one MIDI file."""

    def pitch(self, token: str) -> int | None:
        """The MIDI pitch a token strikes; None for a token that strikes no single pitch (a time step, a chord
        of the paper's encoding, `<unk>`). Models use it to share what they learn across octaves."""
        return None

    def transpose(self, token: str, semitones: int) -> str | None:
        """`token` moved by `semitones`; None where it has no such form (out of the MIDI range).

        Tokens that carry no pitch (time shifts, durations, `<unk>`) are returned unchanged.
        Used to augment training data with transposed copies.
        """
        return token

    @abstractmethod
    def decode(self, tokens: list[str], tempo_qpm: float = 120.0) -> symusic.Score:
        """A piano score playing `tokens`."""
