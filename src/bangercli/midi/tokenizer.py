"""The one tokenizer: MIDI <-> token ids. The exact vocabulary is in docs/tokenizer.md.

A piece is ``START, DRUMS_ON|DRUMS_OFF, <instrument tokens, lead first>`` followed by notes,
then ``END``. Every note is ``TIME(shift)+, DURVEL(duration, velocity), NOTE(instrument, pitch)``:
the time shift is the number of grid steps since the previous note's onset; a gap longer than
`max_shift` is written as several TIME tokens whose shifts add up.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields

import mido
import numpy as np

from ..errors import BangerError
from .instruments import DRUMS, INSTRUMENTS, MELODIC
from .midifile import MAX_QUARTERS, read_score, write_midi
from .score import DEFAULT_BPM, Grid, Header, Note, Score, instrument_counts, normalize

TOKENIZER_FORMAT = 1  # bump on any change that alters ids; checkpoints store it


# Ceilings on the config fields a stored file may carry: the vocabulary stays small.
CONFIG_LIMITS = {"steps_per_quarter": 96, "max_shift": 4096, "max_duration": 4096,
                 "velocity_step": 127, "velocity_levels": 127}


@dataclass(frozen=True)
class TokenizerConfig:
    version: int = TOKENIZER_FORMAT  # format of the vocabulary below
    steps_per_quarter: int = 8  # grid resolution: 8 steps per quarter = 1/32 notes
    max_shift: int = 255  # largest TIME token; longer gaps use several TIME tokens
    max_duration: int = 128  # longest note in steps (4 bars of 4/4); longer notes are clipped
    velocity_step: int = 15  # velocities are rounded to multiples of this ...
    velocity_levels: int = 8  # ... giving this many levels: 15, 30, ..., 120

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TokenizerConfig":
        if not isinstance(data, dict):
            raise BangerError(f"the tokenizer config is not a JSON object: {data!r:.60}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if data.get("version") != TOKENIZER_FORMAT or unknown:
            raise BangerError(
                f"unsupported tokenizer format {data.get('version')!r}"
                + (f" with unknown fields {sorted(unknown)}" if unknown else ""),
                hint=f"this banger reads tokenizer format {TOKENIZER_FORMAT}; "
                "re-run `banger preprocess` or upgrade banger",
            )
        for name, ceiling in CONFIG_LIMITS.items():
            value = data.get(name, getattr(cls, name))
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= ceiling:
                raise BangerError(f"tokenizer {name} must be a whole number in 1..{ceiling}, "
                                  f"got {value!r:.40}")
        return cls(**data)

    @property
    def grid(self) -> Grid:
        return Grid(
            steps_per_quarter=self.steps_per_quarter,
            max_duration=self.max_duration,
            velocity_step=self.velocity_step,
            velocity_levels=self.velocity_levels,
        )

    @property
    def steps_per_bar(self) -> int:
        return 4 * self.steps_per_quarter  # banger writes 4/4


class Tokenizer:
    """Turns MIDI files into token ids and back. Stateless apart from its config."""

    PAD, START, END, DRUMS_OFF, DRUMS_ON = 0, 1, 2, 3, 4

    def __init__(self, config: TokenizerConfig | None = None) -> None:
        if config is not None and not isinstance(config, TokenizerConfig):
            raise TypeError(f"Tokenizer takes a TokenizerConfig, got {type(config).__name__}")
        self.config = config or TokenizerConfig()
        self.grid = self.config.grid
        c = self.config
        self.instrument_offset = 5
        self.time_offset = self.instrument_offset + len(MELODIC)
        self.durvel_offset = self.time_offset + c.max_shift + 1
        self.note_offset = self.durvel_offset + c.max_duration * c.velocity_levels
        self.vocab_size = self.note_offset + len(INSTRUMENTS) * 128

    # --- token ids -------------------------------------------------------------------

    def instrument_token(self, instrument: int) -> int:
        return self.instrument_offset + instrument

    def time_token(self, shift: int) -> int:
        return self.time_offset + shift

    def durvel_token(self, duration: int, velocity: int) -> int:
        return self.durvel_offset + (duration - 1) * self.config.velocity_levels + velocity

    def note_token(self, instrument: int, pitch: int) -> int:
        return self.note_offset + instrument * 128 + pitch

    def kind(self, token: int) -> str:
        """'special', 'instrument', 'time', 'durvel', 'note' or 'invalid'."""
        if 0 <= token < self.instrument_offset:
            return "special"
        if token < self.time_offset:
            return "instrument" if token >= 0 else "invalid"
        if token < self.durvel_offset:
            return "time"
        if token < self.note_offset:
            return "durvel"
        if token < self.vocab_size:
            return "note"
        return "invalid"

    def describe(self, token: int) -> str:
        """Human-readable name of one token, e.g. ``NOTE(guitar,64)``."""
        kind = self.kind(token)
        if kind == "special":
            return ("PAD", "START", "END", "DRUMS_OFF", "DRUMS_ON")[token]
        if kind == "instrument":
            return f"INSTRUMENT({MELODIC[token - self.instrument_offset].name})"
        if kind == "time":
            return f"TIME({token - self.time_offset})"
        if kind == "durvel":
            duration, velocity = divmod(token - self.durvel_offset, self.config.velocity_levels)
            return f"DURVEL({duration + 1},{velocity})"
        if kind == "note":
            instrument, pitch = divmod(token - self.note_offset, 128)
            return f"NOTE({INSTRUMENTS[instrument].name},{pitch})"
        return f"INVALID({token})"

    # --- encoding --------------------------------------------------------------------

    def read(self, source: str | os.PathLike | bytes | mido.MidiFile) -> Score:
        """Read a MIDI file onto this tokenizer's grid (raises MidiReadError when unreadable)."""
        return read_score(source, self.grid)

    def encode(self, source: str | os.PathLike | bytes | mido.MidiFile | Score) -> list[int]:
        """Token ids of a MIDI file (path, bytes, `mido.MidiFile`) or of a `Score`."""
        score = source if isinstance(source, Score) else self.read(source)
        return self.encode_notes(score.notes)

    def header(self, notes: list[Note]) -> list[int]:
        """START, the drums flag and the melodic instruments present, lead first."""
        counts = instrument_counts(notes)
        melodic = [i for i in lead_order(counts) if i != DRUMS.index]
        drums = self.DRUMS_ON if counts[DRUMS.index] else self.DRUMS_OFF
        return [self.START, drums, *(self.instrument_token(i) for i in melodic)]

    def encode_notes(self, notes: list[Note], *, end: bool = True) -> list[int]:
        notes = normalize(notes, self.grid)
        counts = instrument_counts(notes)
        rank = {instrument: r for r, instrument in enumerate(lead_order(counts))}
        # Within a chord: lead instrument first (drums last), then from the highest pitch down.
        notes.sort(key=lambda n: (n[0], rank[n[2]], -n[3]))  # (start, rank, -pitch)
        ids = self.header(notes)
        time_offset, max_shift = self.time_offset, self.config.max_shift
        # durvel_token and note_token inlined: this loop runs once per note of the corpus
        levels = self.config.velocity_levels
        durvel_base, note_offset = self.durvel_offset - levels, self.note_offset
        previous = 0
        for start, duration, instrument, pitch, velocity in notes:
            shift = start - previous
            previous = start
            while shift > max_shift:
                ids.append(time_offset + max_shift)
                shift -= max_shift
            ids.append(time_offset + shift)
            ids.append(durvel_base + duration * levels + velocity)
            ids.append(note_offset + instrument * 128 + pitch)
        if end:
            ids.append(self.END)
        return ids

    # --- structure ---------------------------------------------------------------------

    def header_length(self, ids) -> int:
        """Tokens before the first TIME token: the header (all of `ids` when it has no notes)."""
        ids = np.asarray(ids)
        is_time = (ids >= self.time_offset) & (ids < self.durvel_offset)
        return int(np.argmax(is_time)) if is_time.any() else len(ids)

    def note_starts(self, ids) -> np.ndarray:
        """Positions where a note begins: TIME tokens not preceded by another TIME token."""
        ids = np.asarray(ids)
        is_time = (ids >= self.time_offset) & (ids < self.durvel_offset)
        previous = np.concatenate(([False], is_time[:-1]))
        return np.flatnonzero(is_time & ~previous)

    # --- decoding --------------------------------------------------------------------

    def decode_score(self, ids) -> Score:
        """Notes of any id sequence. Never raises: tokens that break the grammar are
        skipped and counted in `Score.invalid_tokens`; decoding stops at END. A note later
        than the reader accepts (MAX_QUARTERS) is skipped and counted too, so whatever is
        decoded reads back: past it, delta times outgrow what a MIDI file can hold."""
        latest = MAX_QUARTERS * self.config.steps_per_quarter
        notes: list[Note] = []
        invalid = 0
        drums: bool | None = None
        header_instruments: list[int] = []
        time = 0
        durvel: tuple[int, int] | None = None
        levels = self.config.velocity_levels
        in_header = True
        for token in ids:
            try:
                token = int(token)
            except (TypeError, ValueError, OverflowError):
                invalid += 1
                continue
            kind = self.kind(token)
            if token == self.END:
                break
            if kind == "special" or kind == "instrument":
                if token == self.PAD:
                    continue
                if not in_header:
                    invalid += 1
                elif token in (self.DRUMS_ON, self.DRUMS_OFF):
                    drums = token == self.DRUMS_ON
                elif kind == "instrument":
                    header_instruments.append(token - self.instrument_offset)
                continue
            in_header = False
            if durvel is not None and kind != "note":
                invalid += 1  # a DURVEL not followed by its NOTE
                durvel = None
            if kind == "time":
                time += token - self.time_offset
            elif kind == "durvel":
                duration, velocity = divmod(token - self.durvel_offset, levels)
                durvel = (duration + 1, velocity)
            elif kind == "note" and durvel is not None:
                if time <= latest:
                    instrument, pitch = divmod(token - self.note_offset, 128)
                    notes.append(Note(time, durvel[0], instrument, pitch, durvel[1]))
                else:
                    invalid += 1  # too late to write, see above
                durvel = None
            else:
                invalid += 1
        if durvel is not None:
            invalid += 1
        score = Score(notes=normalize(notes, self.grid), invalid_tokens=invalid)
        score.header = Header(drums=drums, instruments=tuple(header_instruments))
        return score

    def decode(self, ids, *, bpm: float = DEFAULT_BPM) -> mido.MidiFile:
        """A type 1 `mido.MidiFile` of any id sequence (one track per instrument). Never raises."""
        score = self.decode_score(ids)
        return self.to_midi(score, bpm=bpm)

    def to_midi(self, score: Score, *, bpm: float = DEFAULT_BPM) -> mido.MidiFile:
        counts = instrument_counts(score.notes)
        # dict.fromkeys: a header that names an instrument twice still gets one track for it
        order = list(dict.fromkeys(score.header.instruments))
        order += [i for i in lead_order(counts) if i not in order]
        return write_midi(score.notes, order=order, grid=self.grid, bpm=bpm)


def lead_order(counts: list[int]) -> list[int]:
    """Instruments present, lead first: melodic categories by note count (most first, ties
    to the lower category index), drums last. The lead is the melodic category with most notes."""
    melodic = sorted(
        (i for i in range(len(counts)) if counts[i] and i != DRUMS.index),
        key=lambda i: (-counts[i], i),
    )
    return melodic + ([DRUMS.index] if counts[DRUMS.index] else [])
