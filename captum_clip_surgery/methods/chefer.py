r"""Chefer et al. (ICCV 2021) gradient-weighted attention relevance for CLIP ViTs
(registry name ``"chefer"``)."""

from __future__ import annotations

from typing import Any, ClassVar, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip_surgery._validation import (
    check_int,
)
from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.methods.base import RelevanceMapAttribution, Tokenizer

__all__ = ["CLIPAttentionRelevance", "CheferAttribution"]


class CheferAttribution(RelevanceMapAttribution):
    r"""Generic attention-model explainability (Chefer, Gur, Wolf, ICCV 2021) for CLIP.

    The classifier's logit for the target text is back-propagated to every
    attention map ``A`` of the image tower (``[B, heads, N, N]``, the model's own
    softmax attention, computed functionally through the adapter — no hooks).
    Starting from the identity, relevance accumulates block by block:
    ``R ← R + mean_heads((∇A ⊙ A)⁺) · R``. The class-token row of ``R`` over the
    patch tokens is the map; it is min-max normalised and bilinearly upsampled.

    The positional embedding is resized bilinearly (the authors' code runs at the native
    size only).

    Args:
        forward_func (CLIPZeroShotClassifier or nn.Module): the classifier, or a CLIP
            model (then ``texts`` is needed); its image tower needs attention blocks
            and a class-token head (a ViT).
        start_block (int): first block included in the accumulation (default 0).
        texts (list[str], optional): texts, when a model is given.
        templates (list[str], optional): prompt templates, when a model is given.
        tokenizer (Callable, optional): tokenizer, when a model is given.
        positional_resize (str, optional): how the positional embedding is resized at
            another input size; default ``"bilinear"``, the release's rule.

    Formerly ``CLIPAttentionRelevance`` (still available under that name).

    Examples::

        >>> relevance = CheferAttribution(clf)
        >>> relevance.attribute(images, target="dog").shape
        torch.Size([8, 1, 224, 224])
    """

    default_positional_resize: ClassVar[str] = "bilinear"
    head_kinds: ClassVar[Tuple[str, ...]] = ("token",)

    def __init__(
        self,
        forward_func: Union[CLIPZeroShotClassifier, nn.Module],
        start_block: int = 0,
        texts: Optional[Sequence[str]] = None,
        templates: Optional[Sequence[str]] = None,
        tokenizer: Tokenizer = None,
        *,
        positional_resize: Optional[str] = None,
    ) -> None:
        super().__init__(forward_func, texts, templates, tokenizer,
                         positional_resize=positional_resize)
        image = self.adapter.image
        if image.kind != "token" or not image.blocks:
            raise TypeError(
                "forward_func: Chefer relevance needs attention blocks and a class-token "
                f"head; this model's image tower has {len(image.blocks)} attention blocks and "
                f"a {image.kind!r} head"
            )
        check_int("start_block", start_block, minimum=0, maximum=len(image.blocks) - 1)
        self.start_block = start_block

    def _logits_and_attentions(
        self, images: Tensor, text_features: Tensor
    ) -> Tuple[Tensor, List[Tensor], Tuple[int, int]]:
        image = self.adapter.image
        x, grid = image.embed(images)
        attentions = []
        for block in image.blocks:
            q, k, v = block.qkv(block.norm1(x))
            a = block.attention_logits(q, k).float().softmax(dim=-1)
            attentions.append(a)
            x = block.residual(x, a.to(v.dtype) @ v)
        pooled = image.head.pool(x, image.num_prefix_tokens, grid)
        logits = self.adapter.logits(F.normalize(pooled.float(), dim=-1), text_features)
        return logits, attentions, grid

    def relevance(
        self, images: Tensor, target: Any = None, texts: Optional[Sequence[str]] = None
    ) -> Tensor:
        r"""Class-token relevance of every patch token, ``[B, 1, h, w]`` (not normalised).

        Args:
            images (Tensor): ``[B, 3, H, W]``.
            target: as in :meth:`attribute`.
            texts (list[str], optional): texts for this call.

        Returns:
            Tensor: float32 ``[B, 1, h, w]``.
        """
        with self.gradient_inputs(images, target, texts) as (prepared, index, e):
            logits, attentions, (h, w) = self._logits_and_attentions(prepared, e)
            chosen = logits.gather(1, index.to(logits.device)[:, None]).sum()
            grads = torch.autograd.grad(chosen, attentions)
        b, n = prepared.shape[0], attentions[0].shape[-1]
        r = torch.eye(n, device=prepared.device).expand(b, n, n).clone()
        for a, g in list(zip(attentions, grads))[self.start_block :]:
            cam = (g * a).clamp(min=0).mean(dim=1).detach()
            r = r + cam @ r
        p = self.adapter.image.num_prefix_tokens
        return r[:, 0, p:].reshape(b, 1, h, w)


#: The former name of :class:`CheferAttribution`.
CLIPAttentionRelevance = CheferAttribution
