import optuna
import pytest

from lrtune.config import Config
from lrtune.errors import LRTuneError
from lrtune.tuner.space import BASELINE, baseline_params, check_space, suggest


def sample(cfg, n=40, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((suggest(trial, cfg), trial.params))
        study.tell(trial, 0.0)
    return out


def test_default_space_covers_every_dimension():
    cfg = Config()
    drawn = sample(cfg, 80)
    assert {p.scheduler for p, _ in drawn} == {"step", "cosine", "plateau"}
    assert {p.loss for p, _ in drawn} == {"ce", "focal", "label_smoothing", "f1"}
    assert {p.accum for p, _ in drawn} == {1, 2, 4, 8}
    assert all(cfg.lr_min <= p.lr <= cfg.lr_max for p, _ in drawn)


def test_conditional_parameters_only_where_they_apply():
    for params, raw in sample(Config(), 60):
        assert ("step_size" in raw) == (params.scheduler == "step")
        assert ("plateau_factor" in raw) == (params.scheduler == "plateau")
        assert ("focal_gamma" in raw) == (params.loss == "focal")
        assert ("smoothing" in raw) == (params.loss == "label_smoothing")


def test_narrowed_and_fixed_dimensions():
    cfg = Config(lr_min=0.01, lr_max=0.01, schedulers=["step"], losses=["focal"], accum=[2])
    for params, _ in sample(cfg, 10):
        assert params.lr == pytest.approx(0.01)
        assert (params.scheduler, params.loss, params.accum) == ("step", "focal", 2)
        assert 1 <= params.step_size <= cfg.epochs // 2


def test_fixed_trial_gives_the_params_back():
    trial = optuna.trial.FixedTrial({"lr": 0.003, "scheduler": "plateau", "loss": "ce", "accum": 4,
                                     "plateau_factor": 0.5, "plateau_patience": 1})
    params = suggest(trial, Config())
    assert (params.lr, params.scheduler, params.accum, params.plateau_factor, params.plateau_patience) == (
        0.003, "plateau", 4, 0.5, 1)


def test_baseline_is_the_default_and_moves_into_a_narrowed_space():
    assert baseline_params(Config()) == BASELINE
    narrowed = baseline_params(Config(lr_min=0.01, lr_max=0.1, schedulers=["step", "plateau"], losses=["focal"], accum=[2, 4]))
    assert narrowed == {"lr": 0.01, "scheduler": "step", "loss": "focal", "accum": 2}


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(LRTuneError, match=r"unknown scheduler 'linear' \(valid: step, cosine, plateau\)"):
        check_space(Config(schedulers=["linear"]))
    with pytest.raises(LRTuneError, match=r"unknown loss 'dice' \(valid: ce, focal, label_smoothing, f1, or a 'module:callable' reference\)"):
        check_space(Config(losses=["ce", "dice"]))


FINETUNE = ("body_ratio", "layer_decay", "warmup_epochs", "head_epochs")


@pytest.mark.parametrize("cfg", [Config(), Config(pretrained=True), Config(pretrained=True, space="lr-only")],
                         ids=["from-scratch", "pretrained-auto", "pretrained-lr-only"])
def test_the_single_lr_space_has_no_fine_tune_dimensions(cfg):
    for params, raw in sample(cfg, 20):
        assert not set(FINETUNE) & set(raw)
        assert (params.body_ratio, params.layer_decay, params.warmup_epochs, params.head_epochs) == (1.0, 1.0, -1.0, 0)
    assert not set(FINETUNE) & set(baseline_params(cfg))


def test_the_fine_tune_space_searches_the_bodys_ratio_warmup_and_head_epochs():
    cfg = Config(pretrained=True, space="finetune", body_lrs="ratio", epochs=4, body_ratio=[0.02, 0.5], warmup_max=1.5)
    drawn = sample(cfg, 60)
    for params, raw in drawn:
        assert set(raw) >= {"lr", "body_ratio", "warmup_epochs", "head_epochs"} and "layer_decay" not in raw
        assert 0.02 <= params.body_ratio <= 0.5 and 0 <= params.warmup_epochs <= 1.5
    assert {p.head_epochs for p, _ in drawn} == {0, 1, 2}
    ratios = sorted(p.body_ratio for p, _ in drawn)
    assert ratios[len(ratios) // 2] < 0.2  # log-uniform: the median sits near the geometric middle (0.1)
    assert baseline_params(cfg) == {**{k: v for k, v in baseline_params(Config()).items()}, "body_ratio": 0.5,
                                    "warmup_epochs": 0.0, "head_epochs": 0}


def test_the_layer_decay_parameterization_is_the_default_and_head_epochs_stay_under_epochs():
    cfg = Config(pretrained=True, space="finetune", epochs=2)
    for params, raw in sample(cfg, 30):
        assert "layer_decay" in raw and "body_ratio" not in raw and 0.5 <= params.layer_decay <= 1.0
        assert params.head_epochs in (0, 1)  # less than --epochs, whatever the default range
    assert baseline_params(cfg)["layer_decay"] == 1.0


def test_a_users_loss_brings_its_own_parameters_named_after_it():
    import torch.nn.functional as F

    from lrtune.training.references import give
    from lrtune.training.run import Hyperparams

    def tempered(logits, targets, t=1.0, kind="soft"):
        return F.cross_entropy(logits / t, targets)

    tempered.space = {"t": (0.5, 2.0, "log"), "kind": ["soft", "hard"]}
    loss = give("loss", "tempered", tempered)
    cfg = Config(losses=["ce", loss])
    check_space(cfg)
    fixed = {"lr": 1e-3, "scheduler": "cosine", "loss": loss, "accum": 1, "tempered.t": 1.5, "tempered.kind": "hard"}
    params = suggest(optuna.trial.FixedTrial(fixed), cfg)
    assert params.loss_options == (("kind", "hard"), ("t", 1.5))
    assert Hyperparams.from_dict(params.to_dict()) == params and fixed.items() <= params.to_dict().items()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(12):
        trial = study.ask()
        chosen = suggest(trial, cfg)
        assert (chosen.loss == loss) == ("tempered.t" in trial.params)
        study.tell(trial, 0.0)
    only = Config(losses=[loss])
    assert baseline_params(only) == {**baseline_params(Config()), "loss": loss, "tempered.t": 1.0,
                                     "tempered.kind": "soft"}
