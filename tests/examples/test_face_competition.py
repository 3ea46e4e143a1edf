"""The face-competition example, end to end on its offline stand-in: manifest, search, train, predict, answers."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, load, run_cli

EXAMPLE = ROOT / "examples" / "face_competition"


def script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXAMPLE / name), *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faces")
    done = script("make_fake_layout.py", str(out))
    assert done.returncode == 0, done.stderr
    return out


def test_the_example_runs_from_the_photo_folders_to_the_answers(layout, tmp_path):
    manifest = layout / "train.csv"
    made = script("make_manifest.py", str(layout / "train" / "images"), "--out", str(manifest))
    assert made.returncode == 0, made.stderr
    assert made.stderr.strip() == f"126 photos of 18 persons in 18 classes written to {manifest}"
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0] == {"path": "train/images/000001_male_Asian_24/mask1.jpg", "label": "mask-male-under30",
                       "group": "000001"}
    assert {r["path"].rsplit(".", 1)[1] for r in rows} == {"jpg", "jpeg", "png"}
    assert len({r["label"] for r in rows}) == 18 and {r["label"] for r in rows if "incorrect_mask" in r["path"]} == {
        f"incorrect-{g}-{a}" for g in ("male", "female") for a in ("under30", "30to59", "60plus")}

    studies = str(tmp_path / "studies")
    search = run_cli("search", "--data", str(manifest), "--studies-dir", studies, "--study", "faces",
                     "--image-size", "32", "--trials", "3", "--epochs", "2")
    assert search.returncode == 0, search.stderr
    study = json_show(studies)
    assert study["config"]["data"] == str(manifest)
    assert len(study["config"]["accum"]) == 4 and study["best"]["scores"]["macro_f1"] >= 0
    train = run_cli("train", "--studies-dir", studies, "--study", "faces", "--on", "all")
    assert train.returncode == 0, train.stderr
    model = train.stdout.strip()
    predictions = tmp_path / "predictions.csv"
    predict = run_cli("predict", model, "--data", str(layout / "eval" / "images"), "--out", str(predictions))
    assert predict.returncode == 0, predict.stderr
    answers = tmp_path / "answers.csv"
    made = script("make_answers.py", str(predictions), "--info", str(layout / "eval" / "info.csv"), "--out", str(answers))
    assert made.returncode == 0, made.stderr
    with open(answers, newline="") as f:
        got = list(csv.DictReader(f))
    with open(layout / "eval" / "info.csv", newline="") as f:
        assert [r["ImageID"] for r in got] == [r["ImageID"] for r in csv.DictReader(f)]
    assert len(got) == 28 and all(0 <= int(r["ans"]) <= 17 for r in got)


def test_the_multi_head_model_searches_resumes_trains_and_answers_with_18_classes(layout, tmp_path):
    manifest = layout / "train-multihead.csv"  # paths in a manifest are relative to its folder
    made = script("make_manifest.py", str(layout / "train" / "images"), "--out", str(manifest))
    assert made.returncode == 0, made.stderr
    studies = str(tmp_path / "studies")
    parts = f"{EXAMPLE / 'multihead.py'}"
    search = ["search", "--data", str(manifest), "--studies-dir", studies, "--study", "faces", "--image-size", "32",
              "--epochs", "2", "--model", f"{parts}:build_test", "--losses", f"{parts}:loss,ce"]
    first = run_cli(*search, "--trials", "2")
    assert first.returncode == 0, first.stderr
    resumed = run_cli(*search, "--trials", "4")
    assert resumed.returncode == 0, resumed.stderr
    study = load(Path(studies), "faces")
    assert study.user_attrs["config"]["model"] == f"{parts}:build_test"
    trials = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(trials) == 4 and {t.user_attrs.get("resumed_at_epoch") for t in trials} == {None}
    multihead = [t for t in trials if t.params["loss"] == f"{parts}:loss"]
    assert multihead and all({"loss.age_weight", "loss.focal_gamma"} <= set(t.params) for t in multihead)
    train = run_cli("train", "--studies-dir", studies, "--study", "faces", "--on", "all")
    assert train.returncode == 0, train.stderr
    predictions = tmp_path / "predictions.csv"
    predict = run_cli("predict", train.stdout.strip(), "--data", str(layout / "eval" / "images"), "--out",
                      str(predictions))
    assert predict.returncode == 0, predict.stderr
    answers = tmp_path / "answers.csv"
    made = script("make_answers.py", str(predictions), "--info", str(layout / "eval" / "info.csv"), "--out", str(answers))
    assert made.returncode == 0, made.stderr
    with open(answers, newline="") as f:
        got = list(csv.DictReader(f))
    assert len(got) == 28 and all(0 <= int(r["ans"]) <= 17 for r in got)


def test_the_multi_head_loss_is_the_heads_cross_entropies_on_the_18_classes_marginals():
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(EXAMPLE))
    try:
        import multihead
    finally:
        sys.path.remove(str(EXAMPLE))
    model = multihead.build_test(18).eval()
    with torch.no_grad():
        x = torch.randn(5, 3, 32, 32)
        joint = model(x)
        heads = [F.log_softmax(h(model.body(x)), -1) for h in model.heads]
    assert joint.shape == (5, 18)
    assert torch.allclose(joint.logsumexp(-1), torch.zeros(5), atol=1e-5)  # the 18 joint probabilities sum to 1
    targets = torch.tensor([0, 5, 9, 13, 17])
    parts = multihead.PARTS[targets]
    expected = sum(F.nll_loss(heads[k], parts[:, k]) for k in range(3))
    assert torch.allclose(multihead.loss(joint, targets), expected, atol=1e-5)
    names = [multihead.NAMES[k] for k in joint.argmax(-1)]
    best = ["-".join(v[int(h.argmax())] for v, h in zip(multihead.HEADS, row)) for row in zip(*heads)]
    assert names == best  # the most likely class is the most likely mask, gender and age together


def json_show(studies: str) -> dict:
    import json

    shown = run_cli("show", "--studies-dir", studies, "--study", "faces", "--json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda root: (root / "000002_male_Asian_25").rename(root / "000002_male_25"),
         "row 2, folder '000002_male_25': expected <id>_<gender>_<race>_<age>, got 3 part(s)"),
        (lambda root: (root / "000003_male_Asian_25").rename(root / "000003_man_Asian_25"),
         "row 3, folder '000003_man_Asian_25': gender 'man' is not one of male, female"),
        (lambda root: (root / "000001_male_Asian_24" / "normal.png").unlink(),
         "row 1, folder '000001_male_Asian_24': has no normal photo"),
        (lambda root: shutil.copy(root / "000001_male_Asian_24" / "mask1.jpg", root / "000001_male_Asian_24" / "mask6.jpg"),
         "row 1, folder '000001_male_Asian_24': photo 'mask6.jpg' is not one of mask1, mask2"),
    ],
)
def test_a_layout_that_does_not_parse_is_one_line_naming_the_row_and_nothing_is_written(layout, tmp_path, change,
                                                                                         message):
    root = tmp_path / "images"
    shutil.copytree(layout / "train" / "images", root)
    change(root)
    out = tmp_path / "train.csv"
    made = script("make_manifest.py", str(root), "--out", str(out))
    assert made.returncode == 1 and len(made.stderr.strip().splitlines()) == 1
    assert made.stderr.startswith(f"make_manifest: error: {message}")
    assert not out.exists() and list(tmp_path.glob(".train.csv*")) == []
