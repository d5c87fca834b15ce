"""A musician's request: declared once, validated once.

`Request(...)` is the one constructor that `Banger.generate(**options)`, the command line and
the evaluation all go through. Every semantic check and every bound lives here, so a request
that exists is a request generation can honour: types, ranges, lengths and contradictions
are refused with a `UsageError` naming the command-line flag.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, fields

import mido

from ..checks import check_seed
from ..errors import UsageError
from ..midi.instruments import instrument_named
from .sampling import Sampling

DEFAULT_BARS = 16  # the length when neither bars nor tokens is given
BPM_RANGE = (10, 400)
# Sampling divides float32 logits by the temperature: beyond these bounds they overflow or
# underflow to inf/NaN and no token can be drawn (1e39 or 1e-300 made the loop spin forever).
TEMPERATURE_RANGE = (1e-30, 1e38)
TOP_P_LEAST = 1e-6
STEER_RANGE = (0, 10)
ECHO_MOST = 0.9  # the rest is always the model's: at 1 a new point could never follow another
DEFAULT_ECHO = 0.6  # chosen by measurement: docs/generation.md "Echo"
# Ceilings, so that a page or a script cannot start practically endless work by accident
# (a typo of -n 1000000000). 256 bars are 8.5 minutes at 120 bpm.
MAX_BARS = 256
MAX_TOKENS = 65_536
MAX_VARIANTS = 64
MAX_PROMPT_BARS = 4_096


@dataclass(frozen=True)
class Request:
    instruments: tuple[str, ...] = ()  # category names, lead first; empty = the model chooses
    only: bool = False  # no notes of instruments other than `instruments` (and drums if on)
    drums: bool | None = None  # drums on/off; None = the model chooses
    bars: int | None = None  # length in 4/4 bars after the prompt (None: 16, unless `tokens`)
    tokens: int | None = None  # or: length in generated tokens (then `bars` stays None)
    variants: int = 1  # pieces, generated a batch at a time
    seed: int = 0  # same seed and options -> same pieces
    bpm: float | None = None  # tempo; None = the prompt's, or 120
    prompt: str | os.PathLike | bytes | mido.MidiFile | None = None  # a MIDI file to continue
    prompt_bars: int | None = None  # bars of the prompt kept verbatim; None = all of it
    add: tuple[str, ...] = ()  # play along: new parts for these instruments beside the prompt
    rewrite: tuple[int, int] | None = None  # bars (first, last), 1-based, written anew
    let_rest: bool = False  # after or beside a prompt, parts may stay silent for 4 bars and more
    temperature: float = 1.0  # < 1 is safer, > 1 more adventurous
    top_p: float = 0.95  # nucleus sampling mass for the note choice, in (0, 1]
    top_k: int = 0  # sample the note among the k likeliest (0 = off)
    steer: float = 3.0  # logit bonus for requested instruments that are missing or behind (0 = off)
    echo: float = DEFAULT_ECHO  # share of a choice that follows what the piece did at the same point (0 = off)

    def __post_init__(self) -> None:
        instruments = self.instruments
        if isinstance(instruments, str):
            instruments = (instruments,)
        if instruments is None or not _iterable(instruments):
            raise UsageError(f"instruments must be a list of names, got {instruments!r}",
                             hint="e.g. instruments=['guitar', 'bass']; see `banger instruments`")
        instruments = tuple(instruments)
        for name in instruments:
            if not isinstance(name, str):
                raise UsageError(f"instrument names are strings, got {name!r}",
                                 hint="see `banger instruments`")
        object.__setattr__(self, "instruments", instruments)
        object.__setattr__(self, "add", _names(self.add, "add"))
        object.__setattr__(self, "rewrite", _bar_range(self.rewrite))
        _check_types(self)
        self._check_values()
        self._check_play_along()
        if self.bars is not None and self.tokens is not None:
            raise UsageError("--bars and --tokens contradict each other", hint="give one length")
        if self.bars is None and self.tokens is None:
            # playing along, the piece is as long as the prompt unless asked for more
            object.__setattr__(self, "bars", 0 if self.plays_along else DEFAULT_BARS)

    @property
    def plays_along(self) -> bool:
        """--add or --rewrite: the prompt's notes are kept where they are, not just continued."""
        return bool(self.add) or self.rewrite is not None

    @property
    def sampling(self) -> Sampling:
        return Sampling(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)

    def _check_values(self) -> None:
        for flag, value, ceiling in (("--bars", self.bars, MAX_BARS),
                                     ("--tokens", self.tokens, MAX_TOKENS),
                                     ("--variants", self.variants, MAX_VARIANTS),
                                     ("--prompt-bars", self.prompt_bars, MAX_PROMPT_BARS)):
            least = 0 if flag == "--bars" and self.plays_along else 1
            if value is not None and value < least:
                raise UsageError(f"{flag} must be at least {least}, got {value}")
            if value is not None and value > ceiling:
                raise UsageError(f"{flag} must be at most {ceiling}, got {value}",
                                 hint="a ceiling against runaway work: run several commands")
        if not self.temperature > 0:
            raise UsageError(f"--temperature must be > 0, got {self.temperature}")
        if not TEMPERATURE_RANGE[0] <= self.temperature <= TEMPERATURE_RANGE[1]:
            raise UsageError(f"--temperature must be between {TEMPERATURE_RANGE[0]} and "
                             f"{TEMPERATURE_RANGE[1]}, got {self.temperature}",
                             hint="1 is the model's own distribution; 0.5-1.5 is the useful range")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_p < TOP_P_LEAST:
            raise UsageError(f"--top-p must be at least {TOP_P_LEAST}, got {self.top_p}",
                             hint="a tiny top-p keeps only the likeliest note: 0.01 does that")
        if self.top_k < 0:
            raise UsageError(f"--top-k must be >= 0, got {self.top_k}")
        if self.bpm is not None and not BPM_RANGE[0] <= self.bpm <= BPM_RANGE[1]:
            raise UsageError(f"--bpm must be between {BPM_RANGE[0]} and {BPM_RANGE[1]}, "
                             f"got {self.bpm}")
        if self.prompt_bars is not None and self.prompt is None:
            raise UsageError("--prompt-bars needs a --prompt")
        if self.only and not self.instruments:
            raise UsageError("--only needs at least one --instrument")
        for name in self.instruments:
            instrument_named(name)
        if self.only and self.drums is False and all(instrument_named(name).is_drums
                                                     for name in self.instruments):
            raise UsageError("--only drums with --no-drums leaves nothing to play")
        if not STEER_RANGE[0] <= self.steer <= STEER_RANGE[1]:
            raise UsageError(f"--steer must be between {STEER_RANGE[0]} and {STEER_RANGE[1]}, "
                             f"got {self.steer}")
        if not 0 <= self.echo <= ECHO_MOST:
            raise UsageError(f"--echo must be between 0 and {ECHO_MOST}, got {self.echo}",
                             hint="0 is the model alone; 0.2-0.5 brings the riffs back")
        check_seed(self.seed)


    def _check_play_along(self) -> None:
        if not self.plays_along:
            return
        flag = "--add" if self.add else "--rewrite"
        if self.prompt is None:
            raise UsageError(f"{flag} needs a --prompt", hint=f"e.g. --prompt riff.mid {flag} "
                             + ("drums" if self.add else "5-8"))
        if self.add and self.rewrite is not None:
            raise UsageError("--add and --rewrite are two different jobs",
                             hint="run one command for each")
        if self.tokens is not None:
            raise UsageError(f"{flag} counts its length in bars, not --tokens",
                             hint="use --bars N to continue N bars after the prompt")
        if self.add and (self.instruments or self.only):
            raise UsageError("with --add the band is the prompt's parts and the added ones",
                             hint="list the new parts with --add (repeatable), not --instrument")
        if self.only and self.rewrite is not None:
            raise UsageError("--rewrite already writes only the listed --instrument parts",
                             hint="drop --only")
        for name in self.add:
            instrument_named(name)
        if self.rewrite is not None and self.prompt_bars is not None \
                and self.rewrite[1] > self.prompt_bars:
            raise UsageError(f"--rewrite {self.rewrite[0]}-{self.rewrite[1]} reaches past the "
                             f"{self.prompt_bars} kept bars (--prompt-bars)",
                             hint="choose bars inside the kept part of the prompt")


