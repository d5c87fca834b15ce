"""How much context generation keeps: held-out bits per token past the model's window, and
generation speed, for each policy WINDOW:KEEP.

    python bench/window.py DATA_DIR [--policies 2048:768,2048:1536,...] [--split validation]
                           [--pieces N] [--seeds 4] [--skip-speed] [--skip-bits]

When generation's context reaches WINDOW tokens (the model's `seq_len` as shipped), it is
rebuilt as the header plus the most recent notes, at most KEEP tokens (cut on a note start),
and grows back to WINDOW (generation/decoding.py, `kept_tokens`). More context is more to go
on for each token; less is a shorter attention (each step reads the cache of every position
in view) and, with a smaller KEEP, cheaper re-windows. The baseline is the first policy (the
shipped one), measured in the same run.

1. Bits per token: every piece of the split longer than the model's `seq_len` is scored as
   generation would see it under each policy (x-transformers forward pass, all positions of
   each window at once). Only the tokens past the first `seq_len` are counted, the same
   tokens for every policy (before them, the shipped policy has never re-windowed).
2. Speed: `banger generate -i guitar --drums`, 16 bars, seeds 1..--seeds, µs per token
   (interleaved, the policies in turn; the pieces differ once the first re-window differs).
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


def nats_past(banger, ids: list[int], window: int, keep: int, start: int) -> float:
    """Negative log-likelihood (nats) of the tokens of `ids` from index `start` on (from 1
    when 0: the first has no prediction), each predicted from the context generation would
    have under the policy."""
    import torch

    total, end = 0.0, 0
    while end < len(ids):
        context = rebuilt(banger.tokenizer, ids[:end], keep) if end else []
        new = ids[end:end + window - len(context)]
        first = max(start - end, 0)  # tokens before `start` are not counted
        if first < len(new):
            with torch.inference_mode():
                logits = banger.model(torch.tensor([context + new]))[0].float()
            targets = torch.arange(first, len(new))
            positions = targets + len(context) - 1
            if positions[0] < 0:  # the very first token has no prediction
                targets, positions = targets[1:], positions[1:]
            total -= float(torch.log_softmax(logits[positions], -1)[
                torch.arange(len(targets)), torch.tensor(new)[targets]].sum())
        end += len(new)
    return total


def bits(banger, shards: Shards, policies: list[tuple[int, int]], limit: int | None,
         start: int) -> None:
    shortest = min(window for window, _ in policies)
    long = [i for i in range(len(shards)) if len(shards[i]) > max(start, shortest)][:limit]
    paths = [info["path"] for info in shards.pieces()]
    nats: dict[tuple, dict[str, float]] = {policy: defaultdict(float) for policy in policies}
    tokens: dict[str, int] = defaultdict(int)
    started = time.perf_counter()
    for index in long:
        ids = [int(t) for t in shards[index]]
        source = source_of(paths[index])
        groups = [source, "all"] + (["band"] if source in BAND else [])
        for policy in policies:
            nats_piece = nats_past(banger, ids, *policy, start)
            for group in groups:
                nats[policy][group] += nats_piece
        for group in groups:
            tokens[group] += len(ids) - max(start, 1)
    print(f"\n{len(long)} pieces longer than {max(start, shortest)} tokens (scored in "
          f"{time.perf_counter() - started:.0f} s); bits per token from token {start} on")
    groups = sorted(tokens, key=lambda g: (g in ("band", "all"), g))
    base = nats[policies[0]]["all"]
    print(f"{'window:keep':<12}" + "".join(f"{g:>11}" for g in groups) + f"{'all vs base':>13}")
    for policy in policies:
        row = [nats[policy][g] / tokens[g] / math.log(2) for g in groups]
        print(f"{'%d:%d' % policy:<12}" + "".join(f"{v:>11.4f}" for v in row)
              + f"{nats[policy]['all'] / base:>13.4f}")
    print(f"{'tokens':<12}" + "".join(f"{tokens[g]:>11}" for g in groups))


def speed(banger, policies: list[tuple[int, int]], seeds: int) -> None:
    kept, window = decoding.kept_tokens, decoding.context_window
    walls = {policy: 0.0 for policy in policies}
    counts = {policy: 0 for policy in policies}
    try:
        for seed in range(1, seeds + 1):
            for policy in policies:  # interleaved: a burst of load hits every policy alike
                decoding.context_window = lambda seq_len, size=policy[0]: size
                decoding.kept_tokens = lambda size, keep=policy[1]: keep
                request = Request(instruments=("guitar",), drums=True, bars=16, seed=seed)
                start = time.perf_counter()
                counts[policy] += len(generate(banger, request)[0].ids)
                walls[policy] += time.perf_counter() - start
    finally:
        decoding.kept_tokens, decoding.context_window = kept, window
    print(f"\n-i guitar --drums, 16 bars, seeds 1-{seeds}")
    print(f"{'window:keep':<12}{'tokens':>9}{'seconds':>9}{'us/token':>10}{'vs base':>9}")
    base = walls[policies[0]] / counts[policies[0]]
    for policy in policies:
        rate = walls[policy] / counts[policy]
        print(f"{'%d:%d' % policy:<12}{counts[policy]:>9}{walls[policy]:>9.1f}"
              f"{rate * 1e6:>10.0f}{rate / base:>9.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("--policies", default="2048:768,2048:1536,2048:1024,2048:512",
                        help="WINDOW:KEEP pairs; the first is the baseline")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--pieces", type=int, help="score only the first N long pieces")
    parser.add_argument("--start", type=int, help="count the tokens from this index on "
                        "(default: the model's seq_len; 0 = every token)")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-bits", action="store_true")
    args = parser.parse_args()
    policies = [tuple(int(n) for n in p.split(":")) for p in args.policies.split(",")]
    banger = load_model("default")
    if not args.skip_bits:
        start = banger.config.seq_len if args.start is None else args.start
        bits(banger, Shards(args.data_dir, args.split), policies, args.pieces, start)
    if not args.skip_speed:
        speed(banger, policies, args.seeds)


if __name__ == "__main__":
    main()
