r"""Every open_clip image tower beside the class-token ViT and the ResNet: timm ViTs
(SigLIP, register tokens + q/k norm + layer scale, ViTamin, MobileCLIP ViT), Eva (EVA01,
EVA02, EVA02-E post-norm, PE-Core), RelPos ViT, ConvNeXt (linear and MLP projection),
FastViT, Swin, and open_clip's own CoCa and average-pooled (CLIPA) ViTs.

For a tiny random model of each: the views reproduce the model (blocks, pooled
embedding, logits), batches equal per-image calls, the maps have the right shapes at
the native and a non-native size (where the tower allows one), half precision runs
finite, and the model is left bit-identical without hooks.
"""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam

from captum_clip_surgery import (
    CLIPAttentionRelevance,
    CLIPSimilarityMap,
    CLIPSurgeryAttribution,
    CLIPZeroShotClassifier,
    MaskCLIPAttribution,
)
from captum_clip_surgery.adapters import OpenCLIPAdapter, OpenCLIPTimmAdapter, get_adapter
from captum_clip_surgery.core.architecture import image_token_features, pooled_image_features
from tests.adapters.timm_models import BUILDERS, NATIVE, TOWERS, native_size
from tests.helpers import TEXTS
from tests.models import TEXT_CFG

TOWER_IDS = sorted(BUILDERS)


def _tokenize(texts):
    r"""open_clip's shared tokenizer (building a SimpleTokenizer per classifier is slow)."""
    return open_clip.tokenize(texts, context_length=TEXT_CFG["context_length"])

#: head kind of each tower (``attention`` heads here all have a learned probe query)
KINDS = {
    "siglip": "attention", "siglip_reg_qknorm_ls": "attention", "pe_core": "attention",
    "coca": "attention", "vitamin": "average", "convnext": "average", "convnext_mlp": "average",
    "fastvit": "average", "swin": "average", "clipa_avg": "average", "vit_avg_ln_first": "average",
    "mobileclip_vit": "token", "eva02": "token", "eva01": "token", "eva02_e_postnorm": "token",
    "relpos": "token",
}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _images(model, b=2, extra=(0, 0), seed=0):
    s = native_size(model)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, s + extra[0], s + extra[1], generator=g)


def _native_only(tower: str) -> bool:
    return tower in TOWERS and TOWERS[tower].native_only


@pytest.mark.parametrize("tower", TOWER_IDS)
def test_adapter_routing_and_views_reproduce_the_model(tower):
    model = BUILDERS[tower]()
    adapter = get_adapter(model)
    timm_tower = tower in TOWERS
    assert isinstance(adapter, OpenCLIPTimmAdapter if timm_tower else OpenCLIPAdapter)
    assert OpenCLIPTimmAdapter.supports(model) is timm_tower
    assert OpenCLIPAdapter.supports(model) is (not timm_tower)
    image = adapter.image
    assert image.kind == KINDS[tower]
    if image.kind == "attention":
        assert image.head.query_kind == "probe"
    images = _images(model)
    with torch.no_grad():
        own = model.encode_image(images, normalize=False)
        torch.testing.assert_close(adapter.encode_image(images), own)
        torch.testing.assert_close(pooled_image_features(adapter, images), own, atol=1e-5, rtol=1e-5)
        x, grid = image.embed(images)
        h, w = grid
        assert x.shape[1] == image.num_prefix_tokens + h * w
        assert (h, w) == image.native_grid and adapter.input_size() == (native_size(model),) * 2
        for block in image.blocks:
            q, k, v = block.qkv(block.norm1(x))
            assert q.shape == k.shape == v.shape == (2, block.num_heads, x.shape[1], block.head_dim)
            functional = x + block.ls1(block.out(block.original_attention(q, k, v)))
            functional = functional + block.ls2(block.mlp(block.norm2(functional)))
            own_block = block.forward(x)
            torch.testing.assert_close(functional, own_block, atol=1e-5, rtol=1e-5)
            manual = block.attention_logits(q, k).softmax(-1) @ v
            torch.testing.assert_close(manual, block.original_attention(q, k, v), atol=1e-5, rtol=1e-5)
            x = own_block
        torch.testing.assert_close(image.head.pool(x, image.num_prefix_tokens, grid), own,
                                   atol=1e-5, rtol=1e-5)
        # the token-features contract: row 0 is the model's own embedding, then the grid
        depth = len(image.blocks)
        for blocks in sorted({0, min(2, depth)}):
            feats, grid2 = image_token_features(adapter, images, blocks)
            assert grid2 == grid and feats.shape == (2, 1 + h * w, own.shape[-1])
            torch.testing.assert_close(feats[:, 0], own, atol=1e-5, rtol=1e-5)
        if tower in ("fastvit", "swin", "vit_avg_ln_first"):
            # an affine head after the average pool: the plain dense features average to the
            # embedding (the others norm the pooled vector or end in an MLP)
            plain, _ = image_token_features(adapter, images, 0)
            torch.testing.assert_close(plain[:, 1:].mean(dim=1), own, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("tower", TOWER_IDS)
def test_classifier_logits_are_the_models_own(tower):
    model = BUILDERS[tower]()
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=["{}"])
    images = _images(model, b=3)
    ids = open_clip.tokenize(TEXTS, context_length=model.context_length)
    with torch.no_grad():
        if isinstance(model, open_clip.CoCa):  # its forward also runs the caption decoder
            out = (model.encode_image(images), model.encode_text(ids), model.logit_scale.exp())
        else:
            out = model(images, ids)
        img, txt, scale = out[:3]
        expected = scale * img @ txt.t() + (out[3] if len(out) > 3 else 0.0)
        got = clf(images)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    adapter = clf.adapter
    siglip = tower in TOWERS and TOWERS[tower].siglip
    assert adapter.score_kind == ("sigmoid" if siglip else "softmax")
    if siglip:
        torch.testing.assert_close(adapter.logit_bias(), model.logit_bias.reshape(()))
    else:
        assert adapter.logit_bias() is None


