r"""CorrCLIP equals its plain re-implementation of the release (regions merged, attention
scope, the main, spatial and semantic branches through open_clip's blocks with the release's
attention mask) at a native and a non-native non-square size with a DINO-shaped backbone on
a finer grid; its pieces on hand cases; a batch equals per-image calls; the model and the
backbone are never changed; the SAM wrapper paints the release's labels."""

from __future__ import annotations

import pytest
import torch

from captum_clip_surgery import (
    TRAINING_FREE_METHODS,
    CLIPZeroShotClassifier,
    CorrCLIPAttribution,
    build_method,
)
from captum_clip_surgery.adapters import get_backbone
from captum_clip_surgery.methods.corrclip import (
    corrclip_attention,
    merge_regions,
    region_clusters,
    spatial_layer_count,
)
from tests import reference_backbones as refb
from tests.adapters import backbones as tiny
from tests.helpers import FEW_TEMPLATES, TEXTS, ModelSnapshot, images_for
from tests.models import tiny_resnet, tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")


def block_regions(rgb: torch.Tensor) -> torch.Tensor:
    r"""Region labels of a fixed layout (unsegmented corner 0; five regions, two of them
    the same colour band so that merging has work), at the images' size."""
    b, _, h, w = rgb.shape
    labels = torch.full((b, h, w), 5, dtype=torch.int64)
    labels[:, : h // 2, : w // 2] = 1
    labels[:, : h // 2, w // 2 :] = 2
    labels[:, h // 2 :, : w // 3] = 3
    labels[:, h // 2 :, w // 3 : 2 * w // 3] = 4
    labels[:, : h // 4, : w // 4] = 0
    return labels


def _explainer(model, backbone, **kwargs):
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    return CorrCLIPAttribution(clf, backbone=backbone, **kwargs)


def dino_q_plus_k(dino, images):
    r"""``q + k`` of the timm DINO's last block from its own forward (a hook on qkv, as the
    release hooks the hub DINO)."""
    seen = []
    hook = dino.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        dino.forward_features(refb.renormalise(images))
    finally:
        hook.remove()
    out = seen[0]
    b, n, _ = out.shape
    q, k, _ = out.reshape(b, n, 3, -1).unbind(2)
    return (q + k)[:, 1:]


@pytest.mark.parametrize("size", [(32, 32), (40, 24)], ids=["native", "non-native"])
@pytest.mark.parametrize("eps,merged_regions", [(0.0, (6, 6)), (0.035, (3, 5)), (0.2, (2, 2))],
                         ids=["no-merge", "some-merged", "release-eps"])
def test_corrclip_matches_the_release(size, eps, merged_regions):
    model, dino = tiny_vit(), tiny.timm_dino()
    snaps = ModelSnapshot(model), ModelSnapshot(dino)
    backbone = get_backbone(dino, positional_resize="bicubic_antialias")
    explainer = _explainer(model, backbone, mask_generator=block_regions, eps=eps)
    images = images_for(model, b=2, h=size[0], w=size[1])
    spatial = spatial_layer_count(7)
    assert spatial == 3 and explainer.spatial_layers == 3
    with torch.no_grad():
        got, grid = explainer.token_features(images)
        feats = dino_q_plus_k(dino, images)
        expected, merged, kept = refb.corrclip_tokens(
            model, images, feats, grid, block_regions(images), spatial, eps=eps)
        ours = explainer.backbone_features(images)[0]
        labels = torch.nn.functional.interpolate(
            block_regions(images)[:, None].float(), size=grid, mode="nearest")[:, 0].long().flatten(1)
        our_merged = torch.stack([merge_regions(labels[i], ours[i], eps) for i in range(2)])
        our_kept = torch.stack([corrclip_attention(ours[i], our_merged[i]) > 0
                                for i in range(2)])
    assert grid == (size[0] // 4, size[1] // 4)
    torch.testing.assert_close(ours, torch.nn.functional.normalize(feats, dim=-1),
                               atol=1e-5, rtol=1e-5)
    # decisions first: the merged regions and the kept attention entries
    assert torch.equal(our_merged, merged)
    assert torch.equal(our_kept, kept)
    # the random DINO's region means lie 0.02-0.12 apart: 0.2 merges every segmented
    # region, 0.035 some (chains of single linkage), 0 none
    low, high = merged_regions
    assert all(low <= len(torch.unique(row)) <= high for row in merged), merged
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)
    for snap in snaps:
        snap.assert_unchanged()


def test_region_clusters_and_merge_by_hand():
    d = torch.tensor([[0.0, 0.3, 0.1, 0.9],
                      [0.3, 0.0, 0.2, 0.9],
                      [0.1, 0.2, 0.0, 0.9],
                      [0.9, 0.9, 0.9, 0.0]])
    # 0-2 at 0.1 and 2-1 at 0.2 chain 0, 1 and 2 (single linkage); 3 alone
    assert region_clusters(d, 0.2).tolist() == [0, 0, 0, 1]
    assert region_clusters(d, 0.15).tolist() == [0, 1, 0, 2]
    assert region_clusters(d, 0.0).tolist() == [0, 1, 2, 3]
    f = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), dim=1)
    # two labels: nothing to merge (the release merges only with more than two)
    assert merge_regions(torch.tensor([3, 7, 7]), f).tolist() == [3, 7, 7]
    # the lowest label keeps its label, even where its features match another region's
    out = merge_regions(torch.tensor([0, 1, 2]), f)
    assert out.tolist() == [0, 10000, 10000]
    # labels that reach 10000 are not collided with
    out = merge_regions(torch.tensor([0, 10000, 12000]), f, eps=0.0)
    assert out[0] == 0 and out[1] == out[2] == 12001


def test_corrclip_attention_scope_by_hand():
    f = torch.eye(4)
    # no masks: one unsegmented area: pairs above the mean similarity (1/4): the diagonal
    assert torch.equal(corrclip_attention(f, torch.zeros(4, dtype=torch.long)), torch.eye(4))
    f = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.1],
                                                    [0.0, 1.0]]), dim=1)
    a = corrclip_attention(f, torch.tensor([0, 1, 1, 2]), tau=4.0)
    s = f @ f.t()
    # token 1 (region 1): itself and token 2 (same region), and token 0 (unsegmented,
    # above the mean); not token 3
    keep = torch.tensor([True, True, True, False])
    expected = (4 * s[1]).masked_fill(~keep, float("-inf")).softmax(0)
    torch.testing.assert_close(a[1], expected)
    # token 3 (region 2, alone): itself only (token 0's similarity to it is below the mean)
    torch.testing.assert_close(a[3], torch.tensor([0.0, 0.0, 0.0, 1.0]))


