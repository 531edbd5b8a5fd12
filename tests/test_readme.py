r"""Every ```python block of the README runs as written (issue 18, item 19).

The blocks run in order in one namespace, as a reader would paste them into one session.
Where a block downloads weights, a tiny model built in code stands in (open_clip's
``create_model_and_transforms`` / ``create_model``, transformers' ``from_pretrained``,
the SAM checkpoint); the images the blocks open (``a.jpg``, ``b.jpg``, ``photos/``) are
generated in a temporary working directory. The blocks themselves are not edited.
"""

from __future__ import annotations

import os
import re
from typing import List

import pytest
import torch
from PIL import Image

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def readme_python_blocks() -> List[str]:
    r"""The README's ```python blocks, in order."""
    with open(README, encoding="utf-8") as fh:
        return re.findall(r"^```python\n(.*?)^```", fh.read(), flags=re.S | re.M)


def test_the_blocks_are_found():
    blocks = readme_python_blocks()
    assert len(blocks) >= 8
    assert any("IntegratedGradients" in b for b in blocks)


def _photos(root) -> None:
    g = torch.Generator().manual_seed(0)
    for name, size in (("a.jpg", (64, 48)), ("b.jpg", (40, 56))):
        pixels = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(root / name)
    (root / "photos").mkdir()
    for i in range(3):
        Image.new("RGB", (36 + 8 * i, 30), color=(40 * i, 120, 200)).save(root / "photos" / f"{i}.jpg")


@pytest.mark.slow
def test_readme_python_blocks_run_in_order(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import open_clip

    import captum_clip_surgery
    from captum_clip_surgery.methods.registry import method_names, unregister_method
    from tests.models import tiny_sam_predictor

    hosts = pytest.importorskip("tests.adapters.hosts")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("segment_anything")

    _photos(tmp_path)
    monkeypatch.chdir(tmp_path)

    # open_clip "ViT-B-16" / "openai": a 3-block ViT in OpenAI's layout (context 77, CLIP's
    # vocabulary, so open_clip's own tokenizer fits it), 32-px inputs, random weights
    preprocess = open_clip.image_transform(hosts.IMAGE, is_train=False)

    def create_model_and_transforms(name, pretrained=None, **kwargs):
        return hosts.openclip_vit(), preprocess, preprocess

    def create_model(name, pretrained=None, **kwargs):
        return hosts.openclip_vit().to(kwargs.get("device", "cpu"))

    monkeypatch.setattr(open_clip, "create_model_and_transforms", create_model_and_transforms)
    monkeypatch.setattr(open_clip, "create_model", create_model)
    # transformers "openai/clip-vit-base-patch16": the same weights as a CLIPModel, and a
    # processor with CLIP's real BPE built offline
    processor = transformers.CLIPProcessor(
        image_processor=transformers.CLIPImageProcessor(
            size={"shortest_edge": hosts.IMAGE}, crop_size={"height": hosts.IMAGE, "width": hosts.IMAGE}),
        tokenizer=hosts.clip_tokenizer(),
    )
    monkeypatch.setattr(transformers.CLIPModel, "from_pretrained",
                        lambda *args, **kwargs: hosts.to_hf(hosts.openclip_vit()))
    monkeypatch.setattr(transformers.CLIPProcessor, "from_pretrained",
                        lambda *args, **kwargs: processor)
    # the SAM checkpoint: a tiny random SAM predictor
    monkeypatch.setattr(captum_clip_surgery, "build_sam_predictor",
                        lambda *args, **kwargs: tiny_sam_predictor())

    registered = set(method_names())
    namespace: dict = {"__name__": "__readme__"}
    try:
        for i, block in enumerate(readme_python_blocks(), start=1):
            try:
                exec(compile(block, f"README.md python block {i}", "exec"), namespace)
            except Exception as exc:
                raise AssertionError(f"README python block {i} fails: {exc!r}\n{block}") from exc
    finally:
        for name in set(method_names()) - registered:  # the block that registers a method
            unregister_method(name)
        plt.close("all")

    # what the blocks promise, on the stand-in models
    maps = namespace["maps"]
    assert set(maps) == {"surgery", "kk"} and maps["kk"].shape == (2, 1, 32, 32)
    assert os.path.exists("comparison.png")
    assert namespace["labels"].shape == (2, 32, 32)
    assert len(namespace["prompts"]) == 2
    # (the run's records live in the hidden maps/.clip-surgery folder)
    assert sorted(n for n in os.listdir("maps") if not n.startswith(".")) == [
        "0.npy", "1.npy", "2.npy"]