@pytest.mark.slow
@pytest.mark.parametrize("tower", TOWER_IDS)
def test_maps_batched_shapes_and_model_unchanged(tower, snapshot):
    model = BUILDERS[tower]()
    model.train()  # explanations run in eval mode and restore every flag
    snap = snapshot(model)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=["{}", "a {}."], tokenizer=_tokenize)
    surgery = CLIPSurgeryAttribution(clf)
    images = _images(model)
    s = native_size(model)
    maps = surgery.attribute(images, target=[0, 2])
    assert maps.shape == (2, 1, s, s) and torch.isfinite(maps).all()
    # a batch equals per-image calls
    scores = surgery.similarity(images)
    for i in range(2):
        torch.testing.assert_close(scores[i : i + 1], surgery.similarity(images[i : i + 1]),
                                   atol=1e-5, rtol=1e-5)
    grid = clf.adapter.image.native_grid
    assert scores.shape == (2, len(TEXTS), *grid)
    raw_ok = tower != "coca"  # CoCa's pooler queries are narrower than its tokens
    if raw_ok:
        assert CLIPSimilarityMap(clf).attribute(images, target=1).shape == (2, 1, s, s)
    else:
        with pytest.raises(TypeError, match="model: the CoCa attentional pooler"):
            CLIPSimilarityMap(clf).attribute(images, target=1)
    kind = clf.adapter.image.kind
    if kind != "average":
        assert MaskCLIPAttribution(clf).attribute(images, target=1).shape == (2, 1, s, s)
    if kind == "token":
        assert CLIPAttentionRelevance(clf).attribute(images, target=1).shape == (2, 1, s, s)
    cam = LayerGradCam(clf, clf.gradcam_layer(-1)).attribute(images, target=0)
    assert cam.shape == (2, 1, *grid) and torch.isfinite(cam).all()
    # a non-native size (one more grid row, two more columns) where the tower allows it
    ph, pw = clf.adapter.image.patch_size
    other = _images(model, b=1, extra=(ph, 2 * pw))
    if _native_only(tower):
        with pytest.raises(ValueError, match="^images: .*native input size"):
            surgery.attribute(other, target=0)
    else:
        assert surgery.attribute(other, target=0).shape == (1, 1, s + ph, s + 2 * pw)
        assert surgery.similarity(other).shape == (1, len(TEXTS), grid[0] + 1, grid[1] + 2)
        if raw_ok:
            assert CLIPSimilarityMap(clf).attribute(other, target=0).shape == (1, 1, s + ph, s + 2 * pw)
        cam = LayerGradCam(clf, clf.gradcam_layer(-1)).attribute(other, target=0)
        assert cam.shape == (1, 1, grid[0] + 1, grid[1] + 2)
    snap.assert_unchanged()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("tower", TOWER_IDS)
