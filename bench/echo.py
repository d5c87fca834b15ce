"""Held-out bits per note of the model mixed with echo (generation/echo.py), per source.

    python bench/echo.py DATA_DIR [--model default] [--orders 6/6,3,1] [--weights 0.1,0.2,0.3]
                                  [--copying compound] [--backoff 0.5] [--bar-powers none,1,3]

The baseline is the model alone (weight 0), scored in the same run on the same pieces. Each
token after a piece's header gets p = (1 - w) p_model + w p_echo where the piece has been at
that point before (same last j tokens at the same place in the bar, for the longest j of the
orders that knows it: "6,3,1" backs off from two notes to one to a single token), p_model
elsewhere;
bits per note as in bench/heldout.py. With --bar-powers, the bar echo (what the piece played
1, 2, 4, 8 bars ago here) is mixed into that at w * trust ** power ("none": left out). A
mixture that lowers the bits of real pieces is one whose echoes are what real music does,
not just repetition.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import defaultdict

import numpy as np
import torch

from bangercli import load_model
from bangercli.data.shards import Shards
from bangercli.data.windows import piece_windows
from bangercli.generation.echo import bar_probabilities, echo_probabilities

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from heldout import BAND, source_of  # noqa: E402


def model_probabilities(banger, piece: np.ndarray) -> np.ndarray:
    """The model's probability of each token of `piece` after the first, in windows of its
    training length (as bench/heldout.py scores them)."""
    out = []
    for tokens, skip in piece_windows(piece, banger.tokenizer, banger.config.seq_len + 1):
        ids = torch.from_numpy(np.asarray(tokens, dtype=np.int64))[None]
        with torch.inference_mode():
            logits = banger.model(ids[:, :-1]).float()
        logp = torch.log_softmax(logits, -1)[0].gather(-1, ids[0, 1:, None])[:, 0]
        out.append(logp.exp().numpy()[skip:])
    return np.concatenate(out).astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("--model", default="default")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--orders", default="6/6,3/6,3,1", help="'/'-separated back-off chains")
    parser.add_argument("--weights", default="0.1,0.2,0.3,0.5")
    parser.add_argument("--copying", default="",
                        help="weights while copying (the previous token was the echo's likeliest), "
                        "e.g. 0.7,0.8; 'compound' is generation's w + (1 - w) * w")
    parser.add_argument("--bar-powers", default="none",
                        help="powers of the bar echo's trust, e.g. none,1,3 (none: no bar echo)")
    parser.add_argument("--backoff", default="1", help="factors on the weight per order backed "
                        "off, e.g. 1,0.5")
    args = parser.parse_args()
    orders = [tuple(int(x) for x in chain.split(",")) for chain in args.orders.split("/")]
    weights = [float(x) for x in args.weights.split(",")]
    banger = load_model(args.model)
    banger.model.eval()
    tokenizer = banger.tokenizer
    shards = Shards(args.data_dir, args.split)
    started = time.perf_counter()
    pieces = []  # (source, notes, header nats, model p of the body, {order: echo p}, bar)
    for index, info in enumerate(shards.pieces()):
        piece = np.asarray(shards[index])
        p = model_probabilities(banger, piece)
        head = tokenizer.header_length(piece)
        echoes = {order: echo_probabilities(piece, tokenizer, order) for order in orders}
        notes = int(np.count_nonzero(piece >= tokenizer.note_offset))
        pieces.append((source_of(info["path"]), notes, -np.log(p[: head - 1]).sum(),
                       p[head - 1:], echoes, bar_probabilities(piece, tokenizer)))
    print(f"scored {len(pieces)} pieces in {time.perf_counter() - started:.0f} s",
          file=sys.stderr)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (source, *_) in enumerate(pieces):
        groups[source].append(i)
    groups = dict(sorted(groups.items()))
    groups["band"] = [i for name in BAND for i in groups.get(name, [])]
    groups["all"] = list(range(len(pieces)))

    backoffs = [float(x) for x in args.backoff.split(",")]

    copying = [x if x == "compound" else float(x) for x in args.copying.split(",") if x]

    powers = [None if x == "none" else float(x) for x in args.bar_powers.split(",")]

    def bits(indices, order, weight, backoff=1.0, copy=None, power=None):
        nats = notes = 0.0
        for i in indices:
            _, count, header, model, echoes, (bar, trust) = pieces[i]
            mixed = model
            if weight:
                echo, matched = echoes[order]
                seen = ~np.isnan(echo)
                w = np.zeros(len(echo))
                following = np.zeros(len(echo), dtype=bool)
                if copy is not None:  # the previous token had echo probability >= 0.5
                    following[1:] = np.nan_to_num(echo[:-1]) >= 0.5
                for rank, j in enumerate(sorted(order, reverse=True)):
                    w[(matched == j) & ~following] = weight * backoff ** rank
                    if copy is not None:
                        heavier = weight * (2 - weight) if copy == "compound" else copy
                        w[(matched == j) & following] = heavier * backoff ** rank
                mixed = model.copy()
                mixed[seen] = (1 - w[seen]) * model[seen] + w[seen] * echo[seen]
                if power is not None:
                    w = weight * trust ** power
                    mixed = (1 - w) * mixed + w * bar
            nats += header - np.log(mixed).sum()
            notes += count
        return nats / max(notes, 1) / math.log(2)

    columns = [(orders[0], 0.0, 1.0, None, None)] + [
        (o, w, b, c, x) for o in orders for w in weights
        for b in (backoffs if len(o) > 1 else [1.0]) for c in [None, *copying] for x in powers]
    def label(chain):
        return "k" + "-".join(map(str, chain))

    names = ["model"] + [f"{label(o)} w{w:g}" + (f"x{b:g}" if b != 1 else "")
                         + ("" if c is None else "c" + (c[:4] if isinstance(c, str) else f"{c:g}"))
                         + ("" if x is None else f" bar^{x:g}")
                         for o, w, b, c, x in columns[1:]]
    seen = {o: float(np.mean(np.concatenate([~np.isnan(p[4][o][0]) for p in pieces])))
            for o in orders}
    print("share of tokens at a point heard before: "
          + ", ".join(f"{label(o)} {seen[o]:.2f}" for o in orders))
    widths = [max(18, len(n) + 2) for n in names]
    print(f"{'source':<10}{'pieces':>7}" + "".join(f"{n:>{w}}" for n, w in zip(names, widths)))
    for group, indices in groups.items():
        base = bits(indices, *columns[0][:3])
        row = f"{group:<10}{len(indices):>7}{base:>{widths[0]}.3f}"
        row += "".join(f"{bits(indices, *column) / base:>{w}.3f}"
                       for column, w in zip(columns[1:], widths[1:]))
        print(row)
    print("(model: bits per note; the others: ratio to the model, lower is better)")


if __name__ == "__main__":
    main()
