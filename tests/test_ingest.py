"""Ingest: every bad input is rejected with a specific reason while the good ones land in the output folder.

Bad files are written by hand, byte by byte, beside good files made with make_midi.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import symusic

from conftest import make_midi, scale_notes
from pianola import io
from pianola.data.ingest import MANIFEST, ingest, safe_name
from pianola.data.sources import open_source
from pianola.data.sources.base import Source, SourceItem, SourceReadError
from pianola.data.sources.local import Music21Source, music21_to_midi
from pianola.errors import PianolaError
from pianola.midi.validate import validate_midi

END_OF_TRACK = bytes.fromhex("00 ff 2f 00")
ONE_NOTE = bytes.fromhex("00 90 3c 40 83 60 80 3c 00") + END_OF_TRACK  # C4 for a quarter at 480 tpq


def mtrk(events: bytes, *, length: int | None = None) -> bytes:
    """A track chunk; `length` overrides the true length to fake corruption."""
    return b"MTrk" + struct.pack(">I", len(events) if length is None else length) + events


def smf(*tracks: bytes, fmt: int = 1, ntracks: int | None = None, division: int = 480, header_len: int = 6) -> bytes:
    """A standard MIDI file from track chunks, with every header field overridable."""
    header = struct.pack(">HHH", fmt, len(tracks) if ntracks is None else ntracks, division)
    return b"MThd" + struct.pack(">I", header_len) + header + b"".join(tracks)


def events(hex_events: str) -> bytes:
    """A one-track file of the given events (hex), closed by an end-of-track."""
    return smf(mtrk(bytes.fromhex(hex_events) + END_OF_TRACK))


def good_bytes(tmp_path: Path, pitch: int = 60) -> bytes:
    return make_midi(tmp_path / f"scratch-{pitch}.mid", scale_notes(16, start_pitch=pitch)).read_bytes()


def folder_with_goods(tmp_path: Path) -> Path:
    """A source folder holding two distinct good files."""
    src = tmp_path / "src"
    make_midi(src / "good1.mid", scale_notes(16, start_pitch=60))
    make_midi(src / "good2.mid", scale_notes(16, start_pitch=48), tracks=2)
    return src


def manifest(out: Path) -> dict:
    return json.loads((out / MANIFEST).read_text())


def entry_for(out: Path, name: str) -> dict:
    [entry] = [e for e in manifest(out)["files"] if e["name"] == name]
    return entry


# (file name, bytes given the tmp folder, expected start of the reason)
BAD_BYTES: list[tuple[str, Callable[[Path], bytes], str]] = [
    ("random.mid", lambda t: random.Random(0).randbytes(600), "not MIDI: no MThd header"),
    ("empty.mid", lambda t: b"", "empty file"),
    ("truncated.mid", lambda t: good_bytes(t)[:60], "truncated: chunk 'MTrk' at byte 14 declares"),
    ("cut-in-header.mid", lambda t: good_bytes(t)[:11], "truncated: the MThd header is cut at 11 bytes"),
    ("zero-header.mid", lambda t: b"MThd\x00\x00\x00\x00" + mtrk(ONE_NOTE), "bad header length: 0"),
    ("long-header.mid", lambda t: smf(mtrk(ONE_NOTE), header_len=8), "bad header length: 8"),
    ("beyond.mid", lambda t: smf(mtrk(ONE_NOTE, length=0xFFFF_FF00)),
     "truncated: chunk 'MTrk' at byte 14 declares 4,294,967,040 bytes, only 13 remain"),
    ("missing-track.mid", lambda t: smf(mtrk(ONE_NOTE), ntracks=2),
     "truncated: the header declares 2 tracks, the file holds 1"),
    ("no-notes-meta.mid", lambda t: events("00 ff 03 04 53 6f 6c 6f"), "no notes"),  # only a track name
    ("no-notes.mid", lambda t: make_midi(t / "x" / "silent.mid", []).read_bytes(), "no notes"),
    ("drums.mid", lambda t: make_midi(t / "x" / "drums.mid", scale_notes(8, 36), drum=True).read_bytes(),
     "only drum notes (channel 10)"),
    ("velocity200.mid", lambda t: events("00 90 3c c8 83 60 80 3c 00"),
     "corrupt event: data byte 0xc8 > 127 in track 1 at byte 25"),
    ("orphan-data.mid", lambda t: events("00 3c 40"), "corrupt event: data byte 0x3c without a running status"),
    ("long-vlq.mid", lambda t: events("ff ff ff ff 7f 90 3c 40"), "corrupt event: variable-length quantity over 4 bytes"),
    ("meta-overrun.mid", lambda t: events("00 ff 03 50 61 62 63"),
     "corrupt event: meta event in track 1 at byte 23 declares 80 bytes, past the end of the track"),
    ("system-status.mid", lambda t: smf(mtrk(bytes.fromhex("00 f4") + ONE_NOTE)), "corrupt event: status 0xf4 is not allowed"),
    ("gzipped.mid", lambda t: gzip.compress(good_bytes(t)), "gzip-compressed data, not MIDI"),
    ("page.mid", lambda t: b"\n<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n", "looks like HTML, not MIDI"),
    ("score.mid", lambda t: b'<?xml version="1.0"?>\n<score-partwise version="4.0"/>', "looks like XML, not MIDI"),
    ("notes.mid", lambda t: "C4 E4 G4 — a melody, typed out\n".encode(), "looks like text, not MIDI"),
    ("riff.mid", lambda t: b"RIFF\x20\x00\x00\x00RMIDdata" + good_bytes(t)[:20], "RIFF-wrapped MIDI (.rmi)"),
    ("format7.mid", lambda t: smf(mtrk(ONE_NOTE), fmt=7), "unknown MIDI format 7 (expected 0, 1 or 2)"),
    ("no-tracks.mid", lambda t: smf(ntracks=0), "no tracks: the header declares 0 tracks"),
    ("format0-2tracks.mid", lambda t: smf(mtrk(ONE_NOTE), mtrk(ONE_NOTE), fmt=0), "bad header: format 0 declares 2 tracks"),
    ("smpte.mid", lambda t: smf(mtrk(ONE_NOTE), division=0xE728), "unsupported division: SMPTE time code"),
    ("division0.mid", lambda t: smf(mtrk(ONE_NOTE), division=0), "bad division: 0 ticks per quarter note"),
]


@pytest.mark.parametrize(("name", "make", "reason"), BAD_BYTES, ids=[b[0] for b in BAD_BYTES])
def test_bad_file_is_rejected_beside_good_files(tmp_path: Path, name: str, make: Callable[[Path], bytes], reason: str):
    src = folder_with_goods(tmp_path)
    (src / name).write_bytes(make(tmp_path))
    out = tmp_path / "out"

    report = ingest(str(src), out, progress=False)

    assert (report.ok, report.rejected) == (2, 1)
    assert sorted(p.name for p in out.iterdir()) == ["good1.mid", "good2.mid", MANIFEST]
    bad = entry_for(out, name)
    assert bad["status"] == "rejected"
    assert bad["reason"].startswith(reason), bad["reason"]


def test_hand_made_good_file_passes():
    assert validate_midi(smf(mtrk(ONE_NOTE), fmt=0), max_bytes=1000) is None
    # Running status carried across a meta event, and an unknown chunk type, are read as symusic reads them.
    running = bytes.fromhex("00 90 3c 40 00 ff 01 01 61 83 60 3c 00") + END_OF_TRACK
    alien = b"XFIH" + struct.pack(">I", 2) + b"ab"
    assert validate_midi(smf(alien, mtrk(running), ntracks=1), max_bytes=1000) is None


def test_symlinks_are_reported_not_followed(tmp_path: Path):
    src = folder_with_goods(tmp_path)
    elsewhere = make_midi(tmp_path / "elsewhere" / "other.mid", scale_notes(16, 72))
    (src / "link.mid").symlink_to(elsewhere)
    (src / "linked-folder").symlink_to(elsewhere.parent, target_is_directory=True)
    out = tmp_path / "out"

    report = ingest(str(src), out, progress=False)

    assert report.ok == 2
    assert entry_for(out, "link.mid")["reason"] == "symbolic link (not followed)"
    assert entry_for(out, "linked-folder")["reason"] == "symbolic link to a folder (not followed)"
    assert entry_for(out, "link.mid")["sha256"] is None  # never read
    assert not (out / "other.mid").exists()


def test_directory_named_like_midi_is_rejected_and_searched(tmp_path: Path):
    src = folder_with_goods(tmp_path)
    make_midi(src / "album.mid" / "inner.mid", scale_notes(16, 67))
    out = tmp_path / "out"

    report = ingest(str(src), out, progress=False)

    assert entry_for(out, "album.mid")["reason"] == "a directory, not a MIDI file"
    assert report.ok == 3
    assert (out / "album.mid_inner.mid").is_file()


def test_duplicate_content_is_rejected_naming_the_first_copy(tmp_path: Path):
    src = folder_with_goods(tmp_path)
    (src / "zz-copy.mid").write_bytes((src / "good1.mid").read_bytes())
    out = tmp_path / "out"

    report = ingest(str(src), out, progress=False)

    assert (report.ok, report.rejected) == (2, 1)
    copy = entry_for(out, "zz-copy.mid")
    assert copy["reason"] == "duplicate of good1.mid"
    assert copy["sha256"] == entry_for(out, "good1.mid")["sha256"]


def test_oversize_file_is_rejected_without_reading(tmp_path: Path):
    src = folder_with_goods(tmp_path)
    big = make_midi(src / "big.mid", [(i * 120, 120, 40 + i % 48) for i in range(2000)])
    cap = max((src / "good1.mid").stat().st_size, (src / "good2.mid").stat().st_size)
    out = tmp_path / "out"

    ingest(str(src), out, max_bytes=cap, progress=False)

    entry = entry_for(out, "big.mid")
    assert entry["reason"] == f"over the size cap: {big.stat().st_size:,} bytes > {cap:,}"
    assert entry["sha256"] is None
    # Sources that cannot size an item up front get the same answer from the validator.
    assert validate_midi(big.read_bytes(), max_bytes=cap) == entry["reason"]


def test_manifest_lists_every_input_with_its_fields(tmp_path: Path):
    src = folder_with_goods(tmp_path)
    (src / "sub").mkdir()
    (src / "sub" / "bad.mid").write_bytes(b"")
    (src / "readme.txt").write_text("not an input: no MIDI suffix")
    out = tmp_path / "out"

    report = ingest(str(src), out, progress=False)

    data = manifest(out)
    assert data["source"] == str(src)
    assert (data["ok"], data["rejected"]) == (report.ok, report.rejected) == (2, 1)
    assert [e["name"] for e in data["files"]] == ["good1.mid", "good2.mid", "sub/bad.mid"]
    for e in data["files"]:
        assert set(e) == {"name", "sha256", "source", "composer", "license", "status", "reason"}
        assert e["composer"] is None and e["license"] is None  # a bare folder says nothing about them
    good = entry_for(out, "good1.mid")
    assert good["status"] == "ok" and good["reason"] is None
    assert good["source"] == str(src / "good1.mid")
    assert good["sha256"] == hashlib.sha256((out / "good1.mid").read_bytes()).hexdigest()
    bad = entry_for(out, "sub/bad.mid")
    assert bad == {
        "name": "sub/bad.mid",
        "sha256": hashlib.sha256(b"").hexdigest(),
        "source": str(src / "sub" / "bad.mid"),
        "composer": None,
        "license": None,
        "status": "rejected",
        "reason": "empty file",
    }
    assert "2 MIDI files" in report.summary() and "1 rejected: 1 empty file" in report.summary()


def test_output_names_are_safe_and_unique(tmp_path: Path):
    src = tmp_path / "src"
    for i, rel in enumerate(["My Song (1).MIDI", "a/x.mid", "b/x.mid", "a b.mid", "a_b.mid", "Case.mid", "case.mid"]):
        make_midi(src / rel, scale_notes(8 + i))
    out = tmp_path / "out"

    ingest(str(src), out, progress=False)

    names = {e["source"]: e["name"] for e in manifest(out)["files"]}
    assert names == {
        str(src / "Case.mid"): "Case.mid",
        str(src / "My Song (1).MIDI"): "My_Song_1_.mid",
        str(src / "a b.mid"): "a_b.mid",
        str(src / "a_b.mid"): "a_b-2.mid",
        str(src / "case.mid"): "case-2.mid",  # would clash with Case.mid on a case-insensitive disk
        str(src / "a" / "x.mid"): "a_x.mid",
        str(src / "b" / "x.mid"): "b_x.mid",
    }
    assert safe_name("../../etc/passwd") == "etc_passwd.mid"
    assert safe_name(".hidden.mid") == "hidden.mid"
    assert safe_name("..") == "unnamed.mid"


def test_nothing_valid_raises_and_names_the_reasons(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.mid").write_bytes(b"")
    (src / "b.mid").write_bytes(b"")
    (src / "c.mid").write_bytes(b"<html></html>")

    with pytest.raises(PianolaError, match=r"no MIDI file ingested from .*src.*2 empty file, 1 looks like HTML"):
        ingest(str(src), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()

    for path in src.iterdir():
        path.unlink()
    with pytest.raises(PianolaError, match="holds no MIDI files"):
        ingest(str(src), tmp_path / "out", progress=False)


def test_failing_run_leaves_previous_output_intact(tmp_path: Path):
    out = tmp_path / "out"
    ingest(str(folder_with_goods(tmp_path)), out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "good1.mid").write_bytes(b"MThd\x00\x00\x00\x00")  # same name as a good output

    with pytest.raises(PianolaError):
        ingest(str(broken), out, progress=False)

    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_failed_write_leaves_no_temp_file_and_keeps_old_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    src = folder_with_goods(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "good1.mid").write_bytes(b"older content")

    def full_disk(a, b):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io.os, "replace", full_disk)
    with pytest.raises(PianolaError, match=r"cannot write .*good1\.mid: No space left on device"):
        ingest(str(src), out, progress=False)

    assert sorted(p.name for p in out.iterdir()) == ["good1.mid"]
    assert (out / "good1.mid").read_bytes() == b"older content"


def test_rerun_keeps_unchanged_files_and_removes_stale_ones(tmp_path: Path):
    src = folder_with_goods(tmp_path)
    out = tmp_path / "out"
    ingest(str(src), out, progress=False)
    first_inode = (out / "good1.mid").stat().st_ino
    (out / "stale.mid").write_bytes(b"from an older run")
    (out / ".good2.mid.abc123.tmp").write_bytes(b"left by a killed run")
    (out / "README.md").write_text("not ours to delete")
    make_midi(src / "good2.mid", scale_notes(20, 50))  # changed at the source

    report = ingest(str(src), out, progress=False)

    assert (report.written, report.unchanged) == (1, 1)
    assert sorted(report.removed) == [".good2.mid.abc123.tmp", "stale.mid"]
    assert (out / "good1.mid").stat().st_ino == first_inode  # not rewritten
    assert (out / "good2.mid").read_bytes() == (src / "good2.mid").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "good1.mid", "good2.mid", MANIFEST]


def test_limit_stops_after_that_many_ok_files(tmp_path: Path):
    src = tmp_path / "src"
    (src).mkdir()
    (src / "a-empty.mid").write_bytes(b"")
    for i in range(5):
        make_midi(src / f"b{i}.mid", scale_notes(10 + i))
    out = tmp_path / "out"

    report = ingest(str(src), out, limit=2, progress=False)

    assert (report.ok, report.rejected) == (2, 1)
    assert [e["name"] for e in manifest(out)["files"]] == ["a-empty.mid", "b0.mid", "b1.mid"]


def test_progress_bar_runs_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture):
    src = tmp_path / "src"
    for i in range(8):
        make_midi(src / f"p{i}.mid", scale_notes(10 + i))

    report = ingest(str(src), tmp_path / "out", progress=True)

    assert report.ok == 8
    assert capsys.readouterr().out == ""


def test_output_inside_source_folder_is_refused(tmp_path: Path):
    src = folder_with_goods(tmp_path)
    with pytest.raises(PianolaError, match="inside the source folder"):
        ingest(str(src), src / "raw", progress=False)


class MemorySource(Source):
    """The smallest possible plug-in source: what a web or S3 source implements."""

    def __init__(self, items: list[SourceItem]):
        self.spec = "memory:test"
        self._items = items

    def items(self) -> Iterator[SourceItem]:
        yield from self._items


def test_custom_source_read_failures_become_rejections(tmp_path: Path):
    good = good_bytes(tmp_path)

    def fails(error: Exception) -> Callable[[], bytes]:
        def read() -> bytes:
            raise error

        return read

    def never() -> bytes:
        raise AssertionError("an oversize item must not be read")

    source = MemorySource([
        SourceItem("midi/a piece.mid", "https://example.org/a%20piece.mid", lambda: good, composer="Anon", license="CC0"),
        SourceItem("gone.mid", "https://example.org/gone.mid", fails(SourceReadError("HTTP 404 Not Found"))),
        SourceItem("reset.mid", "https://example.org/reset.mid", fails(ConnectionResetError(104, "Connection reset by peer"))),
        SourceItem("huge.mid", "s3://bucket/huge.mid", never, size=10**9),
    ])
    out = tmp_path / "out"

    report = ingest(source, out, progress=False)

    reasons = {e["name"]: e["reason"] for e in manifest(out)["files"]}
    assert reasons == {
        "midi_a_piece.mid": None,
        "gone.mid": "HTTP 404 Not Found",
        "reset.mid": "unreadable: Connection reset by peer",
        "huge.mid": "over the size cap: 1,000,000,000 bytes > 4,000,000",
    }
    assert entry_for(out, "midi_a_piece.mid")["composer"] == "Anon"
    assert report.source == "memory:test"


class CountedSource(MemorySource):
    """Items that travel to workers, counting how many the ingest has drawn."""

    portable_items = True

    def __init__(self, items: list[SourceItem]):
        super().__init__(items)
        self.drawn = 0

    def items(self) -> Iterator[SourceItem]:
        for item in self._items:
            self.drawn += 1
            yield item


def test_sharded_ingest_streams_the_source_and_writes_as_it_goes(tmp_path: Path):
    """With workers, the inputs were once all listed before the first shard went out, and every file to write was
    held until all were checked: the corpus flow's memory grew with the corpus. Now a shard's files are written
    before the source is read much further."""
    good = [make_midi(tmp_path / "src" / f"p{i:02d}.mid", scale_notes(10 + i)).read_bytes() for i in range(20)]
    source = CountedSource([SourceItem(f"p{i:02d}.mid", f"mem/p{i:02d}.mid", lambda d=data: d) for i, data in enumerate(good)])
    calls: list[tuple[str, int]] = []  # (the work, items drawn from the source when it ran)

    def map_shards(work, shards):  # one shard ahead at most, as the flow's map runs them
        for shard in shards:
            calls.append((getattr(work, "func", work).__name__, source.drawn))
            yield work(shard)

    report = ingest(source, tmp_path / "out", progress=False, map_shards=map_shards, shard_files=4)

    assert (report.ok, report.written) == (20, 20)
    assert calls[0] == ("inspect_items", 4)  # one shard drawn, not the whole source
    first_write = next(drawn for work, drawn in calls if work == "place_items")
    assert first_write <= 8
    assert manifest(tmp_path / "out")["ok"] == 20


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("http://", "is not an http\\(s\\) URL of an index page"),
        ("s3://", "names no bucket"),
        ("ftp://example.org/x", "'ftp://example.org/x' is neither an existing folder nor a known source.*music21:COMPOSER"),
        ("no/such/folder", "'no/such/folder' is neither an existing folder nor a known source"),
        ("music21:", "names no composer"),
    ],
)
def test_unsupported_and_unknown_specs_are_clear_errors(spec: str, message: str):
    with pytest.raises(PianolaError, match=message):
        open_source(spec)


def test_a_file_is_not_a_source_folder(tmp_path: Path):
    path = make_midi(tmp_path / "one.mid", scale_notes())
    with pytest.raises(PianolaError, match="is a file, not a folder"):
        open_source(str(path))


def test_music21_unknown_composer_is_a_clear_error():
    with pytest.raises(PianolaError, match="no works for composer 'nobody'.*bach"):
        open_source("music21:nobody")


def test_music21_source_writes_valid_midi_with_composer(tmp_path: Path):
    out = tmp_path / "out"

    report = ingest("music21:bach", out, limit=3, progress=False)

    assert report.ok == 3
    entries = manifest(out)["files"]
    assert [e["status"] for e in entries] == ["ok"] * 3
    for e in entries:
        assert e["source"].startswith("music21:bach/")
        assert e["composer"] == "bach"
        assert "music21 corpus" in e["license"]
        score = symusic.Score.from_midi((out / e["name"]).read_bytes())
        assert sum(len(t.notes) for t in score.tracks) > 20  # a chorale: four voices, dozens of notes


def test_validation_is_linear_in_file_size(tmp_path: Path):
    many = [(i * 60, 60, 40 + i % 48) for i in range(60_000)]
    data = make_midi(tmp_path / "long.mid", many, tracks=2).read_bytes()
    assert len(data) > 400_000
    start = time.perf_counter()
    assert validate_midi(data, max_bytes=4_000_000) is None
    assert time.perf_counter() - start < 2.0


def test_fast_event_scan_gives_the_event_by_event_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The regex that skips runs of well-formed events must accept and refuse exactly what the loop over
    single events does, with the same reason: checked on files corrupted at random bytes."""
    from pianola.midi import validate

    rng = random.Random(7)
    base = make_midi(tmp_path / "base.mid", scale_notes(40, start_pitch=50), tracks=2).read_bytes()
    # running status, a program change (1 data byte) and tempo and key metas among the notes
    base += mtrk(bytes.fromhex("00 c0 05 00 90 3c 40 10 3e 40 00 ff 51 03 07 a1 20 00 c1 07 05 08 00 ff 59 02 00 00"
                               "10 91 40 40 10 42 40") + END_OF_TRACK)
    base = base[:10] + struct.pack(">H", 3) + base[12:]
    samples = [base] + [bytearray(base) for _ in range(300)]
    for sample in samples[1:]:
        for _ in range(rng.randint(1, 3)):
            sample[rng.randrange(14, len(sample))] = rng.randrange(256)
    fast = [validate_midi(bytes(s), max_bytes=10**6) for s in samples]
    never = re.compile(b"")  # matches nothing: every event goes through the loop
    monkeypatch.setattr(validate, "_FAST_EVENTS", {count: never for count in validate._FAST_EVENTS})
    slow = [validate_midi(bytes(s), max_bytes=10**6) for s in samples]
    assert fast == slow
    assert fast[0] is None and len(set(fast)) > 20  # the sample is valid, the corruptions are many kinds


def test_music21_workers_and_in_process_conversion_agree(tmp_path: Path):
    pooled = ingest(Music21Source(["bach"], workers=2), tmp_path / "pooled", limit=2, progress=False)
    serial = ingest(Music21Source(["bach"], workers=1), tmp_path / "serial", limit=2, progress=False)
    assert [e["sha256"] for e in pooled.entries] == [e["sha256"] for e in serial.entries]


def test_music21_work_that_cannot_convert_is_a_reason_not_a_crash():
    """bwv277.krn has malformed repeats: the one chorale of music21:bach that music21 cannot write as MIDI."""
    from music21 import corpus

    [broken] = [p for p in corpus.getComposer("bach", fileExtensions=("krn",)) if p.name == "bwv277.krn"]
    data, reason = music21_to_midi(str(broken))
    assert data is None
    assert reason.startswith("music21 could not convert: ExpanderException")
