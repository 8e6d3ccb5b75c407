"""The kiosk page in a real headless browser (Debian's chromium + chromedriver): each
state at a kiosk's two screen sizes, asserted as a person would see it. The same states
as screenshots: `python -m tests.screens --out docs/screens`."""

import json
import re

import pytest

from server import create_app
from server.kiosk import DEFAULT, KioskConfigError
from tests import screens

pytestmark = pytest.mark.skipif(not screens.available(), reason="tests/run.sh installs chromium and chromium-driver")
TEXT = DEFAULT["text"]
SEEN = {"idle": TEXT["idle"], "answer": "Paper & cardboard", "unsure": TEXT["not_sure"],
        "nothing": TEXT["nothing"], "error": TEXT["error"]}


@pytest.fixture(scope="module")
def base_url(tiny_bundle):
    with screens.serving(tiny_bundle) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with screens.chromium(tmp_path_factory.mktemp("chrome")) as driver:
        yield driver


def luminance(css: str) -> float:
    r, g, b = (int(v) / 255 for v in re.findall(r"\d+", css)[:3])
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(fg: str, bg: str) -> float:
    a, b = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (a + 0.05) / (b + 0.05)


@pytest.mark.parametrize("size", screens.SIZES)
@pytest.mark.parametrize("state", screens.STATES)
def test_each_state_fits_and_says_what_to_do(browser, base_url, tmp_path, size, state):
    from selenium.webdriver.common.by import By

    screens.open_page(browser, base_url, screens.SIZES[size])
    assert browser.execute_script("return document.body.dataset.camera") == "on"  # camera first
    screens.enter(browser, state, tmp_path)
    card = browser.find_element(By.ID, "result")
    assert card.get_attribute("aria-live") == "assertive" and SEEN[state] in card.text
    assert ("Paper & cardboard" in card.text) == (state == "answer")  # no bin unless sure
    fits = browser.execute_script("const e = document.documentElement;"
                                  "return [e.scrollWidth <= innerWidth, e.scrollHeight <= innerHeight]")
    assert fits == [True, True]
    buttons = [b for b in browser.find_elements(By.TAG_NAME, "button") if b.is_displayed()]
    assert buttons and all(b.size["height"] >= 48 and b.size["width"] >= 48 for b in buttons)
    assert any(b.text == TEXT["next"] for b in buttons) == (state != "idle")
    for element in [card, *buttons]:
        fg, bg = element.value_of_css_property("color"), element.value_of_css_property("background-color")
        assert contrast(fg, bg) >= 4.5, (element.text, fg, bg)  # WCAG AA
    assert not browser.find_element(By.ID, "debug").is_displayed()  # no timings for the public


def test_next_item_goes_back_to_idle_and_debug_shows_timings(browser, base_url, tmp_path):
    from selenium.webdriver.common.by import By

    screens.open_page(browser, base_url + "?debug=1", screens.SIZES["landscape"])
    screens.enter(browser, "answer", tmp_path)
    debug = browser.find_element(By.ID, "debug")
    assert debug.is_displayed() and "ms" in debug.text
    bars = debug.find_elements(By.CSS_SELECTOR, ".bar")
    assert [b.get_attribute("data-label") for b in bars][0] == "cardboard" and len(bars) == 6
    next(b for b in browser.find_elements(By.TAG_NAME, "button") if b.text == TEXT["next"]).click()
    assert browser.execute_script("return document.body.dataset.state") == "idle"


def test_the_sort_button_classifies_a_camera_frame(browser, base_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    screens.open_page(browser, base_url, screens.SIZES["portrait"])
    WebDriverWait(browser, 10).until(lambda d: d.execute_script("return document.getElementById('video').videoWidth"))
    browser.find_element(By.ID, "sort").click()
    WebDriverWait(browser, 10).until(lambda d: d.execute_script("return document.body.dataset.state")
                                     in ("answer", "unsure", "nothing"))


def test_a_station_sets_its_own_bins_and_words(tiny_bundle, tmp_path):
    station = tmp_path / "kiosk.json"
    station.write_text(json.dumps({"bins": {"glass": {"name": "Glascontainer", "colour": "#006400", "ink": "#ffffff",
                                                      "icon": "bottle"}}, "text": {"not_sure": "Bitte fragen"}}))
    page = create_app({"model": tiny_bundle, "kiosk_config": str(station)}).test_client().get("/").get_data(True)
    kiosk = json.loads(page.split("const KIOSK = ")[1].split(";\n")[0])
    assert kiosk["bins"]["glass"]["name"] == "Glascontainer" and kiosk["text"]["not_sure"] == "Bitte fragen"
    assert kiosk["bins"]["paper"] == DEFAULT["bins"]["paper"] and "<script src" not in page
    station.write_text(json.dumps({"bins": {"glass": {"name": "G", "colour": "green", "ink": "#fff", "icon": "x"}}}))
    with pytest.raises(KioskConfigError, match="glass"):
        create_app({"model": tiny_bundle, "kiosk_config": str(station)})
