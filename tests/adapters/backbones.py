r"""Tiny, seeded second backbones built from config for the tests: timm ViTs shaped like DINO
(class token, positional row for it) and DINOv2 with registers (no positional row for the
prefix, layer scale), and Hugging Face ``ViTModel``, ``Dinov2Model`` and
``Dinov2WithRegistersModel``. The real checkpoints they stand for are
``vit_base_patch8_224.dino``, ``vit_base_patch14_reg4_dinov2.lvd142m``,
``facebook/dino-vitb8``, ``facebook/dinov2-base`` and
``facebook/dinov2-with-registers-base``."""

from __future__ import annotations

from typing import Any

import torch

from tests.models import _randomize

#: Every tiny backbone: 32x32 native input, patch 4 (an 8x8 grid), width 24, 3 heads, 2 blocks.
NATIVE = 32
PATCH = 4


def timm_dino(seed: int = 0, patch: int = PATCH, dynamic: bool = True, **kwargs: Any) -> Any:
    r"""A DINO-shaped timm ``VisionTransformer`` (``vit_base_patch8_224.dino`` in small)."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    args = dict(img_size=NATIVE, patch_size=patch, embed_dim=24, depth=2, num_heads=3,
                mlp_ratio=2.0, num_classes=0, dynamic_img_size=dynamic)
    args.update(kwargs)
    model = VisionTransformer(**args)
    _randomize(model)
    return model.eval()


def timm_dinov2_reg(seed: int = 0, dynamic: bool = True) -> Any:
    r"""A DINOv2-with-registers-shaped timm ViT (``vit_base_patch14_reg4_dinov2.lvd142m``):
    2 registers, no positional rows for the prefix, layer scale."""
    return timm_dino(seed, dynamic=dynamic, reg_tokens=2, no_embed_class=True, init_values=0.5)


def hf_vit(seed: int = 0, attn: str = "eager") -> Any:
    r"""A DINO-shaped Hugging Face ``ViTModel`` (``facebook/dino-vitb8`` in small)."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    cfg = ViTConfig(hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                    intermediate_size=48, image_size=NATIVE, patch_size=PATCH,
                    attn_implementation=attn)
    model = ViTModel(cfg, add_pooling_layer=False)
    _randomize(model)
    return model.eval()


def hf_dinov2(seed: int = 0, registers: int = 0, attn: str = "eager") -> Any:
    r"""A Hugging Face ``Dinov2Model`` (``facebook/dinov2-base`` in small) or, with
    ``registers``, a ``Dinov2WithRegistersModel``."""
    import transformers

    torch.manual_seed(seed)
    args = dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=3, mlp_ratio=2,
                image_size=NATIVE, patch_size=PATCH, layerscale_value=0.5,
                attn_implementation=attn)
    if registers:
        cfg = transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **args)
        model = transformers.Dinov2WithRegistersModel(cfg)
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**args))
    _randomize(model)
    return model.eval()
