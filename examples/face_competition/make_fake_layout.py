"""A tiny stand-in for the competition's data, drawn offline: person folders of seven photos, and unlabeled photos.

    python examples/face_competition/make_fake_layout.py data/faces

writes ``train/images/<id>_<gender>_<race>_<age>/`` (``mask1`` to ``mask5`` as
.jpg, ``incorrect_mask`` as .jpeg, ``normal`` as .png) for three persons of
every gender and age band, and ``eval/images/`` with unlabeled photos of other
persons and the ``eval/info.csv`` that lists them. Each photo is a drawn face:
the hair shows the gender, the skin the age band, and the lower face the mask.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faces import AGES, GENDERS, PHOTOS  # noqa: E402

SIZE = (96, 128)  # width, height
AGE_RANGES = {"under30": (18, 29), "30to59": (30, 59), "60plus": (60, 80)}
SKIN = {"under30": (246, 214, 190), "30to59": (205, 160, 120), "60plus": (140, 100, 75)}
EXTENSION = {"mask": ".jpg", "incorrect": ".jpeg", "nomask": ".png"}


def draw_face(rng: random.Random, gender: str, age_band: str, mask: str) -> Image.Image:
    w, h = SIZE
    image = Image.new("RGB", SIZE, tuple(rng.randrange(60, 200) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    dx, dy = rng.randrange(-6, 7), rng.randrange(-6, 7)
    box = (18 + dx, 24 + dy, w - 18 + dx, h - 14 + dy)
    hair = (30, 20, 15) if gender == "male" else (150, 80, 30)
    if gender == "female":  # long hair down both sides
        draw.rectangle((box[0] - 8, box[1] + 5, box[2] + 8, box[3] - 20), fill=hair)
    draw.ellipse(box, fill=tuple(min(255, c + rng.randrange(-12, 13)) for c in SKIN[age_band]))
    draw.chord((box[0], box[1] - 6, box[2], box[1] + 40), 180, 360, fill=hair)
    eye_y = box[1] + 38
    for x in (box[0] + 16, box[2] - 24):
        draw.ellipse((x, eye_y, x + 8, eye_y + 6), fill=(20, 20, 40))
    mouth_y = box[1] + 70
    draw.line((box[0] + 22, mouth_y, box[2] - 22, mouth_y), fill=(170, 30, 40), width=3)
    if mask == "mask":  # over nose and mouth
        draw.rectangle((box[0] + 6, eye_y + 14, box[2] - 6, mouth_y + 16), fill=(70, 130, 210))
    elif mask == "incorrect":  # under the nose, or only the chin
        draw.rectangle((box[0] + 6, mouth_y + 2, box[2] - 6, mouth_y + 22), fill=(70, 130, 210))
    return image


def write_layout(out: Path, *, per_group: int = 3, eval_persons: int = 4, seed: int = 0) -> None:
    rng = random.Random(seed)
    number = 0
    for gender in GENDERS:
        for age_band in AGES:
            for _ in range(per_group):
                number += 1
                age = rng.randint(*AGE_RANGES[age_band])
                folder = out / "train" / "images" / f"{number:06d}_{gender}_Asian_{age}"
                folder.mkdir(parents=True, exist_ok=True)
                for stem, mask in PHOTOS.items():
                    draw_face(rng, gender, age_band, mask).save(folder / f"{stem}{EXTENSION[mask]}")
    images = out / "eval" / "images"
    images.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(eval_persons * len(PHOTOS)):
        gender, age_band, mask = rng.choice(GENDERS), rng.choice(AGES), rng.choice(list(PHOTOS.values()))
        name = f"{rng.getrandbits(64):016x}.jpg"
        draw_face(rng, gender, age_band, mask).save(images / name)
        names.append(name)
    (out / "eval" / "info.csv").write_text("ImageID,ans\n" + "".join(f"{n},0\n" for n in names))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder to write train/ and eval/ into")
    parser.add_argument("--persons", type=int, default=3, help="persons per gender and age band [default: 3]")
    args = parser.parse_args(argv)
    write_layout(args.out, per_group=args.persons)
    print(f"{args.out}/train/images: {6 * args.persons} persons, 7 photos each; "
          f"{args.out}/eval/images: {4 * len(PHOTOS)} unlabeled photos", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
