r"""Localization metrics of explanation maps against ground-truth masks (``docs/method.md`` §11).

All functions take explanation maps ``[B, 1, H, W]`` with values in ``[0, 1]``
(per-map min-max normalised, e.g. the output of
:class:`~captum_clip_surgery.CLIPSurgeryAttribution`) and boolean ground-truth
masks ``[B, 1, H, W]`` — one class per map/mask pair — and are vectorised over
the batch. Map values within ``1e-6`` of the range are accepted and clamped to
``[0, 1]``; maps are evaluated in float32.

NaN conventions: a per-example value is NaN where the metric is undefined (an
empty mask, a mask covering the whole image for the score contrast, an all-zero
map for the energy pointing game). ``reduction="none"`` returns these NaNs;
``reduction="mean"`` returns the mean over the defined examples only, as a 0-d
float32 tensor, NaN when no example is defined.
"""

from __future__ import annotations

import math
import numbers
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = [
    "ThresholdIoU",
    "best_threshold_miou",
    "energy_pointing_game",
    "mean_score_contrast",
    "pointing_game",
]

_SLACK = 1e-6
_REDUCTIONS = ("mean", "none")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected 'mean' or 'none', got {reduction!r}")


def _check(maps: Tensor, masks: Tensor) -> Tensor:
    r"""Validate a map/mask pair; returns the maps as float32 clamped to ``[0, 1]``."""
    if not isinstance(maps, Tensor):
        raise TypeError(f"maps: expected a Tensor [B, 1, H, W], got {type(maps).__name__}")
    if not isinstance(masks, Tensor):
        raise TypeError(f"masks: expected a bool Tensor [B, 1, H, W], got {type(masks).__name__}")
    if not maps.is_floating_point():
        raise TypeError(f"maps: expected a floating-point tensor, got {maps.dtype}")
    if maps.ndim != 4 or maps.shape[1] != 1 or maps.shape[2] == 0 or maps.shape[3] == 0:
        raise ValueError(
            f"maps: expected [B, 1, H, W] with H, W >= 1, got shape {list(maps.shape)}"
        )
    if masks.shape != maps.shape:
        raise ValueError(
            f"masks: expected the maps' shape {list(maps.shape)} (same B, 1 channel, same "
            f"H, W), got {list(masks.shape)}"
        )
    if masks.dtype != torch.bool:
        raise TypeError(f"masks: expected a bool tensor, got {masks.dtype}")
    if masks.device != maps.device:
        raise ValueError(
            f"masks: expected the maps' device {maps.device}, got {masks.device}"
        )
    m = maps.float()
    if m.numel() and not bool(((m >= -_SLACK) & (m <= 1 + _SLACK)).all()):
        nan = " and NaN" if bool(torch.isnan(m).any()) else ""
        finite = m[~torch.isnan(m)]
        lo = float(finite.min()) if finite.numel() else float("nan")
        hi = float(finite.max()) if finite.numel() else float("nan")
        raise ValueError(
            f"maps: expected values in [0, 1] (normalised maps, 1e-6 slack), got values in "
            f"[{lo:.6g}, {hi:.6g}]{nan}"
        )
    return m.clamp(0.0, 1.0)


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return values
    return values.nanmean()


def mean_score_contrast(maps: Tensor, masks: Tensor, reduction: str = "mean") -> Tensor:
    r"""Score contrast: the mean map value inside the mask minus the mean outside.

    Per example the value lies in ``[-1, 1]``: 1 for a map that is exactly the
    mask, 0 for a constant map, negative for the "opposite visualization" (the
    background brighter than the object). It is undefined (NaN) when the mask
    is empty or covers the whole image. The paper's mSC is the mean over the
    map/mask pairs (``reduction="mean"``).

    Args:
        maps (Tensor): ``[B, 1, H, W]`` float in ``[0, 1]``.
        masks (Tensor): ``[B, 1, H, W]`` bool.
        reduction (str, optional): ``"mean"`` (nan-mean over the defined
            examples, a 0-d tensor, NaN if none is defined) or ``"none"``
            (``[B]``, NaN where undefined).
            Default: ``"mean"``

    Returns:
        Tensor: float32, on the maps' device.

    Examples::

        >>> maps = torch.tensor([[[[1.0, 0.0]]]])
        >>> masks = torch.tensor([[[[True, False]]]])
        >>> mean_score_contrast(maps, masks)
        tensor(1.)
    """
    _check_reduction(reduction)
    m = _check(maps, masks).flatten(1)
    k = masks.flatten(1)
    n_in = k.sum(1)
    n_out = k.shape[1] - n_in
    inside = torch.where(k, m, 0.0).sum(1) / n_in.clamp_min(1)
    outside = torch.where(k, 0.0, m).sum(1) / n_out.clamp_min(1)
    values = torch.where((n_in > 0) & (n_out > 0), inside - outside, torch.nan)
    return _reduce(values, reduction)


