r"""The training-free family on one footing: the contract every token-map method keeps
(batching, any size, dtypes, gradients to inputs, the model never modified, also after an
error) and its place in compare / build_method / supported_methods."""

from __future__ import annotations

import pytest
import torch

from captum_clip_surgery import (
    DENSE_METHODS,
    METHOD_NAMES,
    TRAINING_FREE_METHODS,
    ClearCLIPAttribution,
    CLIPZeroShotClassifier,
    GEMAttribution,
    LeGradAttribution,
    NACLIPAttribution,
    ResCLIPAttribution,
    SCCLIPAttribution,
    SCLIPAttribution,
    build_method,
    compare,
    minmax_normalize,
    plot_comparison,
    segment,
    supported_methods,
)
from captum_clip_surgery.methods.registry import method_title
from tests.helpers import FEW_TEMPLATES, TEXTS, images_for
from tests.models import tiny_resnet, tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")

TOKEN_MAP = {
    "gem": GEMAttribution,
    "sclip": SCLIPAttribution,
    "clearclip": ClearCLIPAttribution,
    "naclip": NACLIPAttribution,
    "scclip": SCCLIPAttribution,
    "resclip": ResCLIPAttribution,
}


@pytest.mark.parametrize("name", sorted(TOKEN_MAP))
def test_token_map_contract(name, snapshot):
    model = tiny_vit()
    snap = snapshot(model)
    explainer = TOKEN_MAP[name](model, texts=TEXTS, templates=FEW_TEMPLATES)
    images = images_for(model, b=3, h=40, w=24, seed=1)
    sim = explainer.similarity(images)
    assert sim.shape == (3, len(TEXTS), 5, 3) and sim.dtype == torch.float32
    single = torch.cat([explainer.similarity(images[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(sim, single, atol=1e-5, rtol=1e-5)
    maps = explainer.attribute(images, target=[0, "grass", 3])
    assert maps.shape == (3, 1, 40, 24) and maps.min() >= 0 and maps.max() <= 1
    grid = explainer.attribute(images, target=1, upsample_to_input=False)
    assert grid.shape == (3, 1, 5, 3)
    feats, (h, w) = explainer.token_features(images)
    assert feats.shape == (3, 1 + h * w, 24)
    # gradients reach inputs that ask for them
    x = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(explainer.similarity(x).sum(), x)
    assert grad.abs().sum() > 0
    # errors leave the model as it was
    with pytest.raises(ValueError, match="target: unknown text"):
        explainer.attribute(images, target="zebra")
    with pytest.raises(ValueError, match="images: expected 3 colour channels"):
        explainer.similarity(torch.zeros(1, 4, 32, 32))
    # train mode is restored
    model.train()
    snap_train = snapshot(model)
    explainer.similarity(images)
    snap_train.assert_unchanged()
    model.eval()
    snap.assert_unchanged()


def test_legrad_leaves_the_model_unchanged_also_after_an_error(snapshot):
    model = tiny_vit()
    snap = snapshot(model)
    for p in model.parameters():  # a model the user is training: weights require grad
        assert p.requires_grad
    explainer = LeGradAttribution(CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES))
    explainer.attribute(images_for(model), target=2)
    with pytest.raises(ValueError, match="target: index 9"):
        explainer.attribute(images_for(model), target=9)
    snap.assert_unchanged()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(TOKEN_MAP) + ["legrad", "gradeclip"])
def test_half_precision_close_to_float32(name, dtype):
    images = images_for(tiny_vit(), b=2)

    def build(model):
        clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
        return build_method(name, clf)

    full = build(tiny_vit()).attribute(images, target=1)
    half = build(tiny_vit().to(dtype)).attribute(images.to(dtype), target=1)
    assert half.dtype == dtype and torch.isfinite(half.float()).all()
    assert (half.float() - full).abs().mean() < 0.08


def test_methods_on_one_footing(snapshot):
    model = tiny_vit()
    snap = snapshot(model)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    assert set(TRAINING_FREE_METHODS) <= set(METHOD_NAMES)
    assert set(DENSE_METHODS) <= set(METHOD_NAMES)
    assert all(method_title(m) != m for m in TRAINING_FREE_METHODS)
    assert set(TRAINING_FREE_METHODS) <= set(supported_methods(clf))
    images = images_for(model, b=2)
    maps = compare(clf, images, target=["dog", "grass"], methods=list(TRAINING_FREE_METHODS))
    assert list(maps) == list(TRAINING_FREE_METHODS)
    for name, m in maps.items():
        assert m.shape == (2, 1, 32, 32) and m.min() >= 0 and m.max() <= 1, name
        direct = build_method(name, clf).attribute(images, target=[0, 2])
        torch.testing.assert_close(m, minmax_normalize(direct), atol=1e-6, rtol=1e-5)
    fig = plot_comparison(images[0], maps, texts="dog")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[1:11] == ["GEM", "SCLIP", "ClearCLIP", "NACLIP", "LeGrad", "Grad-ECLIP",
                            "SC-CLIP", "ResCLIP", "ProxyCLIP", "CASS"]
    for name in DENSE_METHODS:  # every dense method segments
        labels = segment(build_method(name, clf), images, sliding_window=(24, 8), pamr=2,
                         pamr_dilations=(1, 2))
        assert labels.shape == (2, 32, 32)
    snap.assert_unchanged()


def test_towers_without_attention_blocks_are_told_clearly():
    clf = CLIPZeroShotClassifier(tiny_resnet(), TEXTS, templates=FEW_TEMPLATES)
    supported = supported_methods(clf)
    for name in TRAINING_FREE_METHODS:
        assert name not in supported
        with pytest.raises(TypeError, match="forward_func: .* no attention blocks"):
            build_method(name, clf)


# ---- a SigLIP MAP head (probe query, no class token), through the transformers adapter ----


def _tiny_siglip():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.SiglipConfig(
        text_config=dict(vocab_size=64, hidden_size=48, intermediate_size=64,
                         num_attention_heads=2, num_hidden_layers=2, max_position_embeddings=16,
                         pad_token_id=1, eos_token_id=2),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_attention_heads=3,
                           num_hidden_layers=3, image_size=32, patch_size=8),
        attn_implementation="sdpa",
    )
    model = transformers.SiglipModel(config).eval()
    g = torch.Generator().manual_seed(4321)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
            elif name not in ("logit_scale", "logit_bias"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g) if "weight" in name
                        else 0.1 * torch.randn(p.shape, generator=g))
    return model


