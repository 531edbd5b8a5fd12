r"""Open-vocabulary segmentation: argmax of the upsampled class maps, background, errors."""

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
    segment,
)
from tests import reference as ref
from tests.conftest import FEW_TEMPLATES, TEXTS, images_for, native_size, scene_batch
from tests.models import tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")


METHODS = {
    "surgery": CLIPSurgeryAttribution,
    "raw": CLIPSimilarityMap,
    "maskclip": MaskCLIPAttribution,
}


def _is_resnet(model: torch.nn.Module) -> bool:
    return model.visual.__class__.__name__ == "ModifiedResNet"


def _reference_scores(model, images, method):
    r"""Unnormalised ``[B, T, h, w]`` raw-cosine grids from the plain reference."""
    with torch.no_grad():
        if method == "maskclip":
            tokens = ref.maskclip_tokens(model, images)
        elif _is_resnet(model):
            tokens = ref.resnet_tokens(model, images, method == "surgery")
        else:
            tokens = ref.vit_tokens(model, images, 6 if method == "surgery" else 0)
        f = F.normalize(tokens, dim=-1)
        e = ref.text_features(model, TEXTS, FEW_TEMPLATES)
        s = torch.einsum("bnc,tc->btn", f[:, 1:], e)
    stride = 32 if _is_resnet(model) else 8
    h, w = images.shape[-2] // stride, images.shape[-1] // stride
    return s.reshape(images.shape[0], len(TEXTS), h, w)


def _assert_labels_match(labels, scores, margin=1e-4):
    r"""Labels equal ``scores.argmax(1)`` wherever the best class wins by more than ``margin``."""
    top2 = scores.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > margin
    assert clear.float().mean() > 0.95
    assert torch.equal(labels[clear], scores.argmax(dim=1)[clear])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_labels_are_the_argmax_of_the_upsampled_maps(any_model, method):
    model = any_model
    s = native_size(model)
    images = images_for(model, b=2, h=int(s * 1.5), w=s)
    explainer = METHODS[method](model, texts=TEXTS, templates=FEW_TEMPLATES)
    if method == "surgery" and not _is_resnet(model):
        explainer = CLIPSurgeryAttribution(model, surgery_blocks=6, texts=TEXTS, templates=FEW_TEMPLATES)
    labels = segment(explainer, images)
    assert labels.shape == (2, images.shape[-2], images.shape[-1]) and labels.dtype == torch.long
    expected = F.interpolate(_reference_scores(model, images, method), size=images.shape[-2:],
                             mode="bilinear", align_corners=False)
    _assert_labels_match(labels, expected)
    # another output size: the scores are upsampled to it before the argmax
    other = segment(explainer, images, output_size=(20, 27))
    assert other.shape == (2, 20, 27)
    expected = F.interpolate(_reference_scores(model, images, method), size=(20, 27),
                             mode="bilinear", align_corners=False)
    _assert_labels_match(other, expected)


def test_empty_surgery_keeps_the_labels_and_classes_mode_is_available():
    model = tiny_vit()
    images = images_for(model, b=3, seed=1)
    explainer = CLIPSurgeryAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)
    plain = segment(explainer, images)
    scores = F.interpolate(explainer.similarity(images, feature_surgery="empty"), size=(32, 32),
                           mode="bilinear", align_corners=False)
    _assert_labels_match(plain, scores)
    weighted = segment(explainer, images, feature_surgery="classes")
    scores = F.interpolate(explainer.similarity(images, feature_surgery="classes"), size=(32, 32),
                           mode="bilinear", align_corners=False)
    _assert_labels_match(weighted, scores)


def test_class_names_default_and_per_call():
    model = tiny_vit()
    images = images_for(model)
    explainer = CLIPSurgeryAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)
    assert torch.equal(segment(explainer, images), segment(explainer, images, class_names=TEXTS))
    two = segment(explainer, images, class_names=["dog", "grass"])
    assert set(two.unique().tolist()) <= {0, 1}


