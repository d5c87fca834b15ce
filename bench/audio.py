"""Audio preview speed: the built-in renderer and the encoders on a 16-bar band piece.

    python bench/audio.py [--repeat K] [--soundfont FILE]

The piece: 16 bars at 120 bpm (32 s of music, 33.5 s of audio with the 1.5 s tail) of
strummed guitar, bass and drums on channel 10, built here with banger's own MIDI writer
(about 1,100 notes, as dense as the default model's band pieces). Rows, each the best of K
runs:

- the soundfont check that runs before every use of a soundfont;
- the built-in render (symusic + the shipped soundfont), first call: a fresh Synthesizer that
  still has to decode the Ogg Vorbis samples the piece uses (what one `banger generate`
  pays once), and cached (what each further piece of the same process pays);
- FluidSynth's render with the system soundfont, where libfluidsynth is installed;
- encoding the rendered samples as MP3, WAV and FLAC through `encode_audio`;
- the whole preview as `save_pieces` makes it: cached render plus MP3.

The baseline is soundfile's MP3 encode alone (`soundfile.write`, no banger code) in the same
run, and the ratio column divides each row by it, so it holds on a noisy machine. "x realtime"
is seconds of audio (33.5) per wall second.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import soundfile  # noqa: E402

from bangercli.midi.midifile import write_midi  # noqa: E402
from bangercli.midi.score import Grid, Note  # noqa: E402
from bangercli.render import audio, synth  # noqa: E402
from bangercli.render.soundfont import check_soundfont  # noqa: E402

BARS, BPM = 16, 120.0
GUITAR, BASS, DRUMS = 3, 4, 11


def band_piece(bars: int = BARS):
    """Guitar chords on the eighths and single notes between, bass eighths, hi-hat
    sixteenths with kick, snare and a crash every four bars (32 grid steps a bar)."""
    roots = (40, 45, 43, 38)  # E A G D
    notes = []
    for bar in range(bars):
        root, base = roots[bar % 4], bar * 32
        chord = (root + 12, root + 19, root + 24, root + 28)
        for step in range(0, 32, 2):
            t = base + step
            if step % 4 == 0:
                notes += [Note(t, 4, GUITAR, pitch, 5) for pitch in chord]
            else:
                notes.append(Note(t, 2, GUITAR, chord[(step // 2) % 4], 4))
            notes.append(Note(t, 2, DRUMS, 42, 4 if step % 4 else 5))
            if step in (0, 16, 20):
                notes.append(Note(t, 2, DRUMS, 36, 7))
            if step in (8, 24):
                notes.append(Note(t, 2, DRUMS, 38, 7))
        for step in range(0, 32, 4):
            notes.append(Note(base + step, 3, BASS, root - 12 + (7 if step == 24 else 0), 6))
        if bar % 4 == 0:
            notes.append(Note(base, 8, DRUMS, 49, 6))
    return notes, write_midi(notes, order=[GUITAR, BASS, DRUMS], grid=Grid(), bpm=BPM,
                             length=bars * 32)


def best_of(repeat: int, run: Callable[[], object], before: Callable[[], object] = lambda: None
            ) -> float:
    times = []
    for _ in range(repeat):
        before()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def fluidsynth_font() -> Path | None:
    try:
        audio.load_fluidsynth()
        return audio.find_soundfont(synth="fluidsynth")
    except Exception:  # no library or no system soundfont: the row is left out
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per row (the best is kept)")
    parser.add_argument("--soundfont", type=Path, default=None,
                        help="render with this soundfont instead of the shipped one")
    args = parser.parse_args()

    importlib.import_module("symusic")  # imported here, so that no row pays for the import

    font = args.soundfont or synth.builtin_soundfont()
    notes, midi = band_piece()
    seconds = BARS * 4 * 60 / BPM
    samples = synth.render(midi, font, end_seconds=seconds)
    length = len(samples) / synth.SAMPLE_RATE
    tmp = Path(tempfile.mkdtemp(prefix="banger-bench-audio-"))

    rows: list[tuple[str, float]] = []  # (what, best wall seconds)
    baseline = best_of(args.repeat, lambda: soundfile.write(tmp / "base.mp3", samples,
                                                            synth.SAMPLE_RATE, format="MP3"))
    rows.append(("baseline: soundfile MP3 encode alone", baseline))
    rows.append(("soundfont check", best_of(args.repeat, lambda: check_soundfont(font))))
    rows.append(("builtin render (a fresh synthesizer each time)", best_of(
        args.repeat, lambda: synth.render(midi, font, end_seconds=seconds))))
    system_font = fluidsynth_font()
    if system_font is not None:
        rows.append((f"fluidsynth render ({system_font.name})", best_of(
            args.repeat, lambda: audio.render(midi, system_font, synth="fluidsynth",
                                              end_seconds=seconds))))
    for fmt in audio.AUDIO_FORMATS:
        rows.append((f"encode {fmt.upper()}", best_of(
            args.repeat, lambda: audio.encode_audio(samples, tmp / f"out.{fmt}", fmt=fmt))))

    def preview() -> None:
        audio.encode_audio(synth.render(midi, font, end_seconds=seconds), tmp / "p.mp3", fmt="mp3")

    rows.append(("preview: cached render + MP3", best_of(args.repeat, preview)))

    versions = ", ".join(f"{name} {importlib.metadata.version(name)}"
                         for name in ("symusic", "soundfile", "numpy"))
    print(f"{platform.machine()}, Python {platform.python_version()}, {versions}, "
          f"libsndfile {soundfile.__libsndfile_version__}")
    print(f"piece: {BARS} bars at {BPM:g} bpm, {len(notes):,} notes, {length:.1f} s of audio; "
          f"soundfont {font.name}; best of {args.repeat}")
    print(f"samples sha256 {hashlib.sha256(samples.tobytes()).hexdigest()[:16]}, "
          f"peak {synth.peak_dbfs(samples):.2f} dBFS")
    for fmt in audio.AUDIO_FORMATS:
        print(f"{fmt.upper()}: {(tmp / f'out.{fmt}').stat().st_size / 1e6:.2f} MB")
    print()
    print("| what | seconds | x realtime | vs MP3 encode alone |")
    print("|---|---:|---:|---:|")
    for name, wall in rows:
        realtime = "-" if name == "soundfont check" else f"{length / wall:,.0f}"
        ratio = wall / baseline
        print(f"| {name} | {wall:.3f} | {realtime} | {ratio:.3f}x |" if ratio < 0.1 else
              f"| {name} | {wall:.3f} | {realtime} | {ratio:.2f}x |")
    for path in tmp.iterdir():
        path.unlink()
    tmp.rmdir()


if __name__ == "__main__":
    main()
