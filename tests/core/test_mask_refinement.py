r"""PAMR: hand-computed 5×5 cases and a conv-kernel reference (the original's layout)."""

from __future__ import annotations

import math

import pytest
import torch

from captum_clip_surgery import pamr
from captum_clip_surgery.core import mask_refinement
from tests import reference as ref


def test_constant_image_averages_the_8_neighbours_with_replicate_borders():
    image = torch.full((1, 3, 5, 5), 0.3)
    centre = torch.zeros(1, 1, 5, 5)
    centre[0, 0, 2, 2] = 1.0
    out = pamr(image, centre, iterations=1, dilations=(1,))[0, 0]
    expected = torch.zeros(5, 5)
    expected[1:4, 1:4] = 1 / 8
    expected[2, 2] = 0.0  # a pixel is not its own neighbour
    torch.testing.assert_close(out, expected)
    corner = torch.zeros(1, 1, 5, 5)
    corner[0, 0, 0, 0] = 1.0
    out = pamr(image, corner, iterations=1, dilations=(1,))[0, 0]
    # (0, 0) is its own neighbour 3 times through the replicate padding, (0, 1) and (1, 0)
    # see it twice, (1, 1) once
    expected = torch.zeros(5, 5)
    expected[0, 0], expected[0, 1], expected[1, 0], expected[1, 1] = 3 / 8, 2 / 8, 2 / 8, 1 / 8
    torch.testing.assert_close(out, expected)


def test_two_region_image_hand_values():
    # I = 0 on columns 0-1, 1 on columns 2-4 (three channels, scaled: the rule is invariant)
    plane = torch.zeros(5, 5)
    plane[:, 2:] = 1.0
    image = torch.stack([plane, 2 * plane, 0.5 * plane])[None]
    logits = torch.arange(5.0).repeat(5, 1)[None, None]  # M = column index
    out = pamr(image, logits, iterations=1, dilations=(1,))[0, 0]
    # (2, 2): its 3x3 window holds three 0s and six 1s: unbiased std 0.5; the three left
    # neighbours differ by 1 -> affinity -1 / (0.1 * 0.5) = -20, the five others 0
    e = math.exp(-20.0)
    assert float(out[2, 2]) == pytest.approx((2 + 3 + 3 + 2 + 3 + e * (1 + 1 + 1)) / (5 + 3 * e))
    # (2, 0): a flat window (std 0, all affinities 0): the plain mean of the neighbours,
    # columns (0, 0, 1, 0, 1, 0, 0, 1) with the replicate border
    assert float(out[2, 0]) == pytest.approx(3 / 8)
    # two iterations apply the same weights twice
    twice = pamr(image, logits, iterations=2, dilations=(1,))
    torch.testing.assert_close(twice, pamr(image, out[None, None], iterations=1, dilations=(1,)))
    # zero iterations only upsample
    torch.testing.assert_close(pamr(image, logits, iterations=0, dilations=(1,)), logits)


@pytest.mark.parametrize("dilations", [(1,), (1, 2), (8, 16)])
def test_pamr_matches_conv_kernel_reference(dilations):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 24, 20, generator=g)
    logits = torch.randn(2, 4, 6, 5, generator=g)
    got = pamr(image, logits, iterations=3, dilations=dilations)
    assert got.shape == (2, 4, 24, 20)
    torch.testing.assert_close(got, ref.pamr(image, logits, 3, list(dilations)), atol=1e-5, rtol=1e-5)
    # batch = per-image calls
    single = torch.cat([pamr(image[i : i + 1], logits[i : i + 1], 3, dilations) for i in range(2)])
    torch.testing.assert_close(got, single)


@pytest.mark.parametrize("size", [(24, 20), (6, 9)], ids=["image", "below-the-dilation"])
def test_sparse_and_shifted_view_propagation_agree(size, monkeypatch):
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, *size, generator=g)
    logits = torch.randn(2, 5, 3, 3, generator=g)
    sparse = pamr(image, logits, iterations=4, dilations=(8, 16))
    expected = ref.pamr(image, logits, 4, [8, 16])
    torch.testing.assert_close(sparse, expected, atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(mask_refinement, "_SPARSE_DEVICES", ())  # e.g. MPS: shifted views
    torch.testing.assert_close(pamr(image, logits, iterations=4, dilations=(8, 16)), expected,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(iterations=-1), ValueError, "iterations: expected an int >= 0"),
        (dict(dilations=()), ValueError, "dilations: expected a non-empty"),
        (dict(dilations=(0,)), ValueError, "dilations: expected a non-empty"),
        (dict(dilations="8"), TypeError, "dilations: expected a sequence"),
        (dict(logits=torch.zeros(2, 1, 3, 3)), ValueError, "logits: expected the images' batch"),
        (dict(logits=torch.zeros(1, 3, 3)), TypeError, r"logits: expected a floating-point"),
        (dict(images=torch.zeros(1, 3, 5, 5, dtype=torch.uint8)), TypeError, "images: expected"),
    ],
)
def test_pamr_errors(kwargs, error, match):
    args = dict(images=torch.rand(1, 3, 5, 5), logits=torch.rand(1, 2, 5, 5))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        pamr(**args)
