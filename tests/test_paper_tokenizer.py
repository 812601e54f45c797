"""The `paper` tokenizer against music21, the parser the paper used (and the normal-order table)."""

from __future__ import annotations

import random
import subprocess
import sys
from multiprocessing import Pool
from pathlib import Path

import pytest
import symusic

from conftest import make_midi, scale_notes
from pianola.errors import PianolaError
from pianola.tokenizers import get_tokenizer
from pianola.tokenizers.normal_order import (
    N_SETS,
    music21_normal_order,
    normal_order_table,
)
from pianola.tokenizers.paper import PaperTokenizer
from pianola.tokenizers.reference import agreement, music21_tokens

# small pieces (about 4,600 tokens, 10-20 s of music21) that exercise ties over barlines, triplets,
# three tracks, time-signature changes and measures music21 stretches after splitting chords
SUBSET = (
    "chpn-p1.mid",
    "chpn-p2.mid",
    "chpn-p3.mid",
    "chpn-p9.mid",
    "chpn-p10.mid",
    "chpn-p14.mid",
    "chpn-p18.mid",
    "chpn-p20.mid",
    "elise.mid",
    "mond_1.mid",
    "waldstein_2.mid",
)


def write_tracks(
    path: Path,
    tracks: list[list[tuple[int, int, int]]],
    *,
    tpq: int = 480,
    drum_tracks: tuple[int, ...] = (),
    time_signatures: tuple[tuple[int, int, int], ...] = (),
) -> Path:
    """A MIDI file with one track per list of (start_tick, duration_ticks, pitch) notes."""
    score = symusic.Score(tpq)
    for time, numerator, denominator in time_signatures:
        score.time_signatures.append(symusic.TimeSignature(time, numerator, denominator))
    for i, notes in enumerate(tracks):
        track = symusic.Track(name=f"track {i}", program=0, is_drum=i in drum_tracks)
        for start, duration, pitch in notes:
            track.notes.append(symusic.Note(start, duration, pitch, 80))
        score.tracks.append(track)
    score.dump_midi(str(path))
    return path


def write_raw_track(path: Path, events: list[tuple[int, ...]], tpq: int = 96) -> Path:
    """A format-0 MIDI file of raw (delta ticks < 128, status byte, data bytes...) events."""
    body = b"".join(bytes(event) for event in events) + b"\x00\xff\x2f\x00"
    header = b"MThd" + (6).to_bytes(4, "big") + (0).to_bytes(2, "big") + (1).to_bytes(2, "big")
    path.write_bytes(header + tpq.to_bytes(2, "big") + b"MTrk" + len(body).to_bytes(4, "big") + body)
    return path


def assert_like_music21(path: Path) -> list[str]:
    """Our tokens of `path`, checked to be exactly music21's."""
    ours = PaperTokenizer().encode(path)
    assert ours == music21_tokens(path)
    return ours


# --- agreement with music21 on the corpus -------------------------------------------------------


def test_agreement_on_corpus_subset(corpus_dir: Path) -> None:
    files = [corpus_dir / name for name in SUBSET]
    reference = [music21_tokens(f) for f in files]
    ours = [PaperTokenizer().encode(f) for f in files]
    assert agreement(reference, ours) >= 0.99


@pytest.mark.slow
def test_agreement_on_whole_corpus(corpus_dir: Path) -> None:
    files = sorted(corpus_dir.glob("*.mid"))
    assert len(files) == 86
    with Pool(2) as pool:
        reference = pool.map(music21_tokens, files)
    ours = [PaperTokenizer().encode(f) for f in files]
    assert agreement(reference, ours) >= 0.99


def test_agreement_counts_matched_tokens() -> None:
    assert agreement([["a", "b", "c", "d"]], [["a", "b", "c", "d"]]) == 1.0
    assert agreement([["a", "b", "c", "d"]], [["a", "x", "c", "d", "e"]]) == 0.75
    assert agreement([["a", "b"], ["c", "d"]], [["a", "b"], []]) == 0.5
    with pytest.raises(ValueError, match="2 reference files but 1"):
        agreement([["a"], ["b"]], [["a"]])


# --- small hand-made files, compared with music21 directly --------------------------------------


def test_note_spelling(tmp_path: Path) -> None:
    path = make_midi(tmp_path / "chromatic.mid", [(i * 240, 240, 58 + i) for i in range(15)])
    tokens = assert_like_music21(path)
    assert tokens == [
        "B-3", "B3", "C4", "C#4", "D4", "E-4", "E4", "F4", "F#4", "G4", "G#4", "A4", "B-4", "B4", "C5",
    ]  # fmt: skip


