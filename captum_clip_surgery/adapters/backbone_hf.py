r"""Hugging Face vision transformers as second backbones.

- :class:`HFDinov2Backbone`: ``Dinov2Model`` (``facebook/dinov2-small`` / ``-base`` /
  ``-large``) and ``Dinov2WithRegistersModel`` (``facebook/dinov2-with-registers-base``):
  layer scale, registers, the MLP or SwiGLU feed-forward;
- :class:`HFViTBackbone`: ``ViTModel`` (DINO's ``facebook/dino-vitb8``,
  ``facebook/dino-vitb16``, ``facebook/dino-vits8``, ...).

Layers are read by their attributes in the layouts of transformers 4.4x
(``attention.attention.{query,key,value}``, ``attention.output.dense``,
``intermediate`` / ``output``) and 5.x (``attention.{q,k,v,o}_proj``, ``mlp``); the
model's decorated ``forward`` is never called (in transformers 5.x it installs
output-capturing hooks on first use), only its layers' and sub-modules' own.

The positional table is resized by the rule of DINO's / DINOv2's hub code by default
(``"bicubic_offset"``); :attr:`~VisionBackbone.library_positional_resize` is the model's
own ``interpolate_pos_encoding`` (``"bicubic"``; ``"bicubic_antialias"`` for
``Dinov2WithRegistersModel``), with which the views reproduce the model's forward at every
size. ``transformers`` is not imported by this module.
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from captum_clip_surgery.adapters.backbone import VisionBackbone
from captum_clip_surgery.adapters.base import (
    BlockView,
    attention,
    merge_heads,
    resize_positional_embedding,
    split_heads,
)

__all__ = ["HFDinov2Backbone", "HFViTBackbone"]


def _is_instance(model: object, names: Sequence[str]) -> bool:
    module = sys.modules.get("transformers")
    if module is None:
        return False
    for name in names:
        try:
            cls = getattr(module, name)
        except (AttributeError, ImportError):
            continue
        if isinstance(model, cls):
            return True
    return False


def _first(owner: nn.Module, paths: Sequence[str], where: str) -> Any:
    r"""The first of the dotted attribute ``paths`` that ``owner`` has."""
    for path in paths:
        obj: Any = owner
        for name in path.split("."):
            obj = getattr(obj, name, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    raise TypeError(
        f"backbone: the {where} ({type(owner).__qualname__}) has none of {', '.join(paths)}; "
        "expected the layout of transformers' ViT / DINOv2 layers"
    )


class _HFViTLayerView(BlockView):
    r"""A ``ViTLayer``, ``Dinov2Layer`` or ``Dinov2WithRegistersLayer`` (both layouts)."""

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        self._norm1 = _first(layer, ("norm1", "layernorm_before"), "layer")
        self._norm2 = _first(layer, ("norm2", "layernorm_after"), "layer")
        attn = layer.attention
        self._q = _first(attn, ("q_proj", "attention.query"), "attention")
        self._k = _first(attn, ("k_proj", "attention.key"), "attention")
        self._v = _first(attn, ("v_proj", "attention.value"), "attention")
        self._o = _first(attn, ("o_proj", "output.dense"), "attention")
        inner = getattr(attn, "attention", attn)
        heads = getattr(inner, "num_attention_heads", None) or getattr(inner, "num_heads", None)
        self.num_heads = int(heads)
        self.head_dim = self._q.out_features // self.num_heads
        self._ls1 = getattr(layer, "layer_scale1", None)
        self._ls2 = getattr(layer, "layer_scale2", None)
        self._mlp = getattr(layer, "mlp", None)
        if self._mlp is None:  # transformers 4.x ViTLayer: intermediate (dense + act), output.dense
            self._intermediate = _first(layer, ("intermediate",), "layer")
            self._output_dense = _first(layer, ("output.dense",), "layer")

    def norm1(self, x: Tensor) -> Tensor:
        return self._norm1(x)

    def qkv(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        h = self.num_heads
        return split_heads(self._q(x), h), split_heads(self._k(x), h), split_heads(self._v(x), h)

    def attention_logits(self, q: Tensor, k: Tensor) -> Tensor:
        return (q * self.scale) @ k.transpose(-2, -1)

    def original_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return attention(q, k, v, self.scale)

    def out(self, heads_out: Tensor) -> Tensor:
        return self._o(merge_heads(heads_out))

    def ls1(self, x: Tensor) -> Tensor:
        return x if self._ls1 is None else self._ls1(x)

    def norm2(self, x: Tensor) -> Tensor:
        return self._norm2(x)

    def mlp(self, x: Tensor) -> Tensor:
        if self._mlp is not None:
            return self._mlp(x)
        return self._output_dense(self._intermediate(x))

    def ls2(self, x: Tensor) -> Tensor:
        return x if self._ls2 is None else self._ls2(x)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layer(x)
        return out[0] if isinstance(out, (tuple, list)) else out


class _HFBackbone(VisionBackbone):
    r"""What the Hugging Face ViT and DINOv2 models share: embeddings (class token, optional
    registers, positional table with the class row), layers and the final ``layernorm``."""

    _classes: ClassVar[Tuple[str, ...]] = ()

    def __init__(self, model: nn.Module, positional_resize: Optional[str] = None) -> None:
        if not self.supports(model):
            raise TypeError(
                f"backbone: expected one of {', '.join(self._classes)}, got "
                f"{type(model).__qualname__}"
            )
        super().__init__(model, positional_resize)
        emb = model.embeddings
        self._projection = _first(emb, ("patch_embeddings.projection",), "embeddings")
        patch = self._projection.kernel_size
        self.patch_size = (int(patch[0]), int(patch[1]))
        table = emb.position_embeddings
        registers = getattr(emb, "register_tokens", None)
        self.num_register_tokens = 0 if registers is None else int(registers.shape[1])
        self.num_prefix_tokens = 1 + self.num_register_tokens
        side = int(round((table.shape[1] - 1) ** 0.5))
        if side * side != table.shape[1] - 1:
            raise TypeError(
                f"backbone: a positional table of {table.shape[1] - 1} grid rows is not square"
            )
        self.native_grid = (side, side)
        layers = getattr(model, "layers", None)
        if layers is None:
            layers = _first(model, ("encoder.layer", "encoder.layers"), "model")
        self.blocks = [_HFViTLayerView(layer) for layer in layers]

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return _is_instance(model, cls._classes)

    def embed_tokens(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        emb = self.model.embeddings
        x = self._projection(images.to(self._projection.weight.dtype))
        grid = (int(x.shape[-2]), int(x.shape[-1]))
        x = x.flatten(2).transpose(1, 2)
        cls_token = emb.cls_token.to(x.dtype).expand(x.shape[0], -1, -1)
        table = resize_positional_embedding(emb.position_embeddings[0], self.native_grid, grid, 1)
        x = torch.cat([cls_token, x], dim=1) + table.to(x.dtype)
        registers = getattr(emb, "register_tokens", None)
        if registers is not None:
            reg = registers.to(x.dtype).expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :1], reg, x[:, 1:]], dim=1)
        return x, grid

    def final_norm(self, x: Tensor) -> Tensor:
        return self.model.layernorm(x)


class HFDinov2Backbone(_HFBackbone):
    r"""Hugging Face ``Dinov2Model`` / ``Dinov2WithRegistersModel`` as a second backbone.

    Args:
        model (nn.Module): e.g. ``transformers.Dinov2Model.from_pretrained("facebook/dinov2-base")``;
            it is only read, never changed.
        positional_resize (str, optional): the positional rule; default ``"bicubic_offset"``
            (DINOv2's hub code); :attr:`library_positional_resize` for the model's own.

    Examples::

        >>> from transformers import Dinov2Model
        >>> backbone = HFDinov2Backbone(Dinov2Model.from_pretrained("facebook/dinov2-base"))
        >>> backbone.patch_size, backbone.native_grid
        ((14, 14), (37, 37))
    """

    family = "Hugging Face Dinov2Model / Dinov2WithRegistersModel (facebook/dinov2-*)"
    _classes = ("Dinov2Model", "Dinov2WithRegistersModel")

    @property
    def library_positional_resize(self) -> str:  # type: ignore[override]
        return "bicubic_antialias" if self.num_register_tokens else "bicubic"


class HFViTBackbone(_HFBackbone):
    r"""Hugging Face ``ViTModel`` as a second backbone (DINO's ``facebook/dino-vit*``).

    Args:
        model (nn.Module): e.g. ``transformers.ViTModel.from_pretrained("facebook/dino-vitb8")``;
            it is only read, never changed.
        positional_resize (str, optional): the positional rule; default ``"bicubic_offset"``
            (DINO's hub code); ``"bicubic"`` for the model's own
            (``interpolate_pos_encoding=True``).

    Examples::

        >>> from transformers import ViTModel
        >>> backbone = HFViTBackbone(ViTModel.from_pretrained("facebook/dino-vitb8"))
        >>> backbone.patch_size
        (8, 8)
    """

    family = "Hugging Face ViTModel (DINO: facebook/dino-vitb8, facebook/dino-vitb16, ...)"
    library_positional_resize = "bicubic"
    _classes = ("ViTModel",)
