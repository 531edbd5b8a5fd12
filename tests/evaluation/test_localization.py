r"""Localization metrics on hand-made maps and masks with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from captum_clip_surgery.evaluation import (
    ThresholdIoU,
    best_threshold_miou,
    energy_pointing_game,
    mean_score_contrast,
    pointing_game,
)


def _mask(h, w, box):
    m = torch.zeros(1, 1, h, w, dtype=torch.bool)
    y0, y1, x0, x1 = box
    m[..., y0:y1, x0:x1] = True
    return m


def test_perfect_inverted_uniform_maps():
    mask = _mask(8, 8, (2, 5, 1, 4))  # 9 of 64 pixels
    perfect = mask.float()
    inverted = 1 - perfect
    uniform = torch.full_like(perfect, 0.5)
    assert mean_score_contrast(perfect, mask).item() == pytest.approx(1.0)
    assert mean_score_contrast(inverted, mask).item() == pytest.approx(-1.0)
    assert mean_score_contrast(uniform, mask).item() == pytest.approx(0.0)
    assert best_threshold_miou(perfect, mask)["miou"] == pytest.approx(1.0)
    assert pointing_game(perfect, mask, tolerance=0).item() == 1.0
    assert pointing_game(inverted, mask, tolerance=0).item() == 0.0  # max at (0, 0), far away
    assert energy_pointing_game(perfect, mask).item() == pytest.approx(1.0)
    assert energy_pointing_game(inverted, mask).item() == pytest.approx(0.0)
    assert energy_pointing_game(uniform, mask).item() == pytest.approx(9 / 64)


def test_hand_computed_small_case():
    maps = torch.tensor([[[[0.9, 0.6], [0.3, 0.0]]]])
    mask = torch.tensor([[[[True, False], [True, False]]]])
    # inside: (0.9 + 0.3) / 2 = 0.6; outside: (0.6 + 0.0) / 2 = 0.3
    assert mean_score_contrast(maps, mask).item() == pytest.approx(0.3)
    # energy: 1.2 / 1.8
    assert energy_pointing_game(maps, mask).item() == pytest.approx(1.2 / 1.8)
    res = best_threshold_miou(maps, mask, thresholds=torch.tensor([0.0, 0.25, 0.5, 0.95]))
    # t=0: all 4 predicted -> IoU 2/4; t=0.25: {0.9, 0.6, 0.3} -> 2/3; t=0.5: {0.9, 0.6} -> 1/3
    # t=0.95: nothing predicted -> 0/2 = 0
    torch.testing.assert_close(res["curve"], torch.tensor([0.5, 2 / 3, 1 / 3, 0.0]))
    assert res["miou"] == pytest.approx(2 / 3) and res["threshold"] == pytest.approx(0.25)


def test_off_by_one_masks_and_tolerance():
    maps = torch.zeros(1, 1, 9, 9)
    maps[0, 0, 4, 4] = 1.0
    shifted = _mask(9, 9, (4, 5, 5, 6))  # one pixel right of the maximum
    assert pointing_game(maps, shifted, tolerance=0).item() == 0.0
    assert pointing_game(maps, shifted, tolerance=1).item() == 1.0
    diagonal = _mask(9, 9, (5, 6, 5, 6))  # sqrt(2) away
    assert pointing_game(maps, diagonal, tolerance=1).item() == 0.0
    assert pointing_game(maps, diagonal, tolerance=1.5).item() == 1.0
    # IoU of a 3x3 box predicted one pixel off: overlap 6, union 12
    box = _mask(9, 9, (2, 5, 2, 5)).float()
    off = _mask(9, 9, (2, 5, 3, 6))
    assert best_threshold_miou(box, off, torch.tensor([0.5]))["miou"] == pytest.approx(6 / 12)


def test_empty_and_full_masks_are_explicit():
    maps = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(3, 1, 4, 4, dtype=torch.bool)
    masks[1, 0, :2] = True
    masks[2] = True  # covers everything: no outside
    msc = mean_score_contrast(maps, masks, reduction="none")
    assert math.isnan(msc[0]) and math.isnan(msc[2]) and not math.isnan(msc[1])
    assert mean_score_contrast(maps, masks).item() == pytest.approx(msc[1].item())
    pg = pointing_game(maps, masks, reduction="none")
    assert math.isnan(pg[0]) and not math.isnan(pg[1])
    assert math.isnan(energy_pointing_game(maps, masks, reduction="none")[0])
    assert math.isnan(energy_pointing_game(torch.zeros(1, 1, 2, 2), _mask(2, 2, (0, 1, 0, 1))).item())
    # empty mask: IoU 0 when something is predicted, skipped when nothing is
    acc = ThresholdIoU(torch.tensor([0.0, 2.0]))
    iou = acc.per_example(maps[:1], masks[:1])
    assert iou[0, 0].item() == 0.0 and math.isnan(iou[0, 1])
    assert math.isnan(mean_score_contrast(maps[:1], masks[:1]).item())


def test_streaming_equals_one_shot_and_merge():
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(10, 1, 6, 6, generator=g)
    masks = torch.rand(10, 1, 6, 6, generator=g) > 0.6
    whole = best_threshold_miou(maps, masks)
    a, b = ThresholdIoU(), ThresholdIoU()
    a.update(maps[:4], masks[:4])
    b.update(maps[4:], masks[4:])
    torch.testing.assert_close(a.merge(b).compute()["curve"], whole["curve"])
    c = ThresholdIoU()
    c.load_state_tensors([s.clone() for s in a.state_tensors()])
    assert c.compute()["miou"] == pytest.approx(whole["miou"])
    # per-example IoU by a plain loop
    for i in range(10):
        for k, t in enumerate(torch.linspace(0, 1, 21)):
            pred = maps[i, 0] >= t
            union = (pred | masks[i, 0]).sum().item()
            expected = (pred & masks[i, 0]).sum().item() / union if union else float("nan")
            got = a.per_example(maps[i : i + 1], masks[i : i + 1])[0, k].item()
            assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def test_bad_inputs():
    maps, mask = torch.rand(1, 1, 4, 4), _mask(4, 4, (0, 2, 0, 2))
    with pytest.raises(ValueError, match=r"maps: expected \[B, 1, H, W\]"):
        mean_score_contrast(maps[0], mask[0])
    with pytest.raises(ValueError, match="masks: expected the maps' shape"):
        pointing_game(maps, mask[..., :2])
    with pytest.raises(TypeError, match="masks: expected a bool tensor"):
        energy_pointing_game(maps, mask.float())
    with pytest.raises(ValueError, match=r"maps: expected values in \[0, 1\]"):
        mean_score_contrast(maps * 3, mask)
    with pytest.raises(ValueError, match="reduction: expected 'mean' or 'none'"):
        mean_score_contrast(maps, mask, reduction="sum")
    with pytest.raises(ValueError, match="tolerance: expected >= 0"):
        pointing_game(maps, mask, tolerance=-1)
