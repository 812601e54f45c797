"""The benchmark readers: the real .mat files as distributed, the original pickle form, and every malformed file."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from pianola.benchmark.data import load_rolls
from pianola.errors import PianolaError
from pianola.midi import KEYS, LOWEST_PITCH


def cells(*pieces: np.ndarray) -> np.ndarray:
    """A (1, pieces) object array, as MATLAB cell arrays come out of loadmat."""
    out = np.empty((1, len(pieces)), dtype=object)
    for i, piece in enumerate(pieces):
        out[0, i] = piece
    return out


def roll(frames: int, *on: tuple[int, int]) -> np.ndarray:
    """A (frames, 88) uint8 roll with 1 at each (frame, MIDI pitch) of `on`."""
    out = np.zeros((frames, KEYS), dtype=np.uint8)
    for frame, pitch in on:
        out[frame, pitch - LOWEST_PITCH] = 1
    return out


def write_pickle(path: Path, contents: object) -> Path:
    path.write_bytes(pickle.dumps(contents, protocol=2))  # protocol 2: what Python 2 wrote
    return path


@pytest.mark.parametrize(
    "file, name, train, valid",
    [
        ("JSB_Chorales.mat", "jsb", (229, 13_807), (76, 4_602)),
        ("Piano_midi.mat", "piano-midi", (87, 75_911), (12, 8_540)),
        ("Nottingham.mat", "nottingham", (694, 176_561), (173, 45_513)),
        ("MuseData.mat", "musedata", (524, 245_202), (135, 82_755)),
    ],
)
def test_real_mat_files_match_the_published_counts(poly_dir: Path, file: str, name: str, train: tuple, valid: tuple) -> None:
    dataset = load_rolls(poly_dir / file)
    assert dataset.name == name
    assert list(dataset.splits) == ["train", "valid"]  # this copy holds no test split
    summary = dataset.summary()
    assert (summary["train"]["pieces"], summary["train"]["frames"]) == train
    assert (summary["valid"]["pieces"], summary["valid"]["frames"]) == valid
    assert 1 < summary["train"]["notes_per_frame"] < 5
    piece = dataset.split("train")[0]
    assert piece.dtype == bool and piece.shape[1] == KEYS


def test_jsb_chorales_are_four_voices_at_most(poly_dir: Path) -> None:
    pieces = load_rolls(poly_dir / "JSB_Chorales.mat").split("valid")
    assert max(int(p.sum(axis=1).max()) for p in pieces) == 4
    assert sum(int(p.sum()) for p in pieces) == 17_811


def test_missing_split_names_the_file_and_the_splits_it_has(poly_dir: Path) -> None:
    path = poly_dir / "JSB_Chorales.mat"
    with pytest.raises(PianolaError, match="no 'test' split") as e:
        load_rolls(path).split("test")
    assert str(path) in str(e.value) and "train, valid" in str(e.value)


def test_mat_test_split_is_read_when_present(tmp_path: Path) -> None:
    path = tmp_path / "Piano_midi.mat"
    scipy.io.savemat(path, {
        "traindata": cells(roll(3, (0, 60), (1, 60), (2, 64)), roll(2, (1, 21), (1, 108))),
        "validdata": cells(roll(1, (0, 70))),
        "testdata": cells(roll(4, (0, 60), (0, 64), (0, 67)), roll(1)),
    })
    dataset = load_rolls(path)
    assert dataset.name == "piano-midi" and dataset.path == path
    assert list(dataset.splits) == ["train", "valid", "test"]
    test = dataset.split("test")
    assert [p.shape for p in test] == [(4, KEYS), (1, KEYS)]
    assert np.flatnonzero(test[0][0]).tolist() == [60 - 21, 64 - 21, 67 - 21] and not test[1].any()
    assert dataset.summary()["test"] == {"pieces": 2, "frames": 5, "notes": 3, "notes_per_frame": 3 / 5}
    assert np.flatnonzero(dataset.split("train")[1][1]).tolist() == [0, 87]  # the lowest and highest keys


def test_pickle_form_reads_unordered_and_repeated_pitches(tmp_path: Path) -> None:
    path = write_pickle(tmp_path / "JSB Chorales.pickle", {
        "train": [[[60, 64, 67], [67, 60, 60], [], (72,)]],
        "valid": [[[21, 108]]],
        "test": [[[62], [62]], [[55]]],
    })
    dataset = load_rolls(path)
    assert dataset.name == "jsb"
    first = dataset.split("train")[0]
    assert first.dtype == bool and first.shape == (4, KEYS)
    assert [(np.flatnonzero(f) + LOWEST_PITCH).tolist() for f in first] == [[60, 64, 67], [60, 67], [], [72]]
    assert {s: v["pieces"] for s, v in dataset.summary().items()} == {"train": 1, "valid": 1, "test": 2}


def test_latin1_python2_pickle_is_read(tmp_path: Path) -> None:
    # What Python 2's cPickle wrote for {'train': [[[60, 64]]], 'note': 'caf\xe9'}: byte strings
    # (SHORT_BINSTRING), one of them not ASCII, which Python 3's default encoding refuses.
    py2 = b"\x80\x02}q\x00U\x05trainq\x01]q\x02]q\x03]q\x04(K<K@eaasU\x04noteU\x04caf\xe9s."
    path = tmp_path / "Nottingham.pickle"
    path.write_bytes(py2)
    dataset = load_rolls(path)
    assert dataset.name == "nottingham"
    assert (np.flatnonzero(dataset.split("train")[0][0]) + LOWEST_PITCH).tolist() == [60, 64]


class Payload:
    """A pickled call: loading it would call `print` (it could as well be os.system)."""

    def __reduce__(self):
        return (print, ("this must never run",))


class Piece:
    """An instance of an arbitrary class, pickled through copyreg."""

    def __init__(self) -> None:
        self.frames = [[60]]


def test_pickle_holding_a_call_is_refused(tmp_path: Path, capsys) -> None:
    path = write_pickle(tmp_path / "evil.pickle", {"train": [[[60]]], "valid": Payload()})
    with pytest.raises(PianolaError, match=r"refusing to load (__builtin__|builtins)\.print") as e:
        load_rolls(path)
    assert str(e.value).startswith(f"{path}: ")
    assert "never run" not in capsys.readouterr().out


def test_pickle_holding_a_class_instance_is_refused(tmp_path: Path) -> None:
    path = write_pickle(tmp_path / "class.pickle", {"train": [Piece()]})
    with pytest.raises(PianolaError, match=r"refusing to load test_benchmark_data\.Piece"):
        load_rolls(path)


def test_python2_builtin_containers_are_allowed(tmp_path: Path) -> None:
    # Python 2 wrote a set as a call of __builtin__.set; frames may come as sets in hand-made files.
    path = write_pickle(tmp_path / "sets.pickle", {"train": [[tuple({64, 60})]], "valid": [[list({67})]]})
    assert b"__builtin__" not in path.read_bytes()  # plain containers need no global at all
    path = write_pickle(tmp_path / "sets2.pickle", {"train": [[[60]]], "valid": {1, 2}})
    assert b"__builtin__\nset" in path.read_bytes()
    with pytest.raises(PianolaError, match="key 'valid' should be a list of pieces, got a set"):
        load_rolls(path)  # the set is rebuilt (allowed), then rejected as a split


def test_pickle_holding_numpy_is_refused(tmp_path: Path) -> None:
    path = write_pickle(tmp_path / "np.pkl", {"train": [np.zeros((2, KEYS))]})
    with pytest.raises(PianolaError, match="refusing to load numpy"):
        load_rolls(path)


@pytest.mark.parametrize(
    "contents, message",
    [
        ({"training": []}, "none of the keys train, valid, test is in this pickle (keys: 'training')"),
        ([1, 2], "holds a dict"),
        ({"train": {"a": 1}}, "key 'train' should be a list of pieces, got a dict"),
        ({"train": []}, "key 'train' holds no pieces"),
        ({"train": [[[60]], 5]}, "key 'train', piece 1: a piece should be a list of frames, got a int"),
        ({"train": [[[60]]], "valid": [[[60]], []]}, "key 'valid', piece 1: the piece has no frames"),
        ({"train": [[[60], 60]]}, "key 'train', piece 0, frame 1: a frame should be a list of MIDI pitches"),
        ({"train": [[[60]]], "test": [[[60], [64, 109]]]}, "key 'test', piece 0, frame 1: 109 is not a MIDI pitch in 21..108"),
        ({"train": [[[20]]]}, "key 'train', piece 0, frame 0: 20 is not a MIDI pitch"),
        ({"train": [[[60.0]]]}, "key 'train', piece 0, frame 0: 60.0 is not a MIDI pitch"),
        ({"train": [[[True]]]}, "key 'train', piece 0, frame 0: True is not a MIDI pitch"),
    ],
)
def test_malformed_pickle_names_the_file_and_the_place(tmp_path: Path, contents: object, message: str) -> None:
    path = write_pickle(tmp_path / "bad.pickle", contents)
    with pytest.raises(PianolaError) as e:
        load_rolls(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)


@pytest.mark.parametrize(
    "contents, message",
    [
        ({"train": cells(roll(2))},
         "none of the keys traindata, validdata, testdata is in this file (keys: train)"),
        ({"traindata": np.ones((2, KEYS))},
         "key 'traindata' should be a (1, pieces) cell array of pieces, got shape (2, 88)"),
        ({"traindata": cells(roll(2)), "validdata": cells(roll(2), np.ones((3, 87)))},
         "key 'validdata', piece 1: a piece should be a (frames, 88) array, got shape (3, 87)"),
        ({"traindata": cells(roll(2), np.zeros((0, KEYS)))}, "key 'traindata', piece 1: the piece has no frames"),
        ({"traindata": cells(roll(2, (1, 60)) * 2)}, "key 'traindata', piece 0: a roll holds only 0 and 1, found [2]"),
        ({"traindata": cells(roll(2), np.full((1, KEYS), 0.5))},
         "key 'traindata', piece 1: a roll holds only 0 and 1, found [0.5]"),
        ({"testdata": cells(np.array([["a"] * KEYS]))}, "key 'testdata', piece 0: a roll holds only 0 and 1"),
    ],
)
def test_malformed_mat_names_the_file_and_the_key(tmp_path: Path, contents: dict, message: str) -> None:
    path = tmp_path / "bad.mat"
    scipy.io.savemat(path, contents)
    with pytest.raises(PianolaError) as e:
        load_rolls(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)


def test_a_float_01_mat_roll_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "floats.mat"
    scipy.io.savemat(path, {"traindata": cells(roll(2, (1, 60)).astype(float))})
    assert load_rolls(path).split("train")[0].sum() == 1


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("absent.mat", None, "no such file"),
        ("data.npz", b"PK\x03\x04", "expected a .mat or .pickle/.pkl file"),
        ("text.mat", b"hello, not a MAT file", "not a readable .mat file"),
        ("text.pkl", b"hello, not a pickle", "not a readable dataset pickle"),
        ("empty.pickle", b"", "not a readable dataset pickle"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path: Path, name: str, content: bytes | None, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PianolaError) as e:
        load_rolls(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)


@pytest.mark.parametrize(
    "file, name",
    [("Piano-midi.de.pickle", "piano-midi"), ("MuseData.mat", "musedata"), ("My_Own_Set.pkl", "my-own-set")],
)
def test_dataset_short_names(tmp_path: Path, file: str, name: str) -> None:
    path = tmp_path / file
    if path.suffix == ".mat":
        scipy.io.savemat(path, {"traindata": cells(roll(1))})
    else:
        write_pickle(path, {"train": [[[]]]})
    assert load_rolls(path).name == name
