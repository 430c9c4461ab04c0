"""Regenerate the README's picture of a job page: `convnd up` on a free port, the digits example
submitted, the page followed in headless Chromium until the job ends, then a screenshot.

    python3 scripts/dashboard_screenshot.py                      # -> docs/dashboard-job.png
    python3 scripts/dashboard_screenshot.py --epochs 5 --out /tmp/job.png

Needs chromium and chromedriver (scripts/install_browser.sh).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--hide-scrollbars", "--window-size=1280,900")


def wait_for(check, what: str, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    raise SystemExit(f"gave up waiting for {what} after {timeout_s} s")


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        raise SystemExit("chromium and chromedriver are needed: scripts/install_browser.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--example", type=Path, default=ROOT / "examples" / "digits-2d.json")
    ap.add_argument("--epochs", type=int, default=None, help="override the example's epochs")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard-job.png")
    args = ap.parse_args()
    job = json.loads(args.example.read_text())
    if args.epochs:
        job["epochs"] = args.epochs
    code = "from app.core.processes import free_port; print(free_port())"
    port = int(subprocess.check_output([sys.executable, "-c", code], cwd=ROOT))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVND_") and k != "REDIS_URL"}
    data = tempfile.mkdtemp(prefix="convnd-screenshot-")
    up = subprocess.Popen([sys.executable, "-m", "app.cli", "up", "--port", str(port), "--data-dir", data],
                          cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    driver = None
    try:
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, "the service", 90)
        job_id = httpx.post(f"{url}/v1/train", json=job, timeout=30).raise_for_status().json()["id"]
        driver = browser()
        driver.get(f"{url}/ui/jobs/{job_id}")
        def state() -> str:
            return driver.find_element("id", "state").text

        wait_for(lambda: state() in ("succeeded", "failed", "cancelled"), "the job to end", 900)
        time.sleep(1.0)  # the last event's redraw
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, min(height + 20, 3000))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.out))
        print(f"{state()}: {args.out} ({url}/ui/jobs/{job_id})")
    finally:
        if driver is not None:
            driver.quit()
        up.send_signal(signal.SIGTERM)
        up.wait(60)
        shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
