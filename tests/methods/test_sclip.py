r"""SCLIP equals its formula (plain per-head einsum on the open_clip weights)."""

from __future__ import annotations

import pytest
import torch

from captum_clip_surgery import CLIPZeroShotClassifier, SCLIPAttribution
from tests import reference as ref
from tests.helpers import FEW_TEMPLATES, TEXTS, images_for
from tests.models import tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("block_type", ["default", "custom"])
@pytest.mark.parametrize("size", [(32, 32), (40, 24)], ids=["native", "non-native"])
def test_sclip_tokens_match_formula(block_type, size):
    model = tiny_vit(block_type)
    images = images_for(model, b=2, h=size[0], w=size[1])
    explainer = SCLIPAttribution(CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES))
    with torch.no_grad():
        got, grid = explainer.token_features(images)
        expected = ref.sclip_tokens(model, images)
    assert grid == (size[0] // 8, size[1] // 8)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    if size == (32, 32):  # row 0: the model's own embedding
        torch.testing.assert_close(got[:, 0], model.encode_image(images), atol=1e-5, rtol=1e-5)


def test_sclip_differs_from_the_plain_tower():
    # the correlative attention must change the dense features (a no-op would pass the
    # contract tests); the raw map is the unmodified tower's last block
    model = tiny_vit()
    images = images_for(model, b=1)
    with torch.no_grad():
        sclip = ref.sclip_tokens(model, images)
        plain = ref.vit_tokens(model, images, 0)
    assert (sclip[:, 1:] - plain[:, 1:]).abs().max() > 1e-2
