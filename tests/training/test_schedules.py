import json

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, ReduceLROnPlateau, StepLR

from lrtune.errors import LRTuneError
from lrtune.training.schedules import SCHEDULERS, PlateauSchedule, create_schedule, set_lr

STEPS_PER_EPOCH = 7
EPOCHS = 12
# better, better, flat, within the 1e-4 threshold, worse -> reduce; better, then flat x3 -> reduce
METRICS = [0.2, 0.4, 0.4, 0.40003, 0.3, 0.5, 0.5, 0.5, 0.5, 0.51, 0.6, 0.7]


def dummy_optimizer(lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def torch_lrs(scheduler, optimizer, per_step: bool, metrics: list[float] | None = None) -> list[float]:
    """LR seen by every optimizer step of a full run under a torch scheduler."""
    lrs = []
    for epoch in range(EPOCHS):
        for _ in range(STEPS_PER_EPOCH):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if per_step:
                scheduler.step()
        if metrics is not None:
            scheduler.step(metrics[epoch])
        elif not per_step:
            scheduler.step()
    return lrs


def our_lrs(schedule, metrics: list[float] | None = None, start_epoch: int = 0) -> list[float]:
    lrs = []
    for epoch in range(start_epoch, EPOCHS):
        for i in range(STEPS_PER_EPOCH):
            lrs.append(schedule.lr(epoch * STEPS_PER_EPOCH + i))
        schedule.epoch_end(metrics[epoch] if metrics else 0.0)
    return lrs


def make(name: str, base_lr: float = 0.1, **options):
    return create_schedule(name, base_lr=base_lr, steps_per_epoch=STEPS_PER_EPOCH, epochs=EPOCHS, **options)


@pytest.mark.parametrize(("step_size", "gamma"), [(1, 0.5), (3, 0.1)])
def test_step_matches_torch(step_size, gamma):
    optimizer = dummy_optimizer(0.1)
    expected = torch_lrs(StepLR(optimizer, step_size=step_size, gamma=gamma), optimizer, per_step=False)
    assert our_lrs(make("step", step_size=step_size, step_gamma=gamma)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("eta_min", [0.0, 1e-3])
def test_cosine_matches_torch(eta_min):
    optimizer = dummy_optimizer(0.1)
    scheduler = CosineAnnealingLR(optimizer, T_max=EPOCHS * STEPS_PER_EPOCH, eta_min=eta_min)
    expected = torch_lrs(scheduler, optimizer, per_step=True)
    assert our_lrs(make("cosine", eta_min=eta_min)) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_cosine_stays_at_eta_min_after_the_run():
    schedule = make("cosine", eta_min=1e-3)
    assert schedule.lr(EPOCHS * STEPS_PER_EPOCH + 5) == pytest.approx(1e-3)


# at 1e-7 the second reduction (1e-8 -> 1e-9) is below torch's eps of 1e-8, so it is skipped
@pytest.mark.parametrize(("base_lr", "reductions"), [(0.1, 2), (1e-7, 1)])
def test_plateau_matches_torch(base_lr, reductions):
    optimizer = dummy_optimizer(base_lr)
    scheduler = ReduceLROnPlateau(optimizer, mode="max", factor=0.1, patience=2)
    expected = torch_lrs(scheduler, optimizer, per_step=False, metrics=METRICS)
    schedule = make("plateau", base_lr=base_lr, factor=0.1, patience=2)
    assert our_lrs(schedule, METRICS) == pytest.approx(expected, rel=1e-12)
    assert schedule.n_reductions == reductions


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_warmup_ramps_linearly_then_hands_over(name):
    plain, warm = make(name), make(name, warmup_steps=10)
    for step in range(10):
        assert warm.lr(step) == pytest.approx(plain.lr(step) * (step + 1) / 10)
    assert warm.lr(9) == pytest.approx(plain.lr(9))
    assert [warm.lr(s) for s in range(10, 40)] == [plain.lr(s) for s in range(10, 40)]


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_state_dict_round_trip_continues_the_same(name):
    first = make(name, patience=1)
    for epoch in range(5):
        first.epoch_end(METRICS[epoch])
    state = json.loads(json.dumps(first.state_dict(), allow_nan=False))

    resumed = make(name, patience=1)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == first.state_dict()
    assert our_lrs(resumed, METRICS, start_epoch=5) == our_lrs(first, METRICS, start_epoch=5)


def test_plateau_state_holds_its_counters():
    schedule = make("plateau", patience=2)
    assert schedule.state_dict() == {"best": None, "num_bad_epochs": 0, "n_reductions": 0}
    for metric in METRICS[:5]:
        schedule.epoch_end(metric)
    assert schedule.state_dict() == {"best": 0.4, "num_bad_epochs": 0, "n_reductions": 1}
    assert schedule.lr(100) == pytest.approx(0.01)


def test_set_lr_sets_every_param_group():
    first, second = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [first]}, {"params": [second], "lr": 1.0}], lr=0.1)
    set_lr(optimizer, 0.02)
    assert [group["lr"] for group in optimizer.param_groups] == [0.02, 0.02]


def test_create_schedule_passes_only_accepted_options():
    assert isinstance(make("plateau", step_gamma=0.5, step_size=3, eta_min=0.1), PlateauSchedule)
    assert make("step", step_size=3, step_gamma=0.5).lr(3 * STEPS_PER_EPOCH) == pytest.approx(0.05)


def test_unknown_scheduler_lists_valid_names():
    with pytest.raises(LRTuneError, match=r"unknown scheduler 'linear' \(valid: step, cosine, plateau\)"):
        make("linear")


@pytest.mark.parametrize(
    ("name", "options", "culprit"),
    [
        ("step", {"steps_per_epoch": 0}, "steps_per_epoch"),
        ("cosine", {"epochs": 0}, "epochs"),
        ("cosine", {"base_lr": 0.0}, "base_lr"),
        ("cosine", {"warmup_steps": -1}, "warmup_steps"),
        ("step", {"step_size": 0}, "step_size"),
        ("step", {"step_gamma": 0.0}, "step_gamma"),
        ("cosine", {"eta_min": -1.0}, "eta_min"),
        ("plateau", {"factor": 1.0}, "factor"),
        ("plateau", {"factor": 0.0}, "factor"),
        ("plateau", {"patience": -1}, "patience"),
    ],
)
def test_invalid_argument_is_named(name, options, culprit):
    arguments = {"base_lr": 0.1, "steps_per_epoch": STEPS_PER_EPOCH, "epochs": EPOCHS} | options
    with pytest.raises(LRTuneError, match=rf"^{culprit} must be"):
        create_schedule(name, **arguments)
