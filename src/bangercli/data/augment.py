"""Training augmentation and the data mix: transposition, re-voicing, per-source weights.

Transposition shifts the melodic notes of a window by a few semitones (drums never move).
Re-voicing plays a melodic part on another instrument family.
The corpus is lopsided (piano pop and drums dominate; brass, organ, woodwinds and mallets
have a few thousand notes each), so without help those categories would not be
controllable. Re-voicing moves whole parts of a training window to another category: the
header's instrument token and every NOTE token of the part change together, the mapping is
one-to-one (two parts never merge), and counts are unchanged, so the window stays in the
tokenizer's canonical form (lead first, same chord order; only parts that tie on note count
may swap their order in the header). Bass stays bass (a bass line is
not a lead line) and drums stay drums. numpy only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..midi.instruments import DRUMS, INSTRUMENTS, instrument_named
from ..errors import UsageError
from ..midi.tokenizer import Tokenizer
from .shards import Shards

TRANSPOSE_RANGE = (-5, 6)  # semitones, inclusive: every key is reachable from any other
BASS = instrument_named("bass").index
POOL = np.array([i for i in range(len(INSTRUMENTS)) if i not in (BASS, DRUMS.index)])


def revoice_windows(windows: np.ndarray, rng: np.random.Generator, tokenizer: Tokenizer, *,
                    probability: float) -> np.ndarray:
    """With `probability` per window, give each of its movable parts (with chance 1/2) a new
    category no other part of the window uses. Modifies `windows` (batch, length) in place."""
    if probability <= 0:
        return windows
    first_instrument, last_instrument = tokenizer.instrument_offset, tokenizer.time_offset
    for row in np.flatnonzero(rng.random(len(windows)) < probability):
        tokens = windows[row]
        in_header = (tokens >= first_instrument) & (tokens < last_instrument)
        present = (tokens[in_header] - first_instrument).astype(np.int64)
        if len(present) == 0:
            continue
        mapping = np.arange(len(INSTRUMENTS))
        taken = set(present.tolist())
        for instrument in present:
            if instrument == BASS or rng.random() < 0.5:
                continue
            free = [c for c in POOL if c not in taken]
            if not free:
                break
            target = int(free[rng.integers(len(free))])
            mapping[instrument] = target
            taken.add(target)
        if (mapping == np.arange(len(INSTRUMENTS))).all():
            continue
        tokens[in_header] = first_instrument + mapping[present]
        relative = tokens.astype(np.int64) - tokenizer.note_offset
        is_note = (relative >= 0) & (tokens < tokenizer.vocab_size)
        instrument, pitch = np.divmod(relative[is_note], 128)
        tokens[is_note] = tokenizer.note_offset + mapping[instrument] * 128 + pitch
    return windows


def transpose_notes(windows: np.ndarray, shifts: np.ndarray, tokenizer: Tokenizer) -> np.ndarray:
    """Shift melodic NOTE tokens of each row by ``shifts[row]`` semitones, in place.

    Drums are never transposed. A pitch pushed out of 0..127 is folded back by an octave
    (the shift is at most 6), so every note survives and the grammar stays intact.
    """
    rel = windows.astype(np.int64) - tokenizer.note_offset
    is_note = (rel >= 0) & (windows < tokenizer.vocab_size)
    instrument, pitch = np.divmod(rel, 128)
    melodic = is_note & (instrument != DRUMS.index)
    moved = pitch + shifts.astype(np.int64)[:, None]
    moved = np.where(moved < 0, moved + 12, moved)
    moved = np.where(moved > 127, moved - 12, moved)
    new = tokenizer.note_offset + instrument * 128 + moved
    windows[melodic] = new[melodic].astype(windows.dtype)
    return windows


def parse_mix(mix: str) -> dict[str, float]:
    """"freedoom=4,groove=0.5" -> {"freedoom": 4.0, "groove": 0.5}."""
    weights: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in mix.split(","))):
        name, _, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise UsageError(f"bad --mix entry {item!r}", hint="write NAME=WEIGHT, e.g. freedoom=4") from None
        if not name.strip() or weights[name.strip()] < 0:
            raise UsageError(f"bad --mix entry {item!r}", hint="weights must be >= 0")
    return weights


def mix_weights(shards: Shards, mix: str) -> np.ndarray | None:
    """Per-piece sampling weight: the weight of the first --mix name found in the piece's
    source path (as a folder or file name part), else 1."""
    weights = parse_mix(mix)
    if not weights:
        return None
    factors = np.ones(len(shards))
    for i, info in enumerate(shards.pieces()):
        parts = Path(info.get("path", "")).parts
        for name, weight in weights.items():
            if name in parts or any(name in part for part in parts):
                factors[i] = weight
                break
    if not (factors > 0).any():
        raise UsageError("--mix gives every piece weight 0")
    return factors
