"""How long ``lrtune report`` takes on a synthetic 500-trial study (10 epochs, 10 classes).

    python3 benchmarks/report_speed.py [--trials 500] [--keep DIR]

The study is written to a fresh SQLite database the way a search writes it
(WAL mode, lrtune's study and trial attributes). The first report pays
for importing plotly and Optuna's importance code; the later lines are warm.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from lrtune.api import open_study, write_report  # noqa: E402
from lrtune.report import compute_report, draw_report  # noqa: E402
from lrtune.storage import default_storage_url, load_study, mask_url, open_storage  # noqa: E402
from studies import make_study  # noqa: E402

STUDY = "bench-500"


def timed(label: str, fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    print(f"{label:<38} {time.perf_counter() - start:7.2f} s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--keep", help="write the study and reports here instead of a temporary folder")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        url = default_storage_url(folder)
        storage = open_storage(url)
        if STUDY not in optuna.get_all_study_names(storage):
            timed(f"create {args.trials}-trial study (setup)", make_study, storage, STUDY, args.trials)
        out = folder / "report.html"

        def report(name, **kwargs):
            return write_report(study=open_study(name=name, storage=url), out=out, studies_dir=folder, **kwargs)

        timed("report, cold (imports included)", report, STUDY)
        timed("report, warm", report, STUDY)
        timed("report, no --study (picks latest)", report, None)
        timed("report --plotlyjs cdn", report, STUDY, plotlyjs="cdn")

        study = load_study(open_storage(url), STUDY)
        timed("  read the trials from SQLite", study.get_trials, deepcopy=False)
        data = timed("  compute_report (trials cached)", compute_report, study, storage_label=mask_url(url))
        timed("  draw_report", draw_report, data)
        report(STUDY)
        print(f"trials {len(data.trials)}, report {out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
