r"""Shared machinery of the token-map attributions (CLIP Surgery, raw map, ...)."""

from __future__ import annotations

import abc
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor, nn

from captum_clip_surgery._maps import minmax_normalize, to_pixels
from captum_clip_surgery._text import validate_texts
from captum_clip_surgery._validation import (
    check_bool,
    check_feature_surgery,
    prepare_images,
    resolve_target,
    unpack_inputs,
)
from captum_clip_surgery.adapters.base import CLIPAdapter, inference_mode_of
from captum_clip_surgery.classifier import CLIPZeroShotClassifier, as_classifier
from captum_clip_surgery.feature_surgery import feature_surgery_scores as _feature_surgery

__all__ = ["ClassifierAttribution", "TokenMapAttribution"]

FeatureSurgery = Union[str, Tensor]


class ClassifierAttribution(Attribution):
    r"""A Captum attribution explaining a :class:`CLIPZeroShotClassifier`.

    Takes the classifier, or a CLIP model from which one is built with ``texts``
    (and optional ``templates`` / ``tokenizer``); every attribution of the package
    derives from it.

    Args:
        forward_func (CLIPZeroShotClassifier or nn.Module): a classifier, or a
            CLIP model from which one is built with ``texts``.
        texts (list[str], optional): required when a model is given.
        templates (list[str], optional): prompt templates (model given only).
        tokenizer (Callable, optional): tokenizer (model given only).
    """

    def __init__(
        self,
        forward_func: Union[CLIPZeroShotClassifier, nn.Module],
        texts: Optional[Sequence[str]] = None,
        templates: Optional[Sequence[str]] = None,
        tokenizer: Optional[Callable[[List[str]], Tensor]] = None,
    ) -> None:
        classifier = as_classifier(forward_func, texts, templates, tokenizer)
        super().__init__(classifier)
        self.classifier = classifier

    @property
    def adapter(self) -> CLIPAdapter:
        r"""The model adapter."""
        return self.classifier.adapter

    @property
    def multiplies_by_inputs(self) -> bool:
        return False


