"""Slots trained side by side in one step: each trains what it would alone, and never another slot."""

from __future__ import annotations

import itertools

import pytest
import torch

from lrtune.config import Config
from lrtune.training.fused import FusedGroup, FusedModel, fusable, parts_of, train_pass
from lrtune.training.loop import AmpPolicy, Diverged, train_together
from lrtune.training.run import Hyperparams, TrainingRun, epoch_seed, load_training_data, seed_everything

CPU = AmpPolicy(torch.device("cpu"))
SLOTS = [  # different LR, loss, accumulation and schedule in each slot
    Hyperparams(lr=3e-3, scheduler="cosine", loss="ce", accum=1),
    Hyperparams(lr=1e-2, scheduler="step", loss="focal", accum=2, step_size=1, step_gamma=0.5),
    Hyperparams(lr=5e-4, scheduler="plateau", loss="label_smoothing", accum=3, plateau_patience=0),
]
SEEDS = [11, 12, 13]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return load_training_data(Config(studies_dir=str(tmp_path_factory.mktemp("s")), image_size=8))


def _cfg(augment: str, **changes) -> Config:
    values = {"augment": augment, "batch_size": 64, "image_size": 8, "epochs": 3, "warmup_epochs": 0.5,
              "weight_decay": 0.05, **changes}
    return Config(**values)


class Passes:
    """Runs and their fused model, trained one pass at a time as a ``FusedGroup``'s pass trains its members."""

    def __init__(self, runs, seed):
        self.runs, self.seed, self.passes = list(runs), seed, 0
        self.net = FusedModel([run.model for run in self.runs])
        self.loader = self.runs[0].loader

    def train_pass(self):
        self.passes += 1
        return train_pass(self.net, self.runs, seed=epoch_seed(self.seed, self.passes))

    def replace(self, index, run):
        self.runs[index] = run
        self.net.set_slots([r.model for r in self.runs])


def _runs(cfg, digits, params=SLOTS, seeds=SEEDS):
    return [TrainingRun(cfg, p, data=digits, amp=CPU, seed=s) for p, s in zip(params, seeds)]


