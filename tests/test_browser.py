"""End to end in a real browser: `transferkit serve` driven by headless Chromium, and report.html opened.

Needs Debian's ``chromium`` and ``chromium-driver`` (Selenium drives them; nothing is
downloaded at run time). Skipped only on a developer machine without Chromium; with ``CI`` or
``TRANSFERKIT_REQUIRE_BROWSER=1`` set, a missing browser fails the test instead.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fitted_models import fit_tiny_model, single_threaded_torch  # noqa: F401 - autouse: one torch thread in this module
from transferkit.cli import app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
REQUIRED = bool(os.environ.get("CI")) or os.environ.get("TRANSFERKIT_REQUIRE_BROWSER") == "1"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        message = "headless Chromium and chromedriver are needed (apt-get install chromium chromium-driver)"
        if REQUIRED:
            pytest.fail(message + "; CI or TRANSFERKIT_REQUIRE_BROWSER=1 is set, so this is not skipped")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def model_dir(image_folder, tiny_weights, tmp_path_factory):
    return fit_tiny_model(image_folder, tiny_weights, tmp_path_factory.mktemp("browser") / "model", strategy="logistic")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """`transferkit serve` in its own process on a free port of 127.0.0.1."""
    yield from serve_model(model_dir, tmp_path_factory)


def serve_model(model_dir, tmp_path_factory):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(tmp_path_factory.mktemp("server") / "serve.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", "transferkit.cli", "serve", str(model_dir), "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if json.load(response) == {"status": "ok"}:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            log.seek(0)
            pytest.fail(f"transferkit serve did not start:\n{log.read()[-3000:]}")
        time.sleep(0.2)
    try:
        yield url
    finally:  # also when the test using it fails
        process.terminate()
        process.wait(timeout=10)
        log.close()


def severe_console_messages(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_uploading_on_the_page_shows_the_top_class_of_predict(browser, server, model_dir, image_folder, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    image = image_folder / "red" / "003.png"
    result = CliRunner().invoke(app, ["predict", str(model_dir), str(image), "--json", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    expected = json.loads((tmp_path / "p.json").read_text())["predictions"][0]["label"]

    browser.get(server + "/")
    WebDriverWait(browser, 20).until(lambda d: "classes:" in d.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "files").send_keys(str(image))
    shown = WebDriverWait(browser, 30).until(expected_conditions.visibility_of_element_located((By.CLASS_NAME, "top-class")))
    assert shown.text == expected
    WebDriverWait(browser, 10).until(lambda d: d.execute_script(
        "const i = document.querySelector('img.heatmap'); return i && i.complete && i.naturalWidth > 0;"))
    assert severe_console_messages(browser) == []


def test_one_refused_file_fails_alone_and_pictures_keep_their_box(browser, server, image_folder, tmp_path):
    """Issue 33 item 15: one non-image among the dropped files failed the whole batch on the page,
    and square pictures showed at 160 x 194 (stretched to the text's height)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    junk = tmp_path / "notes.png"
    junk.write_text("not an image")
    browser.get(server + "/")
    WebDriverWait(browser, 20).until(lambda d: "classes:" in d.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "files").send_keys("\n".join([str(image_folder / "red" / "003.png"), str(junk)]))
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "status").text.startswith("done"))
    assert len(browser.find_elements(By.CLASS_NAME, "top-class")) == 1  # the good file is answered
    refused = browser.find_elements(By.CSS_SELECTOR, ".result .error")
    assert refused and "notes.png" in refused[0].text
    assert "1 of 2" in browser.find_element(By.ID, "status").text
    box = browser.find_element(By.CSS_SELECTOR, ".result img.original")
    assert (box.size["width"], box.size["height"]) == (160, 160)
    # the browser logs the refused upload's 415, and nothing else
    assert all("415" in message for message in severe_console_messages(browser))


