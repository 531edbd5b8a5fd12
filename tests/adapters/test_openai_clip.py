r"""The OpenAI ``clip`` adapter (ViT and ModifiedResNet): views agree with the model,
the text tower's truncation is exact, every method runs, the model is never changed."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from captum.attr import LayerGradCam
from torch import Tensor

from captum_clip_surgery import (
    CLIPSimilarityMap,
    CLIPSurgeryAttribution,
    CLIPZeroShotClassifier,
    MaskCLIPAttribution,
    explain_text_tokens,
    get_adapter,
)
from captum_clip_surgery.adapters import OpenAICLIPAdapter
from captum_clip_surgery.core.architecture import pooled_image_features
from tests.adapters import hosts
from tests.adapters.hosts import clip

TEXTS = ["dog", "cat", "a red car"]


def build(kind: str) -> Any:
    return hosts.to_openai(hosts.openclip_vit() if kind == "vit" else hosts.openclip_resnet())


def images(kind: str, b: int = 2, seed: int = 0, scale: float = 1.0) -> Tensor:
    side = int((32 if kind == "vit" else 64) * scale)
    return torch.randn(b, 3, side, side, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_views_reproduce_the_model(kind):
    model = build(kind)
    adapter = get_adapter(model)
    assert isinstance(adapter, OpenAICLIPAdapter)
    pixels = images(kind)
    with torch.no_grad():
        x, grid = adapter.image.embed(pixels)
        if kind == "vit":
            assert adapter.image.kind == "token" and grid == (4, 4) and len(adapter.image.blocks) == 3
            for block in adapter.image.blocks:
                q, k, v = block.qkv(block.norm1(x))
                functional = x + block.out(block.original_attention(q, k, v))
                functional = functional + block.mlp(block.norm2(functional))
                torch.testing.assert_close(functional, block.forward(x), atol=1e-5, rtol=1e-5)
                x = block.forward(x)
        else:
            assert adapter.image.kind == "attention" and adapter.image.head.query_kind == "mean"
            assert not adapter.image.blocks and grid == (2, 2)
            assert adapter.image.gradcam_module() is model.visual.layer4
        own = model.encode_image(pixels)
        torch.testing.assert_close(adapter.image.head.pool(x, adapter.image.num_prefix_tokens, grid),
                                   own, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pooled_image_features(adapter, pixels), own, atol=1e-5, rtol=1e-5)


def test_text_truncation_is_exact_and_tokens_pool_at_the_end_of_text():
    model = build("vit")
    text = get_adapter(model).text
    assert text.context_length == 77
    ids = clip.tokenize(["a photo of a dog.", "x", "a much longer prompt about a cat on the grass"])
    with torch.no_grad():
        own = model.encode_text(ids)
        torch.testing.assert_close(text.encode(ids, truncate=True), own, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(text.encode(ids, truncate=False), own, atol=1e-5, rtol=1e-5)
        per_token = text.token_features(ids)
        eot = ids.argmax(dim=-1)
        assert per_token.shape[1] == int(eot.max()) + 1
        torch.testing.assert_close(per_token[torch.arange(3), eot], own, atol=1e-5, rtol=1e-5)
    default = text.default_tokenizer()
    long_text = ["word " * 100]  # clip.tokenize would raise without truncate=True
    assert torch.equal(default(long_text), clip.tokenize(long_text, truncate=True))
    assert default(["dog"]).dtype == torch.long


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_classifier_equals_the_models_own_logits_batches_and_leaves_it_unchanged(kind, snapshot):
    model = build(kind)
    model.train()
    snap = snapshot(model)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=["{}"])
    pixels = images(kind, 3)
    logits = clf(pixels)
    with torch.no_grad():
        was = model.training
        model.eval()
        own = model(pixels, clip.tokenize(TEXTS))[0]
        model.train(was)
    torch.testing.assert_close(logits, own, atol=1e-4, rtol=1e-5)
    surgery = CLIPSurgeryAttribution(clf)
    # raw scores: the tiny ResNet's 2x2 maps are nearly flat, so min-max normalised maps
    # would amplify float rounding between batch sizes
    batch = surgery.similarity(pixels)
    for i in range(3):
        torch.testing.assert_close(clf(pixels[i : i + 1]), logits[i : i + 1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(surgery.similarity(pixels[i : i + 1]), batch[i : i + 1],
                                   atol=1e-5, rtol=1e-5)
    bigger = images(kind, 2, scale=1.5).requires_grad_(True)
    for method in (CLIPSimilarityMap(clf), MaskCLIPAttribution(clf)):
        assert bool(torch.isfinite(method.attribute(bigger, target=0)).all())
    assert bool(torch.isfinite(LayerGradCam(clf, clf.gradcam_layer(-1)).attribute(bigger, target=1)).all())
    result = explain_text_tokens(clf, bigger.detach(), "a photo of a red car")
    assert result.words == ["a", "photo", "of", "a", "red", "car"]
    snap.assert_unchanged()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_half_precision_maps_are_finite_and_normalised(kind, dtype):
    source = hosts.openclip_vit() if kind == "vit" else hosts.openclip_resnet()
    # the package's own cast (clip.model.build_model, fp16): linear / conv / attention
    # weights in half precision, LayerNorms in float32 (its LayerNorm runs in float32; a
    # whole-model .to(bfloat16) breaks the model's own forward on CPU)
    model = hosts.to_openai(source)
    hosts.cast_like_openai(model, dtype)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=["{}", "a photo of a {}."])
    assert clf.adapter.dtype == dtype
    pixels = images(kind)
    assert bool(torch.isfinite(clf(pixels)).all())
    for method in (CLIPSurgeryAttribution(clf), CLIPSimilarityMap(clf), MaskCLIPAttribution(clf)):
        maps = method.attribute(pixels, target=1)
        assert bool(torch.isfinite(maps).all())
        assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
