"""The face competition's layout and classes, shared by the example's scripts.

Training photos come as one folder per person, named ``<id>_<gender>_<race>_<age>``
(``000523_female_Asian_51``), each holding seven photos: ``mask1`` to ``mask5``,
``incorrect_mask`` and ``normal``, as .jpg, .jpeg or .png. The class is
composed of three attributes: mask (worn, worn incorrectly, not worn) x gender
x age band (under 30, 30 to 59, 60 and over), 18 in all, numbered as the
competition numbers them: ``6 * mask + 3 * gender + age``.
"""

from __future__ import annotations

MASKS = ("mask", "incorrect", "nomask")
GENDERS = ("male", "female")
AGES = ("under30", "30to59", "60plus")
PHOTOS = {f"mask{i}": "mask" for i in range(1, 6)} | {"incorrect_mask": "incorrect", "normal": "nomask"}
EXTENSIONS = (".jpg", ".jpeg", ".png")


class LayoutError(Exception):
    """A folder or file of the layout that does not parse; the message names it."""


def age_band(age: int) -> str:
    return AGES[0] if age < 30 else AGES[1] if age < 60 else AGES[2]


def class_name(mask: str, gender: str, age: int) -> str:
    """``mask-female-30to59``: readable, and the same words as the competition's classes."""
    return f"{mask}-{gender}-{age_band(age)}"


def class_number(name: str) -> int:
    """The competition's number (0 to 17) of a class name made by ``class_name``."""
    mask, gender, age = name.split("-")
    return 6 * MASKS.index(mask) + 3 * GENDERS.index(gender) + AGES.index(age)


def parse_person(folder: str) -> tuple[str, str, int]:
    """``000523_female_Asian_51`` -> (id, gender, age); ``LayoutError`` saying what is wrong otherwise."""
    parts = folder.split("_")
    if len(parts) != 4:
        raise LayoutError(f"expected <id>_<gender>_<race>_<age>, got {len(parts)} part(s)")
    person, gender, _race, age = parts
    if gender not in GENDERS:
        raise LayoutError(f"gender {gender!r} is not one of {', '.join(GENDERS)}")
    if not age.isdigit():
        raise LayoutError(f"age {age!r} is not a whole number")
    return person, gender, int(age)