def test_corrclip_batch_equals_single_and_maps_line_up():
    model, dino = tiny_vit(), tiny.hf_dinov2(registers=2)
    snaps = ModelSnapshot(model), ModelSnapshot(dino)
    calls = []

    def generator(rgb):
        calls.append(rgb.clone())
        return block_regions(rgb)[:, None]  # [B, 1, H, W] is accepted too

    explainer = _explainer(model, dino, mask_generator=generator)
    images = images_for(model, b=3, h=36, w=20, seed=1)  # padded to 40x24 for CLIP
    with torch.no_grad():
        sim = explainer.similarity(images)
        single = torch.cat([explainer.similarity(images[i : i + 1]) for i in range(3)])
        maps = explainer.attribute(images, target=[0, "grass", 3])
    assert sim.shape == (3, len(TEXTS), 10, 6)
    torch.testing.assert_close(sim, single, atol=1e-5, rtol=1e-5)
    assert maps.shape == (3, 1, 36, 20) and maps.min() >= 0 and maps.max() <= 1
    assert calls[0].min() >= 0 and calls[0].max() <= 1  # the generator sees RGB in [0, 1]
    for snap in snaps:
        snap.assert_unchanged()
    model.train()
    explainer.similarity(images)
    assert model.training


def test_corrclip_without_a_spatial_branch_is_alpha_zero():
    r"""``spatial_layers=0`` leaves the spatial branch out: the same as weighting it 0 (and
    the default on a 2-block tower, where the release's rule has no block to average)."""
    model = tiny_vit()
    images = images_for(model, b=2, h=40, w=24)
    with torch.no_grad():
        none = _explainer(model, None, mask_generator=block_regions, spatial_layers=0)
        zero = _explainer(model, None, mask_generator=block_regions, alpha=0.0)
        torch.testing.assert_close(none.token_features(images)[0],
                                   zero.token_features(images)[0], atol=1e-6, rtol=1e-6)
        full = _explainer(model, None, mask_generator=block_regions)
        assert not torch.allclose(full.token_features(images)[0], none.token_features(images)[0])
    assert _explainer(tiny_vit(layers=2), None).spatial_layers == 0


def test_corrclip_registry_and_errors():
    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    assert "corrclip" in TRAINING_FREE_METHODS
    explainer = build_method("corrclip", clf)
    assert isinstance(explainer, CorrCLIPAttribution) and explainer.mask_generator is None
    with torch.no_grad():  # without masks the method still runs (one unsegmented area)
        assert torch.isfinite(explainer.similarity(images_for(model, b=1))).all()
    with pytest.raises(TypeError, match="mask_generator"):
        CorrCLIPAttribution(clf, mask_generator="sam")
    with pytest.raises(ValueError, match="spatial_layers"):
        CorrCLIPAttribution(clf, spatial_layers=6)
    with pytest.raises(ValueError, match="tau"):
        CorrCLIPAttribution(clf, tau=0)
    bad = CorrCLIPAttribution(clf, mask_generator=lambda rgb: rgb[:, 0])  # float labels
    with pytest.raises(ValueError, match="integer labels"):
        bad.similarity(images_for(model, b=1))
    assert CorrCLIPAttribution.unsupported_reason(
        CLIPZeroShotClassifier(tiny_resnet(), TEXTS).adapter) is not None
