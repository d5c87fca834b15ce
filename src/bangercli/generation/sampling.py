"""What may come next while generating: the token grammar and the musician's request as masks.

The header tokens condition the style; these masks enforce the request. At every step a
sequence is in one phase of the note grammar ``TIME+ DURVEL NOTE``, and only tokens that keep
the grammar (and the request: no drums with --no-drums, only the listed instruments with
--only) can be sampled. So every generated sequence decodes, and requests are guarantees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..midi.instruments import DRUMS, INSTRUMENTS
from ..midi.tokenizer import Tokenizer

# Phases of the note grammar.
EXPECT_TIME = 0  # a note starts: TIME
AFTER_LONG_TIME = 1  # after TIME(max_shift): more TIME, or DURVEL
AFTER_TIME = 2  # after a shorter TIME: DURVEL
AFTER_DURVEL = 3  # NOTE of an allowed instrument
HEADER = 4  # instrument tokens of the header, or the first TIME
PHASES = 5

_KIND_IDS = {"special": 0, "instrument": 1, "time": 2, "durvel": 3, "note": 4, "invalid": 5}


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0  # < 1 is safer, > 1 more adventurous
    top_p: float = 0.95  # nucleus: keep the smallest set of tokens with this much probability
    top_k: int = 0  # keep only the k most likely tokens (0 = off)


class Grammar:
    """Per-phase masks of allowed tokens, and the phase/time bookkeeping for a batch."""

    def __init__(self, tokenizer: Tokenizer, *, allowed_instruments: set[int] | None = None,
                 drums: bool = True) -> None:
        self.tokenizer = tokenizer
        vocab = tokenizer.vocab_size
        kinds = np.array([_KIND_IDS[tokenizer.kind(t)] for t in range(vocab)])
        self.kind = kinds
        times = kinds == _KIND_IDS["time"]
        self.shift = np.zeros(vocab, dtype=np.int64)
        self.shift[times] = np.arange(int(times.sum()))
        self.max_time_token = tokenizer.time_token(tokenizer.config.max_shift)

        playable = set(range(len(INSTRUMENTS)))
        if allowed_instruments is not None:
            playable = set(allowed_instruments)
        playable.discard(DRUMS.index)
        if drums:
            playable.add(DRUMS.index)
        self.playable = frozenset(playable)
        notes = np.zeros(vocab, dtype=bool)
        for instrument in playable:
            start = tokenizer.note_token(instrument, 0)
            notes[start : start + 128] = True
        header = kinds == _KIND_IDS["instrument"]
        if allowed_instruments is not None:
            header = np.zeros(vocab, dtype=bool)
            for instrument in playable - {DRUMS.index}:
                header[tokenizer.instrument_token(instrument)] = True
        masks = np.zeros((PHASES, vocab), dtype=bool)
        masks[EXPECT_TIME] = times
        masks[AFTER_LONG_TIME] = times | (kinds == _KIND_IDS["durvel"])
        masks[AFTER_TIME] = kinds == _KIND_IDS["durvel"]
        masks[AFTER_DURVEL] = notes
        masks[HEADER] = header | times
        self.masks = masks
        # the phase after each (phase, token): TIME, DURVEL and NOTE set it, other tokens
        # (the header's) keep it
        moves = np.repeat(np.arange(PHASES)[:, None], vocab, axis=1)
        moves[:, times] = AFTER_TIME
        moves[:, self.max_time_token] = AFTER_LONG_TIME
        moves[:, kinds == _KIND_IDS["durvel"]] = AFTER_DURVEL
        moves[:, kinds == _KIND_IDS["note"]] = EXPECT_TIME
        self.moves = moves

    def advance(self, phase: np.ndarray, time: np.ndarray, token: np.ndarray):
        """Phase and time (grid steps) after each sequence of the batch emits `token`
        (a TIME token's shift; 0 for the others)."""
        return self.moves[phase, token], time + self.shift[token]

    def scan(self, ids: list[int]) -> tuple[int, int]:
        """Phase and time after a whole prefix (header and maybe a prompt)."""
        phase, time = HEADER, 0
        for token in ids:
            kind = self.tokenizer.kind(token)
            if kind == "time":
                time += token - self.tokenizer.time_offset
                phase = AFTER_LONG_TIME if token == self.max_time_token else AFTER_TIME
            elif kind == "durvel":
                phase = AFTER_DURVEL
            elif kind == "note":
                phase = EXPECT_TIME
        return phase, time


def sample(logits: np.ndarray, allowed: np.ndarray, options: Sampling,
           generator: np.random.Generator, *,
           untruncated: np.ndarray | None = None, rows: list[int] | None = None) -> np.ndarray:
    """One token per row of `logits` (batch, vocab), only among `allowed` (batch, vocab).
    Rows flagged in `untruncated` (batch,) skip top-k and top-p (temperature still applies).
    The random numbers come from `generator` (one uniform number per row), so a seeded
    generator draws the same tokens on any machine and thread count. With `rows`, only those
    rows draw and the others get PAD, but every row's number is used up: the rows that draw
    get the tokens they would have got with every row drawing."""
    if rows is not None and len(rows) < len(logits):
        tokens = np.full(len(logits), Tokenizer.PAD, dtype=np.int64)
        if options.temperature <= 0:  # greedy: no random numbers
            uniform = None
        else:
            uniform = generator.random((len(logits), 1), dtype=np.float32)[rows]
        tokens[rows] = _sample(np.asarray(logits)[rows], np.asarray(allowed)[rows], options,
                               uniform, None if untruncated is None
                               else np.asarray(untruncated)[rows])
        return tokens
    uniform = None
    if options.temperature > 0:
        uniform = generator.random((len(logits), 1), dtype=np.float32)
    return _sample(logits, allowed, options, uniform, untruncated)


def _sample(logits: np.ndarray, allowed: np.ndarray, options: Sampling,
            uniform: np.ndarray | None, untruncated: np.ndarray | None) -> np.ndarray:
    """`sample` given each row's uniform number (None when greedy)."""
    masked = np.where(allowed, np.asarray(logits, dtype=np.float32), np.float32(-np.inf))
    # a finished row may have no token left; it draws one anyway (its number is used up as
    # before), which is never written
    masked[~np.asarray(allowed).any(axis=-1)] = 0.0
    if options.temperature <= 0:
        return masked.argmax(axis=-1)
    if options.temperature != 1.0:
        masked /= np.float32(options.temperature)
    if options.top_p < 1.0 or (0 < options.top_k < masked.shape[-1]):
        flags = np.zeros(len(masked), dtype=bool) if untruncated is None else \
            np.asarray(untruncated, dtype=bool)
        if not flags.any():
            masked = sample_logits(masked, options)
        elif not flags.all():  # else no row is cut: skip the sort
            masked[~flags] = sample_logits(masked[~flags], options)
    return draw(softmax(masked), uniform)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities (rows, vocab) of `logits` in float32; -inf gives exactly 0."""
    exponent = logits - logits.max(axis=-1, keepdims=True)
    np.exp(exponent, out=exponent)
    exponent /= exponent.sum(axis=-1, keepdims=True)
    return exponent


def draw(probs: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw: each row's uniform number in [0, 1) (rows, 1), scaled to the row's
    total, placed on the running sum of its probabilities: the first token whose running sum
    exceeds it, which has p > 0, so a token of probability 0 is never drawn (past the end,
    u having rounded up to the total: the last token if it may be drawn, else the likeliest).
    One random number a row instead of one a token (the exponential race this replaced drew
    2,832 a row). The running sum skips the tokens of probability 0, most of the vocabulary
    (adding 0 changes no sum), and is not worth vectorising over rows: numpy's cumsum is a
    plain loop."""
    tokens = np.empty(len(probs), dtype=np.int64)
    last = probs.shape[-1] - 1
    for row, (p, u) in enumerate(zip(probs, uniform[:, 0])):
        possible = np.flatnonzero(p)
        cdf = np.cumsum(p[possible])
        drawn = int(np.searchsorted(cdf, u * cdf[-1], side="right")) if len(cdf) else 0
        if drawn < len(possible):
            tokens[row] = possible[drawn]
        else:
            tokens[row] = last if p[last] > 0 else int(p.argmax())
    return tokens


def sample_logits(logits: np.ndarray, options: Sampling) -> np.ndarray:
    """`logits` (rows, vocab) with the tokens outside top-k and the top-p nucleus set to
    -inf."""
    if options.top_k and options.top_k < logits.shape[-1]:
        kth = np.partition(logits, -options.top_k, axis=-1)[:, -options.top_k, None]
        logits = np.where(logits < kth, np.float32(-np.inf), logits)
    if options.top_p < 1.0:
        # most likely first (ties in vocabulary order), among the tokens still allowed (most
        # are not: sorting only those is several times faster); keep a token while the
        # probability of the tokens before it has not reached top_p (the first always stays).
        # The values are sorted, not their order (4x faster for 1,536 notes): the nucleus is
        # the `count` likeliest, i.e. every token above the last kept value and, of those
        # equal to it, the first ones in vocabulary order
        nucleus = np.full(logits.shape, -np.inf, dtype=np.float32)
        for row, values in enumerate(logits):
            allowed = np.flatnonzero(values > -np.inf)
            candidates = values[allowed]
            ranked = -np.sort(-candidates)
            odds = np.exp(ranked - ranked[:1])  # softmax, not yet divided
            running = np.cumsum(odds)
            count = int(np.count_nonzero(running - odds < options.top_p * running[-1:]))
            last = ranked[count - 1]
            above = allowed[candidates > last]
            kept = np.concatenate((above, allowed[candidates == last][: count - len(above)]))
            nucleus[row, kept] = values[kept]
        logits = nucleus
    return logits


class Steering:
    """A gentle push towards the requested band: while a requested instrument (or the drums,
    when asked for) has no note yet, or the lead has no more notes than another melodic
    part, its NOTE tokens get a logit bonus of `strength` (nats) when an instrument is being
    chosen (and while the lead is behind, the parts at or ahead of it lose as much). The
    instruments the model adds to the header play unsteered. The header asks; this nudges;
    only the masks forbid."""

    def __init__(self, tokenizer: Tokenizer, instruments: list[int], *, strength: float,
                 batch: int, prefix: list[int], drums: bool | None = None) -> None:
        self.tokenizer = tokenizer
        self.instruments = [i for i in instruments if i != DRUMS.index]
        # requested and still to be heard: the melodic instruments, and drums when asked for
        self.wanted = self.instruments + ([DRUMS.index] if drums else [])
        self.strength = strength
        self.counts = np.zeros((batch, len(INSTRUMENTS)), dtype=np.int64)
        for token in prefix:
            if tokenizer.kind(token) == "note":
                self.counts[:, (token - tokenizer.note_offset) // 128] += 1
        lead = self.instruments[:1]
        # the lead's rivals: the other melodic instruments
        self.others = [i for i in range(len(INSTRUMENTS)) if i != DRUMS.index and i not in lead]

    @property
    def active(self) -> bool:
        return self.strength > 0 and bool(self.wanted)

    def apply(self, logits: np.ndarray, phase) -> np.ndarray:
        """`logits` with the bonus on the NOTE tokens of the rows choosing an instrument
        (`phase`, a list or an array, is AFTER_DURVEL)."""
        if not self.active:
            return logits
        choosing = [row for row, now in enumerate(phase) if now == AFTER_DURVEL]
        if not choosing:
            return logits
        steered = np.array(logits, dtype=np.float32)  # the caller's logits stay as they were
        strength, start = np.float32(self.strength), self.tokenizer.note_offset
        for row in choosing:
            for instrument, units in enumerate(self.units(self.counts[row].tolist())):
                if units:  # a float32 (as the logits), exact for a few units
                    first = start + 128 * instrument
                    steered[row, first : first + 128] += units * strength
        return steered

    def units(self, counts: list[int]) -> list[int]:
        """Each instrument's bonus in units of `strength`, from one row's note `counts`."""
        units = [0] * len(counts)
        for instrument in set(self.wanted):
            units[instrument] += counts[instrument] == 0
        if self.instruments:
            lead = self.instruments[0]
            if counts[lead] <= max(counts[i] for i in self.others):  # the lead is behind
                units[lead] += 1
                # and the melodic parts at or ahead of it lose as much
                for instrument in self.others:
                    units[instrument] -= counts[instrument] >= counts[lead]
        return units

    def update(self, token) -> None:
        """Count each row's new NOTE `token` (an array or a list)."""
        if not self.active:
            return
        note_offset, vocab = self.tokenizer.note_offset, self.tokenizer.vocab_size
        for row, value in enumerate(np.asarray(token).tolist()):
            if note_offset <= value < vocab:
                self.counts[row, (value - note_offset) // 128] += 1
