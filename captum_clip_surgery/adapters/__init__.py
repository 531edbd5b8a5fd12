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
from captum_clip_surgery.adapters.huggingface import (
    HFCLIPAdapter,
    HFCLIPPair,
    HFCLIPPairAdapter,
    HFSiglipAdapter,
)
from captum_clip_surgery.adapters.openai_clip import OpenAICLIPAdapter
from captum_clip_surgery.adapters.openclip import OpenCLIPAdapter

__all__ = [
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
    "PoolingHead",
    "TextTowerView",
    "get_adapter",
    "inference_mode_of",
    "register_adapter",
    "resize_positional_embedding",
    "supported_families",
]
