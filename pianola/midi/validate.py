"""Is a blob an acceptable MIDI file? Ingest asks before writing anything to data/raw.

Cheap byte checks come first, each with a specific reason; symusic's parser is the final word.
"""

from __future__ import annotations

import re
import struct

import symusic

MAX_VLQ_BYTES = 4  # the MIDI spec caps variable-length quantities at 4 bytes (0x0FFFFFFF)
DRUM_CHANNEL = 10  # as musicians count channels (9 counting from 0)
SNIFF_BYTES = 512  # enough of the start to tell text from binary
DEFAULT_MAX_BYTES = 4_000_000  # the size cap of a MIDI file, unless ingest is told otherwise


# The common case of a track, many well-formed events in a row, is skipped by one regex match (in C) instead of
# a Python loop per event. An event is a delta time, then: a status byte and its data bytes, data bytes alone
# under the running status, or a short meta event (tempo, meters, keys, end of track: a payload of at most 7
# bytes). One pattern per data-byte count of the running status (and one for none yet); a status byte of the other count, a longer
# meta event, a sysex event or anything malformed ends the match, and the loop below takes that one event.
# The last status byte matched is captured (a repeated group keeps its last match): the running status after.
_DELTA = rb"[\x80-\xff]{0,3}[\x00-\x7f]"
_SHORT_META = rb"\xff[\x00-\x7f](?:" + rb"|".join(bytes([n]) + rb".{%d}" % n for n in range(8)) + rb")"
_FAST_EVENTS = {
    count: re.compile(rb"(?:" + _DELTA + rb"(?:(" + status + rb")[\x00-\x7f]{%d}|[\x00-\x7f]{%d}|" % (count, count)
                      + _SHORT_META + rb"))*", re.DOTALL)
    for count, status in ((2, rb"[\x80-\xbf\xe0-\xef]"), (1, rb"[\xc0-\xdf]"))
}
_FAST_EVENTS[0] = re.compile(rb"(?:" + _DELTA + _SHORT_META + rb")*", re.DOTALL)  # no running status yet: metas only


class _Corrupt(Exception):
    """Raised inside the chunk walk; the message is the rejection reason."""


def oversize_reason(size: int, max_bytes: int) -> str | None:
    """The reason for a file over the size cap, or None (ingest asks before reading a file it can size)."""
    if size > max_bytes:
        return f"over the size cap: {size:,} bytes > {max_bytes:,}"
    return None


def validate_midi(data: bytes, *, max_bytes: int) -> str | None:
    """A human reason why `data` is not an acceptable MIDI file, or None when it is."""
    if not data:
        return "empty file"
    if reason := oversize_reason(len(data), max_bytes):
        return reason
    if reason := _not_midi_reason(data):
        return reason
    try:
        _check_header(data)
        _walk_chunks(data)
    except _Corrupt as e:
        return str(e)
    return _content_reason(data)


def reason_kind(reason: str) -> str:
    """The category of a rejection reason ("truncated", "no notes"), for summaries."""
    if reason.startswith("duplicate of "):
        return "duplicate"
    return reason.split(":", 1)[0]


def _not_midi_reason(data: bytes) -> str | None:
    """Things commonly served under a .mid name that are not MIDI at all."""
    if data[:2] == b"\x1f\x8b":
        return "gzip-compressed data, not MIDI"
    if data[:4] == b"RIFF" and data[8:12] == b"RMID":
        return "RIFF-wrapped MIDI (.rmi), not a standard MIDI file"
    if data[:4] == b"MThd":
        return None
    head = data[:SNIFF_BYTES].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in head:
        return "looks like HTML, not MIDI"
    if head.startswith(b"<?xml") or head.startswith(b"<score-partwise"):
        return "looks like XML, not MIDI"
    if _is_text(data[:SNIFF_BYTES]):
        return "looks like text, not MIDI"
    return f"not MIDI: no MThd header (starts with {data[:4].hex(' ')})"


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        # A multi-byte character cut at the sniff boundary is still text.
        if e.start < len(head) - 3:
            return False
        text = head[: e.start].decode("utf-8")
    return all(c.isprintable() or c in "\t\r\n" for c in text)


def _check_header(data: bytes) -> None:
    if len(data) < 8:
        raise _Corrupt(f"truncated: the MThd header is cut at {len(data)} bytes")
    (length,) = struct.unpack_from(">I", data, 4)
    if length != 6:
        raise _Corrupt(f"bad header length: {length} (a MIDI header holds 6 bytes)")
    if len(data) < 14:
        raise _Corrupt(f"truncated: the MThd header is cut at {len(data)} bytes")
    fmt, ntracks, division = struct.unpack_from(">HHH", data, 8)
    if fmt not in (0, 1, 2):
        raise _Corrupt(f"unknown MIDI format {fmt} (expected 0, 1 or 2)")
    if ntracks == 0:
        raise _Corrupt("no tracks: the header declares 0 tracks")
    if fmt == 0 and ntracks != 1:
        raise _Corrupt(f"bad header: format 0 declares {ntracks} tracks (it holds exactly 1)")
    if division & 0x8000:
        # symusic, like most tools for music rather than video, only reads metrical time.
        raise _Corrupt("unsupported division: SMPTE time code instead of ticks per quarter note")
    if division == 0:
        raise _Corrupt("bad division: 0 ticks per quarter note")


