r"""Image-side token features: the plain tower and CLIP Surgery's dual path.

Everything here is computed functionally from the model's own weights through
the adapter views (``docs/method.md`` §3–4): no module is replaced, no parameter
edited, no hook installed. Each rule is stated once per pooling-head kind
(``"token"``, ``"attention"``, ``"average"``); no family is named here.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from captum_clip_surgery._validation import check_blocks, check_choice, check_optional_int
from captum_clip_surgery.adapters.base import (
    AttentionPoolHead,
    BlockView,
    CLIPAdapter,
    ImageTowerView,
    attention,
)

__all__ = [
    "QUERY_TOKEN_RULES",
    "Tap",
    "dense_rows",
    "image_depth",
    "image_token_features",
    "pooled_image_features",
    "run_blocks",
    "self_attention",
    "validate_query_token",
    "validate_surgery_blocks",
]

#: Rules for the query (mean) token of a CLIP ResNet attention pool under surgery.
QUERY_TOKEN_RULES = ("release", "model")

#: Blocks with the dual path in the release (every ViT).
RELEASE_SURGERY_BLOCKS = 6


def self_attention(x: Tensor, scale: float) -> Tensor:
    r"""``softmax(x xᵀ · scale) x`` per head, e.g. value-value attention.

    Args:
        x (Tensor): ``[B, heads, N, d]``.
        scale (float): logit scale, ``d ** -0.5`` in the release.

    Returns:
        Tensor: ``[B, heads, N, d]``.
    """
    return attention(x, x, x, scale)


def image_depth(adapter: CLIPAdapter) -> int:
    r"""Number of GradCAM grid layers: one per attention block, or one (the
    stream entering the head) for towers without attention blocks."""
    return max(len(adapter.image.blocks), 1)


def validate_surgery_blocks(adapter: CLIPAdapter, surgery_blocks: object) -> int:
    r"""Check ``surgery_blocks`` against the image tower and resolve the default.

    ``None`` means the release's 6 blocks (all blocks of a shallower tower; 0 for
    a tower without attention blocks). An explicit value must lie in
    ``[1, number of blocks]``; towers without attention blocks (CLIP ResNets,
    conv trunks) accept only ``None``.
    """
    depth = len(adapter.image.blocks)
    check_optional_int("surgery_blocks", surgery_blocks)
    if surgery_blocks is None:
        return min(RELEASE_SURGERY_BLOCKS, depth)
    if depth == 0:
        kind = adapter.image.kind
        where = (
            "the surgery acts on its attention pool" if kind == "attention"
            else "only feature surgery applies"
        )
        raise ValueError(
            f"surgery_blocks: this image tower has no attention blocks ({where}); leave "
            f"surgery_blocks unset (None), got {surgery_blocks}"
        )
    return check_blocks("surgery_blocks", surgery_blocks, depth)


def validate_query_token(rule: object) -> str:
    r"""Check the ``query_token`` rule of an attention pool's mean token."""
    return str(check_choice("query_token", rule, QUERY_TOKEN_RULES))


#: ``tap(index, tokens, grid) -> tokens`` called on the stream entering each block (for
#: towers without blocks: once, index 0, on the stream entering the head).
Tap = Callable[[int, Tensor, Tuple[int, int]], Tensor]


def run_blocks(
    image: ImageTowerView, x: Tensor, grid: Tuple[int, int], stop: int, tap: Optional[Tap] = None
) -> Tensor:
    r"""Run blocks ``[0, stop)`` of the tower exactly as the model does."""
    for i, block in enumerate(list(image.blocks)[:stop]):
        if tap is not None:
            x = tap(i, x, grid)
        x = block.forward(x)
    return x


def dense_rows(image: ImageTowerView) -> int:
    r"""Index of the first grid row in the output of the head's ``prepare`` / stream."""
    head = image.head
    if isinstance(head, AttentionPoolHead) and head.query_kind == "mean":
        return 1
    return image.num_prefix_tokens


