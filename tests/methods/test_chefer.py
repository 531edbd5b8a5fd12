r"""Chefer relevance equals a plain per-image, per-head loop."""

from __future__ import annotations

import pytest
import torch

from captum_clip_surgery import CLIPAttentionRelevance, CLIPZeroShotClassifier
from tests import reference as ref
from tests.helpers import FEW_TEMPLATES, TEXTS, images_for
from tests.models import tiny_resnet, tiny_vit


@pytest.mark.parametrize("block_type", ["default", "custom"])
def test_relevance_matches_plain_loop(block_type, snapshot):
    model = tiny_vit(block_type)
    snap = snapshot(model)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    explainer = CLIPAttentionRelevance(clf)
    images = images_for(model, b=3)
    targets = [0, 2, 3]
    got = explainer.relevance(images, target=targets)
    e = clf.text_features
    for i, t in enumerate(targets):
        expected = ref.chefer_relevance(model, images[i : i + 1], e[t])
        torch.testing.assert_close(got[i, 0], expected, atol=1e-5, rtol=1e-4)
    maps = explainer.attribute(images, target=targets)
    assert maps.shape == (3, 1, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    snap.assert_unchanged()


def test_relevance_target_forms_and_no_grad():
    model = tiny_vit()
    explainer = CLIPAttentionRelevance(CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES))
    images = images_for(model, b=2)
    a = explainer.attribute(images, target=1)
    with torch.no_grad():
        torch.testing.assert_close(explainer.attribute(images, target="cat"), a)
    with torch.inference_mode():
        torch.testing.assert_close(explainer.attribute(images, target=torch.tensor([1, 1])), a)


def test_relevance_needs_a_vit():
    clf = CLIPZeroShotClassifier(tiny_resnet(), TEXTS, templates=FEW_TEMPLATES)
    with pytest.raises(TypeError, match="needs attention blocks and a class-token head"):
        CLIPAttentionRelevance(clf)
    with pytest.raises(ValueError, match="texts: required when a model"):
        CLIPAttentionRelevance(tiny_vit())


def test_bare_model_equals_classifier(snapshot):
    model = tiny_vit()
    snap = snapshot(model)
    images = images_for(model, b=2)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    bare = CLIPAttentionRelevance(model, texts=TEXTS, templates=FEW_TEMPLATES)
    torch.testing.assert_close(bare.attribute(images, target=[0, 3]),
                               CLIPAttentionRelevance(clf).attribute(images, target=[0, 3]))
    with pytest.raises(ValueError, match="texts: give texts, templates and tokenizer"):
        CLIPAttentionRelevance(clf, texts=TEXTS)
    snap.assert_unchanged()
