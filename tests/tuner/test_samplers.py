import pytest

from lrtune.errors import LRTuneError
from lrtune.tuner import samplers


def test_unknown_sampler_and_pruner_list_the_valid_ones():
    with pytest.raises(LRTuneError, match=r"unknown sampler 'grid' \(valid: tpe, random, gp, qmc\)"):
        samplers.create_sampler("grid", 0)
    with pytest.raises(LRTuneError, match=r"unknown pruner 'x' \(valid: median, hyperband, none\)"):
        samplers.create_pruner("x", warmup=1, epochs=3)
    for name in samplers.SAMPLERS:
        samplers.create_sampler(name, 0)
