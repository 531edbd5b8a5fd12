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
from tests.helpers import FEW_TEMPLATES, TEXTS, images_for, native_size, scene_batch
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


# ---- the shared protocol: sliding windows and PAMR (METHODS-FAMILY) ----------------------

from captum_clip_surgery import SCLIPAttribution, pamr, sliding_window_scores  # noqa: E402
from captum_clip_surgery.apps.segmentation import _slide, window_spans  # noqa: E402


def test_window_spans_hand_values():
    assert window_spans(10, 4, 3) == [(0, 4), (3, 7), (6, 10)]
    # the last window is moved back to end at the border
    assert window_spans(11, 4, 3) == [(0, 4), (3, 7), (6, 10), (7, 11)]
    assert window_spans(4, 4, 2) == [(0, 4)]  # equal to the crop: one window
    assert window_spans(3, 4, 2) == [(0, 3)]  # smaller than the crop: the whole axis
    assert window_spans(8, 4, 4) == [(0, 4), (4, 8)]


def test_canvas_overlap_count_at_the_borders():
    images = torch.arange(11 * 10, dtype=torch.float32).reshape(1, 1, 11, 10).expand(2, 3, 11, 10)
    calls = []

    def identity(crop):
        calls.append(tuple(crop.shape[-2:]))
        return crop[:, :1]

    canvas, count = _slide(identity, images.contiguous(), 4, 3)
    # rows: spans (0,4) (3,7) (6,10) (7,11); columns: (0,4) (3,7) (6,10)
    rows = torch.tensor([1, 1, 1, 2, 1, 1, 2, 2, 2, 2, 1], dtype=torch.float32)
    cols = torch.tensor([1, 1, 1, 2, 1, 1, 2, 1, 1, 1], dtype=torch.float32)
    torch.testing.assert_close(count[0, 0], rows[:, None] * cols[None, :])
    # every window sees the same pixels: the average is the image itself
    torch.testing.assert_close(canvas / count, images[:, :1])
    assert calls == [(4, 4)] * 12


@pytest.mark.parametrize("size", [24, 32, 48], ids=["smaller", "equal", "larger"])
def test_sliding_window_scores_against_explicit_crops(size):
    model = tiny_vit()
    explainer = SCLIPAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)
    images = images_for(model, b=2, h=size, w=size + 8, seed=6)
    got = sliding_window_scores(explainer, images, crop=32, stride=16)
    assert got.shape == (2, len(TEXTS), size, size + 8)
    canvas = torch.zeros(2, len(TEXTS), size, size + 8)
    count = torch.zeros(size, size + 8)
    for y0, y1 in window_spans(size, 32, 16):
        for x0, x1 in window_spans(size + 8, 32, 16):
            crop = images[:, :, y0:y1, x0:x1]
            s = F.interpolate(explainer.similarity(crop), size=crop.shape[-2:], mode="bilinear",
                              align_corners=False)
            canvas[:, :, y0:y1, x0:x1] += s
            count[y0:y1, x0:x1] += 1
    torch.testing.assert_close(got, canvas / count, atol=1e-6, rtol=1e-5)
    if size == 24:  # smaller than the crop in height, equal in width: one window
        assert count.max() == 1
    labels = segment(explainer, images, sliding_window=(32, 16))
    _assert_labels_match(labels, got)


def test_sliding_window_pads_crops_to_a_patch_multiple():
    model = tiny_vit()
    explainer = SCLIPAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)
    images = images_for(model, b=1, h=30, w=30, seed=2)  # not a multiple of the patch (8)
    got = sliding_window_scores(explainer, images, crop=64, stride=32)
    padded = F.pad(images, (0, 2, 0, 2))
    expected = F.interpolate(explainer.similarity(padded), size=(32, 32), mode="bilinear",
                             align_corners=False)[:, :, :30, :30]
    torch.testing.assert_close(got, expected)


def test_segment_with_pamr_is_the_argmax_of_the_refined_scores():
    model = tiny_vit()
    explainer = SCLIPAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)
    images = images_for(model, b=2, seed=8)
    labels = segment(explainer, images, output_size=(40, 36), pamr=3, pamr_dilations=(2, 4))
    scores = F.interpolate(explainer.similarity(images), size=(40, 36), mode="bilinear",
                           align_corners=False)
    resized = F.interpolate(images, size=(40, 36), mode="bilinear", align_corners=False)
    refined = ref.pamr(resized, scores, 3, [2, 4])
    _assert_labels_match(labels, refined, margin=1e-4)
    assert not torch.equal(labels, segment(explainer, images, output_size=(40, 36)))
    torch.testing.assert_close(pamr(resized, scores, 3, (2, 4)), refined, atol=1e-5, rtol=1e-5)
    # True = the published 10 iterations at dilations 8 and 16
    ten = segment(explainer, images, pamr=True)
    up = F.interpolate(explainer.similarity(images), size=(32, 32), mode="bilinear",
                       align_corners=False)
    _assert_labels_match(ten, ref.pamr(images, up, 10, [8, 16]), margin=1e-4)


def test_segment_logit_scale_sets_the_background_rule():
    model = tiny_vit()
    explainer = SCLIPAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)
    images = images_for(model, b=2, seed=2)
    up = F.interpolate(explainer.similarity(images), size=(32, 32), mode="bilinear",
                       align_corners=False)
    confidence = torch.softmax(40.0 * up, dim=1).amax(dim=1)
    threshold = float(confidence.median())
    labels = segment(explainer, images, background_threshold=threshold, logit_scale=40.0)
    low = confidence < threshold
    assert (labels[low] == len(TEXTS)).all() and (labels[~low] != len(TEXTS)).all()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(sliding_window=32), TypeError, "sliding_window: expected a"),
        (dict(sliding_window=(32, 0)), ValueError, "sliding_window: expected two positive"),
        (dict(pamr=-1), ValueError, "pamr: expected a bool or a number"),
        (dict(pamr=True, pamr_dilations=()), ValueError, "pamr_dilations"),
        (dict(logit_scale=-1.0), ValueError, "logit_scale: expected a positive"),
    ],
)
def test_protocol_errors_name_the_argument(kwargs, error, match):
    model = tiny_vit()
    explainer = SCLIPAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)
    with pytest.raises(error, match=match):
        segment(explainer, images_for(model), **kwargs)


def test_gradient_methods_are_not_token_map_explainers():
    from captum_clip_surgery import LeGradAttribution

    model = tiny_vit()
    legrad = LeGradAttribution(CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES))
    with pytest.raises(TypeError, match="explainer: expected a token-map attribution"):
        sliding_window_scores(legrad, images_for(model), 32, 16)
    with pytest.raises(TypeError, match="explainer: expected a token-map attribution"):
        segment(legrad, images_for(model))
