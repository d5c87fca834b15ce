"""Echo: the piece's own memory of what came next, mixed into the model's choice.

A small transformer trained for a few CPU hours hears a riff but seldom plays it again:
continuing a real 4-bar prompt, a third of its new bars reuse an onset pattern of the prompt
where real music reuses almost half (docs/model-card.md). Echo is a cache model (as in
cache language models for speech) of the piece itself: for every point of the piece so far
it remembers which token came next, a point being the place in the bar and the last few
tokens, and at each step the model's distribution is mixed with those counts:

    p(next) = (1 - w) * p_model(next) + w * p_echo(next)

where the piece has been at this point before, and p_model alone where it has not. w is
--echo at a point known by its last two notes, less at one known by less (ORDERS, BACKOFF),
and while the piece is following an echo (its last token was what the echo mostly said)
it compounds to w + (1 - w) * w: real music repeats in runs, a bar or a riff at a time, not
a token here and there. --echo 0 is the model alone. The memory covers the whole piece, not
just the model's window. Echo only re-weights what the masks allow, so every request stays
a guarantee. Weights, points and runs were chosen by held-out bits per note of real pieces
under the mixture (bench/echo.py, docs/generation.md): the mixture predicts real music far
better than the model alone, so the echo is what music does, not a taste.
"""

from __future__ import annotations

import numpy as np

from ..midi.tokenizer import Tokenizer

# The points echo knows: the last 6 tokens (two notes: TIME DURVEL NOTE each) at the same
# place in the bar; where that is new, the last 3 (one note), whose echo counts BACKOFF times
# as much; where that is new too, the last token alone, BACKOFF times less again. Chosen by
# held-out bits per note (bench/echo.py, docs/generation.md).
ORDERS = (6, 3, 1)
BACKOFF = 0.5


class PieceMemory:
    """One piece's table: (place in the bar, last j tokens) -> counts of the next token, for
    each j in `orders` (longest first). Feed it the piece's tokens in order; header and
    special tokens are skipped."""

    def __init__(self, tokenizer: Tokenizer, orders: tuple[int, ...] = ORDERS) -> None:
        self.orders = tuple(sorted(orders, reverse=True))
        self.bar = tokenizer.config.steps_per_bar
        self.time_offset = tokenizer.time_offset
        self.durvel_offset = tokenizer.durvel_offset
        self.table: dict[tuple, dict[int, int]] = {}
        self.recent: list[int] = []
        self.time = 0
        self.following = False  # the last token was what this point's echo mostly said

    def keys(self) -> list[tuple]:
        """Where the piece is now, once per order it has heard enough tokens for, longest
        first."""
        place = self.time % self.bar
        return [(order, place, *self.recent[len(self.recent) - order:])
                for order in self.orders if len(self.recent) >= order]

    def next_counts(self) -> tuple[dict[int, int] | None, int]:
        """What followed this point before (token -> times) at the longest order that knows
        it, and that order; (None, 0) if the point is new."""
        for key in self.keys():
            counts = self.table.get(key)
            if counts:
                return counts, key[0]
        return None, 0

    def add(self, token: int) -> None:
        if token < self.time_offset:  # a header or special token: not music
            return
        counts, _ = self.next_counts()
        self.following = bool(counts) and 2 * counts.get(token, 0) >= sum(counts.values())
        for key in self.keys():
            counts = self.table.setdefault(key, {})
            counts[token] = counts.get(token, 0) + 1
        if token < self.durvel_offset:
            self.time += token - self.time_offset
        self.recent.append(token)
        if len(self.recent) > self.orders[0]:
            del self.recent[0]

    def copy(self) -> PieceMemory:
        twin = PieceMemory.__new__(PieceMemory)
        twin.__dict__.update(self.__dict__)
        twin.table = {key: dict(counts) for key, counts in self.table.items()}
        twin.recent = list(self.recent)
        return twin


class Echo:
    """The mixture for a batch: each row has its own memory, started from the same prefix."""

    def __init__(self, tokenizer: Tokenizer, *, weight: float, batch: int, prefix: list[int],
                 orders: tuple[int, ...] = ORDERS, backoff: float = BACKOFF) -> None:
        self.weight = float(weight)
        # while a row follows an echo, the weight compounds: w + (1 - w) * w
        self.weights = {(order, following): (w * (2 - w) if following else w) * backoff ** rank
                        for rank, order in enumerate(sorted(orders, reverse=True))
                        for w in [self.weight] for following in (False, True)}
        self.memories: list[PieceMemory] = []
        if self.active:
            first = PieceMemory(tokenizer, orders)
            for token in prefix[tokenizer.header_length(prefix):]:
                first.add(int(token))
            self.memories = [first] + [first.copy() for _ in range(batch - 1)]

    @property
    def active(self) -> bool:
        return self.weight > 0

    def mix(self, logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        """`logits` (rows, vocab) whose softmax over the `allowed` tokens is the mixture, for
        the rows at a point the piece has been at before (where one of its next tokens there
        is still allowed); other rows keep the model's logits. Only the echoed tokens change:
        with Z the log-sum-exp of a row's allowed logits, a token the echo gives q gets
        log(exp(logit) + w / (1 - w) * q * exp(Z)), the others keep theirs, so after
        normalising each token has (1 - w) p_model + w q. The caller's array is not
        changed."""
        if not self.active:
            return logits
        mixed = None
        for row, memory in enumerate(self.memories):
            counts, order = memory.next_counts()
            if not counts:
                continue
            tokens = [t for t in counts if allowed[row, t]]
            if not tokens:
                continue
            if mixed is None:
                mixed = np.array(logits, dtype=np.float32)
            values = mixed[row][allowed[row]]
            top = values.max()
            z = top + np.log(np.exp(values - top).sum())
            weight = self.weights[order, memory.following]
            echo = np.array([counts[t] for t in tokens], dtype=np.float64)
            lift = np.log(weight / (1 - weight) * echo / echo.sum()) + z
            mixed[row, tokens] = np.logaddexp(mixed[row, tokens], lift)
        return logits if mixed is None else mixed

    def update(self, tokens) -> None:
        """Each row hears its new token (written or kept)."""
        if not self.active:
            return
        for memory, token in zip(self.memories, np.asarray(tokens).tolist()):
            memory.add(int(token))


def echo_probabilities(piece, tokenizer: Tokenizer,
                       orders: tuple[int, ...] = ORDERS) -> tuple[np.ndarray, np.ndarray]:
    """For each token of `piece` after its header: the probability echo alone gives it from
    the piece before it (NaN where the piece had not been at that point before: the mixture
    is then the model alone), and the order that matched (0 where none did). For measuring
    the mixture on real music."""
    ids = [int(t) for t in piece]
    head = tokenizer.header_length(ids)
    memory = PieceMemory(tokenizer, orders)
    p = np.full(len(ids) - head, np.nan)
    matched = np.zeros(len(ids) - head, dtype=np.int64)
    for i, token in enumerate(ids[head:]):
        counts, order = memory.next_counts()
        if counts:
            p[i] = counts.get(token, 0) / sum(counts.values())
            matched[i] = order
        memory.add(token)
    return p, matched
