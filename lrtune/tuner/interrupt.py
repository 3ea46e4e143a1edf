"""Ctrl-C and SIGTERM as a stop request that the training loop honours between micro-batches."""

from __future__ import annotations

import signal
import threading
from typing import Any, Callable

from lrtune.tuner.trial import StopFlag

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class CatchSignals:
    """While active, SIGINT and SIGTERM set ``flag`` instead of killing the process.

    A second Ctrl-C raises ``KeyboardInterrupt`` at once. Outside the main
    thread, where Python cannot install handlers, nothing is caught.
    """

    def __init__(self, on_signal: Callable[[int], None] | None = None) -> None:
        self.flag = StopFlag()
        self.on_signal = on_signal
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "CatchSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.flag.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.flag.signum = signum
        if self.on_signal is not None:
            self.on_signal(signum)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
