"""Generation speed: banger's cached decoder against x-transformers' stock generate.

    python bench/generate.py [--preset small] [--tokens 256] [--model PATH] [--threads N]

Both decoders run on the same weights in the same process, so the ratio column holds even on
a noisy machine. Rows: stock `AutoregressiveWrapper.generate(cache_kv=True)` (the baseline)
and banger's FastDecoder with its sampling step, at batch 1 and 4; then the whole
`banger generate` path (16 bars of guitar + drums, with and without the MP3 preview) as
seconds of music per wall second. With --model, the weights are a trained checkpoint
(the realtime factor only means something for a trained model; random weights write
mostly silence).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bangercli.model.decoder import FastDecoder  # noqa: E402
from bangercli.model.network import PRESETS, Banger, build_model, count_parameters  # noqa: E402
from bangercli.generation.sampling import Grammar, Sampling, sample  # noqa: E402
from bangercli.midi.tokenizer import Tokenizer  # noqa: E402


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


def fast(decoder: FastDecoder, grammar: Grammar, prompt: torch.Tensor, tokens: int) -> None:
    batch = prompt.shape[0]
    generator = torch.Generator().manual_seed(0)
    logits = decoder.prefill(prompt, torch.ones_like(prompt, dtype=torch.bool), prompt.shape[1] + tokens)
    phase = torch.zeros(batch, dtype=torch.long)
    time_ = torch.zeros(batch, dtype=torch.long)
    options = Sampling(temperature=1.0, top_p=0.95)
    for _ in range(tokens):
        token = sample(logits, grammar.masks[phase], options, generator)
        phase, time_ = grammar.advance(phase, time_, token)
        logits = decoder.step(token)


def end_to_end(banger, *, audio: bool) -> tuple[float, float]:
    from bangercli.generation.generate import Request, generate
    from bangercli.generation.save import save_pieces

    request = Request(instruments=("guitar",), drums=True, bars=16, seed=1)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        pieces = generate(banger, request)
        save_pieces(pieces, folder, audio="mp3" if audio else None, force=True)
        elapsed = time.perf_counter() - start
    return pieces[0].seconds / elapsed, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--model", help="a trained checkpoint instead of random weights")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = Tokenizer()
    if args.model:
        from bangercli.model.checkpoint import load_model

        banger = load_model(args.model)
    else:
        torch.manual_seed(0)
        config = PRESETS[args.preset]
        banger = Banger(build_model(config), tokenizer, config)
    model = banger.model.eval()
    decoder = FastDecoder(model, banger.config)
    grammar = Grammar(tokenizer)
    header = [Tokenizer.START, Tokenizer.DRUMS_ON, tokenizer.instrument_token(3)]
    c = banger.config
    print(f"model: dim {c.dim}, depth {c.depth}, heads {c.heads}, "
          f"{count_parameters(model) / 1e6:.1f}M parameters; torch threads {torch.get_num_threads()}; "
          f"{args.tokens} new tokens, best of {args.repeat}")
    print(f"{'decoder':<34}{'batch':>6}{'tokens/s':>11}{'vs stock':>10}")
    for batch in (1, 4):
        prompt = torch.tensor([header] * batch)
        base = best_of(args.repeat, lambda: stock(model, prompt, args.tokens))
        ours = best_of(args.repeat, lambda: fast(decoder, grammar, prompt, args.tokens))
        rate = batch * args.tokens
        print(f"{'x-transformers generate (stock)':<34}{batch:>6}{rate / base:>11.0f}{1.0:>10.2f}")
        print(f"{'banger FastDecoder + grammar':<34}{batch:>6}{rate / ours:>11.0f}{base / ours:>10.2f}")
    print()
    print(f"{'banger generate, 16 bars guitar+drums':<40}{'wall s':>8}{'x realtime':>12}")
    for audio in (False, True):
        speeds = [end_to_end(banger, audio=audio) for _ in range(args.repeat)]
        factor = statistics.median(s for s, _ in speeds)
        wall = statistics.median(w for _, w in speeds)
        label = "MIDI + MP3 preview" if audio else "MIDI only"
        print(f"{label:<40}{wall:>8.2f}{factor:>12.1f}")


if __name__ == "__main__":
    main()
