"""Turn ``lrtune predict``'s CSV into the competition's answers: ImageID and ans, the class number 0 to 17.

    python examples/face_competition/make_answers.py predictions.csv --info eval/info.csv --out answers.csv

With ``--info`` the answers follow its ImageID order, and every image it
lists must have a prediction; without it, the predictions' order.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faces import class_number  # noqa: E402


def answers(predictions: Path, info: Path | None) -> list[tuple[str, int]]:
    with open(predictions, newline="") as f:
        predicted = {Path(row["path"]).name: class_number(row["prediction"]) for row in csv.DictReader(f)}
    if info is None:
        return list(predicted.items())
    with open(info, newline="") as f:
        wanted = [row["ImageID"] for row in csv.DictReader(f)]
    missing = [name for name in wanted if name not in predicted]
    if missing:
        raise KeyError(f"{len(missing)} image(s) of {info} have no prediction, the first: {missing[0]}")
    return [(name, predicted[name]) for name in wanted]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", type=Path, help="the CSV lrtune predict wrote")
    parser.add_argument("--info", type=Path, help="the competition's info.csv (ImageID column)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        rows = answers(args.predictions, args.info)
    except (KeyError, ValueError, OSError) as exc:
        print(f"make_answers: error: {str(exc).strip(chr(39))}", file=sys.stderr)
        return 1
    with open(args.out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ImageID", "ans"])
        writer.writerows(rows)
    print(f"{len(rows)} answers written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
