r"""Task metrics backed by torchmetrics equal plain computations."""

from __future__ import annotations

import math

import pytest
import torch

from captum_clip_surgery.evaluation import SegmentationMIoU, multilabel_map, segmentation_miou


def _plain_miou(pred, gt, k, ignore):
    keep = gt != ignore
    conf = torch.bincount(gt[keep] * k + pred[keep], minlength=k * k).reshape(k, k).double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, tp / union, torch.nan)
    return iou, float(iou.nanmean())


def test_segmentation_miou_equals_plain_confusion_matrix():
    g = torch.Generator().manual_seed(0)
    gt = torch.randint(0, 5, (3, 16, 16), generator=g)
    gt[0, :4] = 255
    pred = torch.where(torch.rand(3, 16, 16, generator=g) < 0.7, gt, torch.randint(0, 5, (3, 16, 16), generator=g))
    pred[gt == 255] = 2
    gt[gt == 4] = 3  # class 4 absent from the ground truth; predicted only where gt was 4
    pred[pred == 4] = 3
    res = segmentation_miou(pred, gt, num_classes=5)
    iou, miou = _plain_miou(pred, gt, 5, 255)
    assert math.isnan(res["iou"][4]) and math.isnan(iou[4])
    torch.testing.assert_close(res["iou"][:4].double(), iou[:4], atol=1e-6, rtol=0)
    assert res["miou"] == pytest.approx(miou)
    acc = SegmentationMIoU(5)
    acc.update(pred[:1], gt[:1])
    acc.update(pred[1:], gt[1:])
    assert acc.compute()["miou"] == pytest.approx(miou)


def test_multilabel_map_equals_plain_average_precision():
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.8, 0.7, 0.2], [0.2, 0.6, 0.9], [0.4, 0.3, 0.8]])
    labels = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 1], [0, 0, 1]])

    def ap(s, y):
        order = torch.argsort(s, descending=True)
        y = y[order].double()
        hits = torch.cumsum(y, 0)
        precision = hits / torch.arange(1, len(y) + 1)
        return float((precision * y).sum() / y.sum())

    expected = sum(ap(scores[:, c], labels[:, c]) for c in range(3)) / 3
    assert multilabel_map(scores, labels) == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"scores, labels: expected two \[N, C\] tensors"):
        multilabel_map(scores, labels[:, :2])
