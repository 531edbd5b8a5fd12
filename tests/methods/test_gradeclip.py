r"""Grad-ECLIP equals a plain per-image loop on the open_clip weights."""

from __future__ import annotations

import pytest
import torch

from captum_clip_surgery import CLIPZeroShotClassifier, GradECLIPAttribution
from tests import reference as ref
from tests.helpers import FEW_TEMPLATES, TEXTS, images_for
from tests.models import tiny_resnet, tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("block_type", ["default", "custom"])
@pytest.mark.parametrize("size", [(32, 32), (40, 24)], ids=["native", "non-native"])
def test_gradeclip_matches_plain_loop(block_type, size, snapshot):
    model = tiny_vit(block_type)
    snap = snapshot(model)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    explainer = GradECLIPAttribution(clf)
    images = images_for(model, b=3, h=size[0], w=size[1], seed=4)
    targets = [0, 2, 3]
    got = explainer.relevance(images, target=targets)
    assert got.shape == (3, 1, size[0] // 8, size[1] // 8)
    e = clf.text_features
    for i, t in enumerate(targets):
        expected = ref.gradeclip_map(model, images[i : i + 1], e[t])
        torch.testing.assert_close(got[i, 0], expected, atol=1e-7, rtol=1e-4)
    snap.assert_unchanged()


def test_gradeclip_batch_no_grad_and_errors(snapshot):
    model = tiny_vit()
    snap = snapshot(model)
    explainer = GradECLIPAttribution(CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES))
    images = images_for(model, b=3, seed=1)
    batch = explainer.attribute(images, target=[1, 0, 2])
    single = torch.cat([explainer.attribute(images[i : i + 1], target=t)
                        for i, t in enumerate([1, 0, 2])])
    torch.testing.assert_close(batch, single, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(explainer.attribute(images, target=["cat", "dog", "grass"]), batch)
    assert explainer.attribute(images, target=1, upsample_to_input=False).shape == (3, 1, 4, 4)
    with pytest.raises(ValueError, match="target: unknown text"):
        explainer.attribute(images, target="zebra")
    snap.assert_unchanged()
    with pytest.raises(ValueError, match="texts: required when a model"):
        GradECLIPAttribution(model)
    with pytest.raises(TypeError, match="forward_func: Grad-ECLIP .* no attention blocks"):
        GradECLIPAttribution(CLIPZeroShotClassifier(tiny_resnet(), TEXTS, templates=FEW_TEMPLATES))
