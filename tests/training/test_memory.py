"""Waiting for device memory before a trial starts."""

import torch

from lrtune.training import memory


def test_a_trial_waits_until_there_is_room_then_starts():
    free = iter([10, 50, 120, 500])
    slept = []
    assert memory.wait_for_memory(100, lambda: next(free), timeout=10, poll=1, sleep=slept.append)
    assert slept == [1, 1]


def test_the_wait_gives_up_after_its_timeout():
    slept = []
    assert not memory.wait_for_memory(100, lambda: 10, timeout=3, poll=1, sleep=slept.append)
    assert slept == [1, 1, 1]


def test_nothing_to_wait_for_on_the_cpu_or_before_a_first_trial():
    assert memory.free_bytes(torch.device("cpu")) is None and memory.peak_bytes(torch.device("cpu")) == 0
    assert memory.wait_for_memory(100, lambda: None, sleep=lambda s: 1 / 0)
    assert memory.wait_for_memory(0, lambda: 10, sleep=lambda s: 1 / 0)
