import math

import pytest

from lrtune.report.values import finite_float, int_or_none, is_positive_number


@pytest.mark.parametrize("value, expected", [(3, 3.0), (0.5, 0.5), (True, None), ("1", None), (math.nan, None),
                                             (math.inf, None), (None, None)])
def test_finite_float_takes_only_finite_numbers(value, expected):
    assert finite_float(value) == expected


@pytest.mark.parametrize("value, expected", [(1e-3, True), (0, False), (-1, False), (math.inf, False), (False, False)])
def test_is_positive_number(value, expected):
    assert is_positive_number(value) is expected


@pytest.mark.parametrize("value, expected", [(3, 3), (3.0, 3), (3.5, None), (True, None), ("3", None)])
def test_int_or_none_takes_whole_numbers_but_not_bools(value, expected):
    assert int_or_none(value) == expected
