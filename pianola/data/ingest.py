"""Stage 1 of the flow: a source (music21 corpus, local folder) -> validated data/raw/*.mid + manifest.json.

A bad input is recorded in the manifest with its reason and skipped; it never stops the run.

The output folder belongs to this stage: after a successful run it holds exactly the MIDI files the
manifest lists as ok (stale MIDI files and temporary files from an interrupted run are removed, so
the DVC output matches its manifest). Files already present with the same bytes are left untouched,
so a re-run is cheap and keeps their timestamps. A run that ingests nothing raises and changes nothing.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pianola.data.shards import (
    PROGRESS_MIN_ITEMS,
    SHARD_FILES,
    ShardMap,
    map_in_order,
    progress_bar,
    shards_of,
)
from pianola.data.sources import open_source
from pianola.data.sources.base import MIDI_SUFFIXES, Source, SourceItem, SourceReadError
from pianola.data.sources.local import FolderSource
from pianola.errors import PianolaError, SourceUnavailable
from pianola.io import atomic_write_bytes, atomic_write_json
from pianola.midi import midi_files
from pianola.midi.validate import (
    DEFAULT_MAX_BYTES,
    oversize_reason,
    reason_kind,
    validate_midi,
)

MANIFEST = "manifest.json"
OUTPUT_SUFFIX = ".mid"
MAX_NAME_CHARS = 120  # well under file-system limits once a "-NN" dedup suffix is added
UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class IngestReport:
    """What one run did: every input's manifest entry and what changed in the output folder."""

    source: str
    out_dir: Path
    entries: list[dict[str, Any]]
    written: int = 0  # ok files new or changed on disk
    unchanged: int = 0  # ok files already present with the same bytes
    removed: list[str] = field(default_factory=list)  # stale files deleted from out_dir
    ok: int = 0
    rejected: int = 0

    def top_reasons(self, n: int = 3) -> str:
        """'2 truncated, 1 duplicate': the most common rejection kinds."""
        kinds = Counter(reason_kind(e["reason"]) for e in self.entries if e["status"] == "rejected")
        return ", ".join(f"{count} {kind}" for kind, count in kinds.most_common(n))

    def summary(self) -> str:
        """One line for the CLI."""
        line = f"ingested {self.ok} MIDI files from {self.source} into {self.out_dir}"
        line += f" ({self.written} written, {self.unchanged} unchanged, {len(self.removed)} stale removed)"
        if self.rejected:
            line += f"; {self.rejected} rejected: {self.top_reasons()}"
        return line


class _Admission:
    """The decisions that depend on every earlier input, made in input order: duplicates and output names."""

    def __init__(self, report: IngestReport):
        self.report = report
        self.first_copy: dict[str, str] = {}  # sha256 -> output name of the first ok file with those bytes
        self.taken: set[str] = set()  # output names in use, case-folded (macOS and Windows ignore case)

    def admit(self, entry: dict[str, Any]) -> bool:
        """Record `entry` (as inspect_item left it); True when it is a new ok file, now named in `entry`."""
        if entry["status"] == "checked":
            sha256 = entry["sha256"]
            if sha256 in self.first_copy:
                entry.update(status="rejected", reason=f"duplicate of {self.first_copy[sha256]}")
            else:
                entry.update(name=_unique_name(safe_name(entry["name"]), self.taken), status="ok")
                self.first_copy[sha256] = entry["name"]
        self.report.entries.append(entry)
        ok = entry["status"] == "ok"
        self.report.ok += ok
        self.report.rejected += not ok
        return ok


