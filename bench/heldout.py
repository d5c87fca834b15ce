"""Held-out bits per note of models, per source, on one split of a data directory.

    python bench/heldout.py DATA_DIR CANDIDATE [CANDIDATE ...] [--split validation]

The baseline is the shipped default model, scored in the same run on the same pieces; each
model reads every piece in windows of its own training length (`seq_len`), so a model with a
longer context is credited for what it remembers. Bits per note = nats over all tokens of the
piece (time, duration-velocity and note) / notes / ln 2: comparable across context lengths,
unlike loss per token. "band" is freedoom + easyrpg + simutrans, the full band arrangements.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from bangercli import load_model
from bangercli.data.shards import Shards
from bangercli.data.windows import piece_windows
from bangercli.evaluation.evaluate import field_table, score_windows

BAND = ("freedoom", "easyrpg", "simutrans")


def source_of(path: str) -> str:
    parts = Path(path).parts
    return parts[parts.index("midi") + 1] if "midi" in parts[:-1] else Path(path).parent.name


def bits_per_note(banger, shards: Shards, groups: dict[str, list[int]]) -> dict[str, float]:
    tokenizer, fields = banger.tokenizer, field_table(banger.tokenizer)
    result = {}
    for name, indices in groups.items():
        windows, notes = [], 0
        for index in indices:
            piece = np.asarray(shards[index])
            notes += int(np.count_nonzero(piece >= tokenizer.note_offset))
            windows += piece_windows(piece, tokenizer, banger.config.seq_len + 1)
        with torch.inference_mode():
            totals = score_windows(banger.model.eval(), windows, fields, batch_size=4,
                                   device=banger.device)
        result[name] = float(totals[0].sum()) / max(notes, 1) / math.log(2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("candidates", nargs="+")
    parser.add_argument("--split", default="validation")
    args = parser.parse_args()
    shards = Shards(args.data_dir, args.split)
    groups: dict[str, list[int]] = defaultdict(list)
    for index, info in enumerate(shards.pieces()):
        groups[source_of(info["path"])].append(index)
    groups = dict(sorted(groups.items()))
    groups["band"] = [i for name in BAND for i in groups.get(name, [])]
    groups["all"] = list(range(len(shards)))
    names = ["default", *args.candidates]
    table = {}
    for name in names:
        started = time.perf_counter()
        table[name] = bits_per_note(load_model(name), shards, groups)
        print(f"{name}: scored in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    width = max(len(n) for n in names) + 2
    print(f"{'source':<12}{'pieces':>7}" + "".join(f"{n[-width:]:>{width}}" for n in names)
          + "".join(f"{'vs default':>12}" for _ in args.candidates))
    for group, indices in groups.items():
        row = f"{group:<12}{len(indices):>7}" + "".join(
            f"{table[n][group]:>{width}.3f}" for n in names)
        row += "".join(f"{table[n][group] / table['default'][group]:>12.3f}"
                       for n in args.candidates)
        print(row)


if __name__ == "__main__":
    main()
