r"""Task metrics backed by torchmetrics equal plain computations."""

from __future__ import annotations

import math

import pytest
import torch

from captum_clip_surgery.evaluation import SegmentationMIoU, multilabel_map, segmentation_miou


def _plain_confusion(pred, gt, k, ignore):
    keep = gt != ignore if ignore is not None else torch.ones_like(gt, dtype=torch.bool)
    return torch.bincount(gt[keep] * k + pred[keep], minlength=k * k).reshape(k, k)


def _plain_iou(conf):
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, tp / union, torch.nan)
    return iou, float(iou.nanmean())


def _plain_ap(s, y):
    r"""AP without tied scores: mean precision at the rank of every positive."""
    order = torch.argsort(s, descending=True)
    y = y[order].double()
    precision = torch.cumsum(y, 0) / torch.arange(1, len(y) + 1)
    return float((precision * y).sum() / y.sum())


def _random_label_maps(seed):
    g = torch.Generator().manual_seed(seed)
    gt = torch.randint(0, 5, (3, 16, 16), generator=g)
    gt[0, :4] = 255
    noise = torch.randint(0, 5, (3, 16, 16), generator=g)
    pred = torch.where(torch.rand(3, 16, 16, generator=g) < 0.7, gt, noise)
    pred[gt == 255] = 2
    gt[gt == 4] = 3  # class 4 absent from the ground truth and the prediction
    pred[pred == 4] = 3
    return pred, gt


def test_segmentation_miou_hand_computed():
    pred = torch.tensor([[[0, 1], [1, 1]]])
    gt = torch.tensor([[[0, 1], [0, 255]]])
    res = segmentation_miou(pred, gt, num_classes=2)
    # counted pixels: (gt 0, pred 0), (gt 1, pred 1), (gt 0, pred 1); class 0: 1 / 2, class 1: 1 / 2
    assert torch.equal(res["confusion"], torch.tensor([[1, 1], [0, 1]]))
    torch.testing.assert_close(res["iou"], torch.tensor([0.5, 0.5]))
    assert res["miou"] == pytest.approx(0.5)
    # without ignore_index 255 is an invalid label
    with pytest.raises(ValueError, match=r"target: expected labels in \[0, 1\], got values"):
        segmentation_miou(pred, gt, num_classes=2, ignore_index=None)
    res = segmentation_miou(pred, gt.clamp_max(1), num_classes=2, ignore_index=None)
    # now (gt 1, pred 1) twice: class 0: 1 / 2, class 1: 2 / 3
    torch.testing.assert_close(res["iou"], torch.tensor([0.5, 2 / 3]))


def test_segmentation_miou_equals_plain_confusion_matrix():
    pred, gt = _random_label_maps(0)
    res = segmentation_miou(pred, gt, num_classes=5)
    conf = _plain_confusion(pred, gt, 5, 255)
    assert torch.equal(res["confusion"], conf) and res["confusion"].dtype == torch.long
    iou, miou = _plain_iou(conf)
    assert math.isnan(res["iou"][4]) and math.isnan(iou[4])
    torch.testing.assert_close(res["iou"][:4].double(), iou[:4], atol=1e-6, rtol=0)
    assert res["miou"] == pytest.approx(miou)
    # a class predicted but never in the ground truth has IoU 0, not NaN
    pred2 = pred.clone()
    pred2[0, 5, 5] = 4
    assert segmentation_miou(pred2, gt, num_classes=5)["iou"][4].item() == 0.0


