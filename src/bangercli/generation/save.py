"""Writing generated pieces to disk: names from a template, never clobbering, never half-written.

Each file is written to a temporary name in the target folder and then linked to its final
name, which fails if that name exists: two `banger generate` runs writing into one folder
cannot overwrite each other's files (a run that loses a name to another fails and removes
the files it wrote), and a killed run leaves no partial file under a final name. With
`force`, the final rename replaces an existing file instead.
"""

from __future__ import annotations

import io
import os
import re
import string
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import BangerError, OutputExistsError, UsageError
from ..atomic_files import atomic_write, remove_stale_parts
from .generate import Piece
from ..midi.instruments import INSTRUMENTS

if TYPE_CHECKING:
    from ..render.previews import PreviewMaker

NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems
TEMPLATE_FIELDS = ("lead", "instruments", "drums", "seed", "n", "bars", "bpm")


@dataclass
class Saved:
    piece: Piece
    midi: Path
    audio: Path | None = None
    piano_roll: Path | None = None

    def to_json(self) -> dict:
        piece = self.piece
        return {
            "midi": str(self.midi),
            "audio": str(self.audio) if self.audio else None,
            "piano_roll": str(self.piano_roll) if self.piano_roll else None,
            "seed": piece.seed,
            "instruments": piece.instruments,
            "drums": piece.drums,
            "bars": piece.bars,
            "bpm": piece.bpm,
            "notes": len(piece.notes),
            "seconds": round(piece.seconds, 3),
        }


