"""What may come next while generating: the token grammar and the musician's request as masks.

The header tokens condition the style; these masks enforce the request. At every step a
sequence is in one phase of the note grammar ``TIME+ DURVEL NOTE``, and only tokens that keep
the grammar (and the request: no drums with --no-drums, only the listed instruments with
--only) can be sampled. So every generated sequence decodes, and requests are guarantees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

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
                 drums: bool = True, device: torch.device | str = "cpu") -> None:
        self.tokenizer = tokenizer
        vocab = tokenizer.vocab_size
        kinds = torch.tensor([_KIND_IDS[tokenizer.kind(t)] for t in range(vocab)])
        self.kind = kinds.to(device)
        shifts = torch.zeros(vocab, dtype=torch.long)
        times = kinds == _KIND_IDS["time"]
        shifts[times] = torch.arange(int(times.sum()))
        self.shift = shifts.to(device)
        self.max_time_token = tokenizer.time_token(tokenizer.config.max_shift)

        playable = set(range(len(INSTRUMENTS)))
        if allowed_instruments is not None:
            playable = set(allowed_instruments)
        playable.discard(DRUMS.index)
        if drums:
            playable.add(DRUMS.index)
        self.playable = frozenset(playable)
        notes = torch.zeros(vocab, dtype=torch.bool)
        for instrument in playable:
            start = tokenizer.note_token(instrument, 0)
            notes[start : start + 128] = True
        header = kinds == _KIND_IDS["instrument"]
        if allowed_instruments is not None:
            header = torch.zeros(vocab, dtype=torch.bool)
            for instrument in playable - {DRUMS.index}:
                header[tokenizer.instrument_token(instrument)] = True
        masks = torch.zeros(PHASES, vocab, dtype=torch.bool)
        masks[EXPECT_TIME] = times
        masks[AFTER_LONG_TIME] = times | (kinds == _KIND_IDS["durvel"])
        masks[AFTER_TIME] = kinds == _KIND_IDS["durvel"]
        masks[AFTER_DURVEL] = notes
        masks[HEADER] = header | times
        self.masks = masks.to(device)
        # the phase after each (phase, token): TIME, DURVEL and NOTE set it, other tokens
        # (the header's) keep it
        moves = torch.arange(PHASES)[:, None].repeat(1, vocab)
        moves[:, times] = AFTER_TIME
        moves[:, self.max_time_token] = AFTER_LONG_TIME
        moves[:, kinds == _KIND_IDS["durvel"]] = AFTER_DURVEL
        moves[:, kinds == _KIND_IDS["note"]] = EXPECT_TIME
        self.moves = moves.to(device)

    def advance(self, phase: torch.Tensor, time: torch.Tensor, token: torch.Tensor):
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


def sample(logits: torch.Tensor, allowed: torch.Tensor, options: Sampling,
           generator: torch.Generator, *,
           untruncated: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """One token per row of `logits` (batch, vocab), only among `allowed` (batch, vocab).
    Rows flagged in `untruncated` (batch,) skip top-k and top-p (temperature still applies).

    The numbers come from torch (softmax, running sums, sort, the random draw); the masking,
    comparisons and look-ups between them run in numpy, which gives the same values and costs
    a fraction of a torch call on one row."""
    masked = np.where(allowed.numpy(), logits.float().numpy(), np.float32(-np.inf))
    if options.temperature <= 0:
        return torch.from_numpy(masked).argmax(dim=-1)
    if options.temperature != 1.0:
        masked = (torch.from_numpy(masked) / options.temperature).numpy()
    if options.top_p < 1.0 or (0 < options.top_k < masked.shape[-1]):
        flags = [False] if untruncated is None else untruncated.tolist()
        if not any(flags):
            masked = sample_logits(masked, options)
        elif not all(flags):  # else no row is cut: skip the sort
            cut = ~np.asarray(flags)
            masked[cut] = sample_logits(masked[cut], options)
    probs = torch.softmax(torch.from_numpy(masked), dim=-1)
    # Inverse-CDF draw: one uniform number per row, placed on the running sum of p. With
    # side="right" the first position whose sum exceeds it has p > 0, so a masked token is
    # never drawn; the guard covers u rounding up to the total. One random number a row
    # instead of one a token (the exponential race this replaced drew 2,832 a row and spent
    # ~170 us a step at batch 4 on them).
    cdf = probs.cumsum(dim=-1).numpy()
    u = torch.rand(len(cdf), 1, generator=generator, dtype=torch.float32).numpy() * cdf[:, -1:]
    p, last = probs.numpy(), cdf.shape[-1] - 1
    tokens = []
    for row in range(len(p)):
        token = min(int(np.searchsorted(cdf[row], u[row, 0], side="right")), last)
        tokens.append(token if p[row, token] > 0 else int(probs[row].argmax()))
    return torch.from_numpy(np.array(tokens))


def sample_logits(logits: np.ndarray, options: Sampling) -> np.ndarray:
    """`logits` (rows, vocab) with the tokens outside top-k and the top-p nucleus set to
    -inf."""
    if options.top_k and options.top_k < logits.shape[-1]:
        kth = torch.topk(torch.from_numpy(logits), options.top_k, dim=-1).values[:, -1:]
        logits = np.where(logits < kth.numpy(), np.float32(-np.inf), logits)
    if options.top_p < 1.0:
        sorted_logits, order = torch.sort(torch.from_numpy(logits), dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # keep a token while the tokens before it have not reached top_p (the first always
        # stays), drop the rest
        before = probs.cumsum(dim=-1).numpy() - probs.numpy()
        nucleus = np.full(logits.shape, -np.inf, dtype=np.float32)
        for row, (ranked, reached) in enumerate(zip(order.numpy(), before)):
            kept = ranked[reached < options.top_p]
            nucleus[row, kept] = logits[row, kept]
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
        # numpy: a torch call on these few numbers costs several times as much
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

    def apply(self, logits: torch.Tensor, phase) -> torch.Tensor:
        """`logits` with the bonus on the NOTE tokens of the rows choosing an instrument
        (`phase`, a list, an array or a tensor, is AFTER_DURVEL)."""
        if not self.active:
            return logits
        choosing = [row for row, now in enumerate(phase) if now == AFTER_DURVEL]
        if not choosing:
            return logits
        steered = logits.numpy().copy()  # the caller's logits stay as they were
        strength, start = np.float32(self.strength), self.tokenizer.note_offset
        for row in choosing:
            for instrument, units in enumerate(self.units(self.counts[row].tolist())):
                if units:  # a float32 (as the logits), exact for a few units
                    first = start + 128 * instrument
                    steered[row, first : first + 128] += units * strength
        return torch.from_numpy(steered)

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
        """Count each row's new NOTE `token` (a tensor or an array)."""
        if not self.active:
            return
        note_offset, vocab = self.tokenizer.note_offset, self.tokenizer.vocab_size
        for row, value in enumerate(np.asarray(token).tolist()):
            if note_offset <= value < vocab:
                self.counts[row, (value - note_offset) // 128] += 1
