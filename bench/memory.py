"""Peak memory under load: many variants in one `banger generate`, many files in one
`banger preprocess`.

    python bench/memory.py [--model default] [--bars 16] [--variants 1,8,64] [--one-batch]
                           [--audio none|mp3]
                           [--files 100,1000,10000] [--workers 1,2] [--threads 1]

Every row is one fresh `python -m bangercli ...` process, so nothing one row loaded counts
against the next. Two figures per row:

- peak RSS: the largest resident size of the command or any of its workers (``ru_maxrss``
  from `os.wait4`, exact; it also counts the child's image before exec, which is this
  script's size, well below every figure because this script never imports torch);
- peak total PSS: the proportional set size of the command and its workers together,
  sampled every 20 ms from /proc (pages that forked workers share are counted once, so it is
  what the whole command costs the machine; a sample can miss a short spike).

With --one-batch the largest --variants also runs as a single batch (`MAX_BATCH` raised
past it), which is how `banger generate` decoded variants before they were batched 16 at a
time. Each group is compared with its first row (the baseline: ``-n 1``, or 100 files with the same
number of workers), in the same run: memory is bounded when the ratio of peak RSS stays far
below the ratio of the input. Preprocess reads synthetic files that a deterministic builder
writes into a temporary folder (a piano lead, a bass and drums; every file different, every
file kept). Linux only (/proc).
"""

from __future__ import annotations

import argparse
import os
import random
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TPB = 480  # ticks per beat of the synthetic files


@dataclass
class Row:
    group: str  # rows of a group share a baseline (the group's first row)
    name: str  # what ran
    size: int  # the input: variants or files
    peak_rss: float  # MB, largest single process (ru_maxrss)
    peak_pss: float  # MB, the command and its workers together (sampled)
    seconds: float  # wall time


# --- synthetic MIDI files ----------------------------------------------------------------


