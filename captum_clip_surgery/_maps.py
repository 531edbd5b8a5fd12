r"""From token-grid scores to displayable maps (METHOD §7)."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["minmax_normalize", "upsample"]


def minmax_normalize(maps: Tensor) -> Tensor:
    r"""Min-max normalise each map over its spatial positions, in float32.

    A constant map (no contrast) becomes all zeros instead of NaN.

    Args:
        maps (Tensor): ``[B, K, h, w]``.

    Returns:
        Tensor: float32 ``[B, K, h, w]`` in ``[0, 1]``.

    Examples::

        >>> minmax_normalize(torch.tensor([[[[1.0, 3.0]]]]))
        tensor([[[[0., 1.]]]])
    """
    if not isinstance(maps, Tensor):
        raise TypeError(f"maps: expected a Tensor [B, K, h, w], got {type(maps).__name__}")
    if maps.ndim != 4 or 0 in maps.shape:
        raise ValueError(f"maps: expected a non-empty [B, K, h, w] tensor, got shape "
                         f"{list(maps.shape)}")
    if maps.is_complex() or maps.dtype == torch.bool:
        raise TypeError(f"maps: expected a real-valued tensor, got {maps.dtype}")
    x = maps.float()
    flat = x.flatten(2)
    lo = flat.amin(dim=-1, keepdim=True).unsqueeze(-1)
    hi = flat.amax(dim=-1, keepdim=True).unsqueeze(-1)
    span = hi - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (x - lo) / safe, torch.zeros_like(x))


def upsample(maps: Tensor, size: Tuple[int, int]) -> Tensor:
    r"""Bilinear resize (``align_corners=False``, as in the release) to ``size``."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
