r"""Tiny, seeded open_clip models built in code for the tests."""

from __future__ import annotations

from functools import partial
from typing import Any, Dict, Optional

import open_clip
import torch

TEXT_CFG: Dict[str, Any] = dict(context_length=24, vocab_size=49408, width=32, heads=2, layers=2)


def tiny_vit(block_type: str = "default", seed: int = 0, **vision: Any) -> open_clip.CLIP:
    r"""A 7-block ViT CLIP on 32x32 inputs, patch 8 (a 4x4 grid)."""
    torch.manual_seed(seed)
    cfg = dict(image_size=32, patch_size=8, width=48, layers=7, head_width=16, mlp_ratio=2.0)
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


def one_patch_vit(patch_index: int = 2, evidence: Optional[torch.Tensor] = None) -> open_clip.CLIP:
    r"""A one-block ViT (16x16 input, 2x2 grid) whose image embedding depends only on
    patch ``patch_index``.

    The class token's query matches only that patch's key (built from the
    positional embedding), values carry the patch's mean red value, and the MLP
    is silenced. Every other patch influences the logits only through
    attention weights of order ``exp(-100)``.
    """
    torch.manual_seed(0)
    width = 16
    cfg = dict(image_size=16, patch_size=8, width=width, layers=1, head_width=16, mlp_ratio=1.0,
               no_ln_pre=True)
    model = open_clip.CLIP(embed_dim=8, vision_cfg=cfg, text_cfg=dict(TEXT_CFG))
    v = model.visual
    blk = v.transformer.resblocks[0]
    with torch.no_grad():
        v.conv1.weight.zero_()
        v.conv1.weight[0, 0] = 1.0 / 64  # channel 0: the patch's mean red value
        v.class_embedding.zero_()
        v.positional_embedding.zero_()
        v.positional_embedding[0, 1] = 10.0  # class token marker
        v.positional_embedding[1 + patch_index, 2] = 10.0  # the chosen patch's marker
        for j in range(4):  # other patches: negative red channel, ignored by the attention
            if j != patch_index:
                v.positional_embedding[1 + j, 0] = -5.0
        for ln in (blk.ln_1, blk.ln_2, v.ln_post):
            ln.weight.fill_(1.0)
            ln.bias.zero_()
        w = blk.attn.in_proj_weight
        w.zero_()
        blk.attn.in_proj_bias.zero_()
        w[0, 1] = 12.0  # q[0] <- class marker
        w[width + 0, 2] = 12.0  # k[0] <- patch marker
        w[2 * width :, :] = torch.eye(width)  # v = identity
        blk.attn.out_proj.weight.copy_(torch.eye(width))
        blk.attn.out_proj.bias.zero_()
        blk.mlp.c_proj.weight.zero_()
        blk.mlp.c_proj.bias.zero_()
        v.proj.copy_(torch.randn(width, 8))
        if evidence is not None:
            v.proj[0] = 10.0 * evidence
            v.proj[2] = 10.0 * evidence
    return model.eval()


def tiny_sam_predictor(seed: int = 0, device: str = "cpu") -> Any:
    r"""A randomly initialised Segment Anything predictor for 64-px inputs (meaningless
    masks; exercises the SAM call path)."""
    from segment_anything import SamPredictor
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    torch.manual_seed(seed)
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0,
            out_chans=16, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=False, window_size=0, global_attn_indexes=(),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=16, image_embedding_size=(4, 4), input_image_size=(64, 64), mask_in_chans=4
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=16,
            transformer=TwoWayTransformer(depth=1, embedding_dim=16, num_heads=2, mlp_dim=32),
            num_multimask_outputs=3, iou_head_depth=2, iou_head_hidden_dim=16,
        ),
    )
    return SamPredictor(sam.eval().to(device))
