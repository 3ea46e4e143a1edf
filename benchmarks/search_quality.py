"""Search quality against an oracle: lrtune's searches replayed on a recorded learning-curve table.

Each replayed trial runs lrtune's own space (``tuner.space.suggest``), samplers
and pruners on an in-memory study, with the baseline queued as trial 0 as a
search does. Its epochs come from the table (``record_curves.py``): the
nearest recorded configuration (same scheduler, loss and accumulation; the
nearest LR on a log scale and the nearest conditional parameters), whose
validation macro-F1 is reported epoch by epoch, so the pruner sees what it
would have seen, and whose recorded epoch times are charged as the cost.

After every trial the search's pick is its best complete trial by validation
macro-F1; its **regret** is the oracle's test macro-F1 (the best of the whole
table) minus the pick's, and its **validation regret** the table's best
validation macro-F1 minus the pick's (how well the search optimises what it
sees). Per strategy, over seeds: the final regret, the epochs spent until the
pick is within 0.01 of the oracle ("never" when the budget ran out first), and
at looser levels, the area under the regret curve over the epoch budget; the
same on the validation side. The default strategy is read from lrtune's own
defaults (``Config``), and each setting it was chosen from runs with and
without the LR range test.

    python benchmarks/search_quality.py benchmarks/tables/digits-lt.json.gz
    python benchmarks/search_quality.py TABLE --seeds 30 --trials 50 --json
    python benchmarks/search_quality.py TABLE --quick
    python benchmarks/search_quality.py TABLE --plot regret.html
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lrtune.config import Config  # noqa: E402
from lrtune.tuner import samplers  # noqa: E402
from lrtune.tuner.lr_range import ATTR, narrowed_bounds  # noqa: E402
from lrtune.tuner.space import FOCAL_GAMMA, PLATEAU_FACTOR, PLATEAU_PATIENCE, SMOOTHING, STEP_GAMMA, baseline_params, suggest  # noqa: E402

NEAR = 0.01  # "within 0.01 of the oracle"
TARGET_RATIO = 0.6  # --lr-range auto's goal for the median ratio of epochs to within NEAR, with / without
LEVELS = (0.02, 0.03, 0.05)  # looser levels, where within NEAR is out of a search's reach
CURVE_STEP = 10  # epochs between the points of the regret curves
CONDITIONAL = {  # conditional parameter: its span in the space, for the distance between points
    "step_size": (1.0, 5.0), "step_gamma": STEP_GAMMA, "plateau_factor": PLATEAU_FACTOR,
    "plateau_patience": PLATEAU_PATIENCE, "focal_gamma": FOCAL_GAMMA, "smoothing": SMOOTHING,
}


class Table:
    """The recorded rows, and the nearest one to any point of the space."""

    def __init__(self, path: Path) -> None:
        with gzip.open(path, "rt") as fh:
            data = json.load(fh)
        self.meta, self.rows = data["meta"], data["rows"]
        ranges = Path(str(path).removesuffix(".json.gz") + ".range.json")
        self.range_tests = json.loads(ranges.read_text()) if ranges.exists() else []
        self.groups: dict[tuple, list[dict[str, Any]]] = {}
        for row in self.rows:
            p = row["point"]
            self.groups.setdefault((p["scheduler"], p["loss"], int(p["accum"])), []).append(row)
        tests = [r["test_f1_best"] for r in self.rows if r["test_f1_best"] is not None]
        self.oracle = max(tests)
        # What a search sees: the best validation macro-F1 of any configuration that trained to the end,
        # and the test macro-F1 of the configurations that reach it (the pick of a search that finds the best).
        finished = [r for r in self.rows if r["diverged_at"] is None and r["val_f1"]]
        self.val_oracle = max(max(r["val_f1"]) for r in finished)
        self.val_best_tests = sorted(r["test_f1_best"] for r in finished if max(r["val_f1"]) == self.val_oracle)
        self.log_span = math.log(self.meta["lr_max"] / self.meta["lr_min"])
        # A partly recorded table replays the accumulation values whose grids are whole.
        per_group = self.meta["lrs"]
        combos = {(k[0], k[1]) for k in self.groups}
        self.accums = sorted(a for a in {k[2] for k in self.groups}
                             if all(len(self.groups.get((s, l, a), [])) >= per_group for s, l in combos))
        self.schedulers = sorted({k[0] for k in self.groups})
        self.losses = sorted({k[1] for k in self.groups})

    def nearest(self, params: dict[str, Any]) -> dict[str, Any]:
        rows = self.groups[(params["scheduler"], params["loss"], int(params["accum"]))]

        def distance(row: dict[str, Any]) -> float:
            p = row["point"]
            d = abs(math.log(params["lr"] / p["lr"])) / self.log_span
            for name, (low, high) in CONDITIONAL.items():
                if name in params:
                    recorded = p.get(name, DEFAULTS[name])
                    d += abs(params[name] - recorded) / (high - low)
            return d

        return min(rows, key=distance)


DEFAULTS = {"step_size": 1, "step_gamma": 0.1, "plateau_factor": 0.1, "plateau_patience": 2,
            "focal_gamma": 2.0, "smoothing": 0.1}


@dataclass
class Strategy:
    name: str
    sampler: str | Callable[[int], optuna.samplers.BaseSampler]  # a name in lrtune's registry, or seed -> sampler
    pruner: Callable[[int], optuna.pruners.BasePruner]  # epochs -> pruner
    lr_range: bool = False  # seeded as --lr-range auto seeds a study: narrowed LR range, suggestion queued


def lrtune_pruner(name: str, warmup: int) -> Callable[[int], optuna.pruners.BasePruner]:
    return lambda epochs: samplers.create_pruner(name, warmup=warmup, epochs=epochs)


def _defaults_name(lr_range: str) -> str:
    cfg = Config()
    pruner = f"{cfg.pruner}, warm-up {cfg.pruner_warmup}" if cfg.pruner == "median" else cfg.pruner
    return f"{cfg.sampler} + {pruner}, --lr-range {lr_range}"


DEFAULT = _defaults_name(Config().lr_range) + " (default)"
OTHER_RANGE = "the default with " + ("--lr-range off" if Config().lr_range == "auto" else "--lr-range auto")


def strategies(quick: bool) -> list[Strategy]:
    """The defaults, the baselines' random search, and the settings the defaults are chosen from."""
    cfg = Config()
    auto = cfg.lr_range == "auto"
    default_pruner = lrtune_pruner(cfg.pruner, cfg.pruner_warmup)
    main = [
        Strategy(DEFAULT, cfg.sampler, default_pruner, lr_range=auto),
        Strategy(OTHER_RANGE, cfg.sampler, default_pruner, lr_range=not auto),
        Strategy("the default without pruning", cfg.sampler, lrtune_pruner("none", 0), lr_range=auto),
        Strategy("random, no pruning", "random", lrtune_pruner("none", 0)),
        Strategy("the default with --pruner hyperband", cfg.sampler, lrtune_pruner("hyperband", 0), lr_range=auto),
    ]
    if quick:
        return main
    # The settings the defaults were chosen from, each with --lr-range off and auto.
    more: list[Strategy] = []
    for lr_range in (False, True):
        tag = ", --lr-range auto" if lr_range else ""
        more += [Strategy(f"tpe, no pruning{tag}", "tpe", lrtune_pruner("none", 0), lr_range=lr_range)]
        more += [Strategy(f"tpe + median, warm-up {w}{tag}", "tpe", lrtune_pruner("median", w), lr_range=lr_range)
                 for w in (1, 2, 4, 5)]
        more += [
            Strategy(f"tpe + median, warm-up 2, {n} startup trials{tag}", "tpe",
                     lambda epochs, n=n: optuna.pruners.MedianPruner(n_startup_trials=n, n_warmup_steps=2), lr_range=lr_range)
            for n in (2, 10)
        ]
        more += [
            Strategy(f"tpe + median, warm-up 2, n_min_trials {n}{tag}", "tpe",
                     lambda epochs, n=n: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2, n_min_trials=n),
                     lr_range=lr_range)
            for n in (3, 5)
        ]
        more += [
            Strategy(f"tpe + hyperband, min {m}, factor {f}{tag}", "tpe",
                     lambda epochs, m=m, f=f: optuna.pruners.HyperbandPruner(min_resource=m, max_resource=epochs, reduction_factor=f),
                     lr_range=lr_range)
            for m, f in ((1, 3), (1, 2), (2, 3), (3, 3))
        ]
        more += [
            Strategy(f"tpe ({n} startup trials) + median{tag}", lambda seed, n=n: samplers.tpe(seed, n),
                     lrtune_pruner("median", cfg.pruner_warmup), lr_range=lr_range)
            for n in (5, 10, 20)
        ]
        more += [
            Strategy(f"tpe + percentile 25, warm-up 2{tag}", "tpe",
                     lambda epochs: optuna.pruners.PercentilePruner(25, n_startup_trials=5, n_warmup_steps=2), lr_range=lr_range),
            Strategy(f"tpe + median, warm-up 2, patience 2{tag}", "tpe",
                     lambda epochs: optuna.pruners.PatientPruner(optuna.pruners.MedianPruner(5, 2), patience=2),
                     lr_range=lr_range),
        ]
        more += [Strategy(f"{name} + median, warm-up 2{tag}", name, lrtune_pruner("median", 2), lr_range=lr_range)
                 for name in ("random", "qmc", "gp")]
    return main + more


