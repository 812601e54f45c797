"""What a service keeps: the pieces it generated, the primers it was sent, and the log of every request.

- `PieceStore`: each piece as `ID.mid` + `ID.json` (its settings, metrics, model version), with the WAV and
  piano-roll PNG rendered on first request and kept; the newest `keep` pieces stay. Ids are random hex,
  checked before any path is built from one, so a request can only ever reach a stored piece.
- uploaded primers as `primers/SHA256.mid`: the new music that drift-triggered retraining adds to the corpus.
- `InferenceLog`: append-only JSON lines, one record per request, written by a background thread so that
  requests never wait on the disk. A record is one `write` of one line; a line cut short by a crash is
  dropped when the log is next opened, so no reader ever sees half a record. Rotated by size, keeping
  `backups` old files (`inference.1.jsonl` the newest of them).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

from pianola.errors import BadRequest, PianolaError
from pianola.generation.render import render_wav
from pianola.io import atomic_write_bytes, atomic_write_json
from pianola.plots import piano_roll

log = logging.getLogger(__name__)

PIECE_ID = re.compile(r"[0-9a-f]{32}")
KINDS = {"mid": "audio/midi", "wav": "audio/wav", "png": "image/png"}


def new_piece_id() -> str:
    return uuid.uuid4().hex


class PieceStore:
    """Generated pieces on disk, by id."""

    def __init__(self, root: str | os.PathLike, keep: int = 1000) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "primers").mkdir(exist_ok=True)
        self.keep = keep
        self.saves = self.pruned_at = 0
        # One render of each kind at a time (matplotlib's pyplot is not thread-safe; FluidSynth is heavy), so a
        # slow WAV never holds up a piano roll.
        self.render_locks = {kind: threading.Lock() for kind in KINDS}

    @property
    def primers_dir(self) -> Path:
        return self.root / "primers"

    def save(self, piece_id: str, midi: bytes, record: dict) -> None:
        self.saves += 1
        atomic_write_bytes(self.root / f"{piece_id}.mid", midi)
        atomic_write_json(self.root / f"{piece_id}.json", record)  # last: a piece is listed once complete

    def save_primer(self, midi: bytes, fingerprint: str) -> Path:
        path = self.primers_dir / f"{fingerprint}.mid"
        if not path.exists():
            atomic_write_bytes(path, midi)
        return path

    def path(self, piece_id: str, kind: str) -> Path:
        """The file of a stored piece; BadRequest (404) for anything that is not one."""
        if not PIECE_ID.fullmatch(piece_id) or kind not in KINDS:
            raise BadRequest(f"no piece {piece_id!r}.{kind}: ids are 32 hex digits, files .mid, .wav or .png", status=404)
        midi = self.root / f"{piece_id}.mid"
        if not (self.root / f"{piece_id}.json").exists():
            raise BadRequest(f"no piece {piece_id} (unknown, or rotated out of the newest {self.keep})", status=404)
        if kind == "mid":
            return midi
        target = self.root / f"{piece_id}.{kind}"
        if not target.exists():
            with self.render_locks[kind]:
                if not target.exists():
                    self._render(midi, target, kind)
        return target

    def _render(self, midi: Path, target: Path, kind: str) -> None:
        if kind == "png":

            piano_roll(midi, target, title=f"piece {midi.stem[:8]}")
            return

        try:
            render_wav(midi, target)
        except PianolaError as e:  # no FluidSynth or SoundFont here: the piece is fine, the service cannot play it
            raise BadRequest(f"cannot render {midi.stem}.wav: {e}", status=503) from e

    def record(self, piece_id: str) -> dict:
        self.path(piece_id, "mid")
        return json.loads((self.root / f"{piece_id}.json").read_text())

    def latest(self, limit: int) -> list[dict]:
        """The newest `limit` pieces' records, newest first."""
        found = sorted(self.root.glob("*.json"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        records = []
        for path in found[:limit]:
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError):  # pruned meanwhile
                continue
        return records

    def prune(self) -> int:
        """Delete all but the newest `keep` pieces, looked for once every `keep // 10` saves (so at most
        keep + keep // 10 are ever stored); how many went."""
        if self.saves - self.pruned_at < max(1, self.keep // 10):
            return 0
        self.pruned_at = self.saves
        found = sorted(self.root.glob("*.json"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for path in found[self.keep :]:
            for kind in ("json", *KINDS):
                (self.root / f"{path.stem}.{kind}").unlink(missing_ok=True)
        return max(0, len(found) - self.keep)


class InferenceLog:
    """Append-only, rotated JSON-lines log of requests, written off the request path."""

    def __init__(self, path: str | os.PathLike, max_bytes: int = 20_000_000, backups: int = 5) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.backups = backups
        repair(self.path)
        self.queue: queue.Queue[dict | None] = queue.Queue()
        self.thread = threading.Thread(target=self._write_all, name="pianola-log", daemon=True)
        self.thread.start()

    def append(self, record: dict) -> None:
        """Queue `record` (JSON-ready) for the log; returns at once."""
        self.queue.put(record)

    def close(self) -> None:
        """Write what is queued, then stop."""
        self.queue.put(None)
        self.thread.join()

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every record queued so far is written."""
        done = threading.Event()
        self.queue.put({"_flush": done})
        done.wait(timeout)

    def _write_all(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while (record := self.queue.get()) is not None:
                if "_flush" in record:
                    record["_flush"].set()
                    continue
                try:
                    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
                except (TypeError, ValueError):
                    log.exception("inference log: a record is not JSON; dropped")
                    continue
                os.write(fd, line)  # one write of one whole line, appended
                if os.fstat(fd).st_size >= self.max_bytes:
                    os.fsync(fd)
                    os.close(fd)
                    self._rotate()
                    fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        finally:
            os.fsync(fd)
            os.close(fd)

    def _rotate(self) -> None:
        for i in range(self.backups - 1, 0, -1):
            older = rotated(self.path, i)
            if older.exists():
                os.replace(older, rotated(self.path, i + 1))
        os.replace(self.path, rotated(self.path, 1))


def rotated(path: Path, i: int) -> Path:
    return path.with_name(f"{path.stem}.{i}{path.suffix}")


def repair(path: Path) -> None:
    """Cut a last line left unfinished by a crash, so the log holds whole records only."""
    if not path.exists() or not path.stat().st_size:
        return
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return
        while end > 0:  # back from the end, a block at a time, to the last newline
            start = max(0, end - 65536)
            f.seek(start)
            cut = f.read(end - start).rfind(b"\n")
            if cut >= 0:
                f.truncate(start + cut + 1)
                return
            end = start
        f.truncate(0)


def log_files(path: str | os.PathLike) -> list[Path]:
    """A log's rotated files, oldest first, then the log itself."""
    path = Path(path)
    numbered = []
    for file in path.parent.glob(f"{path.stem}.*{path.suffix}"):
        number = file.name[len(path.stem) + 1 : -len(path.suffix)]
        if number.isdigit():
            numbered.append((int(number), file))
    return [file for _, file in sorted(numbered, reverse=True)] + [path]


def read_log(path: str | os.PathLike, since: float | None = None) -> Iterator[dict]:
    """The records of a log and its rotated files, oldest first (`since`: a UNIX time, records after it)."""
    for file in log_files(path):
        if not file.exists():
            continue
        with open(file, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break  # being written
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if since is None or record.get("time", 0) > since:
                    yield record
