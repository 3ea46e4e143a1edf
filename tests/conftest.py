import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Tests never reach the network: pretrained weights come from files a test writes.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The test process trains on one thread, as the CLI tests' processes do (``helpers.QUICK_ENV``): tiny models
    run about as fast on one, a step on two collapses when another process takes a core, and values compared
    across processes need the same count in each. Tests of ``--threads auto`` set their own."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The PostgreSQL tests share one server (one of them restarts it, one counts its connections): under
    ``pytest -n``, one worker runs them all, one after another (``--dist loadgroup``)."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.get_closest_marker("postgres") or "postgresql" in params.values():
            item.add_marker(pytest.mark.xdist_group("postgres"))
