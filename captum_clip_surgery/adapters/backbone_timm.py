r"""timm Vision Transformers as second backbones.

:class:`TimmViTBackbone` covers timm's ``VisionTransformer`` with its pre-norm ``Block``
and ``Attention`` (q/k norm and layer scale included): DINO (``vit_small_patch16_224.dino``,
``vit_base_patch16_224.dino``, ``vit_base_patch8_224.dino``), DINOv2
(``vit_base_patch14_dinov2.lvd142m``) and DINOv2 with registers
(``vit_base_patch14_reg4_dinov2.lvd142m``), and any other timm ViT of that layout
(class token or not, registers, a positional table with or without the prefix rows).

The positional table is resized by the rule of the weights' release by default (DINO's and
DINOv2's hub code: ``"bicubic_offset"``); ``positional_resize="bicubic_antialias"`` is
timm's own rule (``dynamic_img_size=True``), with which the view reproduces
``model.forward_features`` at every size. The input statistics are the model's
``pretrained_cfg`` ``mean`` / ``std`` (ImageNet's when absent).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip_surgery.adapters._timm_common import (
    HybridEmbed,
    PatchEmbed,
    TimmAttention,
    TimmBlock,
    TimmVisionTransformer,
    _TimmBlockView,
)
from captum_clip_surgery.adapters.backbone import IMAGENET_MEAN, IMAGENET_STD, VisionBackbone
from captum_clip_surgery.adapters.base import resize_positional_embedding

__all__ = ["TimmViTBackbone"]


class TimmViTBackbone(VisionBackbone):
    r"""A timm ``VisionTransformer`` as a second backbone.

    Args:
        model (nn.Module): the timm model (e.g. ``timm.create_model("vit_base_patch8_224.dino",
            pretrained=True)``); it is only read, never changed.
        positional_resize (str, optional): the positional rule; default ``"bicubic_offset"``
            (DINO / DINOv2 hub code), ``"bicubic_antialias"`` for timm's own.

    Examples::

        >>> import timm
        >>> dino = timm.create_model("vit_base_patch14_reg4_dinov2.lvd142m", pretrained=True)
        >>> backbone = TimmViTBackbone(dino)
        >>> backbone.num_prefix_tokens, backbone.num_register_tokens, backbone.patch_size
        (5, 4, (14, 14))
    """

    family = ("timm VisionTransformer (DINO vit_*_patch8/16_224.dino, DINOv2 "
              "vit_*_patch14_dinov2*, with registers)")
    library_positional_resize = "bicubic_antialias"

    def __init__(self, model: nn.Module, positional_resize: Optional[str] = None) -> None:
        if not self.supports(model):
            raise TypeError(
                f"backbone: expected a timm VisionTransformer, got {type(model).__qualname__}"
            )
        super().__init__(model, positional_resize)
        pe = model.patch_embed
        if not isinstance(pe, (PatchEmbed, HybridEmbed)):
            raise TypeError(
                f"backbone: unsupported patch embedding {type(pe).__qualname__}; expected timm's "
                "PatchEmbed or HybridEmbed"
            )
        for block in model.blocks:
            if not (isinstance(block, TimmBlock) and isinstance(block.attn, TimmAttention)):
                raise TypeError(
                    f"backbone: unsupported timm ViT block {type(block).__qualname__} with "
                    f"{type(getattr(block, 'attn', None)).__qualname__}; expected timm's pre-norm "
                    "Block with Attention"
                )
        self.blocks = [_TimmBlockView(b) for b in model.blocks]
        self.native_grid = tuple(int(g) for g in pe.grid_size)  # type: ignore[assignment]
        size = tuple(int(s) for s in pe.img_size)
        self.patch_size = (size[0] // self.native_grid[0], size[1] // self.native_grid[1])
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.num_register_tokens = int(getattr(model, "num_reg_tokens", 0))
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.image_mean = tuple(float(m) for m in cfg.get("mean", IMAGENET_MEAN))  # type: ignore[assignment]
        self.image_std = tuple(float(s) for s in cfg.get("std", IMAGENET_STD))  # type: ignore[assignment]

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return isinstance(model, TimmVisionTransformer)

    @property
    def has_class_token(self) -> bool:
        return bool(getattr(self.model, "has_class_token", self.num_prefix_tokens > 0))

    def _patch_tokens(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        pe = self.model.patch_embed
        x = images
        if isinstance(pe, HybridEmbed):
            x = pe.backbone(x)
            if isinstance(x, (list, tuple)):
                x = x[-1]
        if getattr(pe, "dynamic_img_pad", False):
            ph, pw = pe.patch_size
            x = F.pad(x, (0, (pw - x.shape[-1] % pw) % pw, 0, (ph - x.shape[-2] % ph) % ph))
        x = pe.proj(x)
        grid = (int(x.shape[-2]), int(x.shape[-1]))
        x = x.flatten(2).transpose(1, 2)
        norm = getattr(pe, "norm", None)
        return (x if norm is None else norm(x)), grid

    def embed_tokens(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        model = self.model
        x, grid = self._patch_tokens(images)
        b = x.shape[0]
        prefix = [
            t.to(x.dtype).expand(b, -1, -1)
            for t in (getattr(model, "cls_token", None), getattr(model, "reg_token", None))
            if t is not None
        ]
        table = getattr(model, "pos_embed", None)
        no_embed_class = bool(getattr(model, "no_embed_class", False))
        if table is not None:
            rows = 0 if no_embed_class else self.num_prefix_tokens
            table = resize_positional_embedding(table[0], self.native_grid, grid, rows).to(x.dtype)
        if no_embed_class:
            x = x if table is None else x + table
            x = torch.cat(prefix + [x], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1)
            x = x if table is None else x + table
        return model.norm_pre(x), grid

    def final_norm(self, x: Tensor) -> Tensor:
        return self.model.norm(x)
