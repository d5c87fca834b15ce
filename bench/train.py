"""Training-loop overhead: banger's `train()` against a bare PyTorch loop, same model and batches.

    python bench/train.py DATA_DIR [--preset small] [--batch-size 16] [--steps 20]

Both loops train the same freshly seeded model on the same windows (banger's sampler, drawn
up front for the bare loop) with Adam; the first `--warmup` steps of each are not timed.
Rounds alternate the two loops so that load from other processes hits both alike; the best
round of each is reported. Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from bangercli.model.network import build_model, model_config
from bangercli.data.shards import Shards
from bangercli.midi.tokenizer import Tokenizer, TokenizerConfig
from bangercli.training.config import TrainConfig
from bangercli.training.train import train
from bangercli.data.windows import WindowSampler


def banger_loop(data: Path, args, config) -> float:
    """Tokens/s of `bangercli.training.train.train` between the end of warm-up and the last step."""
    times: dict[int, float] = {}
    steps = args.warmup + args.steps
    settings = TrainConfig(batch_size=args.batch_size, max_steps=steps, epochs=1e9, lr=2e-4,
                           val_every=10**9, save_every=10**9, log_every=1, device=args.device,
                           seed=0, transpose=True, compile=args.compile)

    def record(event: dict) -> None:
        if event["event"] == "train":
            times[event["step"]] = time.perf_counter()

    with tempfile.TemporaryDirectory() as run:
        train(data, run, model_config=config, config=settings, callback=record)
    tokens = args.steps * args.batch_size * config.seq_len
    return tokens / (times[steps] - times[args.warmup])


def bare_loop(data: Path, args, config) -> float:
    """Tokens/s of the plainest loop over the same model, optimizer and windows."""
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    shards = Shards(data, "train")
    tokenizer = Tokenizer(TokenizerConfig.from_dict(shards.manifest["tokenizer"]))
    sampler = WindowSampler(shards, tokenizer, seq_len=config.seq_len, seed=0, transpose=True)
    steps = args.warmup + args.steps
    batches = [torch.from_numpy(sampler.batch(step, args.batch_size)) for step in range(steps)]
    torch.manual_seed(0)
    model = build_model(config).to(device)
    if args.compile:
        model = torch.compile(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    for step, batch in enumerate(batches):
        if step == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        batch = batch.to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten(), ignore_index=0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    loss.item()  # wait for the device
    return args.steps * args.batch_size * config.seq_len / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="data directory made by `banger preprocess`")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per loop")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per loop")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    config = model_config(args.preset, seq_len=args.seq_len)
    results: dict[str, list[float]] = {"bare PyTorch loop": [], "banger train()": []}
    for _ in range(args.rounds):
        results["bare PyTorch loop"].append(bare_loop(args.data, args, config))
        results["banger train()"].append(banger_loop(args.data, args, config))
    bare = max(results["bare PyTorch loop"])
    print(f"{args.preset} preset, batch {args.batch_size} x {args.seq_len} tokens, "
          f"{args.steps} timed steps after {args.warmup}, best of {args.rounds} rounds; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{datetime.date.today()}\n")
    print("| loop | tokens/s (best) | all rounds | overhead |")
    print("|---|---:|---|---:|")
    for name, values in results.items():
        best = max(values)
        rounds = ", ".join(f"{v:,.0f}" for v in values)
        print(f"| {name} | {best:,.0f} | {rounds} | {100 * (bare - best) / bare:+.1f}% |")


if __name__ == "__main__":
    main()
