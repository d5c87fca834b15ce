"""banger: write multitrack music as MIDI with a transformer."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import BangerError
from .tokenizer import Tokenizer, TokenizerConfig

__all__ = ["Banger", "BangerError", "Tokenizer", "TokenizerConfig", "__version__", "load_model"]


def __getattr__(name: str):
    """`load_model` and `Banger` import torch: load them on first use, not on `import bangercli`."""
    if name == "load_model":
        from .checkpoint import load_model

        return load_model
    if name == "Banger":
        from .model import Banger

        return Banger
    raise AttributeError(f"module 'bangercli' has no attribute {name!r}")
