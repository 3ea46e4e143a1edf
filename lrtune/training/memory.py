"""Device memory before a trial starts: several trials may share one GPU."""

from __future__ import annotations

import time
from typing import Callable

import torch

MEMORY_MARGIN = 1.2  # a trial waits for its last peak plus this share of headroom
MEMORY_WAIT_S = 120.0  # then starts anyway: an out-of-memory error fails that trial only
MEMORY_POLL_S = 1.0


def free_bytes(device: torch.device) -> int | None:
    """Memory this process may use on a CUDA device: what is free plus what its allocator holds; None off CUDA."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.mem_get_info(device)[0]) + int(torch.cuda.memory_reserved(device))


def peak_bytes(device: torch.device) -> int:
    """The most memory this process has reserved on ``device`` since the last call (0 off CUDA)."""
    if device.type != "cuda":
        return 0
    peak = int(torch.cuda.max_memory_reserved(device))
    torch.cuda.reset_peak_memory_stats(device)
    return peak


def wait_for_memory(
    need: int,
    free: Callable[[], int | None],
    *,
    timeout: float | None = None,
    poll: float | None = None,
    sleep: Callable[[float], None] | None = None,
) -> bool:
    """Wait until ``free()`` reports at least ``need`` bytes, for at most ``timeout`` seconds.

    True when there is room (or nothing to check); False when the wait ran out.
    ``timeout`` and ``poll`` default to ``MEMORY_WAIT_S`` and ``MEMORY_POLL_S``.
    """
    timeout = MEMORY_WAIT_S if timeout is None else timeout
    poll = MEMORY_POLL_S if poll is None else poll
    sleep = time.sleep if sleep is None else sleep
    waited = 0.0
    while True:
        available = free()
        if available is None or need <= 0 or available >= need:
            return True
        if waited >= timeout:
            return False
        sleep(poll)
        waited += poll
