"""The model core and its checkpoints: presets, save/load round trips, and refusing bad files."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import bangercli
from bangercli.api import Banger, load_checkpoint, load_model
from bangercli.model.checkpoint import (
    CHECKPOINT_VERSION, read_checkpoint, save_checkpoint,
)
from bangercli.errors import BangerError, UsageError
from bangercli.model.network import (
    PRESETS, ModelConfig, build_model, count_parameters, model_config,
)
from bangercli.midi.tokenizer import Tokenizer, TokenizerConfig


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    config = PRESETS["tiny"]
    return build_model(config).eval(), config


def save_tiny(path: Path, **kwargs) -> Path:
    model, config = tiny_model()
    return save_checkpoint(path, model, config=config, tokenizer_config=TokenizerConfig(),
                           info={"step": 7}, **kwargs)


def test_presets_sizes_and_overrides():
    with torch.device("meta"):
        sizes = {name: count_parameters(build_model(config)) for name, config in PRESETS.items()}
    assert 40e6 < sizes["seed"] < 50e6
    assert 2e6 < sizes["small"] < 10e6
    assert sizes["tiny"] < 1e6
    assert PRESETS["seed"].heads * PRESETS["seed"].dim_head == 640  # heads need not divide dim
    config = model_config("small", dim=128, depth=None)
    assert (config.dim, config.depth) == (128, 6)
    with pytest.raises(UsageError):
        model_config("huge")
    with pytest.raises(UsageError):
        model_config("tiny", heads=0)


def test_vocabulary_matches_the_tokenizer():
    assert ModelConfig().vocab_size == Tokenizer().vocab_size


def test_rotary_model_runs_past_its_training_length():
    model, config = tiny_model()
    ids = torch.randint(1, config.vocab_size, (1, 3 * config.seq_len))
    with torch.no_grad():
        assert model(ids).shape == (1, 3 * config.seq_len, config.vocab_size)


def test_save_then_load_gives_identical_logits(tmp_path):
    model, _ = tiny_model()
    path = save_tiny(tmp_path / "m.safetensors")
    banger = load_model(path)
    ids = torch.randint(1, 2832, (2, 40))
    with torch.no_grad():
        expected = model(ids)
    assert torch.equal(banger.logits(ids), expected)
    assert banger.info["step"] == 7 and banger.config == PRESETS["tiny"]
    assert isinstance(banger, bangercli.Banger) and banger.tokenizer.config == TokenizerConfig()
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed away
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # like any file the user creates


def test_float16_checkpoint_is_smaller_and_loads_as_float32(tmp_path):
    full = save_tiny(tmp_path / "full.safetensors")
    half = save_tiny(tmp_path / "half.safetensors", dtype="float16")
    assert half.stat().st_size < 0.6 * full.stat().st_size
    a, b = load_checkpoint(full), load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in b.model.parameters())
    ids = torch.randint(1, 2832, (1, 32))
    assert torch.allclose(a.logits(ids), b.logits(ids), atol=5e-2)


def test_bfloat16_checkpoint_loads_as_float32_without_torch(tmp_path):
    """numpy has no bfloat16: generation's reader widens those weights from the raw bytes, to
    exactly what torch reads, and the model generates."""
    from bangercli.model.checkpoint import read_weights

    path = save_tiny(tmp_path / "bf16.safetensors", dtype="bfloat16")
    arrays, meta = read_weights(path)
    tensors, _ = read_checkpoint(path)
    assert meta["dtype"] == "bfloat16" and tensors["to_logits.weight"].dtype == torch.bfloat16
    for name, tensor in tensors.items():
        assert arrays[name].dtype == np.float32
        assert np.array_equal(arrays[name], tensor.float().numpy()), name
    assert len(load_checkpoint(path).generate(tokens=20, seed=1)[0].ids) > 20


def test_model_names_resolve_in_the_user_directory(banger_home):
    save_tiny(banger_home / "models" / "mine.safetensors")
    assert load_model("mine").info["step"] == 7
    with pytest.raises(BangerError, match="unknown model 'nope'"):
        load_model("nope")
    with pytest.raises(BangerError, match="no checkpoint file"):
        load_model("missing/model.safetensors")


class _Payload:
    """Unpickling this creates a file: proof that a loader ran code from the checkpoint."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.mark.parametrize("name", ["evil.pt", "evil.safetensors"])