def test_background_threshold_marks_low_confidence_pixels():
    model = tiny_vit()
    images = images_for(model, b=2, seed=2)
    explainer = CLIPSurgeryAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)
    up = F.interpolate(explainer.similarity(images, feature_surgery="none"), size=(32, 32),
                       mode="bilinear", align_corners=False)
    confidence = torch.softmax(model.logit_scale.exp().detach() * up, dim=1).amax(dim=1)
    threshold = float(confidence.median())
    plain = segment(explainer, images)
    labels = segment(explainer, images, background_threshold=threshold)
    low = confidence < threshold
    assert low.any() and (~low).any()
    assert (labels[low] == len(TEXTS)).all()
    assert torch.equal(labels[~low], plain[~low])
    ignore = segment(explainer, images, background_threshold=threshold, background_index=255)
    assert torch.equal(ignore[low], torch.full_like(ignore[low], 255))
    # a threshold of at most 1/K never fires; 1 marks everything
    assert torch.equal(segment(explainer, images, background_threshold=1 / len(TEXTS)), plain)
    assert (segment(explainer, images, background_threshold=1.0) == len(TEXTS)).all()


def test_batch_equals_per_image_calls(any_model):
    images = images_for(any_model, b=3, seed=4)
    explainer = CLIPSurgeryAttribution(any_model, texts=TEXTS, templates=FEW_TEMPLATES)
    batch = segment(explainer, images, background_threshold=0.3)
    single = torch.cat([segment(explainer, images[i : i + 1], background_threshold=0.3)
                        for i in range(3)])
    assert (batch == single).float().mean() > 0.999


def test_model_is_not_modified(snapshot):
    model = tiny_vit()
    snap = snapshot(model)
    explainer = CLIPSurgeryAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)
    segment(explainer, images_for(model).requires_grad_(True), background_threshold=0.4)
    snap.assert_unchanged()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(background_threshold=1.5), ValueError, "background_threshold: expected a number in"),
        (dict(background_threshold="0.5"), TypeError, "background_threshold"),
        (dict(background_index=2), ValueError, "background_index: 2 is a class index"),
        (dict(background_index=1.5), TypeError, "background_index"),
        (dict(output_size=(0, 5)), ValueError, "output_size"),
        (dict(output_size="big"), TypeError, "output_size"),
        (dict(class_names=[]), ValueError, "texts: expected at least one text"),
        (dict(feature_surgery="bogus"), ValueError, "feature_surgery"),
    ],
)
def test_errors_name_the_argument(kwargs, error, match):
    model = tiny_vit()
    explainer = CLIPSurgeryAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)
    with pytest.raises(error, match=match):
        segment(explainer, images_for(model), **kwargs)


def test_wrong_explainer_and_images():
    model = tiny_vit()
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    with pytest.raises(TypeError, match="explainer: expected a token-map attribution"):
        segment(clf, images_for(model))  # type: ignore[arg-type]
    explainer = CLIPSurgeryAttribution(clf)
    with pytest.raises(ValueError, match="images: expected a 4-D tensor"):
        segment(explainer, torch.zeros(3, 32, 32))


@pytest.fixture(scope="module")
def scenes(scenes_clip: Any) -> Any:
    return scene_batch(scenes_clip, 100, 6)


def test_scenes_segmentation_matches_the_exact_masks(scenes):
    world, samples, images, clf = scenes
    with torch.no_grad():
        surgery = segment(CLIPSurgeryAttribution(clf), images)
    accuracy = []
    for labels, sample in zip(surgery, samples):
        truth = np.full(labels.shape, -1)
        for name, mask in sample["masks"].items():
            truth[mask] = world.class_names.index(name)
        accuracy.append(float((labels.numpy() == truth).mean()))
    assert np.mean(accuracy) >= 0.75, accuracy
    # every label names a class of the set
    assert int(surgery.min()) >= 0 and int(surgery.max()) < len(world.class_names)
