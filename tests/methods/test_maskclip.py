r"""MaskCLIP equals its formula."""

from __future__ import annotations

import torch

from captum_clip_surgery import MaskCLIPAttribution
from tests import reference as ref
from tests.helpers import FEW_TEMPLATES, TEXTS, images_for


def test_maskclip_tokens_match_formula(any_model):
    images = images_for(any_model, b=2)
    explainer = MaskCLIPAttribution(any_model, texts=TEXTS, templates=FEW_TEMPLATES)
    with torch.no_grad():
        expected = ref.maskclip_tokens(any_model, images)
        got, _ = explainer.token_features(images)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[:, 0], any_model.encode_image(images), atol=1e-5, rtol=1e-5)


def test_maskclip_maps_and_batching(any_model):
    images = images_for(any_model, b=3, seed=5)
    explainer = MaskCLIPAttribution(any_model, texts=TEXTS, templates=FEW_TEMPLATES)
    maps = explainer.attribute(images, target=[0, 1, "grass"])
    assert maps.shape == (3, 1, images.shape[-2], images.shape[-1])
    single = torch.cat([explainer.similarity(images[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(explainer.similarity(images), single, atol=1e-5, rtol=1e-5)
