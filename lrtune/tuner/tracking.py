"""A search's runs in the tracker a team already runs: MLflow (`--track mlflow[=URI]`) and TensorBoard
(`--track tensorboard[=DIR]`).

MLflow: a parent run for the study, one nested run per trial. TensorBoard: a
folder per trial under ``DIR/<study>/``. Each trial's run gets its parameters
and the data summary when it starts, the study's metric at every epoch as it
trains, and when it ends its other curves, its final state (complete, pruned
at epoch k, failed) and the path of its checkpoint. A retry (after Ctrl-C, a
fault or a kill) continues the run of the trial it retries: the run's name
travels in the trial's ``tracking`` attribute.

A tracker never breaks a search: its first error is said once, it is left
alone from then on, and the end of the search names the trials it did not
log, which ``lrtune track`` logs later from the storage.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from lrtune.config import CURVE_KEYS, Config
from lrtune.errors import ConfigError, first_line
from lrtune.storage import study_dir
from lrtune.training import checkpoints

ATTR = "tracking"  # on a trial: each tracker's run of it, carried by its retries


def parse(specs: list[str], cfg: Config) -> list[tuple[str, str]]:
    """``mlflow[=URI]`` and ``tensorboard[=DIR]`` as (kind, where); defaults: ``MLFLOW_TRACKING_URI`` (else
    ``sqlite:///<studies_dir>/mlflow.db``) and ``<studies_dir>/tensorboard``. Unknown kinds, and a tracker whose
    package is missing, are a ``ConfigError`` naming the extra to install."""
    targets = []
    for spec in specs:
        kind, _, where = spec.partition("=")
        kind = kind.strip()
        if kind not in TRACKERS:
            raise ConfigError(f"unknown tracker {kind!r} in --track {spec} (valid: {', '.join(TRACKERS)})")
        try:
            __import__(PACKAGES[kind])
        except ImportError:
            raise ConfigError(f"--track {kind} needs the {PACKAGES[kind]} package: pip install 'lrtune[{kind}]'") from None
        if not where:
            where = (os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(cfg.studies_dir).resolve()}/mlflow.db"
                     if kind == "mlflow" else str(Path(cfg.studies_dir) / "tensorboard"))
        targets.append((kind, where.strip()))
    return targets


def points(curves: dict[str, list[float]]) -> Iterator[tuple[str, int, float]]:
    """(curve, epoch, value) of every finite value of a trial's curves."""
    for key, values in curves.items():
        if key != "epoch":
            for epoch, value in zip(curves.get("epoch", []), values):
                if value == value:
                    yield key, int(epoch), float(value)


def state_text(trial: FrozenTrial) -> str:
    """``complete``, ``pruned at epoch k`` or ``failed: reason``."""
    if trial.state == TrialState.COMPLETE:
        return "complete"
    if trial.state == TrialState.PRUNED:
        return f"pruned at epoch {max(trial.intermediate_values, default=0)}"
    return f"failed: {trial.user_attrs.get('reason', '')}".rstrip(": ")


def data_text(summary: dict[str, Any]) -> str:
    return json.dumps({k: summary.get(k) for k in ("name", "classes", "n_train", "n_val", "n_test", "train_counts",
                                                   "val_counts", "image_size") if k in summary})


class MlflowTracker:
    """A parent run per study (tag ``lrtune.study``) in the experiment ``lrtune/<study>``, a nested run per trial."""

    kind = "mlflow"

    def __init__(self, uri: str, study: optuna.Study, cfg: Config, data: dict[str, Any]) -> None:
        for name, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10"),
                            ("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "1")):
            os.environ.setdefault(name, value)  # a server that is gone fails a call at once, not after minutes
        from mlflow import MlflowClient

        self.client, self.uri, self.metric = MlflowClient(tracking_uri=uri), uri, cfg.metric
        name = f"lrtune/{study.study_name}"
        found = self.client.get_experiment_by_name(name)
        self.experiment = found.experiment_id if found is not None else self.client.create_experiment(name)
        parents = self.client.search_runs([self.experiment], "tags.`lrtune.role` = 'study'", max_results=1)
        if parents:
            self.parent = parents[0].info.run_id
        else:
            run = self.client.create_run(self.experiment, run_name=study.study_name, tags={
                "lrtune.role": "study", "lrtune.study": study.study_name, "lrtune.data": data_text(data)})
            self.parent = run.info.run_id
            self.client.log_batch(self.parent, params=_params({k: v for k, v in _flat(cfg).items()}))
        self.runs: dict[int, str] = {}

    def start(self, number: int, params: dict[str, Any], carried: str | None, data: dict[str, Any]) -> str:
        if carried:
            self.client.update_run(carried, status="RUNNING")
            self.runs[number] = carried
            return carried
        run = self.client.create_run(self.experiment, run_name=f"trial {number}", tags={
            "mlflow.parentRunId": self.parent, "lrtune.role": "trial", "lrtune.trial": str(number),
            "lrtune.data": data_text(data)})
        self.client.log_batch(run.info.run_id, params=_params(params))
        self.runs[number] = run.info.run_id
        return run.info.run_id

    def epoch(self, number: int, epoch: int, value: float) -> None:
        if number in self.runs:
            self.client.log_metric(self.runs[number], CURVE_KEYS[self.metric], value, step=epoch)

    def end(self, trial: FrozenTrial, run_id: str, checkpoint: str, live: bool) -> None:
        from mlflow.entities import Metric

        curves = trial.user_attrs.get("curves") or {}
        main = CURVE_KEYS[self.metric]
        # Live, the run heard the metric at each epoch; a process killed between an epoch and its line left a gap.
        have = {m.step for m in self.client.get_metric_history(run_id, main)} if live else set()
        metrics = [Metric(key, value, 0, epoch) for key, epoch, value in points(curves)
                   if not (key == main and epoch in have)]
        for start in range(0, len(metrics), 500):
            self.client.log_batch(run_id, metrics=metrics[start:start + 500])
        tags = {"lrtune.state": state_text(trial), "lrtune.ended_as": str(trial.number),
                **({"lrtune.checkpoint": checkpoint} if checkpoint else {})}
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)
        status = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED"}.get(trial.state, "FAILED")
        self.client.set_terminated(run_id, status=status)

    def tag_winner(self, run_id: str) -> None:
        self.client.set_tag(run_id, "lrtune.confirmed_winner", "true")
        self.client.set_tag(self.parent, "lrtune.confirmed_winner", run_id)

    def tracked(self) -> dict[int, str]:
        """Trial number -> run id of every trial run already in the experiment."""
        runs = self.client.search_runs([self.experiment], "tags.`lrtune.role` = 'trial'", max_results=50000)
        found = {int(r.data.tags["lrtune.trial"]): r.info.run_id for r in runs}
        found.update({int(r.data.tags["lrtune.ended_as"]): r.info.run_id for r in runs if "lrtune.ended_as" in r.data.tags})
        return found


class TensorBoardTracker:
    """A folder per trial under ``DIR/<study>/``: the study's metric per epoch, the other curves, the hparams view."""

    kind = "tensorboard"

    def __init__(self, folder: str, study: optuna.Study, cfg: Config, data: dict[str, Any]) -> None:
        self.root = Path(folder) / study.study_name
        self.metric = cfg.metric
        self.writers: dict[int, Any] = {}

    def _writer(self, number: int, name: str) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        if number not in self.writers:
            self.writers[number] = SummaryWriter(log_dir=str(self.root / name))
        return self.writers[number]

    def start(self, number: int, params: dict[str, Any], carried: str | None, data: dict[str, Any]) -> str:
        name = carried or f"trial-{number}"
        writer = self._writer(number, name)
        writer.add_text("data", data_text(data))
        return name

    def epoch(self, number: int, epoch: int, value: float) -> None:
        if number in self.writers:
            self.writers[number].add_scalar(CURVE_KEYS[self.metric], value, epoch)
            self.writers[number].flush()

    def end(self, trial: FrozenTrial, run_id: str, checkpoint: str, live: bool) -> None:
        from torch.utils.tensorboard.summary import hparams

        writer = self._writer(trial.number, run_id)
        for key, epoch, value in points(trial.user_attrs.get("curves") or {}):
            if not (live and key == CURVE_KEYS[self.metric]):  # live, the metric was written as it trained
                writer.add_scalar(key, value, epoch)
        best = f"best/{self.metric}"
        params = {k: v for k, v in trial.params.items() if isinstance(v, (int, float, str, bool))}
        exp, ssi, sei = hparams(params, {best: trial.value if trial.value is not None else float("nan")})
        for summary in (exp, ssi, sei):
            writer.file_writer.add_summary(summary)
        if trial.value is not None:
            writer.add_scalar(best, trial.value, 0)
        writer.add_text("state", state_text(trial) + (f"; checkpoint {checkpoint}" if checkpoint else ""))
        writer.close()
        del self.writers[trial.number]
        (self.root / run_id / f"ended-as-{trial.number}").touch()  # a retry that ended its trial's run

    def tag_winner(self, name: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=str(self.root / name)) as writer:
            writer.add_text("confirmed", "the confirmed winner of lrtune confirm")
        (self.root / name / "confirmed-winner").touch()

    def tracked(self) -> dict[int, str]:
        if not self.root.is_dir():
            return {}
        found = {int(p.name.removeprefix("trial-")): p.name for p in self.root.glob("trial-*")
                 if p.name.removeprefix("trial-").isdigit()}
        found.update({int(p.name.removeprefix("ended-as-")): p.parent.name for p in self.root.glob("trial-*/ended-as-*")})
        return found


TRACKERS: dict[str, Callable[..., Any]] = {"mlflow": MlflowTracker, "tensorboard": TensorBoardTracker}
PACKAGES = {"mlflow": "mlflow", "tensorboard": "tensorboard"}


def _params(values: dict[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(str(k), str(v)[:6000]) for k, v in values.items()]


def _flat(cfg: Config) -> dict[str, Any]:
    from lrtune.config import to_dict

    return {f"config.{k}": v for k, v in to_dict(cfg).items() if k not in ("storage",)}


class Tracking:
    """The trackers of one process; none of their errors reaches the search. ``say`` hears the one warning."""

    def __init__(self, targets: list[tuple[str, str]], study: optuna.Study, cfg: Config, data: dict[str, Any],
                 say: Callable[[str], None], *, live: bool = True) -> None:
        self.study, self.cfg, self.data, self.say, self.live = study, cfg, data, say, live
        self.trackers: list[Any] = []
        self.broken: dict[str, str] = {}  # kind -> what broke it
        self.unlogged: dict[str, set[int]] = {kind: set() for kind, _ in targets}
        self.specs = {kind: f"{kind}={where}" for kind, where in targets}
        for kind, where in targets:
            tracker = self._safe(kind, None, lambda: TRACKERS[kind](where, study, cfg, data))
            if tracker is not None:
                self.trackers.append(tracker)

    def _safe(self, kind: str, number: int | None, call: Callable[[], Any]) -> Any:
        if kind in self.broken:
            if number is not None:
                self.unlogged[kind].add(number)
            return None
        try:
            return call()
        except Exception as exc:
            self.broken[kind] = first_line(exc)
            if number is not None:
                self.unlogged[kind].add(number)
            self.say(f"warning: tracking to {kind} failed ({first_line(exc)[:200]}); the search goes on without it, "
                     "and its end names the trials not logged")
            return None

    def start(self, trial: optuna.Trial) -> None:
        """A trial begins (or a retry continues its trial's run): its run, its parameters, the data."""
        carried = dict(trial.user_attrs.get(ATTR) or {})
        for tracker in self.trackers:
            run = self._safe(tracker.kind, trial.number, lambda t=tracker: t.start(
                trial.number, dict(trial.params), carried.get(t.kind), self.data))
            if run is not None:
                carried[tracker.kind] = run
        if carried:
            trial.set_user_attr(ATTR, carried)

    def epoch(self, number: int, epoch: int, value: float) -> None:
        for tracker in self.trackers:
            self._safe(tracker.kind, number, lambda t=tracker: t.epoch(number, epoch, value))

    def end(self, trial: FrozenTrial) -> None:
        """A trial ended: its curves, state and checkpoint; a trial queued to run again keeps its run open."""
        runs = trial.user_attrs.get(ATTR) or {}
        for tracker in self.trackers:
            if tracker.kind in runs:
                self._safe(tracker.kind, trial.number, lambda t=tracker: t.end(
                    trial, runs[t.kind], self.checkpoint(trial), self.live))

    def checkpoint(self, trial: FrozenTrial) -> str:
        path = checkpoints.trial_dir(study_dir(self.cfg.studies_dir, self.study.study_name), trial.number) / checkpoints.BEST
        return str(path.resolve()) if path.is_file() else ""

    def callback(self) -> Callable[[optuna.Study, FrozenTrial], None]:
        """A study callback: each ended trial's run is finished, unless a retry of it is queued."""

        def ended(study: optuna.Study, trial: FrozenTrial) -> None:
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if not any(t.user_attrs.get("retry_of") == trial.number for t in waiting):
                self.end(trial)

        return ended

    def progress(self, sink: Any) -> Any:
        """``sink`` that also hands each epoch's value to the trackers."""
        return _Tee(sink, self)

    def summary(self) -> list[str]:
        """One line per tracker that missed trials, with the command that logs them."""
        lines = []
        for kind, numbers in self.unlogged.items():
            if numbers:
                shown = ", ".join(map(str, sorted(numbers)))
                lines.append(f"{kind}: trial(s) {shown} were not logged ({self.broken.get(kind, '')[:120]}); "
                             f"`lrtune track --study {self.study.study_name} --to {self.specs[kind]}` logs them")
        return lines


class _Tee:
    """A progress sink that passes everything on, and each epoch's value to the tracking too."""

    def __init__(self, sink: Any, tracking: Tracking) -> None:
        self._sink, self._tracking = sink, tracking

    def __getattr__(self, name: str) -> Any:
        if self._sink is None:  # a library call without a sink: nothing to show, only the trackers to feed
            return lambda *args, **kwargs: None
        return getattr(self._sink, name)

    def epoch(self, trial: int, epoch: int, epochs: int, value: float) -> None:
        self._tracking.epoch(trial, epoch, value)
        if self._sink is not None:
            self._sink.epoch(trial, epoch, epochs, value)


def backfill(study: optuna.Study, cfg: Config, targets: list[tuple[str, str]], say: Callable[[str], None]) -> dict[str, int]:
    """Log a study's ended trials from the storage to each target, skipping trials it holds already: how many
    each target got."""
    data = study.user_attrs.get("dataset") or {}
    logged = {}
    for kind, where in targets:
        tracking = Tracking([(kind, where)], study, cfg, data, say, live=False)
        if not tracking.trackers:
            logged[kind] = 0
            continue
        tracker = tracking.trackers[0]
        have = tracking._safe(kind, None, tracker.tracked) or {}
        count = 0
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
            if trial.number in have or _requeued(study, trial):
                continue
            run = tracking._safe(kind, trial.number, lambda t=trial: tracker.start(t.number, dict(t.params), None, data))
            if run is not None and tracking._safe(kind, trial.number, lambda t=trial, r=run: tracker.end(
                    t, r, tracking.checkpoint(t), False)) is None and kind not in tracking.broken:
                count += 1
        logged[kind] = count
        for line in tracking.summary():
            say(line)
    return logged


def _requeued(study: optuna.Study, trial: FrozenTrial) -> bool:
    return trial.state == TrialState.FAIL and any(t.user_attrs.get("retry_of") == trial.number for t in study.trials)



def attach(objective: Any, study: optuna.Study, cfg: Config, say: Callable[[str], None]) -> Tracking | None:
    """With ``cfg.track``: this process's tracking, its start and epoch hooks on ``objective``; else None."""
    if not cfg.track:
        return None
    tracking = Tracking(parse(cfg.track, cfg), study, cfg, objective.data.summary(), say)
    objective.tracking = tracking
    objective.progress = tracking.progress(objective.progress)
    return tracking


def tag_winner(study: optuna.Study, cfg: Config, number: int, say: Callable[[str], None]) -> None:
    """Mark trial ``number``, the confirmed winner, in each tracker of ``cfg.track`` that logged it."""
    if not cfg.track:
        return
    tracking = Tracking(parse(cfg.track, cfg), study, cfg, study.user_attrs.get("dataset") or {}, say, live=False)
    for tracker in tracking.trackers:
        runs = tracking._safe(tracker.kind, None, tracker.tracked) or {}
        if number in runs:
            tracking._safe(tracker.kind, None, lambda t=tracker: t.tag_winner(runs[number]))
