r"""Pieces of timm's Vision Transformer shared by the open_clip timm towers
(:mod:`~captum_clip_surgery.adapters.openclip_timm`) and the timm backbones
(:mod:`~captum_clip_surgery.adapters.backbone_timm`): timm's classes, looked up without
failing on older releases, and the view of timm's pre-norm ``Block``.
"""

from __future__ import annotations

import importlib
from typing import Any, Iterator, Optional, Tuple

from torch import Tensor, nn

from captum_clip_surgery.adapters._common import is_scale_or_identity
from captum_clip_surgery.adapters.base import BlockView, attention, merge_heads

__all__ = ["HybridEmbed", "PatchEmbed", "RelPosBlock", "TimmAttention", "TimmBlock",
           "TimmVisionTransformer", "_TimmBlockView", "_timm"]


def _timm(module: str, name: str) -> Any:
    r"""A timm class (or function) by module and name, or a placeholder class no object is
    an instance of (timm missing, or an older release without it; those towers are then
    refused)."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return type(f"_Missing{name}", (), {})


TimmVisionTransformer = _timm("timm.models.vision_transformer", "VisionTransformer")
TimmBlock = _timm("timm.models.vision_transformer", "Block")
TimmAttention = _timm("timm.layers", "Attention")
RelPosBlock = _timm("timm.models.vision_transformer_relpos", "RelPosBlock")
PatchEmbed = _timm("timm.layers", "PatchEmbed")
HybridEmbed = _timm("timm.layers", "HybridEmbed")


class _TimmBlockView(BlockView):
    r"""timm ``Block`` (``Attention``: fused qkv, per-head q/k norm, optional inner norm)
    and ``RelPosBlock`` (``RelPosAttention``: the same plus a relative position bias)."""

    def __init__(self, block: nn.Module, shared_bias: Optional[nn.Module] = None) -> None:
        attn = block.attn
        if getattr(attn, "gate", None) is not None:
            raise TypeError(
                "model: gated attention (an input-dependent gate on the attention output) is "
                "not supported"
            )
        self.block = block
        self.attn = attn
        self.num_heads = attn.num_heads
        self.head_dim = attn.head_dim
        self._relpos = isinstance(block, RelPosBlock)
        self._shared_bias = shared_bias

    def named_parameters(self) -> Iterator[Tuple[str, nn.Parameter]]:
        return self.block.named_parameters()

    def _bias(self, queries: int) -> Optional[Tensor]:
        r"""The relative position bias ``[1, heads, queries, N]`` (``None`` without one); the
        queries are the leading tokens of the stream."""
        if not self._relpos:
            return None
        rel_pos = getattr(self.attn, "rel_pos", None)
        source = rel_pos if rel_pos is not None else self._shared_bias
        return None if source is None else source.get_bias()[:, :, :queries]

    def norm1(self, x: Tensor) -> Tensor:
        return self.block.norm1(x)

    def qkv(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        b, n, _ = x.shape
        qkv = self.attn.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return self.attn.q_norm(q), self.attn.k_norm(k), v

    def attention_logits(self, q: Tensor, k: Tensor) -> Tensor:
        logits = (q * self.scale) @ k.transpose(-2, -1)
        bias = self._bias(q.shape[-2])
        return logits if bias is None else logits + bias.to(logits.dtype)

    def original_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        bias = self._bias(q.shape[-2])
        return attention(q, k, v, self.scale, None if bias is None else bias.to(q.dtype))

    def out(self, heads_out: Tensor) -> Tensor:
        x = merge_heads(heads_out)
        norm = getattr(self.attn, "norm", None)
        return self.attn.proj(x if norm is None else norm(x))

    def ls1(self, x: Tensor) -> Tensor:
        return self.block.ls1(x)

    @property
    def branch_is_affine(self) -> bool:
        return is_scale_or_identity(getattr(self.attn, "norm", None)) and is_scale_or_identity(
            self.block.ls1)

    def norm2(self, x: Tensor) -> Tensor:
        return self.block.norm2(x)

    def mlp(self, x: Tensor) -> Tensor:
        return self.block.mlp(x)

    def ls2(self, x: Tensor) -> Tensor:
        return self.block.ls2(x)

    def forward(self, x: Tensor) -> Tensor:
        if self._relpos:
            shared = None if self._shared_bias is None else self._shared_bias.get_bias()
            return self.block(x, shared_rel_pos=shared)
        return self.block(x)