def _vlq(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def _track(events: list[tuple[int, int, bytes]]) -> bytes:
    """An MTrk chunk from (absolute tick, order at that tick, message bytes)."""
    body, now = bytearray(), 0
    for tick, _, message in sorted(events):
        body += _vlq(tick - now) + message
        now = tick
    body += b"\x00\xff\x2f\x00"
    return b"MTrk" + struct.pack(">I", len(body)) + bytes(body)


def _notes(channel: int, notes: list[tuple[int, int, int, int]]) -> list[tuple[int, int, bytes]]:
    events = []
    for start, length, pitch, velocity in notes:
        events.append((start, 1, bytes([0x90 | channel, pitch, velocity])))
        events.append((start + length, 0, bytes([0x80 | channel, pitch, 0])))
    return events


def synthetic_midi(seed: int, *, bars: int, notes_per_bar: int) -> bytes:
    """A type 1 file: tempo, a piano lead (most notes), a bass and drums. The seed picks
    pitches and velocities, so no two files are the same (preprocess drops duplicates)."""
    rng = random.Random(seed)
    lead_per_bar = max(notes_per_bar - 6, 1)  # 2 bass notes and 4 drum hits a bar
    bar = 4 * TPB
    lead, bass, kit = [], [], []
    for b in range(bars):
        step = bar // lead_per_bar
        lead += [(b * bar + i * step, step, rng.randint(60, 84), rng.randint(50, 120))
                 for i in range(lead_per_bar)]
        bass += [(b * bar + i * 2 * TPB, 2 * TPB, rng.randint(33, 48), 100) for i in range(2)]
        kit += [(b * bar + i * TPB, TPB // 4, 36 if i % 2 == 0 else 38, 110) for i in range(4)]
    tempo = struct.pack(">I", 500_000)[1:]
    tracks = [
        _track([(0, 0, b"\xff\x51\x03" + tempo)]),
        _track([(0, -1, b"\xc0\x00")] + _notes(0, lead)),
        _track([(0, -1, b"\xc1\x21")] + _notes(1, bass)),
        _track(_notes(9, kit)),
    ]
    header = b"MThd" + struct.pack(">IHHH", 6, 1, len(tracks), TPB)
    return header + b"".join(tracks)


def write_corpus(folder: Path, count: int, *, bars: int, notes_per_bar: int) -> list[Path]:
    """`count` synthetic files in sub-folders of 1,000, as a real collection is laid out."""
    paths = []
    for i in range(count):
        path = folder / f"{i // 1000:03d}" / f"song{i:05d}.mid"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(synthetic_midi(i, bars=bars, notes_per_bar=notes_per_bar))
        paths.append(path)
    return paths


# --- measuring one command ---------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            todo += map(int, Path(f"/proc/{current}/task/{current}/children").read_text().split())
        except OSError:
            pass
    return pids


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# `banger ARGS` with every variant in one batch (the decoder before MAX_BATCH)
ONE_BATCH = ("import bangercli.generation.generate as g; g.MAX_BATCH = 1 << 30; "
             "from bangercli.cli.app import main; main()")


def measure(args: list[str], env: dict, *, one_batch: bool = False) -> tuple[float, float, float]:
    """Run `python -m bangercli ARGS`; (peak RSS MB, peak total PSS MB, seconds)."""
    started = time.perf_counter()
    command = ["-c", ONE_BATCH] if one_batch else ["-m", "bangercli"]
    process = subprocess.Popen([sys.executable, *command, *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_pss, running = 0, True

    def sample() -> None:
        nonlocal peak_pss
        while running:
            peak_pss = max(peak_pss, sum(_pss_kb(pid) for pid in _tree(process.pid)))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage, not all children's
    process.returncode = os.waitstatus_to_exitcode(status)
    running = False
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"error: {' '.join(args)} failed:\n{stderr.decode(errors='replace')}")
    return usage.ru_maxrss / 1024, peak_pss / 1024, time.perf_counter() - started


def table(rows: list[Row]) -> str:
    lines = [
        ("| command | input | peak RSS MB | peak total PSS MB | seconds | input vs baseline "
         "| peak RSS vs baseline |"),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    baselines: dict[str, Row] = {}
    for row in rows:
        base = baselines.setdefault(row.group, row)
        lines.append(
            f"| {row.name} | {row.size:,} | {row.peak_rss:,.0f} | {row.peak_pss:,.0f} "
            f"| {row.seconds:.1f} | {row.size / base.size:g}x "
            f"| {row.peak_rss / base.peak_rss:.2f}x |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="model name or checkpoint path")
    parser.add_argument("--bars", type=int, default=16, help="bars per generated piece")
    parser.add_argument("--variants", default="1,8,64", help="--variants to try, comma-separated")
    parser.add_argument("--audio", default="none", help="generate's --audio (mp3: the previews "
                        "and their worker process count too)")
    parser.add_argument("--one-batch", action="store_true",
                        help="also run the largest --variants as one batch (the old decoder)")
    parser.add_argument("--files", default="100,1000,10000", help="corpus sizes to preprocess")
    parser.add_argument("--workers", default="1,2", help="preprocess --workers to try")
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS for the commands (0 = torch's default)")
    parser.add_argument("--file-bars", type=int, default=32, help="bars per synthetic file")
    parser.add_argument("--notes-per-bar", type=int, default=14, help="notes per synthetic bar")
    args = parser.parse_args()
    if not Path("/proc/self/smaps_rollup").exists():
        print("error: needs Linux /proc (smaps_rollup)", file=sys.stderr)
        return 2
    variants = [int(v) for v in args.variants.split(",") if v]
    sizes = [int(v) for v in args.files.split(",") if v]
    workers = [int(v) for v in args.workers.split(",") if v]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
        env = dict(os.environ, BANGER_HOME=str(tmp / "home"), PYTHONPATH=path)
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        runs = [(n, False) for n in variants] + ([(max(variants), True)] if args.one_batch else [])
        for n, one_batch in runs:
            name = f"generate -n {n} --bars {args.bars}" + (", one batch" if one_batch else "")
            print(f"{name} ...", file=sys.stderr)
            peak = measure(["generate", "--model", args.model, "--bars", str(args.bars),
                            "-n", str(n), "--seed", "1", "--audio", args.audio, "--quiet", "--force",
                            "--out", str(tmp / "generated")], env, one_batch=one_batch)
            rows.append(Row("generate", name, n, *peak))
        if sizes:
            print(f"writing {max(sizes):,} synthetic files ...", file=sys.stderr)
            corpus = write_corpus(tmp / "midi", max(sizes), bars=args.file_bars,
                                  notes_per_bar=args.notes_per_bar)
        for w in workers:
            for size in sizes:
                name = f"preprocess --workers {w}"
                print(f"{name}, {size:,} files ...", file=sys.stderr)
                # whole folders where the size allows, so the command searches them
                sources = ([str(tmp / "midi" / f"{i:03d}") for i in range(size // 1000)]
                           if size % 1000 == 0 else [str(p) for p in corpus[:size]])
                peak = measure(["preprocess", *sources, "--out", str(tmp / f"data-{w}-{size}"),
                                "--workers", str(w), "--quiet"], env)
                rows.append(Row(f"preprocess-{w}", name, size, *peak))
    print(f"generate: model {args.model}, {args.bars} bars, seed 1, --audio {args.audio}; preprocess: "
          f"synthetic files of {args.file_bars} bars, {args.notes_per_bar} notes a bar; "
          f"OMP_NUM_THREADS={args.threads or 'default'}; python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
