"""K runs of one architecture trained side by side in one step. Knows nothing of Optuna.

Each slot is an ordinary ``TrainingRun``: its own model (a plain timm module,
so its ``state_dict`` is what a solo run saves), optimizer, schedule, loss,
accumulation, AMP scaler and state. ``FusedModel`` runs the K slots' layers
side by side over their channels (``widen``: the K slots' convolutions as one
grouped convolution, their BatchNorms as one), so one step trains every slot
on the same batch. The gradients of one slot come from its own loss only, so a
slot never changes another: a slot at LR 0 keeps its weights, a slot whose
loss turns NaN is dropped and the others go on. On the CPU a pass may split
the slots into parts (``train_split``), each trained on its own thread at one
torch thread: on two cores two plain steps side by side outrun one step on two
threads.

What the group shares: the batches. Every pass over the training data draws
its order and augmentation from the group's seed and pass number, so a slot's
own seed sets its initial weights, not its data order. Dropout draws its own
mask for each slot's channels; DropPath's per-image draw is one for the pass's
slots, like the batch. A slot's epoch is the group's pass it trained in.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import queue
import threading
import time
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from lrtune.errors import ConfigError
from lrtune.training import memory
from lrtune.training.loaders import Batches, to_model_input
from lrtune.training.loop import AmpPolicy, Diverged, Interrupted, evaluate_together, train_together
from lrtune.training.prefetch import Prefetcher
from lrtune.training.run import EpochOutcome, TrainingRun, epoch_seed
from lrtune.training.threads import ThreadGuard, kept_threads
from lrtune.training.turns import Turns
from lrtune.training.widen import NotWide, rebind, widen

# Layers that draw random numbers in training: a pass of a model with them is not split (``parts_of``).
RANDOM_LAYERS: tuple[type, ...] = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
with contextlib.suppress(ImportError):
    from timm.layers import DropBlock2d, DropPath

    RANDOM_LAYERS += (DropPath, DropBlock2d)


class FusedModel(nn.Module):
    """The forward of K modules of one architecture as one call: ``[batch, ...] -> [K, batch, classes]``.

    The slots stay ordinary modules with their own parameters; each call runs their layers side by side
    (``widen``: one grouped convolution for the K slots' convolutions, one BatchNorm over their channels), and
    autograd carries each slot's gradient back to its own parameters.
    """

    def __init__(self, models: Sequence[nn.Module], *, shape: nn.Module | None = None) -> None:
        super().__init__()
        if not models:
            raise ConfigError("a fused group needs at least one model")
        # The architecture without weights: each number of slots gets a copy whose layers read theirs.
        object.__setattr__(self, "_shape", shape if shape is not None else copy.deepcopy(models[0]).to("meta"))
        self._wides: dict[int, nn.Module] = {}
        self._parts: dict[int, FusedModel] = {}
        self.set_slots(models)

    def set_slots(self, models: Sequence[nn.Module]) -> None:
        """Train ``models`` from now on: the same architecture, any number of them."""
        self.slots = nn.ModuleList(models)
        wide = self._wides.get(len(models))
        if wide is None:
            wide = self._wides[len(models)] = widen(self._shape, models)
        else:
            rebind(wide, models)
        object.__setattr__(self, "_wide", wide)

    def part(self, index: int, models: Sequence[nn.Module]) -> FusedModel:
        """The fused model of part ``index`` of a split pass (``train_split``), training ``models`` of this one's
        architecture: each part has its own, as the parts train at once, and keeps it from pass to pass."""
        held = self._parts.get(index)
        if held is None:
            held = self._parts[index] = FusedModel(models, shape=self._shape)
        else:
            held.set_slots(models)
        return held

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._wide.training != self.training:  # its layers follow this model's mode (the slots are its own)
            self._wide.train(self.training)
        out = self._wide(x)
        return out.unflatten(-1, (len(self.slots), -1)).movedim(-2, 0)


class _Feed:
    """The batches of one pass as one part of a split pass reads them, handed over one by one (``put``)."""

    def __init__(self, n_batches: int) -> None:
        self.n_batches, self.ended = n_batches, False
        self.queue: queue.Queue = queue.Queue(maxsize=2)

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator:
        while (batch := self.queue.get()) is not None:
            yield batch
        self.ended = True

    def drain(self) -> None:
        """Take what is still handed over until the end, so the hand that feeds never waits on a part that left."""
        while not self.ended:
            self.ended = self.queue.get() is None


def draws_random(model: nn.Module) -> bool:
    """Whether ``model`` draws random numbers in training (dropout, drop path, DropBlock)."""
    return any(isinstance(m, RANDOM_LAYERS) and getattr(m, "p", getattr(m, "drop_prob", 0.0)) for m in model.modules())


def splits(run: TrainingRun, threads: ThreadGuard | None) -> bool:
    """Whether fused passes of runs like ``run`` split over the cores (``train_split``): on the CPU, with threads
    lrtune chooses (``--threads auto``), for a model that draws no random numbers (their draws would interleave)."""
    return (threads is not None and not threads.fixed and run.amp.device.type == "cpu"
            and not draws_random(run.model))


def parts_of(runs: Sequence[TrainingRun], threads: ThreadGuard | None) -> int:
    """How many parts a pass of ``runs`` splits into, each on its own thread at one torch thread, when it
    ``splits``: as many as the guard's threads, at most one per run (a run alone is one part: the group's other
    trials sample, build and checkpoint on the other cores meanwhile). 0 when it does not split: the pass trains
    on the guard's threads."""
    if threads is None or not splits(runs[0], threads):
        return 0
    return max(1, min(len(runs), threads.threads))


