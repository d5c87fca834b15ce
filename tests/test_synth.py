"""The built-in renderer: symusic plus the shipped soundfont, pip alone. Drums on channel 10
sound like drums, pieces are audible and peak at -1 dBFS, every format decodes, the same
piece gives the same bytes, a damaged soundfont is one error line (never a crash) and leaves
no file, and `banger generate` makes an MP3 on a machine without FluidSynth."""

from __future__ import annotations

import hashlib
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

import bangercli.render.audio as audio_module
from bangercli.errors import BangerError, UsageError
from bangercli.generation.generate import Piece
from bangercli.generation.save import save_pieces
from bangercli.midi.midifile import write_midi
from bangercli.midi.score import Grid, Note
from bangercli.render import synth
from bangercli.render.soundfont import SoundfontError, check_soundfont
from cli_runner import run_cli

SR = synth.SAMPLE_RATE
PIANO, BASS, DRUMS = 0, 4, 11
KICK, SNARE, HIHAT = 36, 38, 42


# --- pieces and measures -----------------------------------------------------------------


def piece_of(notes: list[Note], *, bars: int, bpm: float = 120.0) -> Piece:
    order = sorted({n.instrument for n in notes})
    midi = write_midi(notes, order=order, grid=Grid(), bpm=bpm, length=bars * 32)
    return Piece(ids=[], notes=notes, instruments=[], drums=DRUMS in order, bars=bars, bpm=bpm,
                 seed=0, midi=midi)


def groove(bars: int = 2, instrument: int = DRUMS) -> list[Note]:
    """Hi-hat eighths, kick and snare on the beats (on a melodic instrument: low notes)."""
    notes = []
    for step in range(0, bars * 32, 4):
        notes.append(Note(step, 2, instrument, HIHAT, 5))
        if step % 8 == 0:
            notes.append(Note(step, 4, instrument, KICK if step % 16 == 0 else SNARE, 7))
    return notes


def melody(bars: int = 1) -> list[Note]:
    return [Note(step, 7, PIANO, 60 + (step // 8) % 2 * 4, 6) for step in range(0, bars * 32, 8)]


def band(bars: int = 2) -> list[Note]:
    return groove(bars) + melody(bars) + [Note(s, 14, BASS, 40, 6) for s in range(0, bars * 32, 16)]


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


def high_share(samples: np.ndarray, cutoff: float = 5000.0) -> float:
    """The share of the energy above `cutoff` Hz."""
    power = np.abs(np.fft.rfft(samples.mean(axis=1))) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / SR)
    return float(power[freqs >= cutoff].sum() / power.sum())


# --- a tiny SF2, and ways to break it --------------------------------------------------------


def _chunk(cid: bytes, payload: bytes) -> bytes:
    return cid + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) & 1)


def make_sf2(*, instrument: int = 0, sample: int = 0, generator: tuple[int, int] | None = None,
             sample_end: int | None = None, cut: int | None = None) -> bytes:
    """A one-preset SF2 (bank 0, program 0) that loops a 441 Hz sine. The keywords damage it
    the way a broken file can be damaged: indices out of range, an undefined generator, a
    sample beyond the data, a truncated file."""
    period, name = 100, (lambda text: text.encode().ljust(20, b"\0"))
    wave = [round(12000 * math.sin(2 * math.pi * i / period)) for i in range(10 * period)]
    smpl = struct.pack(f"<{len(wave)}h", *wave) + bytes(92)  # 46 silent samples after, per spec
    generators = [(54, 1), (53, sample)]  # sample modes: loop; sample id
    if generator is not None:
        generators.insert(0, generator)
    pdta = b"pdta" + b"".join([
        _chunk(b"phdr", name("Sine") + struct.pack("<HHHIII", 0, 0, 0, 0, 0, 0)
               + name("EOP") + struct.pack("<HHHIII", 0, 0, 1, 0, 0, 0)),
        _chunk(b"pbag", struct.pack("<4H", 0, 0, 1, 0)),
        _chunk(b"pmod", bytes(10)),
        _chunk(b"pgen", struct.pack("<4H", 41, instrument, 0, 0)),
        _chunk(b"inst", name("Sine") + struct.pack("<H", 0) + name("EOI") + struct.pack("<H", 1)),
        _chunk(b"ibag", struct.pack("<4H", 0, 0, len(generators), 0)),
        _chunk(b"imod", bytes(10)),
        _chunk(b"igen", b"".join(struct.pack("<HH", *g) for g in generators) + bytes(4)),
        _chunk(b"shdr", name("Sine") + struct.pack("<IIIIIBbHH", 0, sample_end or len(wave),
                                                    period, 9 * period, SR, 69, 0, 0, 1)
               + name("EOS") + bytes(26)),
    ])
    info = b"INFO" + _chunk(b"ifil", struct.pack("<HH", 2, 1)) + _chunk(b"INAM", b"sine\0\0")
    body = b"sfbk" + _chunk(b"LIST", info) + _chunk(b"LIST", b"sdta" + _chunk(b"smpl", smpl)) \
        + _chunk(b"LIST", pdta)
    data = b"RIFF" + struct.pack("<I", len(body)) + body
    return data[:cut] if cut else data


