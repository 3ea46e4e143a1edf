"""``lrtune predict`` and ``export``: odd images, scores that agree with scikit-learn, plain timm, ONNX, errors."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, f1_score

import lrtune
from helpers import run_cli
from imagefiles import digit_images, write_odd_images
from lrtune.cli.main import main


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_labelled(folder):
    for i, (label, image) in enumerate(digit_images(3)):
        (folder / label).mkdir(parents=True, exist_ok=True)
        image.save(folder / label / f"{i}.{'jpg' if i % 2 else 'png'}")
    return folder


def test_predict_labels_every_odd_image_with_probabilities_that_sum_to_one(trained, tmp_path):
    names = write_odd_images(tmp_path / "new")
    out = tmp_path / "predictions.csv"
    done = run_cli("predict", str(trained.folder), "--data", str(tmp_path / "new"), "--out", str(out), "--tta", "hflip")
    assert done.returncode == 0, done.stderr
    rows = read_csv(out)
    assert sorted(r["path"] for r in rows) == names
    classes = [str(k) for k in range(10)]
    for row in rows:
        probs = [float(row[f"p_{c}"]) for c in classes]
        assert abs(sum(probs) - 1) < 1e-4 and row["prediction"] == classes[int(np.argmax(probs))]
    assert f"{len(names)} predictions written to {out}" in done.stderr


def test_predict_on_a_labelled_folder_prints_a_macro_f1_that_agrees_with_scikit_learn(trained, tmp_path):
    data = write_labelled(tmp_path / "holdout")
    out, report = tmp_path / "p.csv", tmp_path / "eval.html"
    done = run_cli("predict", str(trained.folder), "--data", str(data), "--out", str(out), "--report", str(report))
    assert done.returncode == 0, done.stderr
    rows = read_csv(out)
    assert len(rows) == 30
    expected = f1_score([r["label"] for r in rows], [r["prediction"] for r in rows], average="macro")
    printed = float(done.stdout.split("macro-F1 ")[1].split(",")[0])
    assert printed == pytest.approx(expected, abs=5e-5)
    head = done.stdout.splitlines()[0]  # every metric, the model's own (its study's: macro-F1) first
    assert head.startswith("macro-F1 ") and head.endswith(" on 30 images")
    assert [part.rsplit(" ", 1)[0] for part in head.removesuffix(" on 30 images").split(", ")] == [
        "macro-F1", "accuracy", "balanced accuracy", "weighted F1", "ROC-AUC"]
    balanced = float(head.split("balanced accuracy ")[1].split(",")[0])
    expected_balanced = balanced_accuracy_score([r["label"] for r in rows], [r["prediction"] for r in rows])
    assert balanced == pytest.approx(expected_balanced, abs=5e-5)
    assert "precision" in done.stdout and len(done.stdout.strip().splitlines()) == 2 + 1 + 10
    page = report.read_text()
    assert 'id="confusion"' in page and f"{expected:.4f}" in page


def test_a_study_trials_weights_and_a_csv_with_labels_predict_too(small_study, tmp_path, capsys):
    data = write_labelled(tmp_path / "holdout")
    manifest = tmp_path / "holdout.csv"
    manifest.write_text("path,label\n" + "".join(f"holdout/{p.parent.name}/{p.name},{p.parent.name}\n"
                                                 for p in sorted(data.rglob("*.*"))))
    out = tmp_path / "p.csv"
    assert main(["predict", "--studies-dir", str(small_study.dir), "--data", str(manifest), "--out", str(out)]) == 0
    assert "macro-F1" in capsys.readouterr().out and len(read_csv(out)) == 30


def test_the_model_folder_loads_in_plain_timm_with_the_same_logits(trained, tmp_path):
    loaded = lrtune.load_model(path=trained.folder)
    x = torch.randn(3, 3, loaded.image_size, loaded.image_size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = loaded.model(x).numpy()
    np.save(tmp_path / "x.npy", x.numpy())
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np, timm, torch
        folder = {str(trained.folder)!r}
        config = json.load(open(folder + "/config.json"))
        n = config["num_classes"]
        overlay = {{"file": folder + "/model.safetensors", "num_classes": n}}
        model = timm.create_model(config["architecture"], num_classes=n, pretrained=True,
                                  pretrained_cfg_overlay=overlay).eval()
        same = timm.create_model("local-dir:" + folder, pretrained=True).eval()
        x = torch.from_numpy(np.load({str(tmp_path / "x.npy")!r}))
        with torch.inference_mode():
            np.save({str(tmp_path / "y.npy")!r}, model(x).numpy())
            np.save({str(tmp_path / "z.npy")!r}, same(x).numpy())
        assert same.pretrained_cfg["label_names"] == [str(k) for k in range(10)]
        assert not any(name.startswith("lrtune") for name in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=240)
    assert done.returncode == 0, done.stderr
    assert np.abs(np.load(tmp_path / "y.npy") - expected).max() < 1e-5
    assert np.abs(np.load(tmp_path / "z.npy") - expected).max() < 1e-5
    assert loaded.classes == [str(k) for k in range(10)] and isinstance(loaded.model, torch.nn.Module)


def test_onnx_export_agrees_with_pytorch(trained, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    assert main(["export", "--format", "onnx", str(trained.folder), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    loaded = lrtune.load_model(path=trained.folder)
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = loaded.model(x).numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    assert np.abs(got - expected).max() < 1e-4


@pytest.mark.parametrize("fmt", ["json", "yaml", "toml"])
def test_export_writes_the_best_configuration(small_study, tmp_path, capsys, fmt):
    import tomllib

    import yaml

    out = tmp_path / f"best.{fmt}"
    assert main(["export", "--format", fmt, "--studies-dir", str(small_study.dir), "--out", str(out)]) == 0
    text = out.read_text()
    data = {"json": json.loads, "yaml": yaml.safe_load, "toml": tomllib.loads}[fmt](text)
    best = small_study.best
    assert data["trial"]["number"] == best.number and data["trial"]["value"] == best.value
    assert data["trial"]["params"]["lr"] == best.params["lr"] and data["dataset"]["n_val"] == 147
    assert data["versions"]["torch"] == torch.__version__.split("+")[0]
    if fmt == "toml":
        cfg = lrtune.load_config(config_file=out, environ={})
        assert cfg.lr_min == cfg.lr_max == best.params["lr"] and cfg.schedulers == [best.params["scheduler"]]
    else:
        assert data["config"]["epochs"] == 2


def error_of(capsys, *argv: str) -> str:
    assert main(list(argv)) == 1
    err = capsys.readouterr().err
    assert err.startswith("lrtune: error: ") and err.count("\n") == 1, err
    return err


def test_bad_model_folders_and_inputs_are_one_line_errors_that_write_nothing(trained, tmp_path, capsys):
    good = tmp_path / "new"
    write_odd_images(good)
    out = tmp_path / "p.csv"
    broken = tmp_path / "broken"
    shutil.copytree(trained.folder, broken)
    (broken / "config.json").unlink()
    assert "has no config.json" in error_of(capsys, "predict", str(broken), "--data", str(good), "--out", str(out))
    (tmp_path / "empty").mkdir()
    model = str(trained.folder)
    assert "holds no images" in error_of(capsys, "predict", model, "--data", str(tmp_path / "empty"), "--out", str(out))
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("path,label\nnew/gray.png,cat\nnew/rgba.png,3\n")
    assert "labels 'cat' are not classes of the model" in error_of(
        capsys, "predict", model, "--data", str(wrong), "--out", str(out)
    )
    assert "is a folder" in error_of(capsys, "predict", model, "--data", str(good), "--out", str(tmp_path))
    for unwritable in ("/sys/p.csv", str(tmp_path / "nowhere" / "p.csv")):
        assert "--out" in error_of(capsys, "predict", model, "--data", str(good), "--out", unwritable)
    Image.new("RGB", (4, 4)).save(good / "zz.png")
    (good / "zz.png").write_bytes((good / "zz.png").read_bytes()[:20])  # truncated: cannot be decoded
    assert "cannot decode image" in error_of(capsys, "predict", model, "--data", str(good), "--out", str(out))
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))
    assert main(["predict", model, "--data", str(good), "--out", str(out), "--skip-bad-images"]) == 0
    assert "skipped 1 images" in capsys.readouterr().err and len(read_csv(out)) == len(list(good.iterdir())) - 1
