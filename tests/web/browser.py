r"""Drive ``clip-surgery serve`` in headless Chromium (Debian's ``chromium`` and
``chromium-driver``) through Selenium: the browser test and
``benchmarks/bench_app.py`` share these steps.

Chromium runs with a fresh profile and no background networking (the machine has no
internet); Selenium is given the system driver, so it never looks for one online.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,1500",
)


def find_chromium() -> Tuple[Optional[str], Optional[str], str]:
    r"""``(chromium, chromedriver, why not)``: the paths, or ``None`` and the reason."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None, None, "selenium is not installed (pip install -e '.[test]')"
    try:
        import gradio  # noqa: F401
    except ImportError:
        return None, None, "gradio is not installed (pip install -e '.[app]')"
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser")
                    if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        return None, None, ("Chromium could not be installed here (apt-get install -y chromium "
                            "chromium-driver): no chromium / chromedriver on the PATH")
    return browser, driver, ""


def free_port() -> int:
    r"""A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    r"""``python -m captum_clip_surgery serve ARGS`` in a subprocess, on a free loopback
    port; ``url`` once it has printed it. Stopped (its process only) by :meth:`stop`."""

    def __init__(self, args: Sequence[str] = (), timeout: float = 180.0,
                 temp_dir: Optional[str] = None) -> None:
        self.port = free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False")
        if temp_dir:  # Gradio's uploads and served files go there, not to /tmp/gradio
            env["GRADIO_TEMP_DIR"] = temp_dir
        start = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "captum_clip_surgery", "serve", "--port", str(self.port),
             *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        self.lines: List[str] = []
        self.url = ""
        ready = threading.Event()

        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                self.lines.append(line)
                if " on http://" in line and not ready.is_set():
                    self.url = line.split(" on ", 1)[1].split()[0]
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        ready.wait(timeout)
        self.seconds_to_url = time.perf_counter() - start
        if not self.url:
            self.stop()
            raise RuntimeError("clip-surgery serve did not start:\n" + "".join(self.lines))

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class Page:
    r"""The explorer page in headless Chromium.

    Args:
        url (str): the page.
        downloads (str): the folder downloads go to.
        browser, driver (str): paths from :func:`find_chromium`.
    """

    def __init__(self, url: str, downloads: str, browser: str, driver: str) -> None:
        os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never look online
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.profile}")
        options.add_experimental_option("prefs", {
            "download.default_directory": downloads,
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        })
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
        self.downloads = downloads
        self.requested: List[str] = []
        self.driver = webdriver.Chrome(service=Service(executable_path=driver), options=options)
        self.driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                                    {"behavior": "allow", "downloadPath": downloads})
        self.url = url

    # --- steps -------------------------------------------------------------------------
    def load(self, timeout: float = 60.0) -> float:
        r"""Open the page; returns the seconds until the Explain button is there."""
        start = time.perf_counter()
        self.driver.get(self.url)
        self.wait_css("#explain", timeout)
        return time.perf_counter() - start

    def wait_css(self, css: str, timeout: float = 60.0):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as EC
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout).until(
            EC.presence_of_element_located((By.CSS_SELECTOR, css)))

    def find(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def upload(self, path: str, timeout: float = 30.0) -> None:
        r"""Upload ``path`` through the file input and wait until the page took it."""
        if not self.find("#upload input[type=file]"):  # a file is there: clear it first
            self.click('#upload button[aria-label="Clear"]')
        field = self.wait_css("#upload input[type=file]", timeout)
        field.send_keys(os.path.abspath(path))
        name = os.path.basename(path)
        self.until(lambda: self.find(f'#upload td.filename[aria-label="{name}"]'), timeout,
                   f"the upload of {name}")

    def set_texts(self, text: str) -> None:
        box = self.wait_css("#texts textarea, #texts input")
        box.clear()
        box.send_keys(text)
        box.send_keys("\t")  # blur: Gradio sends the value with the next event

    def set_methods(self, titles: Sequence[str]) -> None:
        r"""Tick exactly the methods whose titles are given."""
        for label in self.find("#methods label"):
            box = label.find_element("css selector", "input")
            if box.is_selected() != (label.text.strip() in titles):
                label.click()
        chosen = [lb.text.strip() for lb in self.find("#methods label")
                  if lb.find_element("css selector", "input").is_selected()]
        assert sorted(chosen) == sorted(titles), chosen

    def click(self, css: str) -> None:
        self.wait_css(css).click()

    def message(self) -> str:
        box = self.find("#message textarea, #message input")
        return (box[0].get_attribute("value") or "") if box else ""

    def download_links(self) -> Dict[str, str]:
        r"""``{file name: href}`` of the Downloads box."""
        out = {}
        for a in self.find("#downloads a"):
            href = a.get_attribute("href") or ""
            name = a.get_attribute("download") or a.text.strip()
            if href and name:
                out[name] = href
        return out

    def wait_downloads(self, count: int, timeout: float = 300.0) -> Dict[str, str]:
        self.until(lambda: len(self.download_links()) >= count, timeout, "the downloads")
        return self.download_links()

    def download(self, name: str, timeout: float = 60.0) -> str:
        r"""Click the download link of ``name``; returns the file the browser saved."""
        links = [a for a in self.find("#downloads a")
                 if (a.get_attribute("download") or a.text.strip()) == name]
        assert links, f"no download link for {name}: {sorted(self.download_links())}"
        self.driver.execute_script("arguments[0].click();", links[0])
        target = os.path.join(self.downloads, name)
        self.until(lambda: os.path.exists(target) and not os.path.exists(target + ".crdownload"),
                   timeout, f"the download of {name}")
        return target

    def until(self, condition, timeout: float, what: str) -> None:
        end = time.perf_counter() + timeout
        while time.perf_counter() < end:
            try:
                if condition():
                    return
            except Exception:  # the page is re-rendering: ask again
                pass
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")

    def requests(self) -> List[str]:
        r"""Every URL the page has requested so far (from Chromium's performance log)."""
        import json

        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                self.requested.append(message["params"]["request"]["url"])
        return list(self.requested)

    def screenshot(self, path: str) -> str:
        r"""A screenshot of the whole page (the window stretched to its height)."""
        height = int(self.driver.execute_script(
            "return Math.max(document.body.scrollHeight, "
            "document.documentElement.scrollHeight);"))
        self.driver.set_window_size(1280, min(max(height, 800), 4000))
        time.sleep(0.5)
        self.driver.save_screenshot(path)
        return path

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)
