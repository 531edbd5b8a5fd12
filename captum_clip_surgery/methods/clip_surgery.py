r"""CLIP Surgery (Li et al., Pattern Recognition 2025) as a Captum attribution."""

from __future__ import annotations

from typing import Callable, ClassVar, List, Optional, Sequence, Tuple, Union

from torch import Tensor, nn

from captum_clip_surgery.core.architecture import (
    image_token_features,
    validate_query_token,
    validate_surgery_blocks,
)
from captum_clip_surgery.core.classifier import CLIPZeroShotClassifier
from captum_clip_surgery.methods.base import FeatureSurgery, TokenMapAttribution

__all__ = ["CLIPSurgeryAttribution"]


class CLIPSurgeryAttribution(TokenMapAttribution):
    r"""CLIP Surgery maps: architecture surgery plus feature surgery.

    Architecture surgery (``docs/method.md`` §3) adds a value-value attention path
    over the last ``surgery_blocks`` attention blocks of the image tower,
    computed functionally from the model's own weights; the pooled feature is
    the unmodified model's embedding, and dense features are the pooling head
    applied per token (rules per head kind in ``docs/method.md`` §4; a CLIP ResNet's
    attention pool gets the release's value-value pool). Feature surgery
    removes the redundant features shared by the texts. Scores are min-max
    normalised per map and upsampled bilinearly to the input.

    Differences from the authors' release, all deliberate: batches of any size
    in every mode, any input resolution (the positional embedding is resized per
    call, never written back), gradients flow to inputs that require them, and
    a constant map becomes zeros rather than NaN.

    The positional embedding is resized bilinearly to the grid, as the release does
    (``positional_resize`` chooses another rule).

    Args:
        forward_func (CLIPZeroShotClassifier or nn.Module): the classifier whose
            predictions are explained, or a CLIP model (then ``texts`` is needed).
        surgery_blocks (int, optional): number of last attention blocks with the
            dual path, 1..depth. Default ``None``: the release's 6 (every block of a
            shallower tower). Towers without attention blocks (CLIP ResNets, conv
            trunks) accept only ``None``.
        query_token (str): the mean (query) token of a CLIP ResNet attention pool:
            ``"release"`` (default) takes it from the value-value pool like every
            other token, as the authors' code does, so class-set surgery weights
            use that feature; ``"model"`` keeps the model's own q-k pool for it (the
            pooled feature then equals the image embedding). Other towers ignore it.
        texts (list[str], optional): texts, when a model is given.
        templates (list[str], optional): prompt templates, when a model is given.
        tokenizer (Callable, optional): tokenizer, when a model is given.
        positional_resize (str, optional): how the positional embedding is resized at
            another input size; default ``"bilinear"``, the release's rule.

    Examples::

        >>> import open_clip
        >>> model, _, preprocess = open_clip.create_model_and_transforms(
        ...     "ViT-B-16", pretrained="openai")
        >>> clf = CLIPZeroShotClassifier(model.eval(), texts=["dog", "cat", "grass"])
        >>> explainer = CLIPSurgeryAttribution(clf)
        >>> maps = explainer.attribute(images, target="dog")   # [B, 1, H, W]
    """

    default_positional_resize: ClassVar[str] = "bilinear"
    default_feature_surgery: FeatureSurgery = "auto"

    def __init__(
        self,
        forward_func: Union[CLIPZeroShotClassifier, nn.Module],
        surgery_blocks: Optional[int] = None,
        texts: Optional[Sequence[str]] = None,
        templates: Optional[Sequence[str]] = None,
        tokenizer: Optional[Callable[[List[str]], Tensor]] = None,
        query_token: str = "release",
        *,
        positional_resize: Optional[str] = None,
    ) -> None:
        super().__init__(forward_func, texts, templates, tokenizer,
                         positional_resize=positional_resize)
        self.surgery_blocks = validate_surgery_blocks(self.adapter, surgery_blocks)
        self.query_token = validate_query_token(query_token)

    def token_features(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        r"""Dual-path token features ``[B, 1 + h*w, D]`` and the grid ``(h, w)``."""
        return image_token_features(
            self.adapter, images, self.surgery_blocks, surgery=True, query_token=self.query_token
        )
