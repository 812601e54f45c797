"""MIDI -> WAV with FluidSynth and a General MIDI SoundFont: the last step of generation.

The Debian `fluidsynth` command renders offline (no audio device); nothing is downloaded at run time.

How long the WAV is: FluidSynth plays a MIDI file to its end of track, then lifts the pedals,
lets every voice's release fade, then keeps 2 s more for the reverb (`FLUID_PLAYER_STOP_GRACE_MS`,
FluidSynth >= 2.2). So `wav seconds = midi_seconds + release + 2 s`, where `midi_seconds` is the
last note-off or pedal release. Over the 86 corpus pieces with FluidR3_GM the WAV runs 1.9 to
6.8 s past it (median 2.6 s): long low notes ring longest, and FluidSynth's tempo arithmetic
(whole milliseconds at every tempo change) ends pieces with over a thousand tempo changes a
little early. Silence before the first note is kept, so the audio lines up with the MIDI's own
time; events long after the last sound (a stray tempo change 29 minutes on, in one corpus file)
are dropped rather than rendered as silence.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import symusic

from pianola.errors import PianolaError
from pianola.io import atomic_path
from pianola.midi import load_score

SOUNDFONT_ENV = "PIANOLA_SOUNDFONT"
# Where Debian/Ubuntu (fluid-soundfont-gm, timgm6mb-soundfont, musescore-general-soundfont) and
# Fedora/Arch put a General MIDI SoundFont; the first that exists wins.
KNOWN_SOUNDFONTS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/share/sounds/sf3/default-GM.sf3",
    "/usr/share/sounds/sf3/MuseScore_General.sf3",
)
INSTALL_HINT = "install them with `sudo apt-get install fluidsynth fluid-soundfont-gm` (Debian/Ubuntu) or `make setup`"
# FluidSynth's default 0.2 is quiet (a single piano note peaks near -30 dBFS); 0.5 leaves
# headroom for dense chords: the corpus's loudest piece peaks near -7 dBFS.
DEFAULT_GAIN = 0.5
# The WAV may end this much before the MIDI's last event: FluidSynth ticks in 64-sample blocks.
LENGTH_TOLERANCE_S = 0.05
RENDER_WORKERS = 4


def find_fluidsynth() -> str:
    """The `fluidsynth` executable on PATH."""
    found = shutil.which("fluidsynth")
    if found is None:
        raise PianolaError(f"fluidsynth not found on PATH: WAV rendering needs it and a SoundFont; {INSTALL_HINT}")
    return found


def _check_soundfont(path: Path, origin: str) -> Path:
    """`path` if it is a readable SoundFont (SF2 or SF3), else a PianolaError naming `origin`."""
    if not path.is_file():
        raise PianolaError(f"SoundFont {path} ({origin}): no such file; pass an existing .sf2 file, or {INSTALL_HINT}")
    with open(path, "rb") as f:
        header = f.read(12)
    # A SoundFont is a RIFF file of form type `sfbk`; FluidSynth silently falls back to another
    # SoundFont when given anything else, so a wrong file would render without complaint.
    if header[:4] != b"RIFF" or header[8:12] != b"sfbk":
        raise PianolaError(f"{path} ({origin}): not a SoundFont (.sf2/.sf3) file")
    return path


def find_soundfont(explicit: str | os.PathLike | None = None) -> Path:
    """The SoundFont to render with: `explicit`, else $PIANOLA_SOUNDFONT, else a known system path."""
    if explicit is not None:
        return _check_soundfont(Path(explicit), "given explicitly")
    from_env = os.environ.get(SOUNDFONT_ENV)
    if from_env:
        return _check_soundfont(Path(from_env), f"from ${SOUNDFONT_ENV}")
    for candidate in KNOWN_SOUNDFONTS:
        if Path(candidate).is_file():
            return _check_soundfont(Path(candidate), "system SoundFont")
    raise PianolaError(
        f"no General MIDI SoundFont found (looked at ${SOUNDFONT_ENV} and {', '.join(KNOWN_SOUNDFONTS)}); "
        f"{INSTALL_HINT}, or pass --soundfont / set {SOUNDFONT_ENV}"
    )


def last_sound(score: symusic.Score) -> float:
    """When the last note-off or pedal release of `score` comes, in `score`'s own time unit."""
    ends = [0.0]
    for track in score.tracks:
        for events in (track.notes, track.pedals):
            if len(events):
                columns = events.numpy()
                ends.append(float((columns["time"] + columns["duration"]).max()))
    return max(ends)


def midi_seconds(midi_path: str | os.PathLike) -> float:
    """How long a MIDI file sounds, in seconds, tempo changes included: up to its last note-off or pedal release."""
    return last_sound(load_score(midi_path).to("second"))


