r"""CASS equals its plain formula (the Hungarian matching first, then the maps where it
agrees) at a native and a non-native non-square size with a DINO-shaped backbone on a finer
grid; the object-presence text side; its reductions; the whole image's global scores under
sliding windows; a batch equals per-image calls; the model and the backbone never change."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from captum_clip_surgery import (
    CASS_SETTINGS,
    TRAINING_FREE_METHODS,
    CASSAttribution,
    CLIPZeroShotClassifier,
    build_method,
    sliding_window_scores,
)
from captum_clip_surgery.adapters import CLIPTowerBackbone, get_backbone
from captum_clip_surgery.methods.cass import adjust_text_features, text_clusters
from tests import reference as ref
from tests import reference_backbones as refb
from tests.adapters import backbones as tiny
from tests.helpers import FEW_TEMPLATES, TEXTS, ModelSnapshot, images_for
from tests.models import tiny_resnet, tiny_vit

pytest.importorskip("scipy")
pytestmark = pytest.mark.usefixtures("one_thread")


def _dino():
    r"""DINO-shaped, 48 wide in 3 heads of 16: the key layout of CLIP's (as ViT-B and ViT-B/8)."""
    return tiny.timm_dino(embed_dim=48)


def _timm_last_keys(model, images):
    r"""The last block's keys of the grid tokens, heads concatenated, from timm's own modules."""
    x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
    for blk in model.blocks[:-1]:
        x = blk(x)
    last = model.blocks[-1]
    k = last.attn.qkv(last.norm1(x)).chunk(3, dim=-1)[1]
    return k[:, model.num_prefix_tokens:]


def _explainer(model, backbone, **kwargs):
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    return CASSAttribution(clf, backbone=backbone, **kwargs)


@pytest.mark.parametrize("size", [(32, 32), (40, 24)], ids=["native", "non-native"])
@pytest.mark.parametrize("options", [
    {}, dict(eigen_scaling=False, rank=3, k_eigen=5, scale_factor=2.0, sigma=1.5),
], ids=["defaults", "options"])
def test_cass_tokens_match_formula(size, options):
    model, dino = tiny_vit(), _dino()
    snaps = ModelSnapshot(model), ModelSnapshot(dino)
    backbone = get_backbone(dino, positional_resize="bicubic_antialias")  # timm's own rule
    explainer = _explainer(model, backbone, **options)
    images = images_for(model, b=2, h=size[0], w=size[1])
    args = dict(scale_factor=options.get("scale_factor", 10.0), k_eigen=options.get("k_eigen", 20),
                rank=options.get("rank", 10), eigen_scaling=options.get("eigen_scaling", True),
                sigma=options.get("sigma", 5.0))
    with torch.no_grad():
        got, grid = explainer.token_features(images)
        keys = _timm_last_keys(dino, refb.renormalise(images))
        dino_grid = (size[0] // 4, size[1] // 4)
        expected, matching, cost = refb.cass_tokens(model, images, keys, dino_grid, **args)
        got_matching = explainer.head_matching(images)
    assert grid == (size[0] // 8, size[1] // 8)  # CLIP's grid: the keys come to it
    # decisions first: the matching is the reference's, or a tie of equal total cost (the
    # tiny heads' short spectra tie); the maps are then compared under the same matching
    heads = torch.arange(cost.shape[1])
    for b in range(2):
        ours = cost[b, heads, got_matching[b]].sum()
        best = cost[b, heads, matching[b]].sum()
        assert torch.equal(got_matching[b], matching[b]) or abs(float(ours - best)) < 1e-9
    with torch.no_grad():
        expected, _, _ = refb.cass_tokens(model, images, keys, dino_grid, **args,
                                          matching=got_matching)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)
    for snap in snaps:
        snap.assert_unchanged()


def test_cass_reductions():
    model = tiny_vit()
    images = images_for(model, b=2, h=40, w=24)
    # scale_factor 0: G = CLIP's own key graph, P = softmax(kkᵀ/√d + Ω) over the grid tokens
    explainer = _explainer(model, _dino(), scale_factor=0.0)
    x, q, k, v, grid, pooled = refb._clip_last_block_inputs(model, images)
    last = model.visual.transformer.resblocks[-1]
    with torch.no_grad():
        got, _ = explainer.token_features(images)
        kp, vp = k[:, 1:], v[:, 1:]
        omega = ref.naclip_omega(grid, 5.0)[1:, 1:]
        probs = ref._probs(kp, kp, kp.shape[-1] ** -0.5, omega)
        expected = ref._head(model, ref._out(last, ref._mix(probs, vp)))
    torch.testing.assert_close(got[:, 1:], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[:, 0], pooled[:, 0], atol=1e-5, rtol=1e-5)
    # no object presence (w = α = 0): the plain cosine of the token features
    plain = _explainer(model, _dino(), global_semantics_weight=0.0, mean_vector_weight=0.0)
    with torch.no_grad():
        feats, (h, w) = plain.token_features(images)
        text = plain.classifier.encode_texts(TEXTS)
        cos = F.normalize(feats, dim=-1)[:, 1:] @ text.t()
        sim = plain.similarity(images)
    torch.testing.assert_close(sim, cos.transpose(1, 2).reshape(2, len(TEXTS), h, w),
                               atol=1e-6, rtol=1e-5)


def _clusters_plain(text, threshold):
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    d = (1 - text.double() @ text.double().t()).clamp(0, 2).numpy()
    d = (d + d.T) / 2
    d[range(len(d)), range(len(d))] = 0
    return list(fcluster(linkage(squareform(d), method="ward"), t=threshold,
                         criterion="distance") - 1)


@pytest.mark.parametrize("settings", ["context59", "voc21"])
def test_cass_text_side_matches_release(settings):
    model = tiny_vit()
    options = CASS_SETTINGS[settings]
    explainer = _explainer(model, _dino(), **options)
    images = images_for(model, b=2, h=40, w=24)
    with torch.no_grad():
        feats, (h, w) = explainer.token_features(images)
        f = F.normalize(feats, dim=-1)
        text = explainer.classifier.encode_texts(TEXTS)
        clusters = _clusters_plain(text, options["h_threshold"])
        expected = torch.stack([
            refb.cass_text_logits(f[b, 1:], f[b, 0] @ text.t(), text, clusters,
                                  options["mean_vector_weight"],
                                  options["global_semantics_weight"])
            for b in range(2)
        ])
        sim = explainer.similarity(images)
    assert explainer.clusters(TEXTS) == clusters
    torch.testing.assert_close(sim, expected.transpose(1, 2).reshape(2, len(TEXTS), h, w),
                               atol=1e-6, rtol=1e-5)


def test_text_clusters_and_adjustment_by_hand():
    e = torch.eye(3)
    assert text_clusters(e[[0, 0, 1]], 0.1) == [0, 0, 1]
    assert text_clusters(e, 0.0) == [0, 1, 2]
    assert sorted(set(text_clusters(e, 5.0))) == [0]
    assert text_clusters(e[:1], 0.1) == [0]
    # one cluster of texts 0 and 1; text 1 has the higher global score and moves toward the
    # mean of its two most similar patches; text 0 and the other cluster's text 2 stay
    patches = F.normalize(torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.2], [1.0, 0.0, 0.5]]), dim=1)
    adjusted = adjust_text_features(patches, torch.tensor([0.1, 0.5, 0.9]), e, [0, 0, 1], 0.5)
    m = F.normalize(patches[[0, 1]].mean(0), dim=0)  # text 1's two most similar patches
    torch.testing.assert_close(adjusted[1], F.normalize(0.5 * e[1] + 0.5 * m, dim=0))
    torch.testing.assert_close(adjusted[0], e[0])
    m = F.normalize(patches[[2, 1]].mean(0), dim=0)  # text 2's
    torch.testing.assert_close(adjusted[2], F.normalize(0.5 * e[2] + 0.5 * m, dim=0))


