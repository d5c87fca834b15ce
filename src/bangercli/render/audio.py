"""Audio previews: render MIDI offline and write MP3, WAV or FLAC.

Two renderers. "builtin", the default, is symusic's synthesizer playing the soundfont shipped
inside the package (synth.py): it needs nothing beyond pip and gives the same samples on every
machine. "fluidsynth" drives libfluidsynth through pyfluidsynth where that library is
installed: no audio driver is opened, the synthesizer is stepped by hand between MIDI events
and its samples collected, so rendering works on servers and runs faster than realtime.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import mido
import numpy as np

from ..errors import BangerError, UsageError
from ..atomic_files import atomic_write
from . import soundfont as soundfont_check
from . import synth as builtin
from .synth import SAMPLE_RATE, TAIL_SECONDS

AUDIO_FORMATS = ("mp3", "wav", "flac")
SYNTHS = ("builtin", "fluidsynth")
DRUM_BANK = 128

INSTALL_HINT = (
    "install FluidSynth and a General MIDI soundfont (Debian/Ubuntu: apt-get install fluidsynth "
    "fluid-soundfont-gm; macOS: brew install fluid-synth, then put a .sf2 in the banger data "
    "folder or pass --soundfont FILE.sf2), or leave out --synth fluidsynth: the built-in "
    "renderer needs neither"
)
SYSTEM_SOUNDFONTS = (
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/share/sounds/sf3/default-GM.sf3",
    "/usr/share/sounds/sf3/MuseScore_General.sf3",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/soundfonts/MuseScore_General.sf3",
    "/usr/local/share/soundfonts/default.sf2",
    "/opt/homebrew/share/soundfonts/default.sf2",
    "/opt/homebrew/share/fluid-synth/sf2/VintageDreamsWaves-v2.sf2",
)


class AudioUnavailable(BangerError):
    """--synth fluidsynth without the FluidSynth library or a soundfont: MIDI is still
    written, audio is not. (The built-in renderer is always available.)"""


def check_synth(synth: str) -> str:
    """`synth` if it names a renderer; a one-line UsageError listing them otherwise."""
    if synth not in SYNTHS:
        raise UsageError(f"unknown --synth {synth!r}", hint=f"choose one of: {', '.join(SYNTHS)}")
    return synth


def find_soundfont(explicit: str | os.PathLike | None = None, *, synth: str = "builtin",
                   data_dir: Path | None = None) -> Path:
    """The soundfont to use, checked: `explicit` (--soundfont) when given. Otherwise, for the
    built-in renderer, always the shipped soundfont, so that the same request sounds the same
    on every machine; for FluidSynth, $BANGER_SOUNDFONT, then the user data folder
    (`<data dir>/soundfonts/*.sf2|*.sf3`), then common system locations."""
    check_synth(synth)
    if explicit is not None:
        return check_soundfont(Path(explicit).expanduser(), synth=synth)
    if synth == "builtin":
        return builtin.check_builtin(builtin.builtin_soundfont())
    from_env = os.environ.get("BANGER_SOUNDFONT")
    if from_env:
        path = Path(from_env).expanduser()
        if not path.is_file():
            raise BangerError(
                f"BANGER_SOUNDFONT points to {path}, which does not exist",
                hint="fix or unset BANGER_SOUNDFONT",
            )
        try:
            return check_soundfont(path, synth=synth)
        except UsageError as err:
            raise BangerError(f"BANGER_SOUNDFONT: {err}", hint="fix or unset BANGER_SOUNDFONT") from None
    candidates: list[Path] = []
    if data_dir is not None and (data_dir / "soundfonts").is_dir():
        candidates += sorted((data_dir / "soundfonts").glob("*.sf[23]"))
    candidates += [Path(p) for p in SYSTEM_SOUNDFONTS]
    for folder in ("/usr/share/soundfonts", "/usr/share/sounds/sf2", "/usr/share/sounds/sf3"):
        if Path(folder).is_dir():
            candidates += sorted(Path(folder).glob("*.sf[23]"))
    for path in candidates:
        if path.is_file():
            return path
    raise AudioUnavailable("no General MIDI soundfont found", hint=INSTALL_HINT)


def check_soundfont(path: str | os.PathLike, *, synth: str = "builtin",
                    hint: str = soundfont_check.HINT) -> Path:
    """`path` if it is a well-formed soundfont (.sf2/.sf3; FluidSynth also reads DLS);
    a one-line UsageError otherwise. Checked before generating, so that neither renderer
    meets a damaged file after files have been written (symusic could even crash on one)."""
    return soundfont_check.check_soundfont(path, hint=hint, allow_dls=synth == "fluidsynth")


def load_fluidsynth():
    # pyfluidsynth prints where it found the library when $CI is set. stdout carries results
    # (paths or JSON) and stderr only progress, warnings and errors, so that line is dropped.
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import fluidsynth  # pyfluidsynth: loads libfluidsynth with ctypes at import
    except (ImportError, OSError):
        raise AudioUnavailable("the FluidSynth library (libfluidsynth) is not installed",
                               hint=INSTALL_HINT) from None
    return fluidsynth


def render(midi: mido.MidiFile, soundfont: str | os.PathLike | None = None, *,
           synth: str = "builtin", sample_rate: int = SAMPLE_RATE,
           end_seconds: float | None = None) -> np.ndarray:
    """Stereo float32 samples, shape (frames, 2), of `midi` played through `soundfont` by
    `synth` ("builtin" or "fluidsynth"). `end_seconds` fixes the length before the tail
    (e.g. exactly 16 bars). The built-in renderer defaults to the shipped soundfont and
    normalises the peak to -1 dBFS; FluidSynth needs a soundfont and plays at its own gain."""
    if check_synth(synth) == "builtin":
        return builtin.render(midi, soundfont, sample_rate=sample_rate, end_seconds=end_seconds)
    if soundfont is None:
        soundfont = find_soundfont(synth="fluidsynth")
    return _render_fluidsynth(midi, soundfont, sample_rate=sample_rate, end_seconds=end_seconds)


def _render_fluidsynth(midi: mido.MidiFile, soundfont: str | os.PathLike, *, sample_rate: int,
                       end_seconds: float | None) -> np.ndarray:
    """FluidSynth, stepped by hand: no audio driver, faster than realtime."""
    fluidsynth = load_fluidsynth()
    synth = fluidsynth.Synth(samplerate=float(sample_rate), gain=0.5)
    try:
        font = synth.sfload(str(soundfont))
        if font < 0:
            raise BangerError(f"cannot load soundfont {soundfont}", hint="is it a valid .sf2/.sf3?")
        for channel in range(16):
            if channel == 9:
                synth.program_select(channel, font, DRUM_BANK, 0)
            else:
                synth.program_select(channel, font, 0, 0)
        chunks: list[np.ndarray] = []
        now = 0  # frames rendered so far
        clock = 0.0
        for message in midi:  # merged tracks, time in seconds (tempo-aware)
            clock += message.time
            due = int(round(clock * sample_rate))
            if due > now:
                chunks.append(synth.get_samples(due - now))
                now = due
            _play(synth, font, message)
        total = int(round(((end_seconds if end_seconds is not None else clock) + TAIL_SECONDS)
                          * sample_rate))
        if total > now:
            chunks.append(synth.get_samples(total - now))
    finally:
        synth.delete()
    if not chunks:
        return np.zeros((0, 2), dtype=np.float32)
    interleaved = np.concatenate(chunks).astype(np.float32) / 32768.0
    return interleaved.reshape(-1, 2)


def _play(synth, font: int, message: mido.Message) -> None:
    if message.is_meta:
        return
    kind = message.type
    if kind == "note_on" and message.velocity > 0:
        synth.noteon(message.channel, message.note, message.velocity)
    elif kind in ("note_on", "note_off"):
        synth.noteoff(message.channel, message.note)
    elif kind == "program_change":
        bank = DRUM_BANK if message.channel == 9 else 0
        synth.program_select(message.channel, font, bank, message.program)
    elif kind == "control_change":
        synth.cc(message.channel, message.control, message.value)
    elif kind == "pitchwheel":
        synth.pitch_bend(message.channel, message.pitch)


def write_audio(samples: np.ndarray, path: str | os.PathLike, *, fmt: str,
                sample_rate: int = SAMPLE_RATE, overwrite: bool = True) -> Path:
    """Write samples as `fmt` atomically (temporary file in the same folder, then rename)."""
    return atomic_write(path, lambda temporary: encode_audio(samples, temporary, fmt=fmt,
                                                             sample_rate=sample_rate),
                        overwrite=overwrite)


def encode_audio(samples: np.ndarray, path: str | os.PathLike, *, fmt: str,
                 sample_rate: int = SAMPLE_RATE) -> None:
    """Encode samples straight into `path` (callers make it atomic)."""
    data = audio_bytes(samples, fmt=fmt, sample_rate=sample_rate)
    with open(path, "wb") as file:
        file.write(data)


def audio_bytes(samples: np.ndarray, *, fmt: str, sample_rate: int = SAMPLE_RATE) -> bytes:
    """The encoded file, in memory (what encode_audio writes; the preview worker's answer)."""
    import soundfile

    if fmt not in AUDIO_FORMATS:
        raise BangerError(f"unknown audio format {fmt!r}", hint=f"choose one of: {', '.join(AUDIO_FORMATS)}")
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(samples, -1.0, 1.0), sample_rate, format=fmt.upper())
    return buffer.getvalue()
