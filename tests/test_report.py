import os
import re
import sqlite3
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from lrtune.errors import LRTuneError
from lrtune.report import FIGURE_NAMES, compute_report, draw_report, run_report
from lrtune.study import default_storage_url, open_storage
from studies import BASELINE, make_study

optuna.logging.set_verbosity(optuna.logging.WARNING)

PLOTLY_BUNDLE_MARK = "Copyright 2012-"
XSS = "<script>alert(1)</script>"
XSS_IMG = "<img src=x onerror=alert(2)>"
XSS_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"

PRUNED, FAIL, RUNNING, WAITING = TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING


def params(lr: float, scheduler: str = "cosine", loss: str = "ce", accum: int = 1) -> dict:
    return {"lr": lr, "scheduler": scheduler, "loss": loss, "accum": accum}


MIXED = [
    {"params": dict(BASELINE), "value": 0.70, "baseline": True},
    {"params": params(3e-3, "step", "focal", 2), "value": 0.80},
    {"state": PRUNED, "params": params(0.3, "plateau"), "stop_epoch": 3},
    {"params": params(1e-4, "cosine", "f1", 4), "value": 0.75},
    {"state": FAIL, "params": params(0.9, "step"), "reason": "diverged: non-finite loss at epoch 2", "stop_epoch": 2},
    {"params": params(2e-3, "plateau", "label_smoothing", 8), "value": 0.78},
    {"state": RUNNING, "params": params(5e-3)},
]


@pytest.fixture(scope="module")
def studies_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("studies")


@pytest.fixture(scope="module")
def storage_url(studies_dir) -> str:
    url = new_storage(studies_dir)
    make_study(url, "mixed", MIXED)
    return url


@pytest.fixture(scope="module")
def mixed_html(storage_url, studies_dir) -> str:
    path = run_report(storage_url, "mixed", None, studies_dir=str(studies_dir))
    return path.read_text()


@pytest.fixture(scope="module")
def mixed_report(mixed_html) -> str:
    return without_bundle(mixed_html)


def new_storage(tmp_path: Path) -> str:
    """A fresh lrtune database in ``tmp_path``, in WAL mode like the ones a search creates."""
    url = default_storage_url(tmp_path)
    open_storage(url)
    return url


def without_bundle(html_text: str) -> str:
    """The page without the inline plotly.js, small enough for readable assertion messages."""
    return re.sub(r"<script charset=\"utf-8\">.*?</script>", "<script>PLOTLY</script>", html_text, count=1, flags=re.S)


def report_page(storage_url: str, study: str, out: Path) -> tuple[str, str]:
    html_text = run_report(storage_url, study, str(out)).read_text()
    return html_text, without_bundle(html_text)


# --------------------------------------------------------------------------- values


def test_counts_best_and_gain_over_baseline(storage_url):
    study = optuna.load_study(study_name="mixed", storage=storage_url)
    data = compute_report(study, storage_label="label")

    assert data.counts == {"COMPLETE": 4, "PRUNED": 1, "FAIL": 1, "RUNNING": 1, "WAITING": 0}
    assert data.best.number == 1 and data.best.value == pytest.approx(0.80)
    assert data.baseline.number == 0
    assert data.gain == pytest.approx(0.10)
    assert [t.number for t in data.top] == [1, 5, 3, 0]


def test_history_keeps_the_best_completed_value_so_far(storage_url):
    study = optuna.load_study(study_name="mixed", storage=storage_url)
    data = compute_report(study, storage_label="label")

    assert data.history_best == pytest.approx({0: 0.70, 1: 0.80, 2: 0.80, 3: 0.80, 4: 0.80, 5: 0.80, 6: 0.80})


def test_best_trial_scores_use_the_dataset_class_names():
    classes = ["cat", "dog", "bird"]
    study = make_study(None, "pets", [{"value": 0.9}], classes=classes)
    scores = compute_report(study, storage_label="x").class_scores

    assert scores.classes == classes
    assert len(scores.confusion) == 3 and all(len(row) == 3 for row in scores.confusion)
    assert sum(map(sum, scores.confusion)) == sum(scores.support)


def test_effective_lr_grid_bins_by_half_decade_and_accum(storage_url):
    study = optuna.load_study(study_name="mixed", storage=storage_url)
    grid = compute_report(study, storage_label="x").lr_grid

    assert grid.accum == [1, 2, 4, 8]
    assert grid.accum_labels[1] == "2 (batch 64)"
    assert sum(map(sum, grid.count)) == 4
    row, col = grid.accum.index(2), grid.lr_bins.index("1e-3–3e-3")
    assert grid.best[row][col] == pytest.approx(0.80) and grid.best_trial[row][col] == 1


