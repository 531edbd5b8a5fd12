r"""ClearCLIP equals its formula (plain per-head einsum on the open_clip weights)."""

from __future__ import annotations

import pytest
import torch

from captum_clip_surgery import ClearCLIPAttribution, CLIPZeroShotClassifier
from tests import reference as ref
from tests.helpers import FEW_TEMPLATES, TEXTS, images_for
from tests.models import tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("block_type", ["default", "custom"])
@pytest.mark.parametrize("size", [(32, 32), (40, 24)], ids=["native", "non-native"])
def test_clearclip_tokens_match_formula(block_type, size):
    model = tiny_vit(block_type)
    images = images_for(model, b=2, h=size[0], w=size[1])
    explainer = ClearCLIPAttribution(CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES))
    with torch.no_grad():
        got, _ = explainer.token_features(images)
        expected = ref.clearclip_tokens(model, images)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    if size == (32, 32):
        torch.testing.assert_close(got[:, 0], model.encode_image(images), atol=1e-5, rtol=1e-5)


def test_clearclip_with_layer_scale_scales_the_branch():
    # a tower with layer scale: the branch goes through ls_1 (the reference applies gamma)
    model = tiny_vit(ls_init_value=0.5)
    images = images_for(model, b=2)
    explainer = ClearCLIPAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)
    with torch.no_grad():
        got, _ = explainer.token_features(images)
        torch.testing.assert_close(got, ref.clearclip_tokens(model, images), atol=1e-5, rtol=1e-5)
