import os
import re
import sqlite3
from pathlib import Path

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from lrtune.errors import LRTuneError
from lrtune.storage import default_storage_url
from report_cases import FAIL, new_storage, params, report_of, without_bundle
from studies import BASELINE, make_study

PLOTLY_BUNDLE_MARK = "Copyright 2012-"
XSS = "<script>alert(1)</script>"
XSS_IMG = "<img src=x onerror=alert(2)>"
XSS_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def report_page(storage_url: str, study: str, out: Path) -> tuple[str, str]:
    html_text = report_of(storage_url, study, str(out)).read_text()
    return html_text, without_bundle(html_text)


# --------------------------------------------------------------------------- the page


def test_default_output_is_in_the_study_folder(storage_url, studies_dir, mixed_report):
    assert (studies_dir / "mixed" / "report.html").is_file()
    assert "<title>lrtune report: mixed</title>" in mixed_report


def test_plotly_js_is_embedded_once(mixed_html, mixed_report):
    assert mixed_html.count(PLOTLY_BUNDLE_MARK) == 1
    assert "<script>PLOTLY</script>" in mixed_report
    assert "cdn.plot.ly" not in mixed_report


def test_cdn_mode_gives_a_small_file(storage_url, tmp_path):
    path = report_of(storage_url, "mixed", str(tmp_path / "cdn.html"), plotlyjs="cdn")
    text = path.read_text()

    assert path.stat().st_size < 300_000
    assert re.search(r'<script charset="utf-8" src="https://cdn\.plot\.ly/plotly-[\d.]+\.min\.js"', text)
    assert PLOTLY_BUNDLE_MARK not in text


def test_password_in_stored_config_is_masked(mixed_report):
    assert "hunter2" not in mixed_report
    assert "postgresql://lrtune:***@db.example/lrtune" in mixed_report


def test_html_from_user_strings_is_escaped(tmp_path):
    odd = {XSS: FloatDistribution(0, 10), "tag": CategoricalDistribution([XSS_IMG])}
    specs = [
        {"params": {**BASELINE, XSS: 1.0, "tag": XSS_IMG}, "value": 0.6, "baseline": True, "distributions": odd},
        {"params": {**params(2e-3), XSS: 2.0, "tag": XSS_IMG}, "value": 0.7, "distributions": odd},
        {"state": FAIL, "params": params(0.5), "reason": XSS},
    ]
    make_study(new_storage(tmp_path), XSS, specs, classes=[XSS, XSS_IMG, "ok"])
    html_text, text = report_page(new_storage(tmp_path), XSS, tmp_path / "x.html")

    assert "<script>alert" not in html_text and "<img src=x" not in html_text
    assert f"<title>lrtune report: {XSS_ESCAPED}</title>" in text
    assert f"<th>{XSS_ESCAPED}</th>" in text
    assert "&lt;img src=x onerror=alert(2)&gt;" in text
    assert f"<td>{XSS_ESCAPED}</td>" in text


def test_unknown_plotlyjs_mode_is_an_error(storage_url, tmp_path):
    with pytest.raises(LRTuneError, match="plotlyjs"):
        report_of(storage_url, "mixed", str(tmp_path / "r.html"), plotlyjs="local")


# --------------------------------------------------------------------------- picking the study


def test_most_recently_updated_study_is_reported_by_default(tmp_path):
    url = new_storage(tmp_path)
    make_study(url, "recent", [{"value": 0.5}], start_offset_min=600)
    make_study(url, "older", [{"value": 0.5}, {"value": 0.6}])
    make_study(url, "empty")

    path = report_of(url, None, None, studies_dir=str(tmp_path))

    assert path == tmp_path / "recent" / "report.html"
    assert "<title>lrtune report: recent</title>" in without_bundle(path.read_text())


def test_unknown_study_lists_existing_ones(storage_url, tmp_path):
    with pytest.raises(LRTuneError, match=r"unknown study 'nope' \(existing studies: mixed\)"):
        report_of(storage_url, "nope", str(tmp_path / "r.html"))


def test_empty_storage_says_so(tmp_path):
    url = new_storage(tmp_path)
    with pytest.raises(LRTuneError, match="no studies in sqlite:///"):
        report_of(url, None, str(tmp_path / "r.html"))


def test_missing_database_is_not_created(tmp_path):
    with pytest.raises(LRTuneError, match="no study database at"):
        report_of(default_storage_url(tmp_path / "none"), None, str(tmp_path / "r.html"))
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("url, message", [("nosuchdialect://host/db", "cannot open storage"),
                                          ("sqlite:///{tmp}/garbage.db", "garbage.db is not an SQLite database")])
def test_storage_that_cannot_be_opened_is_an_error(url, message, tmp_path):
    (tmp_path / "garbage.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(LRTuneError, match=message):
        report_of(url.format(tmp=tmp_path), "s", str(tmp_path / "r.html"))


def test_password_is_masked_in_storage_errors(tmp_path):
    with pytest.raises(LRTuneError) as info:
        report_of("nosuchdialect://user:secret@host/db", "s", str(tmp_path / "r.html"))
    assert "secret" not in str(info.value)


# --------------------------------------------------------------------------- the output file


def test_missing_output_folder_is_an_error(storage_url, tmp_path):
    missing = tmp_path / "no" / "such"
    with pytest.raises(LRTuneError, match=f"output folder {re.escape(str(missing))} does not exist"):
        report_of(storage_url, "mixed", str(missing / "r.html"))


def test_output_folder_that_is_a_file_is_an_error(storage_url, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(LRTuneError, match="output folder .*file does not exist"):
        report_of(storage_url, "mixed", str(tmp_path / "file" / "r.html"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_output_folder_is_an_error(storage_url, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(LRTuneError, match=f"output folder {re.escape(str(folder))} is not writable"):
            report_of(storage_url, "mixed", str(folder / "r.html"))
    finally:
        folder.chmod(0o755)


def test_report_replaces_an_old_one_and_leaves_no_temporary_files(storage_url, tmp_path):
    out = tmp_path / "r.html"
    out.write_text("old")
    report_of(storage_url, "mixed", str(out), plotlyjs="cdn")

    assert out.read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


def test_report_reads_while_a_search_holds_a_write_transaction(tmp_path):
    url = new_storage(tmp_path)
    make_study(url, "busy", [{"value": 0.5}, {"value": 0.6}])
    writer = sqlite3.connect(tmp_path / "lrtune.db", timeout=1)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE studies SET study_name = study_name")
        path = report_of(url, "busy", str(tmp_path / "r.html"), plotlyjs="cdn")
    finally:
        writer.rollback()
        writer.close()
    assert path.is_file()


def test_out_that_is_a_folder_is_an_error(storage_url, tmp_path):
    with pytest.raises(LRTuneError, match=f"--out {re.escape(str(tmp_path))} is a folder; give a file name"):
        report_of(storage_url, "mixed", tmp_path)
