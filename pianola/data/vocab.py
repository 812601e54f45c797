"""The vocabulary: token string <-> integer id, built from the training pieces only.

Id 0 is `<unk>`, the id of every token never seen in training. A vocabulary carries a
fingerprint so that a model bundle can refuse to run with any other vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pianola.errors import PianolaError
from pianola.io import atomic_write_json

UNK = "<unk>"


@dataclass(frozen=True)
class Vocabulary:
    """Ordered tokens; a token's id is its index. `tokens[0]` is always `<unk>`."""

    tokens: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.tokens or self.tokens[0] != UNK:
            raise ValueError(f"a vocabulary starts with {UNK!r}")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("a vocabulary cannot list a token twice")
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    @classmethod
    def build(cls, pieces: Iterable[list[str]]) -> Vocabulary:
        """Tokens by descending frequency (ties by name), after `<unk>`."""
        counts = Counter(t for piece in pieces for t in piece)
        counts.pop(UNK, None)
        ordered = sorted(counts, key=lambda t: (-counts[t], t))
        return cls((UNK, *ordered))

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def encode(self, tokens: list[str]) -> np.ndarray:
        """int32 ids of `tokens`, 0 (`<unk>`) for tokens not in the vocabulary."""
        index = self._index
        return np.fromiter((index.get(t, 0) for t in tokens), dtype=np.int32, count=len(tokens))

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.tokens[int(i)] for i in ids]

    @property
    def fingerprint(self) -> str:
        """sha256 of the ordered tokens: two vocabularies with the same ids share it."""
        return hashlib.sha256("\n".join(self.tokens).encode()).hexdigest()

    def to_json(self) -> dict:
        return {"size": len(self), "fingerprint": self.fingerprint, "tokens": list(self.tokens)}

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_json())

    @classmethod
    def from_json(cls, data: dict, origin: str = "vocabulary") -> Vocabulary:
        try:
            vocab = cls(tuple(data["tokens"]))
        except (KeyError, TypeError, ValueError) as e:
            raise PianolaError(f"{origin}: not a pianola vocabulary ({e})") from e
        expected = data.get("fingerprint")
        if expected is not None and expected != vocab.fingerprint:
            raise PianolaError(f"{origin}: fingerprint does not match its tokens; the file was edited or damaged")
        return vocab

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise PianolaError(f"{path}: vocabulary not found; run `pianola sequences` first") from e
        except json.JSONDecodeError as e:
            raise PianolaError(f"{path}: not valid JSON ({e})") from e
        return cls.from_json(data, origin=str(path))
