r"""Task metrics: open-vocabulary semantic segmentation mIoU and multi-label mAP
(``docs/method.md`` §9, §11), backed by torchmetrics."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix, MultilabelAveragePrecision

__all__ = ["SegmentationMIoU", "multilabel_map", "segmentation_miou"]


def _check_label_maps(pred: Tensor, target: Tensor, num_classes: int,
                      ignore_index: Optional[int]) -> None:
    for name, t in (("pred", pred), ("target", target)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a long Tensor [B, H, W], got {type(t).__name__}")
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name}: expected an integer tensor of class labels, got {t.dtype}")
        if t.ndim != 3:
            raise ValueError(f"{name}: expected label maps [B, H, W], got shape {list(t.shape)}")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred: expected the target's shape {list(target.shape)}, got {list(pred.shape)}"
        )
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise ValueError(
            f"pred: expected labels in [0, {num_classes - 1}], got values in "
            f"[{int(pred.min())}, {int(pred.max())}]"
        )
    valid = target if ignore_index is None else target[target != ignore_index]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= num_classes):
        extra = "" if ignore_index is None else f" or {ignore_index} (ignored)"
        raise ValueError(
            f"target: expected labels in [0, {num_classes - 1}]{extra}, got values in "
            f"[{int(valid.min())}, {int(valid.max())}]"
        )


class SegmentationMIoU:
    r"""Streaming semantic-segmentation mIoU from a confusion matrix.

    Each batch's confusion matrix comes from torchmetrics'
    ``MulticlassConfusionMatrix`` (rows: ground truth, columns: prediction;
    pixels whose ground truth is ``ignore_index`` are skipped) and is summed
    into a ``[num_classes, num_classes]`` int64 matrix. Per-class IoU is
    ``TP / (TP + FP + FN)``; it is NaN for a class absent from both the
    predictions and the ground truth, and the mIoU is the mean over the other
    classes (the usual semantic-segmentation convention; NaN if there is none).

    Args:
        num_classes (int): number of classes (``>= 2``).
        ignore_index (int, optional): ground-truth label to skip; ``None``:
            skip nothing.
            Default: 255

    Examples::

        >>> acc = SegmentationMIoU(num_classes=21)
        >>> for pred, gt in batches:          # [B, H, W] long label maps
        ...     acc.update(pred, gt)
        >>> acc.compute()["miou"]
    """

    def __init__(self, num_classes: int, ignore_index: Optional[int] = 255) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int):
            raise TypeError(f"num_classes: expected an int, got {type(num_classes).__name__}")
        if num_classes < 2:
            raise ValueError(f"num_classes: expected >= 2, got {num_classes}")
        if ignore_index is not None and (
            isinstance(ignore_index, bool) or not isinstance(ignore_index, int)
        ):
            raise TypeError(f"ignore_index: expected an int or None, got {ignore_index!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._metric = MulticlassConfusionMatrix(
            num_classes, ignore_index=ignore_index, validate_args=False
        )
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def reset(self) -> None:
        r"""Zero the accumulated confusion matrix."""
        self.confusion = torch.zeros_like(self.confusion)

    def update(self, pred: Tensor, target: Tensor) -> None:
        r"""Add a batch of label maps.

        Args:
            pred (Tensor): ``[B, H, W]`` integer predicted labels in
                ``[0, num_classes)``.
            target (Tensor): ``[B, H, W]`` integer ground-truth labels in
                ``[0, num_classes)`` or ``ignore_index``.
        """
        _check_label_maps(pred, target, self.num_classes, self.ignore_index)
        if pred.numel() == 0:
            return
        target = target.to(pred.device)
        metric = self._metric.to(pred.device)
        metric.reset()
        metric.update(pred.reshape(-1).long(), target.reshape(-1).long())
        self.confusion += metric.compute().long().cpu()
        metric.reset()

    def state_tensors(self) -> List[Tensor]:
        r"""The sums to all-reduce across ranks.

        Returns:
            list[Tensor]: ``[confusion]``, ``[num_classes, num_classes]`` int64
            on the CPU.
        """
        return [self.confusion]

    def load_state_tensors(self, tensors: Sequence[Tensor]) -> None:
        r"""Replace the confusion matrix, e.g. with an all-reduced one.

        Args:
            tensors (sequence of Tensor): ``[confusion]`` as given by
                :meth:`state_tensors`, on any device.
        """
        k = self.num_classes
        if (
            not isinstance(tensors, (list, tuple))
            or len(tensors) != 1
            or not isinstance(tensors[0], Tensor)
            or tensors[0].shape != (k, k)
        ):
            got = (
                [list(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in tensors]
                if isinstance(tensors, (list, tuple))
                else type(tensors).__name__
            )
            raise ValueError(f"tensors: expected [confusion], one [{k}, {k}] tensor, got {got}")
        self.confusion = tensors[0].detach().to("cpu", torch.long).clone()

    def merge(self, other: SegmentationMIoU) -> SegmentationMIoU:
        r"""Add another accumulator's confusion matrix (same number of classes).

        Args:
            other (SegmentationMIoU): the other accumulator.

        Returns:
            SegmentationMIoU: ``self``.
        """
        if not isinstance(other, SegmentationMIoU):
            raise TypeError(f"other: expected a SegmentationMIoU, got {type(other).__name__}")
        if other.num_classes != self.num_classes:
            raise ValueError(
                f"other: expected num_classes={self.num_classes}, got {other.num_classes}"
            )
        self.confusion = self.confusion + other.confusion
        return self

    def compute(self) -> Dict[str, object]:
        r"""Per-class IoU and mIoU.

        Returns:
            dict: ``miou`` (float), ``iou`` (``[num_classes]`` float32, NaN for
            classes absent from both prediction and ground truth) and
            ``confusion`` (``[num_classes, num_classes]`` int64, rows: ground
            truth, columns: prediction).
        """
        c = self.confusion.double()
        tp = c.diag()
        union = c.sum(0) + c.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp_min(1), torch.nan)
        return {
            "miou": float(iou.nanmean()),
            "iou": iou.float(),
            "confusion": self.confusion.clone(),
        }


def segmentation_miou(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: Optional[int] = 255
) -> Dict[str, object]:
    r"""Semantic-segmentation mIoU of label maps (one-shot :class:`SegmentationMIoU`).

    Args:
        pred (Tensor): ``[B, H, W]`` integer predicted labels.
        target (Tensor): ``[B, H, W]`` integer ground truth; ``ignore_index``
            pixels are skipped.
        num_classes (int): number of classes (``>= 2``).
        ignore_index (int, optional): ground-truth label to skip.
            Default: 255

    Returns:
        dict: ``miou`` (float), ``iou`` (``[num_classes]``, NaN for classes
        absent from both) and ``confusion`` (rows: ground truth, columns:
        prediction).

    Examples::

        >>> pred = torch.tensor([[[0, 1], [1, 1]]])
        >>> gt = torch.tensor([[[0, 1], [0, 255]]])
        >>> segmentation_miou(pred, gt, num_classes=2)["miou"]
        0.5
    """
    acc = SegmentationMIoU(num_classes, ignore_index)
    acc.update(pred, target)
    return acc.compute()


def multilabel_map(scores: Tensor, labels: Tensor) -> float:
    r"""Multi-label mean average precision over classes.

    Computed by torchmetrics' ``MultilabelAveragePrecision(average="macro")``
    (exact, no binning): per class, AP is the area under the step
    precision-recall curve, ``Σ_k (R_k - R_{k-1}) · P_k`` over decreasing score
    thresholds (tied scores are one threshold), i.e. without ties the mean of
    the precision at the rank of every positive. The mAP is the unweighted mean
    over the classes.

    Classes without a positive example: torchmetrics (1.x) sets their recall to
    one at every threshold (with a ``UserWarning``), which gives them **AP 0**,
    and they **are included** in the mean — so they pull the mAP down. Drop such
    columns beforehand to leave them out. (Only a NaN per-class AP is skipped
    by the macro average.)

    Args:
        scores (Tensor): ``[N, C]`` float scores (any range, e.g. logits or
            probabilities); ``C >= 1``.
        labels (Tensor): ``[N, C]`` bool, or integer 0 / 1.

    Returns:
        float: mAP in ``[0, 1]``.

    Examples::

        >>> scores = torch.tensor([[0.9, 0.2], [0.1, 0.8], [0.4, 0.3]])
        >>> labels = torch.tensor([[True, False], [False, False], [True, True]])
        >>> multilabel_map(scores, labels)   # class 0: AP 1; class 1: AP 1/2
        0.75
    """
    if not isinstance(scores, Tensor) or not isinstance(labels, Tensor):
        raise TypeError(
            f"scores, labels: expected two Tensors [N, C], got {type(scores).__name__} and "
            f"{type(labels).__name__}"
        )
    if scores.ndim != 2 or scores.shape != labels.shape or scores.numel() == 0:
        raise ValueError(
            f"scores, labels: expected two [N, C] tensors of the same shape (N, C >= 1), got "
            f"{list(scores.shape)} and {list(labels.shape)}"
        )
    if not scores.is_floating_point():
        raise TypeError(f"scores: expected a floating-point tensor, got {scores.dtype}")
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores: expected no NaN values")
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels: expected a bool or integer tensor, got {labels.dtype}")
    labels = labels.long()
    if bool(((labels != 0) & (labels != 1)).any()):
        raise ValueError(
            f"labels: expected 0 / 1 values, got {sorted(set(labels.unique().tolist()))}"
        )
    metric = MultilabelAveragePrecision(
        num_labels=scores.shape[1], average="macro", validate_args=False
    ).to(scores.device)
    return float(metric(scores.float(), labels))
