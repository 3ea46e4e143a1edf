"""References to the user's own parts, and the objects the API keeps by name."""

from __future__ import annotations

import pytest

from lrtune.config import part_label
from lrtune.errors import ConfigError, ModelError
from lrtune.training import references
from lrtune.training.references import give, is_reference, is_user_part, resolve, short_name


@pytest.mark.parametrize("text", ["nets:build", "pkg.nets:Factory.build", "nets/faces.py:build", "/abs/x.py:f"])
def test_module_and_file_references_are_references(text):
    assert is_reference(text) and is_user_part(text)


@pytest.mark.parametrize("text", ["test_resnet", "hf-hub:timm/resnet18", "local-dir:/models/x", "nets:", "ce"])
def test_timm_names_and_prefixed_timm_names_are_not(text):
    assert not is_reference(text)


def test_short_names_and_labels_are_the_callable_or_the_objects_name():
    assert short_name("nets/faces.py:build") == "build" and short_name("object:mine") == "mine"
    assert part_label("nets/faces.py:build") == "faces.build" and part_label("object:mine") == "mine"
    assert part_label("pkg.nets:build") == "nets.build" and part_label("test_resnet") == "test_resnet"


def test_a_module_reference_imports_from_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "mynets_for_reference.py").write_text("def build(n):\n    return n * 2\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p != str(tmp_path)])
    assert resolve("mynets_for_reference:build", kind="model")(3) == 6


def test_a_file_reference_imports_its_neighbours_as_python_does(tmp_path):
    (tmp_path / "helper_for_reference.py").write_text("WIDTH = 5\n")
    (tmp_path / "net.py").write_text("from helper_for_reference import WIDTH\n\ndef build(n):\n    return WIDTH + n\n")
    assert resolve(f"{tmp_path / 'net.py'}:build", kind="model")(1) == 6


def test_a_module_that_raises_while_it_imports_is_one_line_naming_it(tmp_path):
    (tmp_path / "broken.py").write_text("raise RuntimeError('no GPU here')\n")
    with pytest.raises(ModelError, match=r"^cannot import model '.*broken.py:f': RuntimeError: no GPU here$"):
        resolve(f"{tmp_path / 'broken.py'}:f", kind="model", error=ModelError)


def test_objects_are_kept_by_name_and_an_unknown_name_says_how_to_give_it():
    def mine(logits, targets):
        return logits.sum()

    assert give("loss", "mine", mine) == "object:mine"
    assert resolve("object:mine", kind="loss") is mine
    with pytest.raises(ConfigError, match=r"loss 'gone' was a Python object given to an earlier call: give it again"):
        resolve("object:gone", kind="loss")


def test_a_name_must_be_a_plain_word():
    with pytest.raises(ConfigError, match=r"model name 'a b' must be letters, digits"):
        give("model", "a b", object())
    references._given.pop(("model", "a b"), None)
