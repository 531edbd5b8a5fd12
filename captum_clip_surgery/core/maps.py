r"""From token-grid scores to displayable maps lined up with the input (``docs/method.md`` §7)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FLAT_TOLERANCE", "grid_extent", "minmax_normalize", "to_pixels", "upsample"]


#: Relative flatness tolerance of :func:`minmax_normalize`: a map whose range
#: ``max - min`` is at most this times its largest magnitude ``max |x|`` is flat. 64 float32
#: machine epsilons (about 7.6e-6): float32 rounding alone moves a dot product of a few
#: hundred terms by this much, so a smaller contrast carries no information.
FLAT_TOLERANCE: float = 64 * torch.finfo(torch.float32).eps


def minmax_normalize(maps: Tensor) -> Tensor:
    r"""Min-max normalise each map over its spatial positions, in float32.

    A flat map becomes all zeros: one whose range is at most
    :data:`FLAT_TOLERANCE` (64 float32 epsilons, about 7.6e-6) times its largest
    magnitude, ``max - min <= FLAT_TOLERANCE * max |x|`` — a constant map (instead of
    NaN), and one whose only contrast is float rounding noise (e.g. a constant image,
    whose tokens differ only in the last bits), which min-max would otherwise stretch
    into a full-contrast picture of noise. An all-zero output therefore means "no
    contrast", never "lowest everywhere".

    Args:
        maps (Tensor): ``[B, K, h, w]``.

    Returns:
        Tensor: float32 ``[B, K, h, w]`` in ``[0, 1]``.

    Examples::

        >>> minmax_normalize(torch.tensor([[[[1.0, 3.0]]]]))
        tensor([[[[0., 1.]]]])
        >>> minmax_normalize(torch.tensor([[[[0.3, 0.3 + 3e-8]]]]))  # rounding noise: flat
        tensor([[[[0., 0.]]]])
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
    magnitude = torch.maximum(hi.abs(), lo.abs())
    contrast = span > FLAT_TOLERANCE * magnitude  # False for a constant (or all-zero) map
    safe = torch.where(contrast, span, torch.ones_like(span))
    return torch.where(contrast, (x - lo) / safe, torch.zeros_like(x))


def upsample(
    maps: Tensor, size: Tuple[int, int], extent: Optional[Tuple[float, float]] = None
) -> Tensor:
    r"""Bilinear resize (``align_corners=False``, as in the release) to ``size``.

    Args:
        maps (Tensor): ``[B, K, h, w]``.
        size (tuple[int, int]): output ``(H, W)``.
        extent (tuple[float, float], optional): the fraction ``(fy, fx)`` of the
            maps' span (from the top-left corner) that the output covers; ``None``
            or ``(1, 1)``: the whole span. Output pixel ``i`` samples the maps at
            ``(i + 0.5) · fy · h / H - 0.5`` (cell coordinates, edges clamped), the
            plain bilinear resize when ``fy = 1``.

    Returns:
        Tensor: ``[B, K, H, W]``.
    """
    size = (int(size[0]), int(size[1]))
    if extent is None or tuple(extent) == (1.0, 1.0):
        if tuple(maps.shape[-2:]) == size:
            return maps
        return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    fy, fx = float(extent[0]), float(extent[1])
    dtype = maps.dtype if maps.is_floating_point() else torch.float32
    ys = (torch.arange(size[0], device=maps.device, dtype=torch.float64) + 0.5) / size[0]
    xs = (torch.arange(size[1], device=maps.device, dtype=torch.float64) + 0.5) / size[1]
    ys, xs = (2 * fy * ys - 1).to(dtype), (2 * fx * xs - 1).to(dtype)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # [H, W, (x, y)]
    grid = grid.unsqueeze(0).expand(maps.shape[0], -1, -1, -1)
    return F.grid_sample(maps.to(dtype), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def grid_extent(
    grid: Tuple[int, int], cell: Tuple[int, int], size: Tuple[int, int]
) -> Tuple[float, float]:
    r"""The fraction of a token grid's span that an ``H×W`` input covers.

    A grid of ``h×w`` cells of ``cell`` pixels spans ``h·ch × w·cw`` pixels; for an
    input padded up to a multiple of the cell (bottom / right) the input covers
    ``H / (h·ch)`` of it. A grid that is not the padded input's (another method's
    own grid) is taken to span the input exactly (``1.0``).
    """
    out = []
    for g, c, s in zip(grid, cell, size):
        span = int(g) * int(c)
        out.append(s / span if s <= span < s + c else 1.0)
    return (out[0], out[1])


def to_pixels(
    maps: Tensor,
    cell: Tuple[int, int],
    input_size: Tuple[int, int],
    output_size: Optional[Tuple[int, int]] = None,
) -> Tensor:
    r"""Token-grid maps ``[B, K, h, w]`` of a (padded) input of ``input_size`` pixels
    to ``output_size`` pixels (default ``input_size``) lined up with the input:
    the padding the grid also covers is left out (see :func:`grid_extent`)."""
    extent = grid_extent((maps.shape[-2], maps.shape[-1]), cell, input_size)
    return upsample(maps, output_size or input_size, extent)
