"""Audio previews: which soundfont each renderer uses, offline rendering with the built-in
renderer and with FluidSynth (drums included), files in every format that play for the
piece's length plus the tail, audio without FluidSynth, and with --synth fluidsynth a MIDI
file and a warning when FluidSynth cannot make audio. Tests that need FluidSynth or a system
soundfont skip cleanly where they are missing; the built-in renderer is always there. The
built-in renderer's own tests are in test_synth.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import bangercli.render.audio as audio_module
from bangercli.render.audio import (
    SAMPLE_RATE,
    TAIL_SECONDS,
    AudioUnavailable,
    find_soundfont,
    render,
    write_audio,
)
from bangercli.errors import BangerError
from bangercli.generation.generate import Piece
from bangercli.generation.save import save_pieces
from bangercli.midi.midifile import write_midi
from bangercli.midi.score import Grid, Note
from bangercli.render.synth import BUILTIN_SOUNDFONT
from test_synth import make_sf2

DRUMS = 11
KICK, SNARE, HIHAT = 36, 38, 42


def _fluidsynth_importable() -> bool:
    try:
        import fluidsynth  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


needs_fluidsynth = pytest.mark.skipif(not _fluidsynth_importable(),
                                      reason="pyfluidsynth or libfluidsynth is not installed")


@pytest.fixture(params=["builtin", "fluidsynth"])
def renderer(request, monkeypatch, banger_home) -> tuple[str, Path]:
    """(renderer, its soundfont): the built-in one with the shipped soundfont, and FluidSynth
    with the system's General MIDI soundfont, or a skip."""
    monkeypatch.delenv("BANGER_SOUNDFONT", raising=False)
    if request.param == "builtin":
        return "builtin", find_soundfont()
    if not _fluidsynth_importable():
        pytest.skip("pyfluidsynth or libfluidsynth is not installed")
    try:
        return "fluidsynth", find_soundfont(synth="fluidsynth", data_dir=banger_home)
    except BangerError:
        pytest.skip("no General MIDI soundfont on this machine")


def piece_of(notes: list[Note], *, bars: int, bpm: float, instruments: list[str]) -> Piece:
    order = sorted({n.instrument for n in notes})
    midi = write_midi(notes, order=order, grid=Grid(), bpm=bpm, length=bars * 32)
    return Piece(ids=[], notes=notes, instruments=instruments, drums=DRUMS in order, bars=bars,
                 bpm=bpm, seed=0, midi=midi)


def beat(bars: int = 2) -> list[Note]:
    """Kick and snare on the beats, hi-hat on the eighths: a drums-only part."""
    notes = []
    for step in range(0, bars * 32, 4):
        notes.append(Note(step, 2, DRUMS, HIHAT, 4))
        if step % 8 == 0:
            notes.append(Note(step, 4, DRUMS, KICK if step % 16 == 0 else SNARE, 7))
    return notes


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


# --- finding the soundfont ---------------------------------------------------------------


@needs_fluidsynth
def test_loading_fluidsynth_prints_nothing_on_stdout(monkeypatch, capsys):
    """pyfluidsynth announces the library it found when $CI is set; stdout is for results."""
    import sys

    monkeypatch.setenv("CI", "1")
    monkeypatch.delitem(sys.modules, "fluidsynth", raising=False)
    assert audio_module.load_fluidsynth() is sys.modules["fluidsynth"]
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("synth", ["builtin", "fluidsynth"])
def test_an_explicit_soundfont_comes_first(tmp_path, monkeypatch, synth):
    mine = tmp_path / "mine.sf2"
    mine.write_bytes(make_sf2())
    monkeypatch.setenv("BANGER_SOUNDFONT", str(tmp_path / "other.sf2"))
    assert find_soundfont(mine, synth=synth) == mine
    with pytest.raises(BangerError, match="does not exist"):
        find_soundfont(tmp_path / "missing.sf2", synth=synth)


def test_the_builtin_renderer_uses_the_shipped_soundfont_whatever_the_machine(tmp_path,
                                                                              monkeypatch):
    """Neither $BANGER_SOUNDFONT nor the data folder nor the system changes the default
    sound: the same request sounds the same on every machine."""
    (tmp_path / "soundfonts").mkdir()
    (tmp_path / "soundfonts" / "a.sf2").write_bytes(make_sf2())
    monkeypatch.setenv("BANGER_SOUNDFONT", str(tmp_path / "soundfonts" / "a.sf2"))
    assert find_soundfont(data_dir=tmp_path) == BUILTIN_SOUNDFONT
    assert find_soundfont(synth="builtin", data_dir=tmp_path) == BUILTIN_SOUNDFONT


