r"""minmax_normalize: float rounding noise is a flat map, not a full-contrast one (issue 18,
item 8)."""

from __future__ import annotations

import pytest
import torch

from captum_clip_surgery import CLIPSurgeryAttribution, compare
from captum_clip_surgery.core.maps import FLAT_TOLERANCE, minmax_normalize
from tests.helpers import FEW_TEMPLATES, TEXTS
from tests.models import tiny_vit


def _ulp_noise(value: float, steps: torch.Tensor) -> torch.Tensor:
    r"""``value`` moved by ``steps`` float32 ulps (exactly representable)."""
    x = torch.full(steps.shape, value, dtype=torch.float32)
    out = x.clone()
    for i, k in enumerate(steps.flatten().tolist()):
        v = x.flatten()[i]
        direction = torch.tensor(float("inf") if k > 0 else float("-inf"))
        for _ in range(abs(int(k))):
            v = torch.nextafter(v, direction)
        out.view(-1)[i] = v
    return out


@pytest.mark.parametrize("value", [0.3, -0.05, 2.5e-3, 40.0])
def test_rounding_noise_is_flat_at_any_magnitude(value):
    steps = torch.tensor([[-2, 0, 1, 3], [2, -1, 0, 4], [1, 1, -3, 0]])
    noise = _ulp_noise(value, steps)[None, None]
    assert float(noise.amax() - noise.amin()) > 0  # the map is not constant ...
    out = minmax_normalize(noise)
    assert torch.equal(out, torch.zeros_like(out))  # ... but its contrast is rounding noise


def test_the_tolerance_is_relative_to_the_maps_magnitude():
    base = torch.tensor([0.0, 0.25, 0.5, 1.0]).reshape(1, 1, 2, 2)
    for magnitude in (1e-4, 1.0, 1e4):
        # a real contrast 10x above the tolerance: normalised exactly as min-max does
        x = magnitude * (1.0 + 10 * FLAT_TOLERANCE * base)
        lo, hi = x.amin(), x.amax()
        torch.testing.assert_close(minmax_normalize(x), (x - lo) / (hi - lo), rtol=0, atol=0)
        # a contrast below it: flat
        y = magnitude * (1.0 + 0.5 * FLAT_TOLERANCE * base)
        assert torch.equal(minmax_normalize(y), torch.zeros_like(y))
    # each map of a batch on its own: one flat, one not
    both = torch.cat([1.0 + 0.5 * FLAT_TOLERANCE * base, base], dim=1)
    out = minmax_normalize(both)
    assert torch.equal(out[:, 0], torch.zeros_like(out[:, 0]))
    torch.testing.assert_close(out[:, 1], base[:, 0], rtol=0, atol=0)


def test_constant_and_zero_maps_stay_zeros():
    for value in (0.0, 1.0, -3.0):
        x = torch.full((2, 3, 4, 5), value)
        assert torch.equal(minmax_normalize(x), torch.zeros_like(x))


def test_methods_turn_noise_scores_into_flat_maps():
    model = tiny_vit()
    explainer = CLIPSurgeryAttribution(model, texts=TEXTS, templates=FEW_TEMPLATES)
    images = torch.randn(1, 3, 32, 32)
    scores = _ulp_noise(0.12, torch.tensor([[1, -2, 0, 3], [0, 2, -1, 1],
                                            [4, 0, 0, -1], [1, 1, 2, 0]]))[None, None]
    maps = explainer.maps_from_scores(scores, images)
    assert maps.shape == (1, 1, 32, 32) and torch.equal(maps, torch.zeros_like(maps))
    # compare's footing (Captum's methods too) uses the same rule
    noisy = {"noise": lambda x, t: _ulp_noise(-0.7, torch.tensor([[3, 0], [-2, 1]]))[None, None]}
    out = compare(explainer.classifier, images, target=0, methods=noisy)["noise"]
    assert torch.equal(out, torch.zeros_like(out))