def test_baseline_found_by_params_when_not_marked():
    study = make_study(None, "old", [{"params": dict(BASELINE), "value": 0.5, "bare": True}, {"value": 0.6}])
    data = compute_report(study, storage_label="x")

    assert data.baseline.number == 0
    assert data.gain == pytest.approx(0.1)


def test_trials_without_any_attributes_still_report():
    specs = [{"params": params(10 ** -(i + 1)), "value": 0.1 * (i + 1), "bare": True} for i in range(5)]
    study = make_study(None, "bare", specs)
    data = compute_report(study, storage_label="x")
    text = without_bundle(draw_report(data))

    assert data.best.number == 4 and data.class_scores is None
    assert "stored no per-class scores" in text
    assert [len(t.epochs) for t in data.trials] == [10] * 5


# --------------------------------------------------------------------------- the page


def test_default_output_is_in_the_study_folder(storage_url, studies_dir, mixed_report):
    assert (studies_dir / "mixed" / "report.html").is_file()
    assert "<title>lrtune report: mixed</title>" in mixed_report


def test_every_figure_has_its_div_and_a_plot(mixed_report):
    for name in FIGURE_NAMES:
        assert f'<div class="figure" id="fig-{name}">' in mixed_report
        assert f'id="plot-{name}"' in mixed_report
    assert '<div class="figure" id="fig-top-trials">' in mixed_report
    assert '<table id="top-trials">' in mixed_report
    assert "Nothing to show" not in mixed_report


def test_plotly_js_is_embedded_once(mixed_html, mixed_report):
    assert mixed_html.count(PLOTLY_BUNDLE_MARK) == 1
    assert "<script>PLOTLY</script>" in mixed_report
    assert "cdn.plot.ly" not in mixed_report


def test_cdn_mode_gives_a_small_file(storage_url, tmp_path):
    path = run_report(storage_url, "mixed", str(tmp_path / "cdn.html"), plotlyjs="cdn")
    text = path.read_text()

    assert path.stat().st_size < 300_000
    assert re.search(r'<script charset="utf-8" src="https://cdn\.plot\.ly/plotly-[\d.]+\.min\.js"', text)
    assert PLOTLY_BUNDLE_MARK not in text


def test_password_in_stored_config_is_masked(mixed_report):
    assert "hunter2" not in mixed_report
    assert "postgresql://lrtune:***@db.example/lrtune" in mixed_report


def test_html_from_user_strings_is_escaped(tmp_path):
    odd = {XSS: FloatDistribution(0, 10), "tag": CategoricalDistribution([XSS_IMG])}
    specs = [
        {"params": {**BASELINE, XSS: 1.0, "tag": XSS_IMG}, "value": 0.6, "baseline": True, "distributions": odd},
        {"params": {**params(2e-3), XSS: 2.0, "tag": XSS_IMG}, "value": 0.7, "distributions": odd},
        {"state": FAIL, "params": params(0.5), "reason": XSS},
    ]
    make_study(new_storage(tmp_path), XSS, specs, classes=[XSS, XSS_IMG, "ok"])
    html_text, text = report_page(new_storage(tmp_path), XSS, tmp_path / "x.html")

    assert "<script>alert" not in html_text and "<img src=x" not in html_text
    assert f"<title>lrtune report: {XSS_ESCAPED}</title>" in text
    assert f"<th>{XSS_ESCAPED}</th>" in text
    assert "&lt;img src=x onerror=alert(2)&gt;" in text
    assert f"<td>{XSS_ESCAPED}</td>" in text


def test_unknown_plotlyjs_mode_is_an_error(storage_url, tmp_path):
    with pytest.raises(LRTuneError, match="plotlyjs"):
        run_report(storage_url, "mixed", str(tmp_path / "r.html"), plotlyjs="local")


# --------------------------------------------------------------------------- thin studies


THIN = {
    "no trials": ([], "The study has no trials yet."),
    "only running": ([{"state": RUNNING}, {"state": WAITING}], "No trial has completed yet"),
    "only pruned": ([{"state": PRUNED}, {"state": PRUNED}], "All 2 finished trials were pruned"),
    "only failed": ([{"state": FAIL, "stop_epoch": 0}, {"state": FAIL, "stop_epoch": 2}], "No trial has completed yet"),
    "single trial": ([{"params": dict(BASELINE), "value": 0.5, "baseline": True}], "Only one trial has completed"),
}


