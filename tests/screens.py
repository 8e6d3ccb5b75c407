"""The kiosk page's states in headless Chromium, at a kiosk's two screen sizes.

`python -m tests.screens --out docs/screens` writes a screenshot of each state at each
size (look at them); tests/test_page.py drives the same states and asserts what a
person would see. Needs Debian's chromium and chromium-driver (tests/run.sh installs them).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

SIZES = {"portrait": (1080, 1920), "landscape": (1280, 800)}
# Pictures that put the tiny test model in each state (tests/helpers.py: colour -> class).
PICTURES = {"answer": (255, 0, 0), "unsure": (170, 128, 128), "nothing": (128, 128, 128)}
STATES = ("idle", "answer", "unsure", "nothing", "error")

log = logging.getLogger("tests.screens")


def available() -> bool:
    return bool(shutil.which("chromium") and shutil.which("chromedriver"))


@contextmanager
def serving(bundle: Path, **config):
    from werkzeug.serving import make_server

    from server import create_app

    server = make_server("127.0.0.1", 0, create_app({"model": bundle, "ort_threads": 1, **config}), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()


@contextmanager
def chromium(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", f"--user-data-dir={profile}", "--hide-scrollbars",
                 # a camera that shows a test pattern, allowed without asking: the kiosk's normal path
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver, url: str, size: tuple[int, int]) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    width, height = size
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    driver.get(url)
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.body.dataset.camera"))


def enter(driver, state: str, folder: Path) -> None:
    """Put an open page into `state` the way a person would (a photo picked or snapped)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if state == "idle":
        return
    photo = folder / f"{state}.png"
    if state == "error":
        photo.write_text("this is not a picture")
    else:
        Image.new("RGB", (160, 120), PICTURES[state]).save(photo)
    driver.find_element(By.ID, "file").send_keys(str(photo))
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.body.dataset.state") == state)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.screens", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/screens"))
    args = parser.parse_args(argv)
    from tests.helpers import make_bundle

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with serving(make_bundle(tmp)) as url, chromium(tmp / "profile") as driver:
            for size_name, size in SIZES.items():
                for state in STATES:
                    open_page(driver, url, size)
                    enter(driver, state, tmp)
                    path = args.out / f"{state}-{size_name}.png"
                    driver.save_screenshot(str(path))
                    log.info("%s", path)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raise SystemExit(main())