def test_cass_windows_use_the_whole_image():
    model = tiny_vit()
    explainer = _explainer(model, None, global_semantics_weight=1.0)  # scores = g alone
    assert isinstance(explainer.backbone, CLIPTowerBackbone)
    images = images_for(model, b=2, h=48, w=40)
    with torch.no_grad():
        scores = sliding_window_scores(explainer, images, crop=32, stride=16)
        whole = F.normalize(explainer.token_features(images)[0][:, 0], dim=-1)
        g = whole @ explainer.classifier.encode_texts(TEXTS).t()
    torch.testing.assert_close(scores, g[:, :, None, None].expand_as(scores), atol=1e-5,
                               rtol=1e-5)
    with torch.no_grad():  # outside the windows, each input's own embedding
        crop = explainer.similarity(images[:, :, :32, :32])
        own = F.normalize(explainer.token_features(images[:, :, :32, :32])[0][:, 0], dim=-1)
    torch.testing.assert_close(crop[:, :, 0, 0], own @ explainer.classifier.encode_texts(TEXTS).t(),
                               atol=1e-5, rtol=1e-5)


def test_cass_batch_equals_single_and_nothing_changes():
    model, dino = tiny_vit(), tiny.hf_dinov2(registers=2)  # 24 wide: 3 groups of 8 channels
    snaps = ModelSnapshot(model), ModelSnapshot(dino)
    explainer = _explainer(model, dino)
    images = images_for(model, b=3, h=36, w=20, seed=1)
    with torch.no_grad():
        sim = explainer.similarity(images)
        single = torch.cat([explainer.similarity(images[i : i + 1]) for i in range(3)])
        again = explainer.similarity(images)
        maps = explainer.attribute(images, target=[0, "grass", 3])
    assert sim.shape == (3, len(TEXTS), 5, 3)
    torch.testing.assert_close(sim, single, atol=1e-5, rtol=1e-5)
    assert torch.equal(sim, again)  # deterministic: an exact SVD, no random projection
    assert maps.shape == (3, 1, 36, 20)
    x = images.clone().requires_grad_(True)  # gradients reach inputs that ask for them
    (grad,) = torch.autograd.grad(explainer.similarity(x).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    for snap in snaps:
        snap.assert_unchanged()


def test_cass_registry_and_errors():
    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    assert "cass" in TRAINING_FREE_METHODS
    assert isinstance(build_method("cass", clf), CASSAttribution)
    assert set(CASS_SETTINGS) == {"voc20", "context59", "coco_object", "ade20k", "voc21",
                                  "context60", "coco_stuff164k", "city_scapes"}
    with pytest.raises(ValueError, match="global_semantics_weight: expected a number in"):
        CASSAttribution(clf, global_semantics_weight=1.5)
    with pytest.raises(ValueError, match="k_eigen: expected an int >= 1, got 0"):
        CASSAttribution(clf, k_eigen=0)
    with pytest.raises(TypeError, match="eigen_scaling: expected True or False"):
        CASSAttribution(clf, eigen_scaling=1)
    with pytest.raises(ValueError, match="backbone: its keys are 20 wide"):
        CASSAttribution(clf, backbone=tiny.timm_dino(embed_dim=20, num_heads=2))
    with pytest.raises(TypeError, match="forward_func: CASS .* no attention blocks"):
        CASSAttribution(tiny_resnet(), texts=TEXTS)
