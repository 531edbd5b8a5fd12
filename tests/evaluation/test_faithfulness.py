r"""Deletion / insertion on constructed models with known answers; Captum wrappers."""

from __future__ import annotations

import pytest
import torch

from captum_clip_surgery import CLIPSurgeryAttribution, CLIPZeroShotClassifier
from captum_clip_surgery.evaluation import deletion_insertion, infidelity_score, sensitivity_score
from tests.helpers import FEW_TEMPLATES, TEXTS, images_for
from tests.models import tiny_vit


def _region_model(images):
    r"""Class 0's logit = sum of the red channel over the top-left 2x2 block; class 1 = 0."""
    red = images[:, 0, :2, :2].sum(dim=(1, 2))
    return torch.stack([red, torch.zeros_like(red)], dim=1)


def _sum_model(images):
    r"""Class 0's logit = sum of the red channel over the image; class 1 = 0."""
    red = images[:, 0].sum(dim=(1, 2))
    return torch.stack([red, torch.zeros_like(red)], dim=1)


def test_deletion_insertion_known_curves():
    images = torch.zeros(1, 3, 4, 4)
    images[:, 0, :2, :2] = 1.0  # logit 4 for class 0
    good = torch.zeros(1, 1, 4, 4)
    good[..., :2, :2] = torch.tensor([[1.0, 0.9], [0.8, 0.7]])
    bad = 1 - good
    out = deletion_insertion(_region_model, images, good, target=0, steps=4, baseline="zero")
    assert out["deletion_curve"].shape == (1, 5) and out["deletion_auc"].shape == (1,)
    torch.testing.assert_close(out["fractions"], torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    # steps remove 0, 4, 8, 12, 16 pixels; the first 4 removed are the whole region
    expected_del = torch.sigmoid(torch.tensor([4.0, 0.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(out["deletion_curve"][0], expected_del)
    expected_ins = torch.sigmoid(torch.tensor([0.0, 4.0, 4.0, 4.0, 4.0]))
    torch.testing.assert_close(out["insertion_curve"][0], expected_ins)
    # trapezoid by hand: 0.25 * (p0 / 2 + p1 + p2 + p3 + p4 / 2)
    s4, s0 = torch.sigmoid(torch.tensor(4.0)).item(), 0.5
    assert out["deletion_auc"][0].item() == pytest.approx(0.25 * (s4 / 2 + 3 * s0 + s0 / 2))
    assert out["insertion_auc"][0].item() == pytest.approx(0.25 * (s0 / 2 + 3 * s4 + s4 / 2))
    # the inverted map removes the region last: deletion falls slower, insertion rises slower
    worse = deletion_insertion(_region_model, images, bad, target=0, steps=4, baseline="zero")
    torch.testing.assert_close(worse["deletion_curve"][0],
                               torch.sigmoid(torch.tensor([4.0, 4.0, 4.0, 4.0, 0.0])))
    assert worse["deletion_auc"][0] > out["deletion_auc"][0]
    assert worse["insertion_auc"][0] < out["insertion_auc"][0]
    # one pixel at a time: steps=16 removes the region in map order 1.0, 0.9, 0.8, 0.7
    fine = deletion_insertion(_region_model, images, good, target=0, steps=16, baseline="zero")
    torch.testing.assert_close(fine["deletion_curve"][0, :6],
                               torch.sigmoid(torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0, 0.0])))
    torch.testing.assert_close(fine["insertion_curve"][0, :6],
                               torch.sigmoid(torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 4.0])))
    # target 1 (constant logit 0): the complement of class 0's probability
    other = deletion_insertion(_region_model, images, good, target=1, steps=4, baseline="zero")
    torch.testing.assert_close(other["deletion_curve"], 1 - out["deletion_curve"])


def test_ties_keep_row_major_order():
    images = torch.zeros(1, 3, 4, 4)
    images[:, 0, :2, :2] = 1.0
    flat = torch.full((1, 1, 4, 4), 0.5)  # all tied: removal in row-major order
    out = deletion_insertion(_region_model, images, flat, target=0, steps=16, baseline="zero")
    # removed pixels: (0,0), (0,1), (0,2), (0,3), (1,0), (1,1), ...
    logits = torch.tensor([4.0, 3.0, 2.0, 2.0, 2.0, 1.0, 0.0, 0.0])
    torch.testing.assert_close(out["deletion_curve"][0, :8], torch.sigmoid(logits))


