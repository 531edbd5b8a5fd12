r"""mmsegmentation's mIoU definitions: hand-computed cases and a plain re-implementation of
its per-image histogram counts summed over the dataset."""

from __future__ import annotations

import math

import numpy as np
import torch

from captum_clip_surgery.benchmark import ConfusionMatrix, segmentation_metrics
from captum_clip_surgery.benchmark.metrics import confusion_matrix


def test_hand_computed_case():
    # 3 classes; class 2 appears nowhere (NaN, left out of the mean); 255 ignored
    pred = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0]])
    label = torch.tensor([[0, 0, 1, 255], [1, 1, 1, 255]])
    m = segmentation_metrics(confusion_matrix(pred, label, 3))
    # class 0: I=2, P=3 (the ignored pixel at [1,3] is not counted), L=2 -> U=3 -> 2/3
    # class 1: I=3, P=3, L=4 -> U=4 -> 3/4
    assert m["IoU"][:2] == [2 / 3, 0.75] and math.isnan(m["IoU"][2])
    assert m["mIoU"] == (2 / 3 + 0.75) / 2
    assert m["Acc"][:2] == [1.0, 0.75] and math.isnan(m["Acc"][2])
    assert m["aAcc"] == 5 / 6 and m["pixels"] == 6


def test_a_class_predicted_but_absent_counts_zero():
    pred = torch.tensor([0, 2, 2])
    label = torch.tensor([0, 0, 0])
    m = segmentation_metrics(confusion_matrix(pred, label, 3))
    assert m["IoU"][0] == 1 / 3 and m["IoU"][2] == 0.0 and math.isnan(m["IoU"][1])
    assert m["mIoU"] == (1 / 3 + 0.0) / 2


def test_labels_out_of_range_count_in_the_prediction_only():
    # mmseg's histc leaves label 7 out of the label areas but counts its prediction
    pred = torch.tensor([1, 1])
    label = torch.tensor([1, 7])
    m = segmentation_metrics(confusion_matrix(pred, label, 3))
    assert m["IoU"][1] == 0.5 and m["aAcc"] == 1.0


def _mmseg_areas(pred, label, c, ignore=255):
    r"""mmsegmentation's intersect_and_union, written plainly with histc."""
    mask = label != ignore
    pred, label = pred[mask].float(), label[mask].float()
    inter = pred[pred == label]
    hist = lambda x: torch.histc(x, bins=c, min=0, max=c - 1)  # noqa: E731
    ai, ap, al = hist(inter), hist(pred), hist(label)
    return ai, ap + al - ai, ap, al


def test_equals_mmsegs_summed_histograms():
    g = torch.Generator().manual_seed(0)
    c = 6
    total = [torch.zeros(c) for _ in range(4)]
    conf = ConfusionMatrix(c)
    for _ in range(5):
        h, w = (int(v) for v in torch.randint(5, 30, (2,), generator=g))
        pred = torch.randint(0, c - 1, (h, w), generator=g)  # class 5 never predicted
        label = torch.randint(0, c + 3, (h, w), generator=g)  # some out of range
        label[torch.rand(h, w, generator=g) < 0.1] = 255
        label[label == 4] = 255  # class 4 absent from the labels
        conf.update(pred, label)
        for t, a in zip(total, _mmseg_areas(pred, label, c)):
            t += a
    ai, au, ap, al = total
    m = conf.metrics()
    iou = (ai / au).numpy()
    np.testing.assert_allclose(m["IoU"], iou, equal_nan=True)
    assert math.isclose(m["mIoU"], float(np.nanmean(iou)), rel_tol=1e-6)
    assert math.isclose(m["aAcc"], float(ai.sum() / al.sum()), rel_tol=1e-6)
    assert math.isclose(m["mAcc"], float(np.nanmean((ai / al).numpy())), rel_tol=1e-6)
    # the sparse form restores the matrix
    dense = torch.zeros_like(conf.matrix)
    for i, j, n in conf.sparse():
        dense[i, j] = n
    assert torch.equal(dense, conf.matrix)
