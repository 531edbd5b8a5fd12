r"""Helpers shared by the tests: texts and templates, images sized for a model, the
model snapshot that no public call may change, held-out scenes.

Fixtures stay in ``conftest.py``; everything a test imports lives here.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

TEXTS = ["dog", "cat", "grass", "a red car"]
FEW_TEMPLATES = ["a photo of a {}.", "{}", "there is a {} in the scene."]


def native_size(model: torch.nn.Module) -> int:
    return 64 if model.visual.__class__.__name__ == "ModifiedResNet" else 32


def images_for(model: torch.nn.Module, b: int = 2, h: int = 0, w: int = 0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = native_size(model)
    return torch.randn(b, 3, h or s, w or s, generator=g)


class ModelSnapshot:
    r"""Everything about a model that no public call may change."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.state: Dict[str, torch.Tensor] = copy.deepcopy(model.state_dict())
        self.training = {n: m.training for n, m in model.named_modules()}
        self.modules = {n: type(m) for n, m in model.named_modules()}
        self.requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}

    def assert_unchanged(self) -> None:
        state = self.model.state_dict()
        assert state.keys() == self.state.keys()
        for k, v in self.state.items():
            # exactly equal, same shape and dtype; an unchanged NaN counts as unchanged
            # (torch.equal says NaN != NaN)
            torch.testing.assert_close(state[k], v, rtol=0, atol=0, equal_nan=True,
                                       msg=f"parameter/buffer {k} changed")
        assert {n: m.training for n, m in self.model.named_modules()} == self.training
        assert {n: type(m) for n, m in self.model.named_modules()} == self.modules
        assert {n: p.requires_grad for n, p in self.model.named_parameters()} == (
            self.requires_grad
        )
        for name, m in self.model.named_modules():
            for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                          "_backward_pre_hooks", "_state_dict_hooks"):
                assert not getattr(m, hooks, {}), f"hook left on {name or 'model'} ({hooks})"
        for name, p in self.model.named_parameters():
            assert p.grad is None, f"gradient left on {name}"
            assert not p._backward_hooks, f"hook left on parameter {name}"


def scene_batch(
    scenes_clip: Tuple[Any, Any, Any], offset: int, n: int, n_objects: Optional[int] = None
) -> Tuple[Any, List[Dict[str, Any]], torch.Tensor, Any]:
    r"""``n`` held-out scenes from ``HELD_OUT_START + offset``, their preprocessed images and
    a classifier on the world's classes with the scene templates."""
    from captum_clip_surgery import SCENE_TEMPLATES, CLIPZeroShotClassifier
    from captum_clip_surgery.scenes import ScenesWorld
    from captum_clip_surgery.scenes.world import HELD_OUT_START

    model, preprocess, tokenizer = scenes_clip
    world = ScenesWorld(seed=0)
    samples = [world.sample(HELD_OUT_START + offset + i, n_objects=n_objects) for i in range(n)]
    images = torch.stack([preprocess(s["image"]) for s in samples])
    clf = CLIPZeroShotClassifier(model, world.class_names, templates=SCENE_TEMPLATES,
                                 tokenizer=tokenizer)
    return world, samples, images, clf


def assert_decisions_then_maps(
    got: torch.Tensor,
    expected: torch.Tensor,
    got_decisions: torch.Tensor,
    expected_decisions: torch.Tensor,
    atol: float = 1e-5,
    rtol: float = 1e-5,
) -> float:
    r"""Compare a method that switches on hard thresholds with its plain reference
    (METHODS-2025 §9): the per-image decisions first (``[B, N]``: outlier flags, labels),
    which may differ in at most one token of an image (a value within float rounding of a
    threshold), then the outputs ``[B, ...]`` of the images whose decisions agree (at
    least one must). Returns the largest difference over those images."""
    assert got_decisions.shape == expected_decisions.shape
    flips = (got_decisions != expected_decisions).reshape(got_decisions.shape[0], -1).sum(dim=1)
    assert int(flips.max()) <= 1, f"decisions differ in {flips.tolist()} tokens per image"
    agree = flips == 0
    assert bool(agree.any()), "no image with the reference's decisions"
    torch.testing.assert_close(got[agree], expected[agree], atol=atol, rtol=rtol)
    return float((got[agree] - expected[agree]).abs().max())


def write_segmentation_layout(
    root: str,
    layout: Any,
    sizes: Tuple[Tuple[int, int], ...] = ((40, 56), (33, 47), (48, 30)),
    num_labels: int = 21,
    seed: int = 0,
) -> List[str]:
    r"""A tiny copy of a benchmark dataset's folder layout under ``root``: one image (JPEG,
    or PNG for a ``.png`` suffix) and one palette label per size, labels random in
    ``0..num_labels-1`` with a 255 border row; the split file where the layout has one;
    Cityscapes-like layouts get city sub-folders. Returns the ids in the protocol's order
    (the split file's, else sorted by path)."""
    import os

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    ids = []
    for k in range(len(sizes)):
        sub = f"city{k % 2}/" if "leftImg8bit" in layout.img_dir else ""
        ids.append(f"{sub}img_{(7 - k):03d}")
    palette = (np.arange(768) * 37 % 256).astype(np.uint8).tolist()
    for image_id, (h, w) in zip(ids, sizes):
        img_path = os.path.join(root, layout.img_dir, image_id + layout.img_suffix)
        lab_path = os.path.join(root, layout.ann_dir, image_id + layout.seg_map_suffix)
        os.makedirs(os.path.dirname(img_path), exist_ok=True)
        os.makedirs(os.path.dirname(lab_path), exist_ok=True)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(img_path, "PNG" if img_path.endswith(".png") else "JPEG")
        label = rng.integers(0, num_labels, (h, w)).astype(np.uint8)
        label[0] = 255
        im = Image.fromarray(label, mode="P")
        im.putpalette(palette)
        im.save(lab_path)
    if layout.split is not None:
        path = os.path.join(root, layout.split)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write("\n".join(ids) + "\n")
        return ids
    return sorted(ids)


def run_threads(n: int, work: Callable[[int], None]) -> List[BaseException]:
    r"""Run ``work(i)`` for ``i < n`` in ``n`` threads released together (a barrier);
    returns the exceptions they raised."""
    import threading

    errors: List[BaseException] = []
    start = threading.Barrier(n)

    def run(i: int) -> None:
        try:
            start.wait()
            work(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
