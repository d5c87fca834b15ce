"""Writing files so that a reader never sees half of one: temporary file, fsync, rename.

Everything banger writes under a final name (checkpoints, MIDI, audio, pictures, manifests)
goes through `atomic_write`. With ``overwrite=False`` the final step is a hard link, which
fails if the name exists: two processes writing into one folder cannot clobber each other.
A temporary file is named ``.<name>.<pid>.<random>.part``: one left by a killed process is
recognised by its dead pid and removed by `remove_stale_parts`. A write that the system
refuses (full disk, read-only folder) becomes a `WriteError` naming the file.
"""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .errors import BangerError, OutputExistsError

NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # EFBIG: over a file size limit (ulimit -f)
NOT_ALLOWED = {errno.EROFS, errno.EACCES, errno.EPERM}


class WriteError(BangerError):
    """A file could not be written: the disk is full or the folder is read-only."""


def write_error(path: str | os.PathLike, err: OSError) -> WriteError:
    """The one-line error for a refused write of `path`, with a hint that fits the cause."""
    if err.errno in NO_ROOM:
        hint = "free some disk space, or choose a folder on another disk"
    elif err.errno in NOT_ALLOWED:
        hint = "choose a folder you can write to"
    else:
        hint = "check that the folder is writable and the disk has room"
    return WriteError(f"cannot write {path}: {err.strerror or err}", hint=hint)


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn an OSError raised while writing `path` into a `WriteError`."""
    try:
        yield
    except OSError as err:
        raise write_error(path, err) from None


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
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".part",
                                        dir=path.parent)
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


def remove_stale_parts(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that killed processes left in `folder`; returns them."""
    removed = []
    for part in Path(folder).glob(".*.part"):
        pid = part.name[: -len(".part")].rsplit(".", 2)
        if len(pid) == 3 and pid[1].isdigit() and not process_alive(int(pid[1])):
            try:
                part.unlink()
            except OSError:  # gone already, or a read-only folder: harmless either way
                continue
            removed.append(part)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (for stale temporary files)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, and belongs to someone else
        return True
    return True
