r"""MaskCLIP (Zhou, Loy, Dai, ECCV 2022): the value path of the last attention layer."""

from __future__ import annotations

from typing import ClassVar, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from captum_clip_surgery.adapters.base import AttentionPoolHead
from captum_clip_surgery.core.architecture import dense_rows, run_blocks
from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.methods.base import FeatureSurgery, Tokenizer, TokenMapAttribution

__all__ = ["MaskCLIPAttribution"]


class MaskCLIPAttribution(TokenMapAttribution):
    r"""MaskCLIP maps: dense features from the value path of the last attention layer.

    Per pooling-head kind: with a class-token head the blocks before the last
    run unchanged; in the last block each patch token keeps its residual stream
    and adds the output projection of its own value (``x + ls1(out(v))`` with
    ``v`` from ``norm1(x)``: no query-key attention, no FFN); every token then
    goes through the final norm and projection. With an attention-pool head
    (CLIP ResNets, SigLIP MAP heads) the last attention layer is the pool: every
    grid token takes the pool's value path (``c_proj(v_proj(x))`` for a ResNet).
    Not defined for average-pooled towers (no attention to bypass): a
    ``TypeError`` says so. The pooled feature is the unmodified model's embedding. No feature surgery by default;
    every mode of :class:`CLIPSurgeryAttribution` can be asked for per call.

    The positional embedding is resized as MaskCLIP's mmsegmentation ViT does it:
    bicubic to the grid (``positional_resize`` chooses another rule).

    Args:
        forward_func (CLIPZeroShotClassifier or nn.Module): classifier or model.
        texts (list[str], optional): texts, when a model is given.
        templates (list[str], optional): prompt templates, when a model is given.
        tokenizer (Callable, optional): tokenizer, when a model is given.
        positional_resize (str, optional): how the positional embedding is resized at
            another input size; default ``"bicubic"``, the release's rule.

    Examples::

        >>> MaskCLIPAttribution(clf).attribute(images, target="dog").shape
        torch.Size([8, 1, 224, 224])
    """

    default_positional_resize: ClassVar[str] = "bicubic"
    head_kinds: ClassVar[Tuple[str, ...]] = ("token", "attention")
    default_feature_surgery: FeatureSurgery = "none"

    def __init__(
        self,
        forward_func: Union[CLIPZeroShotClassifier, nn.Module],
        texts: Optional[Sequence[str]] = None,
        templates: Optional[Sequence[str]] = None,
        tokenizer: Tokenizer = None,
        *,
        positional_resize: Optional[str] = None,
    ) -> None:
        super().__init__(forward_func, texts, templates, tokenizer,
                         positional_resize=positional_resize)
        if self.adapter.image.kind == "average":
            raise TypeError(
                "forward_func: MaskCLIP needs an attention layer to bypass; this model's image "
                "tower is average-pooled without attention (use 'surgery' or 'raw')"
            )

    def token_features(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        r"""MaskCLIP token features ``[B, 1 + h*w, D]`` and the grid ``(h, w)``."""
        image = self.adapter.image
        head, p = image.head, image.num_prefix_tokens
        x, grid = image.embed(images)
        if isinstance(head, AttentionPoolHead):
            x = run_blocks(image, x, grid, len(image.blocks))
            keys = head.prepare(x, p, grid)
            pooled = head.pool(x, p, grid)[:, None]
            return torch.cat([pooled, head.dense(keys)[:, dense_rows(image) :]], dim=1), grid
        x = run_blocks(image, x, grid, len(image.blocks) - 1)
        last = image.blocks[-1]
        q, k, v = last.qkv(last.norm1(x))
        dense = last.attention_residual(x[:, p:], v[:, :, p:])
        x = last.residual(x, last.original_attention(q, k, v))
        pooled = head.pool(x, p, grid)[:, None]
        return torch.cat([pooled, head.dense(dense)], dim=1), grid