def _dual_path_block(
    block: BlockView, x: Tensor, x_new: Optional[Tensor], stream_needed: bool
) -> Tuple[Tensor, Tensor]:
    r"""One surgery block. ``x`` is the original stream, ``x_new`` the v-v stream
    (``None`` in the first surgery block, where it starts from ``x``). Without
    ``stream_needed`` the original stream is computed for its first token alone
    (all a class-token head reads after the last block)."""
    q, k, v = block.qkv(block.norm1(x))
    x_new = block.attention_residual(x if x_new is None else x_new, self_attention(v, block.scale))
    if not stream_needed:
        q, x = q[:, :, :1], x[:, :1]
    return block.residual(x, block.original_attention(q, k, v)), x_new


def image_token_features(
    adapter: CLIPAdapter,
    images: Tensor,
    surgery_blocks: int,
    surgery: bool = True,
    query_token: str = "release",
) -> Tuple[Tensor, Tuple[int, int]]:
    r"""Joint-space features: row 0 the pooled feature, then every grid location.

    Rules per head kind (``docs/method.md`` §4):

    - architecture surgery runs the dual path in the last ``surgery_blocks``
      attention blocks whatever the head; the original stream gives the pooled
      feature, the v-v stream the dense features;
    - ``"token"``: dense = ``projection(post_norm(token))`` per token;
    - ``"attention"``: with ``surgery`` and a mean-token query (CLIP ResNets) the
      pool's value-value attention over all its tokens (``query_token="release"``
      also takes row 0 from it, as the release does; ``"model"`` keeps the model's
      own pool); with a probe query (MAP) the head's value path per token; without
      ``surgery`` every token is a query of the head's own attention (raw map);
    - ``"average"``: the linear head at every location.

    Args:
        adapter (CLIPAdapter): the model's adapter.
        images (Tensor): ``[B, 3, H, W]`` on the model's device and dtype.
        surgery_blocks (int): last blocks with the dual path (0: the plain stream).
        surgery (bool): apply the head's surgery rule (``False``: the raw map).
        query_token (str): ``"release"`` or ``"model"``, see above.

    Returns:
        tuple: ``([B, 1 + h * w, D]`` features, not normalised; ``(h, w)`` grid).
    """
    image = adapter.image
    head = image.head
    p = image.num_prefix_tokens
    x, grid = image.embed(images)
    depth = len(image.blocks)
    start = depth - surgery_blocks
    x = run_blocks(image, x, grid, start)
    x_new: Optional[Tensor] = None
    for i in range(start, depth):
        needed = head.kind != "token" or i < depth - 1
        x, x_new = _dual_path_block(image.blocks[i], x, x_new, needed)
    stream = x if x_new is None else x_new
    pooled = head.pool(x, p, grid)[:, None]
    if isinstance(head, AttentionPoolHead):
        keys = head.prepare(stream, p, grid)
        first = dense_rows(image)
        if not surgery:
            dense = head.attend(keys, keys)
        elif head.query_kind == "mean":
            vv = self_attention(head.split_heads(head.v(keys)), head.scale)
            dense = head.finish(head.out(head.merge_heads(vv)))
            if query_token == "release":
                pooled = dense[:, :1]
        else:
            dense = head.dense(keys)
        return torch.cat([pooled, dense[:, first:]], dim=1), grid
    return torch.cat([pooled, head.dense(stream[:, p:])], dim=1), grid


def pooled_image_features(adapter: CLIPAdapter, images: Tensor, tap: Optional[Tap] = None) -> Tensor:
    r"""The unmodified model's image embedding ``[B, D]``, computed through the views.

    Equal to the model's own image forward at its native resolution, and defined
    at any resolution (positional embeddings resized per call). ``tap`` lets a
    caller see or re-route intermediate tokens (used for GradCAM layers).

    Args:
        adapter (CLIPAdapter): the model's adapter.
        images (Tensor): ``[B, 3, H, W]`` on the model's device and dtype.
        tap (Callable, optional): ``tap(index, x, grid) -> x`` with ``x`` the
            ``[B, P + h*w, C]`` stream entering block ``index`` (towers without
            blocks: the stream entering the head, index 0).

    Returns:
        Tensor: ``[B, D]`` (not normalised).
    """
    image = adapter.image
    x, grid = image.embed(images)
    x = run_blocks(image, x, grid, len(image.blocks), tap)
    if not image.blocks and tap is not None:
        x = tap(0, x, grid)
    return image.head.pool(x, image.num_prefix_tokens, grid)
