"""The report of a real (tiny) search, opened in headless Chromium."""

import os
from pathlib import Path

import pytest

from helpers import ROOT, run_cli
from lrtune.storage import default_storage_url, open_storage
from report_cases import report_of
from studies import make_study

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
XSS_STUDY = "<img src=x onerror=window.__xss=1>"
XSS_CLASSES = ["<script>window.__xss=2</script>", "<b>bold</b>", "a&b"]
SCREENSHOT = ROOT / "test-artifacts" / "report.png"
# Figures a 4-trial search always fills; the importance may be a note instead when few trials complete.
ALWAYS_DRAWN = ("history", "curves", "lr", "effective-lr", "lr-steps", "parallel", "per-class", "confusion", "timeline")

ALL_PLOTS_DRAWN = """
const plots = [...document.querySelectorAll('.plotly-graph-div')];
return plots.length > 0 && plots.every(p => p.classList.contains('js-plotly-plot') && p.querySelector('svg.main-svg'));
"""
TICK_LABELS = "return [...document.querySelectorAll('#plot-confusion .xtick text')].map(t => t.textContent)"
FIGURES = """
return [...document.querySelectorAll('div.figure')].map(div => ({
    id: div.id,
    plot: !!div.querySelector('.js-plotly-plot svg.main-svg'),
    note: !!div.querySelector('p.note'),
    table: !!div.querySelector('table'),
}));
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    studies_dir = tmp_path_factory.mktemp("studies")
    common = ("--studies-dir", str(studies_dir), "--study", XSS_STUDY)
    search = run_cli("search", "--trials", "4", "--epochs", "2", *common, timeout=600)
    assert search.returncode == 0, search.stderr
    made = run_cli("report", *common, timeout=120)
    assert made.returncode == 0, made.stderr
    path = Path(made.stdout.strip().splitlines()[-1])
    assert path.is_file()
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing and os.environ.get("LRTUNE_REQUIRE_BROWSER"):
        pytest.fail(f"LRTUNE_REQUIRE_BROWSER is set but {' and '.join(missing)} is missing")
    if missing:
        pytest.skip(f"headless browser test needs {' and '.join(missing)} (Debian packages chromium, chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def page(report, browser):
    open_report(browser, report)
    save_full_page_screenshot(browser, SCREENSHOT)
    return browser


def open_report(driver, path: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(path.resolve().as_uri())
    WebDriverWait(driver, 60, poll_frequency=0.25).until(lambda d: d.execute_script(ALL_PLOTS_DRAWN))


def save_full_page_screenshot(driver, path: Path) -> None:
    import base64

    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics["cssContentSize"]
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        },
    )
    path.write_bytes(base64.b64decode(shot["data"]))


def test_page_loads_without_console_errors(page):
    severe = [entry["message"] for entry in page.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []


def test_every_figure_is_drawn_or_explained(page):
    figures = {f["id"]: f for f in page.execute_script(FIGURES)}

    for name in ALWAYS_DRAWN:
        assert figures[f"fig-{name}"]["plot"], f"fig-{name} has no drawn plot"
    importance = figures["fig-importance"]
    assert importance["plot"] or importance["note"]
    assert figures["fig-top-trials"]["table"]


def test_title_and_heading_show_the_study_name_as_text(page):
    from selenium.webdriver.common.by import By

    assert page.title == f"lrtune report: {XSS_STUDY}"
    assert page.find_element(By.TAG_NAME, "h1").text == f"lrtune report: {XSS_STUDY}"
    assert XSS_STUDY in page.find_element(By.ID, "summary").text


def test_study_name_runs_no_code(page):
    assert page.execute_script("return typeof window.__xss") == "undefined"
    assert page.execute_script("return document.querySelectorAll('img').length") == 0


def test_screenshot_is_saved(page):
    assert SCREENSHOT.is_file() and SCREENSHOT.stat().st_size > 50_000


def test_class_names_in_plots_show_as_text(browser, tmp_path):
    url = default_storage_url(tmp_path)
    open_storage(url)
    make_study(url, "classes", 6, classes=XSS_CLASSES)
    open_report(browser, report_of(url, "classes", str(tmp_path / "r.html"), plotlyjs="inline"))

    assert browser.execute_script(TICK_LABELS) == XSS_CLASSES
    assert browser.execute_script("return typeof window.__xss") == "undefined"
