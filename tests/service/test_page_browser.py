"""The page in a real browser: headless Chromium driven by Selenium.

The app runs under werkzeug's ``make_server`` on 127.0.0.1 (a thread of this
process); Chromium opens ``/``, uploads two images and one file that is not an
image through the page's own file input, and the test reads what a user sees:
one card per file in upload order, each good one's classes and percentages
equal to /predict's answer, its probability bars as wide as the probabilities
(within a few pixels of the track), and the bad file's reason from the API.
It also checks that the top-k input follows the model menu.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium``
package (``.ci/run`` installs them); skipped, saying which is missing,
without them. ``CNN_PAGE_SCREENSHOT=docs/page.png`` also saves a screenshot
there (the README's picture of the page).
"""
import io
import os
import shutil
import threading

import pytest
from werkzeug.serving import make_server

from tests.service.helpers import png_bytes, random_images, save_colour_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Chromium and its driver (apt-get install chromium chromium-driver)")
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install "
                                                             "selenium)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WAIT = 30          # seconds for the page to show an answer
BAR_SLACK_PX = 2   # a bar's width vs probability x its track's width

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1000,820"]


@pytest.fixture
def live_app(make_app, models_dir):
    """The app served on a free 127.0.0.1 port: (base URL, app); stopped after."""
    save_colour_model(models_dir, "pets", (16, 16), ["cat", "dog", "bird"])  # 3 classes
    app = make_app(models_dir, CNN_DEFAULT_MODEL="tiny")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", app
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium for the module (starting it costs ~2 s), fresh profile."""
    folder = tmp_path_factory.mktemp("chromium")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={folder / 'profile'}"]:
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER,
                                      log_output=str(folder / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def rendered_cards(driver):
    """What each result card shows, in page order: name, the top line, and per
    bar its class, percentage text, fill width and track width (CSS px)."""
    return driver.execute_script("""
        return Array.from(document.querySelectorAll('#results .card')).map(card => ({
          bad: card.classList.contains('bad'),
          name: card.querySelector('.name').textContent,
          top: (card.querySelector('.top') || {}).textContent || null,
          reason: (card.querySelector('.reason') || {}).textContent || null,
          bars: Array.from(card.querySelectorAll('.bar')).map(bar => ({
            label: bar.querySelector('.label').textContent,
            pct: bar.querySelector('.pct').textContent,
            fill: bar.querySelector('.fill').getBoundingClientRect().width,
            track: bar.querySelector('.track').getBoundingClientRect().width}))}));
    """)


def test_page_shows_predictions_bars_and_the_bad_file(live_app, browser, tmp_path):
    base, app = live_app
    images = random_images(2, seed=20)
    files = [("shirt.png", png_bytes(images[0])), ("notes.png", b"not an image at all"),
             ("boot.png", png_bytes(images[1]))]
    for name, data in files:
        (tmp_path / name).write_bytes(data)
    expected = app.test_client().post(
        "/predict?partial=true&model=tiny&top_k=3", content_type="multipart/form-data",
        data={"images": [(io.BytesIO(data), name) for name, data in files]}).get_json()
    assert expected["partial"] is True and len(expected["predictions"]) == 2

    browser.get(base + "/")
    topk = browser.find_element(By.ID, "topk")
    assert (topk.get_attribute("max"), topk.get_attribute("value")) == ("10", "3")
    browser.find_element(By.ID, "files").send_keys(
        "\n".join(str(tmp_path / name) for name, _ in files))
    WebDriverWait(browser, WAIT).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .card")) == 3)
    cards = rendered_cards(browser)
    status = browser.find_element(By.ID, "status").text
    if os.environ.get("CNN_PAGE_SCREENSHOT"):   # the whole page, results included
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1000, height + 140)
        browser.save_screenshot(os.environ["CNN_PAGE_SCREENSHOT"])

    assert [(c["name"], c["bad"]) for c in cards] == [
        ("shirt.png", False), ("notes.png", True), ("boot.png", False)]
    (error,) = expected["errors"]
    assert cards[1]["reason"] == "Not classified: " + error["error"]
    assert "not a recognised image" in cards[1]["reason"]
    assert "2 of 3 images classified, 1 could not be read" in status
    for card, p in zip([cards[0], cards[2]], expected["predictions"]):
        assert card["top"] == f"{p['class']} \u2014 {100 * p['probability']:.1f}%"
        assert [(b["label"], b["pct"]) for b in card["bars"]] == [
            (t["class"], f"{100 * t['probability']:.1f}%") for t in p["top_k"]]
        first, second = card["bars"][:2]
        assert first["fill"] > second["fill"] > 0
        for bar, t in zip(card["bars"], p["top_k"]):
            assert bar["track"] > 50
            assert bar["fill"] == pytest.approx(t["probability"] * bar["track"],
                                                abs=BAR_SLACK_PX)


def choose_model(driver, name):
    driver.execute_script("""
        var menu = document.getElementById('model');
        menu.value = arguments[0]; menu.dispatchEvent(new Event('change'));""", name)


def test_top_k_input_follows_the_model_menu(live_app, browser):
    base, _ = live_app
    browser.get(base + "/")
    topk = browser.find_element(By.ID, "topk")
    topk.clear()
    topk.send_keys("8")
    choose_model(browser, "pets")                       # 3 classes: 8 is out of range
    assert (topk.get_attribute("min"), topk.get_attribute("max")) == ("1", "3")
    assert topk.get_attribute("value") == "3"
    topk.clear()
    topk.send_keys("2")
    choose_model(browser, "tiny")                       # 10 classes: 2 is kept
    assert (topk.get_attribute("max"), topk.get_attribute("value")) == ("10", "2")
