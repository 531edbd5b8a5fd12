r"""Model adapters: the only place that knows model-family classes.

Registration order matters only where two adapters could take the same model: the
more specific one is registered first.
"""

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
from captum_clip_surgery.adapters.openclip_timm import OpenCLIPTimmAdapter

register_adapter(OpenCLIPTimmAdapter)
register_adapter(OpenCLIPAdapter)

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
    "OpenCLIPTimmAdapter",
    "PoolingHead",
    "TextTowerView",
    "get_adapter",
    "inference_mode_of",
    "register_adapter",
    "resize_positional_embedding",
    "supported_families",
]