DAMAGED = {
    "empty": (lambda: b"", "no RIFF sfbk header"),
    "text": (lambda: b"not a soundfont\n" * 64, "no RIFF sfbk header"),
    "random bytes": (lambda: bytes(np.random.default_rng(0).integers(0, 256, 1024, np.uint8)),
                     "no RIFF sfbk header"),
    "truncated": (lambda: make_sf2(cut=900), "truncated file"),
    "instrument out of range": (lambda: make_sf2(instrument=7), "instrument index 7"),
    "sample out of range": (lambda: make_sf2(sample=5), "sample index 5"),
    "undefined generator": (lambda: make_sf2(generator=(0x7FFF, 0)), "unknown generator"),
    "sample past the data": (lambda: make_sf2(sample_end=10**6), "outside the sample data"),
}


@pytest.fixture
def sine(tmp_path) -> Path:
    path = tmp_path / "sine.sf2"
    path.write_bytes(make_sf2())
    return path


def test_the_tiny_soundfont_is_valid_and_plays(sine):
    assert check_soundfont(sine) == sine
    samples = synth.render(piece_of(melody(), bars=1).midi, sine, end_seconds=2.0)
    assert samples.shape == (round(3.5 * SR), 2) and samples.dtype == np.float32
    assert rms(samples) > 0.05


@pytest.mark.parametrize("damage", DAMAGED)
def test_a_damaged_soundfont_is_a_usage_error_naming_the_problem(tmp_path, damage):
    build, problem = DAMAGED[damage]
    path = tmp_path / "bad.sf2"
    path.write_bytes(build())
    with pytest.raises(SoundfontError, match=problem) as error:
        synth.render(piece_of(melody(), bars=1).midi, path)
    assert isinstance(error.value, UsageError) and error.value.hint
    assert "\n" not in str(error.value)


