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


def _plain_iou(pred, mask):
    union = (pred | mask).sum().item()
    return (pred & mask).sum().item() / union if union else float("nan")


def test_perfect_inverted_uniform_maps():
    mask = _mask(8, 8, (2, 5, 1, 4))  # 9 of 64 pixels
    perfect = mask.float()
    inverted = 1 - perfect
    uniform = torch.full_like(perfect, 0.5)
    assert mean_score_contrast(perfect, mask).item() == pytest.approx(1.0)
    assert mean_score_contrast(inverted, mask).item() == pytest.approx(-1.0)
    assert mean_score_contrast(uniform, mask).item() == pytest.approx(0.0)
    res = best_threshold_miou(perfect, mask)
    assert res["miou"] == pytest.approx(1.0)
    assert res["threshold"] > 0  # t = 0 predicts everything: IoU 9 / 64
    assert res["curve"][0].item() == pytest.approx(9 / 64)
    assert best_threshold_miou(inverted, mask)["miou"] == pytest.approx(9 / 64)  # at t = 0
    assert pointing_game(perfect, mask, tolerance=0).item() == 1.0
    assert pointing_game(inverted, mask, tolerance=0).item() == 0.0  # max at (0, 0), far away
    # the nearest mask pixel, (2, 1), is sqrt(5) from the maximum
    assert pointing_game(inverted, mask, tolerance=2.2).item() == 0.0
    assert pointing_game(inverted, mask, tolerance=math.sqrt(5)).item() == 1.0
    assert energy_pointing_game(perfect, mask).item() == pytest.approx(1.0)
    assert energy_pointing_game(inverted, mask).item() == pytest.approx(0.0)
    assert energy_pointing_game(uniform, mask).item() == pytest.approx(9 / 64)


def test_hand_computed_2x2():
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


def test_hand_computed_3x3():
    maps = torch.tensor([[0.0, 0.5, 1.0], [0.25, 0.75, 0.5], [0.0, 0.0, 0.25]])[None, None]
    mask = torch.tensor([[0, 1, 1], [0, 1, 0], [0, 0, 0]], dtype=torch.bool)[None, None]
    # inside {0.5, 1.0, 0.75}: mean 0.75; outside {0, 0.25, 0.5, 0, 0, 0.25}: mean 1/6
    assert mean_score_contrast(maps, mask).item() == pytest.approx(0.75 - 1 / 6)
    # energy: 2.25 / 3.25
    assert energy_pointing_game(maps, mask).item() == pytest.approx(2.25 / 3.25)
    # max at (0, 2), inside the mask
    assert pointing_game(maps, mask, tolerance=0).item() == 1.0
    res = best_threshold_miou(maps, mask, thresholds=[0.25, 0.5, 0.75, 1.0])
    # t=.25: 6 predicted, 3 in mask -> 3/6; t=.5: {.5, 1, .75, .5} -> 3/4; t=.75: 2/3; t=1: 1/3
    torch.testing.assert_close(res["curve"], torch.tensor([0.5, 0.75, 2 / 3, 1 / 3]))
    assert res["miou"] == pytest.approx(0.75) and res["threshold"] == 0.5


def test_pointing_game_first_argmax_in_row_major_order():
    maps = torch.zeros(1, 1, 3, 3)
    maps[0, 0, 0, 2] = 1.0
    maps[0, 0, 2, 0] = 1.0  # a tie: the first maximum, (0, 2), counts
    assert pointing_game(maps, _mask(3, 3, (0, 1, 2, 3)), tolerance=0).item() == 1.0
    assert pointing_game(maps, _mask(3, 3, (2, 3, 0, 1)), tolerance=0).item() == 0.0
    # a constant map points at (0, 0)
    flat = torch.full((1, 1, 3, 3), 0.3)
    assert pointing_game(flat, _mask(3, 3, (0, 1, 0, 1)), tolerance=0).item() == 1.0


