"""Sources on this machine: a folder of MIDI files, and the corpus bundled with music21 (the offline default).

Both are `pianola.data.sources.base.Source`s; `open_source` picks one from a spec.
"""

from __future__ import annotations

import multiprocessing
import os
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

from pianola.data.sources.base import Source, SourceItem, SourceReadError, _is_midi_name
from pianola.errors import PianolaError

MUSIC21_PREFIX = "music21:"


MUSIC21_LICENSE = (
    "music21 corpus: out of copyright in the US or licensed to music21 for free use, some encodings "
    "without commercial use; see music21/corpus/license.txt and the work's own header"
)


# Roman-numeral analyses sit beside the chorales in the corpus; realised as MIDI they would be block
# chords written by an analyst, not music by the composer.
MUSIC21_SKIPPED_SUFFIXES = (".rntxt",)


class FolderSource(Source):
    """MIDI files under a local folder, recursively; symlinks are reported, never followed."""

    portable_items = True  # an item reads its path: any process that sees the folder can

    def __init__(self, root: Path):
        self.root = root
        self.spec = str(root)

    def items(self) -> Iterator[SourceItem]:
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            dirnames.sort()
            here = Path(dirpath)
            # os.walk lists symlinks to folders under dirnames; report those and the folders named
            # like MIDI files, since a user put them there expecting them to be read.
            for name in list(dirnames):
                path = here / name
                if path.is_symlink():
                    dirnames.remove(name)
                    yield SourceItem.reject(self._name(path), str(path), "symbolic link to a folder (not followed)")
                elif _is_midi_name(name):
                    yield SourceItem.reject(self._name(path), str(path), "a directory, not a MIDI file")
            for name in sorted(filenames):
                if _is_midi_name(name):
                    yield self._file_item(here / name)

    def estimated_count(self) -> int | None:
        return None  # counting means walking the tree twice; the bar runs without a total

    def _name(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _file_item(self, path: Path) -> SourceItem:
        name = self._name(path)
        try:
            st = os.lstat(path)
        except OSError as e:
            return SourceItem.reject(name, str(path), f"unreadable: {e.strerror or e}")
        if stat.S_ISLNK(st.st_mode):
            return SourceItem.reject(name, str(path), "symbolic link (not followed)")
        if not stat.S_ISREG(st.st_mode):
            # Reading a FIFO or a device named x.mid would block or never end.
            return SourceItem.reject(name, str(path), "not a regular file")
        return SourceItem(name=name, source=str(path), read=path.read_bytes, size=st.st_size)


class Music21Source(Source):
    """Works bundled with music21 (offline), converted to MIDI by music21's own MIDI writer."""

    def __init__(self, composers: list[str], *, workers: int = min(4, os.cpu_count() or 1)):
        from music21 import (  # music21 takes a second to import: only when used
            common,
            corpus,
        )

        self.spec = MUSIC21_PREFIX + ",".join(composers)
        self.workers = workers
        self._corpus_root = Path(common.getCorpusFilePath())
        self._works: list[tuple[str, Path]] = []  # (composer, path), in corpus order
        seen: set[Path] = set()
        for composer in composers:
            paths = [p for p in corpus.getComposer(composer) if p.suffix not in MUSIC21_SKIPPED_SUFFIXES]
            if not paths:
                raise PianolaError(
                    f"source {self.spec!r}: the music21 corpus has no works for composer {composer!r}; "
                    f"composers include {', '.join(_music21_composers(self._corpus_root)[:12])}, ..."
                )
            for path in paths:
                if path not in seen:
                    seen.add(path)
                    self._works.append((composer, path))

    def estimated_count(self) -> int | None:
        return len(self._works)

    def items(self) -> Iterator[SourceItem]:
        # music21 needs ~0.3 s of CPU per chorale, so worker processes cut a full run by about the
        # number of workers. Forked, not spawned: spawn re-runs the caller's main script in every
        # worker (a script without a __main__ guard would loop) and re-imports music21 (~1 s each).
        # Forking is only safe without other threads, whose locks a child could inherit held.
        if self.workers <= 1 or threading.active_count() > 1:
            for composer, path in self._works:
                yield self._item(composer, path, lambda path=path: _unwrap(music21_to_midi(str(path))))
            return
        # Only 2 tasks per worker run ahead, so a small `limit` wastes little work when ingest stops early.
        with multiprocessing.get_context("fork").Pool(self.workers) as pool:
            works = iter(self._works)
            pending: deque = deque()

            def submit(count: int) -> None:
                for composer, path in islice(works, count):
                    pending.append((composer, path, pool.apply_async(music21_to_midi, (str(path),))))

            submit(2 * self.workers)
            while pending:
                composer, path, result = pending.popleft()
                submit(1)
                yield self._item(composer, path, lambda result=result: _unwrap(result.get()))

    def _item(self, composer: str, path: Path, read: Callable[[], bytes]) -> SourceItem:
        relative = path.relative_to(self._corpus_root).as_posix()
        return SourceItem(
            name=relative.removesuffix(path.suffix),
            source=MUSIC21_PREFIX + relative,
            read=read,
            composer=composer,
            license=MUSIC21_LICENSE,
        )


def music21_to_midi(path: str) -> tuple[bytes | None, str | None]:
    """(MIDI bytes, None) or (None, why not) for one corpus work; runs in a worker process."""
    from music21 import corpus, stream
    from music21.midi import translate

    try:
        score = corpus.parse(path)
        if isinstance(score, stream.Opus):
            return None, f"a collection of {len(score.scores)} pieces (music21 Opus); collections are not split yet"
        return translate.streamToMidiFile(score).writestr(), None
    except Exception as e:  # noqa: BLE001 - any music21 failure is this one work's problem, not the run's
        return None, f"music21 could not convert: {type(e).__name__}: {e}"


def _unwrap(result: tuple[bytes | None, str | None]) -> bytes:
    data, error = result
    if data is None:
        raise SourceReadError(error)
    return data


def _music21_composers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
