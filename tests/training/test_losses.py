import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lrtune.errors import LRTuneError
from lrtune.training.losses import (
    LOSSES,
    FocalLoss,
    LabelSmoothingLoss,
    SoftF1Loss,
    check_losses,
    create_loss,
    loss_space,
    probe_value,
)
from lrtune.training.references import give

NUM_CLASSES = 5


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(16, NUM_CLASSES, generator=generator, dtype=torch.float64) * 3
    target = torch.randint(NUM_CLASSES, (16,), generator=generator)
    return logits.float(), target


def np_log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def hard_macro_f1(target: np.ndarray, pred: np.ndarray) -> float:
    """Macro-F1 over all classes from counts, 0 for a class never seen nor predicted."""
    scores = []
    for c in range(NUM_CLASSES):
        tp = np.sum((pred == c) & (target == c))
        fp = np.sum((pred == c) & (target != c))
        fn = np.sum((pred != c) & (target == c))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(scores))


def test_ce_matches_torch(batch):
    logits, target = batch
    assert create_loss("ce")(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target).item(), rel=1e-6
    )


def test_focal_matches_formula(batch):
    logits, target = batch
    log_p = np_log_softmax(logits.double().numpy())
    log_pt = log_p[np.arange(len(target)), target.numpy()]
    expected = np.mean(-((1 - np.exp(log_pt)) ** 2.0) * log_pt)
    assert create_loss("focal", focal_gamma=2.0)(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_focal_with_gamma_zero_is_ce(batch):
    logits, target = batch
    assert FocalLoss(focal_gamma=0.0)(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target).item(), rel=1e-6
    )


def test_focal_down_weights_easy_examples():
    target = torch.tensor([0, 0])
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.5, 0.0, 0.0]])  # one easy, one hard
    ce = F.cross_entropy(logits, target, reduction="none")
    focal = torch.stack([FocalLoss(2.0)(logits[i : i + 1], target[i : i + 1]) for i in range(2)])
    ratio = focal / ce
    assert ratio[0] < ratio[1] < 1
    assert ratio[0] < 0.01


def test_label_smoothing_matches_torch_and_formula(batch):
    logits, target = batch
    eps = 0.2
    loss = create_loss("label_smoothing", smoothing=eps)(logits, target).item()
    assert loss == pytest.approx(F.cross_entropy(logits, target, label_smoothing=eps).item(), rel=1e-6)

    smoothed = (1 - eps) * np.eye(NUM_CLASSES)[target.numpy()] + eps / NUM_CLASSES
    log_p = np_log_softmax(logits.double().numpy())
    assert loss == pytest.approx(np.mean(-(smoothed * log_p).sum(axis=1)), rel=1e-5)


def test_soft_f1_matches_formula(batch):
    logits, target = batch
    log_p = np_log_softmax(logits.double().numpy())
    p = np.exp(log_p)
    y = np.eye(NUM_CLASSES)[target.numpy()]
    tp, fp, fn = (p * y).sum(0), (p * (1 - y)).sum(0), ((1 - p) * y).sum(0)
    expected = 1 - np.mean(2 * tp / (2 * tp + fp + fn + 1e-7))
    assert create_loss("f1")(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_soft_f1_is_zero_when_confidently_right_and_one_when_wrong():
    target = torch.arange(NUM_CLASSES).repeat(3)
    right = F.one_hot(target, NUM_CLASSES).float() * 20
    wrong = F.one_hot((target + 1) % NUM_CLASSES, NUM_CLASSES).float() * 20
    assert SoftF1Loss()(right, target).item() == pytest.approx(0.0, abs=1e-6)
    assert SoftF1Loss()(wrong, target).item() == pytest.approx(1.0, abs=1e-6)


def test_soft_f1_on_one_hot_probabilities_is_one_minus_macro_f1():
    generator = torch.Generator().manual_seed(1)
    target = torch.randint(NUM_CLASSES, (40,), generator=generator)
    noise = torch.randint(NUM_CLASSES, (40,), generator=generator)
    pred = torch.where(torch.rand(40, generator=generator) < 0.6, target, noise)
    logits = F.one_hot(pred, NUM_CLASSES).float() * 1e4
    expected = hard_macro_f1(target.numpy(), pred.numpy())
    assert SoftF1Loss()(logits, target).item() == pytest.approx(1 - expected, abs=1e-6)


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradients_are_finite(name, batch):
    logits, target = batch
    confident = torch.cat([logits, F.one_hot(target, NUM_CLASSES).float() * 100])
    confident.requires_grad_(True)
    create_loss(name)(confident, torch.cat([target, target])).backward()
    assert torch.isfinite(confident.grad).all()
    assert confident.grad.abs().sum() > 0


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_gradient_is_finite_for_certain_predictions(gamma):
    target = torch.tensor([0, 1])
    logits = (F.one_hot(target, NUM_CLASSES).float() * 100).requires_grad_(True)
    FocalLoss(gamma)(logits, target).backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(LOSSES))
