import numpy as np

from lrtune.config import Config
from lrtune.training.datasets import class_counts
from lrtune.training.run import load_training_data


def test_a_test_fraction_holds_out_a_stratified_test_split_and_validation_keeps_its_share(tmp_path):
    plain = load_training_data(Config(studies_dir=str(tmp_path), image_size=8))
    data = load_training_data(Config(studies_dir=str(tmp_path), image_size=8, test_fraction=0.2))
    n = len(data.imageset.labels)
    assert len(plain.test_idx) == 0 and "n_test" not in plain.summary()
    parts = [data.train_idx, data.val_idx, data.test_idx]
    assert sorted(np.concatenate(parts).tolist()) == list(range(n))
    assert len(data.val_idx) == len(plain.val_idx) and len(data.test_idx) == round(0.2 * n)
    share = class_counts(data.imageset.labels[data.test_idx], 10) / class_counts(data.imageset.labels, 10)
    assert np.all(share > 0.1) and np.all(share < 0.3)
    summary = data.summary()
    assert summary["n_test"] == len(data.test_idx) and sum(summary["test_counts"]) == len(data.test_idx)
    again = load_training_data(Config(studies_dir=str(tmp_path), image_size=8, test_fraction=0.2))
    np.testing.assert_array_equal(again.test_idx, data.test_idx)
