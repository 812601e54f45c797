"""WAV rendering with FluidSynth, its errors for people, and the piano-roll PNG."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import symusic

from conftest import make_midi, scale_notes
from pianola.errors import PianolaError
from pianola.generation import render
from pianola.generation.render import (
    find_soundfont,
    midi_seconds,
    render_many,
    render_wav,
    wav_info,
)
from pianola.midi import load_score
from pianola.plots import piano_roll

needs_fluidsynth = pytest.mark.skipif(
    shutil.which("fluidsynth") is None or not any(Path(p).is_file() for p in render.KNOWN_SOUNDFONTS),
    reason="fluidsynth or a General MIDI SoundFont is not installed (make setup)",
)


@pytest.fixture(autouse=True)
def no_soundfont_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their SoundFont themselves, whatever the user's environment says."""
    monkeypatch.delenv(render.SOUNDFONT_ENV, raising=False)


@pytest.fixture
def scale_midi(tmp_path: Path) -> Path:
    """Four seconds of C major at 120 qpm: 16 eighth notes, both hands."""
    return make_midi(tmp_path / "scale.mid", scale_notes(16), tracks=2)


@needs_fluidsynth
def test_render_wav_is_44k_audible_and_as_long_as_the_piece(scale_midi: Path, tmp_path: Path) -> None:
    wav = render_wav(scale_midi, tmp_path / "out" / "scale.wav")
    info = wav_info(wav)
    assert wav == tmp_path / "out" / "scale.wav"
    assert info["sample_rate"] == 44100 and info["channels"] == 2
    assert info["peak"] > 0.05 and info["rms"] > 0.005
    assert info["peak"] < 0.99  # no clipping at the default gain
    # FluidSynth plays to the last note-off, lets the release fade, then keeps 2 s of reverb tail.
    assert midi_seconds(scale_midi) == pytest.approx(4.0)
    assert 2.0 - 0.05 <= info["seconds"] - midi_seconds(scale_midi) <= 3.5
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scale.wav"]  # no temporary left


@needs_fluidsynth
def test_silence_after_the_last_note_is_not_rendered(tmp_path: Path) -> None:
    # A tempo change long after the music ends (one corpus file has one 29 minutes on) must not
    # become minutes of silent audio.
    score = load_score(make_midi(tmp_path / "tail.mid", scale_notes(8)))
    score.tempos.append(symusic.Tempo(480 * 240, 120.0))
    score.dump_midi(str(tmp_path / "tail.mid"))
    info = wav_info(render_wav(tmp_path / "tail.mid", tmp_path / "tail.wav"))
    assert midi_seconds(tmp_path / "tail.mid") == pytest.approx(2.0)
    assert 2.0 + 1.9 <= info["seconds"] <= 2.0 + 3.5


@needs_fluidsynth
def test_render_many_writes_a_wav_beside_each_midi(tmp_path: Path) -> None:
    midis = [make_midi(tmp_path / f"piece{i}.mid", scale_notes(4, start_pitch=60 + i)) for i in range(3)]
    wavs = render_many(midis)
    assert wavs == [m.with_suffix(".wav") for m in midis]
    assert all(wav_info(w)["peak"] > 0.01 for w in wavs)


@needs_fluidsynth
def test_render_honours_the_sample_rate(scale_midi: Path, tmp_path: Path) -> None:
    assert wav_info(render_wav(scale_midi, tmp_path / "s.wav", sample_rate=22050))["sample_rate"] == 22050


def test_missing_fluidsynth_says_how_to_install(
    scale_midi: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(PianolaError, match=r"fluidsynth not found.*apt-get install fluidsynth fluid-soundfont-gm"):
        render_wav(scale_midi, tmp_path / "x.wav")
    assert not (tmp_path / "x.wav").exists()


def test_explicit_soundfont_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(PianolaError, match=r"nowhere\.sf2 \(given explicitly\): no such file.*make setup"):
        find_soundfont(tmp_path / "nowhere.sf2")


def test_soundfont_env_pointing_nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(render.SOUNDFONT_ENV, str(tmp_path / "gone.sf2"))
    with pytest.raises(PianolaError, match=r"gone\.sf2 \(from \$PIANOLA_SOUNDFONT\): no such file"):
        find_soundfont()


def test_no_soundfont_anywhere_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render, "KNOWN_SOUNDFONTS", (str(tmp_path / "none.sf2"),))
    with pytest.raises(PianolaError, match=r"no General MIDI SoundFont found.*fluid-soundfont-gm"):
        find_soundfont()


def test_a_file_that_is_not_a_soundfont_is_refused(tmp_path: Path) -> None:
    # FluidSynth itself would fall back to another SoundFont without a word.
    fake = tmp_path / "fake.sf2"
    fake.write_bytes(b"not a soundfont at all")
    with pytest.raises(PianolaError, match="not a SoundFont"):
        find_soundfont(fake)


def test_explicit_soundfont_beats_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "mine.sf2"
    mine.write_bytes(b"RIFF\x04\x00\x00\x00sfbk")
    monkeypatch.setenv(render.SOUNDFONT_ENV, str(tmp_path / "gone.sf2"))
    assert find_soundfont(mine) == mine


@needs_fluidsynth
def test_failed_render_keeps_the_old_wav_and_leaves_no_temporary(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"MThd but not really a MIDI file")
    wav = tmp_path / "bad.wav"
    wav.write_bytes(b"previous render")
    with pytest.raises(PianolaError, match=r"bad\.mid"):
        render_wav(bad, wav)
    with pytest.raises(PianolaError, match=r"gone\.mid: no such MIDI file"):
        render_wav(tmp_path / "gone.mid", tmp_path / "gone.wav")
    assert wav.read_bytes() == b"previous render"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mid", "bad.wav"]


def test_fluidsynth_failure_leaves_no_partial_wav(
    scale_midi: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulated with a fluidsynth that writes the start of a WAV, then fails as on a full disk.
    soundfont = tmp_path / "tiny.sf2"
    soundfont.write_bytes(b"RIFF\x04\x00\x00\x00sfbk")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake = fake_bin / "fluidsynth"
    fake.write_text(
        '#!/bin/sh\nwhile [ "$1" != "-F" ]; do shift; done\nprintf RIFF > "$2"\necho "disk full" >&2\nexit 1\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake_bin))
    out = tmp_path / "out"
    with pytest.raises(PianolaError, match=r"fluidsynth failed \(exit 1\): disk full"):
        render_wav(scale_midi, out / "scale.wav", soundfont=soundfont)
    assert list(out.iterdir()) == []


def test_piano_roll_png(scale_midi: Path, tmp_path: Path) -> None:
    png = tmp_path / "roll" / "scale.png"
    piano_roll(scale_midi, png, title="C major")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in png.parent.iterdir()) == ["scale.png"]


def test_piano_roll_of_an_empty_midi(tmp_path: Path) -> None:
    png = tmp_path / "empty.png"
    piano_roll(make_midi(tmp_path / "empty.mid", []), png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
