r"""captum-clip-surgery: CLIP Surgery explanations for CLIP as Captum attributions."""

from captum_clip_surgery._maps import minmax_normalize
from captum_clip_surgery._text import DEFAULT_TEMPLATES, SCENE_TEMPLATES
from captum_clip_surgery.adapters import CLIPAdapter, get_adapter, register_adapter
from captum_clip_surgery.attention_relevance import CLIPAttentionRelevance
from captum_clip_surgery.batch_explain import ExplainSummary, explain_images, explain_to_folder
from captum_clip_surgery.classifier import CLIPZeroShotClassifier, TokenGrid
from captum_clip_surgery.clip_surgery import CLIPSurgeryAttribution
from captum_clip_surgery.comparison import (
    DEFAULT_METHODS,
    METHOD_NAMES,
    channel_reduce,
    compare,
    plot_comparison,
)
from captum_clip_surgery.feature_surgery import feature_surgery
from captum_clip_surgery.maskclip import MaskCLIPAttribution
from captum_clip_surgery.multilabel import multilabel_scores, text_presence
from captum_clip_surgery.points import (
    PointPrompts,
    build_sam_predictor,
    segment_with_sam,
    text_to_points,
)
from captum_clip_surgery.segmentation import segment
from captum_clip_surgery.similarity_map import CLIPSimilarityMap
from captum_clip_surgery.text_tokens import (
    TextTokenExplanation,
    explain_text_tokens,
    plot_text_tokens,
)

__version__ = "0.1.0"

__all__ = [
    "CLIPAdapter",
    "CLIPAttentionRelevance",
    "CLIPSimilarityMap",
    "CLIPSurgeryAttribution",
    "CLIPZeroShotClassifier",
    "DEFAULT_METHODS",
    "DEFAULT_TEMPLATES",
    "ExplainSummary",
    "METHOD_NAMES",
    "MaskCLIPAttribution",
    "PointPrompts",
    "SCENE_TEMPLATES",
    "TextTokenExplanation",
    "TokenGrid",
    "build_sam_predictor",
    "channel_reduce",
    "compare",
    "explain_images",
    "explain_text_tokens",
    "explain_to_folder",
    "feature_surgery",
    "get_adapter",
    "minmax_normalize",
    "multilabel_scores",
    "plot_comparison",
    "plot_text_tokens",
    "register_adapter",
    "segment",
    "segment_with_sam",
    "text_presence",
    "text_to_points",
]