Step = tuple[float, float, float, float]  # after a trial: epochs spent, seconds spent, the pick's regret, its validation regret


def replay(table: Table, strategy: Strategy, seed: int, trials: int) -> list[Step]:
    """One search: after each trial, (epochs spent, seconds spent, regret of the pick, validation regret)."""
    cfg = Config(accum=table.accums, schedulers=table.schedulers, losses=table.losses, epochs=table.meta["epochs"],
                 seed=seed, lr_range="auto" if strategy.lr_range else "off")
    # A fixed name: Hyperband puts a trial in a bracket by hashing the study's name.
    sampler = samplers.create_sampler(strategy.sampler, seed) if isinstance(strategy.sampler, str) else strategy.sampler(seed)
    study = optuna.create_study(study_name=f"replay-{seed}", direction="maximize", sampler=sampler,
                                pruner=strategy.pruner(cfg.epochs))
    baseline = baseline_params(cfg)
    study.enqueue_trial(baseline, user_attrs={"baseline": True})
    spent = {"epochs": 0.0, "seconds": 0.0}
    if strategy.lr_range:  # as tuner.lr_range.seed_study does, with the recorded test's result and cost
        test = table.range_tests[seed % len(table.range_tests)]
        study.set_user_attr(ATTR, {"bounds": list(narrowed_bounds(cfg, test["suggestion"], baseline["lr"]))})
        if test["suggestion"] is not None:
            study.enqueue_trial({**baseline, "lr": test["suggestion"]}, user_attrs={"lr_range": True})
        spent["epochs"], spent["seconds"] = test["epochs"], test["seconds"]
    picks: dict[int, float] = {}  # trial number -> test macro-F1 of its best epoch
    history = []

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, cfg).to_dict()
        row = table.nearest({k: v for k, v in params.items() if k in trial.params or k in ("lr", "scheduler", "loss", "accum")})
        picks[trial.number] = row["test_f1_best"] if row["test_f1_best"] is not None else 0.0
        mean_s = statistics.fmean(row["epoch_s"]) if row["epoch_s"] else 0.3
        best = -math.inf
        for epoch, value in enumerate(row["val_f1"], start=1):
            spent["epochs"] += 1
            spent["seconds"] += row["epoch_s"][epoch - 1]
            best = max(best, value)
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        if row["diverged_at"] is not None:  # the diverging epoch was trained, then the trial pruned
            spent["epochs"] += 1
            spent["seconds"] += mean_s
            raise optuna.TrialPruned()
        return best

    def after(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
        regret, val_regret = table.oracle, table.val_oracle
        if complete:
            pick = max(complete, key=lambda t: (t.value, -t.number))
            regret, val_regret = table.oracle - picks[pick.number], table.val_oracle - pick.value
        history.append((spent["epochs"], spent["seconds"], regret, val_regret))

    study.optimize(objective, n_trials=trials, callbacks=[after])
    return history


def fixed_sequence(table: Table, points: list[dict[str, Any]]) -> list[Step]:
    """The baselines that need no sampler: configurations run one after another, to the end."""
    history, epochs, seconds, best = [], 0, 0.0, None
    for point in points:
        row = table.nearest(point)
        epochs += len(row["epoch_s"]) + (row["diverged_at"] is not None)
        seconds += sum(row["epoch_s"])
        if row["diverged_at"] is None and row["val_f1"] and (best is None or max(row["val_f1"]) > max(best["val_f1"])):
            best = row
        history.append((epochs, seconds, table.oracle - (best["test_f1_best"] if best else 0.0),
                        table.val_oracle - (max(best["val_f1"]) if best else 0.0)))
    return history


def figures(history: list[Step], budget: int) -> dict[str, float | None]:
    """Final regret, epochs until within NEAR of the oracle (None: never), area under regret per epoch;
    the same on the validation side (the best validation macro-F1 of the table as the oracle)."""
    area, last_e, last_r = 0.0, 0, None
    for e, _, r, _ in history:
        if e > budget:
            break
        if last_r is not None:
            area += last_r * (e - last_e)
        last_e, last_r = e, r
    if last_r is not None:
        area += last_r * (budget - last_e)
    return {"regret": history[-1][2], "epochs_to_near": first_within(history, NEAR), "area": area / budget, "epochs": history[-1][0],
            "val_regret": history[-1][3], "epochs_to_near_val": first_within(history, NEAR, validation=True),
            "epochs_to": {f"{x:g}": first_within(history, x) for x in LEVELS},
            "epochs_to_val": {f"{x:g}": first_within(history, x, validation=True) for x in LEVELS},
            "curve": [regret_at(history, e) for e in range(0, budget + 1, CURVE_STEP)],
            "val_curve": [regret_at(history, e, validation=True) for e in range(0, budget + 1, CURVE_STEP)]}


def first_within(history: list[Step], level: float, *, validation: bool = False) -> float | None:
    """The epochs spent when the pick's (validation) regret first fell to ``level``; None: never."""
    index = 3 if validation else 2
    return next((step[0] for step in history if step[index] <= level), None)


def regret_at(history: list[Step], epochs: float, *, validation: bool = False) -> float:
    """The (validation) regret of the pick once ``epochs`` epochs are spent; NaN before the first trial has ended."""
    regret = math.nan
    for e, _, r, v in history:
        if e > epochs:
            break
        regret = v if validation else r
    return regret


def quartiles(values: list[float]) -> list[float]:
    return [float(x) for x in np.percentile(values, [25, 50, 75], method="inverted_cdf")]


def summarize(runs: list[dict[str, float | None]]) -> dict[str, Any]:
    q = quartiles
    reached = [r["epochs_to_near"] for r in runs]
    reached_val = [r["epochs_to_near_val"] for r in runs]
    return {"seeds": len(runs), "regret": q([r["regret"] for r in runs]),
            "epochs_to_near": q([math.inf if e is None else e for e in reached]),
            "never": sum(e is None for e in reached), "area": q([r["area"] for r in runs]),
            "val_regret": q([r["val_regret"] for r in runs]),
            "epochs_to_near_val": q([math.inf if e is None else e for e in reached_val]),
            "never_val": sum(e is None for e in reached_val),
            "epochs_to": {k: _median_epochs([r["epochs_to"][k] for r in runs]) for k in runs[0]["epochs_to"]},
            "epochs_to_val": {k: _median_epochs([r["epochs_to_val"][k] for r in runs]) for k in runs[0]["epochs_to_val"]},
            "epochs": q([r["epochs"] for r in runs]),
            "median_curve": median_curve([r["curve"] for r in runs]),
            "median_val_curve": median_curve([r["val_curve"] for r in runs])}


def _median_epochs(reached: list[float | None]) -> list[float]:
    """[median epochs, seeds that never got there]; the median is infinite when more than half never did."""
    return [float(np.percentile([math.inf if e is None else e for e in reached], 50, method="inverted_cdf")),
            float(sum(e is None for e in reached))]


def median_curve(curves: list[list[float]]) -> list[float | None]:
    return [float(np.nanmedian(c)) if not np.all(np.isnan(c)) else None for c in np.array(curves, dtype=float).T]


def _one(args: tuple[str, int, int, int, bool]) -> tuple[int, dict[str, float | None]]:
    path, index, seed, trials, quick = args
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    table = Table(Path(path))
    strategy = strategies(quick)[index]
    budget = trials * table.meta["epochs"]
    return index, figures(replay(table, strategy, seed, trials), budget)


def run(path: Path, *, seeds: int, trials: int, quick: bool, jobs: int) -> dict[str, Any]:
    table = Table(path)
    budget = trials * table.meta["epochs"]
    names = [s.name for s in strategies(quick)]
    started = time.perf_counter()
    runnable = [i for i, s in enumerate(strategies(quick)) if table.range_tests or not s.lr_range]
    tasks = [(str(path), i, seed, trials, quick) for i in runnable for seed in range(seeds)]
    results: dict[int, list] = {i: [] for i in runnable}
    with ProcessPoolExecutor(jobs) as pool:
        for index, fig in pool.map(_one, tasks, chunksize=4):  # in order: seed by seed
            results[index].append(fig)
    out = {names[i]: summarize(results[i]) for i in runnable}
    by_name = {names[i]: results[i] for i in runnable}
    off, auto = (OTHER_RANGE, DEFAULT) if Config().lr_range == "auto" else (DEFAULT, OTHER_RANGE)
    effect = range_test_effect(table, by_name[off], by_name[auto]) if auto in by_name else None
    cfg = Config(accum=table.accums, schedulers=table.schedulers, losses=table.losses, epochs=table.meta["epochs"])
    base = baseline_params(cfg)
    out["baseline trial alone"] = summarize([figures(fixed_sequence(table, [base]), budget)])
    lrs = sorted({r["point"]["lr"] for r in table.rows})
    grid = [{**base, "lr": lr} for lr in lrs]
    out[f"LR grid ({len(lrs)} LRs, baseline's other choices)"] = summarize([figures(fixed_sequence(table, grid), len(grid) * table.meta["epochs"])])
    return {"table": str(path), "oracle_test_f1": table.oracle, "oracle_val_f1": table.val_oracle,
            "best_val_test_f1": table.val_best_tests, "rows": len(table.rows), "trials": trials,
            "budget_epochs": budget, "seconds": round(time.perf_counter() - started, 1), "strategies": out,
            "lr_range": effect, "lr_transfer": suggestion_transfer(table)}


def range_test_effect(table: Table, off: list[dict], auto: list[dict]) -> dict[str, Any]:
    """Per seed: epochs to within NEAR with the range test (its cost counted) / without; the suggestion's place.

    A search that never came within NEAR is charged every epoch it spent, a
    lower bound on its true count.
    """
    def ratio(get: Callable[[dict], float | None]) -> list[float]:
        """Per seed, auto's epochs / off's, each charged all its epochs when it never got there."""
        def charged(fig: dict) -> float:
            return get(fig) if get(fig) is not None else fig["epochs"]
        return [charged(a) / charged(o) for o, a in zip(off, auto)]

    def paired(key: str) -> dict[str, float]:
        """Per seed, auto's final regret minus off's: in how many seeds lower, higher, and the mean difference."""
        diffs = [a[key] - o[key] for o, a in zip(off, auto)]
        return {"lower": sum(d < -1e-9 for d in diffs), "higher": sum(d > 1e-9 for d in diffs), "mean": statistics.fmean(diffs)}

    ratios, ratios_val = ratio(lambda f: f["epochs_to_near"]), ratio(lambda f: f["epochs_to_near_val"])
    levels = {side: {k: quartiles(ratio(lambda f, side=side, k=k: f[side][k])) for k in off[0][side]}
              for side in ("epochs_to", "epochs_to_val")}
    ranked = sorted((r for r in table.rows if r["test_f1_best"] is not None), key=lambda r: -r["test_f1_best"])
    top = ranked[: max(1, len(ranked) // 10)]
    low, high = min(r["point"]["lr"] for r in top), max(r["point"]["lr"] for r in top)
    tests = [table.range_tests[seed % len(table.range_tests)] for seed in range(len(off))]
    inside = sum(t["suggestion"] is not None and low <= t["suggestion"] <= high for t in tests)
    return {"ratio": quartiles(ratios), "ratios": ratios, "ratio_val": quartiles(ratios_val), "ratios_val": ratios_val,
            "at_most_target": {"test": sum(r <= TARGET_RATIO for r in ratios),
                               "validation": sum(r <= TARGET_RATIO for r in ratios_val)},
            "ratio_levels": levels, "top_10pct_lr_span": [low, high], "suggestion_inside": inside, "seeds": len(off),
            "range_test_epochs": [t["epochs"] for t in tests],
            "final_regret_paired": {"test": paired("regret"), "validation": paired("val_regret")}}


def suggestion_transfer(table: Table) -> dict[str, Any] | None:
    """Does one range test's narrowed LR range hold the best LR of every scheduler, loss and accumulation?

    Per combination, the LR of its best validation macro-F1 (default conditional
    parameters); per range test, how many of those lie inside the range
    ``--lr-range auto`` would narrow the search to.
    """
    if not table.range_tests:
        return None
    cfg = Config(accum=table.accums, schedulers=table.schedulers, losses=table.losses, epochs=table.meta["epochs"])
    best: dict[str, float] = {}
    for (scheduler, loss, accum), rows in table.groups.items():
        plain = [r for r in rows if r["diverged_at"] is None and r["val_f1"] and set(r["point"]) == {"lr", "scheduler", "loss", "accum"}]
        if plain and accum in table.accums:
            best[f"{scheduler}/{loss}/{accum}"] = max(plain, key=lambda r: max(r["val_f1"]))["point"]["lr"]
    inside = []
    for test in table.range_tests:
        low, high = narrowed_bounds(cfg, test["suggestion"], baseline_params(cfg)["lr"])
        inside.append(sum(low <= lr <= high for lr in best.values()))
    return {"combinations": len(best), "inside": inside, "best_lr": best}


def print_table(result: dict[str, Any]) -> None:
    tops = result["best_val_test_f1"]
    print(f"# {result['table']}: {result['rows']} configurations, oracle test macro-F1 {result['oracle_test_f1']:.4f}, "
          f"best validation macro-F1 {result['oracle_val_f1']:.4f} (reached by {len(tops)}, test macro-F1 "
          f"{tops[0]:.4f} to {tops[-1]:.4f}); {result['trials']} trials a search "
          f"({result['budget_epochs']} epochs without pruning), {result['seconds']} s")
    print("| strategy | seeds | final regret, median (quartiles) | epochs to within 0.01, median (quartiles) | never "
          "| area under regret | epochs spent | validation regret | epochs to within 0.01 on validation | never |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    fmt = lambda x: "never" if x is None or math.isinf(x) else f"{x:.0f}"  # noqa: E731
    for name, s in result["strategies"].items():
        r, e, a, n = s["regret"], s["epochs_to_near"], s["area"], s["epochs"]
        vr, ve = s["val_regret"], s["epochs_to_near_val"]
        print(f"| {name} | {s['seeds']} | {r[1]:.4f} ({r[0]:.4f} to {r[2]:.4f}) | {fmt(e[1])} ({fmt(e[0])} to {fmt(e[2])}) "
              f"| {s['never']} | {a[1]:.4f} | {n[1]:.0f} | {vr[1]:.4f} ({vr[0]:.4f} to {vr[2]:.4f}) "
              f"| {fmt(ve[1])} ({fmt(ve[0])} to {fmt(ve[2])}) | {s['never_val']} |")
    print(f"\n| strategy | {' | '.join(f'within {x:g}, test' for x in LEVELS)} | "
          f"{' | '.join(f'within {x:g}, validation' for x in LEVELS)} |")
    print("|---" * (1 + 2 * len(LEVELS)) + "|")
    for name, s in result["strategies"].items():
        cells = [f"{fmt(m)} ({n:.0f} never)" if n else fmt(m) for side in ("epochs_to", "epochs_to_val")
                 for m, n in s[side].values()]
        print(f"| {name} | {' | '.join(cells)} |")
    effect = result["lr_range"]
    if effect:
        q, qv = effect["ratio"], effect["ratio_val"]
        print(f"\n--lr-range auto: epochs to within {NEAR} (range test included) / without, median {q[1]:.2f} "
              f"(quartiles {q[0]:.2f} to {q[2]:.2f}); on validation {qv[1]:.2f} ({qv[0]:.2f} to {qv[2]:.2f}), "
              f"over {effect['seeds']} seeds; the suggestion lies in the top 10% "
              f"configurations' LR span ({effect['top_10pct_lr_span'][0]:.3g} to {effect['top_10pct_lr_span'][1]:.3g}) "
              f"in {effect['suggestion_inside']} of {effect['seeds']} seeds")
        print(f"  seeds with a ratio of at most {TARGET_RATIO} (a median of at most {TARGET_RATIO} needs "
              f"{(effect['seeds'] + 1) // 2}): " + ", ".join(f"{n} on {side}" for side, n in effect["at_most_target"].items()))
        for side, name in (("epochs_to", "test"), ("epochs_to_val", "validation")):
            print(f"  the same ratio at looser levels ({name}): " + "; ".join(
                f"within {k}: {q[1]:.2f} ({q[0]:.2f} to {q[2]:.2f})" for k, q in effect["ratio_levels"][side].items()))
        print("  final regret, seed by seed, with the range test against without: " + "; ".join(
            f"{side}: lower in {p['lower']}, higher in {p['higher']}, mean difference {p['mean']:+.4f}"
            for side, p in effect["final_regret_paired"].items()))
    transfer = result.get("lr_transfer")
    if transfer:
        inside = transfer["inside"]
        print(f"one range test's narrowed LR range holds the best-validation LR of {min(inside)} to {max(inside)} "
              f"(median {statistics.median(inside):g}) of the {transfer['combinations']} scheduler/loss/accumulation "
              f"combinations, over {len(inside)} range tests")


def _finite(value: Any) -> Any:
    """``value`` with every infinite number (a search that never came near) as None, for JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and math.isinf(value) else value


def plot(result: dict[str, Any], path: Path, names: list[str]) -> None:
    """Median regret against epochs spent, on the test split and on validation, one line per strategy in ``names``.

    A standalone HTML page (plotly.js from its CDN).
    """
    import plotly.colors
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    floor = result["oracle_test_f1"] - statistics.fmean(result["best_val_test_f1"])
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        f"test: oracle {result['oracle_test_f1']:.4f} minus the pick's test macro-F1",
        f"validation: best {result['oracle_val_f1']:.4f} minus the pick's validation macro-F1"))
    palette = plotly.colors.qualitative.Plotly
    for i, name in enumerate(names):
        for col, key in ((1, "median_curve"), (2, "median_val_curve")):
            curve = result["strategies"][name][key]
            fig.add_trace(go.Scatter(x=[k * CURVE_STEP for k in range(len(curve))], y=curve, mode="lines", name=name,
                                     legendgroup=name, showlegend=col == 1,
                                     line={"shape": "hv", "color": palette[i % len(palette)]}), row=1, col=col)
    for col in (1, 2):
        fig.add_hline(y=NEAR, line_dash="dot", annotation_text=f"within {NEAR}", row=1, col=col)
    fig.add_hline(y=max(floor, 1e-4), line_dash="dash", line_color="grey", row=1, col=1,
                  annotation_text="a pick with the best validation macro-F1 of the table (mean over ties)")
    seeds = result["strategies"][names[0]]["seeds"]
    fig.update_layout(title=f"Regret against epochs spent, median over {seeds} seeds ({Path(result['table']).name})",
                      template="plotly_white", height=520, legend={"orientation": "h", "y": -0.2})
    fig.update_xaxes(title_text="epochs spent (pruned trials' and the range test's included)")
    fig.update_yaxes(type="log")
    fig.write_html(path, include_plotlyjs="cdn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", type=Path, help="a packed table from record_curves.py (.json.gz), "
                        "or the JSON this script printed, to print it as tables again")
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--trials", type=int, default=Config().trials)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="the main strategies, 5 seeds, 20 trials")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--plot", type=Path, help="also write the median regret curves of the main strategies here (HTML)")
    args = parser.parse_args()
    seeds, trials = (5, 20) if args.quick else (args.seeds, args.trials)
    if args.table.suffix == ".json":
        result = json.loads(args.table.read_text())
    else:
        result = run(args.table, seeds=seeds, trials=trials, quick=args.quick, jobs=args.jobs)
    if args.plot:
        main_names = [s.name for s in strategies(quick=True) if s.name in result["strategies"]]
        plot(result, args.plot, main_names)
    if args.json:
        print(json.dumps(_finite(result), indent=1))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