class TokenMapAttribution(ClassifierAttribution, abc.ABC):
    r"""Base class of attributions that score every image token against texts.

    Subclasses provide :meth:`token_features`; this class turns them into
    similarity grids (:meth:`similarity`) and Captum attributions
    (:meth:`attribute`).

    Args:
        forward_func (CLIPZeroShotClassifier or nn.Module): a classifier, or a
            CLIP model from which one is built with ``texts``.
        texts (list[str], optional): required when a model is given.
        templates (list[str], optional): prompt templates (model given only).
        tokenizer (Callable, optional): tokenizer (model given only).
    """

    default_feature_surgery: FeatureSurgery = "none"

    @abc.abstractmethod
    def token_features(self, images: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        r"""Joint-space features of every token ``[B, 1 + h*w, D]`` (class first,
        not normalised) and the grid ``(h, w)``, for prepared images."""

    def _texts(self, texts: Optional[Sequence[str]]) -> List[str]:
        return list(self.classifier.texts) if texts is None else validate_texts(texts)

    def _scores(
        self, images: Tensor, texts: List[str], mode: FeatureSurgery
    ) -> Tuple[Tensor, Tuple[int, int]]:
        check_feature_surgery(mode)
        grad = torch.is_grad_enabled() and images.requires_grad
        with inference_mode_of(self.classifier.model), torch.set_grad_enabled(grad):
            feats, grid = self.token_features(images)
            f = F.normalize(feats.float(), dim=-1)
            e = self.classifier.encode_texts(texts)
            if isinstance(mode, Tensor):
                s = _feature_surgery(f, e, "redundant", mode.to(f.device))
            elif mode == "empty" or (mode == "auto" and len(texts) < 2):
                s = _feature_surgery(f, e, "redundant", self.classifier.empty_text_features())
            elif mode in ("classes", "auto"):
                s = _feature_surgery(f, e, "classes")
            else:
                s = _feature_surgery(f, e, "none")
        return s, grid

    def similarity(
        self,
        images: Tensor,
        texts: Optional[Sequence[str]] = None,
        feature_surgery: Optional[FeatureSurgery] = None,
    ) -> Tensor:
        r"""Token-grid scores before normalisation, ``[B, T, h, w]`` (float32).

        Args:
            images (Tensor): preprocessed images ``[B, 3, H, W]``.
            texts (list[str], optional): texts to score; default the classifier's.
            feature_surgery (str or Tensor, optional): ``"auto"`` (class-set
                surgery with >= 2 texts, else empty-string surgery), ``"classes"``,
                ``"empty"``, ``"none"``, or a tensor of redundant features
                (``[C]`` or ``[T, C]``) subtracted from the text features.
                Default: this attribution's own default.

        Returns:
            Tensor: ``[B, T, h, w]``; the grid covers the input padded at the
            bottom / right to a multiple of the patch (stride), see :meth:`attribute`.
        """
        texts_ = self._texts(texts)
        mode = self.default_feature_surgery if feature_surgery is None else feature_surgery
        prepared = prepare_images(self.adapter, images, "images")
        s, (h, w) = self._scores(prepared, texts_, mode)
        b = s.shape[0]
        return s[:, 1:, :].transpose(1, 2).reshape(b, len(texts_), h, w)

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor]],
        target: Any = None,
        additional_forward_args: Any = None,
        texts: Optional[Sequence[str]] = None,
        feature_surgery: Optional[FeatureSurgery] = None,
        upsample_to_input: bool = True,
    ) -> Union[Tensor, Tuple[Tensor]]:
        r"""One normalised map per example for its target text.

        Args:
            inputs (Tensor or tuple[Tensor]): preprocessed images ``[B, 3, H, W]``,
                or a 1-tuple of them (the output then is a 1-tuple too).
            target (int, str, list, Tensor, optional): the text to explain: an
                index into the texts, one of the texts, or one of those per
                example. May be omitted when there is one text.
            additional_forward_args (Any, optional): accepted for Captum
                compatibility; the maps do not depend on them.
            texts (list[str], optional): texts for this call (encoded once and
                cached); default the classifier's texts.
            feature_surgery (str or Tensor, optional): see :meth:`similarity`.
            upsample_to_input (bool): bilinearly upsample to the input's ``H×W``
                (default); ``False`` returns the token grid ``[B, 1, h, w]``. An
                input whose sides are not a multiple of the patch (stride) is
                padded at the bottom / right to the next multiple: the grid then
                covers the padding too, and the upsampled map leaves it out, so
                each map pixel lines up with the input pixel the model saw.

        Returns:
            Tensor or tuple[Tensor]: ``[B, 1, H, W]`` maps in ``[0, 1]`` (min-max
            per map, computed in float32), on the inputs' device and in their dtype.

        Examples::

            >>> explainer.attribute(images, target="dog").shape
            torch.Size([8, 1, 224, 224])
        """
        images, is_tuple = unpack_inputs(inputs)
        check_bool("upsample_to_input", upsample_to_input)
        texts_ = self._texts(texts)
        prepared = prepare_images(self.adapter, images)
        index = resolve_target(target, prepared.shape[0], texts_)
        mode = self.default_feature_surgery if feature_surgery is None else feature_surgery
        s, (h, w) = self._scores(prepared, texts_, mode)
        b = s.shape[0]
        picked = s[torch.arange(b, device=s.device), 1:, index.to(s.device)]
        maps = self.maps_from_scores(picked.reshape(b, 1, h, w), images, upsample_to_input)
        return (maps,) if is_tuple else maps

    def maps_from_scores(
        self, scores: Tensor, images: Tensor, upsample_to_input: bool = True
    ) -> Tensor:
        r"""Token-grid scores to maps, as :meth:`attribute` does: min-max per map (in
        float32), then upsampled to the images' pixels (padding left out).

        With :meth:`similarity` this explains one image for many texts from a single
        forward: ``explainer.maps_from_scores(explainer.similarity(images)[i, ks][None],
        images[i : i + 1])`` equals ``attribute`` for each text ``k`` of ``ks``.

        Args:
            scores (Tensor): ``[B, K, h, w]`` scores of :meth:`similarity` (any rows).
            images (Tensor): the images the scores belong to (for size, device, dtype).
            upsample_to_input (bool): as in :meth:`attribute`.

        Returns:
            Tensor: ``[B, K, H, W]`` (or ``[B, K, h, w]``) maps in ``[0, 1]``.
        """
        maps = minmax_normalize(scores)
        if upsample_to_input:
            maps = to_pixels(maps, self.adapter.image.patch_size, images.shape[-2:])
        return maps.to(device=images.device, dtype=images.dtype)