def _close(a: dict, b: dict) -> None:
    for key, value in a.items():
        if value.is_floating_point():
            torch.testing.assert_close(b[key], value, rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(b[key], value), key


def _fused_and_solo(cfg, digits, n_batches):
    """The slots trained fused on the first ``n_batches`` of a pass, and each trained alone on the same ones."""
    runs = _runs(cfg, digits)
    seed_everything(epoch_seed(99, 1))
    runs[0].loader.reseed(epoch_seed(99, 1))
    batches = list(itertools.islice(iter(runs[0].loader), n_batches))
    train_together(FusedModel([run.model for run in runs]), batches, [run.learner() for run in runs], amp=CPU)
    solos = _runs(cfg, digits)
    for solo in solos:
        train_together(solo.net, batches, [solo.learner()], amp=CPU)
    return runs, solos


@pytest.mark.parametrize("augment", ["cpu", "device"])
def test_each_slot_trains_what_it_trains_alone_to_float32_round_off(digits, augment):
    """Six batches: each slot steps at its own accumulation (6, 3 and 2 steps), LR (with warmup and its own
    schedule), loss and weight decay, and updates its BatchNorm statistics; SGD's step is linear in the
    gradient, so the slot's weights match its solo run's to float32 round-off."""
    runs, solos = _fused_and_solo(_cfg(augment, optimizer="sgd"), digits, 6)
    for run, solo in zip(runs, solos):
        _close(solo.model.state_dict(), run.model.state_dict())
        assert run.optimizer.state_dict()["state"].keys() == solo.optimizer.state_dict()["state"].keys()
    assert [len(run.optimizer.state_dict()["state"]) > 0 for run in runs] == [True] * 3


def test_with_adamw_each_slot_is_within_a_step_of_its_solo_run(digits):
    """AdamW divides each gradient by its running RMS plus 1e-8: where a gradient is as small as that, its
    float32 round-off (about 1e-6 of the largest) moves the step by up to the LR. So the weights agree to
    round-off except where the gradient is that small, and everywhere within a step's size."""
    cfg = _cfg("cpu")
    runs, solos = _fused_and_solo(cfg, digits, 1)  # one optimizer step of the slot without accumulation
    run, solo, lr = runs[0], solos[0], runs[0].schedule.lr(0)
    diffs = torch.cat([(p - q).abs().flatten() for p, q in zip(run.model.parameters(), solo.model.parameters())])
    assert diffs.max() <= 2 * lr
    assert (diffs <= 1e-6).float().mean() > 0.99


def _solo_pass(run: TrainingRun, seed: int, batches: list) -> None:
    run.start_pass(seed)
    (result,) = train_together(run.net, batches, [run.learner()], amp=CPU)
    run.record_epoch(run.state.epoch + 1, result, 1.0, run._validate())


def test_over_a_pass_the_slots_curves_agree_with_their_solo_runs(digits):
    """A whole pass through the group (schedules stepped on the slot's own validation value, curves recorded),
    with SGD: the same LRs, and validation values within 0.01 (round-off may flip a prediction at a tie)."""
    cfg = _cfg("cpu", optimizer="sgd")
    group = Passes(_runs(cfg, digits), seed=99)
    seed_everything(epoch_seed(99, 1))
    group.loader.reseed(epoch_seed(99, 1))
    batches = list(group.loader)
    outcomes = group.train_pass()
    assert [o.epoch for o in outcomes] == [1, 1, 1]
    for run, params, seed in zip(group.runs, SLOTS, SEEDS):
        solo = TrainingRun(cfg, params, data=digits, amp=CPU, seed=seed)
        _solo_pass(solo, epoch_seed(99, 1), batches)
        assert run.state.step == solo.state.step and run.state.curves["epoch"] == [1]
        assert [lr for _, lr in run.state.lr_steps] == pytest.approx([lr for _, lr in solo.state.lr_steps])
        assert run.state.curves["val_f1"] == pytest.approx(solo.state.curves["val_f1"], abs=0.01)
        assert run.state.curves["val_loss"] == pytest.approx(solo.state.curves["val_loss"], rel=1e-3)


def test_a_slot_at_lr_0_keeps_its_weights_bit_for_bit(digits):
    group = Passes(_runs(_cfg("cpu"), digits), seed=3)
    group.runs[1].schedule.lr = lambda step: 0.0  # a schedule cannot start at 0: the slot's LR is held there
    before = {k: v.clone() for k, v in group.runs[1].model.named_parameters()}
    others = {k: v.clone() for k, v in group.runs[0].model.named_parameters()}
    group.train_pass()
    after = dict(group.runs[1].model.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in before)  # weight decay too is scaled by the LR
    assert any(not torch.equal(others[k], v) for k, v in group.runs[0].model.named_parameters())


def test_a_slot_whose_loss_turns_nan_is_diverged_and_the_others_are_untouched(digits):
    cfg = _cfg("cpu")
    group = Passes(_runs(cfg, digits), seed=5)
    reference = Passes(_runs(cfg, digits), seed=5)

    class NaNLoss(torch.nn.Module):
        def forward(self, logits, targets):
            return torch.nn.functional.cross_entropy(logits, targets) * float("nan")

    group.runs[1].loss_fn = NaNLoss()
    outcomes = group.train_pass()
    expected = reference.train_pass()
    assert isinstance(outcomes[1], Diverged) and "non-finite train loss" in str(outcomes[1])
    for k in (0, 2):
        assert outcomes[k].value == expected[k].value
        assert all(torch.equal(v, reference.runs[k].model.state_dict()[name])
                   for name, v in group.runs[k].model.state_dict().items())  # weights and BatchNorm statistics
    assert not all(torch.isfinite(p).all() for p in group.runs[1].model.parameters())


def test_a_new_run_takes_a_slot_and_trains_from_its_own_first_epoch(digits):
    cfg = _cfg("cpu")
    group = Passes(_runs(cfg, digits), seed=7)
    group.train_pass()
    newcomer = TrainingRun(cfg, SLOTS[0], data=digits, amp=CPU, seed=21)
    group.replace(1, newcomer)
    outcomes = group.train_pass()
    assert [o.epoch for o in outcomes] == [2, 1, 2]
    assert group.net.slots[1] is newcomer.model and newcomer.state.curves["epoch"] == [1]


def test_threads_meet_in_a_group_and_one_pass_trains_every_run_that_arrived(digits):
    """Three threads each train their own run through ``TrainingRun.train_epoch``; one leaves after an epoch.
    Every epoch is a pass of the group, and the runs train what the same passes train without threads (and
    without the loader process that augments the group's next pass)."""
    import threading

    cfg = _cfg("cpu")
    group = FusedGroup(name="test", seed=4, size=3)
    runs = _runs(cfg, digits)
    reference = Passes(_runs(cfg, digits), seed=4)
    epochs = [3, 1, 3]
    errors = []

    def work(index, run, n):
        with group.thread(index), group.member(run, index):
            run.group = group
            try:
                for epoch in range(1, n + 1):
                    run.train_epoch(epoch)
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, run, n)) for i, (run, n) in enumerate(zip(runs, epochs))]
    for thread in threads:
        thread.start()
    group.serve()  # returns once every thread has ended
    for thread in threads:
        thread.join(timeout=600)
    assert not errors and group.passes == 3
    # its passes read their batches from a loader process, which ended with the group
    assert group.ahead is not None and group.ahead.lost is None and group.ahead._process is None
    reference.train_pass()
    reference.replace(1, reference.runs[2])  # as the group: the second run left after its first epoch
    reference.runs, reference.net = [reference.runs[0], reference.runs[2]], FusedModel(
        [reference.runs[0].model, reference.runs[2].model])
    reference.train_pass()
    reference.train_pass()
    for run, expected in zip([runs[0], runs[2]], reference.runs):
        assert run.state.curves == expected.state.curves
        _close(expected.model.state_dict(), run.model.state_dict())


