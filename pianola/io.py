"""Atomic file writes used by every stage.

A reader never sees a half-written file: data goes to a temporary file beside the target,
is flushed to disk, then renamed over it (rename is atomic on POSIX file systems). A folder is
written whole into a staging folder beside it, then swapped in: the previous folder is renamed
aside, the new one renamed in, and only then is the previous one deleted.

A killed writer (SIGKILL, power cut) leaves only names of its own beside the target:
`.NAME.XXXXXXXX.tmp`, a temporary file or staging folder, and `.NAME.XXXXXXXX.old.tmp`, a previous
folder renamed aside (killed between the two renames of a swap: NAME itself is then missing). The
first atomic write into that folder by a later process cleans them up: it removes the temporary
files and staging folders and puts a folder renamed aside back where NAME is missing, else removes
it. A writer holds an advisory lock (flock) on its temporary file or staging folder while it works,
so only what a dead writer left is touched and writers running at once stay safe (without flock,
on Windows, the clean-up assumes one writer per folder at a time).

A write that fails (a full disk, a quota, a read-only file system, permissions) raises WriteFailed,
a PianolaError that names the target and the reason: the previous file or folder is kept and the
temporary one removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from pianola.errors import PianolaError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

TMP = ".tmp"
ASIDE = ".old"
# mkstemp/mkdtemp(prefix=".NAME.", suffix=".tmp"): 8 random characters of tempfile's alphabet.
LEFTOVER = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}(?P<aside>\.old)?\.tmp")


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp and mkdtemp make private files (0600, 0700); the outputs get the modes open() and mkdir() would give.
_FILE_MODE = 0o666 & ~_current_umask()
_FOLDER_MODE = 0o777 & ~_current_umask()


class WriteFailed(PianolaError):
    """A file or folder could not be written; the previous one, if any, is kept."""

    def __init__(self, target: Path, reason: str, folder: bool = False, aside: Path | None = None) -> None:
        self.target, self.reason = target, reason
        kind = "folder" if folder else "file"
        if target.exists():
            kept = f"the previous {kind} is kept"
        elif aside is not None and aside.exists():  # the swap failed and so did putting it back
            kept = f"the previous {kind} is kept as {aside.name}; the next write beside it puts it back"
        else:
            kept = "nothing was written"
        super().__init__(f"cannot write {target}: {reason}; {kept}")


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it over `target`.

    The body writes the path by name (it exists, empty). An OSError from the body, or from writing the
    file to disk, is a WriteFailed naming `target`; the previous file is kept.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_leftovers(target.parent, once=True)
        fd, tmp_path = _locked(lambda: tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP, dir=target.parent))
    except OSError as e:
        raise WriteFailed(target, _reason(e)) from e
    try:
        try:
            yield tmp_path
            os.chmod(tmp_path, _FILE_MODE)
            os.fsync(fd)  # on the disk before the rename: a crash leaves the old file or the new one, never an empty one
            os.replace(tmp_path, target)
        except OSError as e:
            raise WriteFailed(target, _reason(e)) from e
    finally:
        tmp_path.unlink(missing_ok=True)  # before the lock goes: a clean-up never sees it unlocked
        os.close(fd)


@contextmanager
def scratch_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target` (`.NAME.XXXXXXXX.tmp`, locked while in use), removed at
    the end: room for the pieces a writer of `target` puts together. What a killed writer leaves is cleaned by
    the next write beside it, as any temporary file."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_leftovers(target.parent, once=True)
        fd, folder = _locked(lambda: (None, tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TMP, dir=target.parent)))
    except OSError as e:
        raise WriteFailed(target, _reason(e), folder=True) from e
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if fd is not None:
            os.close(fd)


@contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside `target`; on success it replaces `target` whole.

    At every instant `target` is the previous folder or the new one, except between the two renames of the
    swap, when the previous one is `.NAME.XXXXXXXX.old.tmp` beside it (put back by the next write into the
    folder if a kill stops it there). A failure is a WriteFailed naming `target`; the previous folder is kept.
    """
    target = Path(target)
    with scratch_folder(target) as staging:
        try:
            yield staging
            os.chmod(staging, _FOLDER_MODE)
            _swap_in(staging, target)
        except OSError as e:
            raise WriteFailed(target, _reason(e), folder=True, aside=_aside(staging)) from e
        except WriteFailed as e:  # a file of the folder: the folder is what failed
            raise WriteFailed(target, e.reason, folder=True) from e


