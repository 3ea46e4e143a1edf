import pytest

from helpers import run_cli

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def test_lr_find_prints_the_suggestion_and_its_rule_and_writes_the_plot(tmp_path):
    plot = tmp_path / "lr.html"
    result = run_cli(
        "lr-find", "--studies-dir", str(tmp_path), "--batch-size", "32", "--start", "1e-6", "--steps", "30",
        "--plot", str(plot), **ONE_THREAD,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("suggested LR: ")
    assert "(rule: " in lines[0] or "no clear descent" in lines[0] or "too noisy" in lines[0]
    assert lines[1].startswith("rules: steepest ") and "valley" in lines[1] and "min/10" in lines[1]
    assert "sweep: 1e-06 to 10" in lines[2] and "loss ce, accum 1, batch size 32" in lines[2]
    text = plot.read_text()
    assert 'id="plot-lr-range"' in text and "smoothed loss" in text
    assert f"plot written to {plot}" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--start", "1", "--end", "0.1"], "the LR range must increase from a positive start: --start 1 --end 0.1"),
        (["--batch-size", "100000"], "fewer than one batch of 100000"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(tmp_path, args, message):
    result = run_cli("lr-find", "--studies-dir", str(tmp_path), *args, **ONE_THREAD)
    assert result.returncode == 1
    assert result.stderr.startswith("lrtune: error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


@pytest.mark.trains_nothing
def test_help_lists_the_sweep_options_and_the_search_s_data_and_training_flags(capsys):
    from lrtune.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["lr-find", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--start", "--end", "--steps", "--plot", "--data", "--model", "--batch-size", "--losses", "--accum"):
        assert flag in out
    assert "env LRTUNE_BATCH_SIZE" in out


@pytest.mark.trains_nothing
def test_search_help_names_the_lr_range_option(capsys):
    from lrtune.cli import main

    with pytest.raises(SystemExit):
        main(["search", "--help"])
    assert "--lr-range" in capsys.readouterr().out
