"""Generation speed: banger's cached decoder against x-transformers' stock generate, and the
whole `banger generate` command against realtime.

    python bench/generate.py [--model default] [--tokens 256] [--repeat 3] [--cold 3]
                             [--parts decoders,prefill,where,in-process,cold]
    python bench/generate.py --candidate other.safetensors --only-candidate

Tables, every row of each measured in the same run so the ratios hold on a noisy machine:

1. `decoders`: on the same weights, same process, one thread: stock
   `AutoregressiveWrapper.generate(cache_kv=True)` (the baseline, torch) and banger's numpy
   decoder with its grammar masks and sampling, at batch 1 and 4;
2. `prefill`: the decoder's prefill (the start, and a re-window of 1,536 tokens at batch 1
   and 16) in the calling thread alone and shared by its threads (`WORKERS`, the default);
3. `where`: where a token's time goes in `generate` (16 bars of guitar and drums, seed 1);
4. `in-process`: 16 bars with and without the MP3 preview, `-n 16` per variant, and `-n 4`
   with previews made after the pieces (baseline) or by the worker meanwhile;
5. `cold`: the command from a cold start (best of --cold runs, MP3 included; also with
   `-n 4`) beside the floors of starting Python with numpy (what it imports) and with torch
   (what it no longer imports).

Only the `decoders` table imports torch (and runs after the others): in-process figures are
those of a process without it, as `banger generate` is.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bangercli.api import load_model  # noqa: E402
from bangercli.generation import decoding  # noqa: E402
from bangercli.generation.echo import Echo  # noqa: E402
from bangercli.generation.generate import Request, generate  # noqa: E402
from bangercli.generation.sampling import Grammar, Sampling, sample  # noqa: E402
from bangercli.generation.save import finished_piece, save_pieces, start_previews  # noqa: E402
from bangercli.midi.tokenizer import Tokenizer  # noqa: E402
from bangercli.model import decoder as decoder_module  # noqa: E402
from bangercli.model.decoder import FastDecoder, column_ranges, one_thread  # noqa: E402

BARS16 = dict(instruments=("guitar",), drums=True, bars=16, seed=1)
PARTS = ("decoders", "prefill", "where", "in-process", "cold")


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def stock(model, prompt, tokens: int) -> None:
    import torch
    from x_transformers import AutoregressiveWrapper

    wrapper = AutoregressiveWrapper(model)
    with torch.inference_mode():
        wrapper.generate(torch.as_tensor(prompt), tokens, cache_kv=True, temperature=1.0,
                         filter_logits_fn="top_p", filter_kwargs={"thres": 0.95})


def ours(decoder: FastDecoder, grammar: Grammar, prompt: np.ndarray, tokens: int) -> None:
    batch = prompt.shape[0]
    generator = np.random.default_rng(0)
    logits = decoder.prefill(prompt, np.ones(prompt.shape, dtype=bool), prompt.shape[1] + tokens)
    phase = np.zeros(batch, dtype=np.int64)
    time_ = np.zeros(batch, dtype=np.int64)
    options = Sampling(temperature=1.0, top_p=0.95)
    columns = {}  # as generation does: only the logits the grammar lets the next draw choose
    for _ in range(tokens):
        token = sample(logits, grammar.masks[phase], options, generator)
        phase, time_ = grammar.advance(phase, time_, token)
        key = tuple(phase.tolist())
        if key not in columns:
            columns[key] = column_ranges(grammar.masks[phase].any(axis=0))
        logits = decoder.step(token, columns[key])


def decoders(banger, tokens: int, repeat: int) -> None:
    import torch

    model, decoder, grammar = banger.model, banger.decoder, Grammar(banger.tokenizer)
    header = [Tokenizer.START, Tokenizer.DRUMS_ON, banger.tokenizer.instrument_token(3)]
    print(f"\n{'decoder (one thread; torch ' + torch.__version__ + ')':<36}{'batch':>6}"
          f"{'tokens/s':>10}{'us/step':>10}{'vs stock':>10}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with one_thread():
            for batch in (1, 4):
                prompt = np.array([header] * batch)
                rows = [("x-transformers generate (stock)", lambda: stock(model, prompt, tokens)),
                        ("banger, numpy decoder", lambda: ours(decoder, grammar, prompt,
                                                               tokens))]
                times = {name: float("inf") for name, _ in rows}
                for _ in range(repeat):  # interleaved: a burst of load hits every row alike
                    for name, fn in rows:
                        times[name] = min(times[name], best_of(1, fn))
                base = times[rows[0][0]]
                for name, seconds in times.items():
                    rate = batch * tokens / seconds
                    print(f"{name:<36}{batch:>6}{rate:>10.0f}{1e6 / rate * batch:>10.0f}"
                          f"{base / seconds:>10.2f}")
    finally:
        torch.set_num_threads(threads)


def prefill(banger, repeat: int) -> None:
    """Seconds of one prefill: the header alone (the start of a piece) and a re-window of
    1,536 tokens (1,000-1,536 per row at batch 16: rows are left-padded), in the calling
    thread alone and shared by the prefill's threads (every product on one BLAS thread)."""
    decoder, window = banger.decoder, banger.config.seq_len
    rng = np.random.default_rng(0)
    shared = decoder_module.WORKERS
    print(f"\n{'prefill (seconds)':<36}{'batch':>6}{'tokens':>8}{'1 thread':>10}"
          f"{f'{shared} threads':>11}")
    for batch, length in ((1, 3), (1, 1536), (16, 1536)):
        ids = rng.integers(1, banger.config.vocab_size, (batch, length))
        valid = np.ones((batch, length), dtype=bool)
        for row in range(1, batch):
            valid[row, : rng.integers(0, 537)] = False
        cells = ""
        for workers in (1, shared):
            decoder_module.WORKERS = workers
            try:
                seconds = best_of(repeat, lambda: decoder.prefill(ids, valid, window))
            finally:
                decoder_module.WORKERS = shared
            cells += f"{seconds:>10.3f}" if workers == 1 else f"{seconds:>11.3f}"
        label = "the start (header)" if length < 10 else "a re-window"
        print(f"{label:<36}{batch:>6}{length:>8}{cells}")


