"""Numbers read back from a study's attributes, which may hold anything JSON can."""

from __future__ import annotations

import math
from typing import Any


def finite_float(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def is_positive_number(value: Any) -> bool:
    number = finite_float(value)
    return number is not None and number > 0


def int_or_none(value: Any) -> int | None:
    """``value`` as an int when it is one (``3.0`` counts, bools do not), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None
