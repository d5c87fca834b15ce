"""The JSON of the web API: options in (checked by `Request`, plus the page's ceilings), pieces out.

Every check of a value is the library's: the options go to `Request(**options)` as they are,
so a bad one gets the same `UsageError` message as on the command line. This module adds
only what is particular to a server: unknown keys, a random seed when none is given, the
page's ceilings, and a prompt named by a file this server holds instead of a path.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, fields

from ..errors import UsageError
from ..generation.generate import Piece
from ..generation.request import Request

# Request fields a client may set; `prompt` is a file this server holds (see `prompt_name`).
OPTIONS = tuple(f.name for f in fields(Request))
SEED_RANGE = 1_000_000  # a random seed is drawn below this, as on the command line


@dataclass(frozen=True)
class WebConfig:
    max_variants: int = 8  # pieces per request (the library allows 64)
    max_bars: int = 64  # bars per piece after the prompt (the library allows 256)
    max_tokens: int = 8_192  # tokens per piece when the length is given in tokens
    max_upload_bytes: int = 5 * 1024 * 1024  # a MIDI file to continue; larger ones get 413
    max_json_bytes: int = 64 * 1024  # the options of one request
    max_waiting: int = 2  # requests queued behind the running one; more get 503


def request_from(options: object, config: WebConfig, *, prompt: bytes | None = None) -> Request:
    """The `Request` for a JSON object of options. `prompt`, when given, replaces the
    object's "prompt" (the bytes of the file it names). Raises `UsageError`."""
    if not isinstance(options, dict):
        raise UsageError("the request body must be a JSON object of options",
                         hint='e.g. {"instruments": ["guitar"], "drums": true, "bars": 8}')
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise UsageError(f"unknown option(s): {', '.join(map(repr, unknown))}",
                         hint=f"the options are: {', '.join(OPTIONS)}")
    options = dict(options)
    if options.get("seed") is None:
        options["seed"] = secrets.randbelow(SEED_RANGE)
    for name in ("instruments", "add"):  # JSON null: not given, as for every other option
        if options.get(name) is None:
            options[name] = ()
    if prompt is not None:
        options["prompt"] = prompt
    elif options.get("prompt") is not None:
        raise UsageError("a prompt must be a file this server holds")
    request = Request(**options)  # every value is checked here, as on the command line
    for name, value, ceiling in (("variants", request.variants, config.max_variants),
                                 ("bars", request.bars if request.tokens is None else None,
                                  config.max_bars),
                                 ("tokens", request.tokens, config.max_tokens)):
        if value is not None and value > ceiling:
            raise UsageError(f"{name} must be at most {ceiling} on this page, got {value}",
                             hint="the command line `banger generate` allows more")
    return request


def prompt_name(value: object) -> str:
    """The file name in a "prompt" option: the `/files/NAME` URL the API returned, or NAME."""
    if not isinstance(value, str) or not value:
        raise UsageError(f"prompt must be the URL of a MIDI file this server holds, got {value!r}",
                         hint="upload the file to /api/uploads first, or use a piece's midi URL")
    return value.removeprefix("/files/")


def piece_json(piece: Piece, *, midi: str, audio: str | None, steps_per_quarter: int) -> dict:
    """One piece as the API returns it; `notes` are [start s, duration s, pitch, instrument]
    (instrument: the category index of /api/instruments), for the page's piano roll."""
    step = 60.0 / piece.bpm / steps_per_quarter  # seconds per grid step
    notes = [[round(n.start * step, 4), round(n.duration * step, 4), n.pitch, n.instrument]
             for n in piece.notes]
    return {"seed": piece.seed, "midi": midi, "audio": audio, "instruments": piece.instruments,
            "drums": piece.drums, "bars": piece.bars, "bpm": piece.bpm,
            "seconds": round(piece.seconds, 3), "warnings": list(piece.warnings), "notes": notes}