def test_the_environment_variable_comes_next_and_must_exist(tmp_path, monkeypatch):
    font = tmp_path / "env.sf3"
    font.write_bytes(make_sf2())
    monkeypatch.setenv("BANGER_SOUNDFONT", str(font))
    assert find_soundfont(synth="fluidsynth", data_dir=tmp_path) == font
    monkeypatch.setenv("BANGER_SOUNDFONT", str(tmp_path / "gone.sf2"))
    with pytest.raises(BangerError, match="BANGER_SOUNDFONT") as error:
        find_soundfont(synth="fluidsynth", data_dir=tmp_path)
    assert not isinstance(error.value, AudioUnavailable)  # a mistake to fix, not a missing extra


def test_a_file_that_is_no_soundfont_is_refused_before_fluidsynth_sees_it(tmp_path, monkeypatch):
    junk = tmp_path / "junk.sf2"
    junk.write_bytes(b"MThd" + bytes(20))
    with pytest.raises(BangerError, match="no RIFF sfbk header"):
        find_soundfont(junk)
    damaged = tmp_path / "damaged.sf2"
    damaged.write_bytes(make_sf2(sample=3))
    with pytest.raises(BangerError, match="is damaged: sample index 3"):
        find_soundfont(damaged, synth="fluidsynth")
    monkeypatch.setenv("BANGER_SOUNDFONT", str(junk))
    with pytest.raises(BangerError, match="BANGER_SOUNDFONT"):
        find_soundfont(synth="fluidsynth", data_dir=tmp_path)
    with pytest.raises(BangerError, match="is not a file"):
        find_soundfont(tmp_path)


def test_the_user_data_folder_comes_before_the_system(tmp_path, monkeypatch):
    monkeypatch.delenv("BANGER_SOUNDFONT", raising=False)
    (tmp_path / "soundfonts").mkdir()
    font = tmp_path / "soundfonts" / "a.sf2"
    font.write_bytes(make_sf2())
    assert find_soundfont(synth="fluidsynth", data_dir=tmp_path) == font


# --- rendering ---------------------------------------------------------------------------


def test_drums_are_audible(renderer):
    synth, soundfont = renderer
    piece = piece_of(beat(), bars=2, bpm=120.0, instruments=[])
    samples = render(piece.midi, soundfont, synth=synth, end_seconds=piece.seconds)
    assert samples.dtype == np.float32 and samples.shape[1] == 2
    assert samples.shape[0] == round((4.0 + TAIL_SECONDS) * SAMPLE_RATE)
    assert rms(samples) > 1e-3
    second = SAMPLE_RATE  # each beat half a second: every second of the 2 bars has hits
    for s in range(4):
        assert rms(samples[s * second : (s + 1) * second]) > 1e-3


def test_melodic_notes_are_audible_and_silence_is_silent(renderer):
    synth, soundfont = renderer
    chord = [Note(0, 32, 0, pitch, 6) for pitch in (60, 64, 67)]
    samples = render(piece_of(chord, bars=1, bpm=120.0, instruments=["piano"]).midi, soundfont,
                     synth=synth, end_seconds=2.0)
    assert rms(samples[: SAMPLE_RATE]) > 1e-3
    empty = render(piece_of([], bars=1, bpm=120.0, instruments=[]).midi, soundfont, synth=synth,
                   end_seconds=2.0)
    assert empty.shape[0] == round(3.5 * SAMPLE_RATE)
    assert rms(empty) < 1e-4  # only the 16-bit dither of the synthesizer


@needs_fluidsynth
def test_a_file_that_is_not_a_soundfont_is_an_error(tmp_path):
    bogus = tmp_path / "bogus.sf2"
    bogus.write_bytes(b"not a soundfont at all")
    piece = piece_of(beat(1), bars=1, bpm=120.0, instruments=[])
    with pytest.raises(BangerError, match="cannot load soundfont"):
        render(piece.midi, bogus, synth="fluidsynth", end_seconds=piece.seconds)


def test_the_builtin_renderer_checks_the_soundfont_first(tmp_path):
    bogus = tmp_path / "bogus.sf2"
    bogus.write_bytes(b"not a soundfont at all")
    piece = piece_of(beat(1), bars=1, bpm=120.0, instruments=[])
    with pytest.raises(BangerError, match="no RIFF sfbk header"):
        render(piece.midi, bogus, end_seconds=piece.seconds)


# --- writing -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac"])
def test_previews_play_for_the_piece_plus_the_tail(renderer, tmp_path, fmt):
    import soundfile

    if fmt.upper() not in soundfile.available_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")

    notes = beat(2) + [Note(0, 64, 4, 40, 5), Note(16, 16, 0, 72, 5)]
    piece = piece_of(notes, bars=2, bpm=150.0, instruments=["bass", "piano"])
    synth, soundfont = renderer
    saved = save_pieces([piece], tmp_path, audio=fmt, soundfont=soundfont, synth=synth)[0]
    assert saved.audio == tmp_path / f"bass-0-1.{fmt}"
    info = soundfile.info(str(saved.audio))
    assert info.samplerate == SAMPLE_RATE and info.channels == 2
    expected = 2 * 4 * 60 / 150.0 + TAIL_SECONDS
    assert info.duration == pytest.approx(expected, abs=0.06 if fmt == "mp3" else 1e-4)
    samples, _ = soundfile.read(str(saved.audio), dtype="float32")
    assert rms(samples) > 1e-3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"bass-0-1.{fmt}", "bass-0-1.mid"])