def check_template(template: str, *, seed: int = 0, variants: int = 1) -> None:
    """Refuse a name template that cannot name a file, before any work: unknown fields,
    folders, a format spec that fails or is absurdly wide, or names too long."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise UsageError(f"bad --name template {template!r}: {err}") from None
    fields = {name for _, name, _, _ in parsed if name is not None}
    unknown = fields - set(TEMPLATE_FIELDS)
    if unknown:
        raise UsageError(f"unknown field(s) {sorted(unknown)} in --name",
                         hint=f"use {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}")
    if "/" in template or "\\" in template or not template.strip():
        raise UsageError(f"--name {template!r} must be a plain file name without folders")
    if any(ord(char) < 32 or ord(char) == 127 for char in template):
        raise UsageError(f"--name {template!r} holds a control character (newline, tab, ...)",
                         hint="file names are printed one per line on stdout")
    if template.startswith("."):
        raise UsageError(f"--name {template!r} would make hidden files (names starting with '.')",
                         hint="start the name with a letter or a {field}")
    specs = [spec or "" for _, field, spec, _ in parsed if field]
    if any(len(digits) > 3 for spec in specs for digits in re.findall(r"[0-9]+", spec)):
        raise UsageError(f"--name {template!r}: a field width is too large")
    melodic = [inst.name for inst in INSTRUMENTS if not inst.is_drums]
    longest = Piece(ids=[], notes=[], instruments=melodic, drums=False, bars=9999, bpm=400.0,
                    seed=seed, midi=None)  # the longest name the template can make
    try:
        stem = stem_of(template, longest, variants)
    except (ValueError, TypeError) as err:
        raise UsageError(f"bad --name template {template!r}: {err}") from None
    # ".<stem>.flac.<pid>.XXXXXXXX.part" is the longest name written (files.atomic_write)
    if len(os.fsencode(stem)) + len(".flac") + 32 > NAME_MAX:
        raise UsageError(f"--name {template!r} makes file names longer than {NAME_MAX} bytes")


def stem_of(template: str, piece: Piece, n: int) -> str:
    """The file name without suffix that `template` gives `piece`, the n-th. A template
    ending in .mid/.midi names the MIDI file itself: `song.mid` gives song.mid, song.mp3."""
    lead = piece.instruments[0] if piece.instruments else ("drums" if piece.drums else "silence")
    for suffix in (".mid", ".midi"):
        if template.lower().endswith(suffix) and len(template) > len(suffix):
            template = template[: -len(suffix)]
    return template.format(
        lead=lead, instruments="+".join(piece.instruments) or "none",
        drums="drums" if piece.drums else "nodrums", seed=piece.seed, n=n, bars=piece.bars,
        bpm=f"{piece.bpm:g}",
    )


def save_pieces(pieces: list[Piece], out_dir: str | os.PathLike, *, template: str = "{lead}-{seed}-{n}",
                audio: str | None = "mp3", soundfont: str | os.PathLike | None = None,
                synth: str = "builtin", piano_roll: bool = False, force: bool = False,
                steps_per_bar: int = 32, previews: PreviewMaker | None = None,
                warn: Callable[[str], None] = lambda message: None) -> list[Saved]:
    """Write each piece's MIDI (and audio preview and piano roll, when asked). Audio is
    rendered by `synth`: "builtin" (always available) or "fluidsynth" (without the library
    or a soundfont: a warning and no audio). `previews` (see `start_previews`) holds previews
    made while the pieces were generated; one it does not have is rendered here."""
    check_template(template, seed=pieces[0].seed if pieces else 0, variants=len(pieces))
    if audio:
        from ..render.audio import check_synth

        check_synth(synth)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BangerError(f"cannot create {out_dir}: {err.strerror or err}",
                          hint="choose a writable --out folder") from None
    remove_stale_parts(out_dir)  # temporary files of a killed run
    stems = [stem_of(template, piece, n) for n, piece in enumerate(pieces, 1)]
    if len(set(stems)) != len(stems):
        raise UsageError(f"--name {template!r} gives several pieces the same name",
                         hint="include {n} or {seed} in the template")
    suffixes = [".mid"] + ([f".{audio}"] if audio else []) + ([".png"] if piano_roll else [])
    if not force:
        for stem in stems:
            for suffix in suffixes:
                if (out_dir / (stem + suffix)).exists():
                    raise OutputExistsError(f"{out_dir / (stem + suffix)} already exists",
                                            hint="pass --force to overwrite, or another --seed/--name")
    font = _soundfont_or_warn(soundfont, synth, warn) if audio else None
    saved = []
    written: list[tuple[Path, int]] = []  # (file, inode) this call created
    # a preview is rendered here and encoded by a second thread, which encodes one piece
    # while the next one renders (4 previews of 16 bars: 0.81-0.89x the time, docs/benchmarks.md)
    encoder = ThreadPoolExecutor(max_workers=1) if font is not None and len(pieces) > 1 else None
    if previews is not None:  # what the worker has not started is made here, beside it
        previews.cancel_pending()
    encoding: list[tuple[Saved, Future]] = []
    try:
        try:
            for n, (stem, piece) in enumerate(zip(stems, pieces)):
                buffer = io.BytesIO()
                piece.midi.save(file=buffer)
                record = Saved(piece, _write(out_dir / f"{stem}.mid", buffer.getvalue(),
                                             force=force))
                written.append((record.midi, record.midi.stat().st_ino))
                made = previews.audio(n) if previews is not None and font is not None else None
                if made is not None:
                    record.audio = _write(out_dir / f"{stem}.{audio}", made, force=force)
                    written.append((record.audio, record.audio.stat().st_ino))
                elif font is not None:
                    path = out_dir / f"{stem}.{audio}"
                    samples = _render_audio(piece, font, synth=synth)
                    if encoder is None:
                        record.audio = _encode_audio(samples, path, audio, force=force)
                        written.append((record.audio, record.audio.stat().st_ino))
                    else:
                        encoding.append((record, encoder.submit(_encode_audio, samples, path,
                                                                audio, force=force)))
                if piano_roll:
                    record.piano_roll = _write_piano_roll(piece, out_dir / f"{stem}.png",
                                                          force=force, steps_per_bar=steps_per_bar)
                    written.append((record.piano_roll, record.piano_roll.stat().st_ino))
                saved.append(record)
        except BaseException:
            _encoded(encoding, written)  # the first failure is the one to report
            raise
        failure = _encoded(encoding, written)
        if failure is not None:
            raise failure
    except BangerError:
        # another run took one of our names after the check above, or the disk filled up:
        # this run fails, and like a run stopped by that check it leaves none of its files
        # (stdout never named them). With --force they may have replaced older files: kept.
        if not force:
            _remove_own(written)
        raise
    finally:
        if encoder is not None:
            encoder.shutdown()
    return saved


def start_previews(audio: str | None, *, synth: str, soundfont: str | os.PathLike | None,
                   variants: int) -> PreviewMaker | None:
    """A worker process that makes the built-in renderer's previews of pieces that are done
    while the others are still being generated (`finished_piece` tells it of each), or None
    where it cannot gain: one piece (nothing to overlap), no audio, or FluidSynth (its
    library lets go of Python's lock: rendered here, it overlaps the encoder already).
    -n 4 of 16 bars with MP3: docs/benchmarks.md, "Session 10"."""
    if not audio or synth != "builtin" or variants < 2:
        return None
    from ..render.previews import PreviewMaker

    return PreviewMaker(audio, soundfont)


def finished_piece(previews: PreviewMaker | None) -> Callable[[int, Piece], None] | None:
    """generate()'s `finished` callback that hands each finished piece to `previews`."""
    if previews is None:
        return None
    return lambda n, piece: previews.submit(n, piece.midi, piece.seconds)


def _encoded(encoding: list, written: list[tuple[Path, int]]) -> BaseException | None:
    """Wait for every encode handed to the second thread; note each file it wrote in
    `written` (and its record); the first failure, or None."""
    failure = None
    for record, future in encoding:
        try:
            record.audio = future.result()
            written.append((record.audio, record.audio.stat().st_ino))
        except BaseException as err:  # noqa: BLE001 - returned to the caller, who raises it
            failure = failure or err
    return failure


def _remove_own(written: list[tuple[Path, int]]) -> None:
    """Remove files this run created, unless a --force run has replaced one since."""
    for path, inode in written:
        try:
            if path.stat().st_ino == inode:
                path.unlink()
        except OSError:
            pass


def _soundfont_or_warn(soundfont, synth: str, warn: Callable[[str], None]) -> Path | None:
    """The checked soundfont for `synth`, before anything is written. The built-in renderer
    always has one (the shipped file unless --soundfont), so only FluidSynth can warn."""
    from ..render.audio import AudioUnavailable, load_fluidsynth, find_soundfont
    from ..paths import banger_home

    if synth == "builtin":
        return find_soundfont(soundfont, synth=synth)
    try:
        load_fluidsynth()
        return find_soundfont(soundfont, synth=synth, data_dir=banger_home())
    except AudioUnavailable as err:
        warn(f"no audio preview: {err} ({err.hint})")
        return None


def _write(path: Path, data: bytes, *, force: bool) -> Path:
    return _commit(path, lambda temporary: temporary.write_bytes(data), force=force)


def _write_audio(piece: Piece, font, path: Path, fmt: str, *, force: bool,
                 synth: str = "builtin") -> Path:
    return _encode_audio(_render_audio(piece, font, synth=synth), path, fmt, force=force)


def _render_audio(piece: Piece, font, *, synth: str):
    from ..render import audio as renderer

    return renderer.render(piece.midi, font, synth=synth, end_seconds=piece.seconds)


def _encode_audio(samples, path: Path, fmt: str, *, force: bool) -> Path:
    from ..render.audio import encode_audio

    def encode(temporary: Path) -> None:
        try:
            encode_audio(samples, temporary, fmt=fmt)
        except RuntimeError as err:  # libsndfile says only "system error" (2) for a full disk
            if getattr(err, "code", None) != 2:
                raise
            raise OSError(f"the audio encoder could not write ({err})") from None

    return _commit(path, encode, force=force)


def _write_piano_roll(piece: Piece, path: Path, *, force: bool, steps_per_bar: int) -> Path:
    from ..render.pianoroll import render, write_png

    image = render(piece.notes, steps_per_bar=steps_per_bar, length=piece.bars * steps_per_bar)
    return _commit(path, lambda temporary: write_png(image, temporary), force=force)


def _commit(path: Path, write: Callable[[Path], object], *, force: bool) -> Path:
    """Write through `write(temporary)`, then give it its final name (never clobbering
    another file unless `force`). A full disk or read-only folder raises a WriteError."""
    try:
        return atomic_write(path, write, overwrite=force)
    except OutputExistsError as err:
        raise OutputExistsError(str(err), hint="pass --force to overwrite, or another --seed/--name") from None
