r"""inference_mode_of under threads (issue 18, item 15): the model ends in the mode it
was in, and no call runs with dropout or batch statistics, however calls overlap."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_clip_surgery import CLIPSurgeryAttribution, CLIPZeroShotClassifier
from captum_clip_surgery.adapters import inference_mode_of
from tests.helpers import FEW_TEMPLATES, TEXTS, ModelSnapshot, run_threads
from tests.models import tiny_resnet, tiny_vit


def _vit_with_dropout() -> nn.Module:
    r"""The tiny ViT with a dropout (p = 0.5) after every image block's MLP."""
    model = tiny_vit()
    for block in model.visual.transformer.resblocks:
        block.mlp.add_module("drop", nn.Dropout(0.5))
    return model



def test_nested_calls_restore_the_outer_mode():
    model = tiny_vit().train()
    model.visual.eval()  # mixed flags are kept as they were
    before = {n: m.training for n, m in model.named_modules()}
    with inference_mode_of(model):
        with inference_mode_of(model):
            assert not any(m.training for m in model.modules())
        assert not any(m.training for m in model.modules())  # the outer call still holds it
    assert {n: m.training for n, m in model.named_modules()} == before
    with pytest.raises(RuntimeError, match="boom"):
        with inference_mode_of(model):
            raise RuntimeError("boom")
    assert {n: m.training for n, m in model.named_modules()} == before


@pytest.mark.parametrize("build,side", [(_vit_with_dropout, 32), (tiny_resnet, 64)])
def test_threads_on_a_model_in_train_mode(build, side):
    model = build()
    images = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    model.eval()
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=FEW_TEMPLATES)
    explainer = CLIPSurgeryAttribution(clf)
    expected_maps = explainer.attribute(images, target=[0, 2])
    expected_logits = clf(images)
    model.train()
    with torch.no_grad():  # the model really behaves otherwise in train mode
        own = model.encode_image(images)
        if side == 32:
            assert not torch.equal(own, model.encode_image(images))  # dropout
    model.load_state_dict(build().state_dict())  # batch norm statistics as built
    model.train()
    snap = ModelSnapshot(model)

    def work(i: int) -> None:
        for _ in range(4):
            torch.testing.assert_close(explainer.attribute(images, target=[0, 2]), expected_maps,
                                       rtol=0, atol=1e-6)
            torch.testing.assert_close(clf(images), expected_logits, rtol=0, atol=1e-5)

    errors = run_threads(8, work)
    assert not errors, errors[0]
    assert all(m.training for m in model.modules())  # back in train mode, every submodule
    snap.assert_unchanged()  # batch-norm running statistics untouched