def _word_ids(texts):
    r"""A toy tokenizer: one id per word (3..63), then end-of-text (2), padded with 1."""
    rows = []
    for text in texts:
        ids = [3 + sum(map(ord, w)) % 61 for w in text.split()][:15] + [2]
        rows.append(ids + [1] * (16 - len(ids)))
    return torch.tensor(rows)


def test_map_head_methods_and_legrad_on_the_pool_attention(snapshot):
    pytest.importorskip("captum_clip_surgery.adapters.huggingface")  # the transformers adapters
    import torch.nn.functional as F

    model = _tiny_siglip()
    snap = snapshot(model)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=["a photo of a {}."], tokenizer=_word_ids)
    assert clf.adapter.image.num_prefix_tokens == 0 and clf.adapter.image.kind == "attention"
    images = images_for(tiny_vit(), b=3, seed=2)
    supported = supported_methods(clf)
    assert "gradeclip" not in supported  # its score is read from a class token
    with pytest.raises(TypeError, match="forward_func: Grad-ECLIP reads its score from the class"):
        build_method("gradeclip", clf)
    for name in (m for m in TRAINING_FREE_METHODS if m in supported):
        explainer = build_method(name, clf)
        batch = explainer.attribute(images, target=[0, 1, 2])
        single = torch.cat([explainer.attribute(images[i : i + 1], target=i) for i in range(3)])
        torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-5)
        assert batch.shape == (3, 1, 32, 32)
    with torch.no_grad():  # no class token: row 0 is the model's own embedding
        feats, _ = GEMAttribution(clf).token_features(images)
        own = model.get_image_features(pixel_values=images)
        own = getattr(own, "pooler_output", own)
    torch.testing.assert_close(feats[:, 0], own, atol=1e-5, rtol=1e-5)
    # LeGrad: the gradient of each layer's pooled score w.r.t. the MAP head's attention over
    # that layer's tokens, written by hand on the transformers model's own hidden states
    grads, grid, first = LeGradAttribution(clf).layer_gradients(images, target=1)
    assert grid == (4, 4) and first == 0 and len(grads) == 2
    snap.assert_unchanged()  # (transformers' own output_hidden_states below installs hooks)
    with torch.no_grad():
        states = model.vision_model(pixel_values=images, output_hidden_states=True).hidden_states
    head, t = model.vision_model.head, clf.text_features[1]
    mha = head.attention
    c, heads = mha.embed_dim, mha.num_heads
    w, b = mha.in_proj_weight.detach(), mha.in_proj_bias.detach()
    for n, layer in enumerate((2, 3)):
        x = model.vision_model.post_layernorm(states[layer]).detach()
        q = (head.probe.detach() @ w[:c].t() + b[:c]).reshape(1, heads, 1, c // heads)
        k = (x @ w[c : 2 * c].t() + b[c : 2 * c]).reshape(3, -1, heads, c // heads).transpose(1, 2)
        v = (x @ w[2 * c :].t() + b[2 * c :]).reshape(3, -1, heads, c // heads).transpose(1, 2)
        a = (torch.einsum("bhqd,bhkd->bhqk", q.expand(3, -1, -1, -1), k) * (c // heads) ** -0.5)
        a = a.softmax(-1).requires_grad_(True)
        o = mha.out_proj((a @ v).transpose(1, 2).reshape(3, 1, c))
        o = o + head.mlp(head.layernorm(o))
        (expected,) = torch.autograd.grad((F.normalize(o[:, 0], dim=-1) @ t).sum(), a)
        torch.testing.assert_close(grads[n], expected, atol=1e-6, rtol=1e-4)
