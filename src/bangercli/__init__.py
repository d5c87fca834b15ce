"""banger: write multitrack music as MIDI with a transformer."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import BangerError
from .tokenizer import Tokenizer, TokenizerConfig

__all__ = ["BangerError", "Tokenizer", "TokenizerConfig", "__version__"]