def prompt_name(prompt) -> str:
    """A short name of a prompt for messages: its path, or what it is and its size."""
    if isinstance(prompt, (bytes, bytearray)):
        return f"the prompt ({len(prompt):,} bytes)"
    if isinstance(prompt, mido.MidiFile):
        return "the prompt (a mido.MidiFile)"
    return f"the prompt {os.fsdecode(prompt):.200}"


def _names(value, field: str) -> tuple[str, ...]:
    """A tuple of instrument names from a name or an iterable of names."""
    if isinstance(value, str):
        value = (value,)
    if value is None or not _iterable(value) or not all(isinstance(n, str) for n in value):
        raise UsageError(f"{field} must be a list of instrument names, got {value!r:.60}",
                         hint="e.g. add=['drums', 'bass']; see `banger instruments`")
    return tuple(value)


def _bar_range(value) -> tuple[int, int] | None:
    """(first, last) bars, 1-based and inclusive, from a pair or a text like "5-8" or "5"."""
    if value is None:
        return None
    text = value if isinstance(value, str) else None
    if text is not None:
        first, _, last = text.strip().partition("-")
        try:
            value = (int(first), int(last or first))
        except ValueError:
            raise UsageError(f"--rewrite takes bars like 5-8, got {text!r:.40}",
                             hint="first and last bar, 1-based and inclusive") from None
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)):
        raise UsageError(f"--rewrite takes two bar numbers, got {value!r:.40}",
                         hint="e.g. rewrite=(5, 8) or --rewrite 5-8")
    first, last = int(value[0]), int(value[1])
    if first < 1 or last > MAX_PROMPT_BARS:
        raise UsageError(f"--rewrite bars are counted from 1, got {first}-{last}")
    if last < first:
        raise UsageError(f"--rewrite {first}-{last} ends before it starts",
                         hint=f"write the earlier bar first: --rewrite {last}-{first}")
    return first, last


