r"""NACLIP equals its formula; the neighbourhood term equals an explicit loop."""

from __future__ import annotations

import math

import pytest
import torch

from captum_clip_surgery import CLIPZeroShotClassifier, NACLIPAttribution
from captum_clip_surgery.methods.naclip import neighbourhood_bias
from tests import reference as ref
from tests.helpers import FEW_TEMPLATES, TEXTS, images_for
from tests.models import tiny_resnet, tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("block_type", ["default", "custom"])
@pytest.mark.parametrize("size", [(32, 32), (40, 24)], ids=["native", "non-native"])
@pytest.mark.parametrize("sigma", [5.0, 0.8])
def test_naclip_tokens_match_formula(block_type, size, sigma):
    model = tiny_vit(block_type)
    images = images_for(model, b=2, h=size[0], w=size[1])
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    explainer = NACLIPAttribution(clf, sigma=sigma)
    with torch.no_grad():
        got, _ = explainer.token_features(images)
        expected = ref.naclip_tokens(model, images, sigma)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_neighbourhood_bias_hand_values():
    omega = neighbourhood_bias((2, 3), 1, sigma=1.0)
    assert omega.shape == (7, 7)
    assert omega[0].abs().sum() == 0 and omega[:, 0].abs().sum() == 0
    # token 1 is (0, 0); token 6 is (1, 2): distance² 5
    assert omega[1, 1].item() == pytest.approx(1.0)
    assert omega[1, 6].item() == pytest.approx(math.exp(-5 / 2))
    assert omega[2, 5].item() == pytest.approx(math.exp(-1 / 2))  # (0, 1) vs (1, 1)
    torch.testing.assert_close(omega, ref.naclip_omega((2, 3), 1.0))
    # register tokens: every prefix row and column is zero
    four = neighbourhood_bias((2, 3), 4, sigma=1.0)
    assert four[:4].abs().sum() == 0 and four[:, :4].abs().sum() == 0
    torch.testing.assert_close(four[4:, 4:], omega[1:, 1:])


def test_naclip_errors():
    model = tiny_vit()
    with pytest.raises(ValueError, match="sigma: expected a finite number > 0"):
        NACLIPAttribution(model, sigma=0.0, texts=TEXTS)
    with pytest.raises(TypeError, match="sigma: expected a number > 0, got str"):
        NACLIPAttribution(model, sigma="5", texts=TEXTS)
    with pytest.raises(TypeError, match="forward_func: NACLIP .* no attention blocks"):
        NACLIPAttribution(tiny_resnet(), texts=TEXTS)
