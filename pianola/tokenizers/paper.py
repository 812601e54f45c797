"""The `paper` tokenizer: the paper's note/chord tokens, read with symusic instead of music21.

First stage of the pipeline (MIDI corpus -> tokens.jsonl -> training sequences); `decode` turns
generated tokens back into a MIDI score the way the paper did.
"""

from __future__ import annotations

import heapq
import os
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from pathlib import Path

import numpy as np
import symusic

from pianola.errors import PianolaError
from pianola.tokenizers.base import Tokenizer
from pianola.tokenizers.normal_order import normal_order_table

# music21 spells a MIDI pitch with these names (sharps except E-flat and B-flat), octave 4 = MIDI 60.
_PITCH_NAMES = ("C", "C#", "D", "E-", "E", "F", "F#", "G", "G#", "A", "B-", "B")
NOTE_TOKENS: tuple[str, ...] = tuple(f"{_PITCH_NAMES[p % 12]}{p // 12 - 1}" for p in range(128))
_NOTE_PITCHES = {token: pitch for pitch, token in enumerate(NOTE_TOKENS)}
_NOTE_TOKEN_ARRAY = np.array(NOTE_TOKENS, dtype=object)

# decode: the paper wrote one token every half quarter note, and music21's defaults fill the rest.
DECODE_TICKS_PER_QUARTER = 480
DECODE_STEP_TICKS = DECODE_TICKS_PER_QUARTER // 2
CHORD_BASE_PITCH = 60  # note.Note(pc) is a pitch class in octave 4 (C4 = MIDI 60)
DECODE_VELOCITY = 90  # music21's velocity for notes it writes without one
PIANO_PROGRAM = 0

MUSIC21_SMPTE_TICKS_PER_QUARTER = 10080  # music21 keeps its default resolution for SMPTE-timed files
_DEFAULT_METER = (4, 4)  # music21 assumes 4/4 wherever no time signature is in force
_BIG = 1 << 40  # rank offset between classes of sort keys; larger than any tick or index


def _music21_round7(x: np.ndarray) -> np.ndarray:
    # music21 rounds quantization errors to 7 decimals, which makes near-equal errors tie
    return np.round(x, 7)


