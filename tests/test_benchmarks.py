"""The recorded learning-curve table and the search-quality harness that replays searches on it."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TABLES = ROOT / "benchmarks" / "tables"
NAMES = sorted(p.name.removesuffix(".quick.json") for p in TABLES.glob("*.quick.json"))  # a table, and its stored figures
EXACT = ("random, no pruning", "baseline trial alone")  # no model of the space in them: the same on any machine


def _harness():
    spec = importlib.util.spec_from_file_location("search_quality", ROOT / "benchmarks" / "search_quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", NAMES)
def test_the_recorded_table_loads_whole(name):
    table = _harness().Table(TABLES / f"{name}.json.gz")
    assert table.meta["data"] == name
    assert len(table.rows) == table.meta["grid_size"]
    assert table.accums == [1, 2, 4, 8] and len(table.schedulers) == 3 and len(table.losses) == 4
    assert 0.5 < table.oracle <= 1
    assert len(table.range_tests) >= 30
    for row in table.rows:
        finished = row["diverged_at"] is None
        assert len(row["val_f1"]) == len(row["epoch_s"]) == (table.meta["epochs"] if finished else row["diverged_at"] - 1)


@pytest.mark.parametrize("name", NAMES)
def test_the_quick_harness_reproduces_its_stored_figures(name):
    table = TABLES / f"{name}.json.gz"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "search_quality.py"), str(table), "--quick", "--json", "--jobs", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    figures, stored = json.loads(result.stdout), json.loads((TABLES / f"{name}.quick.json").read_text())
    assert set(figures["strategies"]) == set(stored["strategies"])
    assert figures["oracle_test_f1"] == stored["oracle_test_f1"]
    for strategy in (*EXACT, *(n for n in stored["strategies"] if n.startswith("LR grid"))):
        assert figures["strategies"][strategy] == stored["strategies"][strategy], strategy
    for strategy, summary in figures["strategies"].items():
        assert summary["seeds"] == stored["strategies"][strategy]["seeds"]
        assert all(0 <= r <= figures["oracle_test_f1"] for r in summary["regret"])
        assert all(0 <= r <= figures["oracle_val_f1"] for r in summary["val_regret"])
    assert figures["best_val_test_f1"] == stored["best_val_test_f1"]
    assert figures["lr_transfer"] == stored["lr_transfer"]


def test_the_range_test_effect_counts_the_seeds_at_or_below_the_target_ratio():
    harness = _harness()
    table = harness.Table(TABLES / "digits-lt.json.gz")

    def fig(near, epochs):
        levels = {str(level): near for level in harness.LEVELS}
        return {"epochs_to_near": near, "epochs_to_near_val": near, "epochs": epochs, "regret": 0.0, "val_regret": 0.0,
                "epochs_to": levels, "epochs_to_val": levels}

    off = [fig(None, 100)] * 6
    auto = [fig(20, 100), fig(60, 100), fig(61, 100), fig(None, 100), fig(None, 100), fig(None, 40)]
    effect = harness.range_test_effect(table, off, auto)
    assert [round(r, 2) for r in effect["ratios"]] == [0.2, 0.6, 0.61, 1.0, 1.0, 0.4]
    assert effect["at_most_target"] == {"test": 3, "validation": 3}
    assert effect["ratio"][1] == 0.6  # the lower middle of an even count: half the seeds at or below decide it


def test_the_gpu_smoke_script_passes_every_command_on_the_cpu_through_the_device_path(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_smoke.py"), "--smoke", "--work", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    steps = [line for line in lines[1:-1] if line.startswith(("PASS", "FAIL"))]
    names = [line[6:40].strip() for line in steps]
    assert names == ["search, defaults", "search, --workers 2", "write the JPEG folder",
                     "search, JPEGs, test_efficientnet", "lr-find", "train", "predict", "export, onnx", "report"]
    assert all(line.startswith("PASS") for line in steps), result.stdout
    assert lines[-1].startswith("PASS  9 steps in ")
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "report.html").is_file()
    assert "images/s" in steps[0] and "images/s" in steps[5]


def test_the_seed_job_script_runs_its_search_and_projects_the_full_scale_on_the_cpu(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "seed_job.py"), "--smoke", "--work",
                             str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("photos: 126 written in ")
    assert "2 trials finished" in lines[1] and "images/s in total" in lines[1]
    assert lines[2].startswith("full scale, projected: ") and "training images / " in lines[2]
    record = json.loads((tmp_path / "smoke" / "seed_job.json").read_text())
    assert record["finished"] == 2 and record["epochs"] == 2 and record["projected_full_s"] > 0


def _gpu_smoke(script: str, tmp_path) -> subprocess.CompletedProcess:
    """A GPU benchmark's ``--smoke`` run on the CPU, its JSON written under ``tmp_path / "out"``."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke", "--work", str(tmp_path),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_the_gpu_throughput_script_runs_every_part_and_its_table_on_the_cpu(tmp_path):
    result = _gpu_smoke("gpu_throughput.py", tmp_path)
    assert "| workers | compile off | compile on (reduce-overhead) |" in result.stdout
    figures = json.loads((tmp_path / "out" / "gpu_throughput.json").read_text())
    assert figures["search_table_images_per_s"]["workers 2, compile off"] > 0
    assert figures["digits_2_images_per_s"] > 0 and figures["jpeg_trial_images_per_s"] > 0