def test_a_fused_model_gives_each_slot_its_own_logits():
    torch.manual_seed(0)
    import timm

    models = [timm.create_model("test_resnet", num_classes=4) for _ in range(3)]
    fused = FusedModel(models).eval()
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        out = fused(x)
        assert out.shape == (3, 5, 4)
        for k, model in enumerate(models):
            torch.testing.assert_close(out[k], model.eval()(x), rtol=1e-4, atol=1e-5)


def test_what_cannot_fuse_says_why(digits):
    cfg = _cfg("cpu")
    assert fusable(_runs(cfg, digits)) is None
    baseline = TrainingRun(cfg, Hyperparams.from_dict({"optimizer": "prodigy"}), data=digits, amp=CPU, seed=1)
    assert fusable([baseline]) == "the LR-free baseline prodigy runs alone"
    fp16 = TrainingRun(cfg, SLOTS[0], data=digits, amp=AmpPolicy(torch.device("cpu"), amp_dtype=torch.float16),
                       seed=1)
    assert fusable([fp16]) == "fp16's gradient scaler runs alone"


def test_auto_grows_k_while_a_larger_count_gains_a_tenth():
    from lrtune.tuner.fusion import auto_fuse

    k, why = auto_fuse({1: (1000.0, 0), 2: (1500.0, 0), 4: (1600.0, 0), 8: (1640.0, 0)})
    assert k == 2 and why == "images/s: 1,000 at 1, 1,500 at 2, 1,600 at 4, 1,640 at 8; each step up must gain 10%"
    assert auto_fuse({1: (1000.0, 0), 2: (1500.0, 0), 4: (1600.0, 0), 8: (2500.0, 0)})[0] == 8  # past 4's dip
    assert auto_fuse({1: (1000.0, 0), 2: (900.0, 0)})[0] == 1
    k, why = auto_fuse({1: (100.0, 10), 2: (300.0, 20)})
    assert k == 2 and why.endswith("4 would not fit the free memory")


def test_the_probe_measures_each_count_and_stops_before_one_that_would_not_fit(digits):
    from lrtune.training.fused import probe_fused

    cfg = _cfg("cpu")
    prepared: list[int] = []
    measured = probe_fused(lambda k: _runs(cfg, digits, [SLOTS[0]] * k, list(range(k))), [1, 2, 4],
                           prepare=prepared.append)
    assert sorted(measured) == [1, 2, 4] and all(rate > 0 for rate, _ in measured.values())
    assert prepared == [1, 2, 4, 1, 2, 4]  # before each count of each round, to set the threads it trains on
    tight = probe_fused(lambda k: _runs(cfg, digits, [SLOTS[0]] * k, list(range(k))), [1, 2], free_bytes=-1)
    assert sorted(tight) == [1]


def test_the_probe_keeps_each_counts_best_round(monkeypatch):
    import lrtune.training.fused as fused

    rates = iter([(100.0, 5), (50.0, 9), (80.0, 6), (150.0, 7)])  # count 2's first round met a busy moment
    monkeypatch.setattr(fused, "_probe_once", lambda runs, split: next(rates))
    assert fused.probe_fused(lambda k: [None] * k, [1, 2], rounds=2) == {1: (100.0, 6), 2: (150.0, 9)}


def test_a_pass_waits_for_a_thread_between_trials_until_it_brings_a_run_or_ends():
    group = FusedGroup(name="test", seed=0, size=2)
    group.GRACE_S = 3600.0  # the grace never runs out here, however slow the machine
    run = object()
    group.members.append(run)
    group.arrived.add(id(run))
    assert not group._ready()  # the other thread is between trials: the pass waits for its run, a while
    with group.thread():  # that thread ends: no more runs from it
        pass
    assert group._ready()


