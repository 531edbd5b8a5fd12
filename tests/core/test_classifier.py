r"""The zero-shot classifier and the text side."""

from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F

from captum_clip_surgery import DEFAULT_TEMPLATES, SCENE_TEMPLATES, CLIPZeroShotClassifier
from tests import reference as ref
from tests.helpers import FEW_TEMPLATES, TEXTS, images_for
from tests.models import tiny_vit


def test_logits_are_the_unmodified_models(any_model):
    clf = CLIPZeroShotClassifier(any_model, TEXTS, templates=FEW_TEMPLATES)
    images = images_for(any_model, b=3)
    with torch.no_grad():
        img = F.normalize(any_model.encode_image(images), dim=-1)
        txt = ref.text_features(any_model, TEXTS, FEW_TEMPLATES)
        expected = any_model.logit_scale.exp() * img @ txt.t()
    torch.testing.assert_close(clf(images), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(clf.text_features, txt, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(clf.text_features.norm(dim=-1), torch.ones(len(TEXTS)))


def test_default_templates_are_the_releases_85():
    assert len(DEFAULT_TEMPLATES) == 85
    assert len(set(DEFAULT_TEMPLATES)) == 85
    assert DEFAULT_TEMPLATES[-5:] == SCENE_TEMPLATES
    assert "a photo of a {}." in DEFAULT_TEMPLATES
    assert all(t.count("{}") == 1 for t in DEFAULT_TEMPLATES)


def test_default_prompt_ensemble_matches_reference():
    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, ["dog", "cat"])
    with torch.no_grad():
        expected = ref.text_features(model, ["dog", "cat"], list(DEFAULT_TEMPLATES))
    torch.testing.assert_close(clf.text_features, expected, atol=1e-5, rtol=1e-5)


def test_text_cache_encodes_each_text_once():
    model = tiny_vit()
    seen = []

    def tok(texts):
        seen.extend(texts)
        return open_clip.tokenize(texts, model.context_length)

    clf = CLIPZeroShotClassifier(model, ["dog", "cat"], templates=FEW_TEMPLATES, tokenizer=tok)
    _ = clf.text_features
    _ = clf.text_features
    clf.encode_texts(["cat", "tree"])
    assert len(seen) == 3 * len(FEW_TEMPLATES)
    assert len(clf.text_cache) == 3


def test_classifier_does_not_own_the_model():
    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, ["dog"], templates=FEW_TEMPLATES)
    assert len(list(clf.parameters())) == 0
    clf.train()
    assert not model.training
    clf.to(torch.float64)
    assert model.visual.conv1.weight.dtype == torch.float32


def test_train_mode_model_is_explained_with_inference_behaviour(snapshot):
    model = tiny_vit(patch_dropout=0.5).train()
    snap = snapshot(model)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    images = images_for(model)
    a, b = clf(images), clf(images)
    torch.testing.assert_close(a, b)  # no dropout: deterministic
    snap.assert_unchanged()
    assert model.training