def test_the_gpu_fuse_script_compares_fused_groups_with_workers_on_the_cpu(tmp_path):
    result = _gpu_smoke("gpu_fuse.py", tmp_path)
    assert "| count | --fuse K, images/s | --workers N, images/s |" in result.stdout
    figures = json.loads((tmp_path / "out" / "gpu_fuse.json").read_text())
    assert sorted(figures["searches"]) == ["1", "2"]
    assert all(row["fuse"] > 0 and row["workers"] > 0 for row in figures["searches"].values())
    assert sorted(figures["probe"]) == ["1", "2"] and all(row["images_per_s"] > 0 for row in figures["probe"].values())


def _confirm_quality():
    spec = importlib.util.spec_from_file_location("confirm_quality", ROOT / "benchmarks" / "confirm_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_confirmation_summary_pairs_each_study_and_counts_where_the_winners_differ():
    def row(single, confirmed, single_test, confirmed_test, tuned_test, prodigy, schedulefree):
        return {"single_run_winner": single, "confirmed_winner": confirmed, "single_test": single_test,
                "confirmed_test": confirmed_test, "tuned_test": tuned_test, "prodigy_test": prodigy,
                "schedulefree_test": schedulefree, "search_epochs": 100, "confirm_epochs": 180}

    rows = [row(3, 3, 0.80, 0.80, 0.80, 0.70, 0.75), row(4, 7, 0.80, 0.85, 0.85, 0.90, 0.60),
            row(5, 2, 0.90, 0.88, 0.90, 0.80, 0.70)]
    summary = _confirm_quality().summarize(rows)
    assert summary["studies"] == 3 and summary["winner_differs"] == 2
    differ = summary["confirmed_minus_single_where_they_differ"]
    assert differ["n"] == 2 and round(differ["mean"], 6) == 0.015
    assert (differ["higher"], differ["lower"], differ["equal"]) == (1, 1, 0)
    assert summary["confirmed_minus_single_over_all"]["equal"] == 1
    assert [round(d, 6) for d in (summary["tuned_minus_prodigy"]["mean"], summary["tuned_minus_best_lr_free"]["mean"])] \
        == [round((0.10 - 0.05 + 0.10) / 3, 6), round((0.05 - 0.05 + 0.10) / 3, 6)]
    assert summary["tuned_minus_best_lr_free"]["lower"] == 1
    assert summary["confirm_epochs_per_search_epoch"] == 1.8 and summary["search_epochs_per_study"] == 100


def test_the_confirmation_benchmark_runs_its_studies_and_summarizes_them_on_the_cpu(tmp_path):
    out = tmp_path / "out.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "confirm_quality.py"), "--smoke", "--work",
                             str(tmp_path / "work"), "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads(out.read_text())
    [row] = record["rows"]
    assert row["seed"] == 0 and 3 * 2 < row["search_epochs"] <= 4 * 2  # a tuned trial may be pruned after its first epoch
    # the baseline and the two LR-free trials (never pruned), and the tuned one if it completed: 2 seeds, 2 epochs each
    assert row["confirm_epochs"] in (3 * 2 * 2, 4 * 2 * 2)
    assert all(0 <= row[k] <= 1 for k in ("single_test", "confirmed_test", "prodigy_test", "schedulefree_test"))
    assert record["summary"]["studies"] == 1
    assert record["summary"]["confirm_epochs_per_search_epoch"] == row["confirm_epochs"] / row["search_epochs"]


def test_the_busy_machine_benchmark_times_a_search_alone_and_beside_a_busy_process(tmp_path):
    out = tmp_path / "busy.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "busy_machine.py"), "--smoke", "--work",
                             str(tmp_path), "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("| variant | busy processes | wall time | × its alone time | runs |")
    record = json.loads(out.read_text())
    assert [(row["variant"], row["busy"]) for row in record["rows"]] == [("auto", 0), ("auto", 1)]
    assert all(row["exit"] == 0 for row in record["rows"])
    auto = next(row for row in record["rows"] if row["variant"] == "auto" and row["busy"] == 1)
    assert any(line.startswith("threads: ") for line in auto["threads"])  # what auto chose, as it said it


def test_the_fuse_benchmark_measures_each_count_and_runs_its_searches(tmp_path):
    out = tmp_path / "fuse.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fuse_throughput.py"), "--smoke", "--out",
                             str(out)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads(out.read_text())
    assert sorted(record["throughput"]["test_resnet@native"]) == ["1", "2"]
    assert record["fuses"] == {"test_resnet": "fuses"}
    assert [row["fuse"] for row in record["searches"]] == [1, 2] and all(row["exit"] == 0 for row in record["searches"])
    assert all(row["complete"] + row["pruned"] == 3 for row in record["searches"])