def test_pixel_counts_are_rounded():
    images = torch.zeros(1, 3, 4, 4)
    images[:, 0] = 1.0  # logit 16
    maps = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    # steps=3: round(16 / 3 * s) = 0, 5, 11, 16 pixels removed
    out = deletion_insertion(_sum_model, images, maps, target=0, steps=3, baseline="zero")
    torch.testing.assert_close(out["deletion_curve"][0],
                               torch.sigmoid(torch.tensor([16.0, 11.0, 5.0, 0.0])))
    torch.testing.assert_close(out["insertion_curve"][0],
                               torch.sigmoid(torch.tensor([0.0, 5.0, 11.0, 16.0])))
    # 2x2 image, steps=8: s / 2 pixels, halves rounded to even: 0, 0, 1, 2, 2, 2, 3, 4, 4
    small = deletion_insertion(_sum_model, images[..., :2, :2], maps[..., :2, :2], target=0,
                               steps=8, baseline="zero")
    removed = torch.tensor([0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 3.0, 4.0, 4.0])
    torch.testing.assert_close(small["deletion_curve"][0], torch.sigmoid(4.0 - removed))


def test_baselines_and_batching():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 8, 8, generator=g)
    maps = torch.rand(3, 1, 8, 8, generator=g)
    a = deletion_insertion(_region_model, images, maps, target=[0, 1, 0], steps=5, baseline="mean")
    for bs in (1, 4, 100):
        b = deletion_insertion(_region_model, images, maps, target=[0, 1, 0], steps=5,
                               baseline="mean", batch_size=bs)
        torch.testing.assert_close(a["deletion_curve"], b["deletion_curve"])
        torch.testing.assert_close(a["insertion_curve"], b["insertion_curve"])
    single = deletion_insertion(_region_model, images[1:2], maps[1:2], target=1, steps=5,
                                baseline="mean")
    torch.testing.assert_close(a["insertion_curve"][1:2], single["insertion_curve"])
    as_tensor = deletion_insertion(_region_model, images, maps[:, 0],
                                   target=torch.tensor([0, 1, 0]), steps=5, baseline="mean")
    torch.testing.assert_close(a["deletion_auc"], as_tensor["deletion_auc"])
    # the curves start / end at the image's and the baseline's scores
    full = torch.softmax(_region_model(images), -1)[:, 0]
    mean_img = images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    base = torch.softmax(_region_model(mean_img), -1)[:, 0]
    c = deletion_insertion(_region_model, images, maps, target=0, steps=5, baseline="mean")
    torch.testing.assert_close(c["deletion_curve"][:, 0], full)
    torch.testing.assert_close(c["deletion_curve"][:, -1], base)
    torch.testing.assert_close(c["insertion_curve"][:, 0], base)
    torch.testing.assert_close(c["insertion_curve"][:, -1], full)
    # blur: the gaussian blur of torchvision, kernel 11, sigma 5
    from torchvision.transforms.functional import gaussian_blur

    blur = deletion_insertion(_region_model, images, maps, target=0, steps=5, baseline="blur")
    blurred = gaussian_blur(images, kernel_size=[11, 11], sigma=[5.0, 5.0])
    torch.testing.assert_close(blur["deletion_curve"][:, -1],
                               torch.softmax(_region_model(blurred), -1)[:, 0])
    torch.testing.assert_close(blur["deletion_curve"][:, 0], blur["insertion_curve"][:, -1])
    # tensor baselines: [3, H, W] for all, or [B, 3, H, W]
    zero = deletion_insertion(_region_model, images, maps, target=0, steps=5, baseline="zero")
    for t in (torch.zeros(3, 8, 8), torch.zeros(3, 3, 8, 8)):
        other = deletion_insertion(_region_model, images, maps, target=0, steps=5, baseline=t)
        torch.testing.assert_close(other["insertion_curve"], zero["insertion_curve"])


def test_bad_arguments():
    images = torch.rand(2, 3, 8, 8)
    maps = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="baseline: expected 'blur', 'mean', 'zero'"):
        deletion_insertion(_region_model, images, maps, target=0, baseline="noise")
    with pytest.raises(ValueError, match="baseline: expected a tensor"):
        deletion_insertion(_region_model, images, maps, target=0, baseline=torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="baseline: 'blur'.*needs images of at least 6 x 6"):
        deletion_insertion(_region_model, images[..., :4, :4], maps[..., :4, :4], target=0)
    with pytest.raises(ValueError, match="maps: expected shape"):
        deletion_insertion(_region_model, images, maps[:, :, :4], target=0)
    with pytest.raises(ValueError, match="maps: expected no NaN"):
        deletion_insertion(_region_model, images, maps * float("nan"), target=0)
    with pytest.raises(ValueError, match=r"target: expected one class index per image \(2\)"):
        deletion_insertion(_region_model, images, maps, target=[0, 1, 0])
    with pytest.raises(TypeError, match="target: expected an integer tensor"):
        deletion_insertion(_region_model, images, maps, target=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="target: expected class indices < 2"):
        deletion_insertion(_region_model, images, maps, target=2, baseline="zero")
    with pytest.raises(ValueError, match="steps: expected an int >= 1, got 0"):
        deletion_insertion(_region_model, images, maps, target=0, steps=0)
    with pytest.raises(ValueError, match="batch_size: expected an int >= 1"):
        deletion_insertion(_region_model, images, maps, target=0, batch_size=0)
    with pytest.raises(TypeError, match="images: expected a floating-point tensor"):
        deletion_insertion(_region_model, images.long(), maps, target=0)
    with pytest.raises(ValueError, match=r"forward_func: expected logits \[N, T\]"):
        deletion_insertion(lambda x: x.sum(dim=(1, 2, 3)), images, maps, target=0,
                           baseline="zero")


