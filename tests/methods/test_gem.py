r"""GEM equals its formula and reduces exactly to CLIP Surgery's architecture path."""

from __future__ import annotations

import pytest
import torch

from captum_clip_surgery import CLIPSurgeryAttribution, CLIPZeroShotClassifier, GEMAttribution
from tests import reference as ref
from tests.helpers import FEW_TEMPLATES, TEXTS, images_for
from tests.models import tiny_resnet, tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("block_type", ["default", "custom"])
@pytest.mark.parametrize("size", [(32, 32), (40, 24)], ids=["native", "non-native"])
@pytest.mark.parametrize(
    "blocks, iterations, temperature", [(6, 1, None), (3, 2, 0.7), (7, 0, None)]
)
def test_gem_tokens_match_formula(block_type, size, blocks, iterations, temperature):
    model = tiny_vit(block_type)
    images = images_for(model, b=2, h=size[0], w=size[1])
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    explainer = GEMAttribution(clf, blocks=blocks, iterations=iterations, temperature=temperature)
    with torch.no_grad():
        got, _ = explainer.token_features(images)
        expected = ref.gem_tokens(model, images, blocks, iterations, temperature)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block_type", ["default", "custom"])
@pytest.mark.parametrize("size", [(32, 32), (40, 24)], ids=["native", "non-native"])
def test_gem_reduces_to_clip_surgery_exactly(block_type, size):
    # v branch only, no L2 normalisation, β = 1/√d, no iterations, the original class token,
    # and (at a non-native size) CLIP Surgery's bilinear positional resize
    model = tiny_vit(block_type)
    images = images_for(model, b=2, h=size[0], w=size[1], seed=3)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    d = clf.adapter.image.blocks[0].head_dim
    reduced = GEMAttribution(clf, blocks=6, iterations=0, temperature=d**-0.5,
                             _branches=("v",), _normalize=False, _class_token="original",
                             positional_resize="bilinear")
    surgery = CLIPSurgeryAttribution(clf, surgery_blocks=6)
    with torch.no_grad():
        got, _ = reduced.token_features(images)
        expected, _ = surgery.token_features(images)
    assert torch.equal(got, expected)
    # and each knob matters: the full GEM path is another map
    with torch.no_grad():
        full, _ = GEMAttribution(clf, blocks=6).token_features(images)
    assert (full[:, 1:] - expected[:, 1:]).abs().max() > 1e-3


def test_gem_class_token_is_its_own_unless_asked():
    model = tiny_vit()
    images = images_for(model, b=2)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    with torch.no_grad():
        own, _ = GEMAttribution(clf).token_features(images)
        original, _ = GEMAttribution(clf, _class_token="original").token_features(images)
        embedding = model.encode_image(images)
    torch.testing.assert_close(original[:, 0], embedding, atol=1e-5, rtol=1e-5)
    assert (own[:, 0] - embedding).abs().max() > 1e-3
    torch.testing.assert_close(own[:, 1:], original[:, 1:])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(blocks=0), ValueError, r"blocks: expected an int in \[1, 7\]"),
        (dict(blocks=8), ValueError, r"blocks: expected an int in \[1, 7\]"),
        (dict(blocks=2.0), TypeError, "blocks: expected an int"),
        (dict(iterations=-1), ValueError, "iterations: expected an int >= 0"),
        (dict(iterations=True), TypeError, "iterations: expected an int"),
        (dict(temperature=0.0), ValueError, "temperature: expected a finite number > 0, got 0.0"),
        (dict(temperature="hot"), TypeError, "temperature: expected a number > 0, got str"),
    ],
)
def test_gem_errors_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        GEMAttribution(tiny_vit(), texts=TEXTS, **kwargs)


def test_gem_needs_attention_blocks():
    with pytest.raises(TypeError, match="forward_func: GEM .* no attention blocks"):
        GEMAttribution(tiny_resnet(), texts=TEXTS)