def test_half_precision_logits_give_a_float32_loss(name, dtype, batch):
    logits, target = batch
    half = logits.to(dtype)
    loss = create_loss(name)(half, target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(create_loss(name)(half.float(), target).item(), rel=1e-6)


def test_create_loss_passes_only_accepted_options():
    assert create_loss("focal", focal_gamma=0.5).focal_gamma == 0.5
    assert create_loss("label_smoothing", smoothing=0.3).smoothing == 0.3
    assert isinstance(create_loss("label_smoothing", focal_gamma=5.0), LabelSmoothingLoss)
    assert isinstance(create_loss("f1", focal_gamma=5.0, smoothing=0.5), SoftF1Loss)


def test_unknown_loss_lists_valid_names():
    with pytest.raises(LRTuneError, match=r"unknown loss 'dice' \(valid: ce, focal, label_smoothing, f1, or a 'module:callable' reference\)"):
        create_loss("dice")


@pytest.mark.parametrize(
    ("name", "options"), [("focal", {"focal_gamma": -1.0}), ("label_smoothing", {"smoothing": 1.0})]
)
def test_invalid_option_is_named(name, options):
    with pytest.raises(LRTuneError, match=next(iter(options))):
        create_loss(name, **options)


def test_a_users_loss_gets_float_logits_and_its_searched_options():
    seen = {}

    def mine(logits, targets, weight=1.0):
        seen.update(dtype=logits.dtype, weight=weight)
        return F.cross_entropy(logits, targets) * weight

    give("loss", "weighted_for_test", mine)
    loss = create_loss("object:weighted_for_test", options={"weight": 3.0})
    logits, targets = torch.randn(4, 5, dtype=torch.bfloat16), torch.tensor([0, 1, 2, 3])
    assert torch.allclose(loss(logits, targets), 3 * F.cross_entropy(logits.float(), targets))
    assert seen == {"dtype": torch.float32, "weight": 3.0}


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"w": (1.0,)}, r"parameter 'w' = \(1.0,\) is not"),
        ({"w": (0.0, 1.0, "log")}, r"parameter 'w' = \(0.0, 1.0, 'log'\) is not"),
        ({"w": []}, r"parameter 'w' = \[\] is not"),
        ({"not a name": (0.0, 1.0)}, r"parameter 'not a name'"),
        ([("w", (0, 1))], r"its space is a list, not a dict of parameters"),
    ],
)
def test_a_malformed_space_is_one_line_naming_the_parameter(space, message):
    def spaced(logits, targets, w=1.0):
        return F.cross_entropy(logits, targets) * w

    spaced.space = space
    give("loss", "spaced_for_test", spaced)
    with pytest.raises(LRTuneError, match=message):
        loss_space("object:spaced_for_test")


def test_the_probe_checks_each_users_loss_at_the_middle_of_its_ranges():
    calls = []

    def probed(logits, targets, w=1.0, k=1, kind="a"):
        calls.append((w, k, kind))
        return F.cross_entropy(logits, targets)

    probed.space = {"w": (0.25, 4.0, "log"), "k": (1, 3), "kind": ["b", "c"]}
    give("loss", "probed_for_test", probed)
    check_losses(["ce", "object:probed_for_test"], torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    assert calls == [(1.0, 2, "b")]
    assert probe_value((0.0, 1.0)) == 0.5
