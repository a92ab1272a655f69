"""Ctrl-C (SIGINT) and SIGTERM that never land in the middle of an optimizer step.

Inside `deferred_stop()`, while `stop.deferring` is true (the training loop sets it), a signal only sets a
flag; the loop finishes the step it is in, writes a checkpoint and raises TrainingInterrupted. A second
signal, or one outside the deferring window (setup, evaluation), interrupts at once: it raises
KeyboardInterrupt, which writes nothing (the last checkpoint on disk is always a consistent step).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped at a step boundary after a checkpoint; the message says how to resume.

    A KeyboardInterrupt, so code that catches Exception (a sweep's per-cell handler) lets it through.
    """

    exit_code = 130


class StopRequest:
    def __init__(self) -> None:
        self.deferring = False
        self.signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def handle(self, signum: int, frame: object) -> None:
        if self.deferring and not self.requested:
            self.signal_name = signal.Signals(signum).name
            return
        raise KeyboardInterrupt


@contextmanager
def deferred_stop() -> Iterator[StopRequest]:
    """Install the SIGINT/SIGTERM handlers for the block (main thread only; elsewhere signals keep their
    default behaviour), restoring the previous ones after."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, stop.handle) for sig in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
