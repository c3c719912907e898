"""The web app as a person uses it: a real browser (Debian's headless Chromium, driven by Selenium) with every host
but this machine blocked, against the API as it runs in production (`python -m src.serving`). Screenshots of each
page go to reports/ui/. Skipped, saying why, where Chromium or its driver is not installed (`.ci/run` installs both)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import httpx
import pytest
from conftest import PROJECT_DIR

from nbs_lib.config import load_spec

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (requirements_dev.txt)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium and chromium-driver are not installed "
                                "(Debian: apt-get install chromium chromium-driver; .ci/run does)")
SHOTS = PROJECT_DIR / "reports" / "ui"
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"   # no internet, as offline users


@pytest.fixture(scope="module")
def api(trained_project, tmp_path_factory) -> Iterator[str]:
    """The API over the trained store, started as the image starts it (`python -m src.serving`); yields its URL."""
    from src.bench.robustness import api_server

    server = api_server(trained_project, tmp_path_factory.mktemp("web"), workers=1).start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1300,1100", OFFLINE):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def shot(browser, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / f"{name}.png"))


def field(browser, column: str):
    return browser.find_element(By.CSS_SELECTOR, f'[data-column="{column}"]')


def type_into(element, text: str) -> None:
    element.clear()
    element.send_keys(text)


def submit(browser) -> None:
    browser.find_element(By.CSS_SELECTOR, "#predict-form button[type=submit]").click()


def form_record(browser) -> dict:
    """The record the page sends, as its own script builds it."""
    return browser.execute_script("return recordOf(document.getElementById('predict-form'))")


def test_the_form_shows_what_the_api_predicts_for_the_same_record(api, browser):
    browser.get(f"{api}/")
    type_into(field(browser, "Age"), "31")
    Select(field(browser, "Gender")).select_by_visible_text("Male")
    submit(browser)
    WebDriverWait(browser, 20).until(ec.visibility_of_element_located((By.ID, "result")))
    record = form_record(browser)
    assert (record["Age"], record["Gender"]) == (31, "Male")
    expected = httpx.post(f"{api}/predict", json=record).json()
    assert browser.find_element(By.ID, "prediction").text == expected["prediction"]
    assert browser.find_element(By.ID, "model-version").text == expected["model_version"]
    bars = browser.find_elements(By.CSS_SELECTOR, "#probabilities .bar")
    assert [b.find_element(By.CLASS_NAME, "label").text for b in bars] == list(expected["probabilities"])
    shot(browser, "predict")


def test_a_field_the_api_refuses_shows_the_api_message_beside_it(api, browser):
    browser.get(f"{api}/")
    age = field(browser, "Age")
    type_into(age, "500")
    submit(browser)
    error = browser.find_element(By.ID, f"{age.get_attribute('id')}-error")
    WebDriverWait(browser, 20).until(lambda _: error.text)
    expected = httpx.post(f"{api}/predict", json=form_record(browser)).json()["detail"]
    assert (error.text, age.get_attribute("aria-invalid")) == (expected[0]["msg"], "true")
    assert "Age must be a number from 10 to 100" in error.text
    assert not browser.find_element(By.ID, "result").is_displayed()
    shot(browser, "predict-refused")


def test_every_input_has_a_label_and_the_page_loads_nothing_from_elsewhere(api, browser):
    browser.get(f"{api}/")
    inputs = browser.find_elements(By.CSS_SELECTOR, "input, select")
    assert sorted(e.get_attribute("data-column") for e in inputs) == sorted(load_spec("obesity", PROJECT_DIR).feature_names)
    for element in inputs:
        assert browser.find_elements(By.CSS_SELECTOR, f'label[for="{element.get_attribute("id")}"]'), element
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(name.startswith(api) for name in loaded), loaded


def test_the_api_docs_render_their_operations_with_the_network_blocked(api, browser):
    browser.get(f"{api}/docs")
    WebDriverWait(browser, 30).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".opblock")) >= 5)
    paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/predict", "/predict/batch", "/model/reload"} <= paths, paths
    shot(browser, "docs")
