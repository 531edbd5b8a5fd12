r"""The shipped scenes CLIP: offline safetensors loading, architecture, accuracy floor."""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
from typing import Any, List

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torch import nn

from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier
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


@pytest.mark.slow
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


def test_training_batch_texts_and_hard_negatives() -> None:
    from captum_clip_surgery.scenes.train import make_batch
    world = ScenesWorld(seed=0)
    step, batch = 5, 24
    images, texts, negatives = make_batch(world, step, batch, seed=0)
    assert images.shape == (batch, 3, world.size, world.size) and len(texts) == len(negatives) == batch
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).reshape(3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).reshape(3, 1, 1)
    names = world.object_classes + world.background_classes
    for j in range(batch):
        s = world.sample(step * batch + j)
        present = s["objects"] + [s["background"]]
        # the augmentation is one of the 8 flips / rotations of the rendered scene
        pixels = torch.round((images[j] * std + mean) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
        rendered = np.asarray(s["image"])
        views = [np.rot90(v, k) for v in (rendered, rendered[:, ::-1]) for k in range(4)]
        assert any(np.array_equal(pixels, v) for v in views), j
        # the text names only present classes; the negative swaps exactly one of them
        said = [n for n in names if re.search(rf"\b{n}\b", texts[j])]
        told = [n for n in names if re.search(rf"\b{n}\b", negatives[j])]
        assert said and set(said) <= set(present), (texts[j], present)
        wrong = [n for n in told if n not in present]
        dropped = [n for n in said if n not in told]
        assert len(wrong) == 1 and len(dropped) == 1, (texts[j], negatives[j])
        kind = world.object_classes if wrong[0] in world.object_classes else world.background_classes
        assert dropped[0] in kind  # an object for an object, a background for a background
        assert re.sub(rf"\b{wrong[0]}\b", dropped[0], negatives[j]).replace("an ", "a ") == \
            texts[j].replace("an ", "a ")


def test_contrastive_loss_matches_a_loop_over_images_and_texts() -> None:
    from captum_clip_surgery.scenes.train import contrastive_loss

    g = torch.Generator().manual_seed(0)
    img, txt, neg = (torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
                     for _ in range(3))
    scale = torch.tensor(7.0)
    i2t, t2i = 0.0, 0.0
    for i in range(5):
        columns = [scale * img[i] @ t for t in list(txt) + list(neg)]  # 5 texts + 5 negatives
        i2t += -columns[i] + torch.logsumexp(torch.stack(columns), 0)
        rows = [scale * im @ txt[i] for im in img]  # text i against the 5 images
        t2i += -rows[i] + torch.logsumexp(torch.stack(rows), 0)
    expected = (i2t / 5 + t2i / 5) / 2
    torch.testing.assert_close(contrastive_loss(img, txt, neg, scale), expected)


@pytest.mark.parametrize("device", [
    "not-a-device",
    pytest.param("cuda", marks=pytest.mark.skipif(torch.cuda.is_available(),
                                                  reason="a GPU is present")),
])
def test_training_rejects_a_bad_device_in_one_line(capsys: Any, device: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--device", device, "--steps", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"error: --device: cannot use device '{device}'" in err[-1]


@pytest.mark.slow
def test_training_is_deterministic_and_resumable(tmp_path: Any) -> None:
    from safetensors.torch import load_file

    straight, resumed = str(tmp_path / "a"), str(tmp_path / "b")
    _run(straight, 3)
    _run(resumed, 2)
    _run(resumed, 3, resume=True)
    with open(os.path.join(resumed, "state.json"), encoding="utf-8") as fh:
        state = json.load(fh)
    with open(os.path.join(straight, "state.json"), encoding="utf-8") as fh:
        straight_state = json.load(fh)
    assert state["step"] == 3
    assert [s for s, _ in state["losses"]] == [1, 2, 3]  # the loss history survives resuming
    assert state["losses"] == straight_state["losses"]

    from captum_clip_surgery.scenes.plot_training import load_losses
    from captum_clip_surgery.scenes.plot_training import main as plot_main

    assert load_losses(resumed) == [tuple(x) for x in state["losses"]]
    png = str(tmp_path / "loss.png")
    plot_main([resumed, "--out", png, "--window", "2"])
    assert os.path.getsize(png) > 0
    with pytest.raises(FileNotFoundError, match="run_dir"):
        load_losses(str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:  # the command ends in one line, no traceback
        plot_main([str(tmp_path)])
    assert exit_info.value.code == 2
    a = load_file(os.path.join(straight, "checkpoint.safetensors"))
    b = load_file(os.path.join(resumed, "checkpoint.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # resuming continues bit-for-bit
    assert not torch.equal(a["logit_scale"], build_scenes_clip().state_dict()["logit_scale"])


@pytest.mark.slow
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


@pytest.mark.slow
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
    hits, found, present = 0, 0, 0
    per_class = {c: [] for c in world.object_classes}
    for row, s in zip(logits, scenes):
        ranked = [world.object_classes[i] for i in row.argsort(descending=True).tolist()]
        hits += sorted(ranked[: len(s["objects"])]) == sorted(s["objects"])
        if len(s["objects"]) >= 2:
            for name in s["objects"]:
                found += name in ranked[: len(s["objects"])]
                present += 1
                per_class[name].append(name in ranked[: len(s["objects"])])
    assert acc["multi_object_top1"] == pytest.approx(hits / 12)
    assert present > 0 and acc["multi_object_recall"] == pytest.approx(found / present)
    for name, seen in per_class.items():
        if seen:
            assert acc[f"multi_object_recall/{name}"] == pytest.approx(np.mean(seen))


@pytest.mark.slow
def test_clip_surgery_points_at_the_objects_of_held_out_scenes(shipped: Any) -> None:
    # the shipped model's purpose: CLIP Surgery finds the objects, the raw map does not
    from captum_clip_surgery.evaluation import ScenesSegmentation, evaluate

    model, preprocess, tokenizer = shipped
    data = ScenesSegmentation(size=40)
    clf = CLIPZeroShotClassifier(model, data.class_names, tokenizer=tokenizer)
    result = evaluate(["surgery", "raw"], data, clf, preprocess, batch_size=20, tolerance=0,
                      faithfulness=False, progress=False)
    kinds = result.breakdown("kind")
    surgery, raw = kinds["surgery"]["object"], kinds["raw"]["object"]
    assert surgery["pointing"] >= 0.85, surgery
    assert surgery["pointing"] > raw["pointing"] + 0.2, (surgery, raw)
    assert surgery["msc"] > raw["msc"] + 0.2, (surgery, raw)
