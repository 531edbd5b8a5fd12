r"""Tiny, seeded open_clip models with every timm image tower open_clip ships, built in code.

Each tower is a real timm architecture shrunk through its own constructor arguments and
registered in timm under a ``captum_test_*`` name, so that open_clip builds the
``TimmModel`` around it exactly as for its own configs (``timm_model_name``,
``timm_pool``, ``timm_proj``). Native open_clip towers with other heads (CoCa's
attentional pooler, CLIPA's average pool) are built directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Dict, Optional

import open_clip
import timm
import torch
from timm.models import register_model

from tests.models import TEXT_CFG, _randomize


def _vitamin(**kwargs: Any) -> Any:
    from timm.models.vitamin import GeGluMlp, VitCfg, VitConvCfg, _create_vitamin

    embed_cfg = VitCfg(embed_dim=(8, 16, 24), depths=(1, 1, 1), stem_width=8,
                       conv_cfg=VitConvCfg(norm_layer="layernorm2d", norm_eps=1e-6), head_type="1d")
    args = dict(embed_dim=24, depth=2, num_heads=2, mlp_layer=GeGluMlp, mlp_ratio=2.0,
                class_token=False, global_pool="avg", embed_cfg=embed_cfg, img_size=32)
    return _create_vitamin("vitamin_small_224", **dict(args, **kwargs))


def _mci_vit(**kwargs: Any) -> Any:
    from timm.models.vision_transformer_hybrid import ConvStem, _create_vision_transformer_hybrid

    backbone = ConvStem(channels=(8, 8, 32), stride=(4, 2, 2), kernel_size=(4, 2, 2), padding=0,
                        act_layer=torch.nn.GELU)
    args = dict(embed_dim=32, depth=2, num_heads=2, no_embed_class=True, img_size=32)
    return _create_vision_transformer_hybrid("vit_base_mci_224", backbone=backbone,
                                             embed_args=dict(proj=False), **dict(args, **kwargs))


def _fastvit(**kwargs: Any) -> Any:
    from timm.models.fastvit import RepConditionalPosEnc, _create_fastvit

    args = dict(layers=(1, 1, 1, 1), embed_dims=(32, 32, 64, 64), mlp_ratios=(2, 2, 2, 2),
                se_downsamples=(False, False, True, True),
                pos_embs=(None, None, None, partial(RepConditionalPosEnc, spatial_shape=(3, 3))),
                token_mixers=("repmixer", "repmixer", "repmixer", "attention"), lkc_use_act=True)
    return _create_fastvit("fastvit_mci1", **dict(args, **kwargs))


VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, mlp_ratio=2.0)

#: name -> (timm base architecture or builder, overrides)
TINY_TRUNKS: Dict[str, Any] = {
    "captum_test_siglip": ("vit_base_patch16_siglip_224", VIT),
    "captum_test_siglip_reg": ("vit_base_patch16_siglip_224",
                               dict(VIT, reg_tokens=2, qk_norm=True, init_values=0.5)),
    "captum_test_vitamin": (_vitamin, {}),
    "captum_test_mci_vit": (_mci_vit, {}),
    "captum_test_eva02": ("eva02_base_patch16_clip_224", dict(VIT, ref_feat_shape=(5, 5))),
    "captum_test_eva01": ("eva_giant_patch14_224", VIT),
    "captum_test_eva02_e": ("eva02_enormous_patch14_clip_224", VIT),
    "captum_test_pe_core": ("vit_pe_core_base_patch16_224",
                            dict(VIT, ref_feat_shape=(4, 4), attn_pool_num_heads=2)),
    "captum_test_relpos": ("vit_relpos_medium_patch16_cls_224", dict(VIT, rel_pos_dim=16)),
    "captum_test_convnext": ("convnext_tiny", dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))),
    "captum_test_fastvit": (_fastvit, {}),
    "captum_test_swin": ("swin_base_patch4_window7_224",
                         dict(img_size=64, window_size=4, embed_dim=8, depths=(1, 1, 1, 1),
                              num_heads=(1, 1, 2, 2))),
}


def _register(name: str) -> None:
    if timm.models.is_model(name):
        return
    base, overrides = TINY_TRUNKS[name]

    def entry(pretrained: bool = False, **kwargs: Any) -> Any:
        if callable(base):
            return base(**dict(overrides, **kwargs))
        return timm.create_model(base, pretrained=False, **dict(overrides, **kwargs))

    entry.__name__ = name
    entry.__module__ = __name__
    register_model(entry)


@dataclass
class Tower:
    r"""How open_clip wraps one tiny trunk (the vision config keys of its own configs)."""

    trunk: str
    pool: str
    proj: Optional[str]
    image_size: int = 32
    embed_dim: int = 24
    siglip: bool = False
    native_only: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)


#: tower id -> how open_clip builds it (mirrors the shipped configs of that family)
TOWERS: Dict[str, Tower] = {
    "siglip": Tower("captum_test_siglip", "map", "none", embed_dim=32, siglip=True),
    "siglip_reg_qknorm_ls": Tower("captum_test_siglip_reg", "map", "none", embed_dim=32, siglip=True),
    "vitamin": Tower("captum_test_vitamin", "", "linear"),
    "mobileclip_vit": Tower("captum_test_mci_vit", "token", None),
    "eva02": Tower("captum_test_eva02", "token", None),
    "eva01": Tower("captum_test_eva01", "token", None),
    "eva02_e_postnorm": Tower("captum_test_eva02_e", "token", None),
    "pe_core": Tower("captum_test_pe_core", "map", None),
    "relpos": Tower("captum_test_relpos", "", "linear", native_only=True),
    "convnext": Tower("captum_test_convnext", "", "linear", image_size=64),
    "convnext_mlp": Tower("captum_test_convnext", "", "mlp", image_size=64),
    "fastvit": Tower("captum_test_fastvit", "avg", None, image_size=64),
    "swin": Tower("captum_test_swin", "", "linear", image_size=64, native_only=True),
}

#: native open_clip towers beside the class-token ViT and ResNet of ``tests/models.py``
NATIVE: Dict[str, Dict[str, Any]] = {
    "clipa_avg": dict(image_size=32, patch_size=8, width=32, layers=3, head_width=16,
                      mlp_ratio=2.0, no_ln_pre=True, pool_type="avg", final_ln_after_pool=True),
    "vit_avg_ln_first": dict(image_size=32, patch_size=8, width=32, layers=3, head_width=16,
                             mlp_ratio=2.0, pool_type="avg"),
}


def tiny_timm_clip(tower: str, seed: int = 0) -> torch.nn.Module:
    r"""A tiny open_clip ``CLIP`` with the timm tower ``tower`` (a key of :data:`TOWERS`),
    every parameter and norm randomised, in eval mode."""
    spec = TOWERS[tower]
    _register(spec.trunk)
    torch.manual_seed(seed)
    vision = dict(timm_model_name=spec.trunk, timm_model_pretrained=False, timm_pool=spec.pool,
                  timm_proj=spec.proj, image_size=spec.image_size, **spec.extra)
    text = dict(TEXT_CFG)
    kwargs: Dict[str, Any] = {}
    if spec.siglip:  # SigLIP: bidirectional text pooled at the last position, a logit bias
        text.update(no_causal_mask=True, pool_type="last")
        kwargs.update(init_logit_bias=-2.0)
    model = open_clip.CLIP(embed_dim=spec.embed_dim, vision_cfg=vision, text_cfg=text, **kwargs)
    _randomize(model)
    return model.eval()


def tiny_native_clip(tower: str, seed: int = 0) -> torch.nn.Module:
    r"""A tiny open_clip ``CLIP`` with a native ViT of another head (``NATIVE`` key), or
    ``"coca"`` for a tiny CoCa with its attentional pooler."""
    torch.manual_seed(seed)
    if tower == "coca":
        vision = dict(image_size=32, patch_size=8, width=32, layers=3, head_width=16,
                      mlp_ratio=2.0, attentional_pool=True, attn_pooler_queries=5,
                      attn_pooler_heads=2, output_tokens=True)
        multimodal = dict(context_length=TEXT_CFG["context_length"], width=32, heads=2, layers=1,
                          vocab_size=TEXT_CFG["vocab_size"])
        text = dict(TEXT_CFG, embed_cls=True, output_tokens=True)
        model = open_clip.CoCa(embed_dim=24, multimodal_cfg=multimodal, text_cfg=text,
                               vision_cfg=vision)
        # open_clip leaves the caption decoder's projection as torch.empty (its init is
        # commented out): uninitialised memory, sometimes NaN, so give it seeded values
        with torch.no_grad():
            model.text_decoder.text_projection.normal_(std=multimodal["width"] ** -0.5)
    else:
        model = open_clip.CLIP(embed_dim=24, vision_cfg=NATIVE[tower], text_cfg=dict(TEXT_CFG))
    _randomize(model)
    return model.eval()


#: every tiny tower: id -> builder
BUILDERS: Dict[str, Callable[[], torch.nn.Module]] = {
    **{name: partial(tiny_timm_clip, name) for name in TOWERS},
    **{name: partial(tiny_native_clip, name) for name in list(NATIVE) + ["coca"]},
}


def native_size(model: torch.nn.Module) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)
