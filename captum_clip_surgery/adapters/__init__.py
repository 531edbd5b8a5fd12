r"""Model adapters: the only place that knows model-family classes."""

from captum_clip_surgery.adapters.base import (
    AttentionPoolView,
    BlockView,
    CLIPAdapter,
    ResNetImageView,
    TextTowerView,
    ViTImageView,
    get_adapter,
    inference_mode_of,
    register_adapter,
    resize_positional_embedding,
    supported_families,
)
from captum_clip_surgery.adapters.openclip import OpenCLIPAdapter

__all__ = [
    "AttentionPoolView",
    "BlockView",
    "CLIPAdapter",
    "OpenCLIPAdapter",
    "ResNetImageView",
    "TextTowerView",
    "ViTImageView",
    "get_adapter",
    "inference_mode_of",
    "register_adapter",
    "resize_positional_embedding",
    "supported_families",
]
