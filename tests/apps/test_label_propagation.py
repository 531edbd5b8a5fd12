r"""LPOSS / LPOSS+ against plain dense re-implementations of the release (the kNN decisions
first), conjugate gradients against a direct solve, kornia's Lab by hand values, the joint
graph over sliding windows against a plain pipeline on timm's own forward, and ``segment``'s
``refine=``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from captum_clip_surgery import (
    CLIPZeroShotClassifier,
    NACLIPAttribution,
    ProxyCLIPAttribution,
    lposs,
    lposs_plus,
    lposs_scores,
    pamr,
    segment,
)
from captum_clip_surgery.adapters import get_backbone
from captum_clip_surgery.apps.label_propagation import conjugate_gradient, rgb_to_lab
from captum_clip_surgery.apps.segmentation import window_spans
from tests import reference_backbones as refb
from tests.adapters import backbones as tiny
from tests.helpers import FEW_TEMPLATES, TEXTS, ModelSnapshot, images_for
from tests.models import tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("k,gamma,sigma,power", [(400, 3.0, 0.01, 1.0), (7, 1.0, 0.2, 2.0)])
def test_lposs_matches_dense_reference(k, gamma, sigma, power):
    g = _gen()
    n = 60
    scores = torch.randn(n, 4, generator=g)
    feats = torch.randn(n, 8, generator=g) + 0.5  # mostly positive cosines
    pos = torch.rand(n, 2, generator=g) * 64
    got = lposs(scores, feats, pos, k=k, gamma=gamma, sigma=sigma, distance_power=power)
    expected, knn = refb.lposs(scores, feats, pos, k=k, gamma=gamma, sigma=sigma, power=power)
    f = F.normalize(feats.double(), dim=-1)
    ours = torch.zeros(n, n, dtype=torch.bool)
    ours.scatter_(1, (f @ f.t()).topk(min(k, n), dim=1).indices, True)
    assert torch.equal(ours, knn)  # the decisions: the kNN sets
    torch.testing.assert_close(got, expected.float(), atol=1e-5, rtol=1e-5)
    assert got.dtype == torch.float32 and got.shape == (n, 4)


@pytest.mark.parametrize("n", [30, 37, 48])  # the column sums fold by 2, 1 and 16 rows
def test_conjugate_gradient_solves_and_stops_like_cupy(n):
    g = _gen(1)
    m = torch.randn(n, n, dtype=torch.float64, generator=g)
    a = m @ m.t() + n * torch.eye(n, dtype=torch.float64)
    b = torch.randn(n, 3, dtype=torch.float64, generator=g)
    b[:, 2] = 0  # a zero column stays zero
    solved = conjugate_gradient(lambda x: a @ x, b, iterations=4 * n, tol=1e-12)
    torch.testing.assert_close(solved[:, :2], torch.linalg.solve(a, b[:, :2]))
    assert torch.equal(solved[:, 2], torch.zeros(n, dtype=torch.float64))
    truncated = conjugate_gradient(lambda x: a @ x, b, iterations=3, tol=1e-6)
    torch.testing.assert_close(truncated, refb.conjugate_gradient(a, b, 3, 1e-6))
    # a column that has converged stops (CuPy's per-call loop): the identity converges at once
    eye = conjugate_gradient(lambda x: x, b, iterations=10, tol=1e-6)
    torch.testing.assert_close(eye, b)


def test_rgb_to_lab_hand_values():
    px = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    lab = rgb_to_lab(px.t().reshape(3, 4, 1))[..., 0].t()
    # white (kornia's matrix rows miss the D65 white by ~1e-5: a and b ~5e-3 off zero)
    torch.testing.assert_close(lab[0], torch.tensor([100.0, 0.0, 0.0]), atol=1e-2, rtol=0)
    torch.testing.assert_close(lab[1], torch.tensor([0.0, 0.0, 0.0]), atol=1e-4, rtol=0)
    # sRGB red with the sRGB/D65 matrices: L 53.24, a 80.09, b 67.20
    torch.testing.assert_close(lab[2], torch.tensor([53.24, 80.09, 67.20]), atol=5e-3, rtol=0)
    torch.testing.assert_close(lab[3, 0], torch.tensor(53.39), atol=0.02, rtol=0)  # mid grey
    img = torch.rand(3, 5, 6, generator=_gen(2))
    torch.testing.assert_close(rgb_to_lab(img), refb.rgb_to_lab(img), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("radius,size", [(6, (9, 10)), (2, (7, 11))])
def test_lposs_plus_matches_dense_reference(radius, size):
    g = _gen(3)
    rgb = torch.rand(2, 3, *size, generator=g)
    rgb[:, :, :4] = 0.3 + 0.01 * rgb[:, :, :4]  # a flat region: strong edges inside it
    scores = torch.randn(2, 3, 4, 5, generator=g)
    got = lposs_plus(rgb, scores, radius=radius)
    up = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
    expected = torch.stack([refb.lposs_plus(rgb[b], up[b], radius=radius) for b in range(2)])
    # float32 here (log-domain weights), float64 in the reference
    torch.testing.assert_close(got, expected.float(), atol=1e-4, rtol=5e-5)
    assert got.shape == (2, 3, *size)


def _timm_values(model, images):
    r"""The last block's values of the grid tokens, heads concatenated, from timm's modules."""
    x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
    for blk in model.blocks[:-1]:
        x = blk(x)
    last = model.blocks[-1]
    v = last.attn.qkv(last.norm1(x)).chunk(3, dim=-1)[2]
    return v[:, model.num_prefix_tokens:]


def plain_lposs_scores(explainer, dino, images, window=None, k=50):
    r"""LPOSS's joint graph over the windows of each image written plainly: the explainer's
    crop scores resized to the DINO grid (/4), timm's own values, node positions at the patch
    centres, the dense reference :func:`tests.reference_backbones.lposs`, then each window's
    part upsampled and averaged on the canvas."""
    b_, _, h_img, w_img = images.shape
    texts = explainer.classifier.texts
    spans = [((0, h_img), (0, w_img))] if window is None else [
        (ys, xs) for ys in window_spans(h_img, *window) for xs in window_spans(w_img, *window)]
    expected = torch.zeros(b_, len(texts), h_img, w_img)
    count = torch.zeros(h_img, w_img)
    for (y0, y1), (x0, x1) in spans:
        count[y0:y1, x0:x1] += 1
    for b in range(b_):
        ys, fs, ps = [], [], []
        for (y0, y1), (x0, x1) in spans:
            crop = images[b : b + 1, :, y0:y1, x0:x1]
            s = explainer.similarity(crop)  # CLIP grid /8 -> DINO grid /4
            h, w = crop.shape[-2] // 4, crop.shape[-1] // 4
            s = F.interpolate(s, size=(h, w), mode="bilinear", align_corners=False)
            ys.append(s[0].reshape(len(texts), -1).t())
            fs.append(_timm_values(dino, refb.renormalise(crop))[0])
            ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            ps.append(torch.stack([y0 + 2 + 4 * ii.flatten(), x0 + 2 + 4 * jj.flatten()], 1))
        z, _ = refb.lposs(torch.cat(ys), torch.cat(fs), torch.cat(ps).float(), k=k)
        start = 0
        for (y0, y1), (x0, x1) in spans:
            h, w = (y1 - y0) // 4, (x1 - x0) // 4
            part = z[start : start + h * w].t().reshape(1, len(texts), h, w).float()
            start += h * w
            expected[b, :, y0:y1, x0:x1] += F.interpolate(
                part, size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)[0]
    return expected / count


@pytest.mark.parametrize("window", [None, (32, 16)], ids=["whole", "windows"])
def test_lposs_scores_match_plain_pipeline(window):
    model, dino = tiny_vit(), tiny.timm_dino()
    snaps = ModelSnapshot(model), ModelSnapshot(dino)
    backbone = get_backbone(dino, positional_resize="bicubic_antialias")
    explainer = NACLIPAttribution(CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES))
    images = images_for(model, b=2, h=48, w=40)
    with torch.no_grad():
        got = lposs_scores(explainer, images, backbone=backbone, sliding_window=window, k=50)
        expected = plain_lposs_scores(explainer, dino, images, window, k=50)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)
    single = torch.cat([lposs_scores(explainer, images[i : i + 1], backbone=backbone,
                                     sliding_window=window, k=50) for i in range(2)])
    torch.testing.assert_close(got, single, atol=1e-5, rtol=1e-5)
    for snap in snaps:
        snap.assert_unchanged()


def test_segment_refine():
    model = tiny_vit()
    explainer = NACLIPAttribution(CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES))
    images = images_for(model, b=2, h=40, w=24)
    torch.testing.assert_close(segment(explainer, images, refine="pamr"),
                               segment(explainer, images, pamr=True))
    dino = tiny.timm_dino()
    with torch.no_grad():
        scores = lposs_scores(explainer, images, backbone=dino)
        rgb = images * torch.tensor(explainer.adapter.image_std).view(1, 3, 1, 1) + torch.tensor(
            explainer.adapter.image_mean).view(1, 3, 1, 1)
        refined = lposs_plus(rgb, scores)
        small = F.interpolate(refined, size=(20, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(segment(explainer, images, refine="lposs", refine_backbone=dino),
                               scores.argmax(1))
    torch.testing.assert_close(segment(explainer, images, refine="lposs+", refine_backbone=dino,
                                       output_size=(20, 12)), small.argmax(1))
    # the default graph backbone: the explainer's own second backbone, else the model's tower
    proxy = ProxyCLIPAttribution(explainer.classifier, backbone=dino)
    torch.testing.assert_close(segment(proxy, images, refine="lposs"),
                               segment(proxy, images, refine="lposs", refine_backbone=dino))
    with pytest.raises(ValueError, match="refine: expected one of 'pamr', 'lposs', 'lposs\\+'"):
        segment(explainer, images, refine="crf")
    with pytest.raises(ValueError, match="pamr: refine='lposs' replaces PAMR"):
        segment(explainer, images, refine="lposs", pamr=True)
    with pytest.raises(ValueError, match="refine_backbone: only LPOSS uses a graph backbone"):
        segment(explainer, images, refine_backbone=dino)
    with pytest.raises(ValueError, match=r"alpha: expected a number in \[0, 1\), got 1.0"):
        lposs_plus(images, torch.zeros(2, 1, 2, 2), alpha=1.0)
    with pytest.raises(ValueError, match="scores, features, positions: expected"):
        lposs(torch.zeros(3, 2), torch.zeros(4, 2), torch.zeros(4, 2))
    assert pamr is not None
