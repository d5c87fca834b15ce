"""`banger evaluate`: how well a model predicts a data split, in numbers comparable across runs.

Each piece is cut into non-overlapping windows that start with the piece header (as in
training) and every token after START is scored exactly once. Besides loss and accuracy,
targets are split by field (time / durvel / note, from `Tokenizer.kind`) and the total is
reported as bits per note, which stays comparable across tokenizations.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from ..model.checkpoint import check_tokenizer
from ..errors import DataError
from ..data.shards import Shards
from ..midi.tokenizer import Tokenizer
from ..data.windows import piece_windows

FIELDS = ("other", "time", "durvel", "note")  # "other": header and END tokens


def field_table(tokenizer: Tokenizer) -> torch.Tensor:
    """Field index (into FIELDS) of every token id."""
    kinds = [tokenizer.kind(token) for token in range(tokenizer.vocab_size)]
    return torch.tensor([FIELDS.index(k) if k in FIELDS else 0 for k in kinds], dtype=torch.long)


def autocast_for(device: torch.device):
    """bfloat16 autocast on CUDA; plain float32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def score_windows(
    model: torch.nn.Module,
    windows: list[tuple[np.ndarray, int]],
    fields: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Totals over `windows` as a (3, len(FIELDS)) float64 array: nats, correct, counted."""
    totals = torch.zeros(3, len(FIELDS), dtype=torch.float64, device=device)
    fields = fields.to(device)
    for first in range(0, len(windows), batch_size):
        chunk = windows[first : first + batch_size]
        width = max(len(tokens) for tokens, _ in chunk)
        batch = np.zeros((len(chunk), width), dtype=np.int64)
        skip = np.zeros((len(chunk), 1), dtype=np.int64)
        for row, (tokens, skipped) in enumerate(chunk):
            batch[row, : len(tokens)] = tokens
            skip[row] = skipped
        batch_t = torch.from_numpy(batch).to(device, non_blocking=True)
        inputs, targets = batch_t[:, :-1], batch_t[:, 1:]
        with autocast_for(device):
            logits = model(inputs)
        logits = logits.float()
        nats = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        columns = torch.arange(targets.shape[1], device=device)
        scored = (targets != Tokenizer.PAD) & (columns >= torch.from_numpy(skip).to(device))
        kind = fields[targets][scored]
        correct = (logits.argmax(-1) == targets)[scored].double()
        size = len(FIELDS)
        totals[0] += torch.bincount(kind, weights=nats[scored].double(), minlength=size)
        totals[1] += torch.bincount(kind, weights=correct, minlength=size)
        totals[2] += torch.bincount(kind, minlength=size).double()
        if progress:
            progress(len(chunk))
    return totals.cpu().numpy()


@dataclass
class Evaluation:
    split: str
    pieces: int
    notes: int
    totals: np.ndarray = field(repr=False)  # (3, len(FIELDS)): nats, correct, counted

    @property
    def tokens(self) -> int:
        return int(self.totals[2].sum())

    @property
    def loss(self) -> float:
        return float(self.totals[0].sum() / max(self.tokens, 1))

    @property
    def accuracy(self) -> float:
        return float(self.totals[1].sum() / max(self.tokens, 1))

    @property
    def bits_per_note(self) -> float:
        return float(self.totals[0].sum() / max(self.notes, 1) / math.log(2))

    def field(self, name: str) -> dict:
        i = FIELDS.index(name)
        count = self.totals[2, i]
        loss = self.totals[0, i] / count if count else float("nan")
        return {
            "loss": float(loss),
            "accuracy": float(self.totals[1, i] / count) if count else float("nan"),
            "perplexity": float(math.exp(loss)) if count else float("nan"),
            "tokens": int(count),
        }

    def to_dict(self) -> dict:
        return {
            "split": self.split,
            "loss": self.loss,
            "accuracy": self.accuracy,
            "perplexity": math.exp(self.loss),
            **{name: self.field(name) for name in ("time", "durvel", "note")},
            "bits_per_note": self.bits_per_note,
            "tokens": self.tokens,
            "notes": self.notes,
            "pieces": self.pieces,
        }


def evaluate(
    banger,
    data_dir,
    *,
    split: str = "validation",
    batch_size: int = 16,
    max_pieces: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Score `banger` on one split of a data directory made by `banger preprocess`."""
    shards = Shards(data_dir, split)
    check_tokenizer(banger.tokenizer.config.to_dict(), shards.manifest["tokenizer"],
                    where=str(data_dir))
    count = len(shards) if max_pieces is None else min(len(shards), max_pieces)
    if count == 0:
        raise DataError(f"the {split} split of {data_dir} has no pieces",
                        hint="pick another --split, or preprocess with --val-fraction > 0")
    tokenizer = banger.tokenizer
    windows: list[tuple[np.ndarray, int]] = []
    notes = 0
    for index in range(count):
        piece = np.asarray(shards[index])
        notes += int(np.count_nonzero(piece >= tokenizer.note_offset))
        windows += piece_windows(piece, tokenizer, banger.config.seq_len + 1)
    done = 0

    def advance(windows_done: int) -> None:
        nonlocal done
        done += windows_done
        if progress:
            progress(done, len(windows))

    banger.model.eval()
    totals = score_windows(banger.model, windows, field_table(tokenizer), batch_size=batch_size,
                           device=banger.device, progress=advance)
    return Evaluation(split=split, pieces=count, notes=notes, totals=totals)