def test_several_previews_encode_beside_the_next_render_and_sound_as_one_alone(tmp_path):
    """With several pieces, each preview is encoded by a second thread while the next one
    renders; every piece still gets its own preview, the same bytes as written alone."""
    pieces = [piece_of(beat(1) + [Note(0, 16, 0, 60 + k, 5)], bars=1, bpm=120.0,
                       instruments=["piano"]) for k in range(3)]
    for k, piece in enumerate(pieces):
        piece.seed = k
    together = save_pieces(pieces, tmp_path / "together", audio="wav")
    assert [s.audio.name for s in together] == ["piano-0-1.wav", "piano-1-2.wav",
                                                "piano-2-3.wav"]
    for k, piece in enumerate(pieces):
        alone = save_pieces([piece], tmp_path / f"alone{k}", audio="wav",
                            template="piano-{seed}-" + str(k + 1))[0]
        assert alone.audio.read_bytes() == together[k].audio.read_bytes()
    assert len({s.audio.read_bytes() for s in together}) == 3


def test_a_failing_encode_among_several_leaves_none_of_the_runs_files(tmp_path, monkeypatch):
    pieces = [piece_of(beat(1), bars=1, bpm=120.0, instruments=[]) for _ in range(3)]
    real = audio_module.encode_audio
    calls = []

    def full_disk_on_the_second(samples, path, *, fmt, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(samples, path, fmt=fmt, **kwargs)

    monkeypatch.setattr(audio_module, "encode_audio", full_disk_on_the_second)
    with pytest.raises(BangerError, match="No space left"):
        save_pieces(pieces, tmp_path, audio="wav", template="take-{n}")
    assert len(calls) == 3 and list(tmp_path.iterdir()) == []


def test_an_unknown_audio_format_is_refused_and_leaves_nothing(tmp_path):
    with pytest.raises(BangerError, match="unknown audio format"):
        write_audio(np.zeros((10, 2), dtype=np.float32), tmp_path / "a.ogg", fmt="ogg")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("missing", ["soundfont", "library"])
def test_fluidsynth_without_audio_support_writes_the_midi_with_one_warning(tmp_path, monkeypatch,
                                                                          missing):
    def unavailable(*args, **kwargs):
        raise AudioUnavailable(f"no {missing}", hint="install it")

    if missing == "soundfont":
        monkeypatch.setattr(audio_module, "load_fluidsynth", lambda: None)  # the library is there
        monkeypatch.setattr(audio_module, "find_soundfont", unavailable)
    else:
        monkeypatch.setattr(audio_module, "load_fluidsynth", unavailable)
    warnings: list[str] = []
    piece = piece_of(beat(1), bars=1, bpm=120.0, instruments=[])
    saved = save_pieces([piece], tmp_path, audio="mp3", synth="fluidsynth",
                        warn=warnings.append)[0]
    assert saved.midi.is_file() and saved.audio is None
    assert warnings == [f"no audio preview: no {missing} (install it)"]
    assert [p.name for p in tmp_path.iterdir()] == ["drums-0-1.mid"]


def test_the_builtin_renderer_needs_neither_fluidsynth_nor_a_system_soundfont(tmp_path,
                                                                             monkeypatch):
    def unavailable(*args, **kwargs):
        raise AudioUnavailable("not here", hint="install it")

    monkeypatch.setattr(audio_module, "load_fluidsynth", unavailable)
    monkeypatch.setattr(audio_module, "SYSTEM_SOUNDFONTS", ())
    warnings: list[str] = []
    piece = piece_of(beat(1), bars=1, bpm=120.0, instruments=[])
    saved = save_pieces([piece], tmp_path, audio="mp3", warn=warnings.append)[0]
    assert saved.audio == tmp_path / "drums-0-1.mp3" and saved.audio.stat().st_size > 1000
    assert warnings == []


def test_a_broken_soundfont_setting_is_an_error_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(audio_module, "load_fluidsynth", lambda: None)  # the library is there
    monkeypatch.setenv("BANGER_SOUNDFONT", str(tmp_path / "missing.sf2"))
    piece = piece_of(beat(1), bars=1, bpm=120.0, instruments=[])
    with pytest.raises(BangerError, match="BANGER_SOUNDFONT"):
        save_pieces([piece], tmp_path / "out", audio="wav", synth="fluidsynth")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_damaged_soundfont_is_an_error_before_anything_is_written(tmp_path):
    font = tmp_path / "damaged.sf2"
    font.write_bytes(make_sf2(instrument=4))
    piece = piece_of(beat(1), bars=1, bpm=120.0, instruments=[])
    with pytest.raises(BangerError, match="is damaged"):
        save_pieces([piece], tmp_path / "out", audio="mp3", soundfont=font)
    assert list((tmp_path / "out").iterdir()) == []
