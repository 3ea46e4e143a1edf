"""The confirmed ranking: intervals over seeds, paired gains, and how show and the report word it."""

import pytest
from scipy import stats

from lrtune.formatting import format_against_lr_free, format_confirmed
from lrtune.tuner.confirm import interval, paired_gain


def test_the_interval_is_the_95_percent_t_interval_of_the_mean():
    values = [0.81, 0.86, 0.84, 0.79]
    low, high = stats.t.interval(0.95, len(values) - 1, loc=sum(values) / 4, scale=stats.sem(values))
    assert interval(values) == pytest.approx([low, high], abs=1e-6)
    assert interval([0.8]) is None


def record(winner=7, single=12, seeds=(0, 1, 2)):
    configs = [
        {"trial": 7, "role": "tuned", "runs": [0.90, 0.92, 0.91], "seeds": list(seeds), "single_run": 0.91},
        {"trial": 12, "role": "tuned", "runs": [0.88, 0.90, 0.86], "seeds": list(seeds), "single_run": 0.95},
        {"trial": 2, "role": "schedulefree", "runs": [0.85, 0.86, 0.87], "seeds": list(seeds), "single_run": 0.86},
    ]
    for c in configs:
        c["mean"], c["ci95"] = sum(c["runs"]) / 3, interval(c["runs"])
    return {"metric": "macro_f1", "top": 2, "seeds": 3, "configs": configs, "winner": winner,
            "single_run_winner": single, "still_first": winner == single, "complete": True}


def test_a_paired_gain_is_taken_seed_by_seed():
    gain, ci = paired_gain(record(), 7, 2)
    assert gain == pytest.approx(0.05) and ci == pytest.approx(interval([0.05, 0.06, 0.04]), abs=1e-9)
    assert paired_gain(record(), 7, 99) is None


def test_show_says_where_the_single_run_winner_went():
    lines = format_confirmed(record())
    assert lines[0] == "confirmed over 3 fresh seeds (validation macro-F1, best mean first):"
    assert lines[-1] == "the single-run winner, trial 12, ranks 2nd; trial 7 is first"
    assert format_confirmed(record(winner=12))[-1] == "the single-run winner, trial 12, is still first"
    assert format_confirmed(None) == []


def test_the_tuned_winner_against_lr_free_in_one_line_with_its_interval_once_confirmed():
    values = [(7, "tuned", 0.91), (12, "tuned", 0.95), (0, "baseline", 0.80), (2, "schedulefree", 0.86),
              (3, "prodigy", 0.90)]
    (single,) = format_against_lr_free(values, None, "macro_f1")
    assert single.startswith("tuned winner, trial 12: macro-F1 0.9500 against the best LR-free baseline, prodigy "
                              "(trial 3): 0.9000; gain +0.0500 (single runs")
    confirmed = record()
    gain, ci = paired_gain(confirmed, 7, 2)
    confirmed["against_lr_free"] = {"tuned": 7, "lr_free": 2, "name": "schedulefree", "gain": gain, "ci95": ci}
    (line,) = format_against_lr_free(values, confirmed, "macro_f1")
    assert line == (f"tuned winner, trial 7: macro-F1 0.9100 against the best LR-free baseline, schedulefree "
                    f"(trial 2): 0.8600; gain +0.0500 (95% interval {ci[0]:+.4f} to {ci[1]:+.4f}, over 3 seeds)")
    assert format_against_lr_free([(7, "tuned", 0.9)], None, "macro_f1") == []


def test_an_interval_past_the_metrics_range_is_clipped_and_says_so():
    two = record(seeds=(0, 1))
    two["seeds"] = 2
    for c in two["configs"]:
        c["runs"] = c["runs"][:2]
    two["configs"][0]["runs"] = [0.35, 0.99]  # two seeds far apart: the t-interval spans past 0 and 1
    two["configs"][0]["ci95"] = interval(two["configs"][0]["runs"])
    assert two["configs"][0]["ci95"][0] < 0 and two["configs"][0]["ci95"][1] > 1
    row = next(line for line in format_confirmed(two)[1].splitlines() if "7 (tuned)" in line)
    assert "0.0000 to 1.0000 (clipped to 0..1: too few seeds to say more)" in row
    plain = next(line for line in format_confirmed(record())[1].splitlines() if "7 (tuned)" in line)
    assert "clipped" not in plain
