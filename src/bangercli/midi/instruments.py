"""The 12 instrument categories that banger writes, covering all 128 General MIDI programs.

Eleven melodic categories are contiguous ranges of GM programs; the twelfth is drums,
which General MIDI puts on channel 10 (index 9) whatever the program.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError

DRUM_CHANNEL = 9  # MIDI channel 10, zero-based


@dataclass(frozen=True)
class Instrument:
    index: int  # position in the vocabulary (0..11); drums are last
    name: str  # what a musician types: --instrument guitar
    programs: range  # GM programs (0-based) that fall in this category
    default_program: int  # the GM program written when decoding
    aliases: tuple[str, ...] = ()

    @property
    def is_drums(self) -> bool:
        return self.name == "drums"


INSTRUMENTS: tuple[Instrument, ...] = (
    Instrument(0, "piano", range(0, 8), 0, ("keys", "keyboard")),
    Instrument(1, "chromatic", range(8, 16), 11, ("chromatic-percussion", "mallets", "bells")),
    Instrument(2, "organ", range(16, 24), 16, ()),
    Instrument(3, "guitar", range(24, 32), 29, ()),  # 29: overdriven electric guitar
    Instrument(4, "bass", range(32, 40), 33, ()),  # 33: electric bass (finger)
    Instrument(5, "strings", range(40, 56), 48, ("ensemble", "choir")),  # incl. ensembles and voices
    Instrument(6, "brass", range(56, 64), 61, ()),
    Instrument(7, "woodwinds", range(64, 80), 73, ("reed", "pipe", "winds")),
    Instrument(8, "lead", range(80, 88), 81, ("synth-lead",)),
    Instrument(9, "pad", range(88, 104), 89, ("synth-pad", "synth-effects")),
    Instrument(10, "ethnic", range(104, 128), 105, ("percussive", "sound-effects")),
    Instrument(11, "drums", range(0, 0), 0, ("drum", "percussion", "kit")),
)

MELODIC: tuple[Instrument, ...] = INSTRUMENTS[:-1]
DRUMS: Instrument = INSTRUMENTS[-1]

# GM program (0..127) -> melodic category index, built once.
PROGRAM_TO_CATEGORY: tuple[int, ...] = tuple(
    next(inst.index for inst in MELODIC if program in inst.programs) for program in range(128)
)

_BY_NAME = {name: inst for inst in INSTRUMENTS for name in (inst.name, *inst.aliases)}


def category_of(program: int, channel: int) -> int:
    """Category index of a note played with `program` on zero-based `channel`."""
    if channel == DRUM_CHANNEL:
        return DRUMS.index
    return PROGRAM_TO_CATEGORY[program & 0x7F]


def instrument_named(name: str) -> Instrument:
    """Look up a category by the name a musician types (case-insensitive, aliases allowed)."""
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    try:
        return _BY_NAME[key]
    except KeyError:
        valid = ", ".join(inst.name for inst in INSTRUMENTS)
        raise UsageError(
            f"unknown instrument {name!r}", hint=f"choose one of: {valid} (see `banger instruments`)"
        ) from None
