r"""ProxyCLIP equals its plain formula (decisions first, then the maps where they agree) at a
native and a non-native non-square size with a DINO-shaped backbone on a finer grid; its
reductions (CLIP's own tower as the proxy; orthogonal and constant proxy features); a batch
equals per-image calls; the model and the backbone are never changed."""

from __future__ import annotations

import pytest
import torch

from captum_clip_surgery import (
    TRAINING_FREE_METHODS,
    CLIPZeroShotClassifier,
    ProxyCLIPAttribution,
    build_method,
)
from captum_clip_surgery.adapters import CLIPTowerBackbone, VisionBackbone, get_backbone
from captum_clip_surgery.methods import proxyclip as proxyclip_module
from captum_clip_surgery.methods.proxyclip import proxy_attention
from captum_clip_surgery.methods.second_backbone import resize_grid_tokens
from tests import reference as ref
from tests import reference_backbones as refb
from tests.adapters import backbones as tiny
from tests.helpers import FEW_TEMPLATES, TEXTS, ModelSnapshot, images_for
from tests.models import tiny_resnet, tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(agree):
    r"""Rows of the token features to compare: the model's own (row 0) and every token whose
    attention row has the same decisions as the reference's."""
    return torch.cat([torch.ones(agree.shape[0], 1, dtype=torch.bool), agree.all(-1)], 1)

def _explainer(model, backbone, **kwargs):
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    return ProxyCLIPAttribution(clf, backbone=backbone, **kwargs)


