import pytest
import torch

from lrtune.errors import LRTuneError
from lrtune.training.optimizer import FUSED_DEVICES, create_optimizer


def test_unknown_optimizer_lists_valid_names():
    with pytest.raises(LRTuneError, match=r"unknown optimizer 'adam' \(valid: adamw, sgd\)"):
        create_optimizer(torch.nn.Linear(2, 2), name="adam", lr=0.1, weight_decay=0.0)


@pytest.mark.skipif(not FUSED_DEVICES, reason="fused optimizers are used from torch 2.8")
@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_the_fused_optimizer_makes_the_default_optimizers_update(name):
    torch.manual_seed(0)
    ours = torch.nn.Linear(6, 3)
    reference = torch.nn.Linear(6, 3)
    reference.load_state_dict(ours.state_dict())
    initial = ours.weight.detach().clone()
    opt = create_optimizer(ours, name=name, lr=0.05, weight_decay=0.01, momentum=0.9)
    assert opt.defaults["fused"]
    if name == "sgd":
        ref_opt = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)
    else:
        ref_opt = torch.optim.AdamW(reference.parameters(), lr=0.05, weight_decay=0.01)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for _ in range(5):
        for model, optimizer in ((ours, opt), (reference, ref_opt)):
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    for a, b in zip(ours.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ours.weight, initial)


# --- LR-free baselines -----------------------------------------------------------------------


def test_an_lr_free_trial_takes_its_authors_recipe_and_nothing_else():
    from lrtune.training.optimizer import LR_FREE
    from lrtune.training.run import Hyperparams

    prodigy = Hyperparams.from_dict({"optimizer": "prodigy"})
    assert (prodigy.lr, prodigy.scheduler, prodigy.loss, prodigy.accum) == (1.0, "cosine", "ce", 1)
    free = Hyperparams.from_dict({"optimizer": "schedulefree"})
    assert (free.lr, free.scheduler) == (LR_FREE["schedulefree"].lr, "constant")
    assert Hyperparams.from_dict({"lr": 0.01, "scheduler": "step", "loss": "ce", "accum": 2}).to_dict().get(
        "optimizer") is None
    optimizer = create_optimizer(torch.nn.Linear(2, 2), name="schedulefree", lr=0.0025, weight_decay=0.01,
                                 total_steps=200)
    assert optimizer.param_groups[0]["warmup_steps"] == 10  # 5% of the run


def test_an_lr_free_baseline_without_its_package_is_one_line_naming_the_extra(monkeypatch):
    import importlib

    from lrtune.training.optimizer import check_lr_free

    real = importlib.import_module

    def missing(name, *args, **kwargs):
        if name == "prodigyopt":
            raise ImportError("No module named 'prodigyopt'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(LRTuneError) as info:
        check_lr_free(["schedulefree", "prodigy"])
    assert str(info.value) == "the prodigy baseline needs the prodigyopt package: pip install -e '.[baselines]'"
    with pytest.raises(LRTuneError, match=r"unknown baseline 'lion' \(valid: prodigy, schedulefree\)"):
        check_lr_free(["lion"])


@pytest.mark.parametrize("augment", ["cpu", "device"])
def test_schedule_free_evaluates_checkpoints_and_keeps_its_averaged_weights(tmp_path, augment):
    """The recorded validation value is the averaged weights' one; the training weights score differently."""
    from lrtune.config import Config
    from lrtune.training.loaders import iter_eval_batches
    from lrtune.training.loop import AmpPolicy, evaluate
    from lrtune.training.run import Hyperparams, TrainingRun, load_training_data

    cfg = Config(studies_dir=str(tmp_path), image_size=8, batch_size=64, epochs=3, augment=augment)
    data = load_training_data(cfg)
    run = TrainingRun(cfg, Hyperparams.from_dict({"optimizer": "schedulefree"}), data=data,
                      amp=AmpPolicy(torch.device("cpu")), seed=1)
    run.train_epoch(1)
    outcome = run.train_epoch(2)
    assert run.optimizer.param_groups[0]["train_mode"] is False  # what the epoch leaves: the averaged weights

    def score() -> float:
        return evaluate(run.model, iter_eval_batches(data.imageset, data.val_idx, 256), n_classes=10,
                        amp=run.amp).macro_f1

    averaged = run.model.state_dict()["conv1.0.weight"].clone()
    assert outcome.value == pytest.approx(score())
    run.optimizer.train()
    assert not torch.equal(run.model.state_dict()["conv1.0.weight"], averaged)
    assert outcome.value != pytest.approx(score())  # the training weights are not what was scored
