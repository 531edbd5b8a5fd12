r"""Tiny, seeded open_clip models built in code for the tests."""

from __future__ import annotations

from typing import Any, Dict

import open_clip
import torch

TEXT_CFG: Dict[str, Any] = dict(context_length=24, vocab_size=49408, width=32, heads=2, layers=2)


def tiny_vit(block_type: str = "default", seed: int = 0, **vision: Any) -> open_clip.CLIP:
    r"""A 4-block ViT CLIP on 32x32 inputs, patch 8 (a 4x4 grid)."""
    torch.manual_seed(seed)
    cfg = dict(image_size=32, patch_size=8, width=48, layers=4, head_width=16, mlp_ratio=2.0)
    cfg.update(vision)
    if block_type != "default":
        cfg["block_type"] = block_type
    model = open_clip.CLIP(embed_dim=24, vision_cfg=cfg, text_cfg=dict(TEXT_CFG))
    _randomize(model)
    return model.eval()


def tiny_resnet(seed: int = 0) -> open_clip.CLIP:
    r"""A ModifiedResNet CLIP on 64x64 inputs (a 2x2 pool grid)."""
    torch.manual_seed(seed)
    cfg = dict(image_size=64, layers=(1, 1, 1, 1), width=8, head_width=32)
    model = open_clip.CLIP(embed_dim=24, vision_cfg=cfg, text_cfg=dict(TEXT_CFG))
    _randomize(model)
    return model.eval()


def _randomize(model: torch.nn.Module) -> None:
    r"""Give every parameter and norm a non-trivial value (zero-initialised biases,
    unit norms and zeroed bn3 weights would hide mistakes)."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                continue
            if p.ndim <= 1:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g) if "weight" in name
                        else 0.1 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(1.0 + 0.2 * torch.rand(m.running_var.shape, generator=g))
