"""Screenshot of the web page answering demo images and a broken file (for the README).

    .venv/bin/python scripts/web_screenshot.py --model-dir MODEL --images A.png B.png \
        --output docs/images/web-page.png

Uses Debian's chromium and chromium-driver (apt-get install chromium chromium-driver).
"""

import argparse
import os
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    import waitress
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    from serving import predict, web

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--images", nargs="+", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    backend = predict.LocalBackend(args.model_dir, predict.EXPLAIN)
    app = web.create_app(backend, web.model_facts(args.model_dir, None, None))
    server = waitress.create_server(app, host="127.0.0.1", port=0)
    threading.Thread(target=server.run, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--window-size=1280,1700"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            broken = os.path.join(tmp, "truncated.png")
            with open(args.images[0], "rb") as f, open(broken, "wb") as out:
                out.write(f.read()[:200])
            driver.get(f"http://127.0.0.1:{server.effective_port}/")
            files = [os.path.abspath(p) for p in args.images] + [broken]
            driver.find_element(By.ID, "images").send_keys("\n".join(files))
            driver.find_element(By.ID, "submit").click()
            WebDriverWait(driver, 120).until(ready.presence_of_element_located((By.ID, "patients")))
            driver.save_screenshot(args.output)
    finally:
        driver.quit()
        server.close()
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
