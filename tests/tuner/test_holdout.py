import numpy as np
import optuna

import lrtune
from lrtune.config import Config
from lrtune.formatting import format_test_split
from lrtune.training import checkpoints
from lrtune.tuner import holdout

TINY = dict(epochs=1, batch_size=128, image_size=8, sampler="random", pruner="none")


def _predictions(n: int, right: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 5, n)
    return targets, np.where(rng.random(n) < right, targets, (targets + 1) % 5)


def test_a_clear_gain_holds_and_a_tiny_test_split_says_its_interval_is_wide():
    targets, good = _predictions(2000, 0.95, 0)
    _, poor = _predictions(2000, 0.6, 0)
    record = holdout.test_record(targets, {"best": good, "baseline": poor}, 5, trials={"best": 7, "baseline": 0})
    assert record["gain"]["holds"] and record["gain"]["ci95"][0] > 0
    assert record["best"]["ci95"][0] < record["best"]["value"] < record["best"]["ci95"][1]
    assert "note" not in record
    small = holdout.test_record(targets[:40], {"best": poor[:40], "baseline": poor[:40]}, 5,
                                trials={"best": 7, "baseline": 0})
    assert small["gain"]["value"] == 0 and not small["gain"]["holds"]
    assert "40 test images give intervals" in small["note"]
    lines = format_test_split(small)
    assert lines[0].startswith("test split (40 images, no trial saw them): best trial 7: test macro-F1")
    assert any("does not hold on the test split" in line for line in lines)
    assert format_test_split(None) == []


def test_a_search_with_a_test_split_keeps_the_baselines_weights_and_scores_both(tmp_path):
    cfg = Config(trials=3, studies_dir=str(tmp_path), test_fraction=0.2, keep="best", **TINY)
    study = lrtune.search(config=cfg)
    record = study.user_attrs["test_split"]
    best, baseline = holdout.scored_trials(study)
    assert record["trials"] == {"best": best.number, "baseline": baseline.number} and record["missing"] == []
    assert record["n_test"] == study.user_attrs["dataset"]["n_test"] > 0
    for role in ("best", "baseline"):
        low, high = record[role]["ci95"]
        assert 0 <= low <= record[role]["value"] <= high <= 1
    kept = checkpoints.weight_files(tmp_path / study.study_name)
    assert {best.number, baseline.number} <= set(kept)
    assert holdout.is_current(study, cfg)
    # The record follows the best trial: a better trial added later makes it stale.
    study.add_trial(optuna.trial.create_trial(value=2.0, params=best.params, distributions=best.distributions))
    assert not holdout.is_current(study, cfg)


def test_without_a_test_split_nothing_is_scored_or_kept_for_it(tmp_path):
    study = lrtune.search(config=Config(trials=2, studies_dir=str(tmp_path), keep="best", **TINY))
    assert "test_split" not in study.user_attrs
    assert "n_test" not in study.user_attrs["dataset"]