def _walk_chunks(data: bytes) -> None:
    """Check every declared track chunk fits in the file and holds well-formed events."""
    (ntracks,) = struct.unpack_from(">H", data, 10)
    pos, track = 14, 0
    # Bytes after the declared tracks are ignored, as by symusic and most readers.
    while track < ntracks:
        if pos >= len(data):
            raise _Corrupt(f"truncated: the header declares {ntracks} tracks, the file holds {track}")
        if pos + 8 > len(data):
            raise _Corrupt(f"truncated: a chunk header at byte {pos} is cut after {len(data) - pos} bytes")
        kind = data[pos : pos + 4]
        (length,) = struct.unpack_from(">I", data, pos + 4)
        start, end = pos + 8, pos + 8 + length
        name = kind.decode("latin-1") if kind.isascii() and kind.isalpha() else kind.hex(" ")
        if end > len(data):
            raise _Corrupt(
                f"truncated: chunk {name!r} at byte {pos} declares {length:,} bytes, "
                f"only {len(data) - start:,} remain"
            )
        if kind == b"MTrk":
            track += 1
            _scan_track(data, start, end, track)
        elif not (kind.isascii() and kind.isalpha()):
            # Unknown chunks must be skipped, but a non-letter id means we are reading garbage.
            raise _Corrupt(f"corrupt chunk: id {name} at byte {pos} is not a chunk type")
        pos = end


def _scan_track(data: bytes, pos: int, end: int, track: int) -> None:
    """Walk one MTrk's events (running status included): each must be whole and 7-bit where it should."""
    where = f"track {track}"
    running = 0  # the last channel status; kept across meta/sysex events as lenient readers (symusic) do
    while pos < end:
        fast = _FAST_EVENTS[_data_bytes(running) if running else 0].match(data, pos, end)
        if fast.re.groups and fast.group(1):
            running = fast.group(1)[0]
        pos = fast.end()
        if pos >= end:
            break
        pos = _skip_vlq(data, pos, end, where)  # delta time
        if pos >= end:
            raise _Corrupt(f"corrupt event: {where} ends after a delta time at byte {pos}")
        byte = data[pos]
        if byte == 0xFF:
            if pos + 1 >= end:
                raise _Corrupt(f"corrupt event: {where} ends inside a meta event at byte {pos}")
            pos = _skip_payload(data, pos, pos + 2, end, f"meta event in {where}")
            continue
        if byte in (0xF0, 0xF7):
            pos = _skip_payload(data, pos, pos + 1, end, f"sysex event in {where}")
            continue
        if byte >= 0xF0:
            raise _Corrupt(f"corrupt event: status 0x{byte:02x} is not allowed in a MIDI file ({where}, byte {pos})")
        if byte & 0x80:
            running = byte
            pos += 1
        elif not running:
            raise _Corrupt(f"corrupt event: data byte 0x{byte:02x} without a running status in {where} at byte {pos}")
        count = _data_bytes(running)
        if pos + count > end:
            raise _Corrupt(f"corrupt event: {where} ends inside an event at byte {pos}")
        for i in range(pos, pos + count):
            if data[i] > 127:
                raise _Corrupt(f"corrupt event: data byte 0x{data[i]:02x} > 127 in {where} at byte {i}")
        pos += count


def _data_bytes(status: int) -> int:
    """Data bytes of a channel event: 1 for program change and channel pressure, else 2."""
    return 1 if status & 0xE0 == 0xC0 else 2


def _skip_vlq(data: bytes, pos: int, end: int, where: str) -> int:
    """The position after the variable-length quantity at `pos`."""
    for i in range(pos, min(pos + MAX_VLQ_BYTES, end)):
        if not data[i] & 0x80:
            return i + 1
    if pos + MAX_VLQ_BYTES <= end:
        raise _Corrupt(f"corrupt event: variable-length quantity over {MAX_VLQ_BYTES} bytes in {where} at byte {pos}")
    raise _Corrupt(f"corrupt event: {where} ends inside a variable-length quantity at byte {pos}")


def _skip_payload(data: bytes, event: int, pos: int, end: int, what: str) -> int:
    """The position after the meta/sysex event at `event`, whose payload length starts at `pos`."""
    after = _skip_vlq(data, pos, end, what)
    length = 0
    for byte in data[pos:after]:
        length = (length << 7) | (byte & 0x7F)
    if after + length > end:
        raise _Corrupt(f"corrupt event: {what} at byte {event} declares {length:,} bytes, past the end of the track")
    return after + length


def _content_reason(data: bytes) -> str | None:
    """symusic's verdict, then: is there anything to learn from?"""
    try:
        score = symusic.Score.from_midi(data)
    except Exception as e:  # noqa: BLE001 - symusic raises RuntimeError and friends with useful text
        return f"symusic could not parse: {e}"
    pitched = sum(len(t.notes) for t in score.tracks if not t.is_drum)
    if pitched:
        return None
    if any(len(t.notes) for t in score.tracks):
        return f"only drum notes (channel {DRUM_CHANNEL})"
    return "no notes"