def ingest(
    source: str | Source,
    out_dir: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    limit: int = 0,
    progress: bool = True,
    map_shards: ShardMap | None = None,
    shard_files: int = SHARD_FILES,
) -> IngestReport:
    """Validate every item of `source` and write the good ones to `out_dir` with a manifest.

    `limit` > 0 stops after that many files are ingested (the manifest then lists the inputs seen so far).
    With `map_shards`, the items are checked and written in shards of `shard_files` through it (only a source whose
    items travel to other processes can: a folder); the output is the same, byte for byte.
    """
    src = open_source(source, out_dir=out_dir, max_bytes=max_bytes) if isinstance(source, str) else source
    out_dir = Path(out_dir)
    report = IngestReport(source=src.spec, out_dir=out_dir, entries=[])
    admission = _Admission(report)
    if isinstance(src, FolderSource) and out_dir.resolve().is_relative_to(src.root.resolve()):
        # Stale-file removal would delete the rejected inputs, and the walk would read its own output.
        raise PianolaError(f"output folder {out_dir} is inside the source folder {src.spec}; choose one outside it")
    if map_shards is not None and not src.portable_items:
        raise PianolaError(f"source {src.spec!r}: its files can only be read by this process; ingest it without workers")
    items: Iterator[SourceItem] = src.items()
    estimate = src.estimated_count()
    # With a limit the run ends on the ok count, so that is what the bar counts.
    by_ok = bool(limit) and (estimate is None or limit < estimate)
    total = limit if by_ok else estimate
    show = progress and (estimate is None or estimate > PROGRESS_MIN_ITEMS)
    try:
        with progress_bar(show, f"ingest {src.spec}", total) as advance:
            if map_shards is None:
                _ingest_here(items, out_dir, max_bytes, limit, admission, advance, by_ok)
            else:
                _ingest_sharded(items, out_dir, max_bytes, limit, admission, advance, by_ok, map_shards, shard_files)
    except SourceUnavailable as e:
        raise SourceUnavailable(f"{e}; ingest stopped after {report.ok} file(s), which stay in {out_dir}: rerun it "
                                "when the source is back (files already there are kept as they are)") from None
    finally:
        # Stops the music21 worker pool at once when `limit` ends the run early.
        close = getattr(items, "close", None)
        if close:
            close()

    if not report.ok:
        if not report.entries:
            raise PianolaError(f"source {src.spec!r} holds no MIDI files (*.mid, *.midi); nothing ingested")
        raise PianolaError(
            f"no MIDI file ingested from {src.spec!r}: all {report.rejected} inputs rejected "
            f"({report.top_reasons()}); {out_dir} was left as it was"
        )
    report.removed = _remove_stale(out_dir, {e["name"] for e in report.entries if e["status"] == "ok"})
    atomic_write_json(
        out_dir / MANIFEST,
        {"source": src.spec, "ok": report.ok, "rejected": report.rejected, "files": report.entries},
    )
    return report


def _ingest_here(items, out_dir, max_bytes, limit, admission, advance, by_ok) -> None:
    """Each item read, checked and written in turn, in this process."""
    report = admission.report
    for item in items:
        entry, data = inspect_item(item, max_bytes)
        if admission.admit(entry):
            if place_file(out_dir / entry["name"], data):
                report.written += 1
            else:
                report.unchanged += 1
        advance(int(entry["status"] == "ok" or not by_ok), f"{report.ok} ok, {report.rejected} rejected")
        if limit and report.ok >= limit:
            return


def _ingest_sharded(items, out_dir, max_bytes, limit, admission, advance, by_ok, map_shards, shard_files) -> None:
    """Shards of items checked through `map_shards`, admitted here in input order, and each shard's new files then
    written through it. The items stream from the source into the shards in flight: neither every input nor every
    file to write is ever listed."""
    report = admission.report

    def to_write() -> Iterator[list[tuple[SourceItem, Path, str]]]:
        """Per shard checked, the new files it admitted: (item, target, sha256)."""
        check = functools.partial(inspect_items, max_bytes=max_bytes)
        checked = map_in_order(map_shards, check, shards_of(items, shard_files))
        try:
            for shard, entries in checked:
                jobs = []
                for item, entry in zip(shard, entries):
                    if admission.admit(entry):
                        jobs.append((item, out_dir / entry["name"], entry["sha256"]))
                    if limit and report.ok >= limit:
                        break
                advance(sum(e["status"] == "ok" for e in entries) if by_ok else len(entries),
                        f"{report.ok} ok, {report.rejected} rejected")
                if jobs:
                    yield jobs
                if limit and report.ok >= limit:
                    return
        finally:
            checked.close()  # a limit reached: the shards still being checked are cancelled

    report.written = sum(map_shards(place_items, to_write()))
    report.unchanged = report.ok - report.written


def inspect_item(item: SourceItem, max_bytes: int) -> tuple[dict[str, Any], bytes | None]:
    """One input's manifest entry before the decisions that depend on other inputs, and its bytes.

    The entry's status is "rejected" (with the reason) or "checked": a valid MIDI file, its bytes returned.
    """
    entry: dict[str, Any] = {
        "name": item.name,
        "sha256": None,
        "source": item.source,
        "composer": item.composer,
        "license": item.license,
        "status": "rejected",
        "reason": None,
    }
    if item.rejected is not None or item.read is None:  # SourceItem guarantees a reason when read is None
        entry["reason"] = item.rejected
        return entry, None
    # Never load a huge file only to refuse it.
    if item.size is not None and (reason := oversize_reason(item.size, max_bytes)):
        entry["reason"] = reason
        return entry, None
    try:
        data = item.read()
    except SourceUnavailable:
        raise
    except SourceReadError as e:
        entry["reason"] = str(e)
        return entry, None
    except OSError as e:
        entry["reason"] = f"unreadable: {e.strerror or e}"
        return entry, None
    except Exception as e:  # noqa: BLE001 - whatever one input does, the run goes on
        entry["reason"] = f"unreadable: {type(e).__name__}: {e}"
        return entry, None

    entry["sha256"] = hashlib.sha256(data).hexdigest()
    if reason := validate_midi(data, max_bytes=max_bytes):
        entry["reason"] = reason
        return entry, None
    entry["status"] = "checked"
    return entry, data


