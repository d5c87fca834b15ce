"""Preprocessing throughput: banger against MidiTok (REMI over symusic) on the same files.

    python bench/preprocess.py [--corpus PATH] [--limit N] [--repeat K] [--profile N]

Rows (each timed K times, interleaved so that load from other processes spreads over all
rows; the best run is kept):

- ``banger preprocess``: the whole pipeline (read, filter, tokenize, write shards) through
  `bangercli.data.preprocess.preprocess` into a temporary directory, with 1 and 2 workers;
- ``miditok REMI``: `symusic.Score(path)` then `REMI().encode(score)` for every file, in
  1 and 2 processes; this is the peer, and the ratio column is relative to its 1-process row;
- reference rows that show where the time goes: `mido.MidiFile(path)` (the parser banger
  used to depend on), banger's own parser (`Tokenizer().read`) and symusic's loader alone.

Notes are the notes kept (banger preprocess), read (parser rows) or loaded by symusic
(MidiTok rows). Needs the bench extra: ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import multiprocessing
import pstats
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO.parent / "shared" / "midi"
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing


@dataclass
class Row:
    name: str  # what was timed
    files: int  # files given to it
    notes: int  # notes kept, read or loaded (see the module docstring)
    seconds: float  # best wall time over the repeats


# --- the timed workloads: each takes the file list and returns (files, notes) ---------------


def banger_preprocess(workers: int) -> Callable[[list[Path]], tuple[int, int]]:
    from bangercli.data.preprocess import preprocess

    def run(files: list[Path]) -> tuple[int, int]:
        with tempfile.TemporaryDirectory() as tmp:
            report = preprocess(files, Path(tmp) / "data", workers=workers, force=True)
        return report.found, report.notes

    return run


def banger_parser(files: list[Path]) -> tuple[int, int]:
    from bangercli.errors import MidiReadError
    from bangercli.midi.tokenizer import Tokenizer

    tokenizer, notes = Tokenizer(), 0
    for path in files:
        try:
            notes += len(tokenizer.read(path).notes)
        except MidiReadError:
            pass
    return len(files), notes


def mido_parser(files: list[Path]) -> tuple[int, int]:
    import mido

    notes = 0
    for path in files:
        try:
            midi = mido.MidiFile(path)
        except Exception:  # mido raises many kinds of errors on broken files
            continue
        notes += sum(
            1 for track in midi.tracks for m in track if m.type == "note_on" and m.velocity
        )
    return len(files), notes


def symusic_loader(files: list[Path]) -> tuple[int, int]:
    from symusic import Score

    return len(files), sum(Score(str(path)).note_num() for path in files)


_remi = None  # one REMI tokenizer per process, built on first use


def _miditok_file(path: Path) -> int:
    global _remi
    from miditok import REMI, TokenizerConfig
    from symusic import Score

    if _remi is None:
        _remi = REMI(TokenizerConfig())  # MidiTok's default REMI vocabulary
    try:
        score = Score(str(path))
        _remi.encode(score)
    except Exception:  # count a file MidiTok cannot take as zero notes, like a skip
        return 0
    return score.note_num()


def miditok_remi(processes: int) -> Callable[[list[Path]], tuple[int, int]]:
    def run(files: list[Path]) -> tuple[int, int]:
        if processes <= 1:
            return len(files), sum(map(_miditok_file, files))
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            # the same chunking as banger's pool, for a like-for-like comparison
            return len(files), sum(pool.imap(_miditok_file, files, chunksize=4))

    return run


# --- running and reporting ------------------------------------------------------------------


def measure(workloads: dict[str, Callable], files: list[Path], repeat: int) -> list[Row]:
    rows = {name: Row(name, 0, 0, float("inf")) for name in workloads}
    for attempt in range(repeat):
        for name, run in workloads.items():
            started = time.perf_counter()
            count, notes = run(files)
            seconds = time.perf_counter() - started
            row = rows[name]
            row.files, row.notes, row.seconds = count, notes, min(row.seconds, seconds)
            print(f"[{attempt + 1}/{repeat}] {name}: {seconds:.2f} s", file=sys.stderr)
    return list(rows.values())


def table(rows: list[Row], baseline: str) -> str:
    base = next(row for row in rows if row.name == baseline)
    lines = [
        "| what | files | notes | seconds | files/s | notes/s | vs MidiTok (1 proc) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ratio = (row.files / row.seconds) / (base.files / base.seconds)
        lines.append(
            f"| {row.name} | {row.files:,} | {row.notes:,} | {row.seconds:.2f} "
            f"| {row.files / row.seconds:,.0f} | {row.notes / row.seconds:,.0f} | {ratio:.2f}x |"
        )
    return "\n".join(lines)


def profile(files: list[Path], count: int, top: int = 12) -> str:
    """cProfile of banger's single-worker per-file path over `count` evenly spaced files."""
    from bangercli.data.preprocess import PreprocessOptions, process_file
    from bangercli.midi.tokenizer import TokenizerConfig

    sample = files[:: max(1, len(files) // count)][:count]
    options, config = PreprocessOptions(), TokenizerConfig()
    profiler = cProfile.Profile()
    profiler.enable()
    for path in sample:
        process_file(path, options, config)
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    return f"process_file over {len(sample)} files, top {top} by own time:\n" + text.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="MIDI folder")
    parser.add_argument("--limit", type=int, default=None, help="use the first N files only")
    parser.add_argument("--repeat", type=int, default=1, help="time each row K times, keep the best")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also profile banger's per-file path over N files")
    args = parser.parse_args()
    if not args.corpus.is_dir():
        print(f"error: corpus not found: {args.corpus} (pass --corpus PATH)", file=sys.stderr)
        return 2
    try:
        import miditok  # noqa: F401
        import symusic  # noqa: F401
    except ImportError:
        print("error: MidiTok is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return 2
    from bangercli.data.preprocess import find_midi_files

    files = find_midi_files([args.corpus])[: args.limit]
    workloads = {
        "banger preprocess, 1 worker": banger_preprocess(1),
        "banger preprocess, 2 workers": banger_preprocess(2),
        "miditok REMI, 1 process": miditok_remi(1),
        "miditok REMI, 2 processes": miditok_remi(2),
        "parse only: mido.MidiFile": mido_parser,
        "parse only: banger Tokenizer.read": banger_parser,
        "parse only: symusic.Score": symusic_loader,
    }
    rows = measure(workloads, files, args.repeat)
    print(f"{len(files)} files from {args.corpus}, best of {args.repeat}")
    print(table(rows, baseline="miditok REMI, 1 process"))
    if args.profile:
        print()
        print(profile(files, args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
