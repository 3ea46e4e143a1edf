import json

import pytest
from PIL import Image

from helpers import FAST, load, run_cli
from lrtune.cli import main


def test_search_resumes_up_to_the_total_and_then_does_nothing(tmp_path, augment):
    args = ["search", "--studies-dir", str(tmp_path), *FAST]
    first = run_cli(*args, "--trials", "3", LRTUNE_LR_RANGE=None)  # the defaults, LR range test included
    assert first.returncode == 0, first.stderr
    assert "running the LR range test once for this study" in first.stderr
    assert "starting study 'digits-lt-test_resnet': 0 of 3 trials finished, 3 to go" in first.stderr
    assert "best:" in first.stdout and "baseline (trial 0)" in first.stdout
    study = load(tmp_path, "digits-lt-test_resnet")
    assert sum(t.state.is_finished() for t in study.trials) == 3
    assert study.trials[0].user_attrs.get("baseline") is True
    assert study.trials[0].params == {"lr": 0.001, "scheduler": "cosine", "loss": "ce", "accum": 1}
    assert study.user_attrs["config"]["epochs"] == 2
    assert study.user_attrs["config"]["lr_range"] == "auto"
    suggestion = study.user_attrs["lr_range"]["suggestion"]
    if suggestion is not None:  # queued as trial 1: the baseline's settings at the suggested LR
        assert study.trials[1].user_attrs.get("lr_range") is True
        assert study.trials[1].params == {**study.trials[0].params, "lr": suggestion}

    second = run_cli(*args, "--trials", "5", LRTUNE_LR_RANGE=None)
    assert second.returncode == 0, second.stderr
    assert "resuming study 'digits-lt-test_resnet': 3 of 5 trials finished, 2 to go" in second.stderr
    assert "running the LR range test" not in second.stderr  # once per study
    finished = [t for t in load(tmp_path, "digits-lt-test_resnet").trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 5

    third = run_cli(*args, "--trials", "5", LRTUNE_LR_RANGE=None)
    assert third.returncode == 0, third.stderr
    assert "already has 5 finished trials (--trials 5); nothing to run" in third.stderr
    assert len(load(tmp_path, "digits-lt-test_resnet").trials) == 5
    assert "study digits-lt-test_resnet: 5" in third.stdout

    listed = run_cli("studies", "--studies-dir", str(tmp_path), "--json")
    assert json.loads(listed.stdout)[0]["finished"] == 5
    shown = run_cli("show", "--studies-dir", str(tmp_path), "--json")
    data = json.loads(shown.stdout)
    assert data["study"] == "digits-lt-test_resnet"
    assert data["config"]["augment"] == augment
    assert data["best"]["value"] == max(t["value"] for t in data["top"])
    assert set(data["best"]["params"]) >= {"lr", "scheduler", "loss", "accum"}

    trained = run_cli("train", "--studies-dir", str(tmp_path))  # the best trial, to its best epoch, on the same path
    assert trained.returncode == 0, trained.stderr
    best = next(t for t in data["top"] if t["state"] == "complete")
    assert f"validation macro-F1 {best['value']:.4f} (the trial's best: {best['value']:.4f})" in trained.stderr


def test_metric_balanced_accuracy_is_what_the_search_maximizes_prunes_on_and_shows_first(tmp_path):
    studies = str(tmp_path)
    result = run_cli("search", "--studies-dir", studies, "--metric", "balanced_accuracy", "--trials", "6",
                     "--epochs", "3", "--batch-size", "64", "--image-size", "8")
    assert result.returncode == 0, result.stderr
    assert "best balanced accuracy" in result.stderr
    study = load(tmp_path, "digits-lt-test_resnet")
    for trial in study.trials:
        curves = trial.user_attrs["curves"]
        assert [trial.intermediate_values[e] for e in curves["epoch"]] == curves["val_balanced_accuracy"]
        if trial.state.name == "COMPLETE":
            assert trial.value == trial.user_attrs["best"]["balanced_accuracy"]
            assert trial.value == pytest.approx(max(curves["val_balanced_accuracy"]), abs=1e-8)  # curves: 8 decimals
    shown = json.loads(run_cli("show", "--studies-dir", studies, "--json").stdout)
    assert shown["metric"] == "balanced_accuracy"
    scores = shown["best"]["scores"]
    assert list(scores) == ["balanced_accuracy", "macro_f1", "accuracy", "weighted_f1", "roc_auc"]
    assert scores["balanced_accuracy"] == shown["best"]["value"] and all(0 <= v <= 1 for v in scores.values())
    text = run_cli("show", "--studies-dir", studies).stdout
    assert "balanced accuracy" in text.splitlines()[1]  # the table's column
    assert "best trial's validation scores: balanced accuracy " in text
    changed = run_cli("search", "--studies-dir", studies, "--metric", "macro_f1", "--trials", "7")
    assert changed.returncode == 1 and "metric: 'balanced_accuracy' -> 'macro_f1'" in changed.stderr


def test_workers_auto_picks_one_worker_on_the_cpu_and_says_why(tmp_path):
    result = run_cli("search", "--studies-dir", str(tmp_path), "--workers", "auto", "--trials", "2", "--epochs", "1",
                     "--image-size", "8", "--batch-size", "64")
    assert result.returncode == 0, result.stderr
    assert "--workers auto: 1 (one worker: several trials share only a CUDA device)" in result.stderr
    assert sum(t.state.is_finished() for t in load(tmp_path, "digits-lt-test_resnet").trials) == 2


def test_a_training_set_smaller_than_one_batch_skips_the_range_test_and_the_search_goes_on(tmp_path):
    data = _folder(tmp_path / "tiny", ["a", "b"], per_class=12)  # 24 images: 19 train, 5 validation
    studies = str(tmp_path / "s")
    result = run_cli("search", "--studies-dir", studies, "--data", str(data), "--trials", "2", "--epochs", "1",
                     "--image-size", "12", LRTUNE_LR_RANGE=None)  # the default: --lr-range auto, --batch-size 32
    assert result.returncode == 0, result.stderr
    reason = "the training set has 19 images, fewer than one batch of 32"
    assert f"LR range test skipped: {reason}; the LR range stays 1e-05 to 1" in result.stderr
    study = load(tmp_path / "s", "tiny-test_resnet")
    assert study.user_attrs["lr_range"] == {"skipped": reason, "suggestion": None, "bounds": [1e-05, 1.0]}
    assert sum(t.state.is_finished() for t in study.trials) == 2
    assert f"LR range test skipped: {reason}" in run_cli("show", "--studies-dir", studies).stdout
    again = run_cli("search", "--studies-dir", studies, "--data", str(data), "--trials", "3", "--epochs", "1",
                    "--image-size", "12", LRTUNE_LR_RANGE=None)
    assert again.returncode == 0, again.stderr
    assert "LR range test" not in again.stderr  # the record stays: a resumed study does not try again
    lr_find = run_cli("lr-find", "--studies-dir", studies, "--data", str(data), "--image-size", "12")
    assert lr_find.returncode == 1 and lr_find.stderr.strip() == f"lrtune: error: {reason}; lower --batch-size"


@pytest.mark.trains_nothing
def test_help_works_both_ways_and_names_environment_variables():
    for flag in ("-h", "--help"):
        with pytest.raises(SystemExit) as exit_info:
            main(["search", flag])
        assert exit_info.value.code == 0


@pytest.mark.trains_nothing
def test_help_mentions_env(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    out = capsys.readouterr().out
    assert "env LRTUNE_LR_MAX" in out and "--lr-min" in out and "--schedulers" in out


@pytest.mark.trains_nothing
def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--no-such-flag"])
    assert exit_info.value.code == 2
    assert main([]) == 2


def _folder(root, classes, per_class=3, size=12):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (size, size), (40 * i, 100, 200 if c == classes[0] else 20)).save(root / c / f"{i}.png")
    return root


def _csv(tmp_path, rows, header="path,label"):
    for path, *_ in rows:
        p = tmp_path / path
        if ".." not in path and not path.startswith("/") and not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (10, 10), (10, 20, 30)).save(p)
    f = tmp_path / "train.csv"
    f.write_text(header + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
    return f


def bad_inputs(tmp_path):
    """(arguments, expected message) for each kind of bad input."""
    missing = tmp_path / "nowhere"
    empty = _folder(tmp_path / "empty", ["a", "b"])
    (empty / "c").mkdir()
    one_class = _folder(tmp_path / "one", ["only"])
    no_label = _csv(tmp_path / "nolabel", [("x/1.png",)], header="path")
    single = _csv(tmp_path / "single", [("a/1.png", "a"), ("a/2.png", "a"), ("b/1.png", "b")])
    absolute = _csv(tmp_path / "abs", [("/etc/passwd", "a"), ("a/1.png", "a"), ("b/1.png", "b")])
    escaping = _csv(tmp_path / "esc", [("../x.png", "a"), ("a/1.png", "a"), ("b/1.png", "b")])
    corrupt = _folder(tmp_path / "corrupt", ["a", "b"])
    (corrupt / "a" / "broken.png").write_bytes(b"not an image")
    unknown_key = tmp_path / "bad.toml"
    unknown_key.write_text("learning_rate = 0.1\n")
    return [
        (["--model", "resnet_999"], "unknown model 'resnet_999'"),
        (["--losses", "ce,dice"], "unknown loss 'dice' (valid: ce, focal, label_smoothing, f1, or a 'module:callable' reference)"),
        (["--schedulers", "linear"], "unknown scheduler 'linear' (valid: step, cosine, plateau)"),
        (["--sampler", "grid"], "unknown sampler 'grid' (valid: tpe, random, gp, qmc)"),
        (["--pruner", "sometimes"], "unknown pruner 'sometimes' (valid: median, hyperband, none)"),
        (["--baselines", "lion"], "unknown baseline 'lion' (valid: prodigy, schedulefree)"),
        (["--metric", "f2"], "unknown metric 'f2' (valid: macro_f1, accuracy, balanced_accuracy, weighted_f1, roc_auc)"),
        (["--data", str(missing)], "nowhere' not found"),
        (["--data", str(empty)], "has no images"),
        (["--data", str(one_class)], "one class"),
        (["--data", str(no_label)], "has no 'label' column (columns: path)"),
        (["--data", str(single)], "class 'b' has only one image"),
        (["--data", str(absolute)], "absolute"),
        (["--data", str(escaping)], "escapes"),
        (["--data", str(corrupt)], "broken.png"),
        (["--trials", "0"], "--trials must be a positive number of trials, got 0"),
        (["--trials", "-5"], "--trials must be a positive number of trials, got -5"),
        (["--lr-min", "0.1", "--lr-max", "0.01"], "--lr-min 0.1 is greater than --lr-max 0.01"),
        (["--lr-min", "0"], "--lr-min and --lr-max must be positive"),
        (["--config", str(tmp_path / "missing.toml")], "config file not found"),
        (["--config", str(unknown_key)], "unknown key 'learning_rate'"),
        (["--storage", "sqlite:////proc/no/such/dir/x.db"], "cannot open storage"),
        (["--storage", "nosuchdb://user:secret@host/db"], "cannot open storage nosuchdb://user:***@host/db"),
    ]


@pytest.mark.trains_nothing
def test_every_bad_input_gives_one_line_naming_the_culprit(tmp_path, capsys):
    for args, message in bad_inputs(tmp_path):
        code = main(["search", "--studies-dir", str(tmp_path / "studies"), "--trials", "1", "--epochs", "1", *args])
        err = capsys.readouterr().err
        assert code == 1, (args, err)
        lines = [line for line in err.splitlines() if line.startswith("lrtune: error:")]
        assert len(lines) == 1 and message in lines[0], (args, err)
        assert "Traceback" not in err
        assert "secret" not in err


def test_skip_bad_images_skips_and_counts(tmp_path):
    corrupt = _folder(tmp_path / "corrupt", ["a", "b"], per_class=4)
    (corrupt / "a" / "broken.png").write_bytes(b"not an image")
    result = run_cli(
        "search", "--studies-dir", str(tmp_path / "s"), "--data", str(corrupt), "--skip-bad-images",
        "--trials", "1", "--epochs", "1", "--image-size", "16",
    )
    assert result.returncode == 0, result.stderr
    study = load(tmp_path / "s", "corrupt-test_resnet")
    assert study.user_attrs["dataset"]["skipped"] == ["a/broken.png"]


@pytest.mark.trains_nothing
def test_bad_input_through_a_real_subprocess_has_no_traceback_unless_debug(tmp_path):
    result = run_cli("search", "--studies-dir", str(tmp_path), "--data", str(tmp_path / "gone"), fresh=True)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("lrtune: error: data")
    assert len(result.stderr.strip().splitlines()) == 1
    debug = run_cli("search", "--studies-dir", str(tmp_path), "--data", str(tmp_path / "gone"), "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


@pytest.mark.trains_nothing
def test_show_and_report_on_a_missing_database_say_so(tmp_path, capsys):
    assert main(["show", "--studies-dir", str(tmp_path)]) == 1
    assert "no study database" in capsys.readouterr().err


def test_a_test_split_is_scored_after_the_search_and_shown_by_show_and_the_report(tmp_path):
    studies = str(tmp_path / "s")
    tiny = ["--trials", "2", "--epochs", "1", "--batch-size", "128", "--image-size", "8", "--pruner", "none"]
    result = run_cli("search", "--studies-dir", studies, "--test-fraction", "0.25", *tiny)
    assert result.returncode == 0, result.stderr
    shown = run_cli("show", "--studies-dir", studies, "--json")
    record = json.loads(shown.stdout)["test_split"]
    assert record["n_test"] > 0 and set(record["trials"]) == {"best", "baseline"}
    assert {"best", "baseline", "gain"} <= set(record)
    text = run_cli("show", "--studies-dir", studies).stdout
    assert f"test split ({record['n_test']} images, no trial saw them): best trial {record['trials']['best']}" in text
    report = run_cli("report", "--studies-dir", studies, "--out", str(tmp_path / "r.html"))
    assert report.returncode == 0, report.stderr
    html = (tmp_path / "r.html").read_text()
    assert "<dt>Test split</dt>" in html and f"{record['best']['value']:.4f}" in html
