"""How often the requested lead leads when nothing steers it (`--steer 0`), per model.

    python bench/lead.py [CANDIDATE ...] [--pieces 16] [--bars 8] [--seed 0]

For each request below, `--pieces` pieces of `--bars` bars are generated with steering off;
a piece counts when the first requested instrument has the most notes of its melodic parts
(what the header asks for: the lead is listed first). The baseline is the shipped default
model, run in the same process on the same seeds. With steering on (the default) the lead
leads in every piece (tests/ and docs/metrics.md); this measures what the header alone
teaches the model (issue 10, "teach the controls").
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from bangercli import load_model
from bangercli.midi.instruments import DRUMS, instrument_named

REQUESTS = {
    "-i guitar --drums": dict(instruments=["guitar"], drums=True),
    "-i lead --drums": dict(instruments=["lead"], drums=True),
    "-i bass -i guitar --only --drums": dict(instruments=["bass", "guitar"], only=True, drums=True),
    "-i piano": dict(instruments=["piano"], drums=False),
}


def leads(piece, lead: str) -> bool:
    counts = Counter(note.instrument for note in piece.notes if note.instrument != DRUMS.index)
    if not counts:
        return False
    wanted = instrument_named(lead).index
    return counts[wanted] == max(counts.values()) and counts[wanted] > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidates", nargs="*")
    parser.add_argument("--pieces", type=int, default=16)
    parser.add_argument("--bars", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    models = {"default": load_model("default")}
    models.update({path: load_model(path) for path in args.candidates})
    rows = {}
    for name, banger in models.items():
        began = time.perf_counter()
        rows[name] = {}
        for label, options in REQUESTS.items():
            pieces = banger.generate(variants=args.pieces, bars=args.bars, seed=args.seed,
                                     steer=0.0, **options)
            rows[name][label] = sum(leads(p, options["instruments"][0]) for p in pieces)
        print(f"{name}: {time.perf_counter() - began:.0f} s", flush=True)
    print(f"\nlead has the most notes, steering off ({args.pieces} pieces of {args.bars} bars, "
          f"seed {args.seed})\n")
    print("| request | " + " | ".join(models) + " |")
    print("|---|" + "---:|" * len(models))
    for label in REQUESTS:
        print(f"| `{label}` | " + " | ".join(f"{rows[m][label]}/{args.pieces}" for m in models)
              + " |")


if __name__ == "__main__":
    main()
