r"""The Gradio layer without a browser: the page builds on a model, its handlers turn the
explorer's results into the figure, the score table and the downloads, and a bad input
into one line in the message box (never an exception). Needs Gradio (the ``[app]``
extra)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from captum_clip_surgery.web.explorer import Explorer
from tests.models import tiny_vit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def handlers(tmp_path_factory):
    pytest.importorskip("gradio")
    from captum_clip_surgery.web.ui import build_app

    demo = build_app(Explorer(tiny_vit(), name="tiny"), scenes=2,
                     workdir=str(tmp_path_factory.mktemp("app")))
    return {block.fn.__name__: block.fn for block in demo.fns.values()}


def test_the_page_wires_every_tab(handlers):
    assert {"on_upload", "on_pick", "on_explain", "on_segment", "on_points"} <= set(handlers)


def test_explain_fills_figure_scores_and_downloads(handlers, tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.full((40, 56, 3), 120, np.uint8)).save(path)
    figure, table, files, message = handlers["on_explain"](
        str(path), "a dog, a cat", ["surgery", "raw"], progress=lambda *a, **k: None)
    assert message == ""
    assert [os.path.basename(f) for f in files] == ["x.surgery.npy", "x.raw.npy", "x.png"]
    assert figure == files[-1] and "| a dog |" in table and "| a cat |" in table
    assert np.load(files[0]).shape == (2, 40, 56)


@pytest.mark.parametrize("texts, methods, words", [
    ("", ["surgery"], "texts: type at least one text"),
    ("a dog", [], "methods: pick at least one method"),
    ("a dog", ["nope"], "methods: unknown method 'nope'"),
])
def test_bad_inputs_become_one_line_messages(handlers, tmp_path, texts, methods, words):
    path = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(path)
    figure, _, files, message = handlers["on_explain"](str(path), texts, methods,
                                                       progress=lambda *a, **k: None)
    assert figure is None and files is None
    assert message.startswith(words) and "\n" not in message


def test_unreadable_upload_and_internal_errors_are_messages(handlers, tmp_path, monkeypatch):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    current, preview, message = handlers["on_upload"](str(broken))
    assert current == str(broken) and preview is None
    assert message.startswith("image: cannot read broken.jpg as an image")
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)

    def boom(*args, **kwargs):
        raise RuntimeError("out of memory\nwith details")

    monkeypatch.setattr(Explorer, "segment", boom)
    figure, message = handlers["on_segment"](str(image), "a dog", "surgery", False, False,
                                             progress=lambda *a, **k: None)
    assert figure is None
    assert message == ("internal error (RuntimeError): out of memory; the server's log has "
                       "the details")
