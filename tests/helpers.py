"""Running the real CLI in a subprocess, and reading the study it leaves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna

import launcher

ROOT = Path(__file__).resolve().parent.parent
INJECT = Path(__file__).resolve().parent / "inject.py"
FAST = ["--epochs", "2", "--batch-size", "64"]


# The suite's searches run without the LR range test (a few seconds each) unless
# a test asks for it: LRTUNE_LR_RANGE=None gives the real default, "auto" or a flag runs it.
# One CPU thread, unless a test asks for --threads auto (LRTUNE_THREADS=None): runs that compare exact values
# across processes need the same count in each, and one thread never collapses beside other work.
QUICK_ENV = {"LRTUNE_LR_RANGE": "off", "LRTUNE_THREADS": "1"}


def cli_env(**extra: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRTUNE_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(QUICK_ENV)
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def lrtune_cmd(*args: str, inject: str | None = None) -> list[str]:
    if inject:
        return [sys.executable, str(INJECT), inject, *args]
    return [sys.executable, "-m", "lrtune", *args]


def run_cli(
    *args: str, inject: str | None = None, timeout: float = 600, fresh: bool = False, **env: str | None
) -> subprocess.CompletedProcess:
    """``lrtune ARGS`` in a process of its own, to its end. ``fresh``: ``python -m lrtune`` in a new
    interpreter (for what applies only at startup); otherwise forked from one that imported lrtune once."""
    if fresh:
        return subprocess.run(
            lrtune_cmd(*args, inject=inject), capture_output=True, text=True, timeout=timeout, env=cli_env(**env),
            cwd=ROOT,
        )
    return launcher.run(list(args), env=cli_env(**env), cwd=ROOT, inject=inject, timeout=timeout)


def load(studies_dir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{studies_dir / 'lrtune.db'}")


def states(study: optuna.Study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out
