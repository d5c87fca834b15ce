"""How much context a re-window keeps: held-out bits per token past the first window, and
generation speed, for each number of kept tokens.

    python bench/window.py DATA_DIR [--keeps 1536,1024,768,512] [--split validation]
                           [--pieces N] [--seeds 4] [--skip-speed]

When generation's context is full (the model's `seq_len`), it is rebuilt as the header plus
the most recent notes, at most `keep` tokens (cut on a note start), and grows back to the
full window (generation/decoding.py, `kept_tokens`). Keeping more means more context for
the tokens after a re-window; keeping less means a shorter attention (each step reads the
cache of every position in view) and fewer re-windows. The baseline is the first keep (the
shipped one, 1,536 for the 2,048-token default), measured in the same run.

1. Bits per token: every piece of the split longer than the window is scored as generation
   would see it: its first `seq_len` tokens in one window, then re-window after re-window
   (x-transformers forward pass, all positions of each window at once). Only the tokens past
   the first window are counted: before it, every keep sees the same context.
2. Speed: `banger generate -i guitar --drums`, 16 bars, seeds 1..--seeds, µs per token
   (interleaved, the keeps in turn; the pieces differ once the first re-window differs).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bangercli import load_model  # noqa: E402
from bangercli.data.shards import Shards  # noqa: E402
from bangercli.generation import decoding  # noqa: E402
from bangercli.generation.generate import Request, generate  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from heldout import BAND, source_of  # noqa: E402


def rebuilt(tokenizer, row: list[int], keep: int) -> list[int]:
    """The context a re-window makes of `row` when it may keep `keep` tokens (as
    `Batch._rewindow` does)."""
    head = tokenizer.header_length(row)
    body = row[head:]
    room = max(keep - head, 1)
    cut = max(len(body) - room, 0)
    if cut > 0:
        later = [i for i in tokenizer.note_starts(body) if i >= cut]
        cut = later[0] if later else len(body)
    return row[:head] + body[cut:]


def nats_past_the_window(banger, ids: list[int], keep: int) -> float:
    """Negative log-likelihood (nats) of the tokens of `ids` after its first window."""
    import torch

    window, total, end = banger.config.seq_len, 0.0, banger.config.seq_len
    while end < len(ids):
        context = rebuilt(banger.tokenizer, ids[:end], keep)
        new = ids[end:end + window - len(context)]
        with torch.inference_mode():
            logits = banger.model(torch.tensor([context + new]))[0].float()
        positions = torch.arange(len(context) - 1, len(context) - 1 + len(new))
        total -= float(torch.log_softmax(logits[positions], -1)[
            torch.arange(len(new)), torch.tensor(new)].sum())
        end += len(new)
    return total


def bits(banger, shards: Shards, keeps: list[int], limit: int | None) -> None:
    window = banger.config.seq_len
    long = [i for i in range(len(shards)) if len(shards[i]) > window][:limit]
    paths = [info["path"] for info in shards.pieces()]
    nats: dict[int, dict[str, float]] = {keep: defaultdict(float) for keep in keeps}
    tokens: dict[str, int] = defaultdict(int)
    started = time.perf_counter()
    for index in long:
        ids = [int(t) for t in shards[index]]
        source = source_of(paths[index])
        groups = [source, "all"] + (["band"] if source in BAND else [])
        for keep in keeps:
            nats_piece = nats_past_the_window(banger, ids, keep)
            for group in groups:
                nats[keep][group] += nats_piece
        for group in groups:
            tokens[group] += len(ids) - window
    print(f"\n{len(long)} pieces longer than the {window}-token window "
          f"(scored in {time.perf_counter() - started:.0f} s); bits per token past it")
    groups = sorted(tokens, key=lambda g: (g in ("band", "all"), g))
    print(f"{'keep':<8}" + "".join(f"{g:>11}" for g in groups) + f"{'all vs ' + str(keeps[0]):>14}")
    for keep in keeps:
        row = [nats[keep][g] / tokens[g] / math.log(2) for g in groups]
        base = nats[keeps[0]]["all"]
        print(f"{keep:<8}" + "".join(f"{v:>11.4f}" for v in row)
              + f"{nats[keep]['all'] / base:>14.4f}")
    print(f"{'tokens':<8}" + "".join(f"{tokens[g]:>11}" for g in groups))


def speed(banger, keeps: list[int], seeds: int) -> None:
    original = decoding.kept_tokens
    walls = {keep: 0.0 for keep in keeps}
    counts = {keep: 0 for keep in keeps}
    try:
        for seed in range(1, seeds + 1):
            for keep in keeps:  # interleaved: a burst of load hits every keep alike
                decoding.kept_tokens = lambda window, keep=keep: keep
                request = Request(instruments=("guitar",), drums=True, bars=16, seed=seed)
                start = time.perf_counter()
                counts[keep] += len(generate(banger, request)[0].ids)
                walls[keep] += time.perf_counter() - start
    finally:
        decoding.kept_tokens = original
    print(f"\n-i guitar --drums, 16 bars, seeds 1-{seeds}")
    print(f"{'keep':<8}{'tokens':>9}{'seconds':>9}{'us/token':>10}{'vs ' + str(keeps[0]):>9}")
    base = walls[keeps[0]] / counts[keeps[0]]
    for keep in keeps:
        rate = walls[keep] / counts[keep]
        print(f"{keep:<8}{counts[keep]:>9}{walls[keep]:>9.1f}{rate * 1e6:>10.0f}"
              f"{rate / base:>9.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("--keeps", default="1536,1024,768,512",
                        help="tokens kept by a re-window; the first is the baseline")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--pieces", type=int, help="score only the first N long pieces")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-bits", action="store_true")
    args = parser.parse_args()
    keeps = [int(k) for k in args.keeps.split(",")]
    banger = load_model("default")
    if not args.skip_bits:
        bits(banger, Shards(args.data_dir, args.split), keeps, args.pieces)
    if not args.skip_speed:
        speed(banger, keeps, args.seeds)


if __name__ == "__main__":
    main()
