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
