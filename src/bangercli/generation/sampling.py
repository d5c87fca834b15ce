"""What may come next while generating: the token grammar and the musician's request as masks.

The header tokens condition the style; these masks enforce the request. At every step a
sequence is in one phase of the note grammar ``TIME+ DURVEL NOTE``, and only tokens that keep
the grammar (and the request: no drums with --no-drums, only the listed instruments with
--only) can be sampled. So every generated sequence decodes, and requests are guarantees.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def advance(self, phase: torch.Tensor, time: torch.Tensor, token: torch.Tensor):
        """Phase and time (grid steps) after each sequence of the batch emits `token`."""
        kind = self.kind[token]
        is_time = kind == _KIND_IDS["time"]
        time = time + torch.where(is_time, self.shift[token], 0)
        phase = torch.where(is_time & (token == self.max_time_token), AFTER_LONG_TIME,
                torch.where(is_time, AFTER_TIME,
                torch.where(kind == _KIND_IDS["durvel"], AFTER_DURVEL,
                torch.where(kind == _KIND_IDS["note"], EXPECT_TIME, phase))))
        return phase, time

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
           generator: torch.Generator, *, untruncated: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row of `logits` (batch, vocab), only among `allowed` (batch, vocab).
    Rows flagged in `untruncated` (batch,) skip top-k and top-p (temperature still applies)."""
    logits = logits.float().masked_fill(~allowed, float("-inf"))
    if options.temperature <= 0:
        return logits.argmax(dim=-1)
    if options.temperature != 1.0:
        logits = logits / options.temperature
    if options.top_p < 1.0 or (0 < options.top_k < logits.shape[-1]):
        if untruncated is None or not bool(untruncated.any()):
            logits = sample_logits(logits, options)
        elif not bool(untruncated.all()):  # else no row is cut: skip the sort
            cut = ~untruncated
            logits[cut] = sample_logits(logits[cut], options)
    probs = torch.softmax(logits, dim=-1)
    # Inverse-CDF draw: one uniform number per row, placed on the running sum of p. With
    # right=True the first position whose sum exceeds it has p > 0, so a masked token is
    # never drawn; the guard covers u rounding up to the total. One random number a row
    # instead of one a token (the exponential race this replaced drew 2,832 a row and spent
    # ~170 us a step at batch 4 on them).
    cdf = probs.cumsum(dim=-1)
    u = torch.rand(len(probs), 1, generator=generator, dtype=cdf.dtype) * cdf[:, -1:]
    token = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp(max=probs.shape[-1] - 1)
    drawn = probs.gather(1, token[:, None]).squeeze(1) > 0
    return torch.where(drawn, token, probs.argmax(dim=-1))


def sample_logits(logits: torch.Tensor, options: Sampling) -> torch.Tensor:
    """`logits` with the tokens outside top-k and the top-p nucleus set to -inf."""
    if options.top_k and options.top_k < logits.shape[-1]:
        kth = torch.topk(logits, options.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if options.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens before it already reach top_p (the first always stays)
        drop = (probs.cumsum(dim=-1) - probs) >= options.top_p
        logits = logits.masked_fill(torch.empty_like(drop).scatter_(-1, order, drop),
                                    float("-inf"))
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
        self.counts = torch.zeros(batch, len(INSTRUMENTS))
        for token in prefix:
            if tokenizer.kind(token) == "note":
                self.counts[:, (token - tokenizer.note_offset) // 128] += 1
        melodic = torch.ones(len(INSTRUMENTS), dtype=torch.bool)
        melodic[DRUMS.index] = False
        if self.instruments:
            melodic[self.instruments[0]] = False
        self.others = melodic

    @property
    def active(self) -> bool:
        return self.strength > 0 and bool(self.wanted)

    def apply(self, logits: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return logits
        choosing = phase == AFTER_DURVEL
        if not bool(choosing.any()):
            return logits
        bonus = torch.zeros_like(self.counts)
        wanted = self.wanted
        bonus[:, wanted] += self.strength * (self.counts[:, wanted] == 0)
        if self.instruments:
            lead = self.instruments[0]
            behind = self.counts[:, lead] <= self.counts[:, self.others].max(dim=1).values
            bonus[:, lead] += self.strength * behind
            # and the melodic parts at or ahead of a lead that is behind lose as much
            ahead = (self.counts >= self.counts[:, lead : lead + 1]) & self.others
            bonus -= self.strength * (ahead & behind[:, None])
        bonus *= choosing[:, None]
        start = self.tokenizer.note_offset
        logits = logits.clone()  # decoder outputs are inference tensors: no in-place update
        notes = logits[:, start : start + 128 * len(INSTRUMENTS)].view(len(logits), -1, 128)
        notes += bonus[:, :, None]
        return logits

    def update(self, token: torch.Tensor) -> None:
        if not self.active:
            return
        relative = token - self.tokenizer.note_offset
        is_note = (relative >= 0) & (token < self.tokenizer.vocab_size)
        instrument = torch.where(is_note, relative // 128, 0)
        self.counts.scatter_add_(1, instrument[:, None], is_note[:, None].float())
