r"""captum-clip-surgery: CLIP Surgery explanations for CLIP as Captum attributions."""

from captum_clip_surgery._maps import minmax_normalize
from captum_clip_surgery._text import DEFAULT_TEMPLATES, SCENE_TEMPLATES
from captum_clip_surgery.adapters import CLIPAdapter, get_adapter, register_adapter
from captum_clip_surgery.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.clip_surgery import CLIPSurgeryAttribution
from captum_clip_surgery.feature_surgery import feature_surgery
from captum_clip_surgery.similarity_map import CLIPSimilarityMap

__version__ = "0.1.0"

__all__ = [
    "CLIPAdapter",
    "CLIPSimilarityMap",
    "CLIPSurgeryAttribution",
    "CLIPZeroShotClassifier",
    "DEFAULT_TEMPLATES",
    "SCENE_TEMPLATES",
    "feature_surgery",
    "get_adapter",
    "minmax_normalize",
    "register_adapter",
]
