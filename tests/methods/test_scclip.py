r"""SC-CLIP equals the release's forward written plainly (``tests/reference.py``): the
anomaly tokens first, then the maps; its LOF and repair on hand-made cases; batches; errors."""

from __future__ import annotations

import pytest
import torch

from captum_clip_surgery import CLIPZeroShotClassifier, SCCLIPAttribution, supported_methods
from captum_clip_surgery.methods.scclip import lof_outliers, repair_outliers, scclip_layers
from tests import reference as ref
from tests.helpers import FEW_TEMPLATES, TEXTS, assert_decisions_then_maps, images_for
from tests.models import tiny_resnet, tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")


def deep_vit():
    r"""12 blocks (the release's layers) on 64x64 inputs, patch 8: an 8x8 grid, so that
    LOF's 30 neighbours are real."""
    return tiny_vit(layers=12, image_size=64)


@pytest.mark.parametrize("size", [(64, 64), (48, 80)], ids=["native", "non-native"])
def test_scclip_matches_the_release_formula(size, snapshot):
    model = deep_vit()
    snap = snapshot(model)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    explainer = SCCLIPAttribution(clf)
    assert (explainer.pre_adjust_layer, explainer.post_adjust_layer,
            explainer.fusion_layers) == (9, 4, (4, 10))
    images = images_for(model, b=2, h=size[0], w=size[1], seed=3)
    with torch.no_grad():
        got, grid = explainer.token_features(images)
        expected, outliers = ref.scclip_tokens(model, images)
    anomalies = explainer.anomalies(images)
    assert grid == (size[0] // 8, size[1] // 8) and anomalies.shape == outliers.shape
    assert 1 <= int(anomalies.sum(dim=1).min())  # the 5 % contamination finds some
    assert_decisions_then_maps(got, expected, anomalies, outliers)
    snap.assert_unchanged()


def test_a_shallow_tower_uses_proportional_layers():
    model = tiny_vit()  # 7 blocks, 4x4 native grid
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    explainer = SCCLIPAttribution(clf)
    assert scclip_layers(7) == (5, 2, (2, 5)) and scclip_layers(12) == (9, 4, (4, 10))
    assert (explainer.pre_adjust_layer, explainer.post_adjust_layer,
            explainer.fusion_layers) == (5, 2, (2, 5))
    images = images_for(model, b=2, h=40, w=56, seed=4)  # 5x7: 34 neighbours asked, 34 exist
    with torch.no_grad():
        got, _ = explainer.token_features(images)
        expected, outliers = ref.scclip_tokens(model, images, 5, 2, (2, 5))
    assert_decisions_then_maps(got, expected, explainer.anomalies(images), outliers)
    # explicit layers and constants reach the forward
    other = SCCLIPAttribution(clf, pre_adjust_layer=3, post_adjust_layer=1, fusion_layers=(1, 6),
                              beta=0.2, temperature=2.0, res_cls=0.5, lof_neighbors=6,
                              contamination=0.1)
    with torch.no_grad():
        got, _ = other.token_features(images)
        expected, outliers = ref.scclip_tokens(model, images, 3, 1, (1, 6), 0.2, 2.0, 0.5, 6, 0.1)
    assert_decisions_then_maps(got, expected, other.anomalies(images), outliers)


def test_lof_finds_the_far_token_and_follows_the_release():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 40, 6, generator=g)
    x[0, 17] += 40.0
    found = lof_outliers(x, neighbors=30, contamination=0.05)[0].nonzero().flatten().tolist()
    assert 17 in found and len(found) == 2  # above the 0.95 quantile of 40: the top 2
    assert not lof_outliers(x, neighbors=30, contamination=0.0).any()  # above the maximum: none
    assert int(lof_outliers(x, neighbors=5, contamination=0.5).sum()) == 20
    # the release's arithmetic (explicit differences, itself dropped from the 31 nearest)
    for seed in range(5):
        tokens = torch.randn(3, 50, 12, generator=torch.Generator().manual_seed(seed)) * 3
        got = lof_outliers(tokens, 30, 0.05)
        for b in range(3):
            assert torch.equal(got[b], ref.scclip_lof(tokens[b], 30, 0.05))
    # fewer tokens than neighbours: N - 1 of them (the release fails)
    small = torch.randn(2, 9, 4, generator=g)
    assert torch.equal(lof_outliers(small, 30, 0.2)[1], ref.scclip_lof(small[1], 8, 0.2))
    assert not lof_outliers(torch.randn(1, 1, 4), 30, 0.05).any()


