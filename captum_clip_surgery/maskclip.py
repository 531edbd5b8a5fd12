r"""MaskCLIP (Zhou, Loy, Dai, ECCV 2022): the value path of the last attention layer."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from captum_clip_surgery._architecture import pool_attention
from captum_clip_surgery._map_attribution import FeatureSurgery, TokenMapAttribution
from captum_clip_surgery.adapters.base import ViTImageView

__all__ = ["MaskCLIPAttribution"]


class MaskCLIPAttribution(TokenMapAttribution):
    r"""MaskCLIP maps: dense features from the value path of the last attention layer.

    ViT: the blocks before the last run unchanged; in the last block each patch
    token keeps its residual stream and adds the output projection of its own
    value (``x + ls1(out(v))`` with ``v`` from ``norm1(x)``: no query-key
    attention, no FFN); every token then goes through the final norm and
    projection. ResNet: every grid token is mapped by the attention pool's value
    and output projections (``c_proj(v_proj(x))``). The class token is the
    unmodified model's embedding in both cases. No feature surgery by default;
    every mode of :class:`CLIPSurgeryAttribution` can be asked for per call.

    Args:
        forward_func (CLIPZeroShotClassifier or nn.Module): classifier or model.
        texts (list[str], optional): texts, when a model is given.
        templates (list[str], optional): prompt templates, when a model is given.
        tokenizer (Callable, optional): tokenizer, when a model is given.

    Examples::

        >>> MaskCLIPAttribution(clf).attribute(images, target="dog").shape
        torch.Size([8, 1, 224, 224])
    """

    default_feature_surgery: FeatureSurgery = "none"

    def token_features(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        r"""MaskCLIP token features ``[B, 1 + h*w, D]`` and the grid ``(h, w)``."""
        image = self.adapter.image
        if isinstance(image, ViTImageView):
            x, grid = image.embed(images)
            blocks = list(image.blocks)
            for block in blocks[:-1]:
                x = block.forward(x)
            last = blocks[-1]
            q, k, v = last.qkv(last.norm1(x))
            dense = x + last.ls1(last.out(v))
            cls = x[:, :1] + last.ls1(last.out(last.original_attention(q[:, :, :1], k, v)))
            cls = cls + last.ls2(last.mlp(last.norm2(cls)))
            return image.features(torch.cat([cls, dense[:, 1:]], dim=1)), grid
        pool = image.pool
        fmap = image.trunk(images)
        x = pool.tokens(fmap)
        cls = pool_attention(pool, x[:, :1], x)
        dense = pool.c(pool.v(x))
        return torch.cat([cls, dense[:, 1:]], dim=1), (fmap.shape[-2], fmap.shape[-1])