def test_off_by_one_masks_and_tolerance():
    maps = torch.zeros(1, 1, 9, 9)
    maps[0, 0, 4, 4] = 1.0
    shifted = _mask(9, 9, (4, 5, 5, 6))  # one pixel right of the maximum
    assert pointing_game(maps, shifted, tolerance=0).item() == 0.0
    assert pointing_game(maps, shifted, tolerance=1).item() == 1.0
    assert pointing_game(maps, shifted, tolerance=0.99).item() == 0.0
    diagonal = _mask(9, 9, (5, 6, 5, 6))  # sqrt(2) away
    assert pointing_game(maps, diagonal, tolerance=1).item() == 0.0
    assert pointing_game(maps, diagonal, tolerance=1.5).item() == 1.0
    far = _mask(9, 9, (0, 1, 0, 1))  # (0, 0): sqrt(32) away
    assert pointing_game(maps, far, tolerance=5.6).item() == 0.0
    assert pointing_game(maps, far, tolerance=math.sqrt(32)).item() == 1.0
    assert pointing_game(maps, far, tolerance=float("inf")).item() == 1.0
    # IoU of a 3x3 box predicted one pixel off: overlap 6, union 12
    box = _mask(9, 9, (2, 5, 2, 5)).float()
    off = _mask(9, 9, (2, 5, 3, 6))
    assert best_threshold_miou(box, off, torch.tensor([0.5]))["miou"] == pytest.approx(6 / 12)
    # shifted one pixel down and right: overlap 4, union 14
    diag = _mask(9, 9, (3, 6, 3, 6))
    assert best_threshold_miou(box, diag, [0.5])["miou"] == pytest.approx(4 / 14)
    # the shift lowers the contrast: inside {1 x 6, 0 x 3}, outside {1 x 3, 0 x 69}
    assert mean_score_contrast(box, off).item() == pytest.approx(6 / 9 - 3 / 72)


def test_empty_and_full_masks_are_explicit():
    maps = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(3, 1, 4, 4, dtype=torch.bool)
    masks[1, 0, :2] = True
    masks[2] = True  # covers everything: no outside
    msc = mean_score_contrast(maps, masks, reduction="none")
    assert msc.shape == (3,) and msc.dtype == torch.float32
    assert math.isnan(msc[0]) and math.isnan(msc[2]) and not math.isnan(msc[1])
    assert mean_score_contrast(maps, masks).item() == pytest.approx(msc[1].item())
    assert mean_score_contrast(maps, masks).ndim == 0
    pg = pointing_game(maps, masks, reduction="none")
    assert math.isnan(pg[0]) and pg[1].item() in (0.0, 1.0) and pg[2].item() == 1.0
    assert pointing_game(maps, masks).item() == pytest.approx(pg[1:].mean().item())
    epg = energy_pointing_game(maps, masks, reduction="none")
    assert math.isnan(epg[0]) and epg[2].item() == pytest.approx(1.0)
    zero_map = energy_pointing_game(torch.zeros(1, 1, 2, 2), _mask(2, 2, (0, 1, 0, 1)))
    assert math.isnan(zero_map.item())
    # no defined example at all: the mean is NaN
    assert math.isnan(mean_score_contrast(maps[:1], masks[:1]).item())
    assert math.isnan(pointing_game(maps[:1], masks[:1]).item())
    # empty mask: IoU 0 when something is predicted, skipped when nothing is
    acc = ThresholdIoU(torch.tensor([0.0, 2.0]))
    iou = acc.update(maps[:1], masks[:1])
    assert iou[0, 0].item() == 0.0 and math.isnan(iou[0, 1])
    res = acc.compute()
    assert res["curve"][0].item() == 0.0 and math.isnan(res["curve"][1])
    assert res["miou"] == 0.0 and res["threshold"] == 0.0
    # the skipped example does not count: an empty-mask, empty-prediction pair adds nothing
    acc2 = ThresholdIoU([0.5])
    acc2.update(_mask(2, 2, (0, 1, 0, 1)).float(), _mask(2, 2, (0, 1, 0, 1)))
    acc2.update(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.bool))
    assert acc2.count.tolist() == [1.0] and acc2.compute()["miou"] == 1.0
    # nothing counted yet
    empty = ThresholdIoU().compute()
    assert math.isnan(empty["miou"]) and math.isnan(empty["threshold"])


def test_batch_equals_per_example():
    g = torch.Generator().manual_seed(2)
    maps = torch.rand(5, 1, 7, 6, generator=g)
    masks = torch.rand(5, 1, 7, 6, generator=g) > 0.7
    masks[3] = False
    for fn in (mean_score_contrast, energy_pointing_game, pointing_game):
        batch = fn(maps, masks, reduction="none")
        single = torch.cat([fn(maps[i : i + 1], masks[i : i + 1], reduction="none")
                            for i in range(5)])
        torch.testing.assert_close(batch, single, equal_nan=True)
        torch.testing.assert_close(fn(maps, masks), batch.nanmean())


