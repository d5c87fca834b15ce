"""One worker thread that runs generation jobs one at a time, behind a bounded queue.

Generation is synchronous CPU work and one model is in memory, so the page's requests take
turns: the event loop hands each job to the worker and awaits it, and a request that finds
the running job plus `max_waiting` others already queued is refused at once (`Busy`) instead
of piling up memory behind them. The worker is a daemon thread, so Ctrl-C never waits for a long piece.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Callable


class Busy(Exception):
    """The queue is full: the caller should answer 503 and let the user retry."""


class GenerationQueue:
    def __init__(self, *, max_waiting: int) -> None:
        self.max_waiting = max_waiting  # jobs that may wait behind the running one
        self._slots = threading.BoundedSemaphore(max_waiting + 1)
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._admitted = 0  # running + waiting
        self._progress = (0, 0)  # (done, total) of the running job, from its progress callback
        self._thread = threading.Thread(target=self._work, name="banger-web-generate", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[Callable[[int, int], None]], object]) -> Future:
        """Queue `job(progress)`; raise `Busy` when the queue is full. The future holds what
        the job returns, or the exception it raised."""
        if not self._slots.acquire(blocking=False):
            raise Busy(f"busy: {self.max_waiting + 1} requests are already running or waiting")
        with self._lock:
            self._admitted += 1
        future: Future = Future()
        self._jobs.put((job, future))
        return future

    def status(self) -> dict:
        """What the page shows while it waits: is a job running, how many wait, how far."""
        with self._lock:
            done, total = self._progress
            admitted = self._admitted
        return {"running": admitted > 0, "waiting": max(admitted - 1, 0),
                "done": done, "total": total}

    def close(self) -> None:
        """Stop the worker after the job it is running (jobs still queued are dropped)."""
        self._jobs.put((None, None))

    def _report(self, done: int, total: int) -> None:
        with self._lock:
            self._progress = (done, total)

    def _work(self) -> None:
        while True:
            job, future = self._jobs.get()
            if job is None:
                return
            result, error = None, None
            if future.set_running_or_notify_cancel():
                try:
                    result = job(self._report)
                except BaseException as err:  # noqa: BLE001 - handed to the awaiting request
                    error = err
            with self._lock:  # free the slot first: whoever got the answer may ask again at once
                self._admitted -= 1
                self._progress = (0, 0)
            self._slots.release()
            if error is not None:
                future.set_exception(error)
            elif not future.cancelled():
                future.set_result(result)
