r"""Shared pieces of the training-free dense methods (GEM, SCLIP, ClearCLIP, NACLIP).

Every method here changes how the last attention block(s) of an image tower
mix the tokens and then reads the resulting tokens through the pooling head
applied per token (:meth:`PoolingHead.dense`). This module holds what they
share: the check that the tower has attention blocks, the dense read-out per
head kind, the model's own pooled embedding next to a modified last block, and
the base class of the methods that change the last block only.

Everything is computed functionally through the adapter views; no module is
replaced, no parameter edited, no hook installed.
"""

from __future__ import annotations

import abc
from typing import Tuple

import torch
from torch import Tensor

from captum_clip_surgery._architecture import dense_rows, run_blocks
from captum_clip_surgery._map_attribution import FeatureSurgery, TokenMapAttribution
from captum_clip_surgery.adapters.base import (
    AttentionPoolHead,
    BlockView,
    CLIPAdapter,
    ImageTowerView,
)

__all__ = [
    "LastBlockAttribution",
    "dense_features",
    "original_last_block_pooled",
    "require_attention_blocks",
]


def require_attention_blocks(adapter: CLIPAdapter, method: str, what: str) -> None:
    r"""Raise ``TypeError`` (naming ``forward_func``) when the tower has no attention blocks.

    Args:
        adapter (CLIPAdapter): the model's adapter.
        method (str): the method's display name, e.g. ``"SCLIP"``.
        what (str): what the method changes, e.g. ``"the last block's attention"``.
    """
    image = adapter.image
    if not image.blocks:
        raise TypeError(
            f"forward_func: {method} changes {what}, but this model's image tower has no "
            f"attention blocks (a conv trunk; pooling head kind {image.kind!r}); use a tower "
            "with attention blocks (ViT), or 'surgery' / 'raw' / 'maskclip' for this model"
        )


def dense_features(image: ImageTowerView, tokens: Tensor, grid: Tuple[int, int]) -> Tensor:
    r"""The head applied to every grid token of a stream, ``[B, h*w, D]``.

    ``tokens`` is a ``[B, P + h*w, C]`` stream (``P`` prefix tokens). Class-token and
    average heads apply :meth:`~PoolingHead.dense` to the grid tokens; attention-pool
    heads first :meth:`~AttentionPoolHead.prepare` the stream (positional table, norm)
    and apply their value path to the grid rows of the prepared tokens.
    """
    head = image.head
    if isinstance(head, AttentionPoolHead):
        keys = head.prepare(tokens, image.num_prefix_tokens, grid)
        return head.dense(keys)[:, dense_rows(image) :]
    return head.dense(tokens[:, image.num_prefix_tokens :])


def original_last_block_pooled(
    image: ImageTowerView,
    block: BlockView,
    x: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    grid: Tuple[int, int],
) -> Tensor:
    r"""The model's own embedding ``[B, D]`` from the stream ``x`` entering its last block.

    ``q, k, v`` are the last block's projections of ``norm1(x)`` (shared with the
    method's own path). A class-token head reads the first token only, so the
    block is then run for that query row alone (the keys and values are all
    tokens, as in the model); other heads get the full block.
    """
    if image.head.kind == "token":
        q, x = q[:, :, :1], x[:, :1]
    x = x + block.ls1(block.out(block.original_attention(q, k, v)))
    x = x + block.ls2(block.mlp(block.norm2(x)))
    return image.head.pool(x, image.num_prefix_tokens, grid)


class LastBlockAttribution(TokenMapAttribution, abc.ABC):
    r"""Base of the methods that change the last attention block only.

    Blocks before the last run unchanged; in the last block ``q, k, v`` come from
    ``norm1`` of the stream as in the model, and :meth:`last_block_tokens` builds
    the method's output tokens from them. Row 0 of :meth:`token_features` is the
    unmodified model's embedding; rows 1.. are the head applied per grid token of
    the method's output (:func:`dense_features`).
    """

    default_feature_surgery: FeatureSurgery = "none"
    #: display name used in error messages
    method_name: str = ""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        require_attention_blocks(self.adapter, self.method_name, "the last block's attention")

    @abc.abstractmethod
    def last_block_tokens(
        self, block: BlockView, x: Tensor, q: Tensor, k: Tensor, v: Tensor, grid: Tuple[int, int]
    ) -> Tensor:
        r"""The method's output tokens ``[B, P + h*w, C]`` of the last block.

        Args:
            block (BlockView): the last block.
            x (Tensor): the stream entering it, ``[B, P + h*w, C]``.
            q, k, v (Tensor): its projections of ``norm1(x)``, ``[B, heads, N, d]``.
            grid (tuple[int, int]): the patch grid ``(h, w)``.
        """

    def token_features(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        r"""Token features ``[B, 1 + h*w, D]`` (row 0 the model's own embedding) and
        the grid ``(h, w)``."""
        image = self.adapter.image
        x, grid = image.embed(images)
        x = run_blocks(image, x, grid, len(image.blocks) - 1)
        block = image.blocks[-1]
        q, k, v = block.qkv(block.norm1(x))
        tokens = self.last_block_tokens(block, x, q, k, v, grid)
        pooled = original_last_block_pooled(image, block, x, q, k, v, grid)
        return torch.cat([pooled[:, None], dense_features(image, tokens, grid)], dim=1), grid
