"""Turn the competition's photo folders into lrtune's CSV manifest: path, label, group (the person).

    python examples/face_competition/make_manifest.py train/images --out train.csv

Every person folder must parse and hold the seven photos; otherwise one line
names the folder (its row in sorted order) and what is wrong, the exit code is
1, and nothing is written.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faces import EXTENSIONS, PHOTOS, LayoutError, class_name, parse_person  # noqa: E402


def manifest_rows(root: Path, base: Path) -> list[tuple[str, str, str]]:
    """(path relative to ``base``, class name, person) for every photo, in sorted order."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise LayoutError(f"{root} holds no person folders")
    rows = []
    for row, folder in enumerate(folders, start=1):
        try:
            person, gender, age = parse_person(folder.name)
            photos = {p.stem: p for p in folder.iterdir()
                      if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in EXTENSIONS}
            unknown = sorted(set(photos) - set(PHOTOS))
            if unknown:
                raise LayoutError(f"photo {photos[unknown[0]].name!r} is not one of {', '.join(PHOTOS)}")
            missing = [stem for stem in PHOTOS if stem not in photos]
            if missing:
                raise LayoutError(f"has no {missing[0]} photo")
        except LayoutError as exc:
            raise LayoutError(f"row {row}, folder {folder.name!r}: {exc}") from None
        for stem, mask in PHOTOS.items():
            rows.append((photos[stem].relative_to(base).as_posix(), class_name(mask, gender, age), person))
    return rows


def write_manifest(rows: list[tuple[str, str, str]], out: Path) -> None:
    """The CSV, written to a temporary file and renamed: whole or not at all."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "group"])
            writer.writerows(rows)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the folder of person folders (train/images)")
    parser.add_argument("--out", type=Path, required=True,
                        help="the CSV to write; its paths are relative to its own folder when ROOT lies inside it "
                        "(lrtune's default), else to ROOT (then give lrtune --data-root ROOT)")
    args = parser.parse_args(argv)
    root, folder = args.root.resolve(), args.out.resolve().parent
    base = folder if root.is_relative_to(folder) else root
    try:
        rows = manifest_rows(root, base)
    except (LayoutError, OSError) as exc:
        print(f"make_manifest: error: {exc}", file=sys.stderr)
        return 1
    write_manifest(rows, args.out)
    labels = {label for _, label, _ in rows}
    hint = "" if base == folder else f"; its paths are relative to {root}: give lrtune --data-root {root}"
    print(f"{len(rows)} photos of {len({person for *_, person in rows})} persons in {len(labels)} classes "
          f"written to {args.out}{hint}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
