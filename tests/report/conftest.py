import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report_cases import MIXED, new_storage, report_of, without_bundle  # noqa: E402
from studies import make_study  # noqa: E402


@pytest.fixture(scope="module")
def studies_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("studies")


@pytest.fixture(scope="module")
def storage_url(studies_dir) -> str:
    url = new_storage(studies_dir)
    make_study(url, "mixed", MIXED)
    return url


@pytest.fixture(scope="module")
def mixed_html(storage_url, studies_dir) -> str:
    path = report_of(storage_url, "mixed", studies_dir=studies_dir)
    return path.read_text()


@pytest.fixture(scope="module")
def mixed_report(mixed_html) -> str:
    return without_bundle(mixed_html)
