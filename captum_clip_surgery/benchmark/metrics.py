r"""mIoU, aAcc and per-class IoU as mmsegmentation's ``IoUMetric`` defines them.

Per image, on the pixels whose label is not the ignore index, the intersection
(prediction equal to label), prediction and label areas of every class ``0..C-1`` are
counted; the counts are **summed over the dataset** (not averaged per image). Then
``IoU = I / (P + L - I)`` and ``Acc = I / L`` per class; a class absent from both the
labels and the predictions has ``0 / 0 = NaN`` and is left out of the mean:
``mIoU = nanmean(IoU)``, ``mAcc = nanmean(Acc)``, ``aAcc = sum(I) / sum(L)``.

The counts are kept as a confusion matrix ``[C + 1, C]`` (rows: label, columns:
prediction): row ``C`` holds pixels whose label is outside ``0..C-1`` but not ignored,
which mmsegmentation counts in the prediction's area and not in the label's.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
from torch import Tensor

__all__ = ["ConfusionMatrix", "confusion_matrix", "segmentation_metrics"]


def confusion_matrix(
    prediction: Tensor, label: Tensor, num_classes: int, ignore_index: int = 255
) -> Tensor:
    r"""The ``[C + 1, C]`` confusion counts of one image (int64).

    Args:
        prediction (Tensor): ``[H, W]`` class indices ``0..C-1``.
        label (Tensor): ``[H, W]`` labels (``ignore_index`` ignored).
        num_classes (int): ``C``.
        ignore_index (int): the ignored label.

    Returns:
        Tensor: ``[C + 1, C]`` int64; row ``C``: labels outside ``0..C-1``.
    """
    if prediction.shape != label.shape:
        raise ValueError(
            f"prediction: expected the label's shape {list(label.shape)}, got "
            f"{list(prediction.shape)}"
        )
    c = int(num_classes)
    pred = prediction.reshape(-1).long()
    lab = label.reshape(-1).long()
    keep = lab != ignore_index
    pred, lab = pred[keep], lab[keep]
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= c):
        raise ValueError(f"prediction: expected class indices 0..{c - 1}")
    lab = torch.where((lab >= 0) & (lab < c), lab, torch.full_like(lab, c))
    counts = torch.bincount(lab * c + pred, minlength=(c + 1) * c)
    return counts.reshape(c + 1, c)


def segmentation_metrics(matrix: Tensor) -> Dict[str, object]:
    r"""mIoU, mAcc, aAcc and per-class IoU / Acc from confusion counts (fractions, not %).

    Args:
        matrix (Tensor): ``[C + 1, C]`` counts of :func:`confusion_matrix` (summed over
            the dataset).

    Returns:
        dict: ``"mIoU"``, ``"mAcc"``, ``"aAcc"`` (floats, NaN when undefined), ``"IoU"``
        and ``"Acc"`` (lists of C floats, NaN for classes absent from labels and
        predictions), ``"pixels"`` (labelled pixels counted).

    Examples::

        >>> m = torch.zeros(3, 2, dtype=torch.long); m[0, 0] = 3; m[1, 0] = 1; m[1, 1] = 2
        >>> segmentation_metrics(m)["IoU"]
        [0.75, 0.6666666666666666]
    """
    m = matrix.double()
    c = m.shape[1]
    intersect = torch.diagonal(m[:c])
    pred_area = m.sum(dim=0)
    label_area = m[:c].sum(dim=1)
    union = pred_area + label_area - intersect
    iou = intersect / union  # 0 / 0 = NaN: absent from both
    acc = intersect / label_area
    total = float(label_area.sum())
    return {
        "mIoU": _nanmean(iou),
        "mAcc": _nanmean(acc),
        "aAcc": float(intersect.sum()) / total if total else math.nan,
        "IoU": [float(v) for v in iou],
        "Acc": [float(v) for v in acc],
        "pixels": int(total),
    }


def _nanmean(values: Tensor) -> float:
    kept = values[~torch.isnan(values)]
    return float(kept.mean()) if kept.numel() else math.nan


class ConfusionMatrix:
    r"""Confusion counts summed over images (and over ranks, :meth:`all_reduce`).

    Args:
        num_classes (int): ``C``.
        ignore_index (int): the ignored label.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(self.num_classes + 1, self.num_classes, dtype=torch.long)

    def update(self, prediction: Tensor, label: Tensor) -> Tensor:
        r"""Add one image; returns its own counts."""
        counts = confusion_matrix(prediction.cpu(), label.cpu(), self.num_classes,
                                  self.ignore_index)
        self.matrix += counts
        return counts

    def add(self, counts: Tensor) -> None:
        r"""Add counts computed elsewhere (a resumed image)."""
        self.matrix += counts.to(self.matrix.dtype)

    def all_reduce(self, device: Optional[torch.device] = None) -> None:
        r"""Sum the counts of every rank of the default process group (in place)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            t = self.matrix.to(device if device is not None else "cpu")
            dist.all_reduce(t)
            self.matrix = t.cpu()

    def metrics(self) -> Dict[str, object]:
        r"""See :func:`segmentation_metrics`."""
        return segmentation_metrics(self.matrix)

    def sparse(self) -> List[List[int]]:
        r"""The non-zero cells as ``[label, prediction, count]`` (for storage)."""
        nz = torch.nonzero(self.matrix)
        return [[int(i), int(j), int(self.matrix[i, j])] for i, j in nz.tolist()]