def train_split(runs: Sequence[TrainingRun], parts: int, *, should_stop: Callable[[], bool] | None = None,
                on_batch: Callable[[int, int, int], None] | None = None, batches: Batches | None = None,
                net: FusedModel | None = None) -> list:
    """One epoch of ``runs`` in ``parts`` parts, each a fused model (or a plain one) on its own thread at one torch
    thread, all on the same batches (the first run's loader's, or ``batches``), read once here: what one part
    trains is what it trains unsplit. A part's fused model is ``net``'s (``FusedModel.part``) when given.
    Returns each run's ``EpochResult``, in order."""
    first = runs[0]
    loader = first.loader if batches is None else batches
    size = -(-len(runs) // parts)
    chunks = [list(runs[i:i + size]) for i in range(0, len(runs), size)]
    feeds = [_Feed(len(loader)) for _ in chunks]
    results: list[list | None] = [None] * len(chunks)
    errors: list[BaseException] = []

    def part(i: int) -> None:
        torch.set_num_threads(1)
        chunk = chunks[i]
        try:
            models = [run.model for run in chunk]
            fused = (FusedModel(models) if net is None else net.part(i, models)) if len(chunk) > 1 else chunk[0].net
            results[i] = train_together(fused, feeds[i], [run.learner() for run in chunk], amp=first.amp)
        except BaseException as exc:  # raised on the pass's thread once every part has stopped
            errors.append(exc)
        finally:
            feeds[i].drain()

    workers = [threading.Thread(target=part, args=(i,), name=f"lrtune-part-{i}", daemon=True)
               for i in range(len(chunks))]
    with kept_threads():
        for worker in workers:
            worker.start()
        try:
            seen = 0
            for i, batch in enumerate(loader):
                if errors or (should_stop is not None and should_stop()):
                    break
                for feed in feeds:
                    feed.queue.put(batch)
                seen += len(batch[1])
                if on_batch is not None:
                    on_batch(i + 1, len(loader), seen)
        finally:
            for feed in feeds:
                feed.queue.put(None)
            for worker in workers:
                worker.join()
    if errors:
        raise errors[0]
    if should_stop is not None and should_stop():
        raise Interrupted
    return [result for chunk in results for result in chunk]  # type: ignore[union-attr]


def train_pass(net: FusedModel, runs: Sequence[TrainingRun], *, seed: int, threads: ThreadGuard | None = None,
               should_stop: Callable[[], bool] | None = None, parts: int = 0,
               batches: Batches | None = None) -> list[EpochOutcome | Diverged]:
    """One epoch of every run (each at its own next epoch) on the same batches, drawn from ``seed``: ``net``
    holds the runs' models as its slots, trained in ``parts`` (``train_split``) when that is not 0. A run whose
    loss diverges gets ``Diverged`` as its outcome, the others their ``EpochOutcome``. The batches are the first
    run's loader's, or ``batches`` (the same ones, read from elsewhere: ``Prefetcher.epoch(seed)``)."""
    first = runs[0]
    loader = first.loader if batches is None else batches
    for run in runs:
        run.start_pass(seed)
    started = time.perf_counter()
    hearing = [run.on_batch for run in runs if run.on_batch is not None]

    def on_batch(done: int, total: int, images: int) -> None:
        for hear in hearing:
            hear(done, total, images)

    if parts > 0:
        results = train_split(runs, min(parts, len(runs)), should_stop=should_stop,
                              on_batch=on_batch if hearing else None, batches=loader, net=net)
    else:
        results = train_together(net if len(runs) > 1 else first.net, loader, [run.learner() for run in runs],
                                 amp=first.amp, should_stop=should_stop, on_batch=on_batch if hearing else None)
    seconds = time.perf_counter() - started
    if threads is not None:
        threads.observe(sum(result.images for result in results), seconds, slots=len(runs))
    outcomes: list[EpochOutcome | Diverged | None] = []
    for run, result in zip(runs, results):
        try:
            run.check_loss(run.state.epoch + 1, result)
            outcomes.append(None)
        except Diverged as exc:
            outcomes.append(exc)
    healthy = [k for k, outcome in enumerate(outcomes) if outcome is None]
    evaluations: list = [None] * len(runs)
    if len(first.data.val_idx) and healthy:
        evaluations = evaluate_together(net if len(runs) > 1 else first.net, first.val_batches(),
                                        n_classes=first.data.n_classes, amp=first.amp, slots=len(runs), only=healthy)
    for k in healthy:  # each run's time is its share of the pass: what it would have taken of the machine alone
        run = runs[k]
        outcomes[k] = run.record_epoch(run.state.epoch + 1, results[k], seconds / len(runs), evaluations[k])
    for run in runs:
        run.sharing = len(runs)
    return outcomes  # type: ignore[return-value]


class FusedGroup:
    """Where the runs of several threads (one trial each) meet to train one pass together.

    Each of ``size`` threads runs within ``thread()`` for as long as it may bring runs,
    registers its run with ``member(run)``, and its ``TrainingRun.train_epoch``
    calls ``train_epoch(run, epoch)``, which returns once a pass has trained
    that epoch. ``serve``, on one more thread, trains a pass when every
    registered run has arrived and every thread has a run (or a thread between
    trials has kept the others waiting ``GRACE_S``): a run that ends frees its
    slot for the next trial at once, and no run waits for another's last epochs.
    Between passes the threads take their turns (``turns.Turns``), so the same
    search forms the same passes. Each pass reads its batches from the first
    pass's loader's ``ahead()`` where it has one (``prefetch.Prefetcher``), which
    augments the next pass meanwhile.
    """

    GRACE_S = 0.5

    def __init__(self, *, name: str, seed: int, size: int, threads: ThreadGuard | None = None,
                 should_stop: Callable[[], bool] | None = None) -> None:
        self.name, self.seed, self.passes = name, seed, 0
        self.threads, self.should_stop = threads, should_stop
        self.cond = threading.Condition()
        self.live = size  # threads that may still bring a run
        self.members: list[TrainingRun] = []
        self.arrived: set[int] = set()  # ids of the members waiting for a pass
        self.results: dict[int, EpochOutcome | BaseException] = {}
        self.numbers: dict[int, int] = {}  # run id -> its number (its trial's): a pass trains its runs in order
        self.changed = time.monotonic()
        self.turns = Turns(self.cond, size)
        self.building = threading.Lock()  # a run is built whole (seeded, then drawn from) before the next
        self.net: FusedModel | None = None
        self.ahead: Prefetcher | None = None  # the first pass's loader's, augmenting each next pass meanwhile

    @contextlib.contextmanager
    def thread(self, index: int = 0) -> Iterator[None]:
        """Thread ``index`` of the ``size``, for as long as it may bring runs."""
        self.turns.join(index)
        try:
            yield
        finally:
            with self.cond:
                self.live -= 1
                self.turns.leave()
                self.cond.notify_all()

    @contextlib.contextmanager
    def member(self, run: TrainingRun, number: int = 0) -> Iterator[None]:
        """Within, ``run`` (numbered ``number``) trains in the group's passes."""
        with self.cond:
            self.members.append(run)
            self.numbers[id(run)] = number
            self.changed = time.monotonic()
        try:
            yield
        finally:
            with self.cond:
                self.members.remove(run)
                self.arrived.discard(id(run))
                self.results.pop(id(run), None)
                self.numbers.pop(id(run), None)
                self.turns.end_run(id(run))
                self.changed = time.monotonic()
                self.cond.notify_all()

    def train_epoch(self, run: TrainingRun, epoch: int) -> EpochOutcome:
        """Wait for a pass that trains ``run``'s next epoch (``serve`` trains it), and return its outcome."""
        with self.cond:
            if run.state.epoch + 1 != epoch:
                raise ValueError(f"a fused run trains its next epoch ({run.state.epoch + 1}), not {epoch}")
            self.arrived.add(id(run))
            self.turns.continues(id(run))
            self.cond.notify_all()
            while id(run) not in self.results:
                self.cond.wait()
            outcome = self.results.pop(id(run))
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def serve(self) -> None:
        """Train every pass on this thread until all ``size`` threads have ended.

        One thread trains them all: torch's OpenMP threads belong to the thread
        that calls them, and passes on several threads would keep several teams
        of them spinning on the same cores (a split pass's parts each train at
        one torch thread: no team).
        """
        try:
            with self.cond:
                while self.live > 0:
                    if self.members and self._ready():
                        self._pass()
                    else:
                        self.cond.wait(timeout=0.05)
        finally:
            if self.ahead is not None:
                self.ahead.close()

    def _ready(self) -> bool:
        everyone = all(id(run) in self.arrived for run in self.members)
        waited = time.monotonic() - max(self.changed, self.turns.changed) >= self.GRACE_S
        return everyone and (len(self.members) >= self.live or waited)

    def _pass(self) -> None:
        """Train one pass of every member, holding the lock: the others are waiting for it anyway."""
        runs = sorted(self.members, key=lambda run: self.numbers[id(run)])
        self.passes += 1
        try:
            if self.net is None:
                self.net = FusedModel([run.model for run in runs])
                self.ahead = runs[0].loader.ahead()  # every run of the group has the same loader
            else:
                self.net.set_slots([run.model for run in runs])
            seed = epoch_seed(self.seed, self.passes)
            batches = None if self.ahead is None else self.ahead.epoch(seed, then=epoch_seed(self.seed, self.passes + 1))
            outcomes: list = train_pass(self.net, runs, seed=seed, threads=self.threads, should_stop=self.should_stop,
                                        parts=parts_of(runs, self.threads), batches=batches)
        except BaseException as exc:  # an interrupt, or a fault of the pass: every member's trial hears it
            outcomes = [exc] * len(runs)
        for run, outcome in zip(runs, outcomes):
            self.results[id(run)] = outcome
            self.arrived.discard(id(run))
        self.turns.passed({id(run): self.numbers[id(run)] for run in runs})
        self.cond.notify_all()


def fusable(runs: Sequence[TrainingRun]) -> str | None:
    """Why these runs cannot train fused (None when they can): a GradScaler, an LR-free optimizer, a compiled
    model, or a model that ``FusedModel`` cannot run."""
    for run in runs:
        if run.params.optimizer:
            return f"the LR-free baseline {run.params.optimizer} runs alone"
        if run.scaler is not None:
            return "fp16's gradient scaler runs alone"
        if run.cfg.compile:
            return "a compiled model runs alone"
    return None


def check_fusion(runs: Sequence[TrainingRun]) -> str | None:
    """Why ``runs`` (fresh runs of one config, thrown away afterwards) cannot train fused, or None: the fused
    forward against each run's own on one batch, then one fused step."""
    reason = fusable(runs)
    if reason is not None:
        return reason
    first = runs[0]
    batch = [next(iter(first.loader))]
    try:
        net = FusedModel([run.model for run in runs])
        differs = disagreement(net, first.amp, batch[0][0])
        if differs > AGREEMENT:
            return (f"{first.cfg.model} does not fuse: its fused outputs differ from its own by {differs:.1e} "
                    "of their scale (a layer mixes the slots' channels)")
        train_together(net, batch, [run.learner() for run in runs], amp=first.amp)
    except NotWide as exc:
        return f"{first.cfg.model} does not fuse: {exc}"
    except Exception as exc:  # what the fused layers cannot run: the model runs unfused
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{first.cfg.model} does not fuse ({type(exc).__name__}: {text})"
    return None


AGREEMENT = 1e-4  # the largest difference of fused and own outputs, relative to their scale: float32 round-off


@torch.no_grad()
def disagreement(net: FusedModel, amp: AmpPolicy, images: torch.Tensor) -> float:
    """The largest difference of ``net``'s outputs and each slot's own on ``images`` (evaluation mode, full
    float32: TF32 off on CUDA for the check), relative to the outputs' largest magnitude (at least 1)."""
    net.eval()
    x = to_model_input(images, amp.device, channels_last=amp.channels_last)
    with _full_float32():
        fused = net(x).float()
        own = torch.stack([slot(x) for slot in net.slots]).float()
    net.train()
    return float((fused - own).abs().max() / own.abs().max().clamp(min=1.0))


@contextlib.contextmanager
def _full_float32() -> Iterator[None]:
    """Convolutions and products in full float32 within (CUDA may run them in TF32, 10 bits of mantissa)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


PROBE_BATCHES = 8  # batches each count of --fuse auto's probe trains on, after one to warm up
PROBE_ROUNDS = 2  # rounds over the counts, each count's best kept: one busy moment does not decide K


def probe_fused(make_runs: Callable[[int], list[TrainingRun]], counts: Sequence[int], *,
                free_bytes: int | None = None,
                prepare: Callable[[int], None] | None = None,
                parts: Callable[[int], int] | None = None,
                rounds: int = PROBE_ROUNDS) -> dict[int, tuple[float, int]]:
    """Training images per second of ``k`` fused runs (fresh ones from ``make_runs(k)``, thrown away after) and
    their peak device memory, for each of ``counts`` in order, the best of ``rounds`` rounds over them,
    ``prepare(k)`` called before each (to set its threads), in ``parts(k)`` parts (``train_split``) when given;
    a count whose projected peak would not fit in ``free_bytes`` (on CUDA) is not tried, nor any after it."""
    measured: dict[int, tuple[float, int]] = {}
    tried = list(counts)
    for round_ in range(rounds):
        for k in tried:
            if round_ == 0 and measured and free_bytes is not None:
                last = max(measured)
                if measured[last][1] / last * k * memory.MEMORY_MARGIN > free_bytes:
                    break
            if prepare is not None:
                prepare(k)
            rate, peak = _probe_once(make_runs(k), parts(k) if parts is not None and k > 1 else 1)
            before = measured.get(k, (0.0, 0))
            measured[k] = (max(before[0], rate), max(before[1], peak))
        tried = sorted(measured)
    return measured


def _probe_once(runs: list[TrainingRun], split: int) -> tuple[float, int]:
    """Training images per second of ``runs`` fused (in ``split`` parts when over 1), and their peak memory."""
    first = runs[0]
    net = FusedModel([run.model for run in runs]) if len(runs) > 1 else first.net
    batches = list(itertools.islice(iter(first.loader), PROBE_BATCHES + 1))
    learners = [run.learner() for run in runs]

    def train(part: list) -> list:
        if split > 1:
            return train_split(runs, split, batches=part)
        return train_together(net, part, learners, amp=first.amp)

    train(batches[:1])
    memory.peak_bytes(first.amp.device)  # resets the peak
    if first.amp.device.type == "cuda":
        torch.cuda.synchronize(first.amp.device)
    started = time.perf_counter()
    results = train(batches[1:])
    seconds = time.perf_counter() - started
    return len(runs) * results[0].images / seconds, memory.peak_bytes(first.amp.device)
