r"""captum-clip-surgery: CLIP Surgery explanations for CLIP as Captum attributions."""

from captum_clip_surgery._maps import minmax_normalize
from captum_clip_surgery._text import DEFAULT_TEMPLATES, SCENE_TEMPLATES
from captum_clip_surgery.adapters import CLIPAdapter, HFCLIPPair, get_adapter, register_adapter
from captum_clip_surgery.attention_relevance import CLIPAttentionRelevance
from captum_clip_surgery.batch_explain import ExplainSummary, explain_images, explain_to_folder
from captum_clip_surgery.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.clearclip import ClearCLIPAttribution
from captum_clip_surgery.clip_surgery import CLIPSurgeryAttribution
from captum_clip_surgery.comparison import (
    DEFAULT_METHODS,
    DENSE_METHODS,
    METHOD_NAMES,
    TRAINING_FREE_METHODS,
    build_method,
    channel_reduce,
    compare,
    plot_comparison,
    plot_text_grid,
    supported_methods,
)
from captum_clip_surgery.feature_surgery import feature_surgery_scores
from captum_clip_surgery.gem import GEMAttribution
from captum_clip_surgery.gradeclip import GradECLIPAttribution
from captum_clip_surgery.legrad import LeGradAttribution
from captum_clip_surgery.mask_refinement import pamr
from captum_clip_surgery.maskclip import MaskCLIPAttribution
from captum_clip_surgery.multilabel import multilabel_scores, text_presence
from captum_clip_surgery.naclip import NACLIPAttribution
from captum_clip_surgery.points import (
    PointPrompts,
    build_sam_predictor,
    segment_with_sam,
    text_to_points,
)
from captum_clip_surgery.sclip import SCLIPAttribution
from captum_clip_surgery.segmentation import segment, sliding_window_scores
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
    "ClearCLIPAttribution",
    "DEFAULT_METHODS",
    "DEFAULT_TEMPLATES",
    "DENSE_METHODS",
    "ExplainSummary",
    "GEMAttribution",
    "GradECLIPAttribution",
    "HFCLIPPair",
    "LeGradAttribution",
    "METHOD_NAMES",
    "MaskCLIPAttribution",
    "NACLIPAttribution",
    "PointPrompts",
    "SCENE_TEMPLATES",
    "SCLIPAttribution",
    "TRAINING_FREE_METHODS",
    "TextTokenExplanation",
    "build_method",
    "build_sam_predictor",
    "channel_reduce",
    "compare",
    "explain_images",
    "explain_text_tokens",
    "explain_to_folder",
    "feature_surgery_scores",
    "get_adapter",
    "minmax_normalize",
    "multilabel_scores",
    "pamr",
    "plot_comparison",
    "plot_text_grid",
    "plot_text_tokens",
    "register_adapter",
    "segment",
    "segment_with_sam",
    "sliding_window_scores",
    "supported_methods",
    "text_presence",
    "text_to_points",
]
