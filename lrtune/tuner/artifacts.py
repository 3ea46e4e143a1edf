"""Checkpoints any machine can read: a trial's ``last.pt`` and ``best.pt`` in an Optuna artifact store.

``--artifacts`` names the store: a folder (a shared mount), ``s3://bucket/prefix``
or ``gs://bucket/prefix``. Each epoch's ``last.pt`` is uploaded, on the
checkpoint writer's thread, under a name of its own; the trial's ``checkpoint``
attribute then names it, and the one before it is removed. A retry on another
machine downloads the checkpoint its attribute names and continues from the
next epoch; when it cannot, it starts from epoch 1 and says why in
``resume_failed``. At the end, ``best.pt`` is uploaded with
``optuna.artifacts.upload_artifact``, so optuna-dashboard lists it with the trial.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore

from lrtune.errors import ConfigError, first_line

CHECKPOINT_ATTR = "checkpoint"  # trial user attribute: {"id": artifact id, "epoch": n}


def open_store(location: str) -> Any:
    """The artifact store at ``location``: a folder, ``s3://bucket[/prefix]`` or ``gs://bucket[/prefix]``."""
    match = re.match(r"^(s3|gs)://([^/]+)/?(.*)$", location)
    if match is None:
        folder = Path(location)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--artifacts {location}: cannot create the folder: {first_line(exc)}") from None
        return FileSystemArtifactStore(folder)
    scheme, bucket, _ = match.groups()
    try:
        if scheme == "s3":
            from optuna.artifacts import Boto3ArtifactStore

            return Boto3ArtifactStore(bucket)
        from optuna.artifacts import GCSArtifactStore

        return GCSArtifactStore(bucket)
    except ImportError as exc:
        raise ConfigError(f"--artifacts {location} needs {'boto3' if scheme == 's3' else 'google-cloud-storage'}: "
                          f"{first_line(exc)}") from None


def _prefix(location: str) -> str:
    match = re.match(r"^(?:s3|gs)://[^/]+/?(.*)$", location)
    prefix = match.group(1).strip("/") if match else ""
    return f"{prefix}/" if prefix else ""


class RemoteCheckpoints:
    """One study's checkpoints in an artifact store."""

    def __init__(self, location: str, study_key: str) -> None:
        self.location = location
        self.store = open_store(location)
        self.prefix = _prefix(location) + re.sub(r"[^A-Za-z0-9._-]+", "_", study_key)

    def artifact_id(self, trial_number: int, epoch: int) -> str:
        return f"{self.prefix}-trial{trial_number}-epoch{epoch}-last.pt"

    def upload_last(self, trial: optuna.Trial, path: Path, epoch: int) -> None:
        """Upload ``path`` (the trial's ``last.pt`` after ``epoch``), point the trial at it, drop the one before.

        A failed upload does not stop training: the trial's ``upload_failed``
        says why, and its previous checkpoint stays the one a retry reads.
        """
        storage = trial.storage
        trial_id = trial._trial_id
        try:
            previous = storage.get_trial(trial_id).user_attrs.get(CHECKPOINT_ATTR)
            new_id = self.artifact_id(trial.number, epoch)
            with open(path, "rb") as f:
                self.store.write(new_id, f)
            storage.set_trial_user_attr(trial_id, CHECKPOINT_ATTR, {"id": new_id, "epoch": epoch})
        except Exception as exc:
            try:
                storage.set_trial_user_attr(trial_id, "upload_failed", f"epoch {epoch}: {first_line(exc)}")
            except Exception:
                pass
            return
        if previous and previous.get("id") != new_id:
            self.discard(previous)

    def take_over(self, trial: optuna.Trial, retry_of: int) -> dict | None:
        """Trial ``retry_of``'s uploaded checkpoint, now named by the retry ``trial`` (None when it has none)."""
        storage = trial.storage
        old_id = storage.get_trial_id_from_study_id_trial_number(trial.study._study_id, retry_of)
        checkpoint = storage.get_trial(old_id).user_attrs.get(CHECKPOINT_ATTR)
        if checkpoint:
            storage.set_trial_user_attr(trial._trial_id, CHECKPOINT_ATTR, checkpoint)
        return checkpoint

    def discard(self, checkpoint: dict | None) -> None:
        if not checkpoint:
            return
        try:
            self.store.remove(checkpoint["id"])
        except Exception:  # already gone, or the store is out of reach: only space is lost
            pass

    def discard_trial(self, trial: optuna.Trial) -> None:
        """Remove the trial's uploaded ``last.pt``: it has ended and nothing continues from it."""
        self.discard(trial.storage.get_trial(trial._trial_id).user_attrs.get(CHECKPOINT_ATTR))

    def fetch(self, trial: optuna.Trial, retry_of: int, dest: Path) -> str | None:
        """Download the checkpoint of trial ``retry_of`` to ``dest``.

        Returns None when it is there, or why not. The retry takes the
        checkpoint over (its own attribute names it until its first upload).
        """
        checkpoint = self.take_over(trial, retry_of)
        if not checkpoint:
            return f"trial {retry_of} uploaded no checkpoint"
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.download")
        try:
            with self.store.open_reader(checkpoint["id"]) as reader, open(tmp, "wb") as out:
                while chunk := reader.read(1 << 20):
                    out.write(chunk)
            tmp.replace(dest)
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            where = f"checkpoint of trial {retry_of} (epoch {checkpoint['epoch']}) unreachable in {self.location}"
            return f"{where}: {first_line(exc)}"
        return None

    def upload_best(self, trial: optuna.Trial, path: Path) -> None:
        """Upload the trial's ``best.pt`` if it has one, listed with the trial (``optuna.artifacts.get_all_artifact_meta``)."""
        if path.is_file():
            optuna.artifacts.upload_artifact(
                artifact_store=self.store, file_path=str(path), study_or_trial=trial
            )
