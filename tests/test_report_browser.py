"""The DSE's HTML report in a real headless browser: Debian's chromium through its
chromedriver and Selenium (no browser is downloaded at run time; .ci/run installs both).

The page must load without console errors, every image must decode with a size and
every table must render rows; a full-page screenshot is kept as a test artefact in
``out/test-artefacts/dse-report.png``.
"""

import shutil
from pathlib import Path

import pytest

from flightforge.dse.report import write_outputs
from flightforge.dse.search import explore
from flightforge.dse.spec import spec_from_dict
from flightforge.dse.store import Store

ARTEFACTS = Path(__file__).parent.parent / "out" / "test-artefacts"


def _browser(monkeypatch):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a test extra")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run does it)")
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1200,900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(driver))


@pytest.fixture
def report(tmp_path, tiny_llama_json, dse_spec_dict) -> Path:
    params = {"clock_mhz": [100, 200], "cores": [1, 2]}
    spec = spec_from_dict(dse_spec_dict(tiny_llama_json, parameters=params))
    store = Store(tmp_path / "points.sqlite")
    explore(spec, store, jobs=1, progress=False)
    return write_outputs(spec, store.rows(), tmp_path / "out")["report_html"]


def test_dse_report_renders_in_chromium(report, monkeypatch):
    browser = _browser(monkeypatch)
    try:
        browser.get(report.as_uri())
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
        images = browser.execute_script(
            "return Array.from(document.images).map(i => "
            "[i.getAttribute('src'), i.complete, i.naturalWidth, i.naturalHeight])"
        )
        names = {src for src, *_ in images}
        assert {"pareto.png", "roofline.png", "utilisation.png", "timeline.png"} <= names
        for src, complete, width, height in images:
            assert complete and width > 100 and height > 100, f"{src} did not render"
        tables = browser.execute_script(
            "return Array.from(document.querySelectorAll('table')).map(t => "
            "[t.rows.length, t.getBoundingClientRect().height])"
        )
        assert tables, "the report has no table"
        for rows, height in tables:
            assert rows > 1 and height > 0, (rows, height)
        height = browser.execute_script("return document.body.scrollHeight")
        browser.set_window_size(1200, max(900, int(height) + 50))
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTEFACTS / "dse-report.png"
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        browser.quit()
