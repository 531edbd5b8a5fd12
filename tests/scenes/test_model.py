r"""The shipped scenes CLIP: offline safetensors loading, architecture, accuracy floor."""

from __future__ import annotations

import json
import os
import pickle
import struct
from typing import Any, List

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torch import nn

from captum_clip_surgery.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.scenes import ScenesWorld, load_scenes_clip
from captum_clip_surgery.scenes.model import CONFIG_PATH, WEIGHTS_PATH, build_scenes_clip
from captum_clip_surgery.scenes.train import main as train_main
from captum_clip_surgery.scenes.world import HELD_OUT_START


@pytest.fixture(scope="module")
def shipped() -> Any:
    return load_scenes_clip()


def test_weights_are_small_safetensors_with_json_config() -> None:
    assert os.path.getsize(WEIGHTS_PATH) <= 20 * 1024 * 1024
    with open(WEIGHTS_PATH, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(header_len))
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert dtypes <= {"F16", "F32", "I64"}
    with open(CONFIG_PATH, encoding="utf-8") as fh:
        config = json.load(fh)
    assert set(config) >= {"embed_dim", "vision_cfg", "text_cfg"}


def test_loading_never_unpickles(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("pickle-based loading used")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    model, _, _ = load_scenes_clip()
    assert isinstance(model, open_clip.CLIP) and not model.training


def test_standard_open_clip_towers(shipped: Any) -> None:
    model, preprocess, tokenizer = shipped
    visual = model.visual
    assert isinstance(visual, open_clip.transformer.VisionTransformer)
    assert visual.attn_pool is None and visual.pool_type == "tok"
    blocks = visual.transformer.resblocks
    assert len(blocks) >= 6
    assert all(isinstance(b.attn, nn.MultiheadAttention) for b in blocks)
    assert model.attn_mask is not None  # causal text transformer
    size = visual.image_size[0]
    x = preprocess(Image.new("RGB", (size, size), (10, 200, 30)))
    assert x.shape == (3, size, size) and x.dtype == torch.float32
    ids = tokenizer(["a lemon on grass.", "there is a tomato in the scene."])
    assert ids.dtype == torch.long and ids.shape == (2, model.context_length)
    # the same weights as a fresh model of the shipped architecture: every key is loaded
    fresh = build_scenes_clip()
    assert fresh.state_dict().keys() == model.state_dict().keys()
    # all parameters are finite (untrained token-embedding rows are stored as zeros)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_device_and_dtype() -> None:
    model, _, _ = load_scenes_clip(device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_zero_shot_accuracy_floor(shipped: Any) -> None:
    model, preprocess, tokenizer = shipped
    world = ScenesWorld(seed=0, size=model.visual.image_size[0])
    scenes = [world.sample(HELD_OUT_START + i, n_objects=1) for i in range(50)]
    images = torch.stack([preprocess(s["image"]) for s in scenes])
    with torch.no_grad():
        objects = CLIPZeroShotClassifier(model, world.object_classes, tokenizer=tokenizer)
        backgrounds = CLIPZeroShotClassifier(model, world.background_classes, tokenizer=tokenizer)
        obj_pred = objects(images).argmax(-1).tolist()
        bg_pred = backgrounds(images).argmax(-1).tolist()
    obj_acc = np.mean([world.object_classes[p] == s["objects"][0] for p, s in zip(obj_pred, scenes)])
    bg_acc = np.mean([world.background_classes[p] == s["background"] for p, s in zip(bg_pred, scenes)])
    assert obj_acc >= 0.8, obj_acc
    assert bg_acc >= 0.8, bg_acc


def _run(out: str, steps: int, resume: bool = False) -> None:
    argv: List[str] = ["--steps", str(steps), "--batch-size", "4", "--warmup", "2",
                       "--save-every", "1", "--threads", "1", "--out", out]
    train_main(argv + (["--resume"] if resume else []))


def test_training_is_deterministic_and_resumable(tmp_path: Any) -> None:
    from safetensors.torch import load_file

    straight, resumed = str(tmp_path / "a"), str(tmp_path / "b")
    _run(straight, 3)
    _run(resumed, 2)
    _run(resumed, 3, resume=True)
    with open(os.path.join(resumed, "state.json"), encoding="utf-8") as fh:
        assert json.load(fh)["step"] == 3
    a = load_file(os.path.join(straight, "checkpoint.safetensors"))
    b = load_file(os.path.join(resumed, "checkpoint.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # resuming continues bit-for-bit
    assert not torch.equal(a["logit_scale"], build_scenes_clip().state_dict()["logit_scale"])


def test_describe_prints_the_facts_of_the_weights_file(shipped: Any, capsys: Any) -> None:
    from safetensors import safe_open

    from captum_clip_surgery.scenes.describe import main as describe_main
    from captum_clip_surgery.scenes.model import describe_weights

    model, _, _ = shipped
    info = describe_weights()
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["embedding_parameters"] == model.token_embedding.weight.numel()
    assert info["file_bytes"] == os.path.getsize(WEIGHTS_PATH)
    with safe_open(WEIGHTS_PATH, "pt") as fh:
        assert info["stored_embedding_rows"] == fh.get_tensor("token_embedding.ids").numel()
    assert info["logit_scale"] == pytest.approx(float(model.logit_scale.detach().exp()))
    describe_main([])
    out = capsys.readouterr().out
    assert f"parameters: {info['parameters']:,}" in out and f"{info['file_bytes']:,} bytes" in out


def test_multi_object_top1_is_the_top_k_set_rule(shipped: Any) -> None:
    from captum_clip_surgery.scenes.evaluate_zero_shot import zero_shot_accuracy

    model, preprocess, tokenizer = shipped
    acc = zero_shot_accuracy(n=4, n_multi=12, batch_size=5)
    world = ScenesWorld(seed=0, size=model.visual.image_size[0])
    scenes = [world.sample(HELD_OUT_START + i) for i in range(12)]
    assert {len(s["objects"]) for s in scenes} > {1}  # the task has multi-object scenes
    clf = CLIPZeroShotClassifier(model, world.object_classes, tokenizer=tokenizer)
    with torch.no_grad():
        logits = clf(torch.stack([preprocess(s["image"]) for s in scenes]))
    hits = 0
    for row, s in zip(logits, scenes):
        ranked = [world.object_classes[i] for i in row.argsort(descending=True).tolist()]
        hits += sorted(ranked[: len(s["objects"])]) == sorted(s["objects"])
    assert acc["multi_object_top1"] == pytest.approx(hits / 12)
