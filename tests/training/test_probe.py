"""The short probe of a training step that --workers auto reads."""

import torch

from lrtune.config import Config
from lrtune.training.loop import AmpPolicy
from lrtune.training.probe import probe_step, probe_threads
from lrtune.training.run import Hyperparams, TrainingRun, load_training_data


def test_the_probe_times_a_step_and_reads_no_memory_off_cuda(tmp_path):
    cfg = Config(studies_dir=str(tmp_path), image_size=8, batch_size=32)
    run = TrainingRun(cfg, Hyperparams(lr=1e-3, scheduler="cosine", loss="ce", accum=1),
                      data=load_training_data(cfg), amp=AmpPolicy(torch.device("cpu")), seed=0)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    step_s, peak = probe_step(run, steps=4)
    assert step_s > 0 and peak == 0
    assert any(not torch.equal(v, run.model.state_dict()[k]) for k, v in before.items())  # it trained: a fresh run


def test_the_thread_probe_measures_every_count_and_leaves_the_count_to_its_caller(tmp_path):
    cfg = Config(studies_dir=str(tmp_path), image_size=8, batch_size=32)
    run = TrainingRun(cfg, Hyperparams(lr=1e-3, scheduler="cosine", loss="ce", accum=1),
                      data=load_training_data(cfg), amp=AmpPolicy(torch.device("cpu")), seed=0)
    applied = []
    threads = torch.get_num_threads()
    rates = probe_threads(run, [2, 1], apply=applied.append)
    assert sorted(rates) == [1, 2] and all(rate > 0 for rate in rates.values())
    assert applied[0] == 1 and set(applied) == {1, 2}  # the fewest first; counts far slower are not measured again
    assert torch.get_num_threads() == threads  # only through ``apply``
