r"""Applications of the maps: comparison and figures, segmentation (with PAMR),
multi-label recognition, text to points (and Segment Anything), text-token
explanations.

- :mod:`~captum_clip_surgery.apps.comparison`: :func:`compare` every method on one
  footing, :func:`plot_comparison`, :func:`plot_text_grid`;
- :mod:`~captum_clip_surgery.apps.segmentation`: :func:`segment`, sliding windows;
- :mod:`~captum_clip_surgery.apps.mask_refinement`: :func:`pamr`;
- :mod:`~captum_clip_surgery.apps.label_propagation`: :func:`lposs`, :func:`lposs_plus`,
  :func:`lposs_scores` (label propagation over patches and pixels);
- :mod:`~captum_clip_surgery.apps.multilabel`: :func:`multilabel_scores`,
  :func:`text_presence`;
- :mod:`~captum_clip_surgery.apps.points`: :func:`text_to_points`, SAM;
- :mod:`~captum_clip_surgery.apps.text_tokens`: :func:`explain_text_tokens`.
"""

from captum_clip_surgery.apps.comparison import (
    channel_reduce,
    compare,
    footing,
    plot_comparison,
    plot_text_grid,
)
from captum_clip_surgery.apps.label_propagation import lposs, lposs_plus, lposs_scores, rgb_to_lab
from captum_clip_surgery.apps.mask_refinement import pamr
from captum_clip_surgery.apps.multilabel import multilabel_scores, text_presence
from captum_clip_surgery.apps.points import (
    PointPrompts,
    build_sam_predictor,
    segment_with_sam,
    text_to_points,
)
from captum_clip_surgery.apps.segmentation import segment, sliding_window_scores
from captum_clip_surgery.apps.text_tokens import (
    TextTokenExplanation,
    explain_text_tokens,
    plot_text_tokens,
)

__all__ = [
    "PointPrompts",
    "TextTokenExplanation",
    "build_sam_predictor",
    "channel_reduce",
    "compare",
    "explain_text_tokens",
    "footing",
    "lposs",
    "lposs_plus",
    "lposs_scores",
    "multilabel_scores",
    "pamr",
    "plot_comparison",
    "plot_text_grid",
    "plot_text_tokens",
    "rgb_to_lab",
    "segment",
    "segment_with_sam",
    "sliding_window_scores",
    "text_presence",
    "text_to_points",
]
