"""`banger generate`: the command the product exists for. A thin layer over generate/output."""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .common import (
    Progress, check_model_name, check_output_folder, removed_if_failed, stderr,
    stopped_cleanly_by_sigterm,
)
from ..errors import BangerError, MidiReadError, UsageError

AUDIO_CHOICES = ("mp3", "wav", "flac", "none")
SYNTH_CHOICES = ("builtin", "fluidsynth")


def generate(
    *,  # typer passes every argument and option by keyword
    instrument: List[str] = typer.Option(
        [], "--instrument", "-i", help="Instrument category (repeatable; the first is the lead). "
        "See `banger instruments`."),
    only: bool = typer.Option(False, "--only", help="Only the listed instruments (plus drums when on)."),
    drums: Optional[bool] = typer.Option(None, "--drums/--no-drums",
                                         help="Drums on or off (default: the model chooses)."),
    bars: Optional[int] = typer.Option(None, "--bars",
                                       help="Length in 4/4 bars (after the prompt) [16]."),
    tokens: Optional[int] = typer.Option(None, "--tokens", help="Length in tokens instead of bars."),
    variants: int = typer.Option(1, "--variants", "-n", help="How many pieces to generate."),
    temperature: float = typer.Option(1.0, help="Sampling temperature (> 0)."),
    top_p: float = typer.Option(0.95, "--top-p", help="Nucleus sampling mass, in (0, 1]."),
    top_k: int = typer.Option(0, "--top-k", help="Sample among the k likeliest tokens (0 = off)."),
    steer: float = typer.Option(3.0, "--steer", help="Logit bonus for requested instruments "
                                "while missing or behind the lead (0 = off)."),
    echo: Optional[float] = typer.Option(None, "--echo", help="Memory: the share of each choice "
                               "that follows what the piece (prompt included) did before at the "
                               "same point and 1-8 bars ago, so riffs come back (0 = the model "
                               "alone, at most 0.9) [0.6]."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default: a fresh one, "
                                       "printed in the results)."),
    bpm: Optional[float] = typer.Option(None, "--bpm", help="Tempo (default: the prompt's, or 120)."),
    prompt: Optional[Path] = typer.Option(None, "--prompt", help="A MIDI file to continue."),
    prompt_bars: Optional[int] = typer.Option(None, "--prompt-bars",
                                              help="Bars of the prompt to keep (default: all)."),
    add: List[str] = typer.Option(
        [], "--add", help="Play along: write a new part for this instrument beside every note of "
        "the --prompt, which is kept as it is (repeatable; an instrument the prompt already has "
        "gets a second voice). The piece is as long as the prompt unless --bars adds more."),
    rewrite: Optional[str] = typer.Option(
        None, "--rewrite", metavar="A-B", help="Write bars A to B (1-based, inclusive) of the "
        "--prompt anew, for the --instrument parts (default: all that play there); every other "
        "note is kept."),
    let_rest: bool = typer.Option(
        False, "--let-rest", help="After or beside a --prompt, let parts fall silent for four "
        "bars and more (default: every part of the band keeps playing in every 4 bars)."),
    model: str = typer.Option("default", "--model", "-m", help="Model name or checkpoint path."),
    out: Path = typer.Option(Path("."), "--out", "-o", help="Folder for the files."),
    name: str = typer.Option("{lead}-{seed}-{n}", "--name",
                             help="File name template: {lead} {instruments} {drums} {seed} {n} "
                             "{bars} {bpm}."),
    audio: str = typer.Option("mp3", "--audio", help="Audio preview: mp3, wav, flac or none."),
    synth: str = typer.Option("builtin", "--synth",
                              help="Audio renderer: builtin (pip only, the same sound everywhere) "
                              "or fluidsynth (needs libfluidsynth)."),
    soundfont: Optional[Path] = typer.Option(None, "--soundfont",
                                             help="A .sf2/.sf3 General MIDI soundfont "
                                             "(default: the built-in one)."),
    piano_roll: bool = typer.Option(False, "--piano-roll", help="Also write a PNG piano roll."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per piece."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or warnings."),
) -> None:
    """Generate new multitrack MIDI files (and audio previews) with a model."""
    from ..generation.request import Request

    check_model_name(model)
    if audio not in AUDIO_CHOICES:
        raise UsageError(f"unknown --audio {audio!r}", hint=f"choose one of: {', '.join(AUDIO_CHOICES)}")
    if synth not in SYNTH_CHOICES:
        raise UsageError(f"unknown --synth {synth!r}",
                         hint=f"choose one of: {', '.join(SYNTH_CHOICES)}")
    if prompt is not None and not prompt.is_file():
        raise UsageError(f"prompt {prompt} is not a file", hint="pass a .mid file to --prompt")
    if soundfont is not None:
        from ..render.audio import check_soundfont

        check_soundfont(soundfont, synth=synth)
    check_output_folder(out)
    request = Request(
        instruments=tuple(instrument), only=only, drums=drums, bars=bars, tokens=tokens,
        variants=variants, seed=secrets.randbelow(1_000_000) if seed is None else seed, bpm=bpm,
        prompt=prompt, prompt_bars=prompt_bars, temperature=temperature, top_p=top_p,
        top_k=top_k, steer=steer, add=tuple(add), rewrite=rewrite, let_rest=let_rest,
        **({} if echo is None else {"echo": echo}),
    )
    from ..generation.save import check_template, start_previews

    check_template(name, seed=request.seed, variants=request.variants)
    audio_format = None if audio == "none" else audio
    # with -n 2 or more, a worker process makes each piece's preview as soon as it is done
    previews = start_previews(audio_format, synth=synth, soundfont=soundfont,
                              variants=request.variants)
    try:
        with stopped_cleanly_by_sigterm():  # `timeout` or `kill`: the worker stops too
            _generate_and_save(request, previews, model=model, out=out, name=name,
                               audio=audio_format, soundfont=soundfont, synth=synth,
                               piano_roll=piano_roll, force=force, as_json=as_json, quiet=quiet)
    finally:
        if previews is not None:
            previews.close()