def pointing_game(
    maps: Tensor, masks: Tensor, tolerance: float = 15, reduction: str = "mean"
) -> Tensor:
    r"""Pointing game: does the map's maximum lie within ``tolerance`` pixels of the mask?

    The maximum is the first arg-max in row-major order. It is a hit (1) when
    some mask pixel lies at a Euclidean distance ``<= tolerance`` pixels from it
    (``tolerance=0``: the maximum itself is a mask pixel), a miss (0) otherwise,
    and NaN for an empty mask.

    Args:
        maps (Tensor): ``[B, 1, H, W]`` float in ``[0, 1]``.
        masks (Tensor): ``[B, 1, H, W]`` bool.
        tolerance (float, optional): in pixels of the maps; 15 is the usual
            choice for inputs of about 224 px.
            Default: 15
        reduction (str, optional): ``"mean"`` (hit rate over non-empty masks,
            0-d) or ``"none"`` (``[B]`` of 0 / 1 / NaN).
            Default: ``"mean"``

    Returns:
        Tensor: float32, on the maps' device.

    Examples::

        >>> maps = torch.tensor([[[[0.0, 1.0, 0.0]]]])
        >>> masks = torch.tensor([[[[False, False, True]]]])
        >>> pointing_game(maps, masks, tolerance=0), pointing_game(maps, masks, tolerance=1)
        (tensor(0.), tensor(1.))
    """
    _check_reduction(reduction)
    m = _check(maps, masks)
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real):
        raise TypeError(f"tolerance: expected a number of pixels, got {type(tolerance).__name__}")
    if not tolerance >= 0:
        raise ValueError(f"tolerance: expected >= 0 pixels, got {tolerance}")
    b, _, h, w = m.shape
    flat = m.flatten(1).argmax(dim=1)  # the first maximum in row-major order
    py, px = flat // w, flat % w
    rows = torch.arange(h, device=m.device)
    cols = torch.arange(w, device=m.device)
    # squared distances in float64 (exact integers), separable: [B, H, 1] + [B, 1, W]
    dy2 = ((rows[None, :] - py[:, None]) ** 2).double()
    dx2 = ((cols[None, :] - px[:, None]) ** 2).double()
    tol2 = float(tolerance) ** 2 if math.isfinite(float(tolerance)) else math.inf
    near = (dy2[:, :, None] + dx2[:, None, :]) <= tol2
    k = masks[:, 0]
    hit = (near & k).flatten(1).any(dim=1).float()
    values = torch.where(k.flatten(1).any(dim=1), hit, torch.nan)
    return _reduce(values, reduction)


def energy_pointing_game(maps: Tensor, masks: Tensor, reduction: str = "mean") -> Tensor:
    r"""Energy-based pointing game: the share of the map's mass inside the mask.

    ``sum(map · mask) / sum(map)`` per example, in ``[0, 1]``; a constant map
    scores the mask's area fraction. NaN when the map sums to zero or the mask
    is empty.

    Args:
        maps (Tensor): ``[B, 1, H, W]`` float in ``[0, 1]``.
        masks (Tensor): ``[B, 1, H, W]`` bool.
        reduction (str, optional): ``"mean"`` (nan-mean, 0-d) or ``"none"``
            (``[B]``).
            Default: ``"mean"``

    Returns:
        Tensor: float32, on the maps' device.

    Examples::

        >>> maps = torch.tensor([[[[0.6, 0.2]]]])
        >>> masks = torch.tensor([[[[True, False]]]])
        >>> energy_pointing_game(maps, masks)
        tensor(0.7500)
    """
    _check_reduction(reduction)
    m = _check(maps, masks).flatten(1)
    k = masks.flatten(1)
    total = m.sum(1)
    inside = torch.where(k, m, 0.0).sum(1)
    values = torch.where((total > 0) & k.any(1), inside / total.clamp_min(1e-30), torch.nan)
    return _reduce(values, reduction)


def _as_thresholds(thresholds: Optional[Union[Tensor, Sequence[float]]]) -> Tensor:
    if thresholds is None:
        return torch.linspace(0, 1, 21)
    if not isinstance(thresholds, (Tensor, list, tuple)):
        raise TypeError(
            f"thresholds: expected a 1-D Tensor or a sequence of floats, got "
            f"{type(thresholds).__name__}"
        )
    t = torch.as_tensor(thresholds).detach().to("cpu", torch.float32)
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"thresholds: expected a non-empty 1-D tensor, got shape {list(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"thresholds: expected finite values, got {t.tolist()}")
    return t