def test_extreme_pitches_are_spelled_like_music21(tmp_path: Path) -> None:
    path = make_midi(tmp_path / "range.mid", [(i * 240, 240, p) for i, p in enumerate((0, 3, 10, 21, 108, 127))])
    assert assert_like_music21(path) == ["C-1", "E--1", "B--1", "A0", "C8", "G9"]


def test_chord_tokens(tmp_path: Path) -> None:
    chords = [(60, 64, 67), (62, 66, 69, 72), (52, 60, 67), (48, 60), (61, 65, 68)]
    notes = [(i * 480, 480, p) for i, chord in enumerate(chords) for p in chord]
    path = make_midi(tmp_path / "chords.mid", notes)
    assert assert_like_music21(path) == ["0.4.7", "6.9.0.2", "0.4.7", "0", "1.5.8"]


def test_notes_within_a_sixteenth_make_one_chord(tmp_path: Path) -> None:
    # onsets and ends within tpq/4 ticks of the first note's gather into a chord; a different end
    # leaves the note on its own
    notes = [(0, 480, 60), (60, 480, 64), (110, 470, 67), (960, 480, 62), (1000, 960, 65)]
    path = make_midi(tmp_path / "spread.mid", notes)
    assert assert_like_music21(path) == ["0.4.7", "D4", "F4"]


def test_tracks_interleave_by_offset_and_never_make_chords_together(tmp_path: Path) -> None:
    melody = [(i * 480, 480, 72 + i) for i in range(4)]
    bass = [(i * 480, 480, 48 + i) for i in range(4)]
    path = write_tracks(tmp_path / "two.mid", [melody, bass])
    assert assert_like_music21(path) == ["C5", "C3", "C#5", "C#3", "D5", "D3", "E-5", "E-3"]


def test_copied_tracks_repeat_each_token(tmp_path: Path) -> None:
    path = make_midi(tmp_path / "copies.mid", scale_notes(8), tracks=2)
    tokens = assert_like_music21(path)
    assert tokens[0::2] == tokens[1::2] == ["C4", "D4", "E4", "F4", "G4", "A4", "B4", "C5"]


def test_drum_tracks_are_ignored(tmp_path: Path) -> None:
    assert PaperTokenizer().encode(make_midi(tmp_path / "drums.mid", scale_notes(8), drum=True)) == []
    piano = scale_notes(8)
    drums = [(i * 240, 120, 36 + i % 3) for i in range(16)]
    path = write_tracks(tmp_path / "band.mid", [piano, drums], drum_tracks=(1,))
    assert assert_like_music21(path) == [f"{n}{o}" for n, o in zip("CDEFGABC", "44444445", strict=True)]


