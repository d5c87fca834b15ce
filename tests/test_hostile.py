"""Hostile and damaged checkpoints handed to the commands a user runs: `generate --model`
and `evaluate`. A pickle payload must never run; a truncated or tampered file is one clear
error line, never a traceback."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import pytest
import torch

from test_cli_matrix import assert_one_error_line, run_in_process, shared  # noqa: F401


class _Payload:
    """Unpickling this creates a file: proof that a loader ran code from the checkpoint."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def hostile_files(folder: Path, original: Path, marker: Path) -> dict[str, Path]:
    """Every way a checkpoint can be hostile or broken, each in its own file."""
    files = {}
    for name in ("evil.pt", "evil.safetensors"):  # torch.save pickles under either name
        torch.save({"weights": _Payload(str(marker))}, folder / name)
        files[name] = folder / name
    (folder / "raw.pkl").write_bytes(pickle.dumps(_Payload(str(marker))))
    files["raw pickle"] = folder / "raw.pkl"
    data = original.read_bytes()
    (folder / "cut.safetensors").write_bytes(data[: len(data) // 2])
    files["truncated"] = folder / "cut.safetensors"
    header = struct.unpack("<Q", data[:8])[0]
    damaged = bytearray(data)
    damaged[8 + header // 2] ^= 0x55  # a byte in the middle of the JSON header
    (folder / "tampered.safetensors").write_bytes(bytes(damaged))
    files["tampered header"] = folder / "tampered.safetensors"
    huge = struct.pack("<Q", 2**62) + data[8:]  # a header length far past the file's end
    (folder / "huge.safetensors").write_bytes(huge)
    files["huge header length"] = folder / "huge.safetensors"
    return files


KINDS = ["evil.pt", "evil.safetensors", "raw pickle", "truncated", "tampered header",
         "huge header length"]


@pytest.mark.parametrize("command", ["generate", "evaluate"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_hostile_or_damaged_checkpoint_is_refused(kind, command, shared, tmp_path,  # noqa: F811
                                                    capfd, monkeypatch):
    marker = tmp_path / "pwned"
    path = hostile_files(tmp_path, shared["CKPT"], marker)[kind]
    out = tmp_path / "out"
    if command == "generate":
        argv = ["generate", "--model", str(path), "--bars", "1", "--audio", "none",
                "--out", str(out)]
    else:
        argv = ["evaluate", str(path), str(shared["DATA"]), "--device", "cpu"]
    result = run_in_process(argv, capfd, monkeypatch)
    assert_one_error_line(*result, 1, "checkpoint")
    assert not marker.exists(), "the payload ran"
    assert not out.exists()
