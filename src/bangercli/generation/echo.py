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
a token here and there. The bar echo (BarMemory) then mixes in what the piece played 1, 2,
4 and 8 bars ago at this place in the bar, at w times the trust its lags have earned by
guessing right. --echo 0 is the model alone. The memory covers the whole piece, not just
the model's window. Echo only re-weights what the masks allow, so every request stays
a guarantee. Weights, points and runs were chosen by held-out bits per note of real pieces
under the mixture (bench/echo.py, docs/generation.md): the mixture predicts real music far
better than the model alone, so the echo is what music does, not a taste.
"""

from __future__ import annotations

import bisect

import numpy as np

from ..midi.tokenizer import Tokenizer

# The points echo knows: the last 6 tokens (two notes: TIME DURVEL NOTE each) at the same
# place in the bar; where that is new, the last 3 (one note), whose echo counts BACKOFF times
# as much; where that is new too, the last token alone, BACKOFF times less again. Chosen by
# held-out bits per note (bench/echo.py, docs/generation.md).
ORDERS = (6, 3, 1)
BACKOFF = 0.5

# The bar echo: what the piece played 1, 2, 4 and 8 bars ago at this place in the bar, each
# lag trusted as much as it has been right lately (a moving average of its hits, RECALL per
# token), mixed in after the echo above at the echo's weight times the best lag's trust to
# the power TRUST_POWER (0.6 at trust 0.9 -> 0.44, at 0.5 -> 0.075): a lag that has been right
# for a while is followed, one that guesses now and then hardly counts. Chosen by held-out
# bits per note (bench/echo.py --bar-power, docs/generation.md "Bar echo").
LAGS = (1, 2, 4, 8)
RECALL = 0.9
TRUST_POWER = 1


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


class BarMemory:
    """One piece's bars: for each lag in bars, the token that lag says comes next (what the
    piece played `lag` bars ago at this place: the next note there, its duration and
    velocity, its pitch), and how often each lag has been right lately. Feed it the piece's
    tokens in order (the header's instruments, then TIME DURVEL NOTE per note; special
    tokens are skipped).

    Notes that begin together are lined up by the tokenizer's chord order (the header's
    order of instruments, lead first and drums last; then from the highest pitch down), not
    by count: after the notes written so far at this onset, the guess is the first note of
    the earlier onset that sorts after the last of them, so an extra or a missing guitar
    note does not throw the drums out of line."""

    def __init__(self, tokenizer: Tokenizer, lags: tuple[int, ...] = LAGS,
                 recall: float = RECALL) -> None:
        self.lags = tuple(lags)
        self.recall = recall
        self.bar = tokenizer.config.steps_per_bar
        self.max_shift = tokenizer.config.max_shift
        self.instrument_offset = tokenizer.instrument_offset
        self.time_offset = tokenizer.time_offset
        self.durvel_offset = tokenizer.durvel_offset
        self.note_offset = tokenizer.note_offset
        self.rank: dict[int, int] = {}  # instrument -> place in the header; drums after all
        # onset -> (chord order key, DURVEL, NOTE) of each note begun there, in order written
        self.groups: dict[int, list[tuple[tuple[int, int], int, int]]] = {}
        self.onsets: list[int] = []  # the onsets of self.groups, ascending
        self.time = 0
        self.last: tuple[int, int] | None = None  # chord order key of the last note at self.time
        self.expect = "time"  # the next token's kind: time, durvel or note
        self.pending = -1  # the DURVEL of the note being written
        self.trust = [0.0] * len(self.lags)  # each lag's recent share of right guesses
        self.guesses: list[int] = []  # each lag's guess for the next token (-1: none)
        self.guess()

    def _key(self, note: int) -> tuple[int, int]:
        instrument, pitch = divmod(note - self.note_offset, 128)
        return self.rank.get(instrument, len(self.rank) + instrument), -pitch

    def _next_there(self, group) -> tuple | None:
        """The first note of an earlier onset's `group` that sorts after the last note
        written at this onset (any, when none is written yet)."""
        if not group:
            return None
        if self.last is None:
            return group[0]
        for note in group:
            if note[0] > self.last:
                return note
        return None

    def guess(self) -> None:
        guesses = []
        for lag in self.lags:
            then = self.time - lag * self.bar
            token = -1
            if then >= 0:
                following = self._next_there(self.groups.get(then))
                if self.expect == "time":
                    if following is not None:
                        token = self.time_offset  # more notes began together there
                    else:
                        at = bisect.bisect_right(self.onsets, then)
                        if at < len(self.onsets) and self.onsets[at] - then <= self.max_shift:
                            token = self.time_offset + self.onsets[at] - then
                elif following is not None:
                    token = following[1] if self.expect == "durvel" else following[2]
            guesses.append(token)
        self.guesses = guesses

    def votes(self) -> tuple[dict[int, float], float]:
        """token -> share of the lags' say (each lag weighs its trust squared), and the trust
        of the most trusted lag that guessed; ({}, 0) where no lag guesses."""
        votes: dict[int, float] = {}
        best = 0.0
        for token, trust in zip(self.guesses, self.trust):
            if token >= 0 and trust > 0:
                votes[token] = votes.get(token, 0.0) + trust * trust
                best = max(best, trust)
        total = sum(votes.values())
        return ({token: v / total for token, v in votes.items()} if total else {}), best

    def add(self, token: int) -> None:
        if token < self.time_offset:
            if token >= self.instrument_offset:  # the header's instruments, lead first
                self.rank.setdefault(token - self.instrument_offset, len(self.rank))
            return  # other header and special tokens: not music
        for j, guess in enumerate(self.guesses):
            if guess >= 0:
                self.trust[j] = self.recall * self.trust[j] + (1 - self.recall) * (guess == token)
        if token < self.durvel_offset:
            shift = token - self.time_offset
            if shift:
                self.time += shift
                self.last = None
            self.expect = "durvel"
        elif token < self.note_offset:
            self.pending = token
            self.expect = "note"
        else:
            group = self.groups.setdefault(self.time, [])
            if not group:
                bisect.insort(self.onsets, self.time)
            self.last = self._key(token)
            group.append((self.last, self.pending, token))
            self.expect = "time"
        self.guess()

    def copy(self) -> BarMemory:
        twin = BarMemory.__new__(BarMemory)
        twin.__dict__.update(self.__dict__)
        twin.rank = dict(self.rank)
        twin.groups = {onset: list(group) for onset, group in self.groups.items()}
        twin.onsets = list(self.onsets)
        twin.trust = list(self.trust)
        twin.guesses = list(self.guesses)
        return twin


class Echo:
    """The mixture for a batch: each row has its own memory, started from the same prefix."""

    def __init__(self, tokenizer: Tokenizer, *, weight: float, batch: int, prefix: list[int],
                 orders: tuple[int, ...] = ORDERS, backoff: float = BACKOFF,
                 trust_power: float | None = TRUST_POWER) -> None:
        self.weight = float(weight)
        # while a row follows an echo, the weight compounds: w + (1 - w) * w
        self.weights = {(order, following): (w * (2 - w) if following else w) * backoff ** rank
                        for rank, order in enumerate(sorted(orders, reverse=True))
                        for w in [self.weight] for following in (False, True)}
        self.trust_power = trust_power  # None: no bar echo
        self.memories: list[PieceMemory] = []
        self.bars: list[BarMemory] = []
        if self.active:
            first, bars = PieceMemory(tokenizer, orders), BarMemory(tokenizer)
            for token in prefix:  # both skip the header's tokens; the bars learn its order
                first.add(int(token))
                bars.add(int(token))
            self.memories = [first] + [first.copy() for _ in range(batch - 1)]
            if trust_power is not None:
                self.bars = [bars] + [bars.copy() for _ in range(batch - 1)]

    @property
    def active(self) -> bool:
        return self.weight > 0

    def mix(self, logits: np.ndarray, allowed: np.ndarray,
            rows: list[int] | None = None) -> np.ndarray:
        """`logits` (rows, vocab) whose softmax over the `allowed` tokens is the mixture, for
        the rows at a point the piece has been at before (where one of its next tokens there
        is still allowed); other rows keep the model's logits. Only the echoed tokens change:
        with Z the log-sum-exp of a row's allowed logits, a token the echo gives q gets
        log(exp(logit) + w / (1 - w) * q * exp(Z)), the others keep theirs, so after
        normalising each token has (1 - w) p_model + w q. Then the bar echo's votes are
        mixed into that the same way, at the echo's weight times the trust of its most
        trusted lag to the power TRUST_POWER. Only `rows` (default: all) are mixed. The
        caller's array is not changed."""
        if not self.active:
            return logits
        mixed = None
        for row in range(len(self.memories)) if rows is None else rows:
            memory = self.memories[row]
            counts, order = memory.next_counts()
            if counts:
                mixed = self._lift(logits, mixed, row, counts, allowed,
                                   self.weights[order, memory.following])
            if self.bars:
                votes, trust = self.bars[row].votes()
                if votes:
                    mixed = self._lift(logits, mixed, row, votes, allowed,
                                       self.weight * trust ** self.trust_power)
        return logits if mixed is None else mixed

    @staticmethod
    def _lift(logits: np.ndarray, mixed: np.ndarray | None, row: int, counts: dict,
              allowed: np.ndarray, weight: float) -> np.ndarray | None:
        """Mix `counts` (token -> weight, normalised here) into the row at `weight`; returns
        the mixed array (a copy of `logits` made on first use), unchanged where none of the
        counted tokens is allowed."""
        tokens = [t for t in counts if allowed[row, t]]
        if not tokens or weight <= 0:
            return mixed
        if mixed is None:
            mixed = np.array(logits, dtype=np.float32)
        values = mixed[row][allowed[row]]
        top = values.max()
        z = top + np.log(np.exp(values - top).sum())
        echo = np.array([counts[t] for t in tokens], dtype=np.float64)
        lift = np.log(weight / (1 - weight) * echo / echo.sum()) + z
        mixed[row, tokens] = np.logaddexp(mixed[row, tokens], lift)
        return mixed

    def update(self, tokens, rows: list[int] | None = None) -> None:
        """Each row (of `rows`, default all) hears its new token (written or kept)."""
        if not self.active:
            return
        tokens = np.asarray(tokens).tolist()
        for row in range(len(tokens)) if rows is None else rows:
            self.memories[row].add(tokens[row])
            if self.bars:
                self.bars[row].add(tokens[row])


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


def bar_probabilities(piece, tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """For each token of `piece` after its header: the probability the bar echo gives it
    from the piece before it, and the trust of its most trusted lag (the mixture's weight is
    the bar weight times that; 0 where no lag guesses). For measuring on real music."""
    ids = [int(t) for t in piece]
    head = tokenizer.header_length(ids)
    memory = BarMemory(tokenizer)
    for token in ids[:head]:
        memory.add(token)
    p = np.zeros(len(ids) - head)
    trust = np.zeros(len(ids) - head)
    for i, token in enumerate(ids[head:]):
        votes, trust[i] = memory.votes()
        p[i] = votes.get(token, 0.0)
        memory.add(token)
    return p, trust
