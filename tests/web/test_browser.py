r"""``clip-surgery serve`` in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven by Selenium loads the page of the command, uploads an image,
types two texts, picks two methods, clicks Explain, downloads the ``.npy`` files and
finds them equal to the API's maps and to what ``clip-surgery explain --images ...
--save-maps`` writes; bad inputs show a one-line message in the page; the segmentation
and text → points tabs draw their figures. A screenshot is saved in the test's folder
(and to ``$CLIP_SURGERY_APP_SCREENSHOT`` when set: ``docs/app.png`` is made that way).

Skipped, with the reason, only where Chromium (or Selenium / Gradio) is not installed;
``.ci/run`` installs them.
"""

from __future__ import annotations

import os
import shutil
import time
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from captum_clip_surgery import CLIPZeroShotClassifier, explain_images
from captum_clip_surgery.cli import main
from captum_clip_surgery.cli.common import square_transform
from captum_clip_surgery.scenes import ScenesWorld
from captum_clip_surgery.scenes.world import HELD_OUT_START
from tests.web.browser import Page, Server, find_chromium

pytestmark = pytest.mark.slow

TEXTS = ["kiwi", "watermelon"]  # two of the uploaded scene's objects
METHODS = {"surgery": "CLIP Surgery", "gradcam": "GradCAM"}


@pytest.fixture(scope="module")
def chromium():
    browser, driver, why = find_chromium()
    if browser is None:
        pytest.skip(why)
    return browser, driver


def test_the_page_explains_an_uploaded_image(chromium, scenes_clip, tmp_path):
    start = time.perf_counter()
    photo = tmp_path / "photo.png"
    ScenesWorld(seed=0).sample(HELD_OUT_START + 7)["image"].resize((120, 80)).save(photo)  # kiwi, watermelon on water
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not an image")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    gradio_files = tmp_path / "gradio"
    server = Server(temp_dir=str(gradio_files))
    page = None
    try:
        assert server.url.startswith(f"http://127.0.0.1:{server.port}")
        page = Page(server.url, str(downloads), *chromium)
        page.load()
        # the default: the first held-out scene with its objects and background as texts
        world = ScenesWorld(seed=0)
        scene = world.sample(world.default_scene())
        default_texts = ", ".join(scene["objects"] + [scene["background"]])
        assert page.find("#texts textarea, #texts input")[0].get_attribute("value") == \
            default_texts

        page.upload(str(photo))
        page.set_texts(", ".join(TEXTS))
        page.set_methods(list(METHODS.values()))
        page.click("#explain")
        links = page.wait_downloads(3)
        assert sorted(links) == sorted([f"photo.{m}.npy" for m in METHODS] + ["photo.png"])
        page.until(lambda: page.find("#maps img"), 30, "the maps figure")
        assert page.message() == ""
        scores = page.find("#scores")[0].text
        assert all(t in scores for t in TEXTS)
        shot = page.screenshot(str(tmp_path / "app.png"))
        if os.environ.get("CLIP_SURGERY_APP_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["CLIP_SURGERY_APP_SCREENSHOT"])

        # the downloads: the API's maps, and what clip-surgery explain --save-maps writes
        model, _, tokenizer = scenes_clip
        clf = CLIPZeroShotClassifier(model, TEXTS, tokenizer=tokenizer)
        for method in METHODS:
            saved = np.load(page.download(f"photo.{method}.npy"))
            assert saved.dtype == np.float32 and saved.shape == (2, 80, 120)
            (_, api), = explain_images([str(photo)], clf, TEXTS, method,
                                       preprocess=square_transform(model, None))
            np.testing.assert_array_equal(saved, api.numpy())
            out = tmp_path / f"cli-{method}"
            assert main(["explain", "--images", str(photo), "--text", TEXTS[0], "--text",
                         TEXTS[1], "--method", method, "--save-maps", "--no-figures",
                         "--workers", "0", "--out", str(out)]) == 0
            np.testing.assert_array_equal(saved, np.load(out / "photo.npy"))
        figure = Image.open(page.download("photo.png"))
        assert figure.size[0] > 400

        # bad inputs: one line in the page, no traceback
        page.set_texts(" , ")
        page.click("#explain")
        page.until(lambda: page.message().startswith("texts: type at least one text"), 60,
                   "the message for no text")
        page.set_texts(", ".join(TEXTS))
        page.upload(str(broken))
        page.until(lambda: page.message().startswith("image: cannot read broken.png"), 60,
                   "the message for an unreadable image")
        page.click("#explain")
        page.until(lambda: "cannot read broken.png" in page.message(), 60,
                   "the message after Explain")
        assert "Traceback" not in page.driver.page_source

        # the other tabs, on a gallery scene
        page.find("#scenes button.thumbnail-item")[1].click()
        second = world.sample(world.default_scene() + 1)
        page.until(lambda: page.find("#texts textarea")[0].get_attribute("value") ==
                   ", ".join(second["objects"] + [second["background"]]), 30, "the scene")
        page.until(lambda: page.message() == "", 30, "the message to clear")
        _click_tab(page, "Segmentation")
        page.click("#pamr input")
        page.click("#segment")
        page.until(lambda: page.find("#seg-figure img"), 120, "the segmentation figure")
        _click_tab(page, "Text → points")
        page.click("#points")
        page.until(lambda: page.find("#points-figure img"), 120, "the points figure")
        assert page.message() == ""
        page.screenshot(str(tmp_path / "app-tabs.png"))
        # the page asks nothing of any other machine (no fonts, analytics or CDN)
        urls = page.requests()
        web = [u for u in urls if urlsplit(u).scheme in ("http", "https", "ws", "wss")]
        assert len(web) > 10
        outside = [u for u in web if urlsplit(u).netloc != f"127.0.0.1:{server.port}"]
        assert outside == [], outside
    finally:
        if page is not None:
            page.close()
        server.stop()
    assert "Traceback" not in server.log, server.log
    print(f"browser test: {time.perf_counter() - start:.1f} s (server up in "
          f"{server.seconds_to_url:.1f} s)")


def _click_tab(page: Page, title: str) -> None:
    for button in page.find("button[role=tab], .tab-nav button, button"):
        if button.text.strip() == title:
            button.click()
            return
    raise AssertionError(f"no tab {title!r}")