# The type each field must have; `None` is allowed where the default is None.
_INTEGERS = ("bars", "tokens", "variants", "seed", "prompt_bars", "top_k")
_NUMBERS = ("bpm", "temperature", "top_p", "steer", "echo")
_FLAGS = ("only", "drums", "let_rest")
_FLAG_NAMES = {"let_rest": "--let-rest", "tokens": "--tokens", "variants": "--variants", "seed": "--seed", "bpm": "--bpm",
               "prompt_bars": "--prompt-bars", "top_k": "--top-k", "top_p": "--top-p"}


def _check_types(request: Request) -> None:
    defaults = {f.name: f.default for f in fields(request)}
    for name in _INTEGERS + _NUMBERS + _FLAGS:
        value = getattr(request, name)
        if value is None and defaults[name] is None:
            continue
        flag = _FLAG_NAMES.get(name, f"--{name}")
        if name in _FLAGS:
            if not isinstance(value, bool):
                raise UsageError(f"{flag} must be True or False, got {value!r}")
        elif isinstance(value, bool) or not isinstance(
                value, numbers.Integral if name in _INTEGERS else numbers.Real):
            kind = "a whole number" if name in _INTEGERS else "a number"
            raise UsageError(f"{flag} must be {kind}, got {value!r}")
        elif name in _NUMBERS and not math.isfinite(value):  # inf would sample forever
            raise UsageError(f"{flag} must be a finite number, got {value}")
    prompt = request.prompt
    if prompt is not None and not isinstance(prompt, (str, os.PathLike, bytes, mido.MidiFile)):
        raise UsageError(f"--prompt must be a path to a MIDI file, got {type(prompt).__name__}",
                         hint="a path, the file's bytes or a mido.MidiFile")


def _iterable(value) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return True
