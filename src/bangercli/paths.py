"""Every per-user path banger uses, from one place.

The root is platformdirs' user data directory for "banger" (e.g. ``~/.local/share/banger``
on Linux), or ``$BANGER_HOME`` when set: the test suite points it at a temporary directory
so that no test reads or writes the real user's files.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "BANGER_HOME"


def banger_home() -> Path:
    """The per-user root directory (not created here)."""
    override = os.environ.get(HOME_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("banger", appauthor=False))


def user_models_dir() -> Path:
    """Where named models a user installed live: ``<home>/models/<name>.safetensors``."""
    return banger_home() / "models"


def package_models_dir() -> Path:
    """Models shipped inside the package: ``bangercli/weights/<name>.safetensors``."""
    return Path(__file__).resolve().parent / "weights"
