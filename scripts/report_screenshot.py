"""Screenshots of an evaluation report for the README: the page's top, and its Grad-CAM
row and model card sections, as a browser renders them.

    .venv/bin/python scripts/report_screenshot.py --report .../EvalReport/report/N/report.html \
        --output-dir docs/images

Uses Debian's chromium and chromium-driver (apt-get install chromium chromium-driver).
"""

import argparse
import os


def main() -> int:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", required=True, help="report.html of an EvalReport artifact")
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args()
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--hide-scrollbars", "--window-size=1200,1300"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    written = []
    try:
        driver.get("file://" + os.path.abspath(args.report))
        top = os.path.join(args.output_dir, "eval-report.png")
        driver.save_screenshot(top)
        written.append(top)
        for anchor in ("grad-cam", "model-card"):
            path = os.path.join(args.output_dir, f"eval-report-{anchor}.png")
            driver.find_element(By.ID, anchor).screenshot(path)
            written.append(path)
    finally:
        driver.quit()
    print("\n".join(written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
