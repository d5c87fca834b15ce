"""Generation speed: banger's cached decoder against x-transformers' stock generate, and the
whole `banger generate` command against realtime.

    python bench/generate.py [--model default] [--tokens 256] [--repeat 3] [--cold 3]
    python bench/generate.py --candidate other.safetensors --only-candidate

Tables, every row of each measured in the same run so the ratios hold on a noisy machine:

1. decoders on the same weights, same process, one thread: stock
   `AutoregressiveWrapper.generate(cache_kv=True)` (the baseline), banger's decoder with its
   step in torch (the previous release's step), and with its step in numpy (today's), each
   with banger's grammar masks and sampling, at batch 1 and 4;
2. where a token's time goes in `generate` (16 bars of guitar and drums, seed 1);
3. in-process: 16 bars with and without the MP3 preview, and `-n 16` per variant;
4. the command from a cold start (best of --cold runs, MP3 included) beside the floor of
   starting Python and importing torch.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bangercli.api import load_model  # noqa: E402
from bangercli.generation import decoding  # noqa: E402
from bangercli.generation.generate import Request, generate  # noqa: E402
from bangercli.generation.sampling import Grammar, Sampling, sample  # noqa: E402
from bangercli.generation.save import save_pieces  # noqa: E402
from bangercli.midi.tokenizer import Tokenizer  # noqa: E402
from bangercli.model.decoder import FastDecoder, one_thread  # noqa: E402

BARS16 = dict(instruments=("guitar",), drums=True, bars=16, seed=1)


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def stock(model, prompt: torch.Tensor, tokens: int) -> None:
    from x_transformers import AutoregressiveWrapper

    wrapper = AutoregressiveWrapper(model)
    with torch.inference_mode():
        wrapper.generate(prompt, tokens, cache_kv=True, temperature=1.0,
                         filter_logits_fn="top_p", filter_kwargs={"thres": 0.95})


def torch_step(decoder: FastDecoder, token: torch.Tensor) -> torch.Tensor:
    """The previous release's step: one position through the torch path (as prefill)."""
    decoder.valid[:, decoder.length] = True
    mask = decoder.valid[:, None, None, : decoder.length + 1]
    decoder.np_bias[:, decoder.length] = 0.0
    return decoder._forward(token[:, None], mask)


def ours(decoder: FastDecoder, grammar: Grammar, prompt: torch.Tensor, tokens: int,
         step) -> None:
    batch = prompt.shape[0]
    generator = torch.Generator().manual_seed(0)
    logits = decoder.prefill(prompt, torch.ones_like(prompt, dtype=torch.bool),
                             prompt.shape[1] + tokens)
    phase = torch.zeros(batch, dtype=torch.long)
    time_ = torch.zeros(batch, dtype=torch.long)
    options = Sampling(temperature=1.0, top_p=0.95)
    for _ in range(tokens):
        token = sample(logits, grammar.masks[phase], options, generator)
        phase, time_ = grammar.advance(phase, time_, token)
        logits = step(decoder, token)


def decoders(banger, tokens: int, repeat: int) -> None:
    model, decoder, grammar = banger.model, banger.decoder, Grammar(banger.tokenizer)
    header = [Tokenizer.START, Tokenizer.DRUMS_ON, banger.tokenizer.instrument_token(3)]
    print(f"\n{'decoder (one thread)':<36}{'batch':>6}{'tokens/s':>10}{'us/step':>10}"
          f"{'vs stock':>10}")
    with one_thread():
        for batch in (1, 4):
            prompt = torch.tensor([header] * batch)
            rows = [("x-transformers generate (stock)", lambda: stock(model, prompt, tokens)),
                    ("banger, torch step (previous)", lambda: ours(
                        decoder, grammar, prompt, tokens, torch_step)),
                    ("banger, numpy step", lambda: ours(
                        decoder, grammar, prompt, tokens, FastDecoder.step))]
            times = {name: float("inf") for name, _ in rows}
            for _ in range(repeat):  # interleaved: a burst of load hits every row alike
                for name, fn in rows:
                    times[name] = min(times[name], best_of(1, fn))
            base = times[rows[0][0]]
            for name, seconds in times.items():
                rate = batch * tokens / seconds
                print(f"{name:<36}{batch:>6}{rate:>10.0f}{1e6 / rate * batch:>10.0f}"
                      f"{base / seconds:>10.2f}")


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

    timed(FastDecoder, "step", "decoder step (numpy)")
    timed(FastDecoder, "prefill", "prefill (torch; start and each re-window)")
    timed(decoding.Batch, "allowed", "masks (grammar, band, chord, forcing)")
    timed(decoding.Batch, "draw", "draw (steering, top-p, sampling)")
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
    for label, seconds in sorted(spent.items(), key=lambda item: -item[1]):
        print(f"{label:<44}{seconds / tokens * 1e6:>10.0f}{seconds / total:>8.0%}")
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
    single = best_of(repeat, lambda: generate(banger, Request(**BARS16)))
    start = time.perf_counter()
    pieces = generate(banger, Request(**{**BARS16, "variants": 16}))
    many = time.perf_counter() - start
    print(f"{'-n 16, per variant (MIDI only)':<44}{many / 16:>8.2f}"
          f"{sum(p.seconds for p in pieces) / many:>12.1f}   "
          f"({many / 16 / single:.2f}x a single run's {single:.2f} s)")


