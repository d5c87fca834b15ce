"""banger: write multitrack music as MIDI with a transformer.

The front door is `bangercli.api` (`load_model`, `Banger`); the package is laid out by stage:
midi/ (instruments, MIDI files, tokenizer) -> data/ (preprocess, windows) -> model/ (network,
decoder, checkpoints) -> training/ -> generation/ (request, sampling loop, saving) -> render/
(audio, piano rolls) -> evaluation/; cli/ is the `banger` command over all of it.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import BangerError, UsageError
from .midi.tokenizer import Tokenizer, TokenizerConfig

__all__ = ["Banger", "BangerError", "Piece", "Request", "Tokenizer", "TokenizerConfig",
           "UsageError", "__version__", "load_model"]

_LAZY = {"load_model": "api", "Banger": "api", "Piece": "api", "Request": "api"}


def __getattr__(name: str):
    """The model API imports torch: load it on first use, not on `import bangercli`."""
    if name in _LAZY:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'bangercli' has no attribute {name!r}")
