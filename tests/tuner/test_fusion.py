"""The threads of a fused group."""

from lrtune.training.threads import ThreadGuard
from lrtune.tuner.fusion import fused_threads


def _guard(threads: int, budget: int, applied: list[int]) -> ThreadGuard:
    return ThreadGuard(threads, budget=budget, apply=applied.append)


def test_fused_passes_leave_one_of_the_budgets_threads_to_the_trials():
    applied, said = [], []
    fused = fused_threads(_guard(2, 4, applied), 4, said.append)
    assert fused.threads == 3 and fused.budget == 4 and applied == [3] and not fused.fixed
    assert said == ["threads: 3 for 4 fused trials (of 4: the trials report, checkpoint and sample beside the passes)"]
    assert fused_threads(_guard(1, 2, applied), 8, said.append).threads == 1
    assert fused_threads(_guard(1, 1, applied), 2, said.append).threads == 1  # never fewer than one


def test_one_trial_keeps_the_guard_and_its_count():
    applied, said = [], []
    guard = _guard(2, 4, applied)
    assert fused_threads(guard, 1, said.append) is guard
    assert applied == [2] and said == []


def test_a_fused_search_with_auto_threads_trains_its_passes_on_one_fewer_and_says_so(tmp_path):
    import torch

    import lrtune
    from lrtune.training import threads

    class Messages:  # a progress sink that keeps its lines
        def __init__(self) -> None:
            self.messages: list[str] = []

        def message(self, text: str) -> None:
            self.messages.append(text)

        def start(self, **kwargs) -> None:
            pass

        def count(self, *args) -> None:
            pass

        def epoch(self, *args) -> None:
            pass

        def trial_done(self, *args) -> None:
            pass

    before = torch.get_num_threads()
    sink = Messages()
    study = lrtune.search(config=lrtune.Config(trials=2, epochs=1, fuse=2, lr_range="off", studies_dir=str(tmp_path)),
                          progress=sink)
    assert torch.get_num_threads() == before  # the caller's count, as it was
    budget = threads.available_cores()[0]
    fused = [m for m in sink.messages if " fused trials (of " in m]
    assert fused == [f"threads: {max(1, budget - 1)} for 2 fused trials (of {budget}: the trials report, checkpoint "
                     "and sample beside the passes)"], sink.messages
    assert len({t.user_attrs.get("fused_group") for t in study.trials if t.number > 0}) == 1
