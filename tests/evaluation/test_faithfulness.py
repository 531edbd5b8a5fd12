r"""Deletion / insertion on a constructed model with a known answer; Captum wrappers."""

from __future__ import annotations

import pytest
import torch

from captum_clip_surgery import CLIPSurgeryAttribution, CLIPZeroShotClassifier
from captum_clip_surgery.evaluation import deletion_insertion, infidelity_score, sensitivity_score
from tests.conftest import FEW_TEMPLATES, TEXTS, images_for
from tests.models import tiny_vit


def _region_model(images):
    r"""Class 0's logit = sum of the red channel over the top-left 2x2 block; class 1 = 0."""
    red = images[:, 0, :2, :2].sum(dim=(1, 2))
    return torch.stack([red, torch.zeros_like(red)], dim=1)


def test_deletion_insertion_known_curves():
    images = torch.zeros(1, 3, 4, 4)
    images[:, 0, :2, :2] = 1.0  # logit 4 for class 0
    good = torch.zeros(1, 1, 4, 4)
    good[..., :2, :2] = torch.tensor([[1.0, 0.9], [0.8, 0.7]])
    bad = 1 - good
    out = deletion_insertion(_region_model, images, good, target=0, steps=4, baseline="zero")
    # steps remove 0, 4, 8, 12, 16 pixels; the first 4 removed are the whole region
    expected_del = torch.sigmoid(torch.tensor([4.0, 0.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(out["deletion_curve"][0], expected_del)
    expected_ins = torch.sigmoid(torch.tensor([0.0, 4.0, 4.0, 4.0, 4.0]))
    torch.testing.assert_close(out["insertion_curve"][0], expected_ins)
    auc = torch.trapezoid(expected_del, torch.linspace(0, 1, 5))
    assert out["deletion_auc"][0].item() == pytest.approx(auc.item())
    worse = deletion_insertion(_region_model, images, bad, target=0, steps=4, baseline="zero")
    assert worse["deletion_auc"][0] > out["deletion_auc"][0]
    assert worse["insertion_auc"][0] < out["insertion_auc"][0]
    # one pixel at a time: steps=16 removes the region in map order 1.0, 0.9, 0.8, 0.7
    fine = deletion_insertion(_region_model, images, good, target=0, steps=16, baseline="zero")
    torch.testing.assert_close(fine["deletion_curve"][0, :5],
                               torch.sigmoid(torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])))


def test_baselines_and_batching():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 8, 8, generator=g)
    maps = torch.rand(3, 1, 8, 8, generator=g)
    a = deletion_insertion(_region_model, images, maps, target=[0, 1, 0], steps=5, baseline="mean")
    b = deletion_insertion(_region_model, images, maps, target=[0, 1, 0], steps=5, baseline="mean",
                           batch_size=4)
    torch.testing.assert_close(a["deletion_curve"], b["deletion_curve"])
    single = deletion_insertion(_region_model, images[1:2], maps[1:2], target=1, steps=5, baseline="mean")
    torch.testing.assert_close(a["insertion_curve"][1:2], single["insertion_curve"])
    blur = deletion_insertion(_region_model, images, maps, target=0, steps=5, baseline="blur")
    torch.testing.assert_close(blur["deletion_curve"][:, 0], blur["insertion_curve"][:, -1])
    with pytest.raises(ValueError, match="baseline: expected 'blur', 'mean', 'zero'"):
        deletion_insertion(_region_model, images, maps, target=0, baseline="noise")
    with pytest.raises(ValueError, match="maps: expected shape"):
        deletion_insertion(_region_model, images, maps[:, :, :4], target=0)


def test_captum_wrappers_on_the_explainer():
    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    explainer = CLIPSurgeryAttribution(clf)
    images = images_for(model, b=2)
    inf = infidelity_score(explainer.attribute, clf, images, target=1, n_perturb_samples=3)
    assert inf.shape == (2,) and torch.isfinite(inf).all()
    sens = sensitivity_score(explainer.attribute, images, target=1, n_perturb_samples=3)
    assert sens.shape == (2,) and (sens >= 0).all()