def _nearest_multiple(n: np.ndarray, unit: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """music21's common.nearestMultiple, vectorised with the same float operations.

    Returns (match, multiple, error): halfway values go down, as in music21.
    """
    mult = np.floor(n / unit)
    low = unit * mult
    use_low = n <= low + unit / 2.0
    k = np.where(use_low, mult, mult + 1.0)
    match = unit * k
    error = _music21_round7(np.where(use_low, n - low, match - n))
    return match, k.astype(np.int64), error


def quantize_offsets(ticks: np.ndarray, tpq: int) -> np.ndarray:
    """Onsets in ticks -> music21's quantized offsets, in twelfths of a quarter.

    music21 (Stream.quantize with quarterLengthDivisors (4, 3)) snaps each offset to the nearest
    sixteenth or eighth-note triplet; on equal error the sixteenth wins.
    """
    if not len(ticks):
        return np.zeros(0, dtype=np.int64)
    n = ticks / tpq
    _, k4, e4 = _nearest_multiple(n, 1 / 4)
    _, k3, e3 = _nearest_multiple(n, 1 / 3)
    return np.where(e4 <= e3, 3 * k4, 4 * k3)


def quantize_durations(
    ticks: np.ndarray, tpq: int, gap_twelfths: np.ndarray, has_gap: np.ndarray
) -> np.ndarray:
    """Durations in ticks -> music21's quantized durations, in twelfths of a quarter.

    As in music21's Stream.quantize: a note never shrinks to zero (it gets one grid step), a grace
    note (zero ticks) stays zero, and a grid whose choice leaves less of the gap to the next onset
    unfilled wins before the smaller error does.
    """
    ql = ticks / tpq
    gap = gap_twelfths / 12.0
    best: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for divisor in (4, 3):
        unit = 1.0 / divisor
        match, k, error = _nearest_multiple(ql, unit)
        zero = k == 0
        k = np.where(zero, 1, k)
        match = np.where(zero, unit, match)
        error = np.where(zero, np.abs(_music21_round7(ql - unit)), error)
        # music21 tests `gap % tick == 0` in floats, so thirds of a quarter sometimes miss
        fills = ~has_gap | (np.fmod(gap, unit) == 0)
        remaining = np.where(fills, 0.0, np.maximum(gap - match, 0.0))
        best.append((remaining, error, k * (12 // divisor)))
    (r4, e4, q4), (r3, e3, q3) = best
    use4 = (r4 < r3) | ((r4 == r3) & (e4 <= e3))
    return np.where(ticks == 0, 0, np.where(use4, q4, q3))


@dataclass
class _Track:
    """The notes of one MIDI track (one music21 Part), in music21's order: by onset, then file order."""

    on: np.ndarray  # onset ticks
    off: np.ndarray  # offset ticks, paired with note-ons the way music21 pairs them
    pitch: np.ndarray
    drum: np.ndarray  # on MIDI channel 10: music21 makes these Unpitched, the paper skips them
    meta_ticks: np.ndarray  # times of time/key signatures and tempos, which music21 keeps in the Part
    meters: list[tuple[int, int, int]]  # (tick, numerator, denominator) of this track's time signatures


@dataclass
class _Elements:
    """Notes and chords of one Part, in the order music21 creates them."""

    first: np.ndarray  # index of the first (onset-defining) note
    last: np.ndarray  # index of the last note gathered: music21 takes the chord's duration from it
    mask: np.ndarray  # pitch-class set (12-bit) of the chord
    size: np.ndarray  # notes gathered (1 = a Note)
    drum: np.ndarray
    voices_required: bool  # music21 found same-onset notes with different ends: makes Voices


def _read_tracks(path: str | os.PathLike) -> tuple[int, list[bytes]]:
    """Ticks per quarter as music21 reads them, and each MTrk chunk as a one-track MIDI file."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise PianolaError(f"{path}: cannot read the MIDI file ({e.strerror or e})") from e
    if len(data) < 14 or data[:4] != b"MThd":
        raise PianolaError(f"{path}: not a MIDI file (it does not start with an MThd header)")
    header_length = int.from_bytes(data[4:8], "big")
    n_tracks = int.from_bytes(data[10:12], "big")
    division = int.from_bytes(data[12:14], "big")
    tpq = MUSIC21_SMPTE_TICKS_PER_QUARTER if division & 0x8000 else division
    if tpq == 0:
        raise PianolaError(f"{path}: the MIDI header gives 0 ticks per quarter note")
    # each track becomes its own file: symusic splits tracks by channel, music21 does not
    header = b"MThd\x00\x00\x00\x06\x00\x00\x00\x01" + data[12:14]
    chunks = []
    pos = 8 + header_length
    for index in range(n_tracks):
        if data[pos : pos + 4] != b"MTrk":
            raise PianolaError(f"{path}: track {index} of {n_tracks} is missing (no MTrk chunk)")
        end = pos + 8 + int.from_bytes(data[pos + 4 : pos + 8], "big")
        if end > len(data):
            raise PianolaError(f"{path}: track {index} is truncated")
        chunks.append(header + data[pos:end])
        pos = end
    return tpq, chunks


def _parse_track(chunk: bytes, path: str | os.PathLike, index: int) -> _Track:
    """One MIDI track (a one-track file from `_read_tracks`), read with symusic."""
    try:
        score = symusic.Score.from_midi(chunk)
    except Exception as e:  # symusic raises bare RuntimeErrors on malformed events
        raise PianolaError(f"{path}: track {index} cannot be parsed: {e}") from e
    if len(score.tracks) > 1:
        return _read_track_exactly(chunk)
    # music21 keeps a track's time/key signatures and tempos in its Part, as zero-length elements
    events = (score.time_signatures, score.key_signatures, score.tempos)
    meta = [kind.numpy()["time"] for kind in events if kind]
    meta_ticks = np.concatenate(meta).astype(np.int64) if meta else np.zeros(0, dtype=np.int64)
    meters = [(ts.time, ts.numerator, ts.denominator) for ts in score.time_signatures]
    if not score.tracks or not score.tracks[0].notes:
        empty = np.zeros(0, dtype=np.int64)
        return _Track(empty, empty, empty, empty.astype(bool), meta_ticks, meters)
    notes = score.tracks[0].notes.numpy()
    on = notes["time"].astype(np.int64)
    end = on + notes["duration"]
    pitch = notes["pitch"].astype(np.int64)
    # music21 ends a note at the first note-off of its pitch after it, even when an earlier
    # note-on of that pitch is still sounding (symusic pairs first-in first-out instead)
    by_end = np.lexsort((end, pitch))
    nearest = np.searchsorted(pitch[by_end] << 32 | end[by_end], pitch << 32 | on, side="right")
    off = np.where(end == on, on, end[by_end][np.minimum(nearest, len(on) - 1)])
    order = np.argsort(on, kind="stable")  # symusic keeps note-on order: usually already sorted
    drum = np.full(len(on), score.tracks[0].is_drum)
    return _Track(on[order], off[order], pitch[order], drum, meta_ticks, meters)


_META_TIMES = (0x51, 0x58, 0x59, 0x03, 0x04)  # tempo, time/key signature, track/instrument name
_DATA_BYTES = {0x80: 2, 0x90: 2, 0xA0: 2, 0xB0: 2, 0xC0: 1, 0xD0: 1, 0xE0: 2}


def _read_variable_length(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    while True:
        byte = data[pos]
        pos += 1
        value = value << 7 | byte & 0x7F
        if byte < 0x80:
            return value, pos


def _read_track_exactly(chunk: bytes) -> _Track:
    """One track read event by event, the way music21 reads and pairs it (slow; pure Python).

    Used for tracks that mix channels or programs: there music21 lists simultaneous notes in file
    order, which symusic (one track per channel and program) does not keep.
    """
    data = chunk[22:]  # after the MThd header and the MTrk chunk header
    notes: list[tuple[int, bool, int, int]] = []  # (tick, is note-on, pitch, channel)
    meta_ticks: list[int] = []
    meters: list[tuple[int, int, int]] = []
    pos, tick, status = 0, 0, 0x90  # music21 assumes note-on when running status has no status
    try:
        while pos < len(data):
            delta, pos = _read_variable_length(data, pos)
            if pos + 1 >= len(data):
                break  # music21 ignores a trailing event shorter than two bytes
            byte = data[pos]
            if byte == 0xFF:
                kind = data[pos + 1]
                length, start = _read_variable_length(data, pos + 2)
                pos = start + length
                tick += delta
                if kind in _META_TIMES:
                    meta_ticks.append(tick)
                if kind == 0x58 and length >= 2:
                    meters.append((tick, data[start], 1 << data[start + 1]))
                continue
            if byte >= 0x80:
                status = byte
                pos += 1
            kind = status & 0xF0
            if kind not in _DATA_BYTES:  # system exclusive: skipped, as music21 skips it
                length, start = _read_variable_length(data, pos)
                pos = start + length
                tick += delta
                continue
            first = data[pos]
            second = data[pos + 1] if _DATA_BYTES[kind] == 2 and pos + 1 < len(data) else 0
            pos += _DATA_BYTES[kind]
            tick += delta
            if kind == 0x90 and second > 0:
                notes.append((tick, True, first, status & 0x0F))
            elif kind in (0x80, 0x90):
                notes.append((tick, False, first, status & 0x0F))
            elif kind == 0xC0:
                meta_ticks.append(tick)  # a program change makes a music21 Instrument
    except IndexError:
        pass  # a truncated last event: music21 stops reading there too
    # music21 walks the events backwards: each note-on ends at the latest-seen note-off of its
    # pitch and channel, i.e. the first one after it, shared by any earlier unended note-ons
    awaiting: dict[tuple[int, int], int] = {}
    paired: list[tuple[int, int, int, int]] = []
    for event_tick, is_on, pitch, channel in reversed(notes):
        if not is_on:
            awaiting[pitch, channel] = event_tick
        elif (pitch, channel) in awaiting:
            paired.append((event_tick, awaiting[pitch, channel], pitch, channel))
    paired.reverse()
    columns = np.array(paired, dtype=np.int64).reshape(-1, 4).T
    return _Track(
        on=columns[0],
        off=columns[1],
        pitch=columns[2],
        drum=columns[3] == 9,
        meta_ticks=np.array(meta_ticks, dtype=np.int64),
        meters=meters,
    )


def _gather_chords(track: _Track, tpq: int) -> _Elements:
    """music21's chord gathering (midi.translate.midiTrackToStream), for one track.

    Walking notes by onset, a note not yet gathered starts a chord and takes every following note
    whose onset lies less than a sixteenth (tpq/4 ticks) after its own and whose end lies within a
    sixteenth of its own end; a note in that window with another end is left for later, and makes
    music21 split that part's measures into voices.
    """
    on, off = track.on, track.off
    n = len(on)
    # clusters: runs of notes each starting less than a sixteenth after the previous one; ticks
    # are compared times 4 with tpq, the tolerance tpq / 4 without floats
    new_cluster = np.ones(n, dtype=bool)
    new_cluster[1:] = 4 * np.diff(on) >= tpq
    starts = np.flatnonzero(new_cluster)
    ends = np.append(starts[1:], n)
    cluster = np.cumsum(new_cluster) - 1
    with_first = (4 * (on - on[starts][cluster]) < tpq) & (
        4 * np.abs(off - off[starts][cluster]) <= tpq
    )
    # the common case: every note of the cluster chords with its first note, one element
    simple = np.logical_and.reduceat(with_first, starts)

    # the other clusters go through music21's walk, note by note
    voices_required = False
    window_end = np.searchsorted(4 * on, 4 * on + tpq, side="left").tolist()
    off4 = (4 * off).tolist()
    walked: list[int] = []  # the notes of each element, its first note first
    sizes: list[int] = []
    for start, stop in zip(starts[~simple].tolist(), ends[~simple].tolist(), strict=True):
        gathered: set[int] = set()
        for i in range(start, stop):
            if i in gathered:
                continue
            reach, window = off4[i], window_end[i]
            # music21 does not skip a note already gathered by an earlier chord here
            members = [j for j in range(i + 1, window) if abs(off4[j] - reach) <= tpq]
            if len(members) < window - i - 1:
                voices_required = True  # a note of the window ends elsewhere
            gathered.update(members)
            walked.append(i)
            walked.extend(members)
            sizes.append(len(members) + 1)

    notes = np.concatenate([np.flatnonzero(simple[cluster]), np.array(walked, dtype=np.int64)])
    size = np.concatenate([(ends - starts)[simple], np.array(sizes, dtype=np.int64)])
    heads = np.cumsum(size) - size
    mask = np.bitwise_or.reduceat(np.left_shift(1, track.pitch[notes] % 12), heads)
    drum = np.logical_or.reduceat(track.drum[notes], heads)
    first = notes[heads]
    last = notes[heads + size - 1]
    order = np.argsort(first, kind="stable")  # music21 creates the elements by first note
    return _Elements(
        first=first[order],
        last=last[order],
        mask=mask[order],
        size=size[order],
        drum=drum[order],
        voices_required=voices_required,
    )


def _barlines(meters: list[tuple[int, int, int]], horizon: int, units: int) -> np.ndarray:
    """Measure starts (in `units` per quarter) as music21's makeMeasures lays them out.

    `meters` are (offset in units, numerator, denominator); a time signature takes effect at the
    first measure that starts at or after it, and 4/4 holds before the first one.
    """
    changes = sorted(((o, n, d) for o, n, d in meters if n > 0 and d > 0), key=lambda m: m[0])
    if not changes or changes[0][0] > 0:
        changes.insert(0, (0, *_DEFAULT_METER))
    bars = []
    start = 0
    for index, (_, numerator, denominator) in enumerate(changes):
        length = numerator * 4 * units // denominator
        if index + 1 < len(changes):
            if changes[index + 1][0] <= start:
                continue  # superseded before any measure started under it
            stop = changes[index + 1][0]
        else:
            stop = horizon + 1
        count = -(-(stop - start) // length)
        bars.append(start + length * np.arange(count, dtype=np.int64))
        start += length * count
    bars.append(np.array([start], dtype=np.int64))
    return np.concatenate(bars)


def _first_fit_voices(
    starts: list[int], ends: list[int], bar: int, units: int
) -> tuple[list[int], list[bool], list[bool]]:
    """music21's makeVoices: each note (in order) goes to the first voice free at its start.

    Also says which voices have a cached highestTime (music21 caches it when a later note checks
    the voice, and forgets it when a note is inserted), and which ones music21 still considers
    sorted (see `_inserted_sorted`).
    """
    voice_ends: list[int] = []
    cached: list[bool] = []
    in_order: list[bool] = []
    voices = []
    for start, end in zip(starts, ends, strict=True):
        for v, voice_end in enumerate(voice_ends):
            cached[v] = True
            if voice_end <= start:
                local = start - bar  # Stream.insert takes this measure-relative offset as a float
                in_order[v] &= _inserted_sorted(local, voice_end - bar, local / units, units)
                voice_ends[v] = max(voice_end, end)
                cached[v] = False
                voices.append(v)
                break
        else:
            voice_ends.append(end)
            cached.append(False)
            in_order.append(True)
            voices.append(len(voice_ends) - 1)
    return voices, cached, in_order


def _inserted_sorted(start: int, reach: int, start_float: float, units: int) -> bool:
    """Whether music21 still considers a stream sorted after inserting an element at `start`.

    It does if the element starts at or after `reach`, the end of everything inserted before. But
    music21 compares that end (an exact Fraction) with the offset as a float, so an element
    starting exactly there, at a third of a quarter, counts as in order only when the float
    (`start_float`, computed as music21 does) happens to round up.
    """
    if start != reach:
        return start > reach
    if start % 3 == 0:
        return True  # a binary fraction of a quarter: exact in floats
    return Fraction(start_float) > Fraction(start, units)


def _gapless(starts: list[int], ends: list[int]) -> bool:
    """Whether elements (in order) leave no gap from 0 on: music21's makeRests adds no rest."""
    reach = 0
    for start, end in zip(starts, ends, strict=True):
        if start > reach:
            return False
        reach = max(reach, end)
    return True


@dataclass
class _Pieces:
    """Every note/chord music21 ends up with for one Part, ties split at barlines."""

    element: np.ndarray  # which element each piece belongs to
    offset: np.ndarray  # global offset, in units per quarter
    grace: np.ndarray
    rank: np.ndarray  # order among this Part's pieces at the same offset


def _layout_part(
    offset: np.ndarray,
    duration: np.ndarray,
    grace: np.ndarray,
    chord: np.ndarray,
    bars: np.ndarray,
    meta: np.ndarray,
    voices: bool,
    units: int,
) -> _Pieces:
    """music21's makeMeasures, makeVoices, makeTies and makeRests for one Part.

    `offset`/`duration` are the quantized elements (units per quarter), `chord` marks music21
    Chords, `bars` the measure starts, `meta` the offsets of the Part's zero-length elements
    (time/key signatures, tempos). Returns the pieces with the offsets and order flatten() gives.

    A note crossing a barline is split there; the rest goes to the next measure, after that
    measure's own notes at its start. When the Part needs voices, each measure with overlapping
    notes gets them (first fit, in order). makeTies walks only the voices of a voiced measure, so a
    piece left loose beside them is not split again; a piece from a measure without voices joins
    the first voice of a voiced next measure (ahead of its other voices' notes at the start), and
    a piece from a voiced measure moves a next measure without voices into one voice.

    Finally music21 lays measures end to end by their highestTime. That is the bar length, except
    where a loose piece overhangs it, or where a Chord was split without music21 noticing (its
    duration setter skips the cache invalidation): a measure, or voice, whose highestTime was
    cached before the split keeps the chord's old end, unless rests are later inserted into it.
    """
    n = len(offset)
    end = offset + duration
    measure = np.searchsorted(bars, offset, side="right") - 1
    end_measure = np.searchsorted(bars, end, side="left") - 1  # the measure holding the end
    rank = np.arange(n, dtype=np.int64) + _BIG
    crossing = np.flatnonzero(end_measure > measure)
    if not len(crossing):
        return _Pieces(np.arange(n), offset, grace, rank)

    made_voices = np.zeros(len(bars) + 1, dtype=bool)
    if voices:
        # a measure needs voices when two of its notes overlap (ends touching starts do not count)
        by_span = np.lexsort((end, offset, measure))
        m_sorted = measure[by_span]
        overlap = (m_sorted[1:] == m_sorted[:-1]) & (offset[by_span][1:] < end[by_span][:-1])
        made_voices[m_sorted[1:][overlap]] = True
    has_voices = made_voices.copy()  # grows as makeTies moves notes into voices

    # elements in music21's order within a measure: by offset, grace notes first, then creation
    measure_order = np.lexsort((np.arange(n), ~grace, offset))
    bounds = np.searchsorted(measure[measure_order], np.arange(len(bars) + 1))

    def members(m: int) -> np.ndarray:
        return measure_order[bounds[m] : bounds[m + 1]]

    voicing: dict[int, tuple[dict[int, int], list[bool], list[bool]]] = {}

    def voices_of(m: int) -> tuple[dict[int, int], list[bool], list[bool]]:
        if m not in voicing:
            inside = members(m)
            found, cached, in_order = _first_fit_voices(
                offset[inside].tolist(), end[inside].tolist(), int(bars[m]), units
            )
            voicing[m] = (dict(zip(inside.tolist(), found, strict=True)), cached, in_order)
        return voicing[m]

    originals: dict[int, list[int]] = {}
    for e in crossing.tolist():
        originals.setdefault(int(measure[e]), []).append(e)
    # pieces arriving in a measure: (element, end, walked by makeTies, in voice 0 of made voices)
    arrived: dict[int, list[tuple[int, int, bool, bool]]] = {}
    piece_element: list[int] = []
    piece_measure: list[int] = []
    piece_rank: list[int] = []
    extent: dict[int, int] = {}  # measure -> global end it reaches beyond its bar
    pending = sorted(originals)
    while pending:
        m = heapq.heappop(pending)
        if pending and pending[0] == m:
            continue
        bar_end = int(bars[m + 1])
        walk: list[tuple[tuple[int, int, int, int], int, int]] = []
        own = originals.get(m, [])
        many = len(own) + len(arrived.get(m, ())) > 1  # voices only matter to order several
        voice_of = voices_of(m)[0] if made_voices[m] and own and many else {}
        for e in own:
            walk.append(((voice_of.get(e, 0), int(offset[e]), 0, e), e, int(end[e])))
        for seq, (e, piece_end, walked, _) in enumerate(arrived.get(m, [])):
            if walked:
                walk.append(((0, int(bars[m]), 1, seq), e, piece_end))
            elif piece_end > bar_end:
                extent[m] = max(extent.get(m, bar_end), piece_end)  # loose, never split
        walk.sort()
        to_next = [(e, piece_end) for _, e, piece_end in walk if piece_end > bar_end]
        if not to_next:
            continue
        nxt = m + 1
        if has_voices[m]:
            walked = not made_voices[nxt]  # loose beside made voices, or all moved into one voice
            in_zero = False
            has_voices[nxt] = True
        else:
            walked = True
            in_zero = bool(made_voices[nxt])
        for e, piece_end in to_next:
            arrived.setdefault(nxt, []).append((e, piece_end, walked, in_zero))
            piece_element.append(e)
            piece_measure.append(nxt)
            piece_rank.append(2 * _BIG + len(piece_rank))
        heapq.heappush(pending, nxt)

    # measures that keep a stale highestTime: only with a split original Chord in them
    cache_all = _measures_cached(end, grace, meta, bars)
    meta = np.sort(meta)
    meta_bounds = np.searchsorted(meta, bars)

    def in_measure(m: int) -> np.ndarray:
        """Offsets of the zero-length elements (signatures, tempos) in measure m."""
        return meta[meta_bounds[m] : meta_bounds[m + 1]]

    for m, own in originals.items():
        if not any(chord[e] for e in own):
            continue
        bar_end = int(bars[m + 1])
        inside = members(m)
        if made_voices[m]:
            voice_of, cached, in_order = voices_of(m)
            cached = list(cached)
            if len(cached) > 1 and not (in_measure(m) > bars[m]).any():
                cached[0] = True  # read when the measure inserted its second voice
            # makeTies first sorts (and so resets) every voice music21 thinks unsorted
            cached = [c and s for c, s in zip(cached, in_order, strict=True)]
            incoming = arrived.get(m, [])
            if any(a[3] for a in incoming):
                cached[0] = False  # a piece was inserted into voice 0
            elif incoming:
                cached = [True] * len(cached)  # read when the loose piece was inserted
            for e in own:
                v = voice_of[e]
                if not (chord[e] and cached[v]):
                    continue
                in_voice = [e2 for e2 in inside.tolist() if voice_of[e2] == v]
                starts = [int(offset[e2]) - int(bars[m]) for e2 in in_voice]
                ends = [min(int(end[e2]), bar_end) - int(bars[m]) for e2 in in_voice]
                if _gapless(starts, ends):  # no rest inserted into the voice: the cache survives
                    extent[m] = max(extent.get(m, bar_end), int(end[in_voice].max()))
        elif cache_all and m not in arrived and all(chord[e] for e in own):
            # the measure keeps its cache unless it is left unsorted (its last element starts
            # before an earlier one ends: makeTies then sorts it) or gets a rest
            local_meta = in_measure(m)
            starts = np.concatenate([local_meta, offset[inside]])
            ends = np.concatenate([local_meta, end[inside]])
            order = np.lexsort((np.arange(len(starts)) >= len(local_meta), starts))
            starts, ends = starts[order], ends[order]
            # makeMeasures inserts each element at its offset minus the measure's, in floats
            last_start = int(starts[-1]) - int(bars[m])
            last_float = int(starts[-1]) / units - int(bars[m]) / units
            reach = int(ends[:-1].max(initial=bars[m])) - int(bars[m])
            if _inserted_sorted(last_start, reach, last_float, units) and _gapless(
                (starts - bars[m]).tolist(), (np.minimum(ends, bar_end) - bars[m]).tolist()
            ):
                extent[m] = max(extent.get(m, bar_end), int(end[inside].max()))

    # voice 0 pieces precede the notes of a made-voiced measure's other voices at its start
    for m, incoming in arrived.items():
        if any(a[3] for a in incoming):
            at_start = np.flatnonzero((measure == m) & (offset == bars[m]) & ~grace)
            rank[at_start[1:]] += 2 * _BIG

    lengths = np.diff(bars)
    for m, reach in extent.items():
        lengths[m] = reach - bars[m]
    starts = np.concatenate([[0], np.cumsum(lengths)])
    piece_measure_a = np.array(piece_measure, dtype=np.int64)
    return _Pieces(
        element=np.concatenate([np.arange(n), np.array(piece_element, dtype=np.int64)]),
        offset=np.concatenate([offset - bars[measure] + starts[measure], starts[piece_measure_a]]),
        grace=np.concatenate([grace, np.zeros(len(piece_element), dtype=bool)]),
        rank=np.concatenate([rank, np.array(piece_rank, dtype=np.int64)]),
    )


def _measures_cached(end: np.ndarray, grace: np.ndarray, meta: np.ndarray, bars: np.ndarray) -> bool:
    """Whether makeMeasures leaves every measure's highestTime cached.

    It does when a zero-length element sits exactly at the Part's end and that end is a barline:
    the element fits no measure, is stored at the end of the Part, and placing it there asks
    for the Part's (hence every measure's) highestTime.
    """
    last = max(int(end.max()), int(meta.max()) if len(meta) else 0)
    at_last = bool((meta == last).any() or (grace & (end == last)).any())
    return at_last and last > 0 and bool((bars == last).any())


def _place_part(
    track: _Track,
    elements: _Elements,
    tpq: int,
    meters: list[tuple[int, int, int]],
    meta: np.ndarray,
    scale: int,
) -> _Pieces:
    """Quantize one Part's elements and lay them out in measures as music21 does."""
    onset = track.on[elements.first]
    ticks = track.off[elements.last] - track.on[elements.last]
    grace = ticks == 0
    offset = quantize_offsets(onset, tpq)
    # a duration is quantized towards the next later offset in the part, its own time/key
    # signatures and tempos included (the conductor's are copied in only afterwards)
    points = np.sort(np.concatenate([offset, quantize_offsets(track.meta_ticks, tpq)]))
    next_index = np.searchsorted(points, offset, side="right")
    has_gap = next_index < len(points)
    gap = np.where(has_gap, points[np.minimum(next_index, len(points) - 1)] - offset, 0)
    duration = quantize_durations(ticks, tpq, gap, has_gap)

    offset *= scale
    duration *= scale
    horizon = max(int((offset + duration).max()), int(meta.max()) if len(meta) else 0)
    bars = _barlines(meters, horizon, 12 * scale)
    chord = (elements.size > 1) & ~elements.drum  # a PercussionChord behaves like a Note here
    return _layout_part(
        offset, duration, grace, chord, bars, meta, elements.voices_required, 12 * scale
    )


@cache
def _chord_tokens() -> np.ndarray:
    return np.array(normal_order_table(), dtype=object)


def _element_tokens(track: _Track, elements: _Elements) -> np.ndarray:
    """The paper's token of each element: a Note's pitch name, a Chord's normal order."""
    names = _NOTE_TOKEN_ARRAY[track.pitch[elements.first]]
    return np.where(elements.size == 1, names, _chord_tokens()[elements.mask])


class PaperTokenizer(Tokenizer):
    """The paper's encoding: each note of the piece is its pitch name, each chord its normal order.

    encode(path) gives what the paper computed with music21: `converter.parse(path).flatten()
    .notes`, a Note as `str(note.pitch)` (`C#4`, `E-5`), a Chord as
    `'.'.join(str(pc) for pc in chord.normalOrder)` (`0.4.7`), over all parts (MIDI tracks),
    skipping music21's Unpitched notes and PercussionChords (MIDI channel 10: drum tracks add
    nothing). It reproduces music21's MIDI import without running it, about 1000 times faster:
    note-off pairing, chords gathered within a sixteenth, offsets and durations quantized to
    sixteenths or eighth-note triplets, measures from the conductor track's time signatures,
    voices, notes split at barlines by ties (one token per piece), measures that music21 stretches
    after splitting a chord it does not notice, and the flattened order (offset, grace notes first,
    then track order, then music21's order within the track).

    A known difference remains: symusic pairs the note-ons of a pitch that is already sounding
    first in, first out, so where such a note never gets a note-off of its own, or gets it on the
    tick it starts, that note (or its length) differs from music21's.

    decode(tokens) does what the paper did with generated tokens: one token every half quarter
    note; a note token is that pitch, a chord token `a.b.c` a chord of those pitch classes in
    octave 4 (MIDI 60 + pc, where music21 puts `note.Note(int(pc))`), each lasting half a quarter,
    on a piano track (program 0) at `tempo_qpm`. Tokens that are neither (`<unk>`, padding) are
    skipped without taking a time step.
    """

    name = "paper"

    def encode(self, path: str | os.PathLike) -> list[str]:
        tpq, chunks = _read_tracks(path)
        tracks = [_parse_track(chunk, path, index) for index, chunk in enumerate(chunks)]
        # work in units that hold every grid step: twelfths of a quarter, and the shortest bar unit
        denominators = [d for t in tracks for _, _, d in t.meters if d > 0]
        units = 12 * max([1] + [d // 4 for d in denominators])
        scale = units // 12

        # tracks without notes make music21's conductor part: its time signatures give every
        # later part's measures (a part with none of those uses its own, else 4/4), and its
        # time/key signatures and tempos are copied into those parts
        conductor_meters: list[tuple[int, int, int]] = []
        conductor_meta: list[np.ndarray] = []
        keys: list[np.ndarray] = []
        tokens: list[np.ndarray] = []
        for track in tracks:
            if not len(track.on) and not len(track.meta_ticks):
                continue
            meta = quantize_offsets(track.meta_ticks, tpq) * scale
            meter_ticks = np.array([t for t, _, _ in track.meters], dtype=np.int64)
            meters = [
                (int(q) * scale, n, d)
                for q, (_, n, d) in zip(quantize_offsets(meter_ticks, tpq), track.meters, strict=True)
            ]
            if not len(track.on):
                conductor_meters.extend(meters)
                conductor_meta.append(meta)
                continue
            elements = _gather_chords(track, tpq)
            pieces = _place_part(
                track,
                elements,
                tpq,
                conductor_meters or meters,
                np.concatenate([meta, *conductor_meta]),
                scale,
            )
            keep = ~elements.drum[pieces.element]
            part_keys = np.empty((4, int(keep.sum())), dtype=np.int64)
            part_keys[0] = pieces.offset[keep]
            part_keys[1] = ~pieces.grace[keep]  # grace notes first
            part_keys[2] = len(keys)
            part_keys[3] = pieces.rank[keep]
            keys.append(part_keys)
            tokens.append(_element_tokens(track, elements)[pieces.element[keep]])
        if not tokens:
            return []
        order = np.lexsort(np.concatenate(keys, axis=1)[::-1])
        return np.concatenate(tokens)[order].tolist()

    def pitch(self, token: str) -> int | None:
        return _NOTE_PITCHES.get(token)

    def transpose(self, token: str, semitones: int) -> str | None:
        """A note token moved by `semitones` (None past MIDI 0-127); a chord token's pitch classes moved, in normal order."""
        if token in _NOTE_PITCHES:
            pitch = _NOTE_PITCHES[token] + semitones
            return NOTE_TOKENS[pitch] if 0 <= pitch <= 127 else None
        if _is_chord_token(token):
            mask = 0
            for pc in token.split("."):
                mask |= 1 << ((int(pc) + semitones) % 12)
            return normal_order_table()[mask]
        return token

    def decode(self, tokens: list[str], tempo_qpm: float = 120.0) -> symusic.Score:
        pitches: list[int] = []
        times: list[int] = []
        step = 0
        for token in tokens:
            if token in _NOTE_PITCHES:
                chord = [_NOTE_PITCHES[token]]
            elif _is_chord_token(token):
                chord = [CHORD_BASE_PITCH + int(pc) for pc in token.split(".")]
            else:
                continue
            pitches.extend(chord)
            times.extend([step * DECODE_STEP_TICKS] * len(chord))
            step += 1
        score = symusic.Score(DECODE_TICKS_PER_QUARTER)
        score.tempos.append(symusic.Tempo(0, tempo_qpm))
        track = symusic.Track(name="piano", program=PIANO_PROGRAM, is_drum=False)
        n = len(pitches)
        track.notes = symusic.Note.from_numpy(
            time=np.array(times, dtype=np.int32),
            duration=np.full(n, DECODE_STEP_TICKS, dtype=np.int32),
            pitch=np.array(pitches, dtype=np.int8),
            velocity=np.full(n, DECODE_VELOCITY, dtype=np.int8),
        )
        score.tracks.append(track)
        return score


def _is_chord_token(token: str) -> bool:
    parts = token.split(".")
    return all(p.isdigit() and int(p) < 12 for p in parts)