def where_time_goes(banger) -> None:
    """Wall time inside each move of the loop over one 16-bar generation (no profiler: its
    per-call overhead would swamp these calls)."""
    spent: dict[str, float] = {}
    originals = []

    def timed(owner, name: str, label: str) -> None:
        original = getattr(owner, name)
        originals.append((owner, name, original))

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            result = original(*args, **kwargs)
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - start
            return result
        setattr(owner, name, wrapper)

    timed(FastDecoder, "step", "decoder step")
    timed(FastDecoder, "prefill", "prefill (start and each re-window)")
    timed(decoding.Batch, "allowed", "masks (grammar, band, chord, forcing)")
    timed(decoding.Batch, "draw", "draw (steering, echo, top-p, sampling)")
    timed(Echo, "mix", "echo")  # inside the draw: reported, not added up
    timed(decoding.Batch, "advance", "advance (phase, time, bookkeeping)")
    try:
        start = time.perf_counter()
        pieces = generate(banger, Request(**BARS16))
        total = time.perf_counter() - start
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
    tokens = len(pieces[0].ids)
    print(f"\n{'where a token goes (16 bars, seed 1)':<44}{'us/token':>10}{'share':>8}")
    echo = spent.pop("echo", 0.0)
    for label, seconds in sorted(spent.items(), key=lambda item: -item[1]):
        print(f"{label:<44}{seconds / tokens * 1e6:>10.0f}{seconds / total:>8.0%}")
        if label.startswith("draw"):
            print(f"{'  of which echo':<44}{echo / tokens * 1e6:>10.0f}{echo / total:>8.0%}")
    rest = total - sum(spent.values())
    print(f"{'the rest (decode to notes, MIDI, loop)':<44}{rest / tokens * 1e6:>10.0f}"
          f"{rest / total:>8.0%}")
    print(f"{'total':<44}{total / tokens * 1e6:>10.0f}{1:>8.0%}   ({tokens} tokens)")


def in_process(banger, repeat: int) -> None:
    print(f"\n{'in-process, 16 bars guitar + drums':<44}{'wall s':>8}{'x realtime':>12}")
    for label, audio in (("MIDI only", None), ("MIDI + MP3 preview", "mp3")):
        walls = []
        for _ in range(repeat):
            with tempfile.TemporaryDirectory() as folder:
                start = time.perf_counter()
                pieces = generate(banger, Request(**BARS16))
                save_pieces(pieces, folder, audio=audio, force=True)
                walls.append(time.perf_counter() - start)
        wall = min(walls)
        print(f"{label:<44}{wall:>8.2f}{pieces[0].seconds / wall:>12.1f}")
    for label, echo in (("per token, seeds 1-4, default echo", None), ("the same, --echo 0", 0.0)):
        tokens, wall = 0, 0.0
        for seed in range(1, 5):
            options = {**BARS16, "seed": seed, **({} if echo is None else {"echo": echo})}
            start = time.perf_counter()
            tokens += len(generate(banger, Request(**options))[0].ids)
            wall += time.perf_counter() - start
        print(f"{label:<44}{wall / tokens * 1e6:>8.0f} us   ({tokens} tokens, {wall:.1f} s)")
    single = best_of(repeat, lambda: generate(banger, Request(**BARS16)))
    start = time.perf_counter()
    pieces = generate(banger, Request(**{**BARS16, "variants": 16}))
    many = time.perf_counter() - start
    print(f"{'-n 16, per variant (MIDI only)':<44}{many / 16:>8.2f}"
          f"{sum(p.seconds for p in pieces) / many:>12.1f}   "
          f"({many / 16 / single:.2f}x a single run's {single:.2f} s)")
    variants(banger, repeat)


