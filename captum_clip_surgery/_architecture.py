r"""Image-side token features: the plain tower and CLIP Surgery's dual path.

Everything here is computed functionally from the model's own weights through
the adapter views (METHOD §2–4): no module is replaced, no parameter edited, no
hook installed.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_clip_surgery.adapters.base import (
    AttentionPoolView,
    BlockView,
    CLIPAdapter,
    ResNetImageView,
    ViTImageView,
)

__all__ = [
    "Tap",
    "image_depth",
    "image_token_features",
    "pool_attention",
    "pooled_image_features",
    "self_attention",
    "validate_surgery_blocks",
]


def self_attention(x: Tensor, scale: float) -> Tensor:
    r"""``softmax(x xᵀ · scale) x`` per head, e.g. value-value attention.

    Args:
        x (Tensor): ``[B, heads, N, d]``.
        scale (float): logit scale, ``d ** -0.5`` in the release.

    Returns:
        Tensor: ``[B, heads, N, d]``.
    """
    return F.scaled_dot_product_attention(x, x, x, scale=scale)


def image_depth(adapter: CLIPAdapter) -> int:
    r"""Number of attention layers a surgery can act on (ViT blocks; 1 for a ResNet pool)."""
    if isinstance(adapter.image, ViTImageView):
        return len(adapter.image.blocks)
    return 1


def validate_surgery_blocks(adapter: CLIPAdapter, surgery_blocks: object) -> int:
    r"""Check ``surgery_blocks`` against the image tower's depth.

    For ResNet towers the attention pool is the only attention layer, so any
    value from 1 up is accepted and the pool gets the surgery.
    """
    if isinstance(surgery_blocks, bool) or not isinstance(surgery_blocks, int):
        raise TypeError(
            f"surgery_blocks: expected an int, got {type(surgery_blocks).__name__}"
        )
    if isinstance(adapter.image, ResNetImageView):
        if surgery_blocks < 1:
            raise ValueError(f"surgery_blocks: expected >= 1, got {surgery_blocks}")
        return surgery_blocks
    depth = image_depth(adapter)
    if not 1 <= surgery_blocks <= depth:
        raise ValueError(
            f"surgery_blocks: expected an int in [1, {depth}] (the image tower has {depth} "
            f"blocks), got {surgery_blocks}"
        )
    return surgery_blocks


def _vit_tokens(
    view: ViTImageView, images: Tensor, surgery_blocks: int
) -> Tuple[Tensor, Tuple[int, int]]:
    x, grid = view.embed(images)
    blocks = list(view.blocks)
    start = len(blocks) - surgery_blocks
    for block in blocks[:start]:
        x = block.forward(x)
    if surgery_blocks == 0:
        return view.features(x), grid
    x_new: Optional[Tensor] = None
    for i, block in enumerate(blocks[start:], start=start):
        last = i == len(blocks) - 1
        x, x_new = _dual_path_block(block, x, x_new, cls_only=last)
    assert x_new is not None
    tokens = torch.cat([x[:, :1], x_new[:, 1:]], dim=1)
    return view.features(tokens), grid


def _dual_path_block(
    block: BlockView, x: Tensor, x_new: Optional[Tensor], cls_only: bool
) -> Tuple[Tensor, Tensor]:
    r"""One surgery block. ``x`` is the original stream, ``x_new`` the v-v stream
    (``None`` in the first surgery block, where it starts from ``x``). With
    ``cls_only`` the original stream is computed for the class token alone,
    which is all the output needs from it after the last block."""
    q, k, v = block.qkv(block.norm1(x))
    o_vv = block.ls1(block.out(self_attention(v, block.scale)))
    x_new = (x if x_new is None else x_new) + o_vv
    if cls_only:
        q, x = q[:, :, :1], x[:, :1]
    x = x + block.ls1(block.out(block.original_attention(q, k, v)))
    x = x + block.ls2(block.mlp(block.norm2(x)))
    return x, x_new


def pool_attention(pool: AttentionPoolView, queries: Tensor, x: Tensor) -> Tensor:
    r"""The attention pool's own q-k attention for ``queries`` over tokens ``x``,
    through the output projection: ``[B, Nq, D]``."""
    q = pool.split_heads(pool.q(queries))
    k, v = pool.split_heads(pool.k(x)), pool.split_heads(pool.v(x))
    out = F.scaled_dot_product_attention(q, k, v, scale=pool.head_dim**-0.5)
    return pool.c(pool.merge_heads(out))


def _resnet_tokens(
    view: ResNetImageView, images: Tensor, surgery: bool
) -> Tuple[Tensor, Tuple[int, int]]:
    pool = view.pool
    fmap = view.trunk(images)
    grid = (fmap.shape[-2], fmap.shape[-1])
    x = pool.tokens(fmap)
    if not surgery:
        return pool_attention(pool, x, x), grid
    cls = pool_attention(pool, x[:, :1], x)
    new = pool.c(pool.merge_heads(self_attention(pool.split_heads(pool.v(x)), pool.head_dim**-0.5)))
    return torch.cat([cls, new[:, 1:]], dim=1), grid


def image_token_features(
    adapter: CLIPAdapter, images: Tensor, surgery_blocks: int
) -> Tuple[Tensor, Tuple[int, int]]:
    r"""Joint-space features of every image token (class / pooled token first).

    Args:
        adapter (CLIPAdapter): the model's adapter.
        images (Tensor): ``[B, 3, H, W]`` on the model's device and dtype.
        surgery_blocks (int): 0 for the plain tower (raw CLIP tokens); otherwise
            the number of last ViT blocks with the dual path (any positive value
            selects the surgery attention pool of a ResNet).

    Returns:
        tuple: ``([B, 1 + h * w, D]`` features, not normalised; ``(h, w)`` grid).
    """
    image = adapter.image
    if isinstance(image, ViTImageView):
        return _vit_tokens(image, images, surgery_blocks)
    return _resnet_tokens(image, images, surgery_blocks > 0)


#: ``tap(index, tokens, grid) -> tokens`` called on the tokens entering each ViT block (or
#: once on a ResNet trunk's feature map); it may route the tokens through a module.
Tap = Callable[[int, Tensor, Tuple[int, int]], Tensor]


def pooled_image_features(adapter: CLIPAdapter, images: Tensor, tap: Optional[Tap] = None) -> Tensor:
    r"""The unmodified model's image embedding ``[B, D]``, computed through the views.

    Equal to the model's own ``encode_image`` at its native resolution, and defined
    at any resolution (positional embeddings resized per call). ``tap`` lets a
    caller see or re-route intermediate tokens (used for GradCAM layers).

    Args:
        adapter (CLIPAdapter): the model's adapter.
        images (Tensor): ``[B, 3, H, W]`` on the model's device and dtype.
        tap (Callable, optional): ``tap(index, x, grid) -> x``; for a ViT ``x`` holds the
            ``[B, 1 + h*w, C]`` tokens entering block ``index``; for a ResNet it is the
            trunk's ``[B, C, h, w]`` feature map and ``index`` is 0.

    Returns:
        Tensor: ``[B, D]`` (not normalised).
    """
    image = adapter.image
    if isinstance(image, ViTImageView):
        x, grid = image.embed(images)
        for i, block in enumerate(image.blocks):
            if tap is not None:
                x = tap(i, x, grid)
            x = block.forward(x)
        return image.features(x[:, :1])[:, 0]
    pool = image.pool
    fmap = image.trunk(images)
    if tap is not None:
        fmap = tap(0, fmap, (fmap.shape[-2], fmap.shape[-1]))
    x = pool.tokens(fmap)
    return pool_attention(pool, x[:, :1], x)[:, 0]
