r"""Localization metrics of explanation maps against ground-truth masks (METHOD §10).

All functions take maps ``[B, 1, H, W]`` in ``[0, 1]`` and boolean masks
``[B, 1, H, W]`` (one class per map/mask pair) and are batched. Per-example
values are NaN where the metric is undefined (e.g. an empty mask); ``"mean"``
reductions average the defined examples only.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor

__all__ = [
    "ThresholdIoU",
    "best_threshold_miou",
    "energy_pointing_game",
    "mean_score_contrast",
    "pointing_game",
]


def _check(maps: Tensor, masks: Tensor) -> None:
    if not isinstance(maps, Tensor) or not isinstance(masks, Tensor):
        raise TypeError(
            f"maps, masks: expected tensors, got {type(maps).__name__} and {type(masks).__name__}"
        )
    if maps.ndim != 4 or maps.shape[1] != 1:
        raise ValueError(f"maps: expected [B, 1, H, W], got shape {list(maps.shape)}")
    if masks.shape != maps.shape:
        raise ValueError(
            f"masks: expected the maps' shape {list(maps.shape)}, got {list(masks.shape)}"
        )
    if masks.dtype != torch.bool:
        raise TypeError(f"masks: expected a bool tensor, got {masks.dtype}")
    if maps.numel() and (maps.min() < -1e-6 or maps.max() > 1 + 1e-6):
        raise ValueError(
            f"maps: expected values in [0, 1] (normalised maps), got "
            f"[{float(maps.min()):.4g}, {float(maps.max()):.4g}]"
        )


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return values
    if reduction == "mean":
        return values.nanmean() if values.numel() else torch.tensor(float("nan"))
    raise ValueError(f"reduction: expected 'mean' or 'none', got {reduction!r}")


def mean_score_contrast(maps: Tensor, masks: Tensor, reduction: str = "mean") -> Tensor:
    r"""Score contrast: mean map value inside the mask minus the mean outside.

    In ``[-1, 1]``; negative values are the "opposite visualization". Undefined
    (NaN) when the mask is empty or covers the whole image. The paper's mSC is the
    mean over classes and images (``reduction="mean"``).

    Args:
        maps (Tensor): ``[B, 1, H, W]`` in ``[0, 1]``.
        masks (Tensor): ``[B, 1, H, W]`` bool.
        reduction (str): ``"mean"`` (nan-mean, 0-d) or ``"none"`` (``[B]``).

    Returns:
        Tensor: float32.

    Examples::

        >>> m = torch.tensor([[[[1.0, 0.0]]]]); k = torch.tensor([[[[True, False]]]])
        >>> mean_score_contrast(m, k)
        tensor(1.)
    """
    _check(maps, masks)
    m, k = maps.float().flatten(1), masks.flatten(1)
    n_in, n_out = k.sum(1), (~k).sum(1)
    inside = (m * k).sum(1) / n_in.clamp_min(1)
    outside = (m * ~k).sum(1) / n_out.clamp_min(1)
    values = torch.where((n_in > 0) & (n_out > 0), inside - outside, torch.nan)
    return _reduce(values, reduction)


def pointing_game(
    maps: Tensor, masks: Tensor, tolerance: float = 15, reduction: str = "mean"
) -> Tensor:
    r"""Pointing game: is the map's maximum within ``tolerance`` pixels of the mask?

    The maximum is the first arg-max in row-major order; the distance is
    Euclidean in pixels. NaN for an empty mask.

    Args:
        maps (Tensor): ``[B, 1, H, W]`` in ``[0, 1]``.
        masks (Tensor): ``[B, 1, H, W]`` bool.
        tolerance (float): pixels (15 is the usual choice at ~224 px inputs).
        reduction (str): ``"mean"`` (hit rate) or ``"none"`` (``[B]`` of 0/1/NaN).

    Returns:
        Tensor: float32.
    """
    _check(maps, masks)
    if tolerance < 0:
        raise ValueError(f"tolerance: expected >= 0 pixels, got {tolerance}")
    b, _, h, w = maps.shape
    flat = maps.float().flatten(1).argmax(dim=1)
    py, px = (flat // w).float(), (flat % w).float()
    yy = torch.arange(h, device=maps.device, dtype=torch.float32).reshape(1, h, 1)
    xx = torch.arange(w, device=maps.device, dtype=torch.float32).reshape(1, 1, w)
    near = (yy - py.reshape(b, 1, 1)) ** 2 + (xx - px.reshape(b, 1, 1)) ** 2 <= tolerance**2
    hit = (near & masks[:, 0]).flatten(1).any(dim=1).float()
    values = torch.where(masks.flatten(1).any(dim=1), hit, torch.nan)
    return _reduce(values, reduction)


def energy_pointing_game(maps: Tensor, masks: Tensor, reduction: str = "mean") -> Tensor:
    r"""Energy-based pointing game: share of the map's mass inside the mask.

    NaN when the map sums to zero or the mask is empty.

    Args:
        maps (Tensor): ``[B, 1, H, W]`` in ``[0, 1]``.
        masks (Tensor): ``[B, 1, H, W]`` bool.
        reduction (str): ``"mean"`` or ``"none"``.

    Returns:
        Tensor: float32 in ``[0, 1]``.
    """
    _check(maps, masks)
    m, k = maps.float().flatten(1), masks.flatten(1)
    total = m.sum(1)
    inside = (m * k).sum(1)
    values = torch.where((total > 0) & k.any(1), inside / total.clamp_min(1e-12), torch.nan)
    return _reduce(values, reduction)


class ThresholdIoU:
    r"""Explainability mIoU with one threshold chosen by grid search over a dataset.

    Each map is binarised at every threshold ``t`` (``map >= t``) and scored by
    binary IoU against its mask; IoUs are averaged over examples per threshold,
    and the best threshold is reported with its mean IoU. An example whose mask
    and prediction are both empty is skipped for that threshold; an empty mask
    with a non-empty prediction scores 0.

    Streaming: call :meth:`update` per batch; :meth:`state_tensors` /
    :meth:`load_state_tensors` and :meth:`merge` let distributed ranks combine
    their sums.

    Args:
        thresholds (Tensor, optional): default ``torch.linspace(0, 1, 21)``.

    Examples::

        >>> acc = ThresholdIoU()
        >>> acc.update(maps, masks)
        >>> acc.compute()["miou"]
    """

    def __init__(self, thresholds: Optional[Tensor] = None) -> None:
        t = torch.linspace(0, 1, 21) if thresholds is None else torch.as_tensor(thresholds).float()
        if t.ndim != 1 or t.numel() == 0:
            raise ValueError(f"thresholds: expected a non-empty 1-D tensor, got shape {list(t.shape)}")
        self.thresholds = t
        self.iou_sum = torch.zeros(len(t), dtype=torch.float64)
        self.count = torch.zeros(len(t), dtype=torch.float64)

    def per_example(self, maps: Tensor, masks: Tensor) -> Tensor:
        r"""IoU of every example at every threshold, ``[B, K]`` (NaN where skipped)."""
        _check(maps, masks)
        m = maps.float().flatten(1)
        k = masks.flatten(1)
        t = self.thresholds.to(m.device).reshape(-1, 1, 1)
        pred = m.unsqueeze(0) >= t  # [K, B, HW]
        inter = (pred & k).sum(-1).double()
        union = (pred | k).sum(-1).double()
        iou = torch.where(union > 0, inter / union.clamp_min(1), torch.nan)
        return iou.t().cpu()

    def update(self, maps: Tensor, masks: Tensor) -> Tensor:
        r"""Add a batch; returns its per-example IoUs ``[B, K]``."""
        iou = self.per_example(maps, masks)
        self.add_per_example(iou)
        return iou

    def add_per_example(self, iou: Tensor) -> None:
        r"""Add precomputed per-example IoUs ``[B, K]`` (NaN = skipped)."""
        valid = ~torch.isnan(iou)
        self.iou_sum += torch.where(valid, iou, 0).sum(0).double()
        self.count += valid.sum(0).double()

    def state_tensors(self) -> List[Tensor]:
        r"""The sums to all-reduce across ranks."""
        return [self.iou_sum, self.count]

    def load_state_tensors(self, tensors: List[Tensor]) -> None:
        r"""Replace the sums (e.g. after an all-reduce)."""
        self.iou_sum, self.count = (t.double().cpu() for t in tensors)

    def merge(self, other: ThresholdIoU) -> ThresholdIoU:
        r"""Add another accumulator's sums (same thresholds)."""
        if not torch.equal(self.thresholds, other.thresholds):
            raise ValueError("other: thresholds differ")
        self.iou_sum = self.iou_sum + other.iou_sum
        self.count = self.count + other.count
        return self

    def compute(self) -> Dict[str, object]:
        r"""``{"miou", "threshold", "curve" [K], "thresholds" [K]}``."""
        curve = torch.where(self.count > 0, self.iou_sum / self.count.clamp_min(1), torch.nan)
        if torch.isnan(curve).all():
            return {"miou": float("nan"), "threshold": float("nan"), "curve": curve,
                    "thresholds": self.thresholds}
        best = int(torch.nan_to_num(curve, nan=-1.0).argmax())
        return {"miou": float(curve[best]), "threshold": float(self.thresholds[best]),
                "curve": curve.float(), "thresholds": self.thresholds}


def best_threshold_miou(
    maps: Tensor, masks: Tensor, thresholds: Optional[Tensor] = None
) -> Dict[str, object]:
    r"""Explainability mIoU at the best threshold of a grid (see :class:`ThresholdIoU`).

    Args:
        maps (Tensor): ``[B, 1, H, W]`` in ``[0, 1]``.
        masks (Tensor): ``[B, 1, H, W]`` bool.
        thresholds (Tensor, optional): the grid (default 0, 0.05, ..., 1).

    Returns:
        dict: ``miou``, ``threshold``, ``curve`` (mean IoU per threshold), ``thresholds``.

    Examples::

        >>> m = torch.tensor([[[[0.9, 0.2]]]]); k = torch.tensor([[[[True, False]]]])
        >>> best_threshold_miou(m, k)["miou"]
        1.0
    """
    acc = ThresholdIoU(thresholds)
    acc.update(maps, masks)
    return acc.compute()
