"""How long a search will take, said before it starts: a few batches of a real epoch timed, then the sum.

The estimate assumes no trial is pruned (an upper bound for the trials it
counts) and that local workers share the work evenly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from lrtune.config import Config, effective_image_size
from lrtune.formatting import format_duration
from lrtune.training.loop import AmpPolicy
from lrtune.training.probe import probe_epoch
from lrtune.training.run import Hyperparams, TrainingData, TrainingRun
from lrtune.tuner.space import baseline_params

LONG_S = 15 * 60  # an estimate past this names what would cut it


@dataclass(frozen=True)
class Estimate:
    """A search's expected wall time, and what it rests on."""

    trials: int  # trials left to run
    epochs: int
    train_images: int  # per epoch, as the loader draws them
    val_images: int
    train_per_s: float
    eval_per_s: float
    device: str
    workers: int
    image_size: int

    @property
    def epoch_seconds(self) -> float:
        evaluation = self.val_images / self.eval_per_s if self.eval_per_s else 0.0
        return self.train_images / max(self.train_per_s, 1e-9) + evaluation

    @property
    def seconds(self) -> float:
        return self.trials * self.epochs * self.epoch_seconds / max(self.workers, 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "epoch_seconds": self.epoch_seconds, "seconds": self.seconds}

    def line(self) -> str:
        """One line: the time, what it counts, the speed it rests on, and what would cut a long one."""
        if not self.trials:
            return "estimate: nothing left to run"
        workers = f" in {self.workers} workers" if self.workers > 1 else ""
        text = (f"estimate: about {format_duration(self.seconds)} for {self.trials} trials x {self.epochs} epochs"
                f"{workers} at {self.train_per_s:,.0f} training images/s on {self.device} (if none is pruned; "
                "pruning cut the epochs by half to three quarters in lrtune's benchmarks)")
        if self.seconds > LONG_S:
            cuts = [f"--trials {max(1, self.trials // 2)}"]
            if self.image_size > 32:
                cuts.insert(0, f"--image-size {self.image_size // 2}")
            if self.device == "cpu":
                cuts.append("a GPU")
            text += f"; {', '.join(cuts[:-1])} or {cuts[-1]} would cut it" if len(cuts) > 1 else f"; {cuts[0]} would cut it"
        return text


def estimate_search(cfg: Config, *, data: TrainingData, amp: AmpPolicy, finished: int = 0) -> Estimate:
    """Time the baseline trial's first batches on ``data`` (training with its loader, and validation), then add
    up what ``cfg.trials - finished`` trials of ``cfg.epochs`` epochs take."""
    run = TrainingRun(cfg, Hyperparams.from_dict(baseline_params(cfg)), data=data, amp=amp, seed=cfg.seed)
    train_per_s, eval_per_s = probe_epoch(run)
    return Estimate(
        trials=max(0, cfg.trials - finished), epochs=cfg.epochs, train_images=run.loader.images_per_epoch,
        val_images=len(data.val_idx), train_per_s=train_per_s, eval_per_s=eval_per_s, device=amp.device.type,
        workers=max(cfg.workers, 1), image_size=effective_image_size(cfg),
    )