def test_threshold_iou_equals_plain_loop_in_any_order():
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(6, 1, 5, 5, generator=g)
    maps[0, 0, 0, 0] = 0.5  # exactly on a threshold: map >= t predicts it
    masks = torch.rand(6, 1, 5, 5, generator=g) > 0.6
    masks[1] = False
    thresholds = torch.tensor([0.7, 0.0, 0.5, 0.5, 1.0, 0.2])  # unsorted, duplicated
    iou = ThresholdIoU(thresholds).per_example(maps, masks)
    assert iou.shape == (6, 6) and iou.dtype == torch.float64
    for i in range(6):
        for k, t in enumerate(thresholds):
            expected = _plain_iou(maps[i, 0] >= t, masks[i, 0])
            got = iou[i, k].item()
            assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)
    sorted_res = best_threshold_miou(maps, masks, thresholds.sort().values)
    res = best_threshold_miou(maps, masks, thresholds)
    torch.testing.assert_close(res["curve"][thresholds.argsort()], sorted_res["curve"])
    assert res["miou"] == pytest.approx(sorted_res["miou"])
    assert res["threshold"] == pytest.approx(sorted_res["threshold"])


def test_streaming_equals_one_shot_and_merge():
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(10, 1, 6, 6, generator=g)
    masks = torch.rand(10, 1, 6, 6, generator=g) > 0.6
    whole = best_threshold_miou(maps, masks)
    assert whole["thresholds"].shape == (21,)
    torch.testing.assert_close(whole["thresholds"], torch.linspace(0, 1, 21))
    stream = ThresholdIoU()
    stream.update(maps[:4], masks[:4])
    stream.update(maps[4:], masks[4:])
    torch.testing.assert_close(stream.compute()["curve"], whole["curve"])
    assert stream.compute()["miou"] == pytest.approx(whole["miou"])
    a, b = ThresholdIoU(), ThresholdIoU()
    a.update(maps[:4], masks[:4])
    b.update(maps[4:], masks[4:])
    merged = a.merge(b)
    assert merged is a
    torch.testing.assert_close(merged.compute()["curve"], whole["curve"])
    # what an all-reduce does: sum the state tensors of the ranks, load them
    c, d = ThresholdIoU(), ThresholdIoU()
    c.update(maps[:7], masks[:7])
    d.update(maps[7:], masks[7:])
    summed = [x + y for x, y in zip(c.state_tensors(), d.state_tensors())]
    e = ThresholdIoU()
    e.load_state_tensors(summed)
    assert e.compute()["miou"] == pytest.approx(whole["miou"])
    assert e.compute()["threshold"] == pytest.approx(whole["threshold"])
    e.reset()
    assert e.count.sum().item() == 0.0


def test_bad_inputs():
    maps, mask = torch.rand(1, 1, 4, 4), _mask(4, 4, (0, 2, 0, 2))
    with pytest.raises(ValueError, match=r"maps: expected \[B, 1, H, W\]"):
        mean_score_contrast(maps[0], mask[0])
    with pytest.raises(ValueError, match=r"maps: expected \[B, 1, H, W\]"):
        pointing_game(maps.expand(1, 3, 4, 4), mask.expand(1, 3, 4, 4))
    with pytest.raises(ValueError, match="masks: expected the maps' shape"):
        pointing_game(maps, mask[..., :2])
    with pytest.raises(TypeError, match="masks: expected a bool tensor, got torch.float32"):
        energy_pointing_game(maps, mask.float())
    with pytest.raises(TypeError, match="maps: expected a floating-point tensor"):
        energy_pointing_game(mask.long(), mask)
    with pytest.raises(TypeError, match="masks: expected a bool Tensor"):
        energy_pointing_game(maps, mask.tolist())
    with pytest.raises(ValueError, match=r"maps: expected values in \[0, 1\]"):
        mean_score_contrast(maps * 3, mask)
    with pytest.raises(ValueError, match=r"maps: expected values in \[0, 1\].*NaN"):
        best_threshold_miou(torch.full_like(maps, float("nan")), mask)
    # within the 1e-6 slack: accepted and clamped
    nudged = mask.float() * (1 + 5e-7) - 5e-7 * (~mask).float()
    assert mean_score_contrast(nudged, mask).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="reduction: expected 'mean' or 'none', got 'sum'"):
        mean_score_contrast(maps, mask, reduction="sum")
    with pytest.raises(ValueError, match="tolerance: expected >= 0"):
        pointing_game(maps, mask, tolerance=-1)
    with pytest.raises(ValueError, match="thresholds: expected a non-empty 1-D tensor"):
        ThresholdIoU(torch.tensor([]))
    with pytest.raises(ValueError, match="thresholds: expected finite values"):
        ThresholdIoU([0.5, float("nan")])
    with pytest.raises(ValueError, match="other: expected the thresholds"):
        ThresholdIoU().merge(ThresholdIoU([0.5]))
    with pytest.raises(TypeError, match="other: expected a ThresholdIoU"):
        ThresholdIoU().merge(object())
    with pytest.raises(ValueError, match=r"tensors: expected \[iou_sum, count\], two \[21\]"):
        ThresholdIoU().load_state_tensors([torch.zeros(21)])