def test_the_layer_benchmark_times_each_convolution_of_the_default_model_both_ways(tmp_path):
    out = tmp_path / "layers.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fuse_layers.py"), "--smoke", "--out",
                             str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 15 and all(row["grouped_ms"] > 0 and row["wide_ms"] > 0 for row in rows)
    assert {tuple(row["kernel"]) for row in rows} == {(1, 1), (3, 3)}


def test_the_memory_format_benchmark_times_each_arm_in_both_layouts(tmp_path):
    out = tmp_path / "format.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory_format.py"), "--smoke", "--out",
                             str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(row["runs"], row["threads"]) for row in rows] == [(1, 1), (1, 2), (2, 2)]
    assert all(row["nchw"] > 0 and row["channels_last"] > 0 for row in rows)


def test_the_pass_timer_counts_every_pass_of_a_fused_search(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fused_passes.py"), "--trials", "3", "--epochs",
                             "1", "--fuse", "2", "--lr-range", "off", "--studies-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    # 3 trials of 1 epoch: each trained in one pass, alone or beside another
    assert sum(int(row[0]) * int(row[3]) for row in rows[1:]) == 3, result.stdout
    assert "trial-epochs" in result.stdout and " 3 trial-epochs" in result.stdout, result.stdout


def test_the_fuse_quality_benchmark_pairs_each_seed_with_and_without_fusing(tmp_path):
    out = tmp_path / "quality.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fuse_quality.py"), "--smoke", "--fuse", "2",
                             "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads(out.read_text())
    assert [(row["seed"], row["fuse"]) for row in record["rows"]] == [(0, 1), (0, 2)]
    assert record["summary"]["pairs"] == 1 and 0 <= record["summary"]["fused_higher"] <= 1


def test_the_multihead_benchmark_pairs_each_seed_of_the_two_models_on_held_out_persons(tmp_path):
    out = tmp_path / "multihead.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "multihead.py"), "--smoke", "--out", str(out)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads(out.read_text())
    assert [(row["seed"], row["arm"]) for row in record["rows"]] == [(0, "plain"), (0, "multihead")]
    assert all(0 <= row["test"] <= 1 and row["n_test"] > 0 for row in record["rows"])
    assert record["summary"]["pairs"] == 1


def test_the_checkpoint_size_benchmark_writes_a_trials_files_and_its_estimate_holds(tmp_path):
    out = tmp_path / "sizes.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "checkpoint_size.py"), "--smoke", "--out",
                             str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(out.read_text())
    assert row["model"] == "test_resnet" and row["best_pt"] < row["last_pt"]
    assert 0.9 < row["estimated_last_pt"] / row["last_pt"] < 1.1  # what the warning before a search counts on


def test_the_finetune_benchmark_pretrains_then_pairs_every_arm_on_the_test_split(tmp_path):
    out = tmp_path / "finetune.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "finetune_space.py"), "--smoke", "--out",
                             str(out)], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    assert sorted(record["summary"]) == sorted(["lr-only", "ratio", "layer-decay", "ratio, wd 0.1", "recipe"])
    assert all(0.0 <= row["test"] <= 1.0 for row in record["rows"])
    recipe = next(row for row in record["rows"] if row["arm"] == "recipe")
    assert recipe["best_params"]["body_ratio"] == pytest.approx(0.1)  # slice(lr/10, lr)


def test_the_estimate_benchmark_times_a_search_against_its_estimate(tmp_path):
    out = tmp_path / "estimate.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "estimate_accuracy.py"), "--smoke", "--out",
                             str(out)], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["estimate_line"].startswith("estimate: about ") and row["estimate_s"] >= 0
    assert 0 < row["unpruned_s"] <= row["unpruned_total_s"]


def test_the_startup_benchmark_times_imports_and_a_dry_run_at_both_collector_thresholds_and_a_searchs_end(tmp_path):
    out = tmp_path / "startup.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "startup.py"), "--smoke", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads(out.read_text())
    assert record["rounds"] == 1 and record["cli_thresholds"] == [50_000, 20, 100]
    assert record["default_thresholds"] != record["cli_thresholds"]
    assert all(len(values) == 1 and values[0] > 0 for values in record["seconds"].values())
    assert set(record["seconds"]) == {"imports_default", "imports_cli", "dry_run_default", "dry_run_cli",
                                      "end_python_exit", "end_run"}
