r"""SCLIP (Wang, Mei, Yuille, ECCV 2024): correlative self-attention in the last block."""

from __future__ import annotations

from typing import ClassVar, Tuple

from torch import Tensor

from captum_clip_surgery.adapters.base import BlockView, attention
from captum_clip_surgery.methods.base import LastBlockAttribution

__all__ = ["SCLIPAttribution"]


class SCLIPAttribution(LastBlockAttribution):
    r"""SCLIP maps: the last block attends with correlative self-attention.

    In the last attention block of the image tower the attention becomes
    ``A = softmax(q qᵀ/√d) + softmax(k kᵀ/√d)`` (a sum: each row adds up to 2),
    with ``q, k`` the block's own projections; the output ``A v`` goes through
    the block's output projection, and the residual and the MLP are kept:
    ``Z = X + ls1(out(A v))``, ``X' = Z + ls2(mlp(norm2(Z)))``. Every grid token of
    ``X'`` then goes through the pooling head applied per token
    (:meth:`~PoolingHead.dense`: final norm and projection for a class-token
    head). Row 0 of :meth:`token_features` is the unmodified model's embedding.
    Computed functionally from the model's own weights; nothing is modified.

    Defined for every image tower with attention blocks (any pooling head); a
    tower without them (CLIP ResNets, conv trunks) raises ``TypeError``. No
    feature surgery by default. The published segmentation protocol (logit scale
    40, 80 templates, short side 336, sliding window 224 / stride 112, no PAMR)
    is available through :func:`~captum_clip_surgery.segment`.

    The positional embedding is resized as the authors' code does it: bicubic with a
    scale factor of ``(n + 0.1) / n_native`` per side (``"bicubic_offset"``;
    ``positional_resize`` chooses another rule).

    Args:
        forward_func (CLIPZeroShotClassifier or nn.Module): classifier or model.
        texts (list[str], optional): texts, when a model is given.
        templates (list[str], optional): prompt templates, when a model is given.
        tokenizer (Callable, optional): tokenizer, when a model is given.
        positional_resize (str, optional): how the positional embedding is resized at
            another input size; default ``"bicubic_offset"``, the release's rule.

    Examples::

        >>> explainer = SCLIPAttribution(clf)
        >>> explainer.attribute(images, target="dog").shape
        torch.Size([8, 1, 224, 224])
    """

    method_name = "SCLIP"
    default_positional_resize: ClassVar[str] = "bicubic_offset"

    def last_block_tokens(
        self, block: BlockView, x: Tensor, q: Tensor, k: Tensor, v: Tensor, grid: Tuple[int, int]
    ) -> Tensor:
        r"""``X'``: correlative self-attention, residual and MLP kept."""
        o = attention(q, q, v, block.scale) + attention(k, k, v, block.scale)
        return block.residual(x, o)
