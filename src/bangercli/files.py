"""Writing files so that a reader never sees half of one: temporary file, fsync, rename.

Everything banger writes under a final name (checkpoints, MIDI, audio, pictures, manifests)
goes through `atomic_write`. With ``overwrite=False`` the final step is a hard link, which
fails if the name exists: two processes writing into one folder cannot clobber each other.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from .errors import OutputExistsError


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before any thread
    os.umask(mask)
    return mask


UMASK = _read_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], *,
                 overwrite: bool = True) -> Path:
    """Call ``write(temporary_path)`` on a file in the target folder, fsync it, then give it
    the name `path` (replacing an existing file only when `overwrite`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~UMASK)  # mkstemp and some writers make 0600 files
        if overwrite:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)  # atomic, and fails if another writer took the name
            except FileExistsError:
                raise OutputExistsError(f"{path} already exists",
                                        hint="pass --force to overwrite it") from None
    finally:
        temporary.unlink(missing_ok=True)
    return path
