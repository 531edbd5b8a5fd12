r"""The second backbone of ProxyCLIP, CASS, CorrCLIP and LPOSS, as a method holds it.

A method takes ``backbone=`` as a model of any family with a view
(:func:`~captum_clip_surgery.adapters.backbone_registry.get_backbone`: timm or Hugging Face
DINO / DINOv2, ...), a ready :class:`~captum_clip_surgery.adapters.backbone.VisionBackbone`,
a CLIP model or classifier (its image tower), or ``None``: the explained model's own image
tower. :func:`backbone_input` brings CLIP's prepared images to the backbone (CLIP's
normalisation undone, the backbone's applied, the size aligned to its patch).
"""

from __future__ import annotations

from typing import Any, Tuple

import torch.nn.functional as F
from torch import Tensor

from captum_clip_surgery._validation import padded_size
from captum_clip_surgery.adapters.backbone import CLIPTowerBackbone, VisionBackbone
from captum_clip_surgery.adapters.backbone_registry import get_backbone
from captum_clip_surgery.adapters.base import CLIPAdapter

__all__ = ["backbone_extent", "backbone_input", "resize_grid_tokens", "resolve_backbone"]


def resolve_backbone(backbone: Any, adapter: CLIPAdapter) -> VisionBackbone:
    r"""The view of ``backbone`` (see the module docstring); ``None`` is ``adapter``'s own
    image tower.

    Raises:
        TypeError: naming ``backbone`` when no view understands it.
    """
    if backbone is None:
        return CLIPTowerBackbone(adapter)
    inner = getattr(backbone, "adapter", None)  # a CLIPZeroShotClassifier: its model's tower
    if isinstance(inner, CLIPAdapter) and not isinstance(backbone, VisionBackbone):
        return CLIPTowerBackbone(inner)
    return get_backbone(backbone)


def backbone_input(backbone: VisionBackbone, adapter: CLIPAdapter, images: Tensor) -> Tensor:
    r"""CLIP's prepared images ``[B, 3, H, W]`` as the backbone's input: un-normalised with
    the CLIP model's statistics, normalised with the backbone's, resized to the nearest
    multiple of its patch where needed (:meth:`VisionBackbone.prepare`)."""
    return backbone.prepare(images, adapter.image_mean, adapter.image_std)


def resize_grid_tokens(tokens: Tensor, grid: Tuple[int, int], size: Tuple[int, int]) -> Tensor:
    r"""``[B, h*w, C]`` grid tokens (rows first) resized bilinearly (``align_corners=False``)
    to the grid ``size``: ``[B, I*J, C]``."""
    b, _, c = tokens.shape
    maps = tokens.transpose(1, 2).reshape(b, c, grid[0], grid[1])
    maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    return maps.reshape(b, c, -1).transpose(1, 2)


def backbone_extent(adapter: CLIPAdapter, input_size: Tuple[int, int]) -> Tuple[float, float]:
    r"""The fraction of a backbone's grid the input covers: the backbone sees the input
    padded to CLIP's patch (the ``token_extent`` of the methods whose maps lie on the
    backbone's grid)."""
    hp, wp = padded_size(adapter, input_size)
    return (int(input_size[0]) / hp, int(input_size[1]) / wp)