class ThresholdIoU:
    r"""Explainability mIoU with one threshold chosen by grid search over a dataset.

    Every map is binarised at every threshold ``t`` of the grid (``map >= t``,
    compared in float32) and scored by binary IoU against its mask. Per
    threshold the IoUs are averaged over the examples (not over pixels), and
    :meth:`compute` reports the threshold with the highest mean IoU — one
    threshold for the whole dataset, as in the paper.

    Empty masks: an example whose mask *and* prediction are both empty is
    skipped for that threshold (its IoU is undefined); an empty mask with a
    non-empty prediction scores IoU 0.

    The state is two float64 tensors of shape ``[K]`` (per-threshold sum of
    IoUs and number of examples counted). It is streamed batch by batch with
    :meth:`update`, combined with :meth:`merge`, and exchanged between
    distributed ranks through :meth:`state_tensors` (all-reduce each with
    ``SUM``, after moving them to the backend's device) and
    :meth:`load_state_tensors`.

    The per-example computation is a histogram of every map over the sorted
    grid, so a batch costs ``O(B·H·W + B·K)`` time and memory, not ``O(B·H·W·K)``.

    Args:
        thresholds (Tensor or sequence of float, optional): the grid ``[K]``,
            any order (duplicates allowed). ``None`` gives
            ``torch.linspace(0, 1, 21)`` (0, 0.05, ..., 1).
            Default: None

    Examples::

        >>> acc = ThresholdIoU()
        >>> for maps, masks in batches:        # maps [B, 1, H, W] in [0, 1], masks bool
        ...     acc.update(maps, masks)
        >>> result = acc.compute()
        >>> result["miou"], result["threshold"]   # best mean IoU and its threshold
        >>> result["curve"]                       # mean IoU at every threshold, [21]
    """

    def __init__(self, thresholds: Optional[Union[Tensor, Sequence[float]]] = None) -> None:
        self.thresholds = _as_thresholds(thresholds)
        k = self.thresholds.numel()
        self.iou_sum = torch.zeros(k, dtype=torch.float64)
        self.count = torch.zeros(k, dtype=torch.float64)

    def reset(self) -> None:
        r"""Zero the accumulated sums."""
        self.iou_sum = torch.zeros_like(self.iou_sum)
        self.count = torch.zeros_like(self.count)

    def per_example(self, maps: Tensor, masks: Tensor) -> Tensor:
        r"""IoU of every example at every threshold, without accumulating.

        Args:
            maps (Tensor): ``[B, 1, H, W]`` float in ``[0, 1]``.
            masks (Tensor): ``[B, 1, H, W]`` bool.

        Returns:
            Tensor: ``[B, K]`` float64 on the CPU, NaN where the example is
            skipped (empty mask and empty prediction).
        """
        m = _check(maps, masks).flatten(1)
        k = masks.flatten(1)
        b = m.shape[0]
        n = self.thresholds.numel()
        grid, order = torch.sort(self.thresholds)
        # bucket c = number of thresholds <= value, so value >= grid[j] <=> j < c
        bucket = torch.searchsorted(grid.to(m.device), m.contiguous(), right=True)
        hist_all = torch.zeros(b, n + 1, dtype=torch.long, device=m.device)
        hist_all.scatter_add_(1, bucket, torch.ones_like(bucket))
        hist_in = torch.zeros_like(hist_all).scatter_add_(1, bucket, k.long())
        # predicted / intersecting pixels at grid[j]: the buckets j + 1 .. K
        pred = hist_all.flip(1).cumsum(1).flip(1)[:, 1:]
        inter = hist_in.flip(1).cumsum(1).flip(1)[:, 1:]
        union = pred + k.sum(1, keepdim=True) - inter
        iou_sorted = torch.where(
            union > 0, inter.double() / union.clamp_min(1).double(), torch.nan
        ).cpu()
        iou = torch.empty_like(iou_sorted)
        iou[:, order] = iou_sorted
        return iou

    def update(self, maps: Tensor, masks: Tensor) -> Tensor:
        r"""Add a batch of map/mask pairs.

        Args:
            maps (Tensor): ``[B, 1, H, W]`` float in ``[0, 1]``.
            masks (Tensor): ``[B, 1, H, W]`` bool.

        Returns:
            Tensor: the batch's per-example IoUs ``[B, K]`` (see :meth:`per_example`).
        """
        iou = self.per_example(maps, masks)
        self.add_per_example(iou)
        return iou

    def add_per_example(self, iou: Tensor) -> None:
        r"""Add precomputed per-example IoUs.

        Args:
            iou (Tensor): ``[B, K]`` in ``[0, 1]``, NaN for a skipped example.
        """
        if not isinstance(iou, Tensor) or iou.ndim != 2 or iou.shape[1] != self.thresholds.numel():
            raise ValueError(
                f"iou: expected a [B, {self.thresholds.numel()}] tensor, got "
                f"{list(iou.shape) if isinstance(iou, Tensor) else type(iou).__name__}"
            )
        iou = iou.detach().double().cpu()
        valid = ~torch.isnan(iou)
        self.iou_sum += torch.where(valid, iou, 0.0).sum(0)
        self.count += valid.sum(0).double()

    def state_tensors(self) -> List[Tensor]:
        r"""The sums to all-reduce across ranks.

        Returns:
            list[Tensor]: ``[iou_sum, count]``, each ``[K]`` float64 on the CPU
            (the accumulator's own tensors; pass reduced copies back with
            :meth:`load_state_tensors`).
        """
        return [self.iou_sum, self.count]

    def load_state_tensors(self, tensors: Sequence[Tensor]) -> None:
        r"""Replace the sums, e.g. with all-reduced ones.

        Args:
            tensors (sequence of Tensor): ``[iou_sum, count]`` as given by
                :meth:`state_tensors`, each ``[K]``, on any device.
        """
        k = self.thresholds.numel()
        if (
            not isinstance(tensors, (list, tuple))
            or len(tensors) != 2
            or not all(isinstance(t, Tensor) and t.shape == (k,) for t in tensors)
        ):
            shapes = (
                [list(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in tensors]
                if isinstance(tensors, (list, tuple))
                else type(tensors).__name__
            )
            raise ValueError(f"tensors: expected [iou_sum, count], two [{k}] tensors, got {shapes}")
        self.iou_sum, self.count = (t.detach().to("cpu", torch.float64).clone() for t in tensors)

    def merge(self, other: ThresholdIoU) -> ThresholdIoU:
        r"""Add another accumulator's sums into this one (same thresholds).

        Args:
            other (ThresholdIoU): an accumulator with the same grid.

        Returns:
            ThresholdIoU: ``self``.
        """
        if not isinstance(other, ThresholdIoU):
            raise TypeError(f"other: expected a ThresholdIoU, got {type(other).__name__}")
        if not torch.equal(self.thresholds, other.thresholds):
            raise ValueError(
                f"other: expected the thresholds {self.thresholds.tolist()}, got "
                f"{other.thresholds.tolist()}"
            )
        self.iou_sum = self.iou_sum + other.iou_sum
        self.count = self.count + other.count
        return self

    def compute(self) -> Dict[str, object]:
        r"""The best threshold and its mean IoU.

        Returns:
            dict: ``miou`` (float, the highest mean IoU), ``threshold`` (float,
            the threshold reaching it; ties go to the first in the grid's
            order), ``curve`` (``[K]`` float32, mean IoU per threshold, NaN where
            no example was counted) and ``thresholds`` (``[K]``). ``miou`` and
            ``threshold`` are NaN before any example is counted.
        """
        curve = torch.where(self.count > 0, self.iou_sum / self.count.clamp_min(1), torch.nan)
        if bool(torch.isnan(curve).all()):
            miou, threshold = float("nan"), float("nan")
        else:
            best = int(torch.nan_to_num(curve, nan=-1.0).argmax())
            miou, threshold = float(curve[best]), float(self.thresholds[best])
        return {
            "miou": miou,
            "threshold": threshold,
            "curve": curve.float(),
            "thresholds": self.thresholds.clone(),
        }


def best_threshold_miou(
    maps: Tensor, masks: Tensor, thresholds: Optional[Union[Tensor, Sequence[float]]] = None
) -> Dict[str, object]:
    r"""Explainability mIoU at the best threshold of a grid (one-shot :class:`ThresholdIoU`).

    Args:
        maps (Tensor): ``[B, 1, H, W]`` float in ``[0, 1]``.
        masks (Tensor): ``[B, 1, H, W]`` bool.
        thresholds (Tensor or sequence of float, optional): the grid ``[K]``;
            ``None`` gives ``torch.linspace(0, 1, 21)``.
            Default: None

    Returns:
        dict: ``miou`` (float), ``threshold`` (float), ``curve`` (``[K]``, mean
        IoU per threshold) and ``thresholds`` (``[K]``); see
        :meth:`ThresholdIoU.compute`.

    Examples::

        >>> maps = torch.tensor([[[[0.9, 0.2]]]])
        >>> masks = torch.tensor([[[[True, False]]]])
        >>> best_threshold_miou(maps, masks)["miou"]
        1.0
    """
    acc = ThresholdIoU(thresholds)
    acc.update(maps, masks)
    return acc.compute()
