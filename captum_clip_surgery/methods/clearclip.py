r"""ClearCLIP (Lan et al., ECCV 2024): q-q attention, no residual and no MLP in the last block."""

from __future__ import annotations

from typing import ClassVar, Tuple

from torch import Tensor

from captum_clip_surgery.adapters.base import BlockView, attention
from captum_clip_surgery.methods.base import LastBlockAttribution

__all__ = ["ClearCLIPAttribution"]


class ClearCLIPAttribution(LastBlockAttribution):
    r"""ClearCLIP maps: the last block's attention branch alone, with q-q attention.

    In the last attention block of the image tower the attention becomes
    ``A = softmax(q qᵀ/√d)`` (the block's own queries against themselves), and
    the output is the attention branch alone, ``T = ls1(out(A v))``: the residual
    connection and the MLP are dropped (``ls1`` is the identity for models
    without layer scale, e.g. every OpenAI CLIP). Every grid token of ``T``
    then goes through the pooling head applied per token
    (:meth:`~PoolingHead.dense`: final norm and projection for a class-token
    head). Row 0 of :meth:`token_features` is the unmodified model's embedding.
    Computed functionally from the model's own weights; nothing is modified.

    Defined for every image tower with attention blocks (any pooling head); a
    tower without them (CLIP ResNets, conv trunks) raises ``TypeError``. No
    feature surgery by default. The published segmentation protocol (short side
    448, window 448 / stride 224, logit scale 50, a background threshold) is
    available through :func:`~captum_clip_surgery.segment`.

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

        >>> explainer = ClearCLIPAttribution(clf)
        >>> explainer.similarity(images).shape   # [B, T, h, w]
        torch.Size([8, 3, 14, 14])
    """

    method_name = "ClearCLIP"
    default_positional_resize: ClassVar[str] = "bicubic_offset"

    def last_block_tokens(
        self, block: BlockView, x: Tensor, q: Tensor, k: Tensor, v: Tensor, grid: Tuple[int, int]
    ) -> Tensor:
        r"""``T``: q-q attention branch, no residual, no MLP."""
        return block.branch(attention(q, q, v, block.scale))
