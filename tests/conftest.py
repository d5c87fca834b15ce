"""Shared fixtures: an isolated per-user directory for every test, the real corpus (or a
clean skip), a small data directory and a tiny model trained on it (built once per session),
a tiny untrained checkpoint, and hypothesis settings that keep the suite fast and
deterministic."""

from __future__ import annotations

import gc
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from bangercli.midi.tokenizer import Tokenizer

# ../shared/midi beside the repository; absent on most machines outside the project.
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "midi"

settings.register_profile(
    "banger",
    derandomize=True,  # the same examples on every run and machine
    database=None,  # no .hypothesis folder in the tree
    deadline=None,  # the first example pays for imports; timing is not what we test
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("banger")


@pytest.fixture(autouse=True)
def banger_home(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own per-user directory (models, caches) through BANGER_HOME,
    the one override for per-user paths, so no test reads or writes the real one."""
    home = tmp_path_factory.mktemp("banger-home")
    monkeypatch.setenv("BANGER_HOME", str(home))
    return home


def pytest_collection_finish(session):
    """Put what is already in memory (torch, hypothesis, the collected tests) out of the
    garbage collector's sight: a full collection, which every training run makes when it
    closes, then looks only at what the tests made (a quarter of a second less per run)."""
    gc.freeze()


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One intra-op torch thread for the whole suite: the test models are tiny and
    overhead-bound, and two spinning threads on a busy 2-core machine are many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny untrained model (seed 0) saved the way `banger train` saves one."""
    import torch

    from bangercli.midi.tokenizer import TokenizerConfig
    from bangercli.model.checkpoint import save_checkpoint
    from bangercli.model.network import PRESETS, build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    return save_checkpoint(path, build_model(PRESETS["tiny"]), config=PRESETS["tiny"],
                           tokenizer_config=TokenizerConfig())


@pytest.fixture
def tokenizer() -> Tokenizer:
    return Tokenizer()


def corpus_files(per_folder: int, *, seed: int = 0) -> list[Path]:
    """A fixed sample of the real corpus, a few files from each folder (empty when absent)."""
    if not CORPUS.is_dir():
        return []
    rng = random.Random(seed)
    sample: list[Path] = []
    for folder in sorted(p for p in CORPUS.iterdir() if p.is_dir()):
        files = sorted(folder.rglob("*.mid"))
        sample += rng.sample(files, min(per_folder, len(files)))
    return sample


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The real corpus at ../shared/midi, or a skip where it is absent."""
    if not CORPUS.is_dir() or not any(CORPUS.rglob("*.mid")):
        pytest.skip(f"the real corpus is not at {CORPUS}")
    return CORPUS


# --- a small data directory and a model trained on it, built once for the whole suite ------


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """test_train.make_corpus's data directory (read-only for the tests that share it)."""
    from test_train import make_corpus

    return make_corpus(tmp_path_factory.mktemp("corpus"))


@dataclass
class LearnedRun:
    run: Path  # the run directory: last and best checkpoints, metrics.jsonl, curves.png
    result: object  # what train() returned
    events: list[dict]  # every callback event
    seconds: float  # wall time of the training


@pytest.fixture(scope="session")
def learned_run(corpus, tmp_path_factory) -> LearnedRun:
    """The tiny model trained on `corpus` for 60 steps (seconds of CPU): test_train checks
    what it learned, warm starts (--init) begin from it."""
    from test_train import quick, tiny

    from bangercli.training.train import train

    run, events = tmp_path_factory.mktemp("learned") / "run", []
    started = time.perf_counter()
    result = train(corpus, run, model_config=tiny(seq_len=64),
                   config=quick(batch_size=16, max_steps=60, warmup_steps=10, val_every=30,
                                save_every=60, log_every=10),
                   callback=events.append)
    return LearnedRun(run, result, events, time.perf_counter() - started)