def test_a_split_pass_keeps_each_parts_fused_model_from_pass_to_pass(digits):
    cfg = _cfg("cpu", optimizer="sgd")
    runs = _runs(cfg, digits)
    net = FusedModel([run.model for run in runs])
    train_pass(net, runs, seed=epoch_seed(8, 1), parts=2)
    kept = dict(net._parts)
    train_pass(net, runs, seed=epoch_seed(8, 2), parts=2)
    assert list(kept) == [0] and net._parts[0] is kept[0]  # three runs: a fused pair, and a plain run alone
    assert list(kept[0].slots) == [runs[0].model, runs[1].model]


@pytest.mark.parametrize("augment", ["cpu", "device"])
def test_a_pass_split_in_parts_trains_what_the_whole_group_trains(digits, augment):
    """Three slots in two parts (a fused pair and a plain run), each on its own thread, on the batches read once:
    with SGD every slot's weights and BatchNorm statistics match the unsplit pass's to float32 round-off, and
    its epoch's loss and validation values agree."""
    cfg = _cfg(augment, optimizer="sgd")
    whole, split = Passes(_runs(cfg, digits), seed=8), _runs(cfg, digits)
    expected = whole.train_pass()
    before = torch.get_num_threads()
    outcomes = train_pass(FusedModel([run.model for run in split]), split, seed=epoch_seed(8, 1), parts=2)
    assert torch.get_num_threads() == before  # the parts' one thread each stays theirs
    for run, reference, got, want in zip(split, whole.runs, outcomes, expected):
        _close(reference.model.state_dict(), run.model.state_dict())
        assert run.state.step == reference.state.step and got.epoch == want.epoch == 1
        assert run.state.curves["train_loss"] == pytest.approx(reference.state.curves["train_loss"], rel=1e-4)
        assert run.state.curves["val_f1"] == pytest.approx(reference.state.curves["val_f1"], abs=0.01)


def test_a_split_pass_that_is_stopped_or_fails_in_a_part_leaves_no_part_waiting(digits):
    import threading

    from lrtune.training.loop import Interrupted

    cfg = _cfg("cpu")
    alive = threading.active_count()
    batches = [0]

    def stop_after_two() -> bool:
        batches[0] += 1
        return batches[0] > 2

    runs = _runs(cfg, digits)
    with pytest.raises(Interrupted):
        train_pass(FusedModel([run.model for run in runs]), runs, seed=1, parts=3, should_stop=stop_after_two)

    class Broken(torch.nn.Module):
        def forward(self, logits, targets):
            raise RuntimeError("a loss that fails")

    runs = _runs(cfg, digits)
    runs[2].loss_fn = Broken()
    with pytest.raises(RuntimeError, match="a loss that fails"):
        train_pass(FusedModel([run.model for run in runs]), runs, seed=1, parts=2)
    assert threading.active_count() == alive


def test_passes_split_on_the_cpu_with_chosen_threads_for_a_model_that_draws_no_random_numbers(digits):
    from lrtune.training.threads import ThreadGuard

    runs = _runs(_cfg("cpu"), digits)
    assert parts_of(runs, ThreadGuard(2)) == 2
    assert parts_of(runs, ThreadGuard(8)) == 3  # at most one part per run
    assert parts_of(runs[:1], ThreadGuard(2)) == 1  # a run alone: one part, at one thread
    assert parts_of(runs, ThreadGuard(2, fixed=True)) == 0  # --threads N: unsplit, on the user's threads
    assert parts_of(runs, None) == 0
    dropping = _runs(_cfg("cpu", model="test_efficientnet"), digits)
    dropping[0].model.classifier = torch.nn.Sequential(torch.nn.Dropout(0.2), dropping[0].model.classifier)
    assert parts_of(dropping, ThreadGuard(2)) == 0  # its draws would interleave between the parts


@pytest.mark.parametrize("augment", ["cpu", "device"])
def test_a_run_alone_in_one_part_trains_what_it_trains_unsplit(digits, augment):
    cfg = _cfg(augment, optimizer="sgd")
    (alone,), (part,) = _runs(cfg, digits, SLOTS[:1], SEEDS[:1]), _runs(cfg, digits, SLOTS[:1], SEEDS[:1])
    expected = train_pass(alone.net, [alone], seed=epoch_seed(2, 1))
    got = train_pass(part.net, [part], seed=epoch_seed(2, 1), parts=1)
    _close(alone.model.state_dict(), part.model.state_dict())
    assert got[0].value == pytest.approx(expected[0].value, abs=0.01) and got[0].epoch == expected[0].epoch == 1
