import pytest
import torch

from lrtune.errors import LRTuneError
from lrtune.training.models import create_model


def test_any_timm_model_with_our_number_of_classes():
    model = create_model("test_resnet", num_classes=7)
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 7)


def test_unknown_model_suggests_close_names():
    with pytest.raises(LRTuneError, match=r"unknown model 'test_resnett'.*did you mean: test_resnet"):
        create_model("test_resnett", num_classes=3)


def _offline_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path / "hf" / "hub"


def test_pretrained_offline_and_not_cached_is_one_line_naming_hub_id_cache_and_weights(monkeypatch, tmp_path):
    cache = _offline_cache(monkeypatch, tmp_path)
    with pytest.raises(LRTuneError) as info:
        create_model("resnet18", num_classes=3, pretrained=True)
    message = str(info.value)
    assert "\n" not in message
    assert "timm/resnet18" in message and str(cache) in message and "--weights FILE" in message


def test_pretrained_comes_through_timm_from_the_hugging_face_cache(monkeypatch, tmp_path):
    from safetensors.torch import save_file

    cache = _offline_cache(monkeypatch, tmp_path)
    source = create_model("test_resnet", num_classes=1000)
    repo = cache / "models--timm--test_resnet.r160_in1k"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    save_file(source.state_dict(), str(repo / "snapshots" / revision / "model.safetensors"))
    model = create_model("test_resnet", num_classes=4, pretrained=True)
    assert torch.equal(model.state_dict()["conv1.0.weight"], source.state_dict()["conv1.0.weight"])
    assert model.get_classifier().out_features == 4


def test_pretrained_from_a_local_file_keeps_the_backbone_and_replaces_the_head(tmp_path):
    source = create_model("test_resnet", num_classes=1000)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    model = create_model("test_resnet", num_classes=4, pretrained=True, weights=str(path))
    loaded, original = model.state_dict(), source.state_dict()
    backbone = [k for k in original if not k.startswith("fc.")]
    assert backbone and all(torch.equal(loaded[k], original[k]) for k in backbone)
    assert model.get_classifier().out_features == 4


def test_missing_weights_file(tmp_path):
    with pytest.raises(LRTuneError, match="weights file not found"):
        create_model("test_resnet", num_classes=3, pretrained=True, weights=str(tmp_path / "x.pth"))
    with pytest.raises(LRTuneError, match="--weights is given without --pretrained"):
        create_model("test_resnet", num_classes=3, weights=str(tmp_path / "x.pth"))


def test_your_own_model_is_built_by_its_callable_or_copied_from_a_module():
    from lrtune.training.references import give

    give("model", "tiny_for_test", lambda n: torch.nn.Linear(4, n))
    assert create_model("object:tiny_for_test", num_classes=3).out_features == 3
    module = torch.nn.Linear(4, 2)
    give("model", "module_for_test", module)
    copy = create_model("object:module_for_test", num_classes=2)
    assert copy is not module and torch.equal(copy.weight, module.weight)


def test_a_model_whose_output_is_not_batch_by_classes_is_one_line_with_the_shapes():
    from lrtune.errors import ModelError
    from lrtune.training.models import check_output

    probe = torch.zeros(4, 3, 8, 8)
    with pytest.raises(ModelError, match=r"^model 'm' returned shape \[4, 3, 8, 8\] for a batch of shape 4x3x8x8; it must "
                                         r"return \[batch, num_classes\] = \[4, 5\]$"):
        check_output(torch.nn.Identity(), "m", probe, 5)
    with pytest.raises(ModelError, match=r"^model 'm' fails on a probe batch of shape 4x3x8x8: RuntimeError: "):
        check_output(torch.nn.Linear(2, 5), "m", probe, 5)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 5), torch.nn.Dropout())
    assert check_output(model, "m", probe, 5).shape == (4, 5) and model.training  # its mode is put back
