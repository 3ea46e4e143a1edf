"""The console sink inside a long epoch: a bar on a terminal, a plain line at most every 30 s in a log."""

import io

import pytest

from lrtune import progress as progress_mod
from lrtune.progress import ConsoleProgress


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", clock)
    return clock


def epoch_of(sink, clock, *, trial=3, epoch=2, epochs=4, batches=10, seconds_each=1.0):
    for done in range(1, batches + 1):
        sink.batch(trial, epoch, epochs, done, batches, done * 32)
        clock.now += seconds_each


def test_a_long_epoch_in_a_log_gets_a_plain_line_at_most_every_30_seconds(clock):
    stream = io.StringIO()
    sink = ConsoleProgress(12, stream=stream, prefix="[worker 1] ")
    sink.start(total=12, finished=2, pruned=0, best=None)
    epoch_of(sink, clock, batches=100, seconds_each=1.0)
    lines = stream.getvalue().splitlines()
    # The first line once the epoch has run SLOW_EPOCH_S, then one every PLAIN_EVERY_S of its 100 s.
    assert 3 <= len(lines) <= 1 + 100 / progress_mod.PLAIN_EVERY_S + 1
    first = lines[0]
    assert first.startswith("[worker 1] trial 3 epoch 2/4: batch ")
    assert "images/s, epoch " in first and " left, trial " in first and "if none is pruned" in first
    # 32 images a second; 9 trials not yet started after this one, each of 4 epochs of about 100 s.
    assert "32.0 images/s" in first


def test_a_short_epoch_shows_nothing_and_quiet_shows_nothing(clock):
    stream = io.StringIO()
    epoch_of(ConsoleProgress(5, stream=stream), clock, batches=10, seconds_each=0.1)
    assert stream.getvalue() == ""
    quiet = io.StringIO()
    epoch_of(ConsoleProgress(5, stream=quiet, verbosity=0), clock, batches=100, seconds_each=1.0)
    assert quiet.getvalue() == ""


def test_the_times_left_count_the_epoch_the_trial_and_the_trials_not_yet_started(clock):
    stream = io.StringIO()
    sink = ConsoleProgress(3, stream=stream)
    sink.start(total=3, finished=0, pruned=0, best=None)
    for done in (1, 5):  # 10 batches of 1 s: at batch 5, 5 s in and 5 s left of a 10 s epoch
        clock.now = 1000.0 + done
        sink.batch(0, 1, 2, done, 10, done * 8)
    line = stream.getvalue().splitlines()[-1]
    # epoch: 5 s left; trial: 5 s + one more epoch of 10 s; study: that + 2 trials x 2 epochs x 10 s.
    assert "epoch 5s left, trial 15s, study about 55s if none is pruned" in line


def test_a_terminal_gets_a_bar_that_ends_with_the_epoch(clock):
    stream = Terminal()
    sink = ConsoleProgress(4, stream=stream)
    epoch_of(sink, clock, batches=20, seconds_each=1.0)
    shown = stream.getvalue()
    assert "trial 3 epoch 2/4" in shown and "batch" in shown and "images/s" in shown
    assert sink._epoch is not None and sink._epoch.bar is not None
    sink.epoch(3, 2, 4, 0.5)
    assert sink._epoch is None  # the bar is closed before the epoch's own line


def test_a_notebook_is_a_jupyter_kernel_not_an_imported_ipython(monkeypatch):
    import sys
    import types

    fake = types.ModuleType("IPython")
    monkeypatch.setitem(sys.modules, "IPython", fake)
    fake.get_ipython = lambda: None  # IPython imported, no shell: a plain process
    assert not progress_mod._in_notebook()
    fake.get_ipython = lambda: type("ZMQInteractiveShell", (), {})()
    assert progress_mod._in_notebook()
