"""The kiosk page in a real headless browser (Debian's chromium + chromedriver)."""

import shutil
import threading

import pytest
from PIL import Image
from werkzeug.serving import make_server

from server import create_app

pytestmark = pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                                reason="tests/run.sh installs chromium and chromium-driver")


@pytest.fixture(scope="module")
def base_url(tiny_bundle):
    server = make_server("127.0.0.1", 0, create_app({"model": tiny_bundle, "ort_threads": 1}), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", f"--user-data-dir={tmp_path_factory.mktemp('chrome')}",
                 "--window-size=900,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def pick(browser, path):
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "file").send_keys(str(path))


def test_pick_a_photo_shows_label_bars_latency(browser, base_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(base_url)
    assert browser.title == "EcoSort Edge"
    photo = tmp_path / "red.png"
    Image.new("RGB", (120, 90), (255, 0, 0)).save(photo)
    pick(browser, photo)
    WebDriverWait(browser, 10).until(ec.visibility_of_element_located((By.ID, "result")))
    assert browser.find_element(By.ID, "label").text.lower().startswith("cardboard")
    bars = browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
    assert [b.get_attribute("data-label") for b in bars][0] == "cardboard" and len(bars) == 6
    widths = [float(b.find_element(By.CLASS_NAME, "fill").value_of_css_property("width")[:-2]) for b in bars]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]
    assert "ms" in browser.find_element(By.ID, "timing").text
    browser.save_screenshot(str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").read_bytes()[:4] == b"\x89PNG"


def test_a_bad_file_shows_the_error(browser, base_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(base_url)
    junk = tmp_path / "notes.png"
    junk.write_text("this is not a picture")
    pick(browser, junk)
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "error").text)
    assert "Could not classify" in browser.find_element(By.ID, "error").text
    assert browser.find_element(By.ID, "result").is_displayed() is False
