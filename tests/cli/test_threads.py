"""--threads auto beside a busy process: the search measures the counts on the cores it may use and takes one
thread when a second would share its core with another process. It asserts the count the search chose, never
a time."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from helpers import FAST, ROOT, cli_env, lrtune_cmd

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs two cores to pin to"
)


def test_beside_a_busy_process_auto_takes_one_thread_on_two_cores(tmp_path, augment):
    pair = sorted(os.sched_getaffinity(0))[:2]
    busy = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
    try:
        os.sched_setaffinity(busy.pid, {pair[0]})  # it owns one of the search's two cores
        done = subprocess.run(
            lrtune_cmd("search", "--trials", "1", *FAST, "--studies-dir", str(tmp_path)),
            capture_output=True, text=True, cwd=ROOT, timeout=600, env=cli_env(LRTUNE_THREADS=None),
            preexec_fn=lambda: os.sched_setaffinity(0, set(pair)),
        )
    finally:
        busy.kill()
        busy.wait()
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stderr.splitlines() if line.startswith("threads: "))
    assert line.startswith("threads: 1 ("), line
    if "measured" in line:  # unmeasured only where a CPU quota leaves one core
        rates = {int(n): float(rate.replace(",", "")) for rate, n in re.findall(r"([\d,.]+) at (\d+)", line)}
        assert sorted(rates) == [1, 2] and rates[1] > rates[2], line


@pytest.mark.trains_nothing
def test_a_bad_thread_count_is_one_line(tmp_path):
    done = subprocess.run(lrtune_cmd("search", "--threads", "-2", "--studies-dir", str(tmp_path)),
                          capture_output=True, text=True, cwd=ROOT, timeout=120, env=cli_env())
    assert done.returncode == 1 and done.stderr == "lrtune: error: --threads must be positive or auto, got -2\n"
