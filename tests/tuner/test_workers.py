"""Which device each local worker trains on."""

from lrtune.tuner.workers import worker_devices


def test_workers_go_round_the_gpus_and_share_them_when_there_are_more():
    assert worker_devices("auto", 4, 2) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert worker_devices("cuda", 3, 4) == ["cuda:0", "cuda:1", "cuda:2"]


def test_one_gpu_or_a_named_device_is_shared_by_every_worker():
    assert worker_devices("auto", 4, 1) == ["auto"] * 4
    assert worker_devices("cuda:1", 2, 4) == ["cuda:1", "cuda:1"]
    assert worker_devices("cpu", 2, 0) == ["cpu", "cpu"]


def test_auto_is_one_worker_off_cuda():
    from lrtune.tuner.workers import auto_workers

    assert auto_workers(device_type="cpu", free_bytes=None, peak_bytes=0, step_s=0.0)[0] == 1


def test_auto_on_cuda_runs_as_many_as_the_speed_and_the_memory_allow():
    """Faked CUDA readings: a launch-bound small model and a memory-heavy large one."""
    from lrtune.tuner.workers import AUTO_MAX, auto_workers

    gib = 2**30
    small, why = auto_workers(device_type="cuda", free_bytes=140 * gib, peak_bytes=gib // 2, step_s=0.012)
    assert small == 5 and "12.0 ms" in why  # ceil(50 ms / 12 ms): the speed decides
    assert auto_workers(device_type="cuda", free_bytes=140 * gib, peak_bytes=gib // 2, step_s=0.001)[0] == AUTO_MAX
    large, why = auto_workers(device_type="cuda", free_bytes=20 * gib, peak_bytes=9 * gib, step_s=0.004)
    assert large == 1 and "1 for the memory" in why  # 20 GiB * 0.9 // (9 GiB * 1.2)
    assert auto_workers(device_type="cuda", free_bytes=140 * gib, peak_bytes=gib, step_s=0.2)[0] == 1
    assert auto_workers(device_type="cuda", free_bytes=140 * gib, peak_bytes=gib, step_s=0.02, n_gpus=2)[0] == 6