def test_segmentation_streaming_merge_and_state():
    pred, gt = _random_label_maps(1)
    whole = segmentation_miou(pred, gt, num_classes=5)
    acc = SegmentationMIoU(5)
    acc.update(pred[:1], gt[:1])
    acc.update(pred[1:], gt[1:])
    assert torch.equal(acc.compute()["confusion"], whole["confusion"])
    assert acc.compute()["miou"] == pytest.approx(whole["miou"])
    a, b = SegmentationMIoU(5), SegmentationMIoU(5)
    a.update(pred[:2], gt[:2])
    b.update(pred[2:], gt[2:])
    assert torch.equal(a.merge(b).compute()["confusion"], whole["confusion"])
    c, d = SegmentationMIoU(5), SegmentationMIoU(5)
    c.update(pred[:1], gt[:1])
    d.update(pred[1:], gt[1:])
    e = SegmentationMIoU(5)
    e.load_state_tensors([x + y for x, y in zip(c.state_tensors(), d.state_tensors())])
    assert e.compute()["miou"] == pytest.approx(whole["miou"])
    e.reset()
    assert e.confusion.sum().item() == 0 and math.isnan(e.compute()["miou"])


def test_segmentation_bad_inputs():
    pred, gt = _random_label_maps(2)
    with pytest.raises(ValueError, match="pred: expected the target's shape"):
        segmentation_miou(pred[:, :4], gt, 5)
    with pytest.raises(ValueError, match=r"pred: expected labels in \[0, 4\]"):
        segmentation_miou(pred + 2, gt, 5)
    with pytest.raises(TypeError, match="pred: expected an integer tensor"):
        segmentation_miou(pred.float(), gt, 5)
    with pytest.raises(ValueError, match=r"target: expected label maps \[B, H, W\]"):
        segmentation_miou(pred, gt[0], 5)
    with pytest.raises(ValueError, match="num_classes: expected >= 2, got 1"):
        SegmentationMIoU(1)
    with pytest.raises(ValueError, match=r"tensors: expected \[confusion\]"):
        SegmentationMIoU(5).load_state_tensors([torch.zeros(4, 4)])
    with pytest.raises(ValueError, match="other: expected num_classes=5"):
        SegmentationMIoU(5).merge(SegmentationMIoU(3))


def test_multilabel_map_equals_plain_average_precision():
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.8, 0.7, 0.2], [0.2, 0.6, 0.9], [0.4, 0.3, 0.8]])
    labels = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 1], [0, 0, 1]])
    expected = sum(_plain_ap(scores[:, c], labels[:, c]) for c in range(3)) / 3
    assert multilabel_map(scores, labels) == pytest.approx(expected)
    assert multilabel_map(scores, labels.bool()) == pytest.approx(expected)
    # a larger random case (no ties with probability one); logits work as well
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(40, 6, generator=g)
    labels = torch.rand(40, 6, generator=g) < 0.3
    labels[0] = True  # every class has a positive
    expected = sum(_plain_ap(scores[:, c], labels[:, c]) for c in range(6)) / 6
    assert multilabel_map(scores, labels) == pytest.approx(expected)
    assert multilabel_map(scores * 5 + 2, labels) == pytest.approx(expected)


@pytest.mark.filterwarnings("ignore:No positive samples")
def test_multilabel_map_class_without_positive_counts_as_zero():
    scores = torch.tensor([[0.9, 0.2], [0.1, 0.8], [0.4, 0.3]])
    labels = torch.tensor([[True, False], [False, False], [True, False]])
    # class 0: AP 1; class 1 has no positive: AP 0 in torchmetrics, and it is averaged in
    assert multilabel_map(scores, labels) == pytest.approx(0.5)
    assert multilabel_map(scores[:, :1], labels[:, :1]) == pytest.approx(1.0)


def test_multilabel_map_bad_inputs():
    scores = torch.rand(4, 3)
    labels = torch.rand(4, 3) > 0.5
    with pytest.raises(ValueError, match=r"scores, labels: expected two \[N, C\] tensors"):
        multilabel_map(scores, labels[:, :2])
    with pytest.raises(TypeError, match="scores: expected a floating-point tensor"):
        multilabel_map(labels.long(), labels)
    with pytest.raises(ValueError, match="labels: expected 0 / 1 values"):
        multilabel_map(scores, labels.long() * 2)
    with pytest.raises(TypeError, match="labels: expected a bool or integer tensor"):
        multilabel_map(scores, labels.float())
