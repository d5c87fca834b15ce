"""Audio previews: render MIDI offline with FluidSynth and write MP3, WAV or FLAC.

No audio driver is opened: the synthesizer is stepped by hand between MIDI events and its
samples collected, so rendering works on servers and runs faster than realtime.
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

AUDIO_FORMATS = ("mp3", "wav", "flac")
SAMPLE_RATE = 44_100
TAIL_SECONDS = 1.5  # let the last notes ring out
DRUM_BANK = 128

INSTALL_HINT = (
    "to get audio previews install FluidSynth and a General MIDI soundfont "
    "(Debian/Ubuntu: apt-get install fluidsynth fluid-soundfont-gm; macOS: brew install fluid-synth "
    "and put a .sf2 in the banger data folder), or pass --soundfont FILE.sf2"
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
    """No FluidSynth library or no soundfont: MIDI is still written, audio is not."""


def find_soundfont(explicit: str | os.PathLike | None = None, *, data_dir: Path | None = None) -> Path:
    """The soundfont to use: `explicit`, then $BANGER_SOUNDFONT, then the user data folder
    (`<data dir>/soundfonts/*.sf2|*.sf3`), then common system locations."""
    if explicit is not None:
        return check_soundfont(Path(explicit).expanduser())
    from_env = os.environ.get("BANGER_SOUNDFONT")
    if from_env:
        path = Path(from_env).expanduser()
        if not path.is_file():
            raise BangerError(
                f"BANGER_SOUNDFONT points to {path}, which does not exist",
                hint="fix or unset BANGER_SOUNDFONT",
            )
        try:
            return check_soundfont(path)
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


def check_soundfont(path: Path, *, hint: str = "pass a General MIDI .sf2 or .sf3 soundfont"
                    ) -> Path:
    """`path` if it is a soundfont: a RIFF file of form "sfbk" (.sf2/.sf3; FluidSynth also
    reads DLS). Checked before generating, so FluidSynth never prints its own errors after."""
    if not path.exists():
        raise UsageError(f"soundfont {path} does not exist", hint=hint)
    if not path.is_file():
        raise UsageError(f"soundfont {path} is not a file", hint=hint)
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
    except OSError as err:
        raise UsageError(f"cannot read soundfont {path}: {err.strerror or err}", hint=hint) from None
    if head[:4] != b"RIFF" or head[8:12] not in (b"sfbk", b"DLS "):
        raise UsageError(f"soundfont {path} is not a .sf2/.sf3 file (no RIFF sfbk header)",
                         hint=hint)
    return path


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


def render(midi: mido.MidiFile, soundfont: str | os.PathLike, *, sample_rate: int = SAMPLE_RATE,
           end_seconds: float | None = None) -> np.ndarray:
    """Stereo float32 samples, shape (frames, 2), of `midi` played through `soundfont`.
    `end_seconds` fixes the length before the tail (e.g. exactly 16 bars)."""
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
    import soundfile

    if fmt not in AUDIO_FORMATS:
        raise BangerError(f"unknown audio format {fmt!r}", hint=f"choose one of: {', '.join(AUDIO_FORMATS)}")
    soundfile.write(path, np.clip(samples, -1.0, 1.0), sample_rate, format=fmt.upper())
