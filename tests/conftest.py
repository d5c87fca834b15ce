"""Shared fixtures: an isolated per-user directory for every test, the real corpus (or a
clean skip), and hypothesis settings that keep the suite fast and deterministic."""

from __future__ import annotations

import random
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


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One intra-op torch thread for the whole suite: the test models are tiny and
    overhead-bound, and two spinning threads on a busy 2-core machine are many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
