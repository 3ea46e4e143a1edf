import pytest

from lrtune import config
from lrtune.config import Config
from lrtune.errors import LRTuneError


def test_defaults():
    cfg = config.resolve({}, environ={})
    assert cfg == Config()
    assert config.effective_image_size(cfg) == 16
    assert config.effective_image_size(config.resolve({"data": "x.csv"}, environ={})) == 224
    assert config.effective_hflip(cfg) == 0.0
    assert config.effective_hflip(config.resolve({"data": "faces/"}, environ={})) == 0.5


def test_precedence_cli_over_env_over_file_over_defaults(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('epochs = 3\nbatch_size = 7\nlr_max = 0.5\nschedulers = ["step"]\n')
    env = {"LRTUNE_BATCH_SIZE": "9", "LRTUNE_LR_MAX": "0.25", "LRTUNE_ACCUM": "1,2"}
    cfg = config.resolve({"lr_max": "0.125", "epochs": None}, config_file=f, environ=env)
    assert cfg.epochs == 3  # file
    assert cfg.batch_size == 9  # env over file
    assert cfg.lr_max == 0.125  # cli over env
    assert cfg.schedulers == ["step"]
    assert cfg.accum == [1, 2]
    assert cfg.seed == 0  # default


def test_config_file_from_env(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("epochs = 4\n")
    assert config.resolve({}, environ={"LRTUNE_CONFIG": str(f)}).epochs == 4


def test_booleans_and_lists_from_strings():
    cfg = config.resolve({"pretrained": "false", "amp": "0", "losses": "ce, focal"}, environ={"LRTUNE_FORCE": "yes"})
    assert cfg.pretrained is False and cfg.amp is False and cfg.force is True
    assert cfg.losses == ["ce", "focal"]


@pytest.mark.parametrize(
    "given, message",
    [
        ({"trials": "0"}, "--trials must be a positive"),
        ({"trials": "-3"}, "--trials must be a positive"),
        ({"lr_min": "0.1", "lr_max": "0.01"}, "--lr-min 0.1 is greater than --lr-max 0.01"),
        ({"lr_min": "0"}, "must be positive"),
        ({"lr_max": "-1"}, "must be positive"),
        ({"epochs": "two"}, "epochs = 'two' is not a valid int"),
        ({"balance": "magic"}, "unknown balance 'magic'"),
        ({"accum": "0,2"}, "--accum must list positive"),
        ({"val_fraction": "1.5"}, "--val-fraction"),
        ({"test_fraction": "0.8"}, "--test-fraction must be at least 0 and leave training images beside --val-fraction"),
        ({"test_fraction": "-0.1"}, "--test-fraction"),
        ({"test_fraction": "0.2", "keep": "none"}, "--test-fraction scores .* which --keep none throws away"),
        ({"num_workers": "-1"}, "--num-workers must not be negative, got -1"),
        ({"threads": "-1"}, "--threads must be positive or auto, got -1"),
        ({"threads": "many"}, "threads = 'many' is not a valid int"),
        ({"warmup_epochs": "-0.5"}, "--warmup-epochs must not be negative"),
        ({"momentum": "1.2"}, "--momentum must be in"),
        ({"diverge_factor": "0.5"}, "--diverge-factor must be greater than 1"),
        ({"body_ratio": "0,1"}, r"--body-ratio must be a range LOW,HIGH within \(0, 1\], got 0,1"),
        ({"body_ratio": "0.1,2"}, r"--body-ratio must be a range LOW,HIGH within \(0, 1\], got 0.1,2"),
        ({"layer_decay": "0.9,0.5"}, r"--layer-decay must be a range LOW,HIGH within \(0, 1\], got 0.9,0.5"),
        ({"layer_decay": "0.5"}, r"--layer-decay must be a range LOW,HIGH"),
        ({"head_epochs": "3", "epochs": "3"}, "--head-epochs 3 must be less than --epochs 3"),
        ({"space": "finetune"}, "--space finetune tunes the LRs of a model that starts from weights: add --pretrained"),
        ({"space": "wide"}, "unknown space 'wide'"),
        ({"body_lrs": "both"}, "unknown body_lrs 'both'"),
        ({"warmup_max": "-1"}, "--warmup-max must not be negative"),
    ],
)
def test_bad_values_name_the_culprit(given, message):
    with pytest.raises(LRTuneError, match=message):
        config.resolve(given, environ={})


def test_threads_are_auto_by_default_and_set_by_flag_environment_or_file(tmp_path):
    assert config.resolve({}, environ={}).threads == 0
    assert config.resolve({"threads": "auto"}, environ={}).threads == 0
    assert config.resolve({}, environ={"LRTUNE_THREADS": "3"}).threads == 3
    (tmp_path / "c.toml").write_text('threads = "auto"\n')
    assert config.resolve({}, config_file=tmp_path / "c.toml", environ={"LRTUNE_THREADS": "2"}).threads == 2
    # how many threads this machine uses never changes what a study is, and a joining worker keeps its own
    assert "threads" in config.RUN_ONLY and "threads" in config.MACHINE_LOCAL


def test_equal_lr_bounds_are_allowed():
    cfg = config.resolve({"lr_min": "0.01", "lr_max": "0.01"}, environ={})
    assert cfg.lr_min == cfg.lr_max


def test_missing_and_bad_config_files(tmp_path):
    with pytest.raises(LRTuneError, match="config file not found"):
        config.resolve({}, config_file=tmp_path / "nope.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("epochz = 3\n")
    with pytest.raises(LRTuneError, match="unknown key 'epochz'"):
        config.resolve({}, config_file=bad, environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("epochs = = 3\n")
    with pytest.raises(LRTuneError, match="not valid TOML"):
        config.resolve({}, config_file=broken, environ={})


def test_example_study_configs_are_valid():
    from pathlib import Path

    files = sorted(Path(__file__).parent.parent.joinpath("studies").glob("*.toml"))
    assert {f.name for f in files} >= {"digits-lt.toml", "faces-18class.toml"}
    for f in files:
        config.resolve({}, config_file=f, environ={})


def test_fingerprint_ignores_run_only_fields_and_diff_names_changes():
    a = config.to_dict(Config())
    b = config.to_dict(Config(trials=99, workers=3, storage="sqlite:///x.db"))
    c = config.to_dict(Config(model="test_vit"))
    assert config.fingerprint(a) == config.fingerprint(b)
    assert config.fingerprint(a) != config.fingerprint(c)
    assert config.diff(a, c) == ["model: 'test_resnet' -> 'test_vit'"]


def test_a_joining_worker_takes_the_stored_config_except_what_it_was_given_and_its_machines_own():
    from lrtune import config as config_mod

    stored = config_mod.to_dict(Config(epochs=3, lr_max=0.1, schedulers=["step"], trials=12, artifacts="/shared/ck",
                                       studies_dir="/a/studies", device="cuda", data="/a/data"))
    mine = Config(studies_dir="/b/studies", trials=20, data="/b/data")
    joined = config_mod.adopt(stored, mine, given={"studies_dir", "trials", "data"})
    assert (joined.epochs, joined.lr_max, joined.schedulers, joined.artifacts) == (3, 0.1, ["step"], "/shared/ck")
    assert (joined.studies_dir, joined.trials, joined.data, joined.device) == ("/b/studies", 20, "/b/data", "auto")
    # The data's location is no part of the comparison; its classes and counts are.
    assert config_mod.diff(stored, config_mod.to_dict(joined)) == []
    counts = {"classes": ["a", "b"], "n_train": 8, "n_val": 2, "train_counts": [4, 4], "val_counts": [1, 1]}
    assert config_mod.dataset_changes(counts, {**counts, "skipped": ["x.png"]}) == []
    assert config_mod.dataset_changes(counts, {**counts, "classes": ["a", "c"]}) == ["classes: ['a', 'b'] -> ['a', 'c']"]


def test_explicit_fields_are_those_of_the_flags_the_environment_and_the_file(tmp_path):
    from lrtune import config as config_mod

    path = tmp_path / "c.toml"
    path.write_text("epochs = 4\n")
    given = config_mod.explicit_fields({"trials": 3, "lr_max": None}, config_file=path, environ={"LRTUNE_SEED": "2"})
    assert given == {"trials", "epochs", "seed"}
