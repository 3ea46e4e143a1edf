"""The order in which a fused group's threads act between two passes, so that a search repeats itself.

After a pass, each member's thread judges its run's epoch (a pruner's decision), then either brings the run to
the next pass or ends it; the threads whose runs ended then take a new one. Timing alone would order these
steps differently from run to run; here:

1. members judge their epoch in the order of their numbers (``decide``): a run's judge sees every run numbered
   before it settled, continued to the next pass or ended and told, as one run after another would;
2. a thread takes a new run (``begin``) only once every member of the pass has settled, and the threads that
   take one do so in the order of their indices, one at a time until ``end``.

So which runs share a pass, and what each thread takes, follow from the runs' numbers and the threads' indices.
A run that ends without reaching a pass (it failed to start, or runs unfused) takes its turn when it comes.
Knows nothing of Optuna: the numbers and indices are the caller's.
"""

from __future__ import annotations

import threading
import time


class Turns:
    """The turns of one group's threads, kept under the group's condition ``cond``."""

    def __init__(self, cond: threading.Condition, size: int) -> None:
        self.cond = cond
        self.deciding: dict[int, int] = {}  # run id -> number: the last pass's members not yet settled
        self.askers: set[int] = set(range(size))  # indices of the threads that take a run before the next pass
        self.waiting: set[int] = set()  # of them, those waiting for their turn
        self.holder: int | None = None  # the thread (ident) whose turn it is
        self.index: dict[int, int] = {}  # thread ident -> its index
        self.ended: dict[int, int] = {}  # thread ident -> its run that ended, settled when the thread goes on
        self.changed = time.monotonic()  # when a turn last ended

    def join(self, index: int) -> None:
        """The calling thread is the group's thread ``index``."""
        with self.cond:
            self.index[threading.get_ident()] = index

    def leave(self) -> None:
        """The calling thread takes no more runs (``cond`` held)."""
        ident = threading.get_ident()
        self._settle_ended(ident)
        index = self.index.pop(ident, None)
        if index is not None:
            self.askers.discard(index)
            self.waiting.discard(index)
        self.cond.notify_all()

    def passed(self, numbers: dict[int, int]) -> None:
        """A pass of the runs ``numbers`` (run id -> number) ended (``cond`` held)."""
        self.deciding = dict(numbers)

    def decide(self, run_id: int) -> None:
        """Wait until every member of the last pass numbered before run ``run_id`` has settled."""
        with self.cond:
            number = self.deciding.get(run_id)
            while number is not None and any(other < number for other in self.deciding.values()):
                self.cond.wait()

    def continues(self, run_id: int) -> None:
        """Run ``run_id`` came back for the next pass: it has settled (``cond`` held)."""
        if self.deciding.pop(run_id, None) is not None:
            self.cond.notify_all()

    def end_run(self, run_id: int) -> None:
        """The calling thread's run ``run_id`` left the group: it settles when the thread next ``begin``s (its
        trial told by then) or leaves (``cond`` held)."""
        self.ended[threading.get_ident()] = run_id

    def begin(self, index: int) -> None:
        """Settle the calling thread's ended run, then wait for its turn to take a run: every member of the last
        pass has settled, every thread that will take one is waiting, and none of them has a lower index."""
        with self.cond:
            self._settle_ended(threading.get_ident())
            self.askers.add(index)
            self.waiting.add(index)
            self.cond.notify_all()
            while (self.holder is not None or self.deciding or not self.askers <= self.waiting
                   or index != min(self.askers)):
                self.cond.wait()
            self.holder = threading.get_ident()
            self.askers.discard(index)
            self.waiting.discard(index)

    def end(self) -> None:
        """End the calling thread's turn (nothing when it holds none)."""
        with self.cond:
            if self.holder == threading.get_ident():
                self.holder, self.changed = None, time.monotonic()
                self.cond.notify_all()

    def _settle_ended(self, ident: int) -> None:
        run_id = self.ended.pop(ident, None)
        if run_id is not None:
            self.deciding.pop(run_id, None)