def test_ties_grace_notes_triplets_and_meter_changes_follow_music21(tmp_path: Path) -> None:
    tpq = 480
    right = [
        (tpq, 3 * tpq, 67),  # tied over the 3/4 barline: two tokens
        (4 * tpq, 6 * tpq, 64), (4 * tpq, 6 * tpq, 60),  # a chord tied over two barlines
        (6 * tpq, 0, 71),  # zero length: a grace note, first at its offset
        (6 * tpq, tpq // 3, 72), (6 * tpq + tpq // 3, tpq // 3, 74), (6 * tpq + 2 * tpq // 3, tpq // 3, 76),
        (7 * tpq + 7, tpq - 7, 77),  # a slightly late onset, quantized onto the beat
        (8 * tpq, 3 * tpq, 79), (8 * tpq, tpq, 83),  # same onset, other ends: voices
        (9 * tpq, 2 * tpq, 81),
    ]  # fmt: skip
    left = [(i * tpq, tpq, 48 + (i % 5)) for i in range(12)]
    path = write_tracks(
        tmp_path / "rules.mid", [right, left], tpq=tpq, time_signatures=((0, 3, 4), (9 * tpq, 2, 4))
    )
    tokens = assert_like_music21(path)
    assert tokens.count("G4") == 2 and tokens.count("0.4") == 3


def test_measure_stretched_by_a_split_chord_like_music21(tmp_path: Path) -> None:
    # 2/4, a tempo change exactly at the last barline (music21 then caches every measure's length)
    # and a chord tied over the first barline: music21 misses that the chord got shorter, keeps
    # the first measure 3 quarters long, and every later note of that part comes a quarter late
    tpq = 480
    score = symusic.Score(tpq)
    score.time_signatures.append(symusic.TimeSignature(0, 2, 4))
    score.tempos.append(symusic.Tempo(0, 100.0))
    score.tempos.append(symusic.Tempo(4 * tpq, 90.0))
    chords = symusic.Track(name="chords", program=0)
    for start, duration, pitches in ((0, tpq, (60, 64)), (tpq, 2 * tpq, (62, 65)), (3 * tpq, tpq, (64, 67))):
        for pitch in pitches:
            chords.notes.append(symusic.Note(start, duration, pitch, 80))
    bass = symusic.Track(name="bass", program=0)
    for i in range(4):
        bass.notes.append(symusic.Note(i * tpq, tpq, 36 + i, 80))
    score.tracks.extend([chords, bass])
    path = tmp_path / "stretched.mid"
    score.dump_midi(str(path))
    assert assert_like_music21(path) == ["0.4", "C2", "2.5", "C#2", "D2", "2.5", "E-2", "4.7"]


def test_format_0_file_mixing_channels(tmp_path: Path) -> None:
    # one MIDI track, two channels: music21 reads it as one part, so the channels' notes chord
    events = [
        (0, 0x90, 60, 80), (0, 0x91, 64, 80), (0, 0x90, 67, 80),
        (0x60, 0x80, 60, 0), (0, 0x81, 64, 0), (0, 0x80, 67, 0),
        (0, 0x91, 62, 80), (0x60, 0x81, 62, 0),
    ]  # fmt: skip
    assert assert_like_music21(write_raw_track(tmp_path / "format0.mid", events)) == ["0.4.7", "D4"]


def test_note_ons_share_the_next_note_off_like_music21(tmp_path: Path) -> None:
    # a second note-on of a sounding pitch, then a single note-off: music21 ends both notes there
    events = [
        (0, 0x90, 60, 80), (0, 0x91, 48, 80), (0x30, 0x90, 60, 80),
        (0x30, 0x80, 60, 0), (0, 0x81, 48, 0), (0, 0x90, 62, 80), (0x60, 0x80, 62, 0),
    ]  # fmt: skip
    path = write_raw_track(tmp_path / "shared-off.mid", events)
    assert assert_like_music21(path) == ["0", "C4", "D4"]


def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "not-midi.mid"
    path.write_bytes(b"RIFF....")
    with pytest.raises(PianolaError, match="not-midi.mid"):
        PaperTokenizer().encode(path)
    with pytest.raises(PianolaError, match="missing.mid"):
        PaperTokenizer().encode(tmp_path / "missing.mid")


def test_tokenizer_is_registered() -> None:
    tokenizer = get_tokenizer("paper")
    assert isinstance(tokenizer, PaperTokenizer)
    assert tokenizer.config() == {"name": "paper"}


def test_import_needs_neither_music21_nor_tensorflow() -> None:
    code = "import sys, pianola.tokenizers.paper; print(sorted({'music21', 'tensorflow'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- decode ----------------------------------------------------------------------------------


def test_decode_places_a_token_every_half_quarter() -> None:
    score = PaperTokenizer().decode(["C4", "0.4.7", "<unk>", "E-5", "11.2"], tempo_qpm=90.0)
    assert score.ticks_per_quarter == 480
    assert [round(t.qpm, 3) for t in score.tempos] == [90.0]
    (track,) = score.tracks
    assert track.program == 0 and not track.is_drum
    notes = sorted((n.time, n.pitch, n.duration) for n in track.notes)
    assert notes == [
        (0, 60, 240),
        (240, 60, 240), (240, 64, 240), (240, 67, 240),  # chords rebuilt in octave 4
        (480, 75, 240),  # <unk> took no step
        (720, 62, 240), (720, 71, 240),
    ]  # fmt: skip


def test_encode_of_decode_gives_back_note_tokens(tmp_path: Path) -> None:
    tokens = ["C4", "E-4", "G#3", "B-5", "C#6", "A0", "0.4.7", "2.5.9", "F#2", "B1"]
    path = tmp_path / "decoded.mid"
    PaperTokenizer().decode(tokens).dump_midi(str(path))
    assert PaperTokenizer().encode(path) == tokens


def test_decode_of_nothing_is_an_empty_piano_score() -> None:
    score = PaperTokenizer().decode(["<unk>", "<pad>"])
    assert len(score.tracks) == 1 and len(score.tracks[0].notes) == 0


# --- the shipped normal-order table -------------------------------------------------------------


def test_normal_order_table_matches_music21_on_a_sample() -> None:
    table = normal_order_table()
    assert len(table) == N_SETS and table[0] == ""
    sample = random.Random(0).sample(range(1, N_SETS), 150) + [1, 0b100010010001, N_SETS - 1]
    for mask in sample:
        assert table[mask] == music21_normal_order(mask), f"pitch-class set {mask:012b}"