def test_hostile_pickle_is_refused_and_never_runs(tmp_path, name):
    marker = tmp_path / "pwned"
    hostile = tmp_path / name
    torch.save({"weights": _Payload(str(marker))}, hostile)
    with pytest.raises(BangerError, match="not a readable banger checkpoint"):
        load_model(hostile)
    raw = tmp_path / f"raw-{name}"
    raw.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(BangerError):
        load_model(raw)
    assert not marker.exists()


def test_truncated_checkpoint_is_refused(tmp_path):
    path = save_tiny(tmp_path / "m.safetensors")
    data = path.read_bytes()
    for size in (0, 7, 100, len(data) // 2, len(data) - 1):
        cut = tmp_path / f"cut{size}.safetensors"
        cut.write_bytes(data[:size])
        with pytest.raises(BangerError, match="not a readable banger checkpoint"):
            load_model(cut)


def _rewrite_metadata(path: Path, target: Path, **changes) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = {**handle.metadata(), **changes}
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    save_file(tensors, str(target), metadata=metadata)
    return target


def test_unknown_versions_and_foreign_files_are_refused(tmp_path):
    path = save_tiny(tmp_path / "m.safetensors")
    future = _rewrite_metadata(path, tmp_path / "future.safetensors",
                               format_version=str(CHECKPOINT_VERSION + 1))
    with pytest.raises(BangerError, match="checkpoint format version '2'"):
        load_model(future)
    tokenizer = json.dumps({**TokenizerConfig().to_dict(), "version": 99})
    with pytest.raises(BangerError, match="unsupported tokenizer format 99"):
        load_model(_rewrite_metadata(path, tmp_path / "tok.safetensors", tokenizer=tokenizer))
    foreign = _rewrite_metadata(path, tmp_path / "foreign.safetensors", format="something-else")
    with pytest.raises(BangerError, match="not a banger checkpoint"):
        load_model(foreign)
    bigger = json.dumps({**PRESETS["tiny"].to_dict(), "depth": 3})
    with pytest.raises(BangerError, match="weights do not match"):
        load_model(_rewrite_metadata(path, tmp_path / "shape.safetensors", model_config=bigger))


def test_read_checkpoint_reports_its_metadata(tmp_path):
    tensors, meta = read_checkpoint(save_tiny(tmp_path / "m.safetensors"))
    assert meta["format_version"] == str(CHECKPOINT_VERSION)
    assert meta["model_config"] == PRESETS["tiny"].to_dict()
    assert meta["tokenizer"] == TokenizerConfig().to_dict()
    assert meta["training"] == {"step": 7} and meta["dtype"] == "float32"
    assert "token_emb.emb.weight" in tensors


@pytest.mark.slow  # a real process or a whole run: about 1.5 s or more (CI runs it)
def test_import_bangercli_does_not_import_torch():
    code = "import sys, bangercli; assert 'torch' not in sys.modules; bangercli.load_model"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_banger_object_describes_itself():
    model, config = tiny_model()
    banger = Banger(model, Tokenizer(), config)
    assert banger.num_parameters == count_parameters(model)
    assert "parameters=" in repr(banger) and banger.device.type == "cpu"


def test_per_user_paths_follow_banger_home(banger_home, monkeypatch):
    from bangercli import paths

    assert paths.user_models_dir() == banger_home / "models"
    monkeypatch.delenv("BANGER_HOME")
    assert paths.banger_home().name == "banger"  # platformdirs' user data directory
    assert paths.package_models_dir().parent.name == "bangercli"
