"""The CPU threads of a run: the cores a process may use, the choice among counts, and the guard against a
collapse beside a busy process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lrtune.training import threads
from lrtune.training.threads import FALL, RETRY_S, ThreadGuard, choose_threads


def _cgroup(tmp_path: Path, proc_line: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    proc = tmp_path / "proc_cgroup"
    proc.write_text(proc_line + "\n")
    return root, proc


def test_a_v2_quota_is_read_from_the_process_cgroup_and_its_parents(tmp_path):
    root, proc = _cgroup(tmp_path, "0::/job/step", {"job/cpu.max": "150000 100000\n", "job/step/cpu.max": "max 100000\n"})
    assert threads.cgroup_quota(root, proc) == 1.5


def test_a_v1_quota_is_read_where_the_cpu_controller_is_mounted(tmp_path):
    files = {"cpu,cpuacct/cpu.cfs_quota_us": "100000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}
    root, proc = _cgroup(tmp_path, "4:cpu,cpuacct:/", files)
    assert threads.cgroup_quota(root, proc) == 1.0
    files = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}
    root, proc = _cgroup(tmp_path / "none", "4:cpu,cpuacct:/", files)
    assert threads.cgroup_quota(root, proc) is None


def test_no_cgroup_files_means_no_quota(tmp_path):
    assert threads.cgroup_quota(tmp_path / "missing", tmp_path / "missing_proc") is None


def test_the_available_cores_follow_the_affinity_and_the_quota(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "cgroup_quota", lambda: None)
    assert threads.available_cores() == (4, "4 cores available")
    monkeypatch.setattr(threads, "cgroup_quota", lambda: 1.5)
    count, why = threads.available_cores()
    assert count == 1 and why == "1 cores available (affinity 4, CPU quota 1.5)"
    monkeypatch.setattr(threads, "cgroup_quota", lambda: 0.5)
    assert threads.available_cores()[0] == 1  # never fewer than one


@pytest.mark.parametrize("cores, workers, loaders, budget", [
    (2, 1, 0, 2), (2, 2, 0, 1), (2, 1, 2, 1), (16, 4, 1, 3), (16, 1, 0, 16), (1, 3, 2, 1),
])
def test_the_budget_shares_the_cores_among_workers_and_loader_processes(cores, workers, loaders, budget):
    assert threads.thread_budget(cores, workers=workers, loader_workers=loaders) == budget


def test_the_candidates_halve_down_to_one():
    assert threads.candidates(1) == [1]
    assert threads.candidates(2) == [2, 1]
    assert threads.candidates(6) == [6, 3, 1]
    assert threads.candidates(16) == [16, 8, 4, 2, 1]


def test_the_fewest_threads_within_the_tie_win():
    assert threads.pick({2: 2000.0, 1: 1500.0}) == 2
    assert threads.pick({2: 2000.0, 1: 1960.0}) == 1
    assert threads.pick({2: 16.0, 1: 3186.0}) == 1  # beside a busy process


def test_a_count_asked_for_is_used_without_measuring():
    def measure(counts):
        raise AssertionError("measured")

    choice = choose_threads(3, workers=1, loader_workers=0, device_type="cpu", measure=measure)
    assert choice.threads == 3 and choice.reason == "as asked (--threads)"


def test_auto_measures_the_candidates_of_its_share_and_says_what_it_saw():
    seen = []

    def measure(counts):
        seen.append(counts)
        return {4: 100.0, 2: 900.0, 1: 700.0}

    choice = choose_threads(0, workers=2, loader_workers=0, device_type="cpu", measure=measure,
                            cores=(8, "8 cores available"))
    assert seen == [[4, 2, 1]] and choice.threads == 2
    assert choice.reason == "8 cores available, shared by 2 local workers; measured images/s: 100 at 4, 900 at 2, 700 at 1"


def test_auto_with_one_candidate_or_on_a_gpu_takes_the_budget_unmeasured():
    def measure(counts):
        raise AssertionError("measured")

    one = choose_threads(0, workers=2, loader_workers=0, device_type="cpu", measure=measure, cores=(2, "2 cores"))
    assert one.threads == 1 and one.reason == "2 cores, shared by 2 local workers"
    gpu = choose_threads(0, workers=1, loader_workers=2, device_type="cuda", measure=measure, cores=(8, "8 cores"))
    assert gpu.threads == 6 and gpu.reason == "8 cores, shared by 2 loader processes each"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _guard(start: int = 2) -> tuple[ThreadGuard, list[int], list[str], Clock]:
    applied, said, clock = [], [], Clock()
    guard = ThreadGuard(start, say=said.append, clock=clock, apply=applied.append)
    return guard, applied, said, clock


def test_a_collapsed_epoch_halves_the_threads_and_says_so_once():
    guard, applied, said, clock = _guard(4)
    guard.observe(2000, 1.0)
    guard.observe(2000 * FALL * 1.1, 1.0)  # slower, but not a collapse
    assert guard.threads == 4 and applied == []
    guard.observe(100, 1.0)
    assert guard.threads == 2 and applied == [2]
    assert said == ["training fell to 100 images/s from 2,000 at 4 threads: another process is using the cores; "
                    "2 threads from the next epoch"]
    guard.observe(1500, 1.0)
    guard.observe(30, 1.0)
    assert guard.threads == 1 and applied == [2, 1] and len(said) == 1
    guard.observe(5, 1.0)
    assert guard.threads == 1  # one thread is the floor


def test_a_fused_pass_is_compared_with_passes_of_as_many_slots():
    guard, applied, said, clock = _guard(2)
    guard.observe(4000, 1.0, slots=8)
    guard.observe(1000, 1.0, slots=1)  # one slot left: slower than eight, not a collapse
    assert guard.threads == 2 and applied == [] and said == []
    guard.observe(300, 1.0, slots=1)
    assert guard.threads == 1 and said == ["training fell to 300 images/s from 1,000 at 2 threads: another process "
                                           "is using the cores; 1 thread from the next epoch"]


def test_a_choice_keeps_the_budget_it_chose_within():
    measured = choose_threads(0, workers=1, loader_workers=0, device_type="cpu",
                              measure=lambda counts: {4: 1.0, 2: 9.0, 1: 1.0}, cores=(4, "4 cores"))
    assert measured.threads == 2 and measured.budget == 4
    assert choose_threads(0, workers=2, loader_workers=0, device_type="cpu", cores=(2, "2 cores")).budget == 1
    assert choose_threads(3, workers=1, loader_workers=0, device_type="cpu").budget == 0


def test_after_a_fall_the_higher_count_is_tried_again_and_kept_when_it_is_faster():
    guard, applied, said, clock = _guard(2)
    guard.observe(2000, 1.0)
    guard.observe(50, 1.0)
    guard.observe(1500, 1.0)
    clock.now = RETRY_S - 1
    guard.observe(1500, 1.0)
    assert guard.threads == 1
    clock.now = RETRY_S + 1
    guard.observe(1500, 1.0)  # the wait is over: the next epoch runs at two
    assert guard.threads == 2 and applied == [1, 2]
    guard.observe(1900, 1.0)  # the other process is gone
    assert guard.threads == 2 and applied == [1, 2]
    clock.now = 10 * RETRY_S
    guard.observe(1950, 1.0)
    assert guard.threads == 2 and len(said) == 1


def test_a_retry_that_is_not_faster_goes_back_down_and_waits_twice_as_long():
    guard, applied, said, clock = _guard(2)
    guard.observe(2000, 1.0)
    guard.observe(50, 1.0)
    guard.observe(1500, 1.0)
    clock.now = RETRY_S + 1
    guard.observe(1500, 1.0)
    guard.observe(60, 1.0)  # still busy
    assert guard.threads == 1 and applied == [1, 2, 1]
    clock.now += RETRY_S + 1
    guard.observe(1500, 1.0)
    assert guard.threads == 1  # it now waits 2 * RETRY_S
    clock.now += RETRY_S
    guard.observe(1500, 1.0)
    assert guard.threads == 2 and len(said) == 1


def test_a_fixed_count_is_never_changed():
    applied = []
    guard = ThreadGuard(2, fixed=True, apply=applied.append)
    guard.start()
    for images in (2000, 10, 10):
        guard.observe(images, 1.0)
    assert guard.threads == 2 and applied == [2]


def test_kept_threads_restores_the_callers_counts():
    import cv2

    before, before_cv2 = torch.get_num_threads(), cv2.getNumThreads()
    with threads.kept_threads():
        threads.apply_threads(1)
        assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
    assert torch.get_num_threads() == before and cv2.getNumThreads() == before_cv2
    with pytest.raises(RuntimeError), threads.kept_threads():
        threads.apply_threads(1)
        raise RuntimeError
    assert torch.get_num_threads() == before


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this platform")
def test_the_affinity_is_what_a_process_may_use(monkeypatch):
    monkeypatch.setattr(threads, "cgroup_quota", lambda: None)
    mine = os.sched_getaffinity(0)
    one = {min(mine)}
    try:
        os.sched_setaffinity(0, one)
        assert threads.available_cores()[0] == 1
    finally:
        os.sched_setaffinity(0, mine)
