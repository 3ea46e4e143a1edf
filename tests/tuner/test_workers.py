"""Which device each local worker trains on."""

from lrtune.tuner.workers import worker_devices


def test_workers_go_round_the_gpus_and_share_them_when_there_are_more():
    assert worker_devices("auto", 4, 2) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert worker_devices("cuda", 3, 4) == ["cuda:0", "cuda:1", "cuda:2"]


def test_one_gpu_or_a_named_device_is_shared_by_every_worker():
    assert worker_devices("auto", 4, 1) == ["auto"] * 4
    assert worker_devices("cuda:1", 2, 4) == ["cuda:1", "cuda:1"]
    assert worker_devices("cpu", 2, 0) == ["cpu", "cpu"]
