r"""Multi-label scores (feature surgery on the class feature) and the existence gate."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from captum_clip_surgery import (
    CLIPSimilarityMap,
    CLIPSurgeryAttribution,
    CLIPZeroShotClassifier,
    MaskCLIPAttribution,
    multilabel_scores,
    text_presence,
)
from tests import reference as ref
from tests.helpers import FEW_TEMPLATES, TEXTS, images_for, scene_batch
from tests.models import tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")


def _elementwise(f: torch.Tensor, e: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    r"""``docs/method.md`` §6 element-wise class-set form with ``f_cls`` as the only feature: ``[B, T]``."""
    p = torch.softmax(temperature * f @ e.t(), dim=-1)
    w = p / p.mean(dim=-1, keepdim=True)
    m = f[:, None, :] * e[None, :, :] * w[:, :, None]  # [B, T, C]
    r = m.mean(dim=1, keepdim=True)
    return (m - r).sum(dim=-1)


def test_scores_equal_the_elementwise_formula(any_model):
    images = images_for(any_model, b=3)
    clf = CLIPZeroShotClassifier(any_model, TEXTS, templates=FEW_TEMPLATES)
    with torch.no_grad():
        f = F.normalize(any_model.encode_image(images), dim=-1)
        e = ref.text_features(any_model, TEXTS, FEW_TEMPLATES)
        r = ref.text_features(any_model, [""], FEW_TEMPLATES)[0]
    scores = multilabel_scores(clf, images)
    assert scores.shape == (3, len(TEXTS)) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, _elementwise(f, e), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scores.sum(dim=-1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(multilabel_scores(clf, images, temperature=5.0),
                               _elementwise(f, e, 5.0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(multilabel_scores(clf, images, feature_surgery="none"),
                               f @ e.t(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(multilabel_scores(clf, images, feature_surgery="empty"),
                               f @ (e - r).t(), atol=1e-5, rtol=1e-4)


def test_the_class_feature_is_the_same_for_every_explainer():
    model = tiny_vit()
    images = images_for(model, b=2)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    expected = multilabel_scores(clf, images)
    for cls in (CLIPSurgeryAttribution, CLIPSimilarityMap, MaskCLIPAttribution):
        torch.testing.assert_close(multilabel_scores(cls(clf), images), expected)
    # the dual path's class token is the same feature (docs/method.md §3)
    with torch.no_grad():
        tokens, _ = CLIPSurgeryAttribution(clf).token_features(images)
        e = clf.text_features
    torch.testing.assert_close(expected, _elementwise(F.normalize(tokens[:, 0], dim=-1), e),
                               atol=1e-5, rtol=1e-4)
    # texts per call
    other = ["tree", "sky", "dog"]
    torch.testing.assert_close(
        multilabel_scores(clf, images, texts=other),
        multilabel_scores(CLIPZeroShotClassifier(model, other, templates=FEW_TEMPLATES), images),
    )


def test_batch_equals_per_image_calls(any_model):
    images = images_for(any_model, b=3, seed=5)
    clf = CLIPZeroShotClassifier(any_model, TEXTS, templates=FEW_TEMPLATES)
    single = torch.cat([multilabel_scores(clf, images[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(multilabel_scores(clf, images), single, atol=1e-5, rtol=1e-4)
    presence = torch.cat([text_presence(clf, images[i : i + 1], threshold=0.3) for i in range(3)])
    assert torch.equal(text_presence(clf, images, threshold=0.3), presence)


def test_presence_is_the_thresholded_softmax():
    model = tiny_vit()
    images = images_for(model, b=4, seed=6)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    with torch.no_grad():
        f = F.normalize(model.encode_image(images), dim=-1)
        e = ref.text_features(model, TEXTS, FEW_TEMPLATES)
        probs = torch.softmax(model.logit_scale.exp() * f @ e.t(), dim=-1)
    for threshold in (0.1, 0.26, 0.5):
        assert torch.equal(text_presence(clf, images, threshold=threshold), probs >= threshold)
    default = text_presence(clf, images)
    assert default.dtype == torch.bool and default.shape == (4, len(TEXTS))
    assert torch.equal(default, probs >= 1 / len(TEXTS))
    assert default.any(dim=-1).all()  # some text is always at least as likely as uniform
    assert text_presence(clf, images, threshold=0.0).all()


def test_model_is_not_modified(snapshot):
    model = tiny_vit()
    snap = snapshot(model)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    images = images_for(model)
    multilabel_scores(clf, images)
    text_presence(clf, images)
    snap.assert_unchanged()


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda c, x: multilabel_scores(c, x, texts=["dog"]), ValueError,
         "texts: class-set feature surgery needs at least 2 texts"),
        (lambda c, x: multilabel_scores(c, x, texts=[]), ValueError, "texts: expected at least one"),
        (lambda c, x: multilabel_scores(c, x, texts="dog"), TypeError, "texts: expected a list"),
        (lambda c, x: multilabel_scores(c, x, feature_surgery="auto"), ValueError,
         "feature_surgery: expected 'classes', 'empty' or 'none', got 'auto'"),
        (lambda c, x: multilabel_scores(c, x, temperature=0), ValueError, "temperature"),
        (lambda c, x: multilabel_scores(c.model, x), TypeError,
         "classifier: expected a CLIPZeroShotClassifier"),
        (lambda c, x: multilabel_scores(c, x[0]), ValueError, "images: expected a 4-D tensor"),
        (lambda c, x: text_presence(c, x, texts=["dog"]), ValueError, "texts: presence is judged"),
        (lambda c, x: text_presence(c, x, threshold=1.2), ValueError,
         r"threshold: expected a number in \[0, 1\], got 1.2"),
        (lambda c, x: text_presence(c, x, threshold=True), TypeError, "threshold"),
    ],
)
def test_errors_name_the_argument(call, error, match):
    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    with pytest.raises(error, match=match):
        call(clf, images_for(model))


def test_single_text_in_empty_mode():
    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, ["dog"], templates=FEW_TEMPLATES)
    assert multilabel_scores(clf, images_for(model), feature_surgery="empty").shape == (2, 1)


@pytest.fixture(scope="module")
def scenes(scenes_clip: Any) -> Any:
    return scene_batch(scenes_clip, 200, 12)


def test_scenes_present_objects_rank_high_and_the_gate_drops_absent_ones(scenes):
    world, samples, images, clf = scenes
    with torch.no_grad():
        scores = multilabel_scores(clf, images)
        present = text_presence(clf, images)
    hits, absent_flagged, absent_total = [], 0, 0
    for i, sample in enumerate(samples):
        truth = set(sample["objects"]) | {sample["background"]}
        top = [world.class_names[j] for j in scores[i].argsort(descending=True)[: len(truth)]]
        hits.append(len(truth & set(top)) / len(truth))
        for j, name in enumerate(world.class_names):
            if name not in truth:
                absent_total += 1
                absent_flagged += int(present[i, j])
    assert np.mean(hits) >= 0.8, hits
    # the gate judges (almost) every absent class absent
    assert absent_flagged / absent_total <= 0.05


def test_graph_only_towards_inputs_that_ask_for_one():
    from captum_clip_surgery import explain_text_tokens

    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    images = images_for(model, b=2)
    assert not multilabel_scores(clf, images).requires_grad
    assert not text_presence(clf, images).requires_grad
    tokens = explain_text_tokens(clf, images, "a small dog on grass")
    assert not tokens.token_scores.requires_grad and not tokens.caption_score.requires_grad
    x = images.clone().requires_grad_(True)
    scores = multilabel_scores(clf, x)
    assert scores.requires_grad
    (grad,) = torch.autograd.grad(scores[:, 0].sum(), x)
    assert grad.shape == x.shape and bool(grad.abs().sum() > 0)
    tokens = explain_text_tokens(clf, x, "a small dog on grass")
    (grad,) = torch.autograd.grad(tokens.caption_score.sum(), x)
    assert bool(grad.abs().sum() > 0)
    assert all(p.grad is None for p in model.parameters())


def test_sigmoid_models_judge_presence_per_text():
    hosts = pytest.importorskip("tests.adapters.hosts")
    from captum_clip_surgery.apps.multilabel import text_probabilities

    model = hosts.siglip()
    clf = CLIPZeroShotClassifier(model, ["dog", "cat", "grass"], templates=["{}"],
                                 tokenizer=hosts.siglip_tokenizer())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        probs = text_probabilities(clf, images, ["dog", "cat", "grass"])
        expected = torch.sigmoid(clf(images))   # the model's own logits include the bias
    torch.testing.assert_close(probs, expected)
    assert not torch.allclose(probs.sum(-1), torch.ones(2))  # not a softmax over the set
    present = text_presence(clf, images)
    assert torch.equal(present, expected >= 0.5)
    # one text is enough for per-text sigmoid scores
    assert text_presence(clf, images, texts=["dog"]).shape == (2, 1)
