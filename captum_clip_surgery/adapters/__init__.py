r"""Model adapters: the only place that knows model-family classes.

The protocol (:mod:`~captum_clip_surgery.adapters.base`) and the registry
(:mod:`~captum_clip_surgery.adapters.registry`) are imported eagerly; each family's
adapter module (open_clip, its timm towers, OpenAI ``clip``, Hugging Face) only when one
of its names is used or a model of its family is adapted, so importing the package
never imports open_clip, transformers, timm or ``clip``.

Second backbones beside CLIP (DINO, DINOv2, a CLIP image tower) have their own small
protocol (:mod:`~captum_clip_surgery.adapters.backbone`: :class:`VisionBackbone`) and
registry (:func:`get_backbone`, :func:`register_backbone`, the entry-point group
``captum_clip_surgery.backbones``), with one module per family (``backbone_timm``,
``backbone_hf``), imported the same way.
"""

from __future__ import annotations

from typing import Dict

from captum_clip_surgery._lazy import lazy_exports
from captum_clip_surgery.adapters.backbone import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CLIPTowerBackbone,
    VisionBackbone,
    aligned_size,
)
from captum_clip_surgery.adapters.backbone_registry import (
    BACKBONE_ENTRY_POINTS,
    get_backbone,
    register_backbone,
    registered_backbones,
    supported_backbones,
    unregister_backbone,
)
from captum_clip_surgery.adapters.base import (
    POSITIONAL_RESIZE_MODES,
    AttentionPoolHead,
    AveragePoolHead,
    BlockView,
    ClassTokenHead,
    CLIPAdapter,
    ImageTowerView,
    PoolingHead,
    TextTowerView,
    attention,
    inference_mode_of,
    merge_heads,
    positional_resize,
    resize_positional_embedding,
    split_heads,
)
from captum_clip_surgery.adapters.registry import (
    ADAPTER_ENTRY_POINTS,
    get_adapter,
    register_adapter,
    registered_adapters,
    supported_families,
    unregister_adapter,
)

#: Names of the family modules, imported on first use.
_LAZY: Dict[str, str] = {
    "HFCLIPAdapter": "huggingface",
    "HFDinov2Backbone": "backbone_hf",
    "HFViTBackbone": "backbone_hf",
    "TimmViTBackbone": "backbone_timm",
    "HFCLIPPair": "huggingface",
    "HFCLIPPairAdapter": "huggingface",
    "HFSiglipAdapter": "huggingface",
    "OpenAICLIPAdapter": "openai_clip",
    "OpenCLIPAdapter": "openclip",
    "OpenCLIPTimmAdapter": "openclip_timm",
    "load_backbone": "backbone_loading",
    "load_clip": "loading",
    "square_preprocess": "loading",
}

__all__ = [
    "ADAPTER_ENTRY_POINTS",
    "BACKBONE_ENTRY_POINTS",
    "CLIPTowerBackbone",
    "HFDinov2Backbone",
    "HFViTBackbone",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TimmViTBackbone",
    "VisionBackbone",
    "aligned_size",
    "get_backbone",
    "register_backbone",
    "registered_backbones",
    "supported_backbones",
    "unregister_backbone",
    "AttentionPoolHead",
    "AveragePoolHead",
    "BlockView",
    "CLIPAdapter",
    "ClassTokenHead",
    "HFCLIPAdapter",
    "HFCLIPPair",
    "HFCLIPPairAdapter",
    "HFSiglipAdapter",
    "ImageTowerView",
    "OpenAICLIPAdapter",
    "OpenCLIPAdapter",
    "OpenCLIPTimmAdapter",
    "POSITIONAL_RESIZE_MODES",
    "PoolingHead",
    "TextTowerView",
    "attention",
    "get_adapter",
    "inference_mode_of",
    "load_backbone",
    "load_clip",
    "merge_heads",
    "positional_resize",
    "register_adapter",
    "registered_adapters",
    "resize_positional_embedding",
    "split_heads",
    "square_preprocess",
    "supported_families",
    "unregister_adapter",
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