def _generate_and_save(request, previews, *, model: str, out: Path, name: str,
                       audio: str | None, soundfont: Path | None, synth: str, piano_roll: bool,
                       force: bool, as_json: bool, quiet: bool) -> None:
    from ..generation.save import finished_piece, save_pieces

    pieces, steps_per_bar = _generate(model, request, quiet=quiet,
                                      finished=finished_piece(previews))
    warn = (lambda message: None) if quiet else (
        lambda message: stderr.print(f"warning: {message}", soft_wrap=True, markup=False))
    for message in dict.fromkeys(w for piece in pieces for w in piece.warnings):
        warn(message)
    with removed_if_failed(out):
        saved = save_pieces(pieces, out, template=name, audio=audio, soundfont=soundfont,
                            synth=synth, piano_roll=piano_roll, force=force,
                            steps_per_bar=steps_per_bar, previews=previews, warn=warn)
        report_or_take_back(saved, as_json=as_json)


def report_or_take_back(saved: list, *, as_json: bool) -> None:
    """Name every written file on stdout (one path, or one JSON object, per piece), or, when
    stdout cannot take them (a full disk, a reader that left), remove the files again: a
    script never finds files on disk that it was not told about."""
    lines = [json.dumps(record.to_json()) if as_json else str(record.midi) for record in saved]
    try:
        sys.stdout.write("".join(line + "\n" for line in lines))
        sys.stdout.flush()
    except OSError as err:
        for record in saved:
            for path in (record.midi, record.audio, record.piano_roll):
                if path is not None:
                    Path(path).unlink(missing_ok=True)
        try:  # what is still buffered must not fail again when Python exits
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # no real file descriptor behind stdout
            pass
        raise BangerError(f"cannot write the results to stdout ({err.strerror or err}); "
                          f"the {len(saved)} piece(s) written were removed again",
                          hint="send stdout to a file or a pipe that reads it all") from None


def _generate(model_name: str, request, *, quiet: bool, finished=None):
    from ..api import load_model

    banger = load_model(model_name)
    with Progress("generating", quiet=quiet) as update:
        try:
            pieces = banger.generate(request, progress=update, finished=finished)
        except MidiReadError as err:  # only the prompt is read: say which file is broken
            raise MidiReadError(f"--prompt {request.prompt}: {err.message}",
                                hint=err.hint) from None
    return pieces, banger.tokenizer.config.steps_per_bar
