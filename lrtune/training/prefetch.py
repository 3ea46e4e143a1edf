"""Epochs of a ``HostLoader`` augmented in a loader process, one epoch ahead of training.

A fused group trains one pass after another on the same loader, and between
two passes its trials are told, sampled and built on one core (they hold the
GIL), while the other core waits. ``Prefetcher`` augments the next pass's
epoch there, in a process of its own, so that the pass's own thread no longer
augments each batch between the parts' steps (and holds the GIL meanwhile).

What a pass reads is what the loader itself would give: the child seeds
torch's RNG and the loader's augmentations from the epoch's seed, as
``TrainingRun.start_pass`` does, and draws the order as iterating the loader
draws it. The parent draws that order too (its RNG moves on exactly as if it
had iterated the loader) and takes the child's batches only when both orders
agree. When the child is gone or fails, the parent augments the epoch itself,
from the same seed: the batches are the same either way.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
from typing import Any, Iterator, Protocol

import numpy as np
import torch

POLL_S = 1.0  # how often a parent waiting for a batch checks that the child still runs


class Collating(Protocol):
    """What ``Prefetcher`` needs of a loader: ``loaders.HostLoader``."""

    pin_memory: bool

    def __len__(self) -> int: ...

    def reseed(self, seed: int) -> None: ...

    def order(self) -> list[list[int]]: ...

    def collate(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray]: ...


class _Lost(Exception):
    """The child did not deliver an epoch: the parent augments it."""


class Prefetcher:
    """A loader process that augments ``loader``'s epochs ahead: ``epoch(seed, then=next_seed)``.

    The process starts at the first request (forked: it shares the images) and
    ignores Ctrl-C; it ends at ``close``, or when this process ends.
    """

    def __init__(self, loader: Collating) -> None:
        self.loader = loader
        self._process: Any = None
        self._requests: Any = None
        self._results: Any = None
        self._tickets = 0
        self._ahead: tuple[int, int] | None = None  # (seed, ticket) of the epoch requested ahead
        self.lost: str | None = None  # why the child stopped serving, once it has

    def epoch(self, seed: int, *, then: int | None = None) -> "_Epoch":
        """Epoch ``seed``'s batches, as the loader gives them after ``torch.manual_seed(seed)`` and
        ``reseed(seed)``; once they are read, epoch ``then`` starts in the child."""
        return _Epoch(self, seed, then)

    def close(self) -> None:
        process, self._process, self._ahead = self._process, None, None
        if process is None:
            return
        try:
            self._requests.send(None)
        except (OSError, ValueError):
            pass
        process.join(timeout=POLL_S)
        if process.is_alive():
            process.terminate()
            process.join()
        self._requests.close()
        self._results.close()

    def _request(self, seed: int) -> int | None:
        """Ask the child for epoch ``seed``; its ticket, or None when there is no child."""
        if self.lost is not None:
            return None
        try:
            if self._process is None:
                self._start()
            self._tickets += 1
            self._requests.send((self._tickets, seed))
            return self._tickets
        except (OSError, ValueError) as exc:
            self._lose(f"the loader process could not start or be reached ({exc})")
            return None

    def _start(self) -> None:
        context = multiprocessing.get_context("fork")
        reader, self._requests = context.Pipe(duplex=False)
        self._results = context.Queue()
        self._process = context.Process(target=_produce, args=(self.loader, reader, self._requests, self._results),
                                        name="lrtune-prefetch", daemon=True)
        self._process.start()
        reader.close()

    def _lose(self, why: str) -> None:
        self.lost = why
        self.close()

    def _get(self, ticket: int) -> tuple[str, Any]:
        """The next message of request ``ticket`` (those of older requests are dropped)."""
        while True:
            try:
                got, kind, payload = self._results.get(timeout=POLL_S)
            except queue.Empty:
                if self._process is None or not self._process.is_alive():
                    raise _Lost("the loader process ended") from None
                continue
            except (OSError, EOFError, ValueError) as exc:
                raise _Lost(f"the loader process could not be read ({exc})") from None
            if got == ticket:
                return kind, payload

    def _batches(self, seed: int, order: list[list[int]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        ahead, self._ahead = self._ahead, None
        ticket = ahead[1] if ahead is not None and ahead[0] == seed else self._request(seed)
        done = 0
        try:
            if ticket is None:
                raise _Lost(self.lost or "no loader process")
            kind, payload = self._get(ticket)
            if kind != "order" or payload != order:
                raise _Lost(payload if kind == "error" else "the loader process drew another order")
            for done in range(len(order)):
                kind, payload = self._get(ticket)
                if kind != "batch":
                    raise _Lost(payload)
                yield payload
            done = len(order)
        except _Lost as exc:
            if self.lost is None:
                self._lose(str(exc))
            self.loader.reseed(seed)  # the same augmentation draws, from the start of the epoch
            for i, indices in enumerate(order):
                batch = self.loader.collate(indices)
                if i >= done:
                    yield batch


class _Epoch:
    """One epoch's batches from a ``Prefetcher``: an iterable of ``len(loader)`` (images, labels) tensors."""

    def __init__(self, prefetcher: Prefetcher, seed: int, then: int | None) -> None:
        self.prefetcher, self.seed, self.then = prefetcher, seed, then

    def __len__(self) -> int:
        return len(self.prefetcher.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        prefetcher = self.prefetcher
        pin = prefetcher.loader.pin_memory
        order = prefetcher.loader.order()  # this process's RNG moves on as iterating the loader moves it
        for images, labels in prefetcher._batches(self.seed, order):
            x = torch.from_numpy(images)
            yield (x.pin_memory() if pin else x), torch.from_numpy(labels)
        if self.then is not None:
            ticket = prefetcher._request(self.then)
            prefetcher._ahead = None if ticket is None else (self.then, ticket)


def _produce(loader: Collating, requests: Any, parents_end: Any, results: Any) -> None:
    """The child: for each (ticket, seed) request, the epoch's order, then its batches."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which closes this process
    parents_end.close()  # so that the parent's end closing, or the parent ending, ends ``recv``
    results.cancel_join_thread()  # an exit never waits for a parent that stopped reading
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    while True:
        try:
            request = requests.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        ticket, seed = request
        try:
            torch.manual_seed(seed)
            loader.reseed(seed)
            order = loader.order()
            results.put((ticket, "order", order))
            for indices in order:
                results.put((ticket, "batch", loader.collate(indices)))
        except Exception as exc:  # the parent augments this epoch itself, and says why the child stopped
            results.put((ticket, "error", f"{type(exc).__name__}: {exc}"))
            return
