r"""Task metrics: open-vocabulary segmentation mIoU and multi-label mAP (METHOD §9–10)."""

from __future__ import annotations

from typing import Dict, List

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix, MultilabelAveragePrecision

__all__ = ["SegmentationMIoU", "multilabel_map", "segmentation_miou"]


class SegmentationMIoU:
    r"""Streaming semantic-segmentation mIoU from a confusion matrix.

    The confusion matrix comes from torchmetrics' ``MulticlassConfusionMatrix``
    (pixels labelled ``ignore_index`` are skipped); per-class IoU is
    ``TP / (TP + FP + FN)``, NaN for a class absent from both prediction and
    ground truth, and mIoU is the mean over the other classes (the standard
    semantic-segmentation convention).

    Args:
        num_classes (int): number of classes.
        ignore_index (int): ground-truth label to skip (default 255).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._metric = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def update(self, pred: Tensor, target: Tensor) -> None:
        r"""Add label maps ``[B, H, W]`` (long)."""
        if pred.shape != target.shape:
            raise ValueError(
                f"pred: expected the target's shape {list(target.shape)}, got {list(pred.shape)}"
            )
        self.confusion += self._metric(pred.flatten().cpu(), target.flatten().cpu()).long()

    def state_tensors(self) -> List[Tensor]:
        r"""The sums to all-reduce across ranks."""
        return [self.confusion]

    def load_state_tensors(self, tensors: List[Tensor]) -> None:
        r"""Replace the sums (e.g. after an all-reduce)."""
        self.confusion = tensors[0].long().cpu()

    def compute(self) -> Dict[str, object]:
        r"""``{"miou": float, "iou": Tensor[num_classes], "confusion": Tensor}``."""
        c = self.confusion.double()
        tp = c.diag()
        union = c.sum(0) + c.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp_min(1), torch.nan)
        return {"miou": float(iou.nanmean()), "iou": iou.float(), "confusion": self.confusion}


def segmentation_miou(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255
) -> Dict[str, object]:
    r"""mIoU of label maps ``[B, H, W]`` (see :class:`SegmentationMIoU`).

    Examples::

        >>> pred = torch.tensor([[[0, 1], [1, 1]]]); gt = torch.tensor([[[0, 1], [0, 255]]])
        >>> round(segmentation_miou(pred, gt, 2)["miou"], 3)
        0.5
    """
    acc = SegmentationMIoU(num_classes, ignore_index)
    acc.update(pred, target)
    return acc.compute()


def multilabel_map(scores: Tensor, labels: Tensor) -> float:
    r"""Mean average precision over classes (torchmetrics ``MultilabelAveragePrecision``,
    ``average="macro"``). Classes without a positive example are left out by
    torchmetrics' macro average (their AP is undefined).

    Args:
        scores (Tensor): ``[N, C]`` float scores.
        labels (Tensor): ``[N, C]`` bool or 0/1.

    Returns:
        float: mAP in ``[0, 1]``.
    """
    if scores.shape != labels.shape or scores.ndim != 2:
        raise ValueError(
            f"scores, labels: expected two [N, C] tensors, got {list(scores.shape)} and "
            f"{list(labels.shape)}"
        )
    metric = MultilabelAveragePrecision(num_labels=scores.shape[1], average="macro")
    return float(metric(scores.float().cpu(), labels.long().cpu()))
