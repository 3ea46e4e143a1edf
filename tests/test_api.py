"""The public API: the README's "From Python" code, Ctrl-C inside search(), errors and silence."""

import re
import signal

import pytest

import lrtune
from lrtune.training import checkpoints

ROOT_README = __import__("helpers").ROOT / "README.md"


def readme_python_example(index: int = 0) -> str:
    text = ROOT_README.read_text()
    section = text[text.index("## From Python") :]
    return re.findall(r"```python\n(.*?)```", section, re.S)[index]


def test_the_readme_example_runs_a_search_prints_the_best_trial_and_writes_the_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_python_example(), "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    study = lrtune.open_study(studies_dir=tmp_path / "studies")
    best = lrtune.best_trial(study=study)
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == 3
    assert out[0].startswith(f"best trial {best.number}: macro-F1 {best.value:.4f}")
    report = tmp_path / out[-1]
    assert report.is_file() and report.name == "report.html" and "plotly" in report.read_text()


def test_the_readme_example_of_your_own_model_loss_and_data_searches_them(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_python_example(1), "README.md", "exec"), {"__name__": "readme"})
    name, params = capsys.readouterr().out.strip().split(" ", 1)
    assert name == "digits-8px-my-net"
    study = lrtune.open_study(name=name, studies_dir=tmp_path / "studies")
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == 3
    assert study.user_attrs["config"]["losses"] == ["ce", "object:tempered_ce"]
    assert study.user_attrs["dataset"]["n_train"] == 1400 and "lr" in params


class InterruptAt:
    """A progress sink that presses Ctrl-C during one trial's epoch."""

    def __init__(self, trial: int, epoch: int) -> None:
        self.at = (trial, epoch)

    def epoch(self, trial, epoch, epochs, macro_f1):
        if (trial, epoch) == self.at:
            signal.raise_signal(signal.SIGINT)

    def message(self, text): ...

    def start(self, **counts): ...

    def count(self, what, done, total): ...

    def trial_done(self, *args): ...


def test_ctrl_c_inside_search_leaves_a_study_that_the_next_call_resumes(tmp_path):
    config = lrtune.Config(trials=3, epochs=4, pruner="none", batch_size=64, studies_dir=str(tmp_path), study="s")
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(lrtune.SearchInterrupted, match="interrupted by SIGINT") as info:
        lrtune.search(config=config, progress=InterruptAt(trial=1, epoch=2))
    assert info.value.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is handler  # the caller's handler is back
    on_disk = checkpoints.load(tmp_path / "s" / "trials" / "1" / "last.pt")["run"]["epoch"]
    stopped = lrtune.open_study(name="s", studies_dir=tmp_path).trials
    assert [t.state.name for t in stopped] == ["COMPLETE", "FAIL", "WAITING"]
    assert stopped[1].user_attrs["reason"] == "interrupted"

    study = lrtune.search(config=config)
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == 1)
    assert retry.state.name == "COMPLETE" and retry.params == stopped[1].params
    assert retry.user_attrs["resumed_at_epoch"] == on_disk + 1
    assert retry.user_attrs["curves"]["epoch"] == [1, 2, 3, 4]
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == 3


def test_search_prints_nothing_without_a_sink_and_raises_typed_one_line_errors(tmp_path, capfd):
    config = lrtune.Config(trials=1, epochs=1, studies_dir=str(tmp_path))
    lrtune.search(config=config)
    assert capfd.readouterr() == ("", "")
    for bad, kind in (
        (lrtune.Config(model="no_such_model", studies_dir=str(tmp_path), study="m"), lrtune.ModelError),
        (lrtune.Config(trials=0, studies_dir=str(tmp_path)), lrtune.ConfigError),
        (lrtune.Config(data=str(tmp_path / "missing"), studies_dir=str(tmp_path)), lrtune.DataError),
        (lrtune.Config(epochs=3, studies_dir=str(tmp_path)), lrtune.StudyError),
    ):
        with pytest.raises(kind) as info:
            lrtune.search(config=bad)
        assert "\n" not in str(info.value)
    with pytest.raises(lrtune.StorageError, match="unknown study 'nope'"):
        lrtune.open_study(name="nope", studies_dir=tmp_path)


class Messages(InterruptAt):
    def __init__(self) -> None:
        super().__init__(trial=-1, epoch=-1)
        self.messages: list[str] = []

    def message(self, text):
        self.messages.append(text)


def test_search_chooses_its_threads_says_so_and_leaves_the_callers_count_as_it_was(tmp_path):
    import torch

    from lrtune.training import threads

    before = torch.get_num_threads()
    caller = threads.available_cores()[0] + 1  # a count the search never chooses
    torch.set_num_threads(caller)
    sink = Messages()
    try:
        lrtune.search(config=lrtune.Config(trials=1, epochs=1, studies_dir=str(tmp_path)), progress=sink)
        assert torch.get_num_threads() == caller
    finally:
        torch.set_num_threads(before)
    chosen = [m for m in sink.messages if m.startswith("threads: ")]
    assert len(chosen) == 1 and "cores available" in chosen[0], sink.messages


def test_the_public_surface_is_keyword_only():
    import inspect

    for name in (
        "search", "open_study", "list_studies", "best_trial", "write_report", "load_config",
        "train", "load_model", "predict", "export_config", "export_onnx", "lr_find",
    ):
        params = inspect.signature(getattr(lrtune, name)).parameters.values()
        assert all(p.kind == inspect.Parameter.KEYWORD_ONLY for p in params), name
    assert set(lrtune.__all__) <= set(dir(lrtune))
