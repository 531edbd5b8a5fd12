r"""The core: what every method stands on.

- :mod:`~captum_clip_surgery.core.classifier`: :class:`CLIPZeroShotClassifier`, the
  forward function every attribution explains;
- :mod:`~captum_clip_surgery.core.text`: prompt templates and prompt-ensembled, cached
  text features;
- :mod:`~captum_clip_surgery.core.architecture`: the plain image tower and CLIP
  Surgery's dual path, run through the adapter views;
- :mod:`~captum_clip_surgery.core.feature_surgery`: redundant-feature removal;
- :mod:`~captum_clip_surgery.core.maps`: from token-grid scores to maps lined up with
  the input;
- :mod:`~captum_clip_surgery.core.mask_refinement`: PAMR (:func:`pamr`), used by
  segmentation and inside ResCLIP's forward.

Argument checks live one layer lower, in :mod:`captum_clip_surgery._validation`.
"""

from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier, as_classifier
from captum_clip_surgery.core.feature_surgery import feature_surgery_scores
from captum_clip_surgery.core.maps import minmax_normalize
from captum_clip_surgery.core.text import SCENE_TEMPLATES, default_templates

__all__ = [
    "CLIPZeroShotClassifier",
    "SCENE_TEMPLATES",
    "as_classifier",
    "default_templates",
    "feature_surgery_scores",
    "minmax_normalize",
]