def _linear_model(weight):
    def forward(images):
        logit = (images * weight).sum(dim=(1, 2, 3))
        return torch.stack([logit, torch.zeros_like(logit)], dim=1)

    return forward


def test_infidelity_known_answers():
    torch.manual_seed(0)
    weight = torch.rand(1, 1, 6, 6)
    images = torch.rand(2, 3, 6, 6)
    # for a linear logit the exact attribution is its weight: infidelity 0 (a 1-channel map,
    # expanded over the input's channels)
    exact = infidelity_score(lambda x, target: weight.expand(len(x), 1, 6, 6),
                             _linear_model(weight), images, target=0, n_perturb_samples=4)
    assert exact.shape == (2,)
    torch.testing.assert_close(exact, torch.zeros(2), atol=1e-9, rtol=0)
    # a zero attribution misses the whole change: E[(noise . w)^2] = std^2 * 3 * |w|^2
    zero = infidelity_score(lambda x, target: torch.zeros_like(x), _linear_model(weight),
                            images, target=0, n_perturb_samples=2000, noise_std=0.01)
    expected = 0.01**2 * 3 * weight.pow(2).sum()
    torch.testing.assert_close(zero, expected.expand(2), rtol=0.15, atol=0)
    with pytest.raises(ValueError, match=r"attribution_fn: expected attributions \[2, 1, 6, 6\]"):
        infidelity_score(lambda x, target: x[:, :2], _linear_model(weight), images, target=0)
    with pytest.raises(ValueError, match="noise_std: expected a finite number > 0"):
        infidelity_score(lambda x, target: x, _linear_model(weight), images, 0, noise_std=0)


def test_sensitivity_known_answers():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 6, 6) + 1
    constant = sensitivity_score(lambda x, target: torch.ones_like(x), images, target=0,
                                 n_perturb_samples=3)
    torch.testing.assert_close(constant, torch.zeros(2))
    # explanation = 2 x: sensitivity = max ||delta|| / ||x|| <= radius * sqrt(numel) / ||x||
    scaled = sensitivity_score(lambda x, target: 2 * x, images, target=[0, 1],
                               n_perturb_samples=5, perturb_radius=0.02)
    bound = 0.02 * (3 * 6 * 6) ** 0.5 / images.flatten(1).norm(dim=1)
    assert scaled.shape == (2,) and (scaled > 0).all() and (scaled <= bound + 1e-6).all()


def test_captum_wrappers_on_the_explainer():
    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    explainer = CLIPSurgeryAttribution(clf)
    images = images_for(model, b=2)
    inf = infidelity_score(explainer.attribute, clf, images, target=1, n_perturb_samples=3)
    assert inf.shape == (2,) and torch.isfinite(inf).all()
    sens = sensitivity_score(explainer.attribute, images, target=[1, 2], n_perturb_samples=3)
    assert sens.shape == (2,) and (sens >= 0).all()
    maps = explainer.attribute(images, target=1)
    out = deletion_insertion(clf, images, maps, target=1, steps=4, baseline="mean",
                             batch_size=20)  # all 2 x 2 x 5 perturbed images in one forward
    assert out["deletion_curve"].shape == (2, 5)
    assert ((out["deletion_curve"] >= 0) & (out["deletion_curve"] <= 1)).all()


def test_normalized_infidelity_ignores_the_scale_of_the_map():
    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    explainer = CLIPSurgeryAttribution(clf)
    images = images_for(model, b=2)

    def scaled(factor):
        return lambda x, target: factor * explainer.attribute(x, target=target)

    results = {}
    for factor in (1.0, 7.0):
        for normalize in (False, True):
            torch.manual_seed(0)
            results[factor, normalize] = infidelity_score(
                scaled(factor), clf, images, target=1, n_perturb_samples=4, normalize=normalize)
    assert torch.allclose(results[1.0, True], results[7.0, True], rtol=1e-4, atol=1e-9)
    assert not torch.allclose(results[1.0, False], results[7.0, False], rtol=1e-2)
