"""The page in a real browser: headless Chromium uploads two real BreakHis crops and a broken
file through the form, as a pathologist would, and reads the answers off the page."""

import glob
import os
import shutil
import threading

import pytest

from serving import predict, web

pytestmark = pytest.mark.e2e

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def page_url(first_run):
    import waitress

    model_dir = first_run["summary"]["pushed_to"]
    backend = predict.LocalBackend(model_dir, predict.EXPLAIN)
    app = web.create_app(backend, web.model_facts(model_dir, None, None))
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=2)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.effective_port}/"
    server.close()


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip(f"Debian's chromium and chromium-driver are not installed ({CHROMIUM})")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_two_real_crops_and_a_broken_file(page_url, browser, breakhis_crops, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    crops = sorted(glob.glob(os.path.join(breakhis_crops, "**", "*.*"), recursive=True))
    crops = [c for c in crops if c.lower().endswith((".png", ".jpg", ".jpeg", ".tif"))]
    benign = next(c for c in crops if "SOB_B_" in os.path.basename(c))
    malignant = next(c for c in crops if "SOB_M_" in os.path.basename(c))
    broken = tmp_path / "half.png"
    with open(benign, "rb") as f:
        broken.write_bytes(f.read()[:200])  # a truncated PNG
    uploads = [shutil.copy(benign, tmp_path), shutil.copy(malignant, tmp_path), str(broken)]

    browser.get(page_url)
    assert web.NOTICE in browser.find_element(By.ID, "notice").text
    browser.find_element(By.ID, "images").send_keys("\n".join(uploads))
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 120).until(ready.presence_of_element_located((By.ID, "patients")))

    cards = browser.find_elements(By.CSS_SELECTOR, ".card.result")
    assert [c.get_attribute("data-file") for c in cards] == [os.path.basename(u) for u in uploads]
    for card in cards[:2]:
        probability = float(card.find_element(By.CLASS_NAME, "probability").text)
        assert 0.0 <= probability <= 1.0
        overlay = card.find_element(By.CLASS_NAME, "overlay")
        assert browser.execute_script("return arguments[0].naturalWidth", overlay) > 100
    error = cards[2].find_element(By.CLASS_NAME, "file-error").text
    assert "truncated or corrupt PNG image" in error
    patients = browser.find_elements(By.CSS_SELECTOR, "#patients tr.patient")
    assert len(patients) == 3  # two patients by file name, the broken file alone
    browser.save_screenshot(str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").stat().st_size > 10_000
