"""The ``lrtune`` command's own process: it ends without tearing down its heap, and loses nothing by it."""

from __future__ import annotations

import subprocess
import sys

from helpers import ROOT, run_cli

# ``lrtune.cli.main.run`` with ``main`` replaced by what the test needs of a command.
PROGRAM = """
import atexit, importlib, pathlib, sys, threading, time
cli = importlib.import_module("lrtune.cli.main")
out = pathlib.Path(sys.argv[1])

def command(argv=None):
    atexit.register(lambda: (out / "exit-handler").write_text("ran"))
    def late():
        time.sleep(0.5)
        (out / "late-thread").write_text("done")
    if "thread" in sys.argv:
        threading.Thread(target=late).start()  # not a daemon: Python's exit waits for it
    print("all of the output", end="")  # unflushed when the command returns
    return 3

cli.main = command
cli.run()
"""


def _run(tmp_path, *args):
    return subprocess.run([sys.executable, "-c", PROGRAM, str(tmp_path), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


def test_the_command_ends_with_its_exit_code_its_output_flushed_and_its_exit_handlers_run(tmp_path):
    done = _run(tmp_path)
    assert done.returncode == 3 and done.stdout == "all of the output"
    assert (tmp_path / "exit-handler").read_text() == "ran"


def test_a_thread_still_working_is_waited_for_as_pythons_own_exit_waits(tmp_path):
    done = _run(tmp_path, "thread")
    assert done.returncode == 3 and done.stdout == "all of the output"
    assert (tmp_path / "late-thread").read_text() == "done"
    assert (tmp_path / "exit-handler").read_text() == "ran"


def test_python_m_lrtune_is_the_command(tmp_path):
    bad = run_cli("search", "--fuse", "0", "--studies-dir", str(tmp_path), fresh=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == "lrtune: error: --fuse: fuse must be a positive number of trials or auto, got 0"