def test_half_precision_runs_finite(tower, dtype):
    model = BUILDERS[tower]().to(dtype)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=["{}"], tokenizer=_tokenize)
    images = _images(model)
    logits = clf(images)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    explainer = CLIPSurgeryAttribution(clf)
    assert clf.adapter.dtype == dtype
    maps = explainer.attribute(images.to(dtype), target=1)
    assert maps.dtype == dtype and torch.isfinite(maps.float()).all()
    assert torch.isfinite(explainer.similarity(images)).all()


def test_siglip_map_head_is_the_models_attention_pool():
    model = BUILDERS["siglip_reg_qknorm_ls"]()
    adapter = get_adapter(model)
    trunk = model.visual.trunk
    pool = trunk.attn_pool
    head = adapter.image.head
    p = adapter.image.num_prefix_tokens
    assert p == 2 and head.key_start == 2  # two register tokens, no class token
    images = _images(model)
    with torch.no_grad():
        x, grid = adapter.image.embed(images)
        for block in adapter.image.blocks:
            x = block.forward(x)
        tokens = trunk.norm(x)
        # an independent formula: the probe's softmax attention over the grid tokens only
        e = pool.kv.out_features // 2
        k = F.linear(tokens[:, p:], pool.kv.weight[:e], pool.kv.bias[:e])
        v = F.linear(tokens[:, p:], pool.kv.weight[e:], pool.kv.bias[e:])
        q = pool.q(pool.latent).expand(2, -1, -1)
        split = lambda t: t.reshape(2, t.shape[1], pool.num_heads, -1).transpose(1, 2)  # noqa: E731
        a = (split(q) @ split(k).transpose(-2, -1) * pool.head_dim**-0.5).softmax(-1) @ split(v)
        o = pool.proj(a.transpose(1, 2).reshape(2, 1, -1))
        o = o + pool.mlp(pool.norm(o))
        torch.testing.assert_close(head.pool(x, p, grid), o[:, 0], atol=1e-5, rtol=1e-5)
        # dense features: each token's value path through proj and the MLP residual
        dense = pool.proj(v)
        dense = dense + pool.mlp(pool.norm(dense))
        keys = head.prepare(x, p, grid)
        torch.testing.assert_close(head.dense(keys)[:, p:], dense, atol=1e-5, rtol=1e-5)


def test_eva_rope_follows_the_grid():
    import timm

    model = BUILDERS["eva02"]()
    view = get_adapter(model).image
    rope = model.visual.trunk.rope
    assert torch.equal(view._rope(view.native_grid), rope.get_embed())
    wide = view._rope((4, 6))
    # timm's own rule for other sizes: the same trunk built for dynamic image sizes
    dynamic = timm.create_model(TOWERS["eva02"].trunk, dynamic_img_size=True).rope
    torch.testing.assert_close(wide, dynamic.get_embed(shape=[4, 6]))
    torch.testing.assert_close(view._rope(view.native_grid), dynamic.get_embed(shape=[4, 4]))
    with torch.no_grad():
        x, grid = view.embed(_images(model, b=1, extra=(0, 16)))
    assert grid == (4, 6) and torch.equal(view.rope_for(x.shape[1]), wide)


def test_wip_attentional_pool_and_unknown_trunks_are_refused_with_the_reason():
    text = dict(context_length=8, vocab_size=100, width=16, heads=2, layers=1)
    vision = dict(NATIVE["clipa_avg"], attentional_pool="parallel", attn_pooler_queries=4,
                  attn_pooler_heads=2)
    model = open_clip.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text)
    with pytest.raises(TypeError, match=r"^model: .*attentional_pool='parallel'") as error:
        get_adapter(model)
    assert "\n" not in str(error.value)
    with torch.device("meta"):
        vision = dict(timm_model_name="resnet18", timm_model_pretrained=False, timm_pool="avg",
                      timm_proj="linear", image_size=64)
        model = open_clip.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text)
    with pytest.raises(TypeError, match=r"^model: unsupported timm trunk ResNet;"):
        get_adapter(model)


def test_tiny_coca_has_no_uninitialised_parameters():
    # open_clip creates the caption decoder's projection with torch.empty; the builder seeds it
    a, b = BUILDERS["coca"](), BUILDERS["coca"]()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.isfinite(p).all(), name
        assert torch.equal(p, q), f"{name} differs between two builds with one seed"


def test_snapshot_is_bitwise_and_treats_an_unchanged_nan_as_unchanged(snapshot):
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    snap = snapshot(model)
    snap.assert_unchanged()  # NaN == NaN for the snapshot
    with torch.no_grad():
        model.weight[1, 1] += 1e-6
    with pytest.raises(AssertionError, match="weight changed"):
        snap.assert_unchanged()