def render_wav(
    midi_path: str | os.PathLike,
    wav_path: str | os.PathLike,
    *,
    soundfont: str | os.PathLike | None = None,
    sample_rate: int = 44100,
    gain: float = DEFAULT_GAIN,
) -> Path:
    """Render `midi_path` to a 16-bit stereo WAV at `wav_path`, atomically; return `wav_path`."""
    midi_path, wav_path = Path(midi_path), Path(wav_path)
    executable = find_fluidsynth()
    sf2 = find_soundfont(soundfont)
    if not midi_path.is_file():
        raise PianolaError(f"{midi_path}: no such MIDI file")
    try:
        score = load_score(midi_path)
    except Exception as e:  # symusic raises plain RuntimeErrors on bad files
        raise PianolaError(f"{midi_path}: not a readable MIDI file ({e})") from e
    piece_seconds = last_sound(score.to("second"))
    with atomic_path(wav_path) as tmp, tempfile.TemporaryDirectory(prefix="pianola-render-") as scratch:
        source = midi_path
        end_tick = int(last_sound(score)) + 1
        if score.end() > end_tick + score.ticks_per_quarter:
            # FluidSynth would play on to the file's last event, silence and all.
            source = Path(scratch) / midi_path.name
            score.clip(0, end_tick).dump_midi(str(source))
        # -n: no MIDI input driver, -i: no shell, -F: render offline to a file and exit.
        # The file type is given with -T because the temporary name ends in .tmp, not .wav.
        command = [executable, "-n", "-i", "-q", "-F", str(tmp), "-T", "wav", "-O", "s16"]
        command += ["-r", str(sample_rate), "-g", str(gain), str(sf2), str(source)]
        done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise PianolaError(f"{midi_path}: fluidsynth failed (exit {done.returncode}): {' / '.join(detail)}")
        info = wav_info(tmp)
        if info["seconds"] < piece_seconds - LENGTH_TOLERANCE_S:
            raise PianolaError(
                f"{midi_path}: fluidsynth rendered {info['seconds']:.2f} s of a {piece_seconds:.2f} s piece"
            )
        if score.note_num() and info["peak"] == 0.0:
            raise PianolaError(f"{midi_path}: fluidsynth rendered silence; does {sf2} have a piano (GM program 1)?")
    return wav_path


def render_many(midi_paths: Iterable[str | os.PathLike], soundfont: str | os.PathLike | None = None) -> list[Path]:
    """Render each MIDI file to a WAV beside it (same stem, .wav), several at a time."""
    midi_paths = [Path(p) for p in midi_paths]
    sf2 = find_soundfont(soundfont)  # fail once, before starting any render
    find_fluidsynth()
    # Each render is a separate fluidsynth process, so threads give real parallelism.
    with ThreadPoolExecutor(max_workers=min(RENDER_WORKERS, os.cpu_count() or 1)) as pool:
        futures = [pool.submit(render_wav, p, p.with_suffix(".wav"), soundfont=sf2) for p in midi_paths]
        return [future.result() for future in futures]


def wav_info(path: str | os.PathLike) -> dict[str, float | int]:
    """Sample rate, channels, seconds, and peak and RMS level as fractions of full scale (0..1)."""
    path = Path(path)
    try:
        reader = wave.open(str(path), "rb")
    except (wave.Error, EOFError) as e:
        raise PianolaError(f"{path}: not a PCM WAV file ({e})") from e
    with reader:
        rate, channels, width, frames = (
            reader.getframerate(),
            reader.getnchannels(),
            reader.getsampwidth(),
            reader.getnframes(),
        )
        full_scale = float(2 ** (8 * width - 1))
        peak, square_sum = 0.0, 0.0
        # Read in blocks: a ten-minute piece is ~100 MB of samples, ~400 MB as floats.
        while block := reader.readframes(1 << 18):
            samples = _pcm_samples(block, width)
            if samples.size:
                peak = max(peak, float(np.abs(samples).max()))
                square_sum += float(np.square(samples).sum())
    count = frames * channels
    return {
        "sample_rate": rate,
        "channels": channels,
        "seconds": frames / rate if rate else 0.0,
        "peak": peak / full_scale,
        "rms": float(np.sqrt(square_sum / count)) / full_scale if count else 0.0,
    }


def _pcm_samples(block: bytes, width: int) -> np.ndarray:
    """Little-endian PCM bytes as signed float64 samples (8-bit WAV is unsigned, offset by 128)."""
    if width == 1:
        return np.frombuffer(block, dtype=np.uint8).astype(np.float64) - 128.0
    if width == 3:
        raw = np.frombuffer(block, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        return np.where(value >= 1 << 23, value - (1 << 24), value).astype(np.float64)
    return np.frombuffer(block, dtype={2: "<i2", 4: "<i4"}[width]).astype(np.float64)