def test_repair_on_a_non_square_grid_by_hand():
    x = torch.arange(6.0)[None, :, None] * torch.tensor([1.0, 10.0])  # [1, 6, 2]; a 2x3 grid
    bad = torch.zeros(1, 6, dtype=torch.bool)
    bad[0, [0, 4]] = True  # (0, 0) and (1, 1); the release's index // rows puts 4 at (2, 0)
    fixed = repair_outliers(x, bad, (2, 3))
    torch.testing.assert_close(fixed[0, 4], x[0, [1, 2, 3, 5]].mean(dim=0))  # 0 is an outlier
    torch.testing.assert_close(fixed[0, 0], x[0, [1, 3]].mean(dim=0))
    keep = [1, 2, 3, 5]
    assert torch.equal(fixed[0, keep], x[0, keep])
    torch.testing.assert_close(fixed[0], ref.scclip_repair(x[0], bad[0], (2, 3)))
    # an outlier whose neighbours are all outliers stays as it is
    ring = torch.ones(1, 9, dtype=torch.bool)
    z = torch.randn(1, 9, 3)
    assert torch.equal(repair_outliers(z, ring, (3, 3)), z)


def test_a_batch_equals_single_images(snapshot):
    model = deep_vit()
    snap = snapshot(model)
    explainer = SCCLIPAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)
    images = images_for(model, b=3, h=48, w=80, seed=7)
    batch = explainer.similarity(images)
    single = torch.cat([explainer.similarity(images[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-5)
    anomalies = explainer.anomalies(images)
    for i in range(3):
        assert torch.equal(anomalies[i : i + 1], explainer.anomalies(images[i : i + 1]))
    snap.assert_unchanged()


def test_scclip_errors_name_the_argument():
    model = tiny_vit()
    kw = dict(texts=TEXTS, templates=FEW_TEMPLATES)
    with pytest.raises(TypeError, match="forward_func: SC-CLIP .* no attention blocks"):
        SCCLIPAttribution(tiny_resnet(), **kw)
    assert "scclip" not in supported_methods(CLIPZeroShotClassifier(tiny_resnet(), TEXTS))
    assert SCCLIPAttribution.unsupported_reason(
        CLIPZeroShotClassifier(model, TEXTS).adapter) is None
    with pytest.raises(ValueError, match=r"pre_adjust_layer: expected an int in \[1, 6\], got 7"):
        SCCLIPAttribution(model, pre_adjust_layer=7, **kw)
    with pytest.raises(ValueError, match="fusion_layers: expected first <= last"):
        SCCLIPAttribution(model, fusion_layers=(4, 2), **kw)
    with pytest.raises(TypeError, match="fusion_layers: expected a pair"):
        SCCLIPAttribution(model, fusion_layers=4, **kw)
    with pytest.raises(ValueError, match=r"contamination: expected a number in \[0, 1\]"):
        SCCLIPAttribution(model, contamination=1.5, **kw)
    with pytest.raises(ValueError, match="lof_neighbors: expected an int >= 1"):
        SCCLIPAttribution(model, lof_neighbors=0, **kw)
    with pytest.raises(ValueError, match="temperature: expected a finite number > 0"):
        SCCLIPAttribution(model, temperature=0.0, **kw)
    with pytest.raises(ValueError, match=r"beta: expected a number in \[0, 1\]"):
        SCCLIPAttribution(model, beta=-0.1, **kw)