def _aside(staging: Path) -> Path:
    """Where a swap renames the previous folder: `.NAME.XXXXXXXX.old.tmp` for staging `.NAME.XXXXXXXX.tmp`."""
    return staging.with_name(staging.name[: -len(TMP)] + ASIDE + TMP)


def _swap_in(staging: Path, target: Path) -> None:
    """Rename `target` aside, `staging` to `target`, then delete the previous folder."""
    aside = _aside(staging)
    moved = target.exists() or target.is_symlink()
    if moved:
        os.replace(target, aside)
    try:
        os.replace(staging, target)
    except OSError:
        if moved and not target.exists():
            try:
                os.replace(aside, target)
            except OSError:  # left aside: the next write into the folder puts it back
                with _cleaned_lock:
                    _cleaned.discard(os.path.abspath(target.parent))
        raise
    if moved:
        _remove(aside)


def _locked(create: Callable[[], tuple[int | None, str]]) -> tuple[int | None, Path]:
    """Create a temporary file or folder and lock it (flock, held while the descriptor is open); its descriptor
    (None for a folder without locks) and path. Retried in the rare case a clean-up removed it between its
    creation and the lock. Where the file system has no locks the write goes on unlocked (and what a killed
    writer leaves there stays: see _abandoned)."""
    while True:
        fd, path = create()
        path = Path(path)
        if fcntl is None:
            return fd, path
        try:
            if fd is None:
                fd = os.open(path, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            return fd, path
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd, path
        except FileNotFoundError:
            pass
        os.close(fd)


def _abandoned(path: Path) -> bool:
    """Is no live writer holding `path` (its temporary file or staging folder)? No where it cannot be told."""
    if fcntl is None:
        return True  # one writer per folder at a time is assumed
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False  # gone already, or not ours to open
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False  # held (or no locks on this file system)
    finally:
        os.close(fd)  # releases the probe's lock


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


_cleaned: set[str] = set()
_cleaned_lock = threading.Lock()


def clean_leftovers(folder: str | os.PathLike, *, once: bool = False) -> list[str]:
    """Tidy what killed atomic writes left in `folder`: remove their temporary files and staging folders, and
    put a previous folder renamed aside back where its target is missing (else remove it). What a live writer
    holds is left alone. `once`: only on the first call for `folder` in this process (every atomic write calls
    it so). The names handled."""
    folder = Path(folder)
    if once:
        key = os.path.abspath(folder)
        with _cleaned_lock:
            if key in _cleaned:
                return []
            _cleaned.add(key)
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    handled = []
    # Folders renamed aside first: whether one goes back depends on its staging folder, removed after.
    for name in sorted(names, key=lambda n: not n.endswith(ASIDE + TMP)):
        found = LEFTOVER.fullmatch(name)
        if not found:
            continue
        path = folder / name
        try:
            if found["aside"]:
                staging = path.with_name(name[: -len(ASIDE + TMP)] + TMP)
                if staging.exists() and not _abandoned(staging):
                    continue  # a live writer is between the two renames of its swap
                target = folder / found["name"]
                if not (target.exists() or target.is_symlink()):
                    os.replace(path, target)  # the swap was killed halfway: the previous folder goes back
                else:
                    _remove(path)
            elif _abandoned(path):
                _remove(path)
            else:
                continue
        except OSError:
            continue  # tidying is best effort: the write itself goes on
        handled.append(name)
    return handled


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `target` atomically."""
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, encoded straight into the file: a large object (the manifest of a corpus of
    20,000 files) is never held whole as one string, nor as the many pieces the indenting encoder joins."""
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def atomic_write_with(target: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Atomically write `target` with a callback given an open binary file."""
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        write(f)
