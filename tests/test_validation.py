r"""Every bad input raises a clear error naming its argument; the model is never changed."""

from __future__ import annotations

import pytest
import torch

from captum_clip_surgery import CLIPSimilarityMap, CLIPSurgeryAttribution, CLIPZeroShotClassifier
from tests.conftest import FEW_TEMPLATES, TEXTS, images_for
from tests.models import tiny_resnet, tiny_vit


def _explainer(model=None):
    model = model if model is not None else tiny_vit()
    return CLIPSurgeryAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)


BAD_IMAGES = [
    (torch.randn(3, 32, 32), ValueError, "inputs: expected a 4-D tensor"),
    (torch.randn(2, 1, 32, 32), ValueError, "inputs: expected 3 colour channels"),
    (torch.randn(0, 3, 32, 32), ValueError, "inputs: expected at least one image"),
    (torch.randn(1, 3, 4, 32), ValueError, "inputs: spatial size 4x32 is below"),
    (torch.full((1, 3, 32, 32), float("nan")), ValueError, "inputs: images contain NaN"),
    (torch.full((1, 3, 32, 32), float("inf")), ValueError, "inputs: images contain NaN or infinite"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), TypeError, "inputs: expected a floating-point"),
    ([[1.0]], TypeError, "inputs: expected a torch.Tensor"),
    ((torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)), ValueError, "inputs: expected a tensor or a 1-tuple"),
]


@pytest.mark.parametrize("images,error,message", BAD_IMAGES)
def test_bad_images(images, error, message, snapshot):
    explainer = _explainer()
    snap = snapshot(explainer.classifier.model)
    with pytest.raises(error, match=message):
        explainer.attribute(images, target=0)
    snap.assert_unchanged()


def test_resnet_minimum_size():
    with pytest.raises(ValueError, match="below the model's minimum 32x32"):
        _explainer(tiny_resnet()).attribute(torch.randn(1, 3, 16, 64), target=0)


def test_bad_images_for_classifier_and_similarity():
    explainer = _explainer()
    with pytest.raises(ValueError, match="images: expected 3 colour channels"):
        explainer.classifier(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="images: images contain NaN"):
        explainer.similarity(torch.full((1, 3, 32, 32), float("nan")))


@pytest.mark.parametrize(
    "target,error,message",
    [
        (4, ValueError, r"target: index 4 out of range for 4 texts \(expected 0..3\)"),
        (-1, ValueError, "target: index -1 out of range"),
        ("horse", ValueError, "target: unknown text 'horse'; known texts: 'dog'"),
        ([0], ValueError, r"target: expected one target per example \(2\), got 1"),
        ([0, "zebra"], ValueError, r"target: unknown text 'zebra' \(example 1\)"),
        (1.5, TypeError, "target: expected an int index or one of the texts"),
        (True, TypeError, "target: expected an int index"),
        (torch.tensor([0.0, 1.0]), TypeError, "target: expected an integer tensor"),
        (torch.tensor([[0, 1]]), ValueError, "target: expected a 0-d tensor or one index per example"),
        (None, ValueError, "target: required when there are 4 texts"),
    ],
)
def test_bad_targets(target, error, message, snapshot):
    explainer = _explainer()
    snap = snapshot(explainer.classifier.model)
    with pytest.raises(error, match=message):
        explainer.attribute(torch.randn(2, 3, 32, 32), target=target)
    snap.assert_unchanged()


def test_target_may_be_omitted_with_one_text():
    explainer = CLIPSurgeryAttribution(tiny_vit(), texts=["dog"], templates=FEW_TEMPLATES)
    assert explainer.attribute(torch.randn(2, 3, 32, 32)).shape == (2, 1, 32, 32)


@pytest.mark.parametrize(
    "texts,error,message",
    [
        ([], ValueError, "texts: expected at least one text"),
        ("dog", TypeError, "texts: expected a list of strings, got a single string"),
        (["dog", 3], TypeError, r"texts: expected strings, item 1 is int"),
        (None, ValueError, "texts: required when a model"),
        (5, TypeError, "texts: expected a list of strings, got int"),
    ],
)
def test_bad_texts(texts, error, message):
    with pytest.raises(error, match=message):
        CLIPSurgeryAttribution(tiny_vit(), texts=texts)


def test_bad_texts_per_call_and_templates():
    explainer = _explainer()
    with pytest.raises(ValueError, match="texts: expected at least one text"):
        explainer.attribute(torch.randn(1, 3, 32, 32), target=0, texts=[])
    with pytest.raises(ValueError, match="templates: each template needs exactly one"):
        CLIPZeroShotClassifier(tiny_vit(), ["dog"], templates=["no placeholder"])
    with pytest.raises(TypeError, match="tokenizer: expected a callable"):
        CLIPZeroShotClassifier(tiny_vit(), ["dog"], tokenizer="bpe")
    clf = CLIPZeroShotClassifier(tiny_vit(), ["dog"], templates=FEW_TEMPLATES)
    with pytest.raises(ValueError, match="texts: give texts, templates and tokenizer to the"):
        CLIPSurgeryAttribution(clf, texts=["cat"])


@pytest.mark.parametrize(
    "blocks,error,message",
    [
        (0, ValueError, r"surgery_blocks: expected an int in \[1, 7\] \(the image tower has 7 blocks\), got 0"),
        (8, ValueError, r"surgery_blocks: expected an int in \[1, 7\]"),
        (2.0, TypeError, "surgery_blocks: expected an int or None, got float"),
        (True, TypeError, "surgery_blocks: expected an int or None, got bool"),
    ],
)
def test_bad_surgery_blocks(blocks, error, message):
    with pytest.raises(error, match=message):
        CLIPSurgeryAttribution(tiny_vit(), surgery_blocks=blocks, texts=TEXTS)


def test_bad_feature_surgery():
    explainer = _explainer()
    with pytest.raises(ValueError, match="feature_surgery: expected 'auto', 'classes'"):
        explainer.attribute(torch.randn(1, 3, 32, 32), target=0, feature_surgery="bogus")
    with pytest.raises(ValueError, match=r"redundant_features: expected shape \[24\] or \[4, 24\]"):
        explainer.attribute(torch.randn(1, 3, 32, 32), target=0, feature_surgery=torch.zeros(7))


@pytest.mark.parametrize("cls", [CLIPSurgeryAttribution, CLIPSimilarityMap])
def test_model_unchanged_after_every_public_call(any_model, cls, snapshot):
    any_model.train()  # the user's mode must survive too
    snap = snapshot(any_model)
    size = 64 if any_model.visual.__class__.__name__ == "ModifiedResNet" else 32
    explainer = cls(any_model, texts=TEXTS, templates=FEW_TEMPLATES)
    images = images_for(any_model, b=2)
    explainer.classifier(images)
    _ = explainer.classifier.text_features
    explainer.similarity(images)
    explainer.attribute(images, target=1)
    explainer.attribute(torch.randn(1, 3, size * 2, size + 8), target="cat", texts=["cat", "sky"])
    grads = images.clone().requires_grad_(True)
    out = explainer.attribute(grads, target=0)
    torch.autograd.grad(out.sum(), grads)
    snap.assert_unchanged()
