r"""Second backbones: the views reproduce each library's own forward (tokens and attention)
at the native and a non-native, non-square grid; DINO's positional rule; the CLIP tower;
re-normalisation; the registry; nothing of the model changes."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from captum_clip_surgery.adapters import (
    CLIPTowerBackbone,
    VisionBackbone,
    aligned_size,
    backbone_registry,
    get_adapter,
    get_backbone,
    register_backbone,
    registered_backbones,
    supported_backbones,
    unregister_backbone,
)
from captum_clip_surgery.adapters.backbone_hf import HFDinov2Backbone, HFViTBackbone
from captum_clip_surgery.adapters.backbone_timm import TimmViTBackbone
from tests import reference as ref
from tests.adapters import backbones as tiny
from tests.helpers import ModelSnapshot
from tests.models import tiny_resnet, tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = [(32, 32), (40, 24)]
SIZE_IDS = ["native", "non-native"]


def _images(h: int, w: int, b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ timm


def _timm_reference(model, images):
    r"""timm's own forward, every block's input kept, and the last block's attention from
    its own modules."""
    x = model.patch_embed(images)
    x = model._pos_embed(x)
    x = model.norm_pre(model.patch_drop(x))
    inputs = []
    for blk in model.blocks:
        inputs.append(x)
        x = blk(x)
    last = model.blocks[-1]
    y = last.norm1(inputs[-1])
    b, n, c = y.shape
    qkv = last.attn.qkv(y).reshape(b, n, 3, last.attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = last.attn.q_norm(qkv[0]), last.attn.k_norm(qkv[1])
    probs = (torch.einsum("bhnd,bhmd->bhnm", q, k) * last.attn.scale).softmax(-1)
    return model.norm(x), probs, inputs


@pytest.mark.parametrize("build", [tiny.timm_dino, tiny.timm_dinov2_reg], ids=["dino", "dinov2_reg"])
@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_timm_views_reproduce_timm(build, size):
    model = build()
    snap = ModelSnapshot(model)
    backbone = get_backbone(model, positional_resize="bicubic_antialias")  # timm's own rule
    assert isinstance(backbone, TimmViTBackbone)
    images = _images(*size)
    with torch.no_grad():
        expected_tokens, expected_probs, inputs = _timm_reference(model, images)
        expected_features = model.forward_features(images)
        tokens, grid = backbone.tokens(images)
        probs, _ = backbone.attention(images)
        stream, _ = backbone.stream(images, 1)
        patches, _ = backbone.patch_tokens(images)
        cls = backbone.class_token(images)
    assert grid == (size[0] // 4, size[1] // 4)
    torch.testing.assert_close(tokens, expected_tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens, expected_features, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs, expected_probs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(stream, inputs[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(patches, expected_tokens[:, backbone.num_prefix_tokens:])
    torch.testing.assert_close(cls, expected_tokens[:, 0])
    snap.assert_unchanged()


def test_timm_qkv_and_prefix_counts():
    model = tiny.timm_dinov2_reg()
    backbone = TimmViTBackbone(model)
    assert (backbone.num_prefix_tokens, backbone.num_register_tokens) == (3, 2)
    assert backbone.has_class_token and backbone.positional_resize == "bicubic_offset"
    images = _images(40, 24)
    with torch.no_grad():
        q, k, v, grid = backbone.qkv(images, layer=0)
        x, _ = backbone.embed(images)
        blk = model.blocks[0]
        qkv = blk.attn.qkv(blk.norm1(x)).reshape(2, x.shape[1], 3, 3, 8).permute(2, 0, 3, 1, 4)
    assert grid == (10, 6) and q.shape == (2, 3, 3 + 60, 8)
    torch.testing.assert_close(v, qkv[2])
    torch.testing.assert_close(k, qkv[1])


# ------------------------------------------------------------------------------ Hugging Face


def _hf_reference(model, images, interpolate: bool):
    r"""The model's own forward (on a copy: transformers 5 installs output-capturing hooks
    on the model it runs)."""
    twin = copy.deepcopy(model)
    kwargs = {"interpolate_pos_encoding": True} if interpolate else {}
    out = twin(pixel_values=images, output_attentions=True, output_hidden_states=True, **kwargs)
    return out.last_hidden_state, out.attentions[-1], out.hidden_states


@pytest.mark.parametrize("build,cls,interpolate", [
    (tiny.hf_vit, HFViTBackbone, True),
    (tiny.hf_dinov2, HFDinov2Backbone, False),
    (lambda: tiny.hf_dinov2(registers=2), HFDinov2Backbone, False),
], ids=["vit", "dinov2", "dinov2_registers"])
@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_hf_views_reproduce_transformers(build, cls, interpolate, size):
    model = build()
    snap = ModelSnapshot(model)
    view = get_backbone(model)
    assert isinstance(view, cls)
    backbone = cls(model, positional_resize=view.library_positional_resize)
    images = _images(*size)
    with torch.no_grad():
        expected, expected_probs, hidden = _hf_reference(model, images, interpolate)
        tokens, grid = backbone.tokens(images)
        probs, _ = backbone.attention(images)
        first, _ = backbone.tokens(images, layer=0, norm=False)
    assert grid == (size[0] // 4, size[1] // 4)
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs, expected_probs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(first, hidden[1], atol=1e-5, rtol=1e-5)
    snap.assert_unchanged()


def test_hf_register_layout():
    backbone = get_backbone(tiny.hf_dinov2(registers=2))
    assert (backbone.num_prefix_tokens, backbone.num_register_tokens) == (3, 2)
    assert backbone.library_positional_resize == "bicubic_antialias"
    assert get_backbone(tiny.hf_dinov2()).library_positional_resize == "bicubic"


# ------------------------------------------------------------------------------ DINO's rule


def _dino_hub_table(table: torch.Tensor, native: int, grid) -> torch.Tensor:
    r"""DINO's ``interpolate_pos_encoding`` as written in its hub code (and DINOv2's with
    ``interpolate_offset=0.1``): bicubic with ``scale_factor=((h + 0.1)/√N, (w + 0.1)/√N)``."""
    cls_row, rows = table[:1], table[1:]
    c = rows.shape[-1]
    g = rows.reshape(1, native, native, c).permute(0, 3, 1, 2)
    h0, w0 = grid[0] + 0.1, grid[1] + 0.1
    g = F.interpolate(g, scale_factor=(h0 / math.sqrt(native**2), w0 / math.sqrt(native**2)),
                      mode="bicubic")
    assert (int(h0), int(w0)) == tuple(g.shape[-2:])
    return torch.cat([cls_row, g.permute(0, 2, 3, 1).reshape(-1, c)])


@pytest.mark.parametrize("build", [tiny.timm_dino, tiny.hf_vit, tiny.hf_dinov2],
                         ids=["timm", "hf_vit", "hf_dinov2"])
def test_default_rule_is_dino_hub(build):
    model = build()
    backbone = get_backbone(model)
    assert backbone.positional_resize == "bicubic_offset"
    images = _images(40, 24)
    with torch.no_grad():
        x, grid = backbone.embed(images)
        if isinstance(backbone, TimmViTBackbone):
            table, cls = model.pos_embed[0], model.cls_token[0]
            patches = model.patch_embed.proj(images).flatten(2).transpose(1, 2)
        else:
            emb = model.embeddings
            table, cls = emb.position_embeddings[0], emb.cls_token[0]
            patches = emb.patch_embeddings.projection(images).flatten(2).transpose(1, 2)
        expected = torch.cat([cls.expand(2, 1, -1), patches], 1) + _dino_hub_table(table, 8, grid)
    torch.testing.assert_close(x, expected, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------------ the CLIP tower


@pytest.mark.parametrize("size", [(32, 32), (40, 24)], ids=SIZE_IDS)
def test_clip_tower_backbone(size):
    model = tiny_vit()
    snap = ModelSnapshot(model)
    backbone = get_backbone(model)
    assert isinstance(backbone, CLIPTowerBackbone)
    assert backbone.positional_resize is None and backbone.patch_size == (8, 8)
    assert tuple(backbone.image_mean) == tuple(get_adapter(model).image_mean)
    images = _images(*size)
    with torch.no_grad():
        x, grid = ref._vit_embed(model, images, "bilinear")  # the default context's rule
        for blk in model.visual.transformer.resblocks:
            x = ref._plain_block(blk, x)
        tokens, got_grid = backbone.tokens(images)
        cls = backbone.class_token(images, norm=False)
    assert got_grid == grid
    torch.testing.assert_close(tokens, ref._ln(model.visual.ln_post, x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cls, x[:, 0], atol=1e-5, rtol=1e-5)
    snap.assert_unchanged()


def test_clip_tower_refuses_conv_trunks():
    with pytest.raises(TypeError, match="backbone: this CLIP image tower has no attention blocks"):
        CLIPTowerBackbone(tiny_resnet())


# ------------------------------------------------------------------------------ input


def test_prepare_renormalises_and_aligns():
    backbone = get_backbone(tiny.timm_dino())
    clip_mean, clip_std = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    images = _images(32, 24)
    got = backbone.prepare(images, clip_mean, clip_std)
    for c in range(3):  # pixel = x·std + mean, then ImageNet's statistics
        rgb = images[:, c] * clip_std[c] + clip_mean[c]
        expected = (rgb - backbone.image_mean[c]) / backbone.image_std[c]
        torch.testing.assert_close(got[:, c], expected, atol=1e-6, rtol=1e-6)
    same = backbone.prepare(images, backbone.image_mean, backbone.image_std)
    assert torch.equal(same, images)  # equal statistics: untouched
    assert aligned_size((30, 26), (4, 4)) == (32, 28)  # nearest multiple, not the next one
    assert aligned_size((1, 2), (4, 4)) == (4, 4)
    odd = backbone.prepare(_images(30, 26), None, None)
    assert tuple(odd.shape[-2:]) == (32, 28)
    expected = F.interpolate(_images(30, 26), size=(32, 28), mode="bilinear", align_corners=False)
    torch.testing.assert_close(odd, expected)


def test_views_restore_modes_and_check_layers():
    model = tiny.timm_dino()
    model.train()
    backbone = get_backbone(model)
    with torch.no_grad():
        backbone.tokens(_images(32, 32))
    assert all(m.training for m in model.modules())
    with pytest.raises(ValueError, match=r"layer: expected an int in \[-2, 1\], got 2"):
        backbone.qkv(_images(32, 32), layer=2)
    with pytest.raises(TypeError, match="layer: expected an int"):
        backbone.tokens(_images(32, 32), layer=1.0)
    no_cls = get_backbone(tiny.timm_dino(class_token=False, global_pool="avg"))
    with pytest.raises(TypeError, match="backbone: VisionTransformer has no class token"):
        no_cls.class_token(_images(32, 32))


# ------------------------------------------------------------------------------ registry


class _ToyBackbone(VisionBackbone):
    family = "toy"

    @classmethod
    def supports(cls, model):
        return getattr(model, "is_toy", False)

    def __init__(self, model, positional_resize=None):
        super().__init__(model, positional_resize)
        self.inner = TimmViTBackbone(model)
        self.blocks, self.patch_size = self.inner.blocks, self.inner.patch_size
        self.native_grid = self.inner.native_grid

    def embed_tokens(self, images):
        return self.inner.embed_tokens(images)


def test_registry_order_and_errors(monkeypatch):
    model = tiny.timm_dino()
    assert isinstance(get_backbone(model), TimmViTBackbone)
    model.is_toy = True
    register_backbone(_ToyBackbone)
    try:
        assert isinstance(get_backbone(model), _ToyBackbone)
        assert registered_backbones()[0] is _ToyBackbone
        assert registered_backbones()[-1] is CLIPTowerBackbone
    finally:
        unregister_backbone(_ToyBackbone)
    assert isinstance(get_backbone(model), TimmViTBackbone)
    with pytest.raises(ValueError, match="cls: '_ToyBackbone' is not registered"):
        unregister_backbone(_ToyBackbone)
    with pytest.raises(TypeError, match="cls: expected a VisionBackbone subclass, got int"):
        register_backbone(int)
    with pytest.raises(TypeError, match="backbone: unsupported model of type torch.nn.modules"):
        get_backbone(torch.nn.Linear(2, 2))
    view = get_backbone(model)
    assert get_backbone(view) is view
    with pytest.raises(ValueError, match="positional_resize: the backbone view already has"):
        get_backbone(view, positional_resize="bicubic")
    with pytest.raises(ValueError, match="positional_resize: expected one of"):
        get_backbone(model, positional_resize="nearest")
    assert any("timm" in f for f in supported_backbones())


def test_entry_point_backbones(monkeypatch):
    class _EP:
        name, value = "toy", "tests.adapters.test_backbones:_ToyBackbone"

        def load(self):
            return _ToyBackbone

    monkeypatch.setattr(backbone_registry, "entry_points", lambda group: [_EP()])
    backbone_registry._forget_entry_points()
    try:
        model = tiny.timm_dino()
        model.is_toy = True
        assert isinstance(get_backbone(model), _ToyBackbone)
    finally:
        monkeypatch.undo()
        backbone_registry._forget_entry_points()
