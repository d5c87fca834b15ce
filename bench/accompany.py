"""Playing along, measured: remove a part from real pieces, let banger add it back, compare.

    python bench/accompany.py DATA_DIR [--model default] [--cases 32] [--continuation]

DATA_DIR is a `banger preprocess` output; its validation split (pieces the model never trained
on) gives 8-bar segments of band music (freedoom, easyrpg, simutrans) where the part plays.
For bass and for drums: the real part, the part `--add` writes from the rest, and a trivial
baseline (a bass on the lowest sounding
note of every beat; a fixed rock beat), each measured against the other parts
(evaluation/accompaniment.py). Then `--rewrite 3-4` of the bass in the same segments. With
--continuation: 8-bar prompts continued for 8 bars, default and --let-rest: how often a part
that plays at the end of the prompt falls silent for a 4-bar window, the largest jump in a
part's notes a bar, and whether `--only -i bass` writes bass.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bangercli import load_model  # noqa: E402
from bangercli.evaluation.accompaniment import lowest_note_bass, part_measures, rock_beat  # noqa: E402
from bangercli.midi.instruments import DRUMS, instrument_named  # noqa: E402
from bangercli.midi.midifile import write_midi  # noqa: E402
from bangercli.midi.score import instrument_counts  # noqa: E402
from bangercli.midi.tokenizer import lead_order  # noqa: E402

BAND = ("freedoom", "easyrpg", "simutrans")
BARS = 8


def segments(data: Path, tokenizer, *, sources, part: int | None, cases: int, per_piece: int = 3):
    """(source, notes shifted to 0, bpm) of 8-bar segments where `part` plays in at least 4
    bars and the rest in at least 6 (part None: any segment with notes in 6 bars or more)."""
    bar = tokenizer.config.steps_per_bar
    found = []
    for line in (data / "validation.pieces.jsonl").read_text().splitlines():
        record = json.loads(line)
        parts = Path(record["path"]).parts
        source = parts[parts.index("midi") + 1] if "midi" in parts else parts[-2]
        if source not in sources:
            continue
        score = tokenizer.read(record["path"])
        taken = 0
        last = max((n.start for n in score.notes), default=0) // bar
        for first in range(0, last - BARS + 2, BARS):
            notes = [n._replace(start=n.start - first * bar) for n in score.notes
                     if first * bar <= n.start < (first + BARS) * bar]
            if part is None:
                if len({n.start // bar for n in notes}) < 6:
                    continue
            else:
                mine = {n.start // bar for n in notes if n.instrument == part}
                rest = {n.start // bar for n in notes if n.instrument != part}
                if len(mine) < 4 or len(rest) < 6:
                    continue
            found.append((source, notes, score.bpm))
            taken += 1
            if taken == per_piece or len(found) == cases:
                break
        if len(found) == cases:
            break
    return found


def midi_bytes(notes, tokenizer, bpm) -> bytes:
    order = lead_order(instrument_counts(notes))
    midi = write_midi(notes, order=order, grid=tokenizer.grid, bpm=bpm,
                      length=BARS * tokenizer.config.steps_per_bar)
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return buffer.getvalue()


def mean(rows: list[dict]) -> dict:
    keys = {k for row in rows for k in row}
    result = {}
    for key in keys:
        values = [row[key] for row in rows if key in row and not math.isnan(row[key])]
        result[key] = sum(values) / len(values) if values else float("nan")
    return result


def add_table(banger, data, name: str, cases: int) -> list[tuple[str, dict]]:
    tokenizer, part = banger.tokenizer, instrument_named(name).index
    bar = tokenizer.config.steps_per_bar
    found = segments(data, tokenizer, sources=BAND, part=part, cases=cases)
    rows = defaultdict(list)
    bars = range(BARS)
    for number, (_, notes, bpm) in enumerate(found):
        real = [n for n in notes if n.instrument == part]
        others = [n for n in notes if n.instrument != part]
        prompt = midi_bytes(others, tokenizer, bpm)
        rows["real"].append(part_measures(real, others, steps_per_bar=bar, bars=bars))
        piece = banger.generate(prompt=prompt, add=(name,), seed=number)[0]
        added = [n for n in piece.notes if n.instrument == part]
        rows["banger --add"].append(part_measures(added, others, steps_per_bar=bar, bars=bars))
        baseline = (rock_beat(others, steps_per_bar=bar, bars=bars) if part == DRUMS.index else
                    lowest_note_bass(others, steps_per_bar=bar, bars=bars, instrument=part))
        rows["baseline"].append(part_measures(baseline, others, steps_per_bar=bar, bars=bars))
    print(f"\n--add {name}: {len(found)} segments of {BARS} bars "
          f"({', '.join(sorted({s for s, _, _ in found}))})")
    return [(label, mean(values)) for label, values in rows.items()]


def rewrite_table(banger, data, cases: int) -> list[tuple[str, dict]]:
    tokenizer, part = banger.tokenizer, instrument_named("bass").index
    bar = tokenizer.config.steps_per_bar
    found = segments(data, tokenizer, sources=BAND, part=part, cases=cases)
    rows = defaultdict(list)
    span = range(2, 4)
    for number, (_, notes, bpm) in enumerate(found):
        others = [n for n in notes if n.instrument != part]
        real = [n for n in notes if n.instrument == part]
        piece = banger.generate(prompt=midi_bytes(notes, tokenizer, bpm), rewrite=(3, 4),
                                instruments=("bass",), seed=number)[0]
        new = [n for n in piece.notes if n.instrument == part]
        rows["real"].append(part_measures(real, others, steps_per_bar=bar, bars=span))
        rows["banger --rewrite 3-4"].append(part_measures(new, others, steps_per_bar=bar,
                                                          bars=span))
        baseline = lowest_note_bass(others, steps_per_bar=bar, bars=span, instrument=part)
        rows["baseline"].append(part_measures(baseline, others, steps_per_bar=bar, bars=span))
    print(f"\n--rewrite 3-4 of the bass: {len(found)} segments")
    return [(label, mean(values)) for label, values in rows.items()]


def continuation_table(banger, data, cases: int) -> None:
    tokenizer = banger.tokenizer
    bar = tokenizer.config.steps_per_bar
    found = segments(data, tokenizer, sources=BAND, part=None, cases=cases - 6, per_piece=2)
    found += segments(data, tokenizer, sources=("pop909",), part=None, cases=6, per_piece=1)
    bass = instrument_named("bass").index
    print(f"\ncontinuation: {len(found)} prompts of {BARS} bars "
          f"({', '.join(sorted({s for s, _, _ in found}))}), {BARS} bars continued")
    print(f"{'':28} {'silent windows':>15} {'parts dropped':>14} {'largest jump':>13}")
    for label, let_rest in (("default", False), ("--let-rest", True)):
        silent = pairs = dropped = 0
        jumps = []
        for number, (_, notes, bpm) in enumerate(found):
            piece = banger.generate(prompt=midi_bytes(notes, tokenizer, bpm), bars=BARS,
                                    seed=number, let_rest=let_rest)[0]
            new = [n for n in piece.notes if n.start >= BARS * bar]
            playing = {n.instrument for n in notes if n.start >= (BARS - 4) * bar}
            for instrument in playing:
                windows = [{n.instrument for n in new
                            if (BARS + 4 * k) * bar <= n.start < (BARS + 4 * k + 4) * bar}
                           for k in range(BARS // 4)]
                quiet = sum(instrument not in w for w in windows)
                silent += quiet
                pairs += len(windows)
                dropped += quiet > 0
                before = sum(n.instrument == instrument for n in notes) / BARS
                after = sum(n.instrument == instrument for n in new) / BARS
                jumps.append(after / before if before else float("inf"))
        print(f"{label:28} {silent / max(pairs, 1):>15.1%} {dropped:>14} {max(jumps):>12.1f}x")
    with_bass = [(i, s) for i, s in enumerate(found) if any(n.instrument == bass for n in s[1])]
    written = 0
    for number, (_, notes, bpm) in with_bass:
        piece = banger.generate(prompt=midi_bytes(notes, tokenizer, bpm), bars=BARS,
                                instruments=("bass",), only=True, seed=number)[0]
        written += any(n.instrument == bass and n.start >= BARS * bar for n in piece.notes)
    print(f"--only -i bass wrote bass after {written} of {len(with_bass)} prompts with bass")


def print_table(title_rows: list[tuple[str, dict]]) -> None:
    columns = [c for c in ("density", "silent", "aligned", "chord_tones", "kick_13", "snare_24")
               if any(c in row for _, row in title_rows)]
    real = dict(title_rows).get("real", {})
    print(f"{'':28}" + "".join(f"{c:>12}" for c in columns) + f"{'density/real':>14}")
    for label, row in title_rows:
        cells = "".join(f"{row.get(c, float('nan')):>12.2f}" for c in columns)
        ratio = row["density"] / real["density"] if real.get("density") else float("nan")
        print(f"{label:28}{cells}{ratio:>14.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--model", default="default")
    parser.add_argument("--cases", type=int, default=32)
    parser.add_argument("--continuation", action="store_true")
    args = parser.parse_args()
    banger = load_model(args.model)
    started = time.perf_counter()
    for name in ("bass", "drums"):
        print_table(add_table(banger, args.data, name, args.cases))
    print_table(rewrite_table(banger, args.data, args.cases))
    if args.continuation:
        continuation_table(banger, args.data, 24)
    print(f"\n{time.perf_counter() - started:.0f} s, model {args.model}")


if __name__ == "__main__":
    main()
