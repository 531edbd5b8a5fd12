r"""The raw CLIP map (registry name ``"raw"``): the "no surgery at all" baseline."""

from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor

from captum_clip_surgery.adapters.base import AttentionPoolHead, CLIPAdapter
from captum_clip_surgery.core.architecture import image_token_features
from captum_clip_surgery.methods.base import FeatureSurgery, TokenMapAttribution

__all__ = ["CLIPSimilarityMap", "RawCLIPAttribution"]


class RawCLIPAttribution(TokenMapAttribution):
    r"""Raw CLIP maps: every patch token of the unmodified tower, projected into
    the joint space and scored against the texts.

    For a ViT, each output token goes through the final norm and projection;
    for a ResNet, each grid token is a query of the model's own attention pool.
    No feature surgery by default (``feature_surgery="none"``); any mode of
    :class:`CLIPSurgeryAttribution` can be asked for per call. Same methods and
    shapes as :class:`CLIPSurgeryAttribution`.

    Args:
        forward_func (CLIPZeroShotClassifier or nn.Module): classifier or model.
        texts (list[str], optional): texts, when a model is given.
        templates (list[str], optional): prompt templates, when a model is given.
        tokenizer (Callable, optional): tokenizer, when a model is given.

    Formerly ``CLIPSimilarityMap`` (still available under that name).

    Examples::

        >>> raw = RawCLIPAttribution(clf)
        >>> raw.attribute(images, target=0).shape
        torch.Size([8, 1, 224, 224])
    """

    default_feature_surgery: FeatureSurgery = "none"

    @classmethod
    def unsupported_reason(cls, adapter: CLIPAdapter) -> Optional[str]:
        r"""Defined where every grid token can be a query of the model's own pooling: for
        an attention-pool head, when the head says its tokens can query it (not CoCa's
        attentional pooler, whose queries are narrower than its tokens).

        Args:
            adapter (CLIPAdapter): the model's adapter.

        Returns:
            str or None: why the raw map is not defined, or ``None``.
        """
        reason = super().unsupported_reason(adapter)
        head = adapter.image.head
        if reason is None and isinstance(head, AttentionPoolHead):
            reason = head.token_query_reason()
        return reason

    def token_features(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        r"""Plain-tower token features ``[B, 1 + h*w, D]`` and the grid ``(h, w)``."""
        return image_token_features(self.adapter, images, 0, surgery=False)


#: The former name of :class:`RawCLIPAttribution`.
CLIPSimilarityMap = RawCLIPAttribution
