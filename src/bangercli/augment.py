"""Re-voicing: play a melodic part on another instrument family, as training augmentation.

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

import numpy as np

from .instruments import DRUMS, INSTRUMENTS, instrument_named
from .tokenizer import Tokenizer

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
