r"""Model adapters: the only place that knows model-family classes."""

from captum_clip_surgery.adapters.base import (
    AttentionPoolHead,
    AveragePoolHead,
    BlockView,
    ClassTokenHead,
    CLIPAdapter,
    ImageTowerView,
    PoolingHead,
    TextTowerView,
    get_adapter,
    inference_mode_of,
    register_adapter,
    resize_positional_embedding,
    supported_families,
)
from captum_clip_surgery.adapters.openclip import OpenCLIPAdapter

__all__ = [
    "AttentionPoolHead",
    "AveragePoolHead",
    "BlockView",
    "CLIPAdapter",
    "ClassTokenHead",
    "ImageTowerView",
    "OpenCLIPAdapter",
    "PoolingHead",
    "TextTowerView",
    "get_adapter",
    "inference_mode_of",
    "register_adapter",
    "resize_positional_embedding",
    "supported_families",
]
