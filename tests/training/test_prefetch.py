"""A loader process augments a fused group's next epoch: the same batches, bit for bit, whatever happens to it."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from lrtune.config import Config
from lrtune.training.run import load_training_data, make_loader


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return load_training_data(Config(studies_dir=str(tmp_path_factory.mktemp("s")), image_size=8))


def _loader(digits, **changes):
    cfg = Config(**{"augment": "cpu", "batch_size": 64, "image_size": 8, "affine": 0.8, "color": 0.5, **changes})
    return make_loader(cfg, digits, torch.device("cpu"), cfg.augment)


def _own(loader, seed):
    """Epoch ``seed`` as the loader gives it after a pass's seeding, and torch's RNG state afterwards."""
    torch.manual_seed(seed)
    loader.reseed(seed)
    return list(loader), torch.get_rng_state()


def _prefetched(loader, prefetcher, seed, then=None):
    torch.manual_seed(seed)
    loader.reseed(seed)
    return list(prefetcher.epoch(seed, then=then)), torch.get_rng_state()


def _same(a, b):
    assert len(a) == len(b) > 0
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.dtype == xb.dtype == torch.uint8 and ya.dtype == yb.dtype == torch.int64
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("balance", ["none", "sampler", "oversample"])
def test_each_epoch_is_the_loaders_own_and_leaves_torchs_rng_where_the_loader_leaves_it(digits, balance):
    loader = _loader(digits, balance=balance)
    prefetcher = loader.ahead()
    try:
        for seed in (5, 6, 7):  # 6 and 7 were requested ahead, while the epoch before was read
            batches, state = _own(loader, seed)
            got, got_state = _prefetched(loader, prefetcher, seed, then=seed + 1)
            _same(batches, got)
            assert torch.equal(state, got_state)
        assert prefetcher.lost is None
    finally:
        prefetcher.close()


def test_an_epoch_other_than_the_one_requested_ahead_is_requested_then(digits):
    loader = _loader(digits)
    prefetcher = loader.ahead()
    try:
        _prefetched(loader, prefetcher, 1, then=2)
        batches, _ = _own(loader, 9)
        got, _ = _prefetched(loader, prefetcher, 9)
        _same(batches, got)
        assert prefetcher.lost is None
    finally:
        prefetcher.close()


def test_a_killed_loader_process_costs_nothing_the_epoch_is_augmented_here(digits):
    loader = _loader(digits)
    prefetcher = loader.ahead()
    _prefetched(loader, prefetcher, 3, then=4)
    prefetcher._process.kill()
    for seed in (4, 5):
        batches, _ = _own(loader, seed)
        got, _ = _prefetched(loader, prefetcher, seed, then=seed + 1)
        _same(batches, got)
    assert prefetcher.lost and prefetcher._process is None


def test_the_loader_process_ignores_ctrl_c_and_ends_at_close(digits):
    loader = _loader(digits)
    prefetcher = loader.ahead()
    _prefetched(loader, prefetcher, 3)
    process = prefetcher._process
    os.kill(process.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    batches, _ = _own(loader, 4)
    got, _ = _prefetched(loader, prefetcher, 4)
    _same(batches, got)
    assert prefetcher.lost is None
    prefetcher.close()
    assert not process.is_alive() and process.exitcode == 0


def test_only_a_loader_that_augments_here_in_this_process_prefetches(digits):
    cpu = _loader(digits).ahead()
    assert cpu is not None and cpu._process is None  # the process starts at the first request
    assert _loader(digits, num_workers=1).ahead() is None  # its workers augment already
    assert _loader(digits, augment="device").ahead() is None  # augmented on the device
