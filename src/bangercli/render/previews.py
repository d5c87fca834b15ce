"""Audio previews made in a second process while generation goes on.

Decoding runs on one core. When several variants are asked for, they end at different
times (a sparse piece is done long before a dense one), and each finished piece's preview
(render and MP3 encode: ~1.5 s for 16 bars) can be made on the other core while the rest
decode. symusic's synthesizer holds Python's lock while it renders, so a thread would stop
the decoder as long; a process does not.

`PreviewMaker.submit(n, midi, seconds)` hands a finished piece to the worker;
`PreviewMaker.audio(n)` waits for its encoded file (bytes), to be written under its final
name by the caller (generation/save.py, atomically, as ever). The worker calls the very
functions the caller would (`audio.render`, `audio.audio_bytes`), so a preview has the same
bytes whichever process made it. Whatever goes wrong in the worker (it could not start, it
crashed, a soundfont failed) gives None: the caller renders that preview itself, and reports
its own error if there is one.
"""

from __future__ import annotations

import io
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import mido


class PreviewMaker:
    """One worker process making the previews of one request, in the order handed in. The
    process starts with the first piece handed in (a request that fails before has none)."""

    def __init__(self, fmt: str, soundfont: str | os.PathLike | None = None) -> None:
        self.fmt, self.soundfont = fmt, None if soundfont is None else str(soundfont)
        self.made: dict[int, Future] = {}
        self.pool: ProcessPoolExecutor | None = None
        self.broken = False

    def submit(self, n: int, midi: mido.MidiFile, seconds: float) -> None:
        """Start on piece `n` (any hashable key) of `seconds` length before its tail."""
        if self.broken:
            return
        buffer = io.BytesIO()
        midi.save(file=buffer)
        try:
            if self.pool is None:  # spawn, not fork: the parent has threads (prefill, progress)
                self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_worker_start)
            self.made[n] = self.pool.submit(_make, buffer.getvalue(), seconds, self.fmt,
                                            self.soundfont)
        except (OSError, RuntimeError):  # no process here, or the pool broke: the caller renders
            self.broken = True

    def cancel_pending(self) -> list[int]:
        """Take back the pieces the worker has not started (the caller renders them itself,
        on its own core, while the worker finishes the ones it has); their keys."""
        taken = [n for n, future in self.made.items() if future.cancel()]
        for n in taken:
            del self.made[n]
        return taken

    def audio(self, n: int) -> bytes | None:
        """The encoded preview of piece `n`, or None if the worker did not make it."""
        future = self.made.pop(n, None)
        if future is None:
            return None
        try:
            return future.result()
        except Exception:  # noqa: BLE001 - the caller renders it here and reports its error
            return None

    def close(self) -> None:
        """Stop the worker; previews not yet started are dropped."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self.broken = True

    def __enter__(self) -> "PreviewMaker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _worker_start() -> None:
    # Ctrl-C goes to the whole process group: the parent stops, and stops the worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a parent killed outright (SIGTERM, SIGKILL) cannot stop it: the worker holds both ends
    # of its task queue and would wait there for ever, so it watches the parent itself
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()


def _exit_with(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])  # ready when the parent has gone
    os._exit(0)


def _make(midi: bytes, seconds: float, fmt: str, soundfont: str | None) -> bytes:
    """What save_pieces does for one preview of the built-in renderer, from the MIDI bytes
    (the renderer reads those in any case)."""
    from . import audio, synth

    font = Path(soundfont) if soundfont is not None else None
    return audio.audio_bytes(synth.render(midi, font, end_seconds=seconds), fmt=fmt)
