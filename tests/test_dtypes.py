r"""Reduced precision on CPU stays close to float32; inputs follow the model's device/dtype."""

from __future__ import annotations

import pytest
import torch

from captum_clip_surgery import CLIPSurgeryAttribution
from tests.helpers import FEW_TEMPLATES, TEXTS, images_for
from tests.models import tiny_resnet, tiny_vit


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("make", [tiny_vit, tiny_resnet], ids=["vit", "resnet"])
def test_half_precision_close_to_float32(dtype, make):
    images = images_for(make(), b=2)
    ref = CLIPSurgeryAttribution(make(), texts=TEXTS, templates=FEW_TEMPLATES)
    expected = ref.similarity(images)
    half_model = make().to(dtype)
    explainer = CLIPSurgeryAttribution(half_model, texts=TEXTS, templates=FEW_TEMPLATES)
    got = explainer.similarity(images)
    assert got.dtype == torch.float32
    tol = 0.05 if dtype == torch.bfloat16 else 0.01
    assert (got - expected).abs().max() < tol * expected.abs().max().clamp_min(1e-3) + 0.02
    maps = explainer.attribute(images.to(dtype), target=1)
    assert maps.dtype == dtype
    assert torch.isfinite(maps.float()).all()
    if make is tiny_vit:
        # the random tiny ResNet's token scores are nearly constant within a map, so min-max
        # would amplify rounding without bound; its scores are compared above
        full_maps = ref.attribute(images, target=1)
        assert (maps.float() - full_maps).abs().mean() < 0.05


@pytest.mark.slow
def test_float64_inputs_are_cast_to_the_model_dtype():
    model = tiny_vit()
    explainer = CLIPSurgeryAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)
    images = images_for(model)
    out64 = explainer.attribute(images.double(), target=0)
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), explainer.attribute(images, target=0))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_feature_surgery_and_min_max_run_in_float32(dtype):
    # a half model's maps are the float32 min-max of its float32 scores (no rounding to
    # the half dtype between the token features and the map)
    from captum_clip_surgery import feature_surgery_scores, minmax_normalize

    model = tiny_vit().to(dtype)
    explainer = CLIPSurgeryAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)
    images = images_for(model, b=2)
    scores = explainer.similarity(images)
    assert scores.dtype == torch.float32
    grid = explainer.attribute(images, target=[1, 2], upsample_to_input=False)
    expected = minmax_normalize(torch.stack([scores[0, 1], scores[1, 2]])[:, None])
    assert grid.dtype == torch.float32
    torch.testing.assert_close(grid, expected, atol=0, rtol=0)
    # the closed forms upcast half inputs before any arithmetic
    f = torch.nn.functional.normalize(torch.randn(2, 5, 24), dim=-1)
    e = torch.nn.functional.normalize(torch.randn(3, 24), dim=-1)
    for mode in ("classes", "none"):
        got = feature_surgery_scores(f.to(dtype), e.to(dtype), mode)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, feature_surgery_scores(f.to(dtype).float(),
                                                               e.to(dtype).float(), mode))
