"""What every source gives ingest: named items whose bytes are read lazily, or rejected with a reason.

The contract of pianola.data.sources: `Source.items()` in a stable order, `SourceItem.read()` when ingest wants
the bytes, `SourceReadError` for a reason the manifest records.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pianola.errors import PianolaError
from pianola.midi import MIDI_SUFFIXES


class SourceReadError(PianolaError):
    """An item's bytes could not be produced; the message is the rejection reason for the manifest."""


@dataclass(frozen=True)
class SourceItem:
    """One candidate file: its name, where it came from, and how to read its bytes."""

    name: str  # relative name, e.g. "sub/x.mid" or "bach/bwv1.6"; ingest sanitises it for the output
    source: str  # path, URL or music21:bach/bwv1.6.mxl, recorded in the manifest
    read: Callable[[], bytes] | None = None  # raises OSError or SourceReadError; None when rejected
    size: int | None = None  # bytes, where known without reading (lets ingest skip huge files unread)
    composer: str | None = None
    license: str | None = None
    rejected: str | None = None  # a reason known before reading: a symlink, a directory, ...

    def __post_init__(self) -> None:
        if self.read is None and self.rejected is None:
            raise ValueError(f"source item {self.name!r} has neither a way to read it nor a rejection reason")

    @classmethod
    def reject(cls, name: str, source: str, reason: str) -> SourceItem:
        return cls(name=name, source=source, rejected=reason)


class Source(ABC):
    """A place MIDI files come from; `spec` is what the user typed, named in errors and the manifest."""

    spec: str
    # Whether items() can travel to other processes (pickled, read there): a sharded ingest needs it.
    portable_items: bool = False

    @abstractmethod
    def items(self) -> Iterator[SourceItem]:
        """Every candidate in a stable order (stable output names across runs)."""

    def estimated_count(self) -> int | None:
        """How many items `items()` will yield, where cheap to know (sizes the progress bar)."""
        return None


def _is_midi_name(name: str) -> bool:
    return name.lower().endswith(MIDI_SUFFIXES)