def cold(model: str, repeat: int) -> None:
    """Wall seconds and peak resident memory from /usr/bin/time (GNU time) when present."""
    timer = ["/usr/bin/time", "-f", "%e %M"] if Path("/usr/bin/time").exists() else []
    print(f"\n{'from a cold start (best of %d)' % repeat:<44}{'wall s':>8}{'peak MB':>9}")
    generate_command = [sys.executable, "-m", "bangercli", "generate", "-i", "guitar",
                        "--drums", "--seed", "1", "--model", model, "--force", "--out"]
    rows = [("python -c 'import torch' (floor)", [sys.executable, "-c", "import torch"]),
            ("banger generate -i guitar --drums, + MP3", generate_command)]
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
    """16 bars of guitar + drums, seeds 1..N, interleaved: the default as the previous release
    ran it (torch step), the default today, and a candidate model (e.g. a longer window)."""
    candidate = load_model(candidate_path)
    rows = [("default, torch step (previous release)", banger, torch_step),
            ("default, numpy step", banger, None),
            (f"candidate {Path(candidate_path).name} (window {candidate.config.seq_len})",
             candidate, None)]
    walls = {label: 0.0 for label, _, _ in rows}
    tokens = {label: 0 for label, _, _ in rows}
    original = FastDecoder.step
    for seed in range(1, seeds + 1):
        for label, model, step in rows:
            if step is not None:
                FastDecoder.step = lambda self, token: torch_step(self, token)
            try:
                start = time.perf_counter()
                pieces = generate(model, Request(**{**BARS16, "seed": seed}))
                walls[label] += time.perf_counter() - start
            finally:
                FastDecoder.step = original
            tokens[label] += len(pieces[0].ids)
    base = walls[rows[0][0]]
    print(f"\n{'16 bars guitar + drums, seeds 1-%d' % seeds:<52}{'mean s':>8}{'us/token':>10}"
          f"{'vs previous':>13}")
    for label, _, _ in rows:
        print(f"{label:<52}{walls[label] / seeds:>8.2f}"
              f"{walls[label] / tokens[label] * 1e6:>10.0f}{base / walls[label]:>12.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="a model name or checkpoint path")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cold", type=int, default=3, help="cold-start runs (0 = skip)")
    parser.add_argument("--candidate", help="also time this checkpoint against the default")
    parser.add_argument("--seeds", type=int, default=4, help="seeds for --candidate")
    parser.add_argument("--only-candidate", action="store_true", help="skip the other tables")
    args = parser.parse_args()
    banger = load_model(args.model)
    c = banger.config
    print(f"model: dim {c.dim}, depth {c.depth}, heads {c.heads}, window {c.seq_len}, "
          f"{banger.num_parameters / 1e6:.1f}M parameters; {os.cpu_count()} CPUs; "
          f"torch {torch.__version__}; best of {args.repeat}")
    if args.candidate:
        with one_thread():
            candidate_speed(banger, args.candidate, args.seeds)
    if args.only_candidate:
        return
    decoders(banger, args.tokens, args.repeat)
    where_time_goes(banger)
    in_process(banger, args.repeat)
    if args.cold:
        cold(args.model, args.cold)


if __name__ == "__main__":
    main()
