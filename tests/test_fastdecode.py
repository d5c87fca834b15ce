"""The cached decoder (numpy) against the x-transformers forward pass it re-implements (torch):
the same logits for prefill and for every step, with left padding, with layer-norm gains that
are not all ones (so folding them into the projections is really exercised); its erf against
torch's and math's; and generation that imports neither torch nor x-transformers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bangercli.model.decoder import FastDecoder, UnsupportedModel, erf
from bangercli.model.network import PRESETS, build_model
from midi_fixtures import band

CONFIG = PRESETS["tiny"]
TOLERANCE = 1e-4


def perturbed_model(*, seed: int = 0, unit_offset: bool = True) -> torch.nn.Module:
    """A tiny random model whose layer-norm gains and feed-forward biases are far from their
    initial values (gain 1, bias 0), so a decoder that ignored them would fail. With
    `unit_offset` (x-transformers' default) a norm multiplies by gamma + 1, else by gamma."""
    torch.manual_seed(seed)
    model = build_model(CONFIG).eval()
    norms = [module for module in model.modules() if hasattr(module, "unit_offset")]
    assert len(norms) == 2 * CONFIG.depth + 1
    for module in norms:
        module.unit_offset = unit_offset
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("gamma") or name.endswith("bias"):
                centre = 1.0 if name.endswith("gamma") and not unit_offset else 0.0
                parameter.copy_(centre + 0.5 * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return perturbed_model()


def reference_logits(model, ids: list[int]) -> torch.Tensor:
    """Next-token logits of the plain forward pass over the whole sequence."""
    with torch.inference_mode():
        return model(torch.tensor([ids]))[0, -1].float()


def random_ids(length: int, *, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, CONFIG.vocab_size, (length,), generator=generator).tolist()


def assert_close(actual, expected) -> None:
    difference = (torch.as_tensor(actual) - torch.as_tensor(expected)).abs().max().item()
    assert difference <= TOLERANCE, f"max |difference| {difference:.2e} > {TOLERANCE}"


def test_perturbation_changes_the_logits(model):
    """The perturbed gains matter: reset to their initial values, the logits move far
    beyond the tolerance."""
    ids = random_ids(20, seed=1)
    plain = build_model(CONFIG).eval()
    initial = plain.state_dict()
    plain.load_state_dict({name: initial[name] if name.endswith("gamma") else value
                           for name, value in model.state_dict().items()})
    moved = (reference_logits(plain, ids) - reference_logits(model, ids)).abs().max()
    assert moved > 100 * TOLERANCE


@pytest.fixture(scope="module", params=[True, False], ids=["gamma+1", "gamma"])
def any_norm_model(request) -> torch.nn.Module:
    """Layer norms that multiply by gamma + 1 (x-transformers' default), or by gamma."""
    return perturbed_model(seed=3, unit_offset=request.param)


def test_prefill_and_steps_match_the_forward_pass(any_norm_model):
    model = any_norm_model
    ids = random_ids(48, seed=2)
    decoder = FastDecoder.from_model(model, CONFIG)
    prompt = 30
    logits = decoder.prefill(torch.tensor([ids[:prompt]]), torch.ones(1, prompt, dtype=torch.bool),
                             len(ids))
    assert logits.shape == (1, CONFIG.vocab_size)
    assert_close(logits[0], reference_logits(model, ids[:prompt]))
    for t in range(prompt, len(ids)):
        logits = decoder.step(torch.tensor([ids[t]]))
        assert_close(logits[0], reference_logits(model, ids[: t + 1]))
    assert decoder.length == len(ids)


def test_left_padded_rows_equal_each_sequence_run_alone(model):
    """Three prompts of different lengths in one batch: every row's logits, at prefill and
    at each following step, equal those of its own unpadded sequence (rotary positions are
    relative)."""
    lengths = [25, 9, 17]
    prompts = [random_ids(n, seed=10 + i) for i, n in enumerate(lengths)]
    continuations = [random_ids(12, seed=20 + i) for i in range(len(lengths))]
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    valid = torch.zeros(len(lengths), width, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        valid[row, width - len(prompt):] = True
    # Garbage under the pads: it must be masked out, not merely zero.
    ids[~valid] = torch.tensor(random_ids(int((~valid).sum()), seed=99))

    decoder = FastDecoder.from_model(model, CONFIG)
    logits = decoder.prefill(ids, valid, width + 12)
    for row, prompt in enumerate(prompts):
        assert_close(logits[row], reference_logits(model, prompt))
    for t in range(12):
        logits = decoder.step(torch.tensor([c[t] for c in continuations]))
        for row, prompt in enumerate(prompts):
            assert_close(logits[row], reference_logits(model, prompt + continuations[row][: t + 1]))


def test_rows_kept_after_others_leave_go_on_as_if_alone(model):
    """`keep` drops rows from the cache: the rows kept (padded or not) step on with the
    logits of their own sequences, and the full logits after it are theirs."""
    prompts = [random_ids(n, seed=40 + n) for n in (14, 6, 11)]
    width = max(map(len, prompts))
    ids = np.zeros((3, width), dtype=np.int64)
    valid = np.zeros((3, width), dtype=bool)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = prompt
        valid[row, width - len(prompt):] = True
    decoder = FastDecoder.from_model(model, CONFIG)
    decoder.prefill(ids, valid, width + 8)
    decoder.step(np.array([7, 8, 9]))
    decoder.keep([0, 2])
    assert np.array_equal(decoder.full_logits()[1], decoder.full_logits()[-1])
    for t in range(3):
        logits = decoder.step(np.array([20 + t, 30 + t]))
    assert logits.shape[0] == 2
    for row, (prompt, first, later) in enumerate(((prompts[0], 7, 20), (prompts[2], 9, 30))):
        assert_close(logits[row], reference_logits(model, prompt + [first] + [later + t for t in
                                                                             range(3)]))


def test_prefill_past_the_training_window_matches(model):
    """Rotary positions let the decoder run beyond seq_len, like the forward pass does."""
    ids = random_ids(CONFIG.seq_len + 20, seed=4)
    decoder = FastDecoder.from_model(model, CONFIG)
    prompt = len(ids) - 5
    logits = decoder.prefill(torch.tensor([ids[:prompt]]), torch.ones(1, prompt, dtype=torch.bool),
                             len(ids))
    assert_close(logits[0], reference_logits(model, ids[:-5]))
    for t in range(len(ids) - 5, len(ids)):
        logits = decoder.step(torch.tensor([ids[t]]))
    assert_close(logits[0], reference_logits(model, ids))


def test_a_long_padded_prefill_in_pieces_matches(model):
    """600 positions: the prefill's pieces (ranges of positions, blocks of 256 queries, shared
    by its threads) put together give the forward pass's logits, for a left-padded row too,
    and the cache they wrote serves the next step."""
    from bangercli.model import decoder as module

    assert 600 // module.MIN_PIECE >= 2 and 600 > 2 * module.QUERY_BLOCK
    prompts = [random_ids(600, seed=30), random_ids(420, seed=31)]
    ids = np.zeros((2, 600), dtype=np.int64)
    valid = np.zeros((2, 600), dtype=bool)
    for row, prompt in enumerate(prompts):
        ids[row, 600 - len(prompt):] = prompt
        valid[row, 600 - len(prompt):] = True
    decoder = FastDecoder.from_model(model, CONFIG)
    logits = decoder.prefill(ids, valid, 601)
    for row, prompt in enumerate(prompts):
        assert_close(logits[row], reference_logits(model, prompt))
    logits = decoder.step(np.array([5, 9]))
    assert_close(logits[1], reference_logits(model, prompts[1] + [9]))


def test_a_step_can_work_out_only_the_columns_the_draw_may_choose(model):
    """The same logits in the ranges asked for (to rounding: BLAS may sum a narrower product
    in another order), -inf elsewhere, and all of them on demand."""
    prompt = random_ids(40, seed=7)
    twins = [FastDecoder.from_model(model, CONFIG) for _ in range(2)]
    for decoder in twins:
        decoder.prefill(np.array([prompt]), np.ones((1, 40), dtype=bool), 64)
    every = twins[0].step(np.array([3]))
    ranges = ((5, 9), (20, 21), (every.shape[1] - 7, every.shape[1]))
    some = twins[1].step(np.array([3]), ranges)
    inside = np.zeros(every.shape[1], dtype=bool)
    for start, stop in ranges:
        inside[start:stop] = True
    assert_close(some[:, inside], every[:, inside])
    assert np.isneginf(some[:, ~inside]).all()
    assert np.array_equal(twins[1].full_logits(), every)


def test_cached_greedy_decoding_equals_uncached(model):
    """Greedy continuation of two prompts of different lengths, batched and cached, equals the
    plain forward pass re-run on the growing sequence, token for token."""
    prompts = [random_ids(7, seed=5), random_ids(15, seed=6)]
    steps = 30
    expected = []
    for prompt in prompts:
        sequence = list(prompt)
        for _ in range(steps):
            sequence.append(int(reference_logits(model, sequence).argmax()))
        expected.append(sequence[len(prompt):])

    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    valid = torch.zeros(len(prompts), width, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        valid[row, width - len(prompt):] = True
    decoder = FastDecoder.from_model(model, CONFIG)
    logits = decoder.prefill(ids, valid, width + steps)
    produced = [[] for _ in prompts]
    for _ in range(steps):
        token = logits.argmax(axis=-1)
        for row, value in enumerate(token.tolist()):
            produced[row].append(value)
        logits = decoder.step(token)
    assert produced == expected
    assert len(set(expected[0])) > 1  # not a degenerate constant sequence


def test_full_cache_refuses_another_step(model):
    decoder = FastDecoder.from_model(model, CONFIG)
    decoder.prefill(torch.tensor([[1, 2, 3]]), torch.ones(1, 3, dtype=torch.bool), 4)
    decoder.step(torch.tensor([5]))
    with pytest.raises(RuntimeError, match="cache is full"):
        decoder.step(torch.tensor([6]))


def test_refuses_weights_of_another_layout(model):
    other = build_model(CONFIG)
    other.extra = torch.nn.Linear(2, 2)  # one more tensor than the decoder knows about
    with pytest.raises(UnsupportedModel):
        FastDecoder.from_model(other, CONFIG)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_weight_shapes_are_those_of_the_built_model(preset):
    """Checkpoints are checked (and the decoder built) from `weight_shapes` alone, without
    x-transformers: it must name every tensor of the real network with its shape."""
    from bangercli.model.network import weight_shapes

    config = PRESETS[preset]
    with torch.device("meta"):
        built = build_model(config)
    assert weight_shapes(config) == {name: tuple(t.shape) for name, t in built.state_dict().items()}


def test_the_decoder_built_from_checkpoint_tensors_equals_the_one_built_from_the_model(model):
    ids = random_ids(40, seed=7)
    from_model = FastDecoder.from_model(model, CONFIG)
    from_weights = FastDecoder(model.state_dict(), CONFIG)  # x-transformers' norms: gamma + 1
    for decoder in (from_model, from_weights):
        decoder.prefill(torch.tensor([ids[:30]]), torch.ones(1, 30, dtype=torch.bool), 40)
    for t in range(30, 40):
        token = np.array([ids[t]])
        assert np.array_equal(from_model.step(token), from_weights.step(token))


def test_wrong_tensor_shapes_are_refused(model):
    weights = dict(model.state_dict())
    weights["to_logits.weight"] = weights["to_logits.weight"][:, :-1]
    with pytest.raises(UnsupportedModel, match="to_logits.weight has shape"):
        FastDecoder(weights, CONFIG)


def blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_one_blas_thread_inside_and_the_old_count_after(model, monkeypatch):
    """The decoding loop (steps and prefills) runs numpy's BLAS on one thread; after it, the
    old count. torch's own threads are left alone."""
    from threadpoolctl import threadpool_limits

    from bangercli.model.decoder import one_thread

    decoder = FastDecoder.from_model(model, CONFIG)
    seen = []
    real_row = FastDecoder._prefill_row

    def spying_row(self, *args):
        seen.append(blas_threads())
        return real_row(self, *args)

    monkeypatch.setattr(FastDecoder, "_prefill_row", spying_row)
    torch_threads = torch.get_num_threads()
    with threadpool_limits(2, user_api="blas"):  # as on a 2-core machine, whatever this one has
        assert set(blas_threads()) == {2}  # numpy's BLAS is found, so the checks below can fail
        with one_thread():
            assert set(blas_threads()) == {1}
            decoder.prefill(np.array([[1, 2, 3]]), np.ones((1, 3), dtype=bool), 8)
            decoder.step(np.array([4]))
            assert torch.get_num_threads() == torch_threads
        assert set(blas_threads()) == {2}
    assert [set(threads) for threads in seen] == [{1}]


def test_erf_is_float32_accurate_over_a_wide_range():
    """numpy has no erf: the decoder's (for the exact GELU) is within 1.2e-7 of the exact
    value from -10 to 10 (torch.erf: 3.3e-8; a float32 spacing near 1 is 6e-8), exact at 0,
    odd, 1 in the tails and at infinity."""
    z = np.concatenate([np.linspace(-10, 10, 400_001, dtype=np.float32),
                        np.float32([0.0, -0.0, 1e-30, -1e-30, 1e-8, 30.0, -1e30])])
    exact = np.array([math.erf(value) for value in z.astype(np.float64).tolist()])
    assert np.abs(erf(z) - exact).max() < 1.2e-7
    assert np.abs(erf(z) - torch.erf(torch.from_numpy(z)).numpy()).max() < 1.5e-7
    assert np.array_equal(erf(-z), -erf(z))
    assert erf(np.float32([0.0, np.inf, -np.inf])).tolist() == [0.0, 1.0, -1.0]
    assert np.isnan(erf(np.float32([np.nan]))).all()


def test_gelu_matches_torchs_exact_gelu():
    from bangercli.model.decoder import gelu

    x = np.concatenate([np.linspace(-12, 12, 240_001, dtype=np.float32),
                        np.float32([0.0, 1e-6, -1e-6, 50.0, -50.0, 1e4, -1e4])])
    expected = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    got = gelu(x.copy())  # in place, on the hidden layer's memory
    assert np.abs(got - expected).max() <= 2 * np.spacing(np.float32(12))  # 1e-6 at 12
    assert np.abs(got - expected)[np.abs(x) <= 1].max() <= 2 * np.spacing(np.float32(1))
    assert np.array_equal(got[-4:], expected[-4:])  # far tails: x and 0 exactly


@pytest.mark.slow  # a real process or a whole run: about 1.5 s or more (CI runs it)
def test_generation_imports_neither_torch_nor_x_transformers(tmp_path):
    """Start-up: loading a model and generating need numpy only (safetensors' numpy reader,
    the numpy decoder and draw); torch (about 1.6 s) and x-transformers (about a second) are
    for training, scoring and `Banger.model`."""
    import subprocess
    import sys

    from bangercli.model.checkpoint import save_checkpoint
    from bangercli.midi.tokenizer import Tokenizer

    path = tmp_path / "tiny.safetensors"
    save_checkpoint(path, build_model(CONFIG), config=CONFIG,
                    tokenizer_config=Tokenizer().config)
    code = ("import sys\nfrom bangercli import load_model\n"
            "heavy = lambda: sorted({'torch', 'x_transformers'} & set(sys.modules))\n"
            "banger = load_model(sys.argv[1])\n"
            "banger.generate(bars=1, seed=1)\n"
            "banger.generate(prompt=sys.argv[2], add=['bass'], seed=1)\n"
            "print(heavy())\n"
            "banger.model\n"
            "print(heavy())\n")
    prompt = tmp_path / "riff.mid"
    band(0, bars=2).save(prompt)
    done = subprocess.run([sys.executable, "-c", code, str(path), str(prompt)],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines() == ["[]", "['torch', 'x_transformers']"], done.stderr[-2000:]


# `banger ARGS`, then the heavy modules it imported, on stderr
LAUNCHER = """
import sys
from bangercli.cli.app import main

try:
    main()
finally:
    print("imported:", sorted({"torch", "x_transformers"} & set(sys.modules)), file=sys.stderr)
"""


@pytest.mark.slow  # a real process: about 1.5 s with the MP3 preview
@pytest.mark.parametrize("audio", ["none", "mp3"])
def test_banger_generate_imports_neither_torch_nor_x_transformers(tmp_path, audio):
    import os
    import subprocess
    import sys

    from bangercli.model.checkpoint import save_checkpoint
    from bangercli.midi.tokenizer import Tokenizer

    if audio != "none":
        pytest.importorskip("symusic")  # the built-in renderer
        pytest.importorskip("soundfile")
    path = save_checkpoint(tmp_path / "tiny.safetensors", build_model(CONFIG), config=CONFIG,
                           tokenizer_config=Tokenizer().config)
    env = dict(os.environ, BANGER_HOME=str(tmp_path / "home"))
    env.pop("BANGER_SOUNDFONT", None)
    done = subprocess.run([sys.executable, "-c", LAUNCHER, "generate", "--model", str(path),
                           "-i", "guitar", "--drums", "--bars", "2", "--seed", "1", "--audio",
                           audio, "--out", str(tmp_path / "out"), "--json", "--quiet"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1] == "imported: []"
    record = json.loads(done.stdout)
    assert Path(record["midi"]).is_file()
    assert (record["audio"] is None) == (audio == "none")
    if record["audio"]:
        assert Path(record["audio"]).stat().st_size > 1000