@pytest.mark.parametrize("size", [(32, 32), (40, 24)], ids=["native", "non-native"])
@pytest.mark.parametrize("beta,gamma", [(1.2, 3.0), (0.5, 7.0)])
def test_proxyclip_matches_formula(size, beta, gamma):
    model, dino = tiny_vit(), tiny.timm_dino()
    snaps = ModelSnapshot(model), ModelSnapshot(dino)
    # timm's own positional rule, so that timm's forward_features is the independent reference
    backbone = get_backbone(dino, positional_resize="bicubic_antialias")
    explainer = _explainer(model, backbone, beta=beta, gamma=gamma)
    images = images_for(model, b=2, h=size[0], w=size[1])
    with torch.no_grad():
        got, grid = explainer.token_features(images)
        feats = dino.forward_features(refb.renormalise(images))[:, 1:]
        expected, kept = refb.proxyclip_tokens(model, images, feats, grid, beta, gamma)
        ours = explainer.proxy_features(images)[0]
        got_kept = proxy_attention(ours, beta, gamma) > 0
    assert grid == (size[0] // 4, size[1] // 4)  # the backbone's grid, rows first
    torch.testing.assert_close(ours, feats, atol=1e-5, rtol=1e-5)
    # decisions (kept attention entries) per token row; tokens whose row agrees everywhere
    refb.assert_decisions_then_close(got_kept, kept, got, expected, _rows)
    for snap in snaps:
        snap.assert_unchanged()


def test_proxyclip_with_clip_own_tower():
    r"""With ``backbone=None`` the proxy is the model's own tower: F = ln_post(x_L) of the
    patches, on CLIP's own grid (the values are not resampled)."""
    model = tiny_vit()
    explainer = _explainer(model, None)
    assert isinstance(explainer.backbone, CLIPTowerBackbone)
    images = images_for(model, b=2, h=40, w=24)
    with torch.no_grad():
        got, grid = explainer.token_features(images)
        feats = refb.clip_tower_proxy_features(model, images)
        expected, kept = refb.proxyclip_tokens(model, images, feats, grid)
    assert grid == (5, 3)
    ours = explainer.proxy_features(images)[0]
    torch.testing.assert_close(ours, feats, atol=1e-5, rtol=1e-5)
    got_kept = proxy_attention(ours) > 0
    refb.assert_decisions_then_close(got_kept, kept, got, expected, _rows)
    # a classifier as the backbone is its model's tower too
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    assert isinstance(ProxyCLIPAttribution(clf, backbone=clf).backbone, CLIPTowerBackbone)


class _FixedFeatures(VisionBackbone):
    r"""A proxy whose patch features are given (one-hot or constant), on CLIP's grid."""

    family = "fixed features (tests)"
    release_positional_resize = None

    def __init__(self, features, patch=8):
        super().__init__(torch.nn.Linear(1, 1))
        self.features = features
        self.patch_size, self.native_grid = (patch, patch), (4, 4)
        self.num_prefix_tokens = 0
        self.blocks = [None]  # one "block": patch_tokens is overridden

    @classmethod
    def supports(cls, model):
        return False

    def embed_tokens(self, images):  # pragma: no cover - never called
        raise AssertionError

    def patch_tokens(self, images, layer=-1, norm=True):
        h, w = images.shape[-2] // 8, images.shape[-1] // 8
        return self.features(images.shape[0], h * w), (h, w)


def test_proxyclip_hand_cases():
    model = tiny_vit()
    images = images_for(model, b=2, h=40, w=24)
    x, q, k, v, grid, pooled = refb._clip_last_block_inputs(model, images)
    last = model.visual.transformer.resblocks[-1]
    with torch.no_grad():
        value_path = ref._head(model, ref._out(last, v[:, 1:].reshape(2, 15, -1)))
        # orthogonal features: each token attends to itself, T = ln_post(out(v_i)) P
        eye = _FixedFeatures(lambda b, n: torch.eye(n).expand(b, n, n))
        got, _ = _explainer(model, eye).token_features(images)
        torch.testing.assert_close(got[:, 1:], value_path, atol=1e-5, rtol=1e-5)
        # constant features: S = 1, every argument is cut (release: NaN); the maxima stay:
        # uniform attention, every token is the mean value path
        ones = _FixedFeatures(lambda b, n: torch.ones(b, n, 5))
        got, _ = _explainer(model, ones).token_features(images)
        mean_v = v[:, 1:].reshape(2, 15, -1).mean(dim=1, keepdim=True)
        expected = ref._head(model, ref._out(last, mean_v)).expand(-1, 15, -1)
        torch.testing.assert_close(got[:, 1:], expected, atol=1e-5, rtol=1e-5)
    a = proxy_attention(torch.eye(3)[None])[0]
    torch.testing.assert_close(a, torch.eye(3))
    u = proxy_attention(torch.ones(1, 4, 2), beta=0.5)[0]  # (1 - 0.5)·3 > 0: uniform
    torch.testing.assert_close(u, torch.full((4, 4), 0.25))


def _release_attention(features, beta=1.2, gamma=3.0):
    r"""The release's proxy attention as written (open_clip/transformer.py:568-578 of
    mc-lan/ProxyCLIP@e7b767f), one image at a time: arguments below 0 become -inf, and the
    softmax of a row of -inf is NaN."""
    out = []
    for f in features.float():
        f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        s = f @ f.T
        s = (s - s.mean() * beta) * gamma
        s[s < 0.0] = float("-inf")
        out.append(torch.softmax(s, dim=-1))
    return torch.stack(out)


def test_proxy_attention_empty_rows_nan_is_the_release():
    g = torch.Generator().manual_seed(0)
    near = torch.ones(1, 6, 4) + 0.05 * torch.randn(1, 6, 4, generator=g)  # all but parallel
    spread = torch.randn(1, 6, 4, generator=g)
    spread[0, 2] = 0.0  # a zero feature: its row is all below 0 (β·mean(S) > 0)
    feats = torch.cat([near, spread])
    f = torch.nn.functional.normalize(feats, dim=-1)
    means = (f @ f.transpose(1, 2)).mean(dim=(1, 2))
    assert means[0] > 1 / 1.2 and 0 < means[1] < 1 / 1.2  # image 0: every row is empty
    nan = proxy_attention(feats, empty_rows="nan")
    largest = proxy_attention(feats)  # the default
    empty = torch.zeros(2, 6, dtype=torch.bool)
    empty[0] = True
    empty[1, 2] = True
    assert torch.equal(nan.isnan().all(-1), empty) and torch.equal(nan.isnan().any(-1), empty)
    torch.testing.assert_close(nan[~empty], largest[~empty], atol=0, rtol=0)
    torch.testing.assert_close(nan, _release_attention(feats), equal_nan=True)
    # the default keeps those rows' maxima: finite distributions everywhere
    assert torch.isfinite(largest).all()
    torch.testing.assert_close(largest.sum(-1), torch.ones(2, 6))
    torch.testing.assert_close(largest[1, 2], torch.full((6,), 1 / 6))  # all entries equal
    # a row is empty only through mean(S): with a small β nothing is cut to NaN
    torch.testing.assert_close(proxy_attention(near, beta=0.5, empty_rows="nan"),
                               _release_attention(near, beta=0.5))
    assert torch.isfinite(proxy_attention(near, beta=0.5, empty_rows="nan")).all()


def test_proxyclip_empty_rows_nan_per_image():
    r"""Constant proxy features for image 0 (mean similarity 1 > 1/β: every row empty),
    orthogonal ones for image 1: with ``"nan"`` image 0's dense tokens are NaN (its own
    embedding, row 0, is not) and image 1's equal the default's."""
    model = tiny_vit()
    images = images_for(model, b=2, h=40, w=24)

    def features(b, n):
        out = torch.eye(n).expand(b, n, n).clone()
        out[0] = 1.0
        return out

    with torch.no_grad():
        nan, grid = _explainer(model, _FixedFeatures(features), empty_rows="nan").token_features(images)
        largest, _ = _explainer(model, _FixedFeatures(features)).token_features(images)
        sim = _explainer(model, _FixedFeatures(features), empty_rows="nan").similarity(images)
    assert nan[0, 1:].isnan().all() and torch.isfinite(nan[0, 0]).all()
    assert torch.isfinite(nan[1]).all() and torch.isfinite(largest).all()
    torch.testing.assert_close(nan[1], largest[1], atol=0, rtol=0)
    torch.testing.assert_close(nan[0, 0], largest[0, 0], atol=0, rtol=0)
    assert sim[0].isnan().all() and torch.isfinite(sim[1]).all()


@pytest.mark.parametrize("model_fn", [tiny_vit, lambda: tiny_vit("custom", scale_attn=True)],
                         ids=["affine-branch", "normed-branch"])
def test_proxyclip_orders_of_the_product_agree(monkeypatch, model_fn):
    r"""``branch(A R V)`` is the same whichever order it is evaluated in: the branch before
    the mixing where it is affine, after it where it is not; ``(A R) V`` or ``A (R V)``."""
    model, dino = model_fn(), tiny.timm_dino()
    block = CLIPZeroShotClassifier(model, TEXTS).adapter.image.blocks[-1]
    images = images_for(model, b=2, h=40, w=24)
    outputs = {}
    affine_here = block.branch_is_affine
    for affine in (True, False) if affine_here else (False,):
        for first in (True, False):
            monkeypatch.setattr(type(block), "branch_is_affine",
                                property(lambda self, a=affine: a))
            monkeypatch.setattr(proxyclip_module, "_resize_values_first",
                                lambda *args, f=first: f)
            with torch.no_grad():
                outputs[affine, first] = _explainer(model, dino).token_features(images)[0]
    assert len(outputs) == (4 if affine_here else 2)
    base = outputs[False, True]  # the release's order: resize V, mix, then the branch
    for got in outputs.values():
        torch.testing.assert_close(got, base, atol=1e-5, rtol=1e-5)
    # the resize matrix is the bilinear resize
    tokens = torch.randn(1, 15, 7, generator=torch.Generator().manual_seed(0))
    resized = resize_grid_tokens(tokens, (5, 3), (10, 6))
    matrix = proxyclip_module._bilinear_resize_matrix((5, 3), (10, 6), tokens.device)
    torch.testing.assert_close(matrix @ tokens[0], resized[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(matrix.sum(1), torch.ones(60))  # rows sum to 1


def test_proxyclip_batch_equals_single_and_maps_line_up():
    model, dino = tiny_vit(), tiny.hf_dinov2(registers=2)
    snaps = ModelSnapshot(model), ModelSnapshot(dino)
    explainer = _explainer(model, dino)
    images = images_for(model, b=3, h=36, w=20, seed=1)  # padded to 40x24 for CLIP
    with torch.no_grad():
        sim = explainer.similarity(images)
        single = torch.cat([explainer.similarity(images[i : i + 1]) for i in range(3)])
        maps = explainer.attribute(images, target=[0, "grass", 3])
    assert sim.shape == (3, len(TEXTS), 10, 6)  # the backbone's grid over the padded input
    torch.testing.assert_close(sim, single, atol=1e-5, rtol=1e-5)
    assert maps.shape == (3, 1, 36, 20) and maps.min() >= 0 and maps.max() <= 1
    assert explainer.token_extent((10, 6), (36, 20)) == (36 / 40, 20 / 24)
    x = images.clone().requires_grad_(True)  # gradients reach inputs that ask for them
    (grad,) = torch.autograd.grad(explainer.similarity(x).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    for snap in snaps:
        snap.assert_unchanged()
    model.train()
    dino.train()
    explainer.similarity(images)
    assert all(m.training for m in model.modules()) and all(m.training for m in dino.modules())


def test_proxyclip_registry_and_errors():
    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    assert "proxyclip" in TRAINING_FREE_METHODS
    assert isinstance(build_method("proxyclip", clf), ProxyCLIPAttribution)
    with pytest.raises(ValueError, match="beta: expected a finite number >= 0"):
        ProxyCLIPAttribution(clf, beta=-1.0)
    with pytest.raises(ValueError, match="gamma: expected a finite number > 0"):
        ProxyCLIPAttribution(clf, gamma=0.0)
    with pytest.raises(TypeError, match="backbone: unsupported model of type"):
        ProxyCLIPAttribution(clf, backbone=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="empty_rows: expected one of 'largest', 'nan', got 'NaN'"):
        ProxyCLIPAttribution(clf, empty_rows="NaN")
    with pytest.raises(ValueError, match="empty_rows: expected one of 'largest', 'nan', got None"):
        proxy_attention(torch.eye(3)[None], empty_rows=None)
    with pytest.raises(ValueError, match=r"backbone_layer: expected an int in \[-7, 6\]"):
        ProxyCLIPAttribution(clf, backbone_layer=7)
    with pytest.raises(TypeError, match="forward_func: ProxyCLIP .* no attention blocks"):
        ProxyCLIPAttribution(tiny_resnet(), texts=TEXTS)