def test_report_html_loads_every_image_without_console_errors(browser, model_dir, image_folder, tmp_path):
    result = CliRunner().invoke(app, ["report", str(model_dir), str(image_folder), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    browser.get((tmp_path / "report" / "report.html").as_uri())
    images = browser.execute_script("return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth]);")
    assert len(images) >= 2
    assert all(complete and width > 0 for _, complete, width in images), images
    assert severe_console_messages(browser) == []


# ----------------------------------------------------------------------------- heatmaps at 32 and 224 px
def square_image(rng, square: bool, size: int = 64):
    """Grey noise; with ``square``, a bright square somewhere: a class decided by one place."""
    image = np.clip(110 + rng.integers(-30, 30, (size, size, 3)), 0, 255).astype(np.uint8)
    if square:
        y, x = rng.integers(0, size - size // 3, 2)
        image[y : y + size // 3, x : x + size // 3] = (250, 240, 60)
    return image


@pytest.fixture(scope="module")
def square_folders(tmp_path_factory):
    """A training folder (square / plain) and a test folder where some labels are wrong, so the
    report has confident mistakes to show with their heatmaps."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("squares")
    for part, flip in (("train", set()), ("test", {0, 1, 2, 3})):
        for index in range(16):
            square = index % 2 == 1
            label = ("square" if square else "plain") if index not in flip else ("plain" if square else "square")
            (root / part / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(square_image(rng, square)).save(root / part / label / f"{index:03d}.png")
    return root / "train", root / "test"


def assert_heatmap_not_one_colour(png: bytes, what: str) -> None:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    saturation = pixels.max(axis=2) - pixels.min(axis=2)
    # an overlay of the jet colour map: many colours, and coloured (a greyed "no map" is not)
    assert colours > 20 and pixels.std(axis=(0, 1)).max() > 8 and (saturation > 60).mean() > 0.2, (what, colours)


@pytest.mark.parametrize("size", [32, 224])
def test_report_and_page_show_a_heatmap_that_is_not_one_colour(browser, square_folders, tiny_weights, tmp_path_factory, tmp_path, size):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    train, test = square_folders
    model = fit_tiny_model(train, tiny_weights, tmp_path / "model", strategy="logistic", image_size=size)
    result = CliRunner().invoke(app, ["report", str(model), str(test), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    mistakes = json.loads((tmp_path / "report" / "report.json").read_text())["mistakes"]
    useful = [m["rank"] for m in mistakes if m["heatmap"].startswith("Grad-CAM")]
    assert useful, mistakes
    browser.set_window_size(1200, 2400)
    browser.get((tmp_path / "report" / "report.html").as_uri())
    shown = browser.find_elements(By.CSS_SELECTOR, ".mistake img.heatmap")
    assert shown and browser.find_elements(By.CSS_SELECTOR, "figure.scale img")
    target = next(img for img in shown if img.get_attribute("alt").endswith(f" {useful[0]}"))
    browser.execute_script("arguments[0].scrollIntoView();", target)
    assert_heatmap_not_one_colour(target.screenshot_as_png, f"report at {size} px")
    assert severe_console_messages(browser) == []

    for url in serve_model(model, tmp_path_factory):
        browser.get(url + "/")
        WebDriverWait(browser, 30).until(lambda d: "classes:" in d.find_element(By.ID, "model").text)
        # an image whose map the report found useful: the page asks for the same map (predicted class)
        image = next(m["source"] for m in mistakes if m["rank"] == useful[0])
        browser.find_element(By.ID, "files").send_keys(str(image))
        WebDriverWait(browser, 60).until(expected_conditions.visibility_of_element_located((By.CLASS_NAME, "top-class")))
        assert browser.find_elements(By.CSS_SELECTOR, ".result img.original") and browser.find_elements(By.CSS_SELECTOR, ".result .scale")
        heatmap = WebDriverWait(browser, 10).until(lambda d: d.find_element(By.CSS_SELECTOR, "img.heatmap"))
        WebDriverWait(browser, 10).until(lambda d: d.execute_script("const i = document.querySelector('img.heatmap'); return i.complete && i.naturalWidth > 0;"))
        assert_heatmap_not_one_colour(heatmap.screenshot_as_png, f"served page at {size} px")
        assert severe_console_messages(browser) == []