def variants(banger, repeat: int) -> None:
    """-n 4 with MP3 previews, as `banger generate` writes them: made after the last piece
    (the baseline) or by the worker process while the other pieces are decoded; runs
    interleaved, the same files either way."""
    request = Request(**{**BARS16, "variants": 4})
    rows = {"-n 4 + MP3, previews made after (baseline)": False,
            "-n 4 + MP3, previews made meanwhile": True}
    walls: dict[str, list[float]] = {label: [] for label in rows}
    for _ in range(repeat):
        for label, meanwhile in rows.items():
            with tempfile.TemporaryDirectory() as folder:
                start = time.perf_counter()
                previews = start_previews("mp3", synth="builtin", soundfont=None,
                                          variants=4) if meanwhile else None
                try:
                    pieces = generate(banger, request, finished=finished_piece(previews))
                    save_pieces(pieces, folder, previews=previews)
                finally:
                    if previews is not None:
                        previews.close()
                walls[label].append(time.perf_counter() - start)
    base = min(walls[next(iter(rows))])
    for label in rows:
        wall = min(walls[label])
        print(f"{label:<44}{wall:>8.2f}{sum(p.seconds for p in pieces) / wall:>12.1f}   "
              f"({wall / base:.2f}x the baseline)")


def cold(model: str, repeat: int) -> None:
    """Wall seconds and peak resident memory from /usr/bin/time (GNU time) when present."""
    timer = ["/usr/bin/time", "-f", "%e %M"] if Path("/usr/bin/time").exists() else []
    print(f"\n{'from a cold start (best of %d)' % repeat:<44}{'wall s':>8}{'peak MB':>9}")
    generate_command = [sys.executable, "-m", "bangercli", "generate", "-i", "guitar",
                        "--drums", "--seed", "1", "--model", model, "--force", "--out"]
    rows = [("python -c 'import numpy' (floor)", [sys.executable, "-c", "import numpy"]),
            ("python -c 'import torch' (not imported)", [sys.executable, "-c", "import torch"]),
            ("banger generate -i guitar --drums, + MP3", generate_command),
            ("the same, -n 4", generate_command[:-1] + ["-n", "4", "--out"])]
    for label, command in rows:
        best, peak = float("inf"), float("nan")
        for _ in range(repeat):
            with tempfile.TemporaryDirectory() as folder:
                full = timer + command + ([folder] if command[-1] == "--out" else [])
                start = time.perf_counter()
                done = subprocess.run(full, check=True, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True)
                wall = time.perf_counter() - start
                if wall < best:
                    best = wall
                    if timer:
                        peak = int(done.stderr.split()[-1]) / 1024
        print(f"{label:<44}{best:>8.2f}{peak:>9.0f}")


def candidate_speed(banger, candidate_path: str, seeds: int) -> None:
    """16 bars of guitar + drums, seeds 1..N, interleaved: the default and a candidate model
    (e.g. a longer window)."""
    candidate = load_model(candidate_path)
    rows = [("default", banger),
            (f"candidate {Path(candidate_path).name} (window {candidate.config.seq_len})",
             candidate)]
    walls = {label: 0.0 for label, _ in rows}
    tokens = {label: 0 for label, _ in rows}
    for seed in range(1, seeds + 1):
        for label, model in rows:
            start = time.perf_counter()
            pieces = generate(model, Request(**{**BARS16, "seed": seed}))
            walls[label] += time.perf_counter() - start
            tokens[label] += len(pieces[0].ids)
    base = walls[rows[0][0]]
    print(f"\n{'16 bars guitar + drums, seeds 1-%d' % seeds:<52}{'mean s':>8}{'us/token':>10}"
          f"{'vs default':>12}")
    for label, _ in rows:
        print(f"{label:<52}{walls[label] / seeds:>8.2f}"
              f"{walls[label] / tokens[label] * 1e6:>10.0f}{base / walls[label]:>11.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="a model name or checkpoint path")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cold", type=int, default=3, help="cold-start runs (0 = skip)")
    parser.add_argument("--candidate", help="also time this checkpoint against the default")
    parser.add_argument("--seeds", type=int, default=4, help="seeds for --candidate")
    parser.add_argument("--only-candidate", action="store_true", help="skip the other tables")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"tables to run, comma-separated (default: {','.join(PARTS)})")
    args = parser.parse_args()
    parts = args.parts.split(",")
    if set(parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(set(parts) - set(PARTS))}; choose from {PARTS}")
    banger = load_model(args.model)
    c = banger.config
    print(f"model: dim {c.dim}, depth {c.depth}, heads {c.heads}, window {c.seq_len}, "
          f"{banger.num_parameters / 1e6:.1f}M parameters; {os.cpu_count()} CPUs; "
          f"numpy {np.__version__}; best of {args.repeat}")
    if args.candidate:
        with one_thread():
            candidate_speed(banger, args.candidate, args.seeds)
    if args.only_candidate:
        return
    if "prefill" in parts:
        prefill(banger, args.repeat)
    if "where" in parts:
        where_time_goes(banger)
    if "in-process" in parts:
        in_process(banger, args.repeat)
    if "decoders" in parts:  # last: it imports torch and x-transformers
        decoders(banger, args.tokens, args.repeat)
    if "cold" in parts and args.cold:
        cold(args.model, args.cold)


if __name__ == "__main__":
    main()
