"""The one error hierarchy for user-facing failures.

The CLI turns a `BangerError` into ``error: <message>`` plus an optional hint on
stderr and a non-zero exit. Anything else keeps its traceback: it is a bug.
"""

from __future__ import annotations


class BangerError(Exception):
    """A failure the user can act on: bad input, a missing file, a wrong option."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(BangerError):
    """An option value that cannot work (unknown instrument, out-of-range number)."""

    exit_code = 2


class MidiReadError(BangerError):
    """A MIDI file that cannot be read: missing, corrupt, truncated or not MIDI at all."""


class DataError(BangerError):
    """A data directory that is missing, empty or not made by `banger preprocess`."""


class OutputExistsError(BangerError):
    """An output that already exists and would be overwritten without --force."""
