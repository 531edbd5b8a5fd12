r"""How fast ``clip-surgery serve`` answers in a real browser, and how long its browser
test runs.

Starts ``clip-surgery serve`` (the shipped model, CPU) on a free loopback port, opens the
page in headless Chromium (Selenium) and clicks **Explain** on the page's defaults (the
first held-out scene, its four texts, CLIP Surgery and raw CLIP) as soon as the button
is there. It prints

- the server's start (command → URL printed),
- page load (navigation → the Explain button is there),
- page load → first maps (navigation → the figure and the three downloads are shown),
  once on a fresh server (cold: the texts are encoded for the first time) and, with
  ``--repeats N``, the median of N reloads of the page (warm);

then runs ``tests/web/test_browser.py`` in a subprocess and prints its wall time
(``--no-test`` skips it; ``--screenshot docs/app.png`` has the test write its screenshot
there)::

    python benchmarks/bench_app.py --repeats 3 --screenshot docs/app.png

Needs the ``[app]`` extra, Selenium and Debian's ``chromium`` and ``chromium-driver``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.web.browser import Page, Server, find_chromium  # noqa: E402


def first_maps(page: Page) -> float:
    r"""Seconds from navigating to the page to the first maps on the page's defaults."""
    start = time.perf_counter()
    page.driver.get(page.url)
    page.wait_css("#explain").click()
    page.wait_downloads(3, timeout=600)
    page.until(lambda: page.find("#maps img"), 60, "the maps figure")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="warm reloads (default 3)")
    parser.add_argument("--no-test", action="store_true", help="do not run the browser test")
    parser.add_argument("--screenshot", default=None, metavar="PNG",
                        help="where the browser test writes its screenshot (e.g. docs/app.png)")
    args = parser.parse_args()
    browser, driver, why = find_chromium()
    if browser is None:
        sys.exit(f"bench_app: {why}")
    import torch

    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, device cpu; "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    with tempfile.TemporaryDirectory() as folder:
        server = Server(temp_dir=os.path.join(folder, "gradio"))
        try:
            page = Page(server.url, folder, browser, driver)
            try:
                load = page.load()
                cold = first_maps(page)
                warm: List[float] = [first_maps(page) for _ in range(args.repeats)]
            finally:
                page.close()
        finally:
            server.stop()
    print("| step | seconds |")
    print("|---|---:|")
    print(f"| server start (command → URL printed) | {server.seconds_to_url:.1f} |")
    print(f"| page load (navigation → Explain button) | {load:.2f} |")
    print(f"| page load → first maps, fresh server | {cold:.2f} |")
    if warm:
        print(f"| page load → first maps, reloaded page (median of {len(warm)}) | "
              f"{statistics.median(warm):.2f} |")
    if args.no_test:
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
        return
    env = dict(os.environ)
    if args.screenshot:
        env["CLIP_SURGERY_APP_SCREENSHOT"] = os.path.abspath(args.screenshot)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/web/test_browser.py", "-q", "-s",
         "-p", "no:cacheprovider", "-W", "ignore"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    total = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit("browser test failed:\n" + done.stdout[-3000:] + done.stderr[-3000:])
    inner = re.search(r"browser test: ([0-9.]+) s", done.stdout)
    print(f"| browser test, python -m pytest tests/web/test_browser.py (wall) | {total:.1f} |")
    if inner:
        print(f"| browser test, the test function itself | {float(inner.group(1)):.1f} |")
    up = re.search(r"server up in ([0-9.]+) s", done.stdout)
    if up:
        print(f"| browser test, of which its server's start | {float(up.group(1)):.1f} |")
    if args.screenshot:
        print(f"screenshot: {args.screenshot}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
