import math
import random

import numpy as np
import pytest
import torch

from lrtune.config import Config
from lrtune.errors import ConfigError, DataError, RangeTestError
from lrtune.training.loop import AmpPolicy
from lrtune.training.range_test import (
    MIN_STEPS,
    RangeTestResult,
    TooFewImages,
    choose,
    range_test,
    smooth,
    suggest_all,
    sweep_lr,
    valley_index,
)
from lrtune.training.run import Hyperparams, TrainingRun, load_training_data

CPU = AmpPolicy(torch.device("cpu"))




@pytest.fixture(scope="module", params=["cpu", "device"])
def cfg(tmp_path_factory, request):
    """Each test runs on both augmentation paths."""
    return Config(batch_size=16, augment=request.param, studies_dir=str(tmp_path_factory.mktemp("studies")))


@pytest.fixture(scope="module")
def data(cfg):
    return load_training_data(cfg)


def make_run(cfg, data, *, accum=1, loss="ce", batch_size=None):
    if batch_size is not None:
        cfg = Config(**{**cfg.__dict__, "batch_size": batch_size})
    return TrainingRun(cfg, Hyperparams(lr=1e-3, scheduler="cosine", loss=loss, accum=accum), data=data, amp=CPU, seed=0)


def lr_per_forward(run):
    """The LR set on the optimizer when each micro-batch goes through the model."""
    seen = []
    run.model.register_forward_pre_hook(lambda module, args: seen.append(run.optimizer.param_groups[0]["lr"]))
    return seen


def test_one_lr_per_optimizer_step_shared_by_the_micro_batches_of_an_accumulation_group(cfg, data):
    run = make_run(cfg, data, accum=3)
    seen = lr_per_forward(run)
    result = range_test(run, start=1e-5, end=1e-2, steps=12, diverge=1e9)

    expected = [sweep_lr(1e-5, 1e-2, 12, i) for i in range(12)]
    assert result.lrs == pytest.approx(expected)
    assert result.lrs[0] == pytest.approx(1e-5) and result.lrs[-1] == pytest.approx(1e-2)
    assert seen == pytest.approx([lr for lr in expected for _ in range(3)])
    assert result.setup == {"loss": "ce", "accum": 3, "batch_size": 16}


def test_steps_the_amp_scaler_skips_do_not_advance_the_lr(cfg, data):
    run = make_run(cfg, data)
    run.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    backward_calls = []

    def overflow_first_three(grad):
        backward_calls.append(1)
        return grad * math.inf if len(backward_calls) <= 3 else grad

    next(run.model.parameters()).register_hook(overflow_first_three)
    seen = lr_per_forward(run)
    result = range_test(run, start=1e-5, end=1e-2, steps=10, diverge=1e9)

    expected = [sweep_lr(1e-5, 1e-2, 10, i) for i in range(10)]
    assert result.skipped == 3
    assert result.lrs == pytest.approx(expected)
    assert seen == pytest.approx([expected[0]] * 3 + expected)


def snapshot(run):
    return {
        "model": {k: v.clone() for k, v in run.model.state_dict().items()},
        "optimizer": repr(run.optimizer.state_dict()),
        "python": random.getstate(),
        "numpy": np.random.get_state()[1].copy(),
        "torch": torch.get_rng_state().clone(),
        "augment": run.loader.rng_state(),
    }


def assert_same(before, after):
    assert before["model"].keys() == after["model"].keys()
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])
    assert before["optimizer"] == after["optimizer"]
    assert before["python"] == after["python"]
    assert np.array_equal(before["numpy"], after["numpy"])
    assert torch.equal(before["torch"], after["torch"])
    assert before["augment"] == after["augment"]


def test_weights_optimizer_scaler_augmentation_and_rngs_come_back(cfg, data):
    run = make_run(cfg, data)
    run.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaler_before = run.scaler.state_dict()
    before = snapshot(run)
    result = range_test(run, start=1e-4, end=1.0, steps=12)

    assert len(result.lrs) > 0
    assert_same(before, snapshot(run))
    assert run.scaler.state_dict() == scaler_before
    assert all(p.grad is None for p in run.model.parameters())


def test_state_comes_back_when_the_sweep_fails_midway(cfg, data):
    run = make_run(cfg, data)
    before = snapshot(run)
    calls = []
    loss_fn = run.loss_fn

    def failing(logits, targets):
        calls.append(1)
        if len(calls) > 4:
            raise RuntimeError("boom")
        return loss_fn(logits, targets)

    run.loss_fn = failing
    with pytest.raises(RuntimeError, match="boom"):
        range_test(run, start=1e-4, end=1.0, steps=12)
    assert_same(before, snapshot(run))


def test_a_flat_curve_gets_no_suggestion_and_says_why(cfg, data):
    result = range_test(make_run(cfg, data), start=1e-10, end=1e-9, steps=12)
    assert result.suggestion is None
    assert "no clear descent" in result.rule


