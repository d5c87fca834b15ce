"""The built-in renderer: MIDI to stereo samples with symusic's synthesizer, pip alone.

symusic ships its synthesizer inside its wheel (no libfluidsynth, no audio driver), and
banger ships its soundfont (soundfonts/FluidR3Mono_GM.sf3), so the same piece gives the same
samples on every machine: output depends only on the MIDI, the soundfont file, the sample
rate and the symusic version (pinned in pyproject.toml). Every soundfont is checked before
symusic opens it (soundfont.check_soundfont): a damaged one can crash the process there.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import Union

import mido
import numpy as np

from ..errors import BangerError, MidiReadError
from .soundfont import SoundfontError, check_soundfont

SAMPLE_RATE = 44_100
TAIL_SECONDS = 1.5  # let the last notes ring out
TARGET_PEAK = 10 ** (-1 / 20)  # -1 dBFS (0.891): headroom for the MP3 encoder's overshoot
SILENCE = 1e-6  # a peak below this is silence, left as it is
FADE_SECONDS = 0.01  # fade at the very end, so a note cut by the length does not click

BUILTIN_SOUNDFONT = Path(__file__).with_name("soundfonts") / "FluidR3Mono_GM.sf3"
REINSTALL_HINT = "reinstall banger (its package ships the soundfont), or pass --soundfont FILE"

Midi = Union[mido.MidiFile, bytes, bytearray, str, os.PathLike]

_render_lock = threading.Lock()  # symusic does not document its Synthesizer as thread-safe


def builtin_soundfont() -> Path:
    """The soundfont shipped with banger; a BangerError if this installation lost it."""
    if not BUILTIN_SOUNDFONT.is_file():
        raise BangerError(f"the built-in soundfont {BUILTIN_SOUNDFONT} is missing",
                          hint=REINSTALL_HINT)
    return BUILTIN_SOUNDFONT


def check_builtin(path: Path) -> Path:
    """check_soundfont, with a hint fit for the shipped file when `path` is that file."""
    if Path(path).resolve() == BUILTIN_SOUNDFONT.resolve():
        try:
            return check_soundfont(path)
        except SoundfontError as err:
            raise BangerError(f"the built-in {err}", hint=REINSTALL_HINT) from None
    return check_soundfont(path)


def load_synthesizer(soundfont: str | os.PathLike, sample_rate: int = SAMPLE_RATE):
    """A new symusic Synthesizer for `soundfont` (checked first: a bad table can crash the
    process inside symusic). New for every render, on purpose: a synthesizer that has played
    one piece plays the next one slightly differently (up to 0.015 of full scale, measured
    with symusic 0.5.9), and a preview must depend on its piece alone. Building one is cheap
    (the file is memory-mapped); what costs is decoding the Ogg Vorbis samples a piece uses,
    about 0.1 s for a band piece."""
    import symusic

    path = Path(soundfont).expanduser()
    check_builtin(path)
    try:
        return symusic.Synthesizer(str(path.resolve()), int(sample_rate), 0)
    except RuntimeError as err:  # symusic says e.g. "...: iostream error"
        raise SoundfontError(f"cannot load soundfont {path}: {err}") from None


def _score(midi: Midi):
    """A symusic Score from a mido.MidiFile (what banger has in hand), bytes or a path."""
    import symusic

    if isinstance(midi, mido.MidiFile):
        buffer = io.BytesIO()
        midi.save(file=buffer)
        midi = buffer.getvalue()
    try:
        if isinstance(midi, (bytes, bytearray)):
            return symusic.Score.from_midi(bytes(midi))
        if isinstance(midi, (str, os.PathLike)):
            if not Path(midi).is_file():
                raise MidiReadError(f"MIDI file {midi} does not exist")
            return symusic.Score.from_file(Path(midi))
    except (RuntimeError, ValueError) as err:
        raise MidiReadError(f"cannot read MIDI for the audio preview: {err}") from None
    raise TypeError(f"expected a mido.MidiFile, MIDI bytes or a path, not {type(midi).__name__}")


def render(midi: Midi, soundfont: str | os.PathLike | None = None, *,
           sample_rate: int = SAMPLE_RATE, end_seconds: float | None = None,
           tail_seconds: float = TAIL_SECONDS) -> np.ndarray:
    """Stereo float32 samples, shape (frames, 2), of `midi` played through `soundfont`
    (default: the shipped one).

    Exactly round((end_seconds + tail_seconds) * sample_rate) frames, where end_seconds
    defaults to the end of the last note: longer output is cut with a 10 ms fade, shorter is
    padded with silence. Peak-normalised to -1 dBFS unless silent, so a preview has the same
    level whatever its track count, and never clips.
    """
    if end_seconds is not None and end_seconds < 0:
        raise ValueError("end_seconds must be >= 0")
    if tail_seconds < 0:
        raise ValueError("tail_seconds must be >= 0")
    synth = load_synthesizer(builtin_soundfont() if soundfont is None else soundfont,
                             sample_rate)
    score = _score(midi)
    if end_seconds is None:
        end_seconds = float(score.to("second").end()) if score.note_num() else 0.0
    frames = int(round((end_seconds + tail_seconds) * sample_rate))

    audio = np.zeros((frames, 2), dtype=np.float32)
    if score.note_num():
        try:
            with _render_lock:
                raw = synth.render(score, True)  # (2, n) float32; True: stereo
        except RuntimeError as err:  # e.g. "Cannot decode sample!" for damaged SF3 audio
            font = Path(BUILTIN_SOUNDFONT if soundfont is None else soundfont)
            message = f"soundfont {font} is damaged: its samples cannot be played ({err})"
            if font.resolve() == BUILTIN_SOUNDFONT.resolve():
                raise BangerError(f"the built-in {message}", hint=REINSTALL_HINT) from None
            raise SoundfontError(message) from None
        played = np.asarray(raw, dtype=np.float32).T[:frames]
        audio[: len(played)] = played

    fade = min(frames, int(round(FADE_SECONDS * sample_rate)))
    if fade:
        audio[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)[:, None]
    peak = float(np.max(np.abs(audio))) if frames else 0.0
    if peak > SILENCE:
        audio *= np.float32(TARGET_PEAK / peak)
    return audio


def peak_dbfs(samples: np.ndarray) -> float:
    """The peak level in dB relative to full scale (-inf for silence)."""
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    return 20 * float(np.log10(peak)) if peak > 0 else float("-inf")