@pytest.mark.parametrize("case", THIN)
def test_thin_studies_give_a_report_with_a_note(case):
    specs, summary_note = THIN[case]
    text = draw_report(compute_report(make_study(None, "thin", specs), storage_label="x"), plotlyjs="cdn")

    assert f'<p class="note">{summary_note}' in text
    for name in (*FIGURE_NAMES, "top-trials"):
        assert f'id="fig-{name}"' in text
    assert "Nothing to show" not in text
    assert "Parameter importances need at least 4 completed trials" in text


def test_single_trial_draws_its_own_figures():
    study = make_study(None, "one", [{"params": dict(BASELINE), "value": 0.5, "baseline": True}])
    text = draw_report(compute_report(study, storage_label="x"), plotlyjs="cdn")

    for name in ("history", "curves", "lr", "effective-lr", "lr-steps", "per-class", "confusion", "timeline"):
        assert f'id="plot-{name}"' in text
    assert "the baseline is the best trial" in text


# --------------------------------------------------------------------------- picking the study


def test_most_recently_updated_study_is_reported_by_default(tmp_path):
    url = new_storage(tmp_path)
    make_study(url, "recent", [{"value": 0.5}], start_offset_min=600)
    make_study(url, "older", [{"value": 0.5}, {"value": 0.6}])
    make_study(url, "empty")

    path = run_report(url, None, None, studies_dir=str(tmp_path))

    assert path == tmp_path / "recent" / "report.html"
    assert "<title>lrtune report: recent</title>" in without_bundle(path.read_text())


def test_unknown_study_lists_existing_ones(storage_url, tmp_path):
    with pytest.raises(LRTuneError, match=r"unknown study 'nope' \(existing studies: mixed\)"):
        run_report(storage_url, "nope", str(tmp_path / "r.html"))


def test_empty_storage_says_so(tmp_path):
    url = new_storage(tmp_path)
    with pytest.raises(LRTuneError, match="no studies in sqlite:///"):
        run_report(url, None, str(tmp_path / "r.html"))


def test_missing_database_is_not_created(tmp_path):
    with pytest.raises(LRTuneError, match="cannot open storage"):
        run_report(default_storage_url(tmp_path / "none"), None, str(tmp_path / "r.html"))
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("url", ["nosuchdialect://host/db", "sqlite:///{tmp}/garbage.db"])
def test_storage_that_cannot_be_opened_is_an_error(url, tmp_path):
    (tmp_path / "garbage.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(LRTuneError, match="cannot open storage"):
        run_report(url.format(tmp=tmp_path), "s", str(tmp_path / "r.html"))


def test_password_is_masked_in_storage_errors(tmp_path):
    with pytest.raises(LRTuneError) as info:
        run_report("nosuchdialect://user:secret@host/db", "s", str(tmp_path / "r.html"))
    assert "secret" not in str(info.value)


# --------------------------------------------------------------------------- the output file


def test_missing_output_folder_is_an_error(storage_url, tmp_path):
    missing = tmp_path / "no" / "such"
    with pytest.raises(LRTuneError, match=f"output folder {re.escape(str(missing))} does not exist"):
        run_report(storage_url, "mixed", str(missing / "r.html"))


def test_output_folder_that_is_a_file_is_an_error(storage_url, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(LRTuneError, match="output folder .*file does not exist"):
        run_report(storage_url, "mixed", str(tmp_path / "file" / "r.html"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_output_folder_is_an_error(storage_url, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(LRTuneError, match=f"output folder {re.escape(str(folder))} is not writable"):
            run_report(storage_url, "mixed", str(folder / "r.html"))
    finally:
        folder.chmod(0o755)


def test_report_replaces_an_old_one_and_leaves_no_temporary_files(storage_url, tmp_path):
    out = tmp_path / "r.html"
    out.write_text("old")
    run_report(storage_url, "mixed", str(out), plotlyjs="cdn")

    assert out.read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


def test_report_reads_while_a_search_holds_a_write_transaction(tmp_path):
    url = new_storage(tmp_path)
    make_study(url, "busy", [{"value": 0.5}, {"value": 0.6}])
    writer = sqlite3.connect(tmp_path / "lrtune.db", timeout=1)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE studies SET study_name = study_name")
        path = run_report(url, "busy", str(tmp_path / "r.html"), plotlyjs="cdn")
    finally:
        writer.rollback()
        writer.close()
    assert path.is_file()
