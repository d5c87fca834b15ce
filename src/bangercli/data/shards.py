"""The on-disk training set that `banger preprocess` writes and `train`/`evaluate` read.

A data directory holds, per split (``train``, ``validation``):

- ``<split>.tokens``: every piece's token ids, concatenated, as little-endian uint16;
- ``<split>.index.npy``: int64 offsets, one more than there are pieces (piece i is
  ``tokens[index[i]:index[i+1]]``);
- ``<split>.pieces.jsonl``: one JSON object per piece (source path, content hash, notes, ...);

plus ``manifest.json`` (format version, tokenizer config, counts) and ``skipped.csv``.
Tokens are streamed to disk as pieces arrive, so memory does not grow with the corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..errors import DataError

DATA_FORMAT = "banger-data"
DATA_FORMAT_VERSION = 1
SPLITS = ("train", "validation")
TOKEN_DTYPE = np.dtype("<u2")


class ShardWriter:
    """Appends pieces of one split to files in `directory` (a staging directory)."""

    def __init__(self, directory: Path, split: str) -> None:
        self.directory = Path(directory)
        self.split = split
        self.offsets = [0]  # 8 bytes a piece: 1.4 MB for all of Lakh
        self.notes = 0
        self._tokens = open(self.directory / f"{split}.tokens", "wb")
        # backslashreplace: a path that is not UTF-8 becomes a JSON escape (\udcff) that reads
        # back as the same str, instead of a UnicodeEncodeError
        self._pieces = open(self.directory / f"{split}.pieces.jsonl", "w", encoding="utf-8",
                            errors="backslashreplace")

    def add(self, ids: list[int], info: dict) -> None:
        array = np.asarray(ids, dtype=TOKEN_DTYPE)
        self._tokens.write(array.tobytes())
        self.offsets.append(self.offsets[-1] + len(array))
        self.notes += int(info.get("notes", 0))
        self._pieces.write(json.dumps(info, ensure_ascii=False) + "\n")

    def close(self) -> dict:
        try:  # on disk before the data directory is renamed into place
            with open(self.directory / f"{self.split}.index.npy", "wb") as index:
                np.save(index, np.asarray(self.offsets, dtype=np.int64))
                for handle in (self._tokens, self._pieces, index):
                    handle.flush()
                    os.fsync(handle.fileno())
        finally:
            self._tokens.close()
            self._pieces.close()
        return {"pieces": len(self.offsets) - 1, "tokens": self.offsets[-1], "notes": self.notes}


class Shards:
    """Read-only view of one split: `len(shards)` pieces, `shards[i]` a uint16 array."""

    def __init__(self, data_dir: str | os.PathLike, split: str = "train") -> None:
        self.data_dir = Path(data_dir)
        self.manifest = load_manifest(self.data_dir)
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}", hint=f"choose one of: {', '.join(SPLITS)}")
        self.split = split
        try:
            self.offsets = np.load(self.data_dir / f"{split}.index.npy")
            size = (self.data_dir / f"{split}.tokens").stat().st_size
            self.tokens = (
                np.memmap(self.data_dir / f"{split}.tokens", dtype=TOKEN_DTYPE, mode="r")
                if size
                else np.zeros(0, dtype=TOKEN_DTYPE)
            )
        except (OSError, ValueError) as err:
            raise DataError(
                f"{self.data_dir} is incomplete: {err}", hint="re-run `banger preprocess --force`"
            ) from None
        self._check(split)

    def _check(self, split: str) -> None:
        """Refuse a damaged or tampered split before it reaches the model: offsets that are
        not a rising list of whole numbers from 0 to the token count, or token ids the
        manifest's tokenizer does not have (the embedding would fail with an IndexError)."""
        offsets, hint = self.offsets, "re-run `banger preprocess --force`"
        if (offsets.ndim != 1 or offsets.dtype.kind not in "iu" or len(offsets) < 1
                or offsets[0] != 0 or offsets[-1] != len(self.tokens)
                or bool((np.diff(offsets) < 0).any())):
            raise DataError(f"{self.data_dir}: {split}.index.npy does not match {split}.tokens",
                            hint=hint)
        from ..midi.tokenizer import Tokenizer, TokenizerConfig

        vocabulary = Tokenizer(TokenizerConfig.from_dict(self.manifest.get("tokenizer"))).vocab_size
        if len(self.tokens) and int(self.tokens.max()) >= vocabulary:
            raise DataError(f"{self.data_dir}: {split}.tokens holds token id "
                            f"{int(self.tokens.max())}, beyond the tokenizer's {vocabulary}",
                            hint=hint)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def pieces(self):
        """The per-piece records of ``<split>.pieces.jsonl`` (source path, hash, notes ...)."""
        path = self.data_dir / f"{self.split}.pieces.jsonl"
        if not path.exists():
            return []
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def load_manifest(data_dir: str | os.PathLike) -> dict:
    """The manifest of a data directory, or a DataError saying what is wrong with it."""
    data_dir = Path(data_dir)
    hint = "make one with `banger preprocess MIDI_DIR --out DATA_DIR`"
    if not data_dir.exists():
        raise DataError(f"data directory {data_dir} does not exist", hint=hint)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir} is not a directory", hint=hint)
    path = data_dir / "manifest.json"
    if not path.is_file():
        raise DataError(f"{data_dir} was not made by `banger preprocess` (no manifest.json)", hint=hint)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is unreadable: {err}", hint=hint) from None
    if not isinstance(manifest, dict) or manifest.get("format") != DATA_FORMAT:
        raise DataError(f"{path} is not a banger data manifest", hint=hint)
    if manifest.get("format_version") != DATA_FORMAT_VERSION:
        raise DataError(
            f"{data_dir} has data format {manifest.get('format_version')!r}, "
            f"this banger reads {DATA_FORMAT_VERSION}",
            hint="re-run `banger preprocess --force` with this version",
        )
    return manifest


def manifest_hash(data_dir: str | os.PathLike) -> str:
    """A short content hash of the manifest, stored in checkpoints to name their data."""
    return hashlib.sha256((Path(data_dir) / "manifest.json").read_bytes()).hexdigest()[:16]