def inspect_items(items: list[SourceItem], max_bytes: int) -> list[dict[str, Any]]:
    """inspect_item of each item, the entries only: the work of one shard, on any worker."""
    return [inspect_item(item, max_bytes)[0] for item in items]


def place_file(target: Path, data: bytes) -> bool:
    """Write `data` to `target` unless it holds them already; True when written."""
    if _same_bytes(target, data):
        return False
    atomic_write_bytes(target, data)  # a broken output folder (full, read-only) stops the run: WriteFailed
    return True


def place_items(jobs: list[tuple[SourceItem, Path, str]]) -> int:
    """Write each item's bytes to its target (one shard of a sharded ingest); returns how many were written.

    The bytes are read again and must still be the ones checked (their SHA-256): a file changed meanwhile stops it.
    """
    written = 0
    for item, target, sha256 in jobs:
        data = item.read()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise PianolaError(f"{item.source}: changed while it was ingested; run the ingest again")
        written += place_file(target, data)
    return written


def safe_name(name: str) -> str:
    """A plain file name for `name`: path parts joined by '_', only [A-Za-z0-9._-], ending in .mid."""
    parts = [p for p in re.split(r"[/\\]+", name) if p not in ("", ".", "..")]
    stem = "_".join(parts)
    lowered = stem.lower()
    for suffix in MIDI_SUFFIXES:
        if lowered.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    # A leading dot would hide the file (and look like io.py's temporary files).
    stem = UNSAFE_NAME_CHARS.sub("_", stem).lstrip(".")[:MAX_NAME_CHARS].rstrip(".") or "unnamed"
    return stem + OUTPUT_SUFFIX


def _unique_name(name: str, taken: set[str]) -> str:
    """`name`, or `stem-2.mid`, `stem-3.mid`, ... when an earlier file of this run already has it."""
    stem = name[: -len(OUTPUT_SUFFIX)]
    candidate, n = name, 1
    while candidate.lower() in taken:
        n += 1
        candidate = f"{stem}-{n}{OUTPUT_SUFFIX}"
    taken.add(candidate.lower())
    return candidate


def _same_bytes(path: Path, data: bytes) -> bool:
    """Is `path` a regular file holding exactly `data`? (The size check spares most reads.)"""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size != len(data):
            return False
        return path.read_bytes() == data
    except OSError:
        return False


def _remove_stale(out_dir: Path, keep: set[str]) -> list[str]:
    """Delete MIDI files this run did not ingest, and temporary files of interrupted writes."""
    removed = []
    with os.scandir(out_dir) as entries:  # one entry at a time: the folder holds the whole corpus
        for entry in entries:
            if entry.name in keep or entry.is_dir(follow_symlinks=False):
                continue
            stale_midi = entry.name.lower().endswith(MIDI_SUFFIXES)
            leftover_tmp = entry.name.startswith(".") and entry.name.endswith(".tmp")  # io.atomic_path's names
            if stale_midi or leftover_tmp:
                Path(entry.path).unlink(missing_ok=True)
                removed.append(entry.name)
    return sorted(removed)


def merge_new_pieces(current: str | os.PathLike, source: str | os.PathLike) -> list[Path]:
    """Copy the MIDI files of `current` into the corpus source folder, under `<source>/<current's name>/`.

    Retraining starts here: the next ingest reads them with the rest. A file already there with the
    same bytes is left alone; a different file of the same name gets the content's hash in its name,
    so a piece already in the corpus is never overwritten. Returns the files written.
    """
    current, source_dir = Path(current), Path(source)
    if not str(source) or not source_dir.is_dir():  # Path("") is the working directory
        raise PianolaError(
            f"the corpus source {str(source)!r} is not a folder: retraining adds the new pieces to a folder "
            "source; set ingest.source in params.yaml to a folder of MIDI files"
        )
    if current.is_file() and current.suffix.lower() in MIDI_SUFFIXES:
        files = [current]
    elif current.is_dir():
        files = midi_files(current)
    else:
        files = []
    if not files:
        raise PianolaError(f"{current}: no MIDI files to add to the corpus; retraining needs a folder of MIDI files")
    here, corpus = current.resolve(), source_dir.resolve()
    if here == corpus or corpus in here.parents:
        return []  # already part of the corpus source
    target = source_dir / (here.parent.name if current.is_file() else here.name)
    written = []
    for file in files:
        data = file.read_bytes()
        dest = target / file.name
        if dest.exists() and dest.read_bytes() != data:
            dest = target / f"{file.stem}-{hashlib.sha256(data).hexdigest()[:8]}{file.suffix}"
        if dest.exists():
            continue  # the same bytes are already in the corpus
        atomic_write_bytes(dest, data)
        written.append(dest)
    return written
