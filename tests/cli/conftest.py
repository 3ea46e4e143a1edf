"""Every CLI test that trains runs on both augmentation paths.

The ``augment`` fixture sets ``LRTUNE_AUGMENT`` in the environment the real
CLI runs with: ``cpu`` (albumentations in the loader) and ``device`` (batched
augmentation on a uint8 cache, here on the CPU through the same code a GPU
runs). A test opts out only by saying it trains nothing
(``@pytest.mark.trains_nothing``) or by naming the one path it runs on
(``@pytest.mark.path("device")``), so a new training feature cannot skip a
path unseen.
"""

from __future__ import annotations

import pytest

import helpers

PATHS = ("cpu", "device")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "augment" not in metafunc.fixturenames or metafunc.definition.get_closest_marker("trains_nothing"):
        return
    pinned = metafunc.definition.get_closest_marker("path")
    metafunc.parametrize("augment", pinned.args if pinned else PATHS, indirect=True, scope="module")


@pytest.fixture(scope="module", autouse=True)
def augment(request: pytest.FixtureRequest):
    path = getattr(request, "param", None)
    with pytest.MonkeyPatch.context() as patch:
        if path is not None:
            patch.setitem(helpers.QUICK_ENV, "LRTUNE_AUGMENT", path)
        yield path