def test_a_clear_descent_is_suggested_and_the_rule_is_named():
    lrs = [sweep_lr(1e-6, 10, 100, i) for i in range(100)]
    # Loss falls fastest around 1e-3 (log10 -3), bottoms out near 1e-1, then blows up.
    losses = [2.3 - 1.8 / (1 + math.exp(-3 * (math.log10(lr) + 3))) + 5 * max(0, math.log10(lr) + 1) ** 2 for lr in lrs]
    smoothed = smooth(losses, 0.0)
    suggestions = suggest_all(lrs, smoothed)
    assert suggestions["steepest"] == pytest.approx(1e-3, rel=0.5)
    assert suggestions["min/10"] < 1e-1
    lr, rule = choose(lrs, losses, smoothed, suggestions)
    assert lr == sorted(v for v in suggestions.values())[1]
    assert rule.split()[0] in suggestions


def test_a_noisy_curve_gets_no_suggestion():
    rng = random.Random(0)
    lrs = [sweep_lr(1e-6, 10, 100, i) for i in range(100)]
    losses = [2.3 - 0.5 * i / 100 + rng.uniform(-2, 2) for i in range(100)]
    smoothed = smooth(losses)
    lr, rule = choose(lrs, losses, smoothed, suggest_all(lrs, smoothed))
    assert lr is None
    assert "too noisy" in rule


def test_smoothing_is_a_bias_corrected_ema():
    assert smooth([2.0, 2.0, 2.0], 0.98) == pytest.approx([2.0, 2.0, 2.0])
    # beta 0.5: averages 0.5 and 1.75, divided by 1 - 0.5 and 1 - 0.25.
    assert smooth([1.0, 3.0], 0.5) == pytest.approx([1.0, 1.75 / 0.75])


def test_valley_is_fastai_s():
    # The longest decreasing run ends at index 8 and is 8 long, so fastai's start is 8 - 8 = 0
    # and its pick 0 + int(8 / 3) + int(8 / 3 / 2) = 3.
    assert valley_index([5, 6, 5, 4, 3, 2, 1.5, 1.2, 1.0, 3, 4]) == 3


def test_the_record_is_json_safe_and_round_trips(cfg, data):
    import json

    result = range_test(make_run(cfg, data), start=1e-4, end=1.0, steps=MIN_STEPS)
    record = json.loads(json.dumps(result.to_dict()))
    again = RangeTestResult.from_dict(record)
    assert again.lrs == pytest.approx(result.lrs, rel=1e-5)
    assert again.rule == result.rule and again.stop == result.stop


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"start": 1.0, "end": 0.1}, ConfigError, "must increase"),
        ({"start": 0.0, "end": 1.0}, ConfigError, "must increase"),
        ({"start": 1e-4, "end": 1.0, "steps": MIN_STEPS - 1}, ConfigError, "too few"),
    ],
)
def test_bad_ranges_and_step_counts_are_one_line_errors(cfg, data, kwargs, error, message):
    with pytest.raises(error, match=message) as info:
        range_test(make_run(cfg, data), **kwargs)
    assert "\n" not in str(info.value)


def test_a_training_set_smaller_than_one_batch_is_a_data_error(cfg, data):
    run = make_run(cfg, data, batch_size=len(data.train_idx) + 1)
    with pytest.raises(DataError, match=f"has {len(data.train_idx)} images, fewer than one batch") as info:
        range_test(run, start=1e-4, end=1.0, steps=MIN_STEPS)
    assert isinstance(info.value, TooFewImages)


def test_a_loss_non_finite_from_the_first_step_is_an_error(cfg, data):
    run = make_run(cfg, data)
    run.loss_fn = lambda logits, targets: logits.sum() * math.nan
    before = snapshot(run)
    with pytest.raises(RangeTestError, match="non-finite .* from the first step"):
        range_test(run, start=1e-4, end=1.0, steps=MIN_STEPS)
    assert_same(before, snapshot(run))


def test_steepest_descent_is_within_3x_of_torch_lr_finder_on_the_same_model_data_and_steps(cfg, data):
    torch_lr_finder = pytest.importorskip("torch_lr_finder")
    import matplotlib

    matplotlib.use("Agg")
    from lrtune.training.loaders import to_model_input

    start, end, steps = 1e-6, 10.0, 100
    ours = range_test(make_run(cfg, data), start=start, end=end, steps=steps)

    run = make_run(cfg, data)  # the same seed: the same initial weights, the same batches

    class Normalized(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, images):
            return self.model(to_model_input(images, "cpu"))

    torch.manual_seed(0)
    finder = torch_lr_finder.LRFinder(Normalized(run.model), run.optimizer, run.loss_fn, device="cpu")
    finder.range_test(torch_lr_finder.TrainDataLoaderIter(run.loader), start_lr=start, end_lr=end, num_iter=steps)
    _, theirs = finder.plot(suggest_lr=True)

    assert ours.suggestions["steepest"] is not None
    ratio = ours.suggestions["steepest"] / theirs
    print(f"steepest: ours {ours.suggestions['steepest']:.3g}, torch-lr-finder {theirs:.3g}, ratio {ratio:.2f}")
    assert 1 / 3 <= ratio <= 3, (ours.suggestions["steepest"], theirs)
