r"""Grad-ECLIP (Zhao et al., ICML 2024): gradient-weighted values of the last block."""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_clip_surgery.adapters.base import merge_heads
from captum_clip_surgery.core.architecture import run_blocks
from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.methods.base import (
    RelevanceMapAttribution,
    Tokenizer,
    require_attention_blocks,
)

__all__ = ["GradECLIPAttribution"]


class GradECLIPAttribution(RelevanceMapAttribution):
    r"""Grad-ECLIP maps: the last block's values weighted by the score's gradient.

    The last attention block is re-run with one attention head of the full width
    ``D`` (the model's heads merged): ``q, k, v`` are the block's own projections of
    ``norm1(X)``, and the class token attends with ``o = softmax(q_cls kᵀ/√D) v``;
    it then goes through the block's output projection, residual and MLP and the
    class-token head, giving the score ``S = cos(embedding, t̂)`` for the target
    text ``t``. With the signed gradient ``w = ∂S/∂o`` (``[D]``) and
    ``λ_i = cos(q_cls, k_i)`` min-max normalised over the grid tokens, the map is
    ``H_i = ReLU(λ_i Σ_c w_c v_{i,c})`` over the grid tokens, min-max normalised per
    map. One backward pass through the class token's path of the last block only;
    no ``create_graph``; gradients are enabled inside, so callers may run under
    ``torch.no_grad()``; the model is never modified.

    Defined for towers with attention blocks and a class-token head (the score is
    read from the class token); others raise ``TypeError``.

    The positional embedding is resized as the authors' code does it: bicubic to the
    grid (``positional_resize`` chooses another rule).

    Args:
        forward_func (CLIPZeroShotClassifier or nn.Module): the classifier
            explained, or a CLIP model (then ``texts`` is needed).
        texts (list[str], optional): texts, when a model is given.
        templates (list[str], optional): prompt templates, when a model is given.
        tokenizer (Callable, optional): tokenizer, when a model is given.
        positional_resize (str, optional): how the positional embedding is resized at
            another input size; default ``"bicubic"``, the release's rule.

    Examples::

        >>> GradECLIPAttribution(clf).attribute(images, target="dog").shape
        torch.Size([8, 1, 224, 224])
    """

    default_positional_resize: ClassVar[str] = "bicubic"
    head_kinds: ClassVar[Tuple[str, ...]] = ("token",)

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
        require_attention_blocks(self.adapter, "Grad-ECLIP", "the last block's attention")
        image = self.adapter.image
        if image.kind != "token" or image.num_prefix_tokens < 1:
            raise TypeError(
                "forward_func: Grad-ECLIP reads its score from the class token; this model's image "
                f"tower has a {image.kind!r} pooling head and {image.num_prefix_tokens} prefix "
                "tokens (use 'legrad' for attention-pool heads)"
            )

    def relevance(
        self, images: Tensor, target: Any = None, texts: Optional[Sequence[str]] = None
    ) -> Tensor:
        r"""``H`` of every grid token, ``[B, 1, h, w]`` (float32, not normalised).

        Args:
            images (Tensor): ``[B, 3, H, W]``.
            target: as in :meth:`attribute`.
            texts (list[str], optional): texts for this call.

        Returns:
            Tensor: float32 ``[B, 1, h, w]``.
        """
        image = self.adapter.image
        p = image.num_prefix_tokens
        with self.gradient_inputs(images, target, texts) as (prepared, index, e):
            t = e[index]
            block = image.blocks[-1]
            with torch.no_grad():
                x, grid = image.embed(prepared)
                x = run_blocks(image, x, grid, len(image.blocks) - 1)
                q, k, v = block.qkv(block.norm1(x))
                heads, d = q.shape[1], q.shape[-1]
                q, k, v = merge_heads(q), merge_heads(k), merge_heads(v)  # one head, width D
                width = q.shape[-1]
                probs = ((q[:, :1] * width**-0.5) @ k.transpose(-2, -1)).float().softmax(dim=-1)
                o = (probs.to(v.dtype) @ v).float()
            o.requires_grad_(True)
            split = o.to(v.dtype).reshape(o.shape[0], 1, heads, d).transpose(1, 2)
            cls = block.residual(x[:, :1], split)
            z = F.normalize(image.head.dense(cls)[:, 0].float(), dim=-1)
            (w,) = torch.autograd.grad((z * t).sum(), o)
        w = w[:, 0]  # [B, D]
        lam = F.cosine_similarity(q[:, :1].float(), k[:, p:].float(), dim=-1)  # [B, h*w]
        lo, hi = lam.amin(dim=1, keepdim=True), lam.amax(dim=1, keepdim=True)
        lam = torch.where(hi > lo, (lam - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(lam))
        heat = (lam * (v[:, p:].float() @ w[:, :, None])[..., 0]).clamp(min=0)
        return heat.detach().reshape(-1, 1, grid[0], grid[1])