def test_damaged_soundfonts_never_crash_the_process(tmp_path):
    """symusic can segfault on out-of-range tables: rendering must refuse them first. In a
    child process, so that a crash fails this test instead of killing pytest."""
    paths = []
    for i, (build, _) in enumerate(DAMAGED.values()):
        paths.append(tmp_path / f"{i}.sf2")
        paths[-1].write_bytes(build())
    midi = tmp_path / "m.mid"
    piece_of(melody(), bars=1).midi.save(midi)
    code = ("import sys\nfrom bangercli.render import synth, soundfont\n"
            "for path in sys.argv[2:]:\n"
            "    try: synth.render(sys.argv[1], path)\n"
            "    except soundfont.SoundfontError: print('refused')\n")
    done = subprocess.run([sys.executable, "-c", code, str(midi), *map(str, paths)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.split() == ["refused"] * len(paths)


def test_a_missing_soundfont_and_a_folder_are_refused(tmp_path):
    with pytest.raises(SoundfontError, match="does not exist"):
        synth.render(piece_of(melody(), bars=1).midi, tmp_path / "nope.sf2")
    with pytest.raises(SoundfontError, match="is not a file"):
        synth.render(piece_of(melody(), bars=1).midi, tmp_path)


def test_a_dls_file_needs_fluidsynth(tmp_path):
    dls = tmp_path / "gm.dls"
    dls.write_bytes(b"RIFF\x04\x00\x00\x00DLS ")
    with pytest.raises(SoundfontError, match="DLS") as error:
        audio_module.check_soundfont(dls)
    assert "--synth fluidsynth" in error.value.hint
    assert audio_module.check_soundfont(dls, synth="fluidsynth") == dls


# --- the shipped soundfont ---------------------------------------------------------------


def test_the_shipped_soundfont_is_used_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("BANGER_SOUNDFONT", str(tmp_path / "elsewhere.sf2"))
    assert audio_module.find_soundfont() == synth.BUILTIN_SOUNDFONT
    assert synth.BUILTIN_SOUNDFONT.stat().st_size == 23_614_353
    assert (synth.BUILTIN_SOUNDFONT.parent / "NOTICE.md").is_file()


def test_drums_on_channel_10_are_audible_and_sound_like_drums():
    drums = synth.render(piece_of(groove(), bars=2).midi, end_seconds=4.0)
    same_notes_on_piano = synth.render(piece_of(groove(instrument=PIANO), bars=2).midi,
                                       end_seconds=4.0)
    assert rms(drums) > 0.05
    for second in range(4):  # a hit in every second of the two bars
        assert rms(drums[second * SR:(second + 1) * SR]) > 0.02
    # cymbals and snare are bright; the same pitches on a piano are low notes
    assert high_share(drums) > 0.02
    assert high_share(drums) > 10 * high_share(same_notes_on_piano)


def test_a_piano_piece_is_audible_and_not_drums():
    piano = synth.render(piece_of(melody(), bars=1).midi, end_seconds=2.0)
    assert rms(piano[:SR]) > 0.05 and high_share(piano) < 0.02


def test_the_level_is_minus_one_dbfs_and_never_clips():
    for notes in (melody(), band()):
        samples = synth.render(piece_of(notes, bars=2).midi, end_seconds=4.0)
        assert np.max(np.abs(samples)) <= 1.0
        assert synth.peak_dbfs(samples) == pytest.approx(-1.0, abs=0.01)


def test_the_length_is_exact_and_ends_without_a_click():
    cut = synth.render(piece_of(band(), bars=2).midi, end_seconds=1.0)
    assert cut.shape == (round((1.0 + synth.TAIL_SECONDS) * SR), 2)
    assert not cut[-1].any()  # faded out
    padded = synth.render(piece_of(melody(), bars=1).midi, end_seconds=6.0)
    assert padded.shape == (round(7.5 * SR), 2) and not padded[-SR:].any()


def test_silence_stays_silent():
    silent = synth.render(piece_of([], bars=1).midi, end_seconds=2.0)
    assert silent.shape == (round(3.5 * SR), 2) and not silent.any()


@pytest.mark.parametrize("fmt", ["mp3", "wav", "flac"])
def test_each_format_decodes_at_44_1_khz_in_stereo(tmp_path, fmt):
    piece = piece_of(band(), bars=2)
    saved = save_pieces([piece], tmp_path, audio=fmt)[0]
    samples, rate = soundfile.read(saved.audio, dtype="float32")
    assert rate == SR and samples.ndim == 2 and samples.shape[1] == 2
    expected = round((piece.seconds + synth.TAIL_SECONDS) * SR)
    assert abs(len(samples) - expected) <= (2 * 1152 if fmt == "mp3" else 0)
    assert rms(samples) > 0.05 and np.max(np.abs(samples)) < 1.0


def test_rendering_is_deterministic(tmp_path):
    """The same piece gives the same samples from a fresh synthesizer and the same file bytes,
    and a fresh process agrees (what "the same on every machine" rests on)."""
    piece = piece_of(band(), bars=2)
    first = synth.render(piece.midi, end_seconds=4.0)
    synth.render(piece_of(melody(2), bars=2).midi)  # another piece between: no effect
    assert np.array_equal(first, synth.render(piece.midi, end_seconds=4.0))
    one = save_pieces([piece], tmp_path / "a", audio="flac")[0].audio.read_bytes()
    two = save_pieces([piece], tmp_path / "b", audio="flac")[0].audio.read_bytes()
    assert one == two
    midi = tmp_path / "band.mid"
    piece.midi.save(midi)
    code = ("import sys, hashlib\nfrom bangercli.render import synth\n"
            "samples = synth.render(sys.argv[1], end_seconds=4.0)\n"
            "print(hashlib.sha256(samples.tobytes()).hexdigest())")
    child = subprocess.run([sys.executable, "-c", code, str(midi)], capture_output=True,
                           text=True, timeout=60, check=True)
    assert child.stdout.strip() == hashlib.sha256(first.tobytes()).hexdigest()


# --- `banger generate` ---------------------------------------------------------------------


@pytest.fixture
def no_fluidsynth(monkeypatch):
    def unavailable():
        raise audio_module.AudioUnavailable("the FluidSynth library (libfluidsynth) is not "
                                            "installed", hint=audio_module.INSTALL_HINT)

    monkeypatch.setattr(audio_module, "load_fluidsynth", unavailable)


def generate(monkeypatch, capsys, checkpoint, out, *args) -> tuple[int, str, str]:
    monkeypatch.delenv("BANGER_SOUNDFONT", raising=False)
    return run_cli(monkeypatch, capsys, "generate", "--model", checkpoint, "--out", out,
                   "--seed", 1, "--bars", 1, "-i", "piano", "--drums", *args)


def test_generate_writes_an_mp3_without_fluidsynth(monkeypatch, capsys, checkpoint, tmp_path,
                                                    no_fluidsynth):
    code, stdout, stderr = generate(monkeypatch, capsys, checkpoint, tmp_path / "out")
    assert code == 0 and stderr == "", stderr
    midi = Path(stdout.strip())
    mp3 = midi.with_suffix(".mp3")
    assert midi.is_file() and sorted(p.name for p in midi.parent.iterdir()) == [midi.name, mp3.name]
    samples, rate = soundfile.read(mp3, dtype="float32")
    assert rate == SR and samples.shape[1] == 2
    assert len(samples) == pytest.approx((2.0 + synth.TAIL_SECONDS) * SR, abs=2 * 1152)


def test_generate_with_fluidsynth_missing_warns_and_writes_midi(monkeypatch, capsys, checkpoint,
                                                                tmp_path, no_fluidsynth):
    code, stdout, stderr = generate(monkeypatch, capsys, checkpoint, tmp_path / "out",
                                    "--synth", "fluidsynth")
    assert code == 0
    assert [p.suffix for p in (tmp_path / "out").iterdir()] == [".mid"]
    assert stderr.startswith("warning: no audio preview: the FluidSynth library")
    assert len(stderr.splitlines()) == 1


def bad_font(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.sf2"
    if kind == "corrupt":
        path.write_bytes(make_sf2(instrument=9))
    return path


@pytest.mark.parametrize("kind, message", [
    ("missing", "does not exist"),
    ("corrupt", "is damaged: instrument index 9 is out of range"),
])
@pytest.mark.parametrize("renderer", ["builtin", "fluidsynth"])
def test_a_bad_soundfont_is_one_error_line_and_writes_nothing(monkeypatch, capsys, checkpoint,
                                                             tmp_path, kind, message, renderer):
    font = bad_font(tmp_path, kind)
    code, stdout, stderr = generate(monkeypatch, capsys, checkpoint, tmp_path / "out",
                                    "--soundfont", font, "--synth", renderer)
    assert code == 2 and stdout == ""
    assert stderr.splitlines() == [stderr.strip()] and stderr.startswith("error: soundfont ")
    assert message in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def test_an_unknown_synth_is_one_error_line(monkeypatch, capsys, checkpoint, tmp_path):
    code, stdout, stderr = generate(monkeypatch, capsys, checkpoint, tmp_path / "out",
                                    "--synth", "timidity")
    assert code == 2 and stdout == ""
    assert stderr.strip() == ("error: unknown --synth 'timidity' "
                              "(hint: choose one of: builtin, fluidsynth)")
    assert not (tmp_path / "out").exists()


def test_the_library_refuses_an_unknown_synth_before_writing(tmp_path):
    with pytest.raises(UsageError, match="unknown --synth"):
        save_pieces([piece_of(melody(), bars=1)], tmp_path / "out", synth="timidity")
    assert not (tmp_path / "out").exists()


def test_a_lost_builtin_soundfont_says_to_reinstall(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "BUILTIN_SOUNDFONT", tmp_path / "gone.sf3")
    with pytest.raises(BangerError, match="built-in soundfont") as error:
        audio_module.find_soundfont()
    assert "reinstall" in error.value.hint
